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
