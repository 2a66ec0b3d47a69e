//! ox86 firmware: loaders that put a kernel into guest RAM and say how the CPU
//! starts it — Linux bzImages (32-bit boot protocol), Multiboot v1 kernels, bare ELF programs, flat binaries — and the
//! built-in demo guest that `ox86 run` boots when given no image.
//!
//! The crate does not know the CPU: a loader returns an [`EntryState`], plain data
//! that the machine turns into its `CpuState`. Malformed images are errors
//! ([`BootError`]), never panics.
#![forbid(unsafe_code)]

mod demo;
mod elf;
mod entry;
mod error;
mod flat;
mod format;
#[cfg(test)]
mod fuzz;
mod layout;
pub mod linux;
pub mod multiboot;

pub use demo::{demo_image, DEMO_EXIT_STATUS, DEMO_LOAD_ADDR, DEMO_SERIAL_OUTPUT};
pub use elf::load_elf;
pub use entry::{EntryMode, EntryState, Gdtr};
pub use error::BootError;
pub use flat::load_flat;
pub use format::{detect, load_kernel, KernelFormat};
pub use linux::load_linux;
pub use multiboot::{load_multiboot, Module};
