//! CPUID: advertises exactly what ox86 implements.

/// Family 6, model 1, stepping 9: a Pentium Pro class CPU.
pub const SIGNATURE: u32 = 0x0000_0619;

/// Leaf 1 EDX feature bits that ox86 implements.
pub mod edx {
    /// x87 FPU on chip.
    pub const FPU: u32 = 1 << 0;
    /// Virtual-8086 mode enhancements (CR4.VME): not implemented.
    pub const VME: u32 = 1 << 1;
    /// Debugging extensions (CR4.DE).
    pub const DE: u32 = 1 << 2;
    /// Page size extension (4 MiB pages).
    pub const PSE: u32 = 1 << 3;
    /// Time stamp counter.
    pub const TSC: u32 = 1 << 4;
    /// RDMSR/WRMSR.
    pub const MSR: u32 = 1 << 5;
    /// Physical address extension.
    pub const PAE: u32 = 1 << 6;
    /// CMPXCHG8B.
    pub const CX8: u32 = 1 << 8;
    /// SYSENTER/SYSEXIT.
    pub const SEP: u32 = 1 << 11;
    /// Page global enable.
    pub const PGE: u32 = 1 << 13;
    /// CMOVcc and FCMOVcc.
    pub const CMOV: u32 = 1 << 15;
    /// FXSAVE/FXRSTOR.
    pub const FXSR: u32 = 1 << 24;
}

/// The features ox86 advertises in leaf 1 EDX. DE is left out: CR4.DE works (DR4/DR5
/// raise #UD) but I/O breakpoints are not implemented.
pub const FEATURES_EDX: u32 = edx::FPU
    | edx::PSE
    | edx::TSC
    | edx::MSR
    | edx::PAE
    | edx::CX8
    | edx::PGE
    | edx::CMOV
    | edx::FXSR;

/// Leaf 7 subleaf 0 EBX: IA32_TSC_ADJUST (MSR 0x3b) is implemented.
pub const LEAF7_EBX_TSC_ADJUST: u32 = 1 << 1;

/// Leaf 0x8000_0007 EDX: the TSC is invariant (constant rate, runs in every state).
/// True of ox86's TSC: it counts guest nanoseconds at 1 GHz, halted or not. With it
/// and TSC_ADJUST, Linux (5.17+) trusts the TSC without a clocksource watchdog: the
/// only watchdog this machine offers is the PIT clocksource, which reads nonsense once
/// Linux runs the PIT as a one-shot timer, and would mark the TSC unstable.
pub const EXT7_EDX_INVARIANT_TSC: u32 = 1 << 8;

/// The highest basic leaf.
const MAX_BASIC: u32 = 7;
/// The highest extended leaf.
const MAX_EXTENDED: u32 = 0x8000_0007;

/// Returns EAX, EBX, ECX, EDX for a CPUID leaf and subleaf.
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    const VENDOR: &[u8; 12] = b"GenuineIntel";
    let word =
        |i: usize| u32::from_le_bytes([VENDOR[i], VENDOR[i + 1], VENDOR[i + 2], VENDOR[i + 3]]);
    match leaf {
        0 => [MAX_BASIC, word(0), word(8), word(4)],
        1 => [SIGNATURE, 0, 0, FEATURES_EDX],
        // Cache and TLB descriptors: one iteration (AL = 1), all descriptors null.
        2 => [1, 0, 0, 0],
        // Deterministic cache parameters: no caches described (type 0); MONITOR
        // (leaf 5) and thermal and power management (leaf 6): none.
        3..=6 => [0; 4],
        // Structured extended features: subleaf 0 only.
        7 if subleaf == 0 => [0, LEAF7_EBX_TSC_ADJUST, 0, 0],
        7 => [0; 4],
        0x8000_0000 => [MAX_EXTENDED, 0, 0, 0],
        // Extended features, brand string, caches: none.
        0x8000_0001..=0x8000_0006 => [0; 4],
        0x8000_0007 => [0, 0, 0, EXT7_EDX_INVARIANT_TSC],
        // Leaves above the maximum return the data of the highest basic leaf (Intel).
        _ => cpuid(MAX_BASIC, subleaf),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_string() {
        let r = cpuid(0, 0);
        let mut v = Vec::new();
        for w in [r[1], r[3], r[2]] {
            v.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(&v, b"GenuineIntel");
        assert_eq!(
            cpuid(1, 0)[3] & edx::VME,
            0,
            "VME is not implemented and must not be advertised"
        );
        assert_eq!(
            cpuid(1, 0)[3] & edx::DE,
            0,
            "I/O breakpoints are not implemented"
        );
    }

    #[test]
    fn leaves_up_to_the_maxima() {
        assert_eq!(cpuid(0, 0)[0], MAX_BASIC);
        assert_eq!(cpuid(0x8000_0000, 0)[0], MAX_EXTENDED);
        assert_eq!(cpuid(7, 0)[1], LEAF7_EBX_TSC_ADJUST);
        assert_eq!(cpuid(7, 1), [0; 4]);
        assert_eq!(cpuid(0x8000_0007, 0)[3], EXT7_EDX_INVARIANT_TSC);
        // Beyond either maximum: the highest basic leaf, as Intel CPUs do.
        assert_eq!(cpuid(8, 0), cpuid(7, 0));
        assert_eq!(cpuid(0x8000_0008, 0), cpuid(7, 0));
        assert_eq!(cpuid(0x4000_0000, 0), cpuid(7, 0));
    }
}
