//! ox86's memory management unit: guest physical memory, the physical address map,
//! the page walker for every x86 paging mode, the software TLB, and code-page
//! tracking for self-modifying code.
#![deny(unsafe_op_in_unsafe_fn)]

mod addr;
mod bus;
mod error;
mod memory;
pub mod paging;
pub mod tlb;
pub mod undo;

pub use addr::{LinAddr, PhysAddr, Port, PAGE_MASK, PAGE_SIZE};
pub use bus::{ones, IoBus, NullBus};
pub use error::MemoryError;
pub use memory::{Memory, Region, MAX_RAM, MIN_RAM};
