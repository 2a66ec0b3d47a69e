//! Host-side errors of the memory subsystem.

use thiserror::Error;

/// Errors setting up guest memory.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// The requested RAM size is out of range.
    #[error("RAM size {0} bytes is out of range (1 MiB to 3 GiB)")]
    BadRamSize(u64),
    /// The host refused the mapping.
    #[error("cannot map guest RAM: {0}")]
    Map(String),
    /// A ROM or MMIO region is misaligned, empty or beyond 4 GiB.
    #[error("bad physical region at {0:#x} (length {1:#x})")]
    BadRegion(u64, u64),
}
