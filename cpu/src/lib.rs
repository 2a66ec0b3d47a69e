//! ox86's CPU: the architectural state, the decoded-block cache, lazy flags, and the
//! interpreter, which is the reference semantics of every instruction.
#![deny(unsafe_op_in_unsafe_fn)]

mod accel;
pub mod access;
pub mod block;
pub mod cpuid;
mod debug;
pub mod exception;
pub mod exec;
pub mod flags;
mod interp;
mod prefetch;
pub mod state;
pub mod stops;
pub mod testkit;
pub mod trace;

use ox86_mmu::tlb::Tlb;
use ox86_mmu::{IoBus, Memory};

pub use accel::{Accel, AccelRun, AccelStats, ExitCounts};
pub use block::{AccelHint, BlockCache, DecodedInsn, Handler};
pub use exception::{Exception, Fault};
pub use interp::{trace_len, CpuExit, RunLimits};
pub use state::{CpuState, Segment};
pub use stops::{DebugStop, StopPoints, WatchKind, Watchpoint};

/// Counters that describe what the CPU did.
#[derive(Debug, Clone, Default)]
pub struct CpuStats {
    /// Exceptions and interrupts delivered.
    pub interrupts: u64,
    /// Code-page writes that invalidated decoded blocks.
    pub smc_writes: u64,
    /// Vector of the last exception raised (for diagnostics).
    pub last_vector: u8,
}

/// One x86 CPU: its state, its TLB and its decoded-block cache.
pub struct Cpu {
    /// Architectural state.
    pub state: CpuState,
    /// The software TLB.
    pub tlb: Box<Tlb>,
    /// Decoded blocks.
    pub blocks: BlockCache,
    /// Statistics.
    pub stats: CpuStats,
    /// Set when a triple fault (shutdown) happened; the machine resets.
    pub shutdown: bool,
    /// The accelerator (JIT), if any; without one the interpreter runs everything.
    pub accel: Option<Box<dyn Accel>>,
    /// The host debugger's breakpoints and watchpoints.
    pub stops: StopPoints,
    /// The trace being recorded, if any (see [`trace`]).
    pub trace: Option<Box<trace::TraceSink>>,
}

impl std::fmt::Debug for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cpu")
            .field("rip", &self.state.rip)
            .field("icount", &self.state.icount)
            .finish()
    }
}

impl Default for Cpu {
    fn default() -> Self {
        Cpu::new()
    }
}

impl Cpu {
    /// A CPU in its RESET state.
    pub fn new() -> Cpu {
        Cpu {
            state: CpuState::reset(),
            tlb: Box::default(),
            blocks: BlockCache::default(),
            stats: CpuStats::default(),
            shutdown: false,
            accel: None,
            stops: StopPoints::default(),
            trace: None,
        }
    }

    /// Resets the CPU (INIT/RESET): state, TLB and decoded blocks.
    pub fn reset(&mut self) {
        let icount = self.state.icount;
        self.state = CpuState::reset();
        self.state.icount = icount;
        self.tlb.flush_all();
        self.shutdown = false;
        if let Some(a) = self.accel.as_mut() {
            a.clear();
        }
    }

    /// Flushes the TLB (after a paging change or an external A20 change); the jump
    /// caches check their hits against it.
    pub fn flush_tlb(&mut self) {
        self.tlb.flush_all();
    }

    /// An execution context over this CPU, guest memory and the device bus.
    pub fn exec<'a>(&'a mut self, mem: &'a mut Memory, io: &'a mut dyn IoBus) -> Exec<'a> {
        Exec {
            s: &mut self.state,
            tlb: &mut self.tlb,
            blocks: &mut self.blocks,
            stats: &mut self.stats,
            shutdown: &mut self.shutdown,
            mem,
            io,
            dbg: &mut self.stops,
            trace_mem: self.trace.as_ref().is_some_and(|t| t.memory()),
            trace: self.trace.as_deref_mut(),
        }
    }
}

/// The context every instruction handler runs in: the CPU's parts, guest memory and
/// the device bus, borrowed for one `run`.
pub struct Exec<'a> {
    /// Architectural state.
    pub s: &'a mut CpuState,
    /// The TLB.
    pub tlb: &'a mut Tlb,
    /// Decoded blocks (for invalidation from system instructions).
    pub blocks: &'a mut BlockCache,
    /// Statistics.
    pub stats: &'a mut CpuStats,
    /// Set on triple fault.
    pub shutdown: &'a mut bool,
    /// Guest physical memory.
    pub mem: &'a mut Memory,
    /// Ports, MMIO and the interrupt line.
    pub io: &'a mut dyn IoBus,
    /// The host debugger's stop points.
    pub dbg: &'a mut StopPoints,
    /// The trace being recorded, if any.
    pub trace: Option<&'a mut trace::TraceSink>,
    /// Whether the trace records memory accesses (see [`Exec::trace_access`]).
    pub trace_mem: bool,
}

impl Exec<'_> {
    /// Flushes the TLB (the jump caches check their hits against it).
    pub fn flush_tlb(&mut self) {
        self.tlb.flush_all();
    }
}
