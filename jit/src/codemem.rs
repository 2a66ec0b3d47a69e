//! Code memory of one generation: one read-write-execute mapping, filled from its
//! start and freed whole.
//!
//! Cranelift's default memory maps each compiled function's pages writable and then
//! executable: an `mprotect` call per compilation, and with it a TLB shootdown that
//! interrupts the CPU thread's core. Here the compiler thread writes each function
//! once, into memory no code runs yet, and hands it over through a channel.
//!
//! Instruction fetch must then see those writes. x86 keeps it coherent with stores by
//! itself (as QEMU's code buffer relies on). On aarch64 the writer cleans the data
//! cache and invalidates the instruction cache over what it wrote, to the point of
//! unification, with barriers, before handing the code over ([`sync_written`], no
//! system call); the CPU thread then executes an ISB before it runs code it received
//! ([`sync_fetch`]), so that it fetches nothing it prefetched before. Other hosts
//! (and hosts that refuse writable executable memory) keep Cranelift's default.

use std::io;

use cranelift_jit::{BranchProtection, JITMemoryKind, JITMemoryProvider};
use cranelift_module::ModuleResult;

/// Whether this host gets an arena.
const ARENA_HOST: bool = cfg!(any(
    target_arch = "x86_64",
    all(target_arch = "aarch64", target_os = "linux")
));

/// A generation's code memory.
pub struct CodeArena {
    map: Option<region::Allocation>,
    used: usize,
    /// Bytes below this offset have been made visible to instruction fetch.
    synced: usize,
}

// SAFETY: the arena owns its mapping; the compiler thread is its only user.
unsafe impl Send for CodeArena {}

impl CodeArena {
    /// An arena of `bytes` (reserved, touched as filled), or None where this host
    /// keeps Cranelift's default memory.
    pub fn new(bytes: usize) -> Option<CodeArena> {
        if !ARENA_HOST {
            return None;
        }
        let map = region::alloc(bytes, region::Protection::READ_WRITE_EXECUTE).ok()?;
        Some(CodeArena {
            map: Some(map),
            used: 0,
            synced: 0,
        })
    }
}

impl JITMemoryProvider for CodeArena {
    fn allocate(&mut self, size: usize, align: u64, _kind: JITMemoryKind) -> io::Result<*mut u8> {
        let map = self
            .map
            .as_mut()
            .ok_or_else(|| io::Error::other("code arena freed"))?;
        let start = self.used.next_multiple_of(align.max(1) as usize);
        let end = start
            .checked_add(size)
            .filter(|&e| e <= map.len())
            .ok_or_else(|| io::Error::other("code arena full"))?;
        self.used = end;
        // SAFETY: start + size <= the mapping's length (checked above).
        Ok(unsafe { map.as_mut_ptr::<u8>().add(start) })
    }

    unsafe fn free_memory(&mut self) {
        // Unmaps it; the caller guarantees that no code in it runs again.
        self.map = None;
    }

    /// Called once the module has written (and relocated) everything allocated since
    /// the last call. Branch protection (BTI) is not enforced on this memory: the
    /// landing pads Cranelift emits are hints that run as no-ops.
    fn finalize(&mut self, _branch_protection: BranchProtection) -> ModuleResult<()> {
        if let Some(map) = &self.map {
            // SAFETY: synced <= used <= the mapping's length.
            let start = unsafe { map.as_ptr::<u8>().add(self.synced) };
            sync_written(start, self.used - self.synced);
        }
        self.synced = self.used;
        Ok(())
    }
}

/// Makes `len` bytes of code just written at `start` visible to instruction fetch on
/// every core (the caller's own fetch included), once each core that runs it has
/// executed [`sync_fetch`] after this returns. Nothing to do on x86.
pub fn sync_written(start: *const u8, len: usize) {
    #[cfg(target_arch = "aarch64")]
    aarch64::sync_written(start as usize, len);
    #[cfg(not(target_arch = "aarch64"))]
    let _ = (start, len);
}

/// Run by a thread before it executes code that another thread wrote and passed
/// through [`sync_written`]: discards instructions it may have fetched before. Nothing
/// to do on x86.
#[inline]
pub fn sync_fetch() {
    #[cfg(target_arch = "aarch64")]
    aarch64::isb();
}

#[cfg(target_arch = "aarch64")]
mod aarch64 {
    use std::arch::asm;

    /// The cache type register: line sizes and whether the clean and invalidate
    /// steps are needed at all.
    fn ctr_el0() -> u64 {
        let ctr: u64;
        // SAFETY: CTR_EL0 is readable at EL0 on Linux (SCTLR_EL1.UCT is set, or the
        // kernel emulates the read); reading it has no side effect.
        unsafe { asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
        ctr
    }

    /// The ARM Architecture Reference Manual's sequence for code written by this
    /// core: clean the data cache to the point of unification by line (unless
    /// CTR_EL0.IDC says that is not required), DSB, invalidate the instruction cache
    /// by line (unless CTR_EL0.DIC), DSB, ISB.
    pub fn sync_written(start: usize, len: usize) {
        if len == 0 {
            return;
        }
        let ctr = ctr_el0();
        let end = start + len;
        if ctr & (1 << 28) == 0 {
            let line = 4usize << ((ctr >> 16) & 0xf);
            let mut a = start & !(line - 1);
            while a < end {
                // SAFETY: DC CVAU on an address of this process's mapped code memory
                // (the caller's range) only writes back cache lines; Linux allows it
                // at EL0 (SCTLR_EL1.UCI).
                unsafe { asm!("dc cvau, {}", in(reg) a, options(nostack)) };
                a += line;
            }
        }
        // SAFETY: barriers have no operands and no effect on memory contents.
        unsafe { asm!("dsb ish", options(nostack)) };
        if ctr & (1 << 29) == 0 {
            let line = 4usize << (ctr & 0xf);
            let mut a = start & !(line - 1);
            while a < end {
                // SAFETY: as for DC CVAU above; IC IVAU only invalidates instruction
                // cache lines, inner shareable (every core of the process).
                unsafe { asm!("ic ivau, {}", in(reg) a, options(nostack)) };
                a += line;
            }
        }
        // SAFETY: barriers have no operands and no effect on memory contents.
        unsafe { asm!("dsb ish", "isb", options(nostack)) };
    }

    /// A context synchronization event for this core.
    #[inline]
    pub fn isb() {
        // SAFETY: ISB has no operands and no effect on memory.
        unsafe { asm!("isb", options(nostack)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_aligned_disjoint_and_bounded() {
        if !ARENA_HOST {
            // This host keeps Cranelift's default memory: nothing to allocate from.
            assert!(CodeArena::new(1 << 16).is_none());
            return;
        }
        let mut a = CodeArena::new(1 << 16).expect("this host gets an arena");
        let p = a.allocate(100, 16, JITMemoryKind::Executable).unwrap() as usize;
        let q = a.allocate(10, 64, JITMemoryKind::Executable).unwrap() as usize;
        assert_eq!(p % 16, 0);
        assert_eq!(q % 64, 0);
        assert!(q >= p + 100);
        a.finalize(BranchProtection::None).unwrap();
        assert_eq!(a.synced, a.used);
        assert!(a.allocate(1 << 16, 1, JITMemoryKind::Executable).is_err());
        // SAFETY: nothing points into the arena.
        unsafe { a.free_memory() };
        assert!(a.allocate(1, 1, JITMemoryKind::Executable).is_err());
    }

    #[test]
    fn code_written_then_synced_runs() {
        if !ARENA_HOST {
            return;
        }
        // A function that returns 42, written into the arena as the compiler would.
        #[cfg(target_arch = "x86_64")]
        let code: &[u8] = &[0xb8, 42, 0, 0, 0, 0xc3]; // mov eax, 42; ret
        #[cfg(target_arch = "aarch64")]
        let code: &[u8] = &[0x40, 0x05, 0x80, 0x52, 0xc0, 0x03, 0x5f, 0xd6]; // mov w0, #42; ret
        let mut a = CodeArena::new(1 << 16).expect("this host gets an arena");
        for round in 0..3u8 {
            let p = a
                .allocate(code.len(), 16, JITMemoryKind::Executable)
                .unwrap();
            // SAFETY: p points to code.len() writable bytes of the arena.
            unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), p, code.len()) };
            a.finalize(BranchProtection::None).unwrap();
            sync_fetch();
            // SAFETY: p holds a complete function of the C ABI returning an i32,
            // made visible to instruction fetch above.
            let f = unsafe { std::mem::transmute::<*mut u8, extern "C" fn() -> i32>(p) };
            assert_eq!(f(), 42, "round {round}");
        }
    }
}
