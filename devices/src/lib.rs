//! ox86 PC devices: the port and MMIO buses and one module per device.
//!
//! [`Platform`] attaches the standard PC devices at their usual ports and implements
//! [`ox86_mmu::IoBus`], the CPU's view of the machine's I/O.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bus;
pub mod bytes;
pub mod cmos;
pub mod debug_exit;
pub mod host_input;
pub mod i8042;
pub mod irq;
pub mod pci;
pub mod pic;
pub mod pit;
pub mod platform;
pub mod post;
pub mod requests;
pub mod sysctl;
pub mod uart;

pub use bus::{BusDevice, BusError, DeviceId, MmioBus, PortBus};
pub use i8042::{KeyboardInput, I8042};
pub use irq::{IrqLine, IrqLines};
pub use pci::{PciFunction, PciHost};
pub use platform::{Platform, PlatformConfig};
pub use requests::{PendingRequests, Requests, ResetKind};
