//! ox86: a full-system x86 emulator. This crate wires the CPU, the MMU, the devices
//! and the firmware into a [`Machine`], built with a [`MachineBuilder`].
#![forbid(unsafe_code)]

mod builder;
mod bus;
pub mod clock;
mod debug;
pub mod digest;
mod error;
pub mod gdb;
pub mod history;
mod lockstep;
mod machine;
pub mod monitor;
mod mute;
mod ram;
pub mod replay;
pub mod rtc;
pub mod snapshot;
pub mod trace;

pub use builder::MachineBuilder;
pub use digest::Digest;
pub use error::MachineError;
pub use history::HistoryStats;
pub use machine::{ExitReason, Guest, Machine, MachineStats, SerialOut};
pub use monitor::MonitorReply;
pub use rtc::RtcBase;
pub use snapshot::SnapshotError;

pub use ox86_bios as bios;
pub use ox86_cpu as cpu;
pub use ox86_devices as devices;
pub use ox86_mmu as mmu;
