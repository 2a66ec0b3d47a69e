//! Differential tests against the host's x87 (the dev and CI machines are x86-64).
//!
//! Every case: a random FRSTOR image (registers with specials, random tags,
//! TOP, rounding/precision control, masks), a random memory operand and EFLAGS;
//! the instruction runs natively and through `X87State::execute`; the FNSAVE
//! images (FCW, FSW, FTW, ST0-7), the memory operand, EFLAGS and AX are compared
//! bit for bit, except the FSW bits the SDM leaves undefined per instruction
//! (listed in each table) and, for transcendentals, a documented ulp tolerance.
#![cfg(all(target_arch = "x86_64", unix))]

mod oracle;

use oracle::*;

const U_NONE: u16 = 0;
/// C0, C2, C3 undefined (arithmetic, loads, stores, FCHS, FABS, FXCH, ...).
const U_ARITH: u16 = 0x4500;
/// C0, C3 undefined (FSIN, FCOS, FSINCOS, FPTAN: C2 is defined).
const U_TRIG: u16 = 0x4100;
/// FCOMI family: the SDM says C1 is cleared; AMD hosts leave it unchanged.
const U_FCOMI: u16 = 0x0200;
/// C0-C3 undefined (FFREE, FNCLEX, FINIT-like).
const U_ALL: u16 = 0x4700;

#[derive(Clone, Copy, PartialEq)]
enum MemIn {
    None,
    F32,
    F64,
    F80,
    I16,
    I32,
    I64,
    Bcd,
    Random,
    /// A 28-byte FLDENV image.
    Env,
    /// A 512-byte FXRSTOR image.
    Fx,
}

#[derive(Clone, Copy)]
struct Spec {
    name: &'static str,
    bytes: &'static [u8],
    /// Register form: the low 3 bits of the last byte take i = 0..7.
    sti: bool,
    mem: MemIn,
    /// Bytes of memory compared afterwards (output size for stores).
    mem_len: usize,
    undefined: u16,
    ulps: u64,
    /// Shape ST0/ST1 for a transcendental's domain.
    domain: Domain,
}

#[derive(Clone, Copy, PartialEq)]
enum Domain {
    Any,
    /// |x| ≤ 1 (F2XM1)
    Unit,
    /// |x| < 0.29 (FYL2XP1)
    Small,
    /// positive (FYL2X)
    Positive,
    /// |x| < 2^20 (trig)
    Trig,
}

const fn sp(
    name: &'static str,
    bytes: &'static [u8],
    mem: MemIn,
    mem_len: usize,
    undefined: u16,
) -> Spec {
    Spec {
        name,
        bytes,
        sti: false,
        mem,
        mem_len,
        undefined,
        ulps: 0,
        domain: Domain::Any,
    }
}
const fn reg(name: &'static str, bytes: &'static [u8], undefined: u16) -> Spec {
    Spec {
        name,
        bytes,
        sti: true,
        mem: MemIn::None,
        mem_len: 0,
        undefined,
        ulps: 0,
        domain: Domain::Any,
    }
}
const fn op(name: &'static str, bytes: &'static [u8], undefined: u16) -> Spec {
    Spec {
        name,
        bytes,
        sti: false,
        mem: MemIn::None,
        mem_len: 0,
        undefined,
        ulps: 0,
        domain: Domain::Any,
    }
}
/// Transcendentals: C1 ("rounded up") reflects the host's internal ~68-bit
/// approximation rather than the exact value, so it is not compared.
const fn tr(
    name: &'static str,
    bytes: &'static [u8],
    undefined: u16,
    ulps: u64,
    domain: Domain,
) -> Spec {
    Spec {
        name,
        bytes,
        sti: false,
        mem: MemIn::None,
        mem_len: 0,
        undefined: undefined | 0x0200,
        ulps,
        domain,
    }
}

fn gen_mem(rng: &mut Rng, kind: MemIn) -> MemBuf {
    let mut m = MemBuf([0; 512]);
    for b in m.0.iter_mut() {
        *b = rng.next() as u8;
    }
    match kind {
        MemIn::F32 => m.0[..4].copy_from_slice(&gen_f32(rng).to_le_bytes()),
        MemIn::F64 => m.0[..8].copy_from_slice(&gen_f64(rng).to_le_bytes()),
        MemIn::F80 => m.0[..10].copy_from_slice(&gen_f80(rng)),
        MemIn::I16 => m.0[..2].copy_from_slice(&gen_int(rng, 2)[..2]),
        MemIn::I32 => m.0[..4].copy_from_slice(&gen_int(rng, 4)[..4]),
        MemIn::I64 => m.0[..8].copy_from_slice(&gen_int(rng, 8)[..8]),
        MemIn::Bcd => {
            let mut v = rng.next() % 1_000_000_000_000_000_000;
            if rng.below(4) == 0 {
                v %= 1000;
            }
            for i in 0..9 {
                let lo = (v % 10) as u8;
                v /= 10;
                let hi = (v % 10) as u8;
                v /= 10;
                m.0[i] = hi << 4 | lo;
            }
            m.0[9] = if rng.bool() { 0x80 } else { 0 };
        }
        MemIn::Env => {
            let fcw = rng.next() as u16;
            let fsw = rng.next() as u16;
            let ftw = rng.next() as u16;
            m.0[..28].fill(0);
            m.0[0..2].copy_from_slice(&fcw.to_le_bytes());
            m.0[4..6].copy_from_slice(&fsw.to_le_bytes());
            m.0[8..10].copy_from_slice(&ftw.to_le_bytes());
        }
        MemIn::Fx => {
            m.0[0..2].copy_from_slice(&(rng.next() as u16).to_le_bytes());
            m.0[2..4].copy_from_slice(&(rng.next() as u16).to_le_bytes());
            m.0[5] = 0;
            m.0[24..28].copy_from_slice(&0x1F80u32.to_le_bytes());
            m.0[28..32].fill(0);
            for i in 0..8 {
                let v = gen_f80(rng);
                m.0[32 + 16 * i..42 + 16 * i].copy_from_slice(&v);
            }
            m.0[160..].fill(0);
        }
        MemIn::None | MemIn::Random => {}
    }
    m
}

fn domain_value(rng: &mut Rng, d: Domain) -> Option<[u8; 10]> {
    if rng.below(10) < 3 {
        return None;
    }
    let s = rng.bool();
    let sig = rng.next() | (1 << 63);
    Some(match d {
        Domain::Any => return None,
        Domain::Unit => f80(s, (0x3FFE - rng.below(70)) as u16, sig),
        Domain::Small => f80(s, (0x3FFC - rng.below(70)) as u16, sig),
        Domain::Positive => f80(false, (0x3FFF + rng.range(-200, 200)) as u16, sig),
        Domain::Trig => f80(s, (0x3FFF + rng.range(-40, 20)) as u16, sig),
    })
}

fn run(specs: &[Spec], cases: u64, seed: u64, unmask_pct: u64) {
    let mut all_failures = Vec::new();
    let mut total = 0;
    for (k, spec) in specs.iter().enumerate() {
        let variants: Vec<u8> = if spec.sti {
            vec![0, 1, 2, 3, 5, 7]
        } else {
            vec![0]
        };
        let mut stats = Stats {
            cases: 0,
            ulp_off: 0,
            failures: Vec::new(),
        };
        let mut rng = Rng::new(seed ^ (k as u64) << 32);
        for &i in &variants {
            let mut bytes = spec.bytes.to_vec();
            if let Some(last) = bytes.last_mut() {
                *last |= i;
            }
            let native = Native::new(&bytes);
            let insn = decode32(&bytes);
            assert!(
                ox86_x87::X87State::is_x87(insn.code()),
                "{} decodes to {:?}",
                spec.name,
                insn.code()
            );
            for _ in 0..cases / variants.len() as u64 {
                let room = matches!(
                    spec.mem,
                    MemIn::F32
                        | MemIn::F64
                        | MemIn::F80
                        | MemIn::I16
                        | MemIn::I32
                        | MemIn::I64
                        | MemIn::Bcd
                ) && spec.mem_len == 0
                    || spec.name.starts_with("fld")
                    || matches!(spec.name, "fptan" | "fsincos" | "fxtract");
                let mut init = gen_state(
                    &mut rng,
                    StateGen {
                        unmask_pct,
                        room_to_push: room,
                    },
                );
                if spec.domain != Domain::Any {
                    if let Some(v) = domain_value(&mut rng, spec.domain) {
                        init.set_st(0, v);
                    }
                    if spec.domain == Domain::Positive && rng.below(4) == 0 {
                        init.set_st(
                            0,
                            f80(false, 0x3FFF, 1 << 63 | (rng.next() >> rng.range(1, 63))),
                        );
                    }
                }
                let mem = gen_mem(&mut rng, spec.mem);
                let eflags = 0x202 | (rng.next() & 0x8D5);
                let (mut ni, mut nm, mut na) = (init, mem, [eflags, 0]);
                native.run(&mut ni, &mut nm, &mut na);
                let (mut ei, mut em, mut ea) = (init, mem, [eflags, 0]);
                emulate(&insn, &mut ei, &mut em, &mut ea);
                if spec.name == "fxsave" {
                    // FOP/FIP/FDP (AMD saves them only with ES set), MXCSR_MASK, XMM.
                    for m in [&mut nm, &mut em] {
                        m.0[6..24].fill(0);
                        m.0[28..32].fill(0);
                        m.0[160..].fill(0);
                    }
                }
                let chk = Check {
                    undefined_fsw: spec.undefined,
                    ulps: spec.ulps,
                    mem_len: spec.mem_len,
                    ax: spec.name == "fnstsw ax",
                };
                compare(
                    spec.name,
                    chk,
                    &init,
                    &mem,
                    eflags,
                    (&ni, &nm, &na),
                    (&ei, &em, &ea),
                    &mut stats,
                );
            }
        }
        total += stats.cases;
        if stats.ulp_off > 0 {
            eprintln!(
                "{}: {} of {} cases within {} ulp but not exact",
                spec.name, stats.ulp_off, stats.cases, spec.ulps
            );
        }
        all_failures.extend(stats.failures);
    }
    eprintln!("{total} cases");
    if !all_failures.is_empty() {
        for f in all_failures.iter().take(40) {
            eprintln!("{f}");
        }
        panic!(
            "{} mismatching instruction forms/cases (first shown above)",
            all_failures.len()
        );
    }
}

const N: u64 = 3000;

#[test]
fn arith_memory() {
    use MemIn::*;
    let specs = [
        sp("fadd m32", &[0xD8, 0x06], F32, 4, U_ARITH),
        sp("fmul m32", &[0xD8, 0x0E], F32, 4, U_ARITH),
        sp("fsub m32", &[0xD8, 0x26], F32, 4, U_ARITH),
        sp("fsubr m32", &[0xD8, 0x2E], F32, 4, U_ARITH),
        sp("fdiv m32", &[0xD8, 0x36], F32, 4, U_ARITH),
        sp("fdivr m32", &[0xD8, 0x3E], F32, 4, U_ARITH),
        sp("fadd m64", &[0xDC, 0x06], F64, 8, U_ARITH),
        sp("fmul m64", &[0xDC, 0x0E], F64, 8, U_ARITH),
        sp("fsub m64", &[0xDC, 0x26], F64, 8, U_ARITH),
        sp("fsubr m64", &[0xDC, 0x2E], F64, 8, U_ARITH),
        sp("fdiv m64", &[0xDC, 0x36], F64, 8, U_ARITH),
        sp("fdivr m64", &[0xDC, 0x3E], F64, 8, U_ARITH),
        sp("fiadd m32", &[0xDA, 0x06], I32, 4, U_ARITH),
        sp("fimul m32", &[0xDA, 0x0E], I32, 4, U_ARITH),
        sp("fisub m32", &[0xDA, 0x26], I32, 4, U_ARITH),
        sp("fisubr m32", &[0xDA, 0x2E], I32, 4, U_ARITH),
        sp("fidiv m32", &[0xDA, 0x36], I32, 4, U_ARITH),
        sp("fidivr m32", &[0xDA, 0x3E], I32, 4, U_ARITH),
        sp("fiadd m16", &[0xDE, 0x06], I16, 2, U_ARITH),
        sp("fimul m16", &[0xDE, 0x0E], I16, 2, U_ARITH),
        sp("fisub m16", &[0xDE, 0x26], I16, 2, U_ARITH),
        sp("fisubr m16", &[0xDE, 0x2E], I16, 2, U_ARITH),
        sp("fidiv m16", &[0xDE, 0x36], I16, 2, U_ARITH),
        sp("fidivr m16", &[0xDE, 0x3E], I16, 2, U_ARITH),
    ];
    run(&specs, N, 1, 30);
}

#[test]
fn arith_registers() {
    let specs = [
        reg("fadd st0,sti", &[0xD8, 0xC0], U_ARITH),
        reg("fmul st0,sti", &[0xD8, 0xC8], U_ARITH),
        reg("fsub st0,sti", &[0xD8, 0xE0], U_ARITH),
        reg("fsubr st0,sti", &[0xD8, 0xE8], U_ARITH),
        reg("fdiv st0,sti", &[0xD8, 0xF0], U_ARITH),
        reg("fdivr st0,sti", &[0xD8, 0xF8], U_ARITH),
        reg("fadd sti,st0", &[0xDC, 0xC0], U_ARITH),
        reg("fmul sti,st0", &[0xDC, 0xC8], U_ARITH),
        reg("fsubr sti,st0", &[0xDC, 0xE0], U_ARITH),
        reg("fsub sti,st0", &[0xDC, 0xE8], U_ARITH),
        reg("fdivr sti,st0", &[0xDC, 0xF0], U_ARITH),
        reg("fdiv sti,st0", &[0xDC, 0xF8], U_ARITH),
        reg("faddp", &[0xDE, 0xC0], U_ARITH),
        reg("fmulp", &[0xDE, 0xC8], U_ARITH),
        reg("fsubrp", &[0xDE, 0xE0], U_ARITH),
        reg("fsubp", &[0xDE, 0xE8], U_ARITH),
        reg("fdivrp", &[0xDE, 0xF0], U_ARITH),
        reg("fdivp", &[0xDE, 0xF8], U_ARITH),
        op("fsqrt", &[0xD9, 0xFA], U_ARITH),
    ];
    run(&specs, N, 2, 30);
}

#[test]
fn compares() {
    use MemIn::*;
    let specs = [
        sp("fcom m32", &[0xD8, 0x16], F32, 4, U_NONE),
        sp("fcomp m32", &[0xD8, 0x1E], F32, 4, U_NONE),
        sp("fcom m64", &[0xDC, 0x16], F64, 8, U_NONE),
        sp("fcomp m64", &[0xDC, 0x1E], F64, 8, U_NONE),
        sp("ficom m32", &[0xDA, 0x16], I32, 4, U_NONE),
        sp("ficomp m32", &[0xDA, 0x1E], I32, 4, U_NONE),
        sp("ficom m16", &[0xDE, 0x16], I16, 2, U_NONE),
        sp("ficomp m16", &[0xDE, 0x1E], I16, 2, U_NONE),
        reg("fcom sti", &[0xD8, 0xD0], U_NONE),
        reg("fcomp sti", &[0xD8, 0xD8], U_NONE),
        reg("fcom sti (dc d0)", &[0xDC, 0xD0], U_NONE),
        reg("fcomp sti (dc d8)", &[0xDC, 0xD8], U_NONE),
        reg("fcomp sti (de d0)", &[0xDE, 0xD0], U_NONE),
        reg("fucom sti", &[0xDD, 0xE0], U_NONE),
        reg("fucomp sti", &[0xDD, 0xE8], U_NONE),
        op("fcompp", &[0xDE, 0xD9], U_NONE),
        op("fucompp", &[0xDA, 0xE9], U_NONE),
        op("ftst", &[0xD9, 0xE4], U_NONE),
        op("fxam", &[0xD9, 0xE5], U_NONE),
        reg("fcomi", &[0xDB, 0xF0], U_FCOMI),
        reg("fucomi", &[0xDB, 0xE8], U_FCOMI),
        reg("fcomip", &[0xDF, 0xF0], U_FCOMI),
        reg("fucomip", &[0xDF, 0xE8], U_FCOMI),
    ];
    run(&specs, N, 3, 30);
}

#[test]
fn loads_and_constants() {
    use MemIn::*;
    let specs = [
        sp("fld m32", &[0xD9, 0x06], F32, 4, U_ARITH),
        sp("fld m64", &[0xDD, 0x06], F64, 8, U_ARITH),
        sp("fld m80", &[0xDB, 0x2E], F80, 10, U_ARITH),
        sp("fild m16", &[0xDF, 0x06], I16, 2, U_ARITH),
        sp("fild m32", &[0xDB, 0x06], I32, 4, U_ARITH),
        sp("fild m64", &[0xDF, 0x2E], I64, 8, U_ARITH),
        sp("fbld", &[0xDF, 0x26], Bcd, 10, U_ARITH),
        reg("fld sti", &[0xD9, 0xC0], U_ARITH),
        op("fld1", &[0xD9, 0xE8], U_ARITH),
        op("fldl2t", &[0xD9, 0xE9], U_ARITH),
        op("fldl2e", &[0xD9, 0xEA], U_ARITH),
        op("fldpi", &[0xD9, 0xEB], U_ARITH),
        op("fldlg2", &[0xD9, 0xEC], U_ARITH),
        op("fldln2", &[0xD9, 0xED], U_ARITH),
        op("fldz", &[0xD9, 0xEE], U_ARITH),
    ];
    run(&specs, N, 4, 30);
}

#[test]
fn stores() {
    use MemIn::*;
    let specs = [
        sp("fst m32", &[0xD9, 0x16], Random, 4, U_ARITH),
        sp("fstp m32", &[0xD9, 0x1E], Random, 4, U_ARITH),
        sp("fst m64", &[0xDD, 0x16], Random, 8, U_ARITH),
        sp("fstp m64", &[0xDD, 0x1E], Random, 8, U_ARITH),
        sp("fstp m80", &[0xDB, 0x3E], Random, 10, U_ARITH),
        sp("fist m16", &[0xDF, 0x16], Random, 2, U_ARITH),
        sp("fistp m16", &[0xDF, 0x1E], Random, 2, U_ARITH),
        sp("fist m32", &[0xDB, 0x16], Random, 4, U_ARITH),
        sp("fistp m32", &[0xDB, 0x1E], Random, 4, U_ARITH),
        sp("fistp m64", &[0xDF, 0x3E], Random, 8, U_ARITH),
        sp("fisttp m16", &[0xDF, 0x0E], Random, 2, U_ARITH),
        sp("fisttp m32", &[0xDB, 0x0E], Random, 4, U_ARITH),
        sp("fisttp m64", &[0xDD, 0x0E], Random, 8, U_ARITH),
        sp("fbstp", &[0xDF, 0x36], Random, 10, U_ARITH),
        reg("fst sti", &[0xDD, 0xD0], U_ARITH),
        reg("fstp sti", &[0xDD, 0xD8], U_ARITH),
        reg("fstp sti (d9 d8)", &[0xD9, 0xD8], U_ARITH),
        reg("fstp sti (df d0)", &[0xDF, 0xD0], U_ARITH),
        reg("fstp sti (df d8)", &[0xDF, 0xD8], U_ARITH),
    ];
    run(&specs, N, 5, 30);
}

#[test]
fn stack_and_misc() {
    let specs = [
        reg("fxch", &[0xD9, 0xC8], U_ARITH),
        reg("fxch (dd c8)", &[0xDD, 0xC8], U_ARITH),
        reg("fxch (df c8)", &[0xDF, 0xC8], U_ARITH),
        reg("fcmovb", &[0xDA, 0xC0], U_ARITH),
        reg("fcmove", &[0xDA, 0xC8], U_ARITH),
        reg("fcmovbe", &[0xDA, 0xD0], U_ARITH),
        reg("fcmovu", &[0xDA, 0xD8], U_ARITH),
        reg("fcmovnb", &[0xDB, 0xC0], U_ARITH),
        reg("fcmovne", &[0xDB, 0xC8], U_ARITH),
        reg("fcmovnbe", &[0xDB, 0xD0], U_ARITH),
        reg("fcmovnu", &[0xDB, 0xD8], U_ARITH),
        op("fchs", &[0xD9, 0xE0], U_ARITH),
        op("fabs", &[0xD9, 0xE1], U_ARITH),
        op("frndint", &[0xD9, 0xFC], U_ARITH),
        op("fscale", &[0xD9, 0xFD], U_ARITH),
        op("fxtract", &[0xD9, 0xF4], U_ARITH),
        op("fprem", &[0xD9, 0xF8], U_NONE),
        op("fprem1", &[0xD9, 0xF5], U_NONE),
        op("fincstp", &[0xD9, 0xF7], U_ARITH),
        op("fdecstp", &[0xD9, 0xF6], U_ARITH),
        reg("ffree", &[0xDD, 0xC0], U_ALL),
        reg("ffreep", &[0xDF, 0xC0], U_ALL),
        op("fnop", &[0xD9, 0xD0], U_NONE),
        op("fnclex", &[0xDB, 0xE2], U_ALL),
        op("fninit", &[0xDB, 0xE3], U_NONE),
        op("fnstsw ax", &[0xDF, 0xE0], U_NONE),
        sp("fnstsw m16", &[0xDD, 0x3E], MemIn::Random, 2, U_NONE),
        sp("fnstcw", &[0xD9, 0x3E], MemIn::Random, 2, U_NONE),
        sp("fldcw", &[0xD9, 0x2E], MemIn::Random, 2, U_NONE),
    ];
    run(&specs, N, 6, 30);
}

#[test]
fn transcendentals() {
    let specs = [
        tr("f2xm1", &[0xD9, 0xF0], U_ARITH, 1, Domain::Unit),
        tr("fyl2x", &[0xD9, 0xF1], U_ARITH, 1, Domain::Positive),
        tr("fyl2xp1", &[0xD9, 0xF9], U_ARITH, 1, Domain::Small),
        tr("fpatan", &[0xD9, 0xF3], U_ARITH, 1, Domain::Any),
        tr("fsin", &[0xD9, 0xFE], U_TRIG, 1, Domain::Trig),
        tr("fcos", &[0xD9, 0xFF], U_TRIG, 1, Domain::Trig),
        tr("fsincos", &[0xD9, 0xFB], U_TRIG, 1, Domain::Trig),
        tr("fptan", &[0xD9, 0xF2], U_TRIG, 1, Domain::Trig),
    ];
    run(&specs, 2000, 7, 30);
}

#[test]
fn environment() {
    let specs = [
        sp("fnstenv", &[0xD9, 0x36], MemIn::Random, 12, U_NONE),
        sp("fldenv", &[0xD9, 0x26], MemIn::Env, 0, U_NONE),
        sp("fxsave", &[0x0F, 0xAE, 0x06], MemIn::Random, 512, U_NONE),
        sp("fxrstor", &[0x0F, 0xAE, 0x0E], MemIn::Fx, 0, U_NONE),
    ];
    run(&specs, 1000, 8, 30);
}
