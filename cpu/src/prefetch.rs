//! A hint to the host CPU to start loading a cache line that will be read soon. The
//! address is never dereferenced: a prefetch of any address, mapped or not, has no
//! effect but on the caches.

/// Asks the host CPU to bring the cache line at `addr` into its caches.
#[inline(always)]
pub fn prefetch(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 neither reads memory architecturally nor faults, whatever the
    // address (SDM vol. 2B, PREFETCHh); SSE is part of the x86-64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(addr as *const i8);
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: PRFM is a hint: it neither faults nor changes architectural state, whatever
    // the address (Arm ARM, C6.2.250 PRFM).
    unsafe {
        std::arch::asm!(
            "prfm pldl1keep, [{0}]",
            in(reg) addr,
            options(nostack, readonly, preserves_flags)
        );
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = addr;
}
