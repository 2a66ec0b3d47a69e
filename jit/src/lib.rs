//! ox86's JIT: hot-region selection, Cranelift translation, the code cache and
//! invalidation. The interpreter in `ox86-cpu` is the reference; this crate will
//! translate its hot decoded blocks (the JIT issue). Nothing here runs yet.
#![forbid(unsafe_code)]

/// Execution count at which the interpreter will hand a block to the compiler.
pub const HOT_THRESHOLD: u64 = 1000;
