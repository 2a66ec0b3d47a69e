//! Host-side errors of building and running a machine.

use thiserror::Error;

/// Errors setting up or running a machine.
#[derive(Debug, Error)]
pub enum MachineError {
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] ox86_mmu::MemoryError),
    /// The kernel or firmware could not be loaded.
    #[error(transparent)]
    Boot(#[from] ox86_bios::BootError),
    /// The device configuration is invalid.
    #[error("device setup failed: {0}")]
    Devices(String),
    /// No guest was given.
    #[error("no guest image given")]
    NoGuest,
    /// A snapshot could not be written.
    #[error("cannot write the snapshot {path}: {msg}")]
    SnapshotWrite {
        /// Where it was to go.
        path: String,
        /// Why not.
        msg: String,
    },
    /// The replay log cannot be read.
    #[error("replay log: {0}")]
    Log(#[from] crate::replay::LogError),
    /// The replay log cannot be written.
    #[error("cannot write the replay log {path}: {msg}")]
    RecordWrite {
        /// Where it was to go.
        path: String,
        /// Why not.
        msg: String,
    },
    /// A replay diverged from its recording.
    #[error("replay diverged at instruction {icount}: {what}")]
    Diverged {
        /// The instruction count of the first check that failed.
        icount: u64,
        /// What differs.
        what: String,
    },
    /// In lockstep mode, the JIT and the interpreter diverged.
    #[error("lockstep: the JIT and the interpreter diverged: {0}")]
    Lockstep(String),
    /// The debugger's history cannot do what was asked.
    #[error("history: {0}")]
    History(String),
    /// The trace cannot be written.
    #[error("trace {path}: {msg}")]
    Trace {
        /// The trace file.
        path: String,
        /// What went wrong.
        msg: String,
    },
}
