//! Code memory of one generation: one read-write-execute mapping, filled from its
//! start and freed whole.
//!
//! Cranelift's default memory maps each compiled function's pages writable and then
//! executable: an `mprotect` call per compilation, and with it a TLB shootdown that
//! interrupts the CPU thread's core. Here the compiler thread writes each function
//! once, into memory no code runs yet, and hands it over through a channel; x86 keeps
//! instruction fetch coherent with those writes (as QEMU's code buffer relies on).
//! Other hosts, and hosts that refuse writable executable memory, keep Cranelift's
//! default.

use std::io;

use cranelift_jit::{BranchProtection, JITMemoryKind, JITMemoryProvider};
use cranelift_module::ModuleResult;

/// A generation's code memory.
pub struct CodeArena {
    map: Option<region::Allocation>,
    used: usize,
}

// SAFETY: the arena owns its mapping; the compiler thread is its only user.
unsafe impl Send for CodeArena {}

impl CodeArena {
    /// An arena of `bytes` (reserved, touched as filled), or None where this host
    /// keeps Cranelift's default memory.
    pub fn new(bytes: usize) -> Option<CodeArena> {
        if !cfg!(target_arch = "x86_64") {
            return None;
        }
        let map = region::alloc(bytes, region::Protection::READ_WRITE_EXECUTE).ok()?;
        Some(CodeArena {
            map: Some(map),
            used: 0,
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

    fn finalize(&mut self, _branch_protection: BranchProtection) -> ModuleResult<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn allocations_are_aligned_disjoint_and_bounded() {
        let mut a = CodeArena::new(1 << 16).expect("x86-64 hosts get an arena");
        let p = a.allocate(100, 16, JITMemoryKind::Executable).unwrap() as usize;
        let q = a.allocate(10, 64, JITMemoryKind::Executable).unwrap() as usize;
        assert_eq!(p % 16, 0);
        assert_eq!(q % 64, 0);
        assert!(q >= p + 100);
        assert!(a.allocate(1 << 16, 1, JITMemoryKind::Executable).is_err());
        // SAFETY: nothing points into the arena.
        unsafe { a.free_memory() };
        assert!(a.allocate(1, 1, JITMemoryKind::Executable).is_err());
    }
}
