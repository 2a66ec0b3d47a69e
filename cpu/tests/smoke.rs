//! Smoke tests of the interpreter on short snippets, checked against the host CPU.

use ox86_cpu::testkit::{Regs32, Snippet, SnippetEnd, DATA_ADDR};

#[test]
fn loop_sums() {
    // mov ecx, 100; xor eax, eax; l: add eax, ecx; dec ecx; jnz l
    let code = [0xb9, 100, 0, 0, 0, 0x31, 0xc0, 0x01, 0xc8, 0x49, 0x75, 0xfb];
    let mut r = Regs32::default();
    let mut sn = Snippet::new();
    let end = sn.run(&code, &mut r, &mut [], 10_000);
    assert_eq!(end, SnippetEnd::Done);
    assert_eq!(r.gpr[0], 5050);
}

#[test]
fn memory_and_fault() {
    // mov [DATA], eax ; mov ebx, [DATA] ; div ecx (ecx = 0) -> #DE
    let a = DATA_ADDR.to_le_bytes();
    let code = [
        0xa3, a[0], a[1], a[2], a[3], 0x8b, 0x1d, a[0], a[1], a[2], a[3], 0xf7, 0xf1,
    ];
    let mut r = Regs32 {
        gpr: [0x1234_5678, 0, 0, 0, 0x2f_f000, 0, 0, 0],
        eflags: 2,
    };
    let mut data = [0u8; 16];
    let end = Snippet::new().run(&code, &mut r, &mut data, 100);
    assert_eq!(end, SnippetEnd::Exception(0));
    assert_eq!(r.gpr[3], 0x1234_5678);
    assert_eq!(&data[..4], &0x1234_5678u32.to_le_bytes());
}

#[test]
fn tsc_adjust_and_tsc_writes_are_one_offset() {
    // The snippet's bus counts the TSC in instructions.
    let code = [
        0xb9, 0x3b, 0, 0, 0, // mov ecx, IA32_TSC_ADJUST
        0x31, 0xc0, // xor eax, eax
        0xba, 1, 0, 0, 0, // mov edx, 1
        0x0f, 0x30, // wrmsr: TSC_ADJUST = 1 << 32
        0x0f, 0x31, // rdtsc
        0x89, 0xd6, // mov esi, edx
        0x89, 0xc7, // mov edi, eax
        0xb9, 0x10, 0, 0, 0, // mov ecx, IA32_TSC
        0x31, 0xc0, // xor eax, eax
        0x31, 0xd2, // xor edx, edx
        0x0f, 0x30, // wrmsr: TSC = 0, six instructions after the rdtsc
        0xb9, 0x3b, 0, 0, 0, // mov ecx, IA32_TSC_ADJUST
        0x0f, 0x32, // rdmsr
    ];
    let mut r = Regs32::default();
    let end = Snippet::new().run(&code, &mut r, &mut [], 100);
    assert_eq!(end, SnippetEnd::Done);
    // The adjustment showed in the TSC.
    assert_eq!(r.gpr[6], 1, "rdtsc high half");
    assert!(r.gpr[7] < 10, "rdtsc low half {}", r.gpr[7]);
    // Setting the TSC to 0 six instructions later left an adjustment of minus the
    // clock at that point.
    let clock_at_write = u64::from(r.gpr[7]) + 6;
    let adjust = u64::from(r.gpr[2]) << 32 | u64::from(r.gpr[0]);
    assert_eq!(adjust, clock_at_write.wrapping_neg());
}

#[test]
fn cpuid_reports_invariant_tsc_and_tsc_adjust() {
    // mov eax, 0x80000007; cpuid; mov esi, edx; mov eax, 7; xor ecx, ecx; cpuid
    let code = [
        0xb8, 7, 0, 0, 0x80, 0x0f, 0xa2, 0x89, 0xd6, 0xb8, 7, 0, 0, 0, 0x31, 0xc9, 0x0f, 0xa2,
    ];
    let mut r = Regs32::default();
    assert_eq!(
        Snippet::new().run(&code, &mut r, &mut [], 100),
        SnippetEnd::Done
    );
    assert_eq!(r.gpr[6] & (1 << 8), 1 << 8, "invariant TSC");
    assert_eq!(r.gpr[3] & (1 << 1), 1 << 1, "TSC_ADJUST");
}
