//! Differential tests of x87 instructions end to end (ox86's decoder, memory path and
//! FPU glue, against the host FPU in 32-bit compatibility mode). Each snippet loads
//! the FCW and two 80-bit operands from the data area, runs one instruction, stores
//! the status word and the stack back to the data area; the data areas are compared
//! (C0-C3 bits masked where the SDM leaves them undefined).

// The oracle is the host CPU itself: these tests exist on x86-64 hosts only.
#![cfg(target_arch = "x86_64")]

mod common;
use common::*;
use ox86_cpu::testkit::DATA_ADDR;

const FCW: u32 = 0x00;
const A: u32 = 0x10;
const B: u32 = 0x20;
const M: u32 = 0x30; // memory operand of the instruction (loads and stores)
const R0: u32 = 0x40;
const R1: u32 = 0x50;
const SW1: u32 = 0x60;
const SW2: u32 = 0x62;
const R2: u32 = 0x70;
const LEN: usize = 0x80;

/// C0, C2, C3 undefined (arithmetic, loads, stores, constants...).
const U_ARITH: u16 = 0x4500;
/// C1 (the SDM says cleared; AMD leaves it unchanged) for FCOMI/FUCOMI.
const U_FCOMI: u16 = 0x0200;
const U_NONE: u16 = 0;

fn abs(reg: u8, off: u32) -> Vec<u8> {
    modrm_abs(reg, DATA_ADDR + off)
}

#[derive(Clone, Copy, PartialEq)]
enum Mem {
    None,
    F32,
    F64,
    I16,
    I32,
    I64,
    Bcd,
    F80,
}

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Any,
    /// ST1 is a small number (FSCALE's scale factor).
    SmallB,
    /// ST0 in integer range (FIST/FBSTP).
    IntA,
}

struct Op {
    name: &'static str,
    /// opcode bytes; for memory forms, (opcode, ModRM reg field).
    bytes: &'static [u8],
    mem_reg: Option<u8>,
    mem: Mem,
    /// The memory operand is written (stores) rather than read.
    store: bool,
    undefined: u16,
    /// EFLAGS compared after the instruction.
    flags: u32,
    shape: Shape,
}

const fn reg(name: &'static str, bytes: &'static [u8], undefined: u16) -> Op {
    Op {
        name,
        bytes,
        mem_reg: None,
        mem: Mem::None,
        store: false,
        undefined,
        flags: ALL,
        shape: Shape::Any,
    }
}
const fn mem(name: &'static str, opc: &'static [u8], r: u8, m: Mem, undefined: u16) -> Op {
    Op {
        name,
        bytes: opc,
        mem_reg: Some(r),
        mem: m,
        store: false,
        undefined,
        flags: ALL,
        shape: Shape::Any,
    }
}
const fn st(name: &'static str, opc: &'static [u8], r: u8, m: Mem) -> Op {
    Op {
        name,
        bytes: opc,
        mem_reg: Some(r),
        mem: m,
        store: true,
        undefined: U_ARITH,
        flags: ALL,
        shape: Shape::IntA,
    }
}

const OPS: &[Op] = &[
    // register arithmetic
    reg("fadd st0,st1", &[0xd8, 0xc1], U_ARITH),
    reg("fmul st0,st1", &[0xd8, 0xc9], U_ARITH),
    reg("fsub st0,st1", &[0xd8, 0xe1], U_ARITH),
    reg("fsubr st0,st1", &[0xd8, 0xe9], U_ARITH),
    reg("fdiv st0,st1", &[0xd8, 0xf1], U_ARITH),
    reg("fdivr st0,st1", &[0xd8, 0xf9], U_ARITH),
    reg("fadd st1,st0", &[0xdc, 0xc1], U_ARITH),
    reg("fsub st1,st0 (dc e9)", &[0xdc, 0xe9], U_ARITH),
    reg("fdiv st1,st0 (dc f9)", &[0xdc, 0xf9], U_ARITH),
    reg("fmulp", &[0xde, 0xc9], U_ARITH),
    reg("fsubp (de e9)", &[0xde, 0xe9], U_ARITH),
    reg("fdivrp (de f1)", &[0xde, 0xf1], U_ARITH),
    // unary
    reg("fsqrt", &[0xd9, 0xfa], U_ARITH),
    reg("fprem", &[0xd9, 0xf8], U_NONE),
    reg("fprem1", &[0xd9, 0xf5], U_NONE),
    reg("frndint", &[0xd9, 0xfc], U_ARITH),
    Op {
        shape: Shape::SmallB,
        ..reg("fscale", &[0xd9, 0xfd], U_ARITH)
    },
    reg("fxtract", &[0xd9, 0xf4], U_ARITH),
    reg("fchs", &[0xd9, 0xe0], U_ARITH),
    reg("fabs", &[0xd9, 0xe1], U_ARITH),
    reg("fxam", &[0xd9, 0xe5], U_NONE),
    reg("fxch st1", &[0xd9, 0xc9], U_ARITH),
    // constants (rounded per RC)
    reg("fld1", &[0xd9, 0xe8], U_ARITH),
    reg("fldl2t", &[0xd9, 0xe9], U_ARITH),
    reg("fldl2e", &[0xd9, 0xea], U_ARITH),
    reg("fldpi", &[0xd9, 0xeb], U_ARITH),
    reg("fldlg2", &[0xd9, 0xec], U_ARITH),
    reg("fldln2", &[0xd9, 0xed], U_ARITH),
    reg("fldz", &[0xd9, 0xee], U_ARITH),
    // compares
    reg("fcom st1", &[0xd8, 0xd1], U_NONE),
    reg("fcomp st1", &[0xd8, 0xd9], U_NONE),
    reg("fcompp", &[0xde, 0xd9], U_NONE),
    reg("fucom st1", &[0xdd, 0xe1], U_NONE),
    reg("fucomp st1", &[0xdd, 0xe9], U_NONE),
    reg("fucompp", &[0xda, 0xe9], U_NONE),
    reg("ftst", &[0xd9, 0xe4], U_NONE),
    reg("fucomi st0,st1", &[0xdb, 0xe9], U_FCOMI),
    reg("fcomi st0,st1", &[0xdb, 0xf1], U_FCOMI),
    reg("fucomip st0,st1", &[0xdf, 0xe9], U_FCOMI),
    reg("fcomip st0,st1", &[0xdf, 0xf1], U_FCOMI),
    // memory arithmetic
    mem("fadd m32", &[0xd8], 0, Mem::F32, U_ARITH),
    mem("fmul m32", &[0xd8], 1, Mem::F32, U_ARITH),
    mem("fcom m32", &[0xd8], 2, Mem::F32, U_NONE),
    mem("fsubr m32", &[0xd8], 5, Mem::F32, U_ARITH),
    mem("fdiv m32", &[0xd8], 6, Mem::F32, U_ARITH),
    mem("fadd m64", &[0xdc], 0, Mem::F64, U_ARITH),
    mem("fsub m64", &[0xdc], 4, Mem::F64, U_ARITH),
    mem("fcomp m64", &[0xdc], 3, Mem::F64, U_NONE),
    mem("fdivr m64", &[0xdc], 7, Mem::F64, U_ARITH),
    mem("fiadd m32", &[0xda], 0, Mem::I32, U_ARITH),
    mem("fimul m16", &[0xde], 1, Mem::I16, U_ARITH),
    mem("ficom m16", &[0xde], 2, Mem::I16, U_NONE),
    mem("fisub m32", &[0xda], 4, Mem::I32, U_ARITH),
    mem("fidivr m16", &[0xde], 7, Mem::I16, U_ARITH),
    // loads
    mem("fld m32", &[0xd9], 0, Mem::F32, U_ARITH),
    mem("fld m64", &[0xdd], 0, Mem::F64, U_ARITH),
    mem("fld m80", &[0xdb], 5, Mem::F80, U_ARITH),
    mem("fild m16", &[0xdf], 0, Mem::I16, U_ARITH),
    mem("fild m32", &[0xdb], 0, Mem::I32, U_ARITH),
    mem("fild m64", &[0xdf], 5, Mem::I64, U_ARITH),
    mem("fbld m80", &[0xdf], 4, Mem::Bcd, U_ARITH),
    // stores
    Op {
        shape: Shape::Any,
        ..st("fst m32", &[0xd9], 2, Mem::F32)
    },
    Op {
        shape: Shape::Any,
        ..st("fstp m64", &[0xdd], 3, Mem::F64)
    },
    Op {
        shape: Shape::Any,
        ..st("fstp m80", &[0xdb], 7, Mem::F80)
    },
    st("fist m16", &[0xdf], 2, Mem::I16),
    st("fist m32", &[0xdb], 2, Mem::I32),
    st("fistp m64", &[0xdf], 7, Mem::I64),
    st("fisttp m32", &[0xdb], 1, Mem::I32),
    st("fisttp m64", &[0xdd], 1, Mem::I64),
    st("fbstp m80", &[0xdf], 6, Mem::Bcd),
];

fn f80(sign: bool, exp: u16, sig: u64) -> [u8; 10] {
    let mut b = [0u8; 10];
    b[..8].copy_from_slice(&sig.to_le_bytes());
    b[8..].copy_from_slice(&(exp | if sign { 0x8000 } else { 0 }).to_le_bytes());
    b
}

fn rand_sig(rng: &mut Rng) -> u64 {
    match rng.below(6) {
        0 => 1 << 63,
        1 => u64::MAX,
        2 => (1 << 63) | (rng.next_u64() & 0xffff_ff00_0000_0000), // short mantissa
        _ => (1 << 63) | rng.next_u64(),
    }
}

/// A random finite 80-bit value: mostly moderate exponents, some extremes, zeros and
/// denormals.
fn gen_f80(rng: &mut Rng) -> [u8; 10] {
    let sign = rng.bool();
    match rng.below(20) {
        0 => f80(sign, 0, 0),
        1 => f80(sign, 0, rng.next_u64() >> 1), // denormal
        2 => f80(sign, 1 + rng.below(0x7ffd) as u16, rand_sig(rng)),
        3 => f80(sign, 0x3fff, 1 << 63), // +-1
        _ => f80(sign, (0x3fff - 40 + rng.below(80)) as u16, rand_sig(rng)),
    }
}

/// A value of moderate size (scale factors, integers to store).
fn gen_small(rng: &mut Rng, max_exp: u32) -> [u8; 10] {
    let sign = rng.bool();
    if rng.below(10) == 0 {
        return f80(sign, 0, 0);
    }
    f80(
        sign,
        (0x3fff - 2 + rng.below(max_exp + 2)) as u16,
        rand_sig(rng),
    )
}

fn gen_mem(rng: &mut Rng, m: Mem) -> Vec<u8> {
    match m {
        Mem::None => vec![],
        Mem::F32 => {
            let e = match rng.below(8) {
                0 => 0,
                1 => rng.below(255),
                _ => 127 - 20 + rng.below(40),
            };
            let v = (rng.u32() & 0x807f_ffff) | e << 23;
            v.to_le_bytes().to_vec()
        }
        Mem::F64 => {
            let e = match rng.below(8) {
                0 => 0,
                1 => rng.below(2047) as u64,
                _ => 1023 - 40 + rng.below(80) as u64,
            };
            let v = (rng.next_u64() & 0x800f_ffff_ffff_ffff) | e << 52;
            v.to_le_bytes().to_vec()
        }
        Mem::I16 => (rng.val(16) as u16).to_le_bytes().to_vec(),
        Mem::I32 => rng.val(32).to_le_bytes().to_vec(),
        Mem::I64 => {
            let v = match rng.below(4) {
                0 => rng.next_u64(),
                1 => rng.pick(&[0u64, 1, u64::MAX, 1 << 63, (1 << 63) - 1]),
                _ => (rng.next_u64() as i64 >> rng.below(64)) as u64,
            };
            v.to_le_bytes().to_vec()
        }
        Mem::Bcd => {
            let mut b = vec![0u8; 10];
            let digits = rng.below(19);
            for i in 0..digits as usize {
                let d = rng.below(10) as u8;
                b[i / 2] |= d << (4 * (i % 2));
            }
            b[9] = if rng.bool() { 0x80 } else { 0 };
            b
        }
        Mem::F80 => gen_f80(rng).to_vec(),
    }
}

fn x87_case(rng: &mut Rng, op: &Op) -> Case {
    let mut c = Case::new(Vec::new(), rand_regs(rng), op.flags);
    c.data = vec![0u8; LEN];
    // FCW: all exceptions masked, random rounding and precision control
    let rc = rng.below(4) as u16;
    let pc = rng.pick(&[0u16, 2, 3, 3]);
    let fcw = 0x037f & !0x0f00 | pc << 8 | rc << 10;
    c.data[FCW as usize..FCW as usize + 2].copy_from_slice(&fcw.to_le_bytes());
    let a = match op.shape {
        Shape::IntA => {
            if rng.below(4) == 0 {
                gen_f80(rng)
            } else {
                gen_small(rng, 64)
            }
        }
        _ => gen_f80(rng),
    };
    let b = match op.shape {
        Shape::SmallB => gen_small(rng, 16),
        _ => gen_f80(rng),
    };
    c.data[A as usize..A as usize + 10].copy_from_slice(&a);
    c.data[B as usize..B as usize + 10].copy_from_slice(&b);
    if !op.store {
        let m = gen_mem(rng, op.mem);
        c.data[M as usize..M as usize + m.len()].copy_from_slice(&m);
    } else {
        // a store's destination starts as garbage
        for i in 0..10 {
            c.data[M as usize + i] = rng.u32() as u8;
        }
    }
    let mut code = vec![0xdb, 0xe3]; // fninit
    code.extend([0xd9]);
    code.extend(abs(5, FCW)); // fldcw
    code.extend([0xdb]);
    code.extend(abs(5, B)); // fld tbyte B
    code.extend([0xdb]);
    code.extend(abs(5, A)); // fld tbyte A
    code.extend(op.bytes);
    if let Some(r) = op.mem_reg {
        // the memory operand through several addressing forms
        let target = DATA_ADDR + M;
        match rng.below(4) {
            0 => code.extend(abs(r, M)),
            1 => {
                let d = rng.u32();
                c.regs.gpr[EBX] = target.wrapping_sub(d);
                code.push(0x80 | r << 3 | 3); // [ebx+disp32]
                code.extend(d.to_le_bytes());
            }
            2 => {
                let d = rng.u32() as u8;
                let idx = rng.below(0x1000);
                c.regs.gpr[EDI] = idx;
                c.regs.gpr[ESI] = target
                    .wrapping_sub(idx * 2)
                    .wrapping_sub(d as i8 as i32 as u32);
                code.extend([0x40 | r << 3 | 4, 1 << 6 | 7 << 3 | 6, d]); // [esi+edi*2+disp8]
            }
            _ => {
                let d = rng.u32() as u8;
                c.regs.gpr[EBP] = target.wrapping_sub(d as i8 as i32 as u32);
                code.extend([0x40 | r << 3 | 5, d]); // [ebp+disp8] (SS)
            }
        }
    }
    code.extend([0xdd]);
    code.extend(abs(7, SW1)); // fnstsw [SW1]
    code.extend([0xdb]);
    code.extend(abs(7, R0)); // fstp tbyte R0
    code.extend([0xdb]);
    code.extend(abs(7, R1)); // fstp tbyte R1
    code.extend([0xdb]);
    code.extend(abs(7, R2)); // fstp tbyte R2
    code.extend([0xdd]);
    code.extend(abs(7, SW2)); // fnstsw [SW2]
    c.code = code;
    let mut dm = vec![0xffu8; LEN];
    let u = op.undefined.to_le_bytes();
    dm[SW1 as usize] &= !u[0];
    dm[SW1 as usize + 1] &= !u[1];
    dm[SW2 as usize + 1] &= !0x47; // C0-C3 after the stores
    c.data_mask = Some(dm);
    c.note = format!("{} fcw={fcw:04x}", op.name);
    c
}

#[test]
fn x87_ops() {
    run_test("x87_ops", 21, |k, rng| {
        for op in OPS {
            for _ in 0..300 {
                let c = x87_case(rng, op);
                k.check(&c);
            }
        }
    });
}

#[test]
fn x87_harness_sanity() {
    // 1.5 + 2.25 with FADD: both sides must store 3.75, and a wrong value must be seen.
    let mut rng = Rng::new(1);
    let mut c = x87_case(&mut rng, &OPS[0]);
    c.data[FCW as usize..FCW as usize + 2].copy_from_slice(&0x037fu16.to_le_bytes());
    c.data[A as usize..A as usize + 10].copy_from_slice(&f80(false, 0x3fff, 0xc000_0000_0000_0000));
    c.data[B as usize..B as usize + 10].copy_from_slice(&f80(false, 0x4000, 0x9000_0000_0000_0000));
    let want = f80(false, 0x4000, 0xf000_0000_0000_0000);
    let (end, _, nd) = Checker::run_native(&c);
    assert_eq!(end, NativeEnd::Done);
    assert_eq!(&nd[R0 as usize..R0 as usize + 10], &want, "native");
    assert_eq!(
        &nd[R1 as usize..R1 as usize + 10],
        &c.data[B as usize..B as usize + 10],
        "native st1"
    );
    let mut k = Checker::new("x87_harness_sanity");
    let (_, _, od) = k.run_ox86(&c);
    assert_eq!(&od[R0 as usize..R0 as usize + 10], &want, "ox86");
    k.check(&c);
    k.finish();
}
