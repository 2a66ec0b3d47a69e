//! ox86's JIT, as the interpreter will see it. The translation itself (Cranelift
//! regions, the code arena, chaining, invalidation) is the JIT issue's work; this
//! crate fixes the contract between the two engines now, so that the interpreter's
//! block cache, hotness counting and exits are shaped for it:
//!
//! - a compiled unit is a *region*: hot decoded blocks within one or two physical
//!   pages, keyed like decoded blocks by entry physical address and code size;
//! - compiled code has one signature, [`CompiledFn`], over the `#[repr(C)]`
//!   `CpuState` whose fields it reaches at `offset_of!` offsets;
//! - it returns an [`ExitStatus`] to the dispatcher, never unwinds;
//! - the interpreter reports hot blocks to a [`Hotness`] tracker, which decides when
//!   a region is worth compiling.
#![forbid(unsafe_code)]

use std::collections::HashMap;

use ox86_cpu::CpuState;

/// Identifies a region: the physical address of its entry and the code size it was
/// decoded for (the same key as the interpreter's decoded blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegionKey {
    /// Physical address of the entry instruction.
    pub phys: u64,
    /// Code size in bits (16, 32 or 64).
    pub bitness: u32,
}

/// Why compiled code returned to the dispatcher. `CpuState::rip` always holds the
/// guest RIP to continue at (for an exception: of the faulting instruction).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Left the region by a branch to code outside it.
    Jump = 0,
    /// An exception was raised; its vector and error code are in the exit record.
    Exception = 1,
    /// The instruction budget ran out or an interrupt / exit request is pending
    /// (checked at region entry and at back-edges).
    Check = 2,
    /// An instruction the region does not lower must run in the interpreter.
    Interpret = 3,
    /// Code of this region was written: it must not be re-entered.
    Invalidated = 4,
}

/// The one signature of compiled code: the CPU state and an opaque pointer to the
/// helper context (memory, TLB, devices). The cast from the code arena's pointer
/// happens in one place in the JIT.
pub type CompiledFn = unsafe extern "C" fn(state: *mut CpuState, helpers: *mut u8) -> u32;

/// How the JIT behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitConfig {
    /// Executions of a block before its region is compiled.
    pub hot_threshold: u32,
    /// Most blocks in one region.
    pub max_region_blocks: usize,
    /// Bytes of code in one generation of the arena before it is flushed whole.
    pub arena_bytes: usize,
}

impl Default for JitConfig {
    fn default() -> Self {
        JitConfig {
            hot_threshold: 1000,
            max_region_blocks: 64,
            arena_bytes: 64 << 20,
        }
    }
}

/// Counts executions of region entries and says once when each becomes hot.
#[derive(Debug, Default)]
pub struct Hotness {
    threshold: u32,
    counts: HashMap<RegionKey, u32>,
}

impl Hotness {
    /// A tracker that reports a region after `threshold` executions.
    pub fn new(threshold: u32) -> Hotness {
        Hotness {
            threshold: threshold.max(1),
            counts: HashMap::new(),
        }
    }

    /// Records `n` executions of the block at `key`; returns true exactly once, when
    /// the count reaches the threshold.
    pub fn record(&mut self, key: RegionKey, n: u32) -> bool {
        let c = self.counts.entry(key).or_insert(0);
        let before = *c;
        *c = c.saturating_add(n);
        before < self.threshold && *c >= self.threshold
    }

    /// Forgets the counts of regions on physical page `frame` (its code was written).
    pub fn forget_frame(&mut self, frame: u64) {
        self.counts.retain(|k, _| k.phys >> 12 != frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_once_and_forgotten_on_write() {
        let mut h = Hotness::new(3);
        let k = RegionKey {
            phys: 0x1234,
            bitness: 32,
        };
        assert!(!h.record(k, 1));
        assert!(!h.record(k, 1));
        assert!(h.record(k, 1));
        assert!(!h.record(k, 1), "reported only once");
        h.forget_frame(0x1);
        assert!(!h.record(k, 2));
        assert!(h.record(k, 1));
        let other = RegionKey {
            phys: 0x1234,
            bitness: 16,
        };
        assert!(!h.record(other, 2), "code size is part of the key");
    }
}
