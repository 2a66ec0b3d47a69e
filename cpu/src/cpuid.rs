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

/// Returns EAX, EBX, ECX, EDX for a CPUID leaf and subleaf.
pub fn cpuid(leaf: u32, _subleaf: u32) -> [u32; 4] {
    const VENDOR: &[u8; 12] = b"GenuineIntel";
    let word =
        |i: usize| u32::from_le_bytes([VENDOR[i], VENDOR[i + 1], VENDOR[i + 2], VENDOR[i + 3]]);
    match leaf {
        0 => [1, word(0), word(8), word(4)],
        1 => [SIGNATURE, 0, 0, FEATURES_EDX],
        0x8000_0000 => [0x8000_0000, 0, 0, 0],
        // Leaves above the maximum return the data of the highest basic leaf (Intel).
        _ => [SIGNATURE, 0, 0, FEATURES_EDX],
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
}
