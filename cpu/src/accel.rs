//! The hook through which an accelerator (ox86's JIT) runs compiled code in place of
//! the interpreter. The interpreter stays the run loop and the reference: it asks the
//! accelerator to run at each block boundary, reports hot blocks to it, and tells it
//! which code bytes were written.

use crate::exception::Exception;
use crate::Exec;

/// What running compiled code did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelRun {
    /// Nothing compiled (or nothing that fits the budget) at the current RIP: the
    /// interpreter runs the block.
    NotRun,
    /// Compiled code ran and left the state at an instruction boundary.
    Ran,
    /// Compiled code stopped at a faulting instruction (RIP and every register as the
    /// interpreter would leave them); the exception is to be delivered.
    Fault(Exception),
}

/// An accelerator.
pub trait Accel {
    /// Runs compiled code from the current state, retiring at most up to instruction
    /// count `end`. `block` is the interpreter's block at the current state (its
    /// [`AccelHint`](crate::AccelHint) is the accelerator's to use).
    fn run(&mut self, ex: &mut Exec<'_>, end: u64, block: u32) -> AccelRun;

    /// Executions of a block after which [`Accel::hot`] is called for it.
    fn hot_threshold(&self) -> u64;

    /// The block `id` of the interpreter's cache runs for the first time (the state is
    /// at its start): an accelerator that has code for it already (a cache of earlier
    /// runs) may ask for it now.
    fn seen(&mut self, _ex: &mut Exec<'_>, _id: u32) {}

    /// The block `id` of the interpreter's cache reached the hot threshold.
    fn hot(&mut self, ex: &mut Exec<'_>, id: u32);

    /// Physical bytes `[addr, addr + len)` that held code were written: compiled code
    /// from them must not run again. Returns whether the accelerator still holds code
    /// on that page (so it stays write-protected).
    fn invalidate(&mut self, addr: u64, len: u64) -> bool;

    /// Forgets all compiled code (mass invalidation, reset).
    fn clear(&mut self);

    /// Physical frames holding compiled code.
    fn code_frames(&self) -> Vec<u64>;

    /// Statistics.
    fn stats(&self) -> AccelStats;
}

/// Returns from compiled code to the dispatcher, by why.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExitCounts {
    /// A fault, to deliver.
    pub fault: u64,
    /// An instruction that needs the interpreter loop (I/O, interrupt flag, system
    /// instructions).
    pub leave: u64,
    /// A branch that did not chain.
    pub jump: u64,
    /// ... to code the dispatcher then found compiled (the chain table missed it).
    pub jump_compiled: u64,
    /// The budget, or an instruction that changes what the dispatcher checks.
    pub check: u64,
    /// Access groups' checks and heat counters.
    pub other: u64,
}

/// What an accelerator did, for `--stats`.
#[derive(Debug, Clone, Default)]
pub struct AccelStats {
    /// Instructions retired in compiled code.
    pub compiled_insns: u64,
    /// Entries into compiled code from the dispatcher.
    pub entries: u64,
    /// Entries into compiled code by chaining from other compiled code.
    pub chained: u64,
    /// Returns from compiled code to the dispatcher: by a fault, by leaving for the
    /// interpreter loop (an instruction that needs it), by a branch the code did not
    /// chain, by a check (budget, flags, mode), and by heat counters.
    pub exits: ExitCounts,
    /// Regions compiled (both tiers).
    pub regions_compiled: u64,
    /// Regions compiled again, optimised, because they ran many instructions.
    pub regions_optimized: u64,
    /// ... of which were optimised by an idle compiler (see the JIT's `background`).
    pub regions_background: u64,
    /// Regions whose code came from the translation cache on disk.
    pub regions_loaded: u64,
    /// Total time of loading regions from the translation cache, in nanoseconds.
    pub load_ns: u64,
    /// Bad entries found in the translation cache (dropped, compiled again).
    pub cache_rejected: u64,
    /// Regions that failed to compile (they run in the interpreter).
    pub compile_failures: u64,
    /// Total compile time in nanoseconds.
    pub compile_ns: u64,
    /// Median compile time of a region in nanoseconds.
    pub compile_ns_median: u64,
    /// Regions invalidated because their code was written.
    pub invalidations: u64,
    /// Compiled regions dropped because their bytes changed before installation.
    pub stale: u64,
    /// Generations of code memory freed.
    pub generations_freed: u64,
    /// Host code bytes of live regions.
    pub code_bytes: u64,
    /// Regions installed now.
    pub live_regions: u64,
}
