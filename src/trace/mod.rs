//! Instruction traces: the writer that turns the engines' raw records into a trace
//! file, the file format, and a streaming reader (see `docs/` and `ox86 trace`).
//!
//! A run records with [`crate::MachineBuilder::trace`]; [`TraceReader`] reads the file
//! back record by record, whatever its size.

pub mod format;
pub(crate) mod hooks;
mod reader;
mod writer;

pub use hooks::TraceHooks;
pub use reader::{BlockDef, End, Header, MemAccess, Record, TraceError, TraceReader};
pub use writer::{TraceSummary, TraceWriter};

/// What to trace: where the file goes, and the window of instruction counts.
#[derive(Debug, Clone)]
pub struct TracePlan {
    /// The trace file.
    pub path: std::path::PathBuf,
    /// The first instruction count traced.
    pub from: u64,
    /// The instruction count where tracing stops (None: the end of the run).
    pub to: Option<u64>,
    /// Record every memory access too.
    pub memory: bool,
}

impl TracePlan {
    /// The trace file's header flags.
    pub fn flags(&self) -> u32 {
        if self.memory {
            format::FLAG_MEMORY
        } else {
            0
        }
    }
}
