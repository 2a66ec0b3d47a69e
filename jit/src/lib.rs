//! ox86's JIT: hot guest code becomes Cranelift-compiled host code.
//!
//! - The interpreter counts block executions; at the hot threshold the block's
//!   *region* (the blocks reachable from it by direct branches inside its page) goes
//!   to a compiler thread over a crossbeam channel, while the interpreter carries on.
//! - A region compiles to one function over the `#[repr(C)]` CPU state: guest
//!   registers in Cranelift variables, flags kept as the operands of the last
//!   flag-writing instruction and computed only where read, the TLB fast path inline
//!   for loads and stores, and the interpreter's own handler for every slow path,
//!   fault and instruction without a lowering, so that every exit leaves exactly the
//!   state the interpreter would.
//! - Compiled code returns a status to the dispatcher ([`Jit`], the interpreter's
//!   [`ox86_cpu::Accel`]), which finds regions through a jump cache keyed by RIP and
//!   mode, invalidates them when their code bytes are written, and frees code memory
//!   a generation at a time. A region left by a branch to a region the dispatcher
//!   has already found tail-calls it directly (`chain`); quick regions count their
//!   own runs (`heat`), so that they too are entered by chaining.
#![deny(unsafe_op_in_unsafe_fn)]

mod background;
mod chain;
mod codemem;
mod compiler;
mod diskcache;
mod emit;
mod engine;
mod flagsrc;
mod group;
mod heat;
mod helpers;
mod lower;
mod mode;
mod queue;
mod region;
mod symbols;
mod translate;
mod x87;

pub use compiler::CompileError;
pub use diskcache::DEFAULT_MAX_BYTES as DEFAULT_CACHE_BYTES;
pub use engine::Jit;
pub use mode::Mode;

/// How the JIT behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JitConfig {
    /// Executions of a block before its region is compiled.
    pub hot_threshold: u64,
    /// Most blocks in one region.
    pub max_region_blocks: usize,
    /// Bytes of code memory, in two generations; a generation is freed whole.
    pub arena_bytes: usize,
    /// Instructions a quickly compiled region runs before it is compiled again with
    /// optimisations (0: optimise from the start; `u64::MAX`: never).
    pub optimize_after: u64,
    /// Compile on the CPU thread when a block becomes hot (deterministic timing of
    /// installation, for tests) instead of on the compiler thread.
    pub inline_compile: bool,
    /// The translation cache on disk: its directory (None: no cache) and the most
    /// bytes it may hold.
    pub cache: Option<(std::path::PathBuf, u64)>,
    /// Each compilation waits this long first (a testing aid: compiled code arrives
    /// later, which must change speed only).
    pub compile_delay: std::time::Duration,
}

impl Default for JitConfig {
    fn default() -> Self {
        JitConfig {
            hot_threshold: 2000,
            max_region_blocks: 8,
            arena_bytes: 128 << 20,
            optimize_after: 1_000_000,
            inline_compile: false,
            cache: None,
            compile_delay: std::time::Duration::ZERO,
        }
    }
}
