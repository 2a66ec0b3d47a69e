//! Interpreter and JIT speed in guest instructions per second: a tight integer loop and a
//! memory-heavy loop, run on a bare CPU in flat 32-bit protected mode. Criterion's
//! throughput figure (elements/s) is guest instructions per second.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use iced_x86::code_asm::*;
use ox86_cpu::testkit::{Regs32, Snippet, SnippetEnd, CODE_ADDR, DATA_ADDR};

const ITERS: u32 = 1_000_000;

/// A register-only loop: 6 instructions per iteration.
fn integer_loop() -> (Vec<u8>, u64) {
    let mut a = CodeAssembler::new(32).unwrap();
    let mut top = a.create_label();
    a.mov(ecx, ITERS).unwrap();
    a.set_label(&mut top).unwrap();
    a.add(eax, ecx).unwrap();
    a.xor(edx, eax).unwrap();
    a.shl(edx, 1).unwrap();
    a.sub(ebx, edx).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(top).unwrap();
    (a.assemble(CODE_ADDR as u64).unwrap(), 1 + 6 * ITERS as u64)
}

/// A load/store loop walking a 16 KiB buffer: 8 instructions per iteration, 3 memory accesses.
fn memory_loop() -> (Vec<u8>, u64) {
    let mut a = CodeAssembler::new(32).unwrap();
    let mut top = a.create_label();
    a.mov(ecx, ITERS).unwrap();
    a.xor(esi, esi).unwrap();
    a.set_label(&mut top).unwrap();
    a.mov(eax, dword_ptr(esi + DATA_ADDR)).unwrap();
    a.add(eax, ecx).unwrap();
    a.mov(dword_ptr(esi + DATA_ADDR + 4), eax).unwrap();
    a.add(dword_ptr(esi + DATA_ADDR + 8), eax).unwrap();
    a.add(esi, 4).unwrap();
    a.and(esi, 0x3ff0).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(top).unwrap();
    (a.assemble(CODE_ADDR as u64).unwrap(), 2 + 8 * ITERS as u64)
}

/// A snippet machine with the JIT compiling each block after its first run, on the
/// CPU thread (so that the timed runs after the first are all compiled code).
fn jit_snippet() -> Snippet {
    let mut sn = Snippet::new();
    sn.cpu.accel = Some(Box::new(ox86_jit::Jit::new(ox86_jit::JitConfig {
        hot_threshold: 1,
        inline_compile: true,
        ..Default::default()
    })));
    sn
}

fn bench(c: &mut Criterion) {
    for (group, jit) in [("interpreter", false), ("jit", true)] {
        run_group(c, group, jit);
    }
}

fn run_group(c: &mut Criterion, group: &str, jit: bool) {
    let mut g = c.benchmark_group(group);
    g.sample_size(10);
    for (name, (code, insns)) in [
        ("integer_loop", integer_loop()),
        ("memory_loop", memory_loop()),
    ] {
        g.throughput(Throughput::Elements(insns));
        let mut sn = if jit { jit_snippet() } else { Snippet::new() };
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut r = Regs32 {
                    gpr: [0, 0, 0, 0, 0x2f_f000, 0, 0, 0],
                    eflags: 2,
                };
                let mut data = vec![0u8; 0x4000];
                let end = sn.run(&code, &mut r, &mut data, insns + 10);
                assert_eq!(end, SnippetEnd::Done);
                assert_eq!(sn.cpu.state.icount, insns + 1);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
