//! The JIT against the interpreter: the same random programs run on a CPU with the
//! JIT (compiling at the first execution, inline, so that compiled code runs from the
//! second iteration on) and on one without; registers, flags, memory, the instruction
//! count and the way the run ended must be identical.

use iced_x86::code_asm::*;
use ox86_cpu::testkit::{Regs32, Snippet, SnippetEnd, DATA_ADDR};
use ox86_jit::{Jit, JitConfig};
use ox86_x87::X87State;
use proptest::prelude::*;

const DATA_LEN: usize = 0x1000;
const COUNTER: i32 = 0xff0;

fn jit_snippet(threshold: u64, optimize_after: u64) -> Snippet {
    let mut s = Snippet::new();
    s.cpu.accel = Some(Box::new(Jit::new(JitConfig {
        hot_threshold: threshold,
        optimize_after,
        inline_compile: true,
        ..JitConfig::default()
    })));
    s
}

/// The tiers a run uses: quick code only, optimised code only, or quick code that is
/// replaced by optimised code during the run.
const TIERS: [u64; 3] = [u64::MAX, 0, SWITCH_AFTER];
/// Instructions a region runs in quick code before its optimised code replaces it, in
/// the runs that switch.
const SWITCH_AFTER: u64 = 150;

/// One random instruction, from a recipe of random numbers.
fn emit_one(a: &mut CodeAssembler, r: (u8, u8, u8, u32)) -> Result<(), IcedError> {
    // EBX holds the data address and ESP the stack: never destinations.
    let r32 = [eax, ecx, edx, esi, edi, ebp];
    let r16 = [ax, cx, dx, si, di, bp];
    let b8 = [al, cl, dl, ah, ch, dh];
    let (op, x, y, imm) = r;
    let d = r32[x as usize % 6];
    let s = r32[y as usize % 6];
    let d16 = r16[x as usize % 6];
    let s16 = r16[y as usize % 6];
    let d8 = b8[x as usize % 6];
    let s8 = b8[y as usize % 6];
    let disp = (imm % 0xf00) as i32 & !3;
    let m = dword_ptr(ebx + disp);
    let imm32 = imm as i32;
    let st = [st0, st1, st2, st3, st4, st5, st6, st7][y as usize % 8];
    let q = qword_ptr(ebx + disp);
    match op % 68 {
        0 => a.add(d, s),
        1 => a.sub(d, s),
        2 => a.and(d, s),
        3 => a.or(d, s),
        4 => a.xor(d, s),
        5 => a.cmp(d, s),
        6 => a.test(d, s),
        7 => a.adc(d, s),
        8 => a.sbb(d, s),
        9 => a.add(d, imm32),
        10 => a.sub(d, imm32 >> (imm & 31)),
        11 => a.cmp(d, imm32 & 0xff),
        12 => a.add(d, m),
        13 => a.sub(m, s),
        14 => a.inc(d),
        15 => a.dec(d),
        16 => a.neg(d),
        17 => a.not(d),
        18 => a.shl(d, imm & 31),
        19 => a.shr(d, cl),
        47 => a.shr(d16, imm & 31),
        48 => a.ror(d8, imm & 31),
        49 => a.sar(word_ptr(ebx + disp), cl),
        50 => a.rol(dword_ptr(ebx + disp), imm & 31),
        51 => a.imul_3(d16, word_ptr(ebx + disp), (imm as i32) >> 20),
        20 => a.sar(d, imm & 31),
        21 => a.imul_2(d, s),
        22 => a.imul_3(d, s, imm32 >> 16),
        23 => a.lea(d, ptr(ebx + s * 4 + disp)),
        24 => a.movzx(d, s8),
        25 => a.movsx(d, s16),
        26 => a.mov(d, m),
        27 => a.mov(m, s),
        28 => a.add(d8, s8),
        29 => a.sub(d16, s16),
        30 => a.cmp(byte_ptr(ebx + disp), imm & 0xff),
        31 => a.inc(word_ptr(ebx + disp)),
        32 => a.cdq(),
        33 => a.cwde(),
        34 => a.xchg(d, s),
        35 => {
            a.push(s)?;
            a.pop(d)
        }
        36 => match y % 4 {
            0 => a.sete(d8),
            1 => a.setl(d8),
            2 => a.setbe(d8),
            _ => a.seto(d8),
        },
        37 => match y % 4 {
            0 => a.cmovb(d, s),
            1 => a.cmovg(d, m),
            2 => a.cmovns(d, s),
            _ => a.cmovp(d, s),
        },
        52 => match y % 9 {
            0 => a.imul(s),
            1 => a.imul(m),
            2 => {
                a.endbr32()?;
                a.pause()
            }
            3 => a.shld(d, s, imm & 31),
            4 => a.shrd(m, s, cl),
            5 => a.shrd(d, s, imm & 31),
            6 => a.shld(m, s, cl),
            // Products that fit in 32 bits, often at or above 2^31 (CF and OF clear
            // for MUL, not for a signed reading).
            7 => {
                a.movzx(d, s16)?;
                a.and(eax, 0xffff)?;
                a.mul(d)
            }
            _ => {
                a.movsx(d, s16)?;
                a.movsx(eax, ax)?;
                a.imul(d)
            }
        },
        38 => a.mul(s),
        39 => a.div(s),
        40 => match y % 10 {
            0 => a.xadd(m, s),
            1 => a.lock().xadd(m, s),
            // XADD r, r leaves the sum.
            2 if x % 2 == 0 => a.xadd(d, s),
            2 => a.xadd(s, s),
            3 => a.cmpxchg(m, s),
            // Equal: the accumulator holds the destination.
            4 => {
                a.mov(eax, m)?;
                a.lock().cmpxchg(m, s)
            }
            5 => a.cmpxchg(d, s),
            6 => a.lock().add(m, s),
            7 => a.lock().inc(m),
            8 => a.cmpxchg(byte_ptr(ebx + disp), s8),
            _ => {
                a.mov(d16, word_ptr(ebx + disp))?;
                a.cmpxchg(word_ptr(ebx + disp), s16)
            }
        },
        41 => a.rol(d, imm & 31),
        42 => a.bt(d, s),
        43 => a.adc(m, imm32 & 0x7f),
        44 => a.sbb(d8, imm & 0xff),
        45 => a.shl(d16, cl),
        46 => {
            a.push(imm32)?;
            a.pop(d)
        }
        // x87: the data are random bytes, so NaNs, denormals and infinities come up,
        // and the stack overflows and underflows.
        53 => a.fld(q),
        54 => a.fld(m),
        55 => match y % 3 {
            0 => a.fild(m),
            1 => a.fild(word_ptr(ebx + disp)),
            _ => a.fild(q),
        },
        56 => match y % 4 {
            0 => a.fadd(q),
            1 => a.fsub(m),
            2 => a.fmul(q),
            _ => a.fdivr(m),
        },
        57 => match x % 6 {
            0 => a.fadd_2(st0, st),
            1 => a.fsubr_2(st, st0),
            2 => a.fmul_2(st0, st),
            3 => a.fdiv_2(st, st0),
            4 => a.faddp(st, st0),
            _ => a.fdivrp(st, st0),
        },
        58 => match y % 3 {
            0 => a.fstp(q),
            1 => a.fst(m),
            _ => a.fstp(m),
        },
        59 => match y % 3 {
            0 => a.fistp(m),
            1 => a.fist(word_ptr(ebx + disp)),
            _ => a.fisttp(q),
        },
        60 => a.fxch(st0, st),
        61 => a.fld(st),
        62 => match y % 3 {
            0 => a.fcomip(st0, st),
            1 => a.fucomi(st0, st),
            _ => a.fcom(q),
        },
        63 => a.fnstsw(ax),
        64 => match x % 6 {
            0 => a.fchs(),
            1 => a.fabs(),
            2 => a.fsqrt(),
            3 => a.fld1(),
            4 => a.fldz(),
            _ => a.frndint(),
        },
        65 => match y % 8 {
            // Exceptions unmasked now and then: #MF at the next waiting instruction.
            0 => {
                a.mov(word_ptr(ebx + disp), (imm as u16 & 0x0f3f) as u32)?;
                a.fldcw(word_ptr(ebx + disp))
            }
            1 | 2 => a.fnstcw(word_ptr(ebx + disp)),
            _ => a.fnstsw(word_ptr(ebx + disp)),
        },
        66 => a.fstp(st),
        67 => a.fcmovb(st0, st),
        _ => a.mov(d, imm),
    }
}

/// A loop of `iters` iterations around random instructions, with a forward
/// conditional branch over some of them.
fn program(body: &[(u8, u8, u8, u32)], iters: u32) -> Vec<u8> {
    let mut a = CodeAssembler::new(32).unwrap();
    let mut top = a.create_label();
    a.mov(dword_ptr(ebx + COUNTER), iters).unwrap();
    a.set_label(&mut top).unwrap();
    let mut skip: Option<CodeLabel> = None;
    for (k, &r) in body.iter().enumerate() {
        if r.0 >= 200 && skip.is_none() {
            let mut l = a.create_label();
            match r.1 % 4 {
                0 => a.jne(l).unwrap(),
                1 => a.jl(l).unwrap(),
                2 => a.jbe(l).unwrap(),
                _ => a.js(l).unwrap(),
            }
            // The label lands after the next instruction.
            let _ = &mut l;
            skip = Some(l);
            continue;
        }
        emit_one(&mut a, r).unwrap();
        if let Some(mut l) = skip.take() {
            a.set_label(&mut l).unwrap();
            a.nop().unwrap();
        }
        let _ = k;
    }
    if let Some(mut l) = skip.take() {
        a.set_label(&mut l).unwrap();
        a.nop().unwrap();
    }
    a.dec(dword_ptr(ebx + COUNTER)).unwrap();
    a.jne(top).unwrap();
    a.assemble(ox86_cpu::testkit::CODE_ADDR as u64).unwrap()
}

type Run = (SnippetEnd, Regs32, Vec<u8>, u64, X87State);

fn run(s: &mut Snippet, code: &[u8], regs: &Regs32) -> Run {
    let mut r = *regs;
    let mut data = vec![0u8; DATA_LEN];
    for (k, b) in data.iter_mut().enumerate() {
        *b = (k as u8).wrapping_mul(37).wrapping_add(11);
    }
    let end = s.run(code, &mut r, &mut data, 200_000);
    (end, r, data, s.cpu.state.icount, s.cpu.state.fpu.clone())
}

fn initial(seed: [u32; 7], flags: u32) -> Regs32 {
    Regs32 {
        gpr: [
            seed[0],
            seed[1],
            seed[2],
            DATA_ADDR,
            0x2f_fff0,
            seed[3],
            seed[4] & 0x3f,
            seed[5],
        ],
        eflags: flags & 0x8d5,
    }
}

fn compare(code: &[u8], regs: &Regs32, optimize_after: u64) -> u64 {
    let mut interp = Snippet::new();
    let mut jit = jit_snippet(1, optimize_after);
    let a = run(&mut interp, code, regs);
    let b = run(&mut jit, code, regs);
    assert_eq!(a.0, b.0, "end of run");
    assert_eq!(a.1, b.1, "registers and flags");
    assert_eq!(a.3, b.3, "instruction count");
    assert!(a.2 == b.2, "data memory differs");
    assert_eq!(a.4, b.4, "x87 state");
    let st = jit.cpu.accel.as_ref().unwrap().stats();
    if optimize_after == SWITCH_AFTER && st.compiled_insns > 10 * SWITCH_AFTER {
        assert!(st.regions_optimized > 0, "no region was optimised: {st:?}");
    }
    st.compiled_insns
}

#[test]
fn simple_loop_compiles_and_matches() {
    let body = [
        (0u8, 0u8, 1u8, 0u32),
        (9, 1, 0, 7),
        (12, 2, 0, 64),
        (27, 2, 0, 128),
    ];
    compiles_and_matches(&body, 4000);
}

/// Runs 1000 iterations of `body` in each tier; more than `min` instructions must run
/// in compiled code.
fn compiles_and_matches(body: &[(u8, u8, u8, u32)], min: u64) {
    let code = program(body, 1000);
    for t in TIERS {
        let compiled = compare(&code, &initial([1, 2, 3, 4, 5, 6, 7], 0), t);
        assert!(compiled > min, "compiled code ran {compiled} instructions");
    }
}

#[test]
fn x87_loop_compiles_and_matches() {
    // FILD, FADD m64, FMUL, FSTP m64, FLD m64, FCOMIP, FNSTSW AX, FXCH, FSTP ST(i)
    // and friends around the loop; 8-byte loads and stores of the data.
    let body = [
        (55u8, 0u8, 0u8, 0x100u32),
        (56, 0, 0, 0x208),
        (57, 2, 1, 0),
        (53, 0, 0, 0x100),
        (62, 0, 1, 0),
        (63, 0, 0, 0),
        (60, 0, 1, 0),
        (58, 0, 0, 0x300),
        (64, 3, 0, 0),
        (66, 0, 1, 0),
        (58, 0, 0, 0x308),
    ];
    compiles_and_matches(&body, 10_000);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn random_loops_match(
        body in prop::collection::vec(any::<(u8, u8, u8, u32)>(), 1..24),
        iters in 1u32..40,
        seed in any::<[u32; 7]>(),
        flags in any::<u32>(),
        tier in 0usize..3,
    ) {
        let code = program(&body, iters);
        compare(&code, &initial(seed, flags), TIERS[tier]);
    }
}
