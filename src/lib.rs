//! ox86: a full-system x86 emulator. This crate wires the CPU, the MMU, the devices
//! and the firmware into a [`Machine`], built with a [`MachineBuilder`].
#![deny(unsafe_op_in_unsafe_fn)]

pub use ox86_bios as bios;
pub use ox86_cpu as cpu;
pub use ox86_devices as devices;
pub use ox86_mmu as mmu;
