//! Differential tests of the integer instructions: each case runs natively (host CPU,
//! 32-bit compatibility mode, see `common/native.rs`) and in ox86's interpreter;
//! registers, the data area (which also holds the stack) and every architecturally
//! defined flag must agree. Undefined flags (Intel SDM) are masked per instruction.

// The oracle is the host CPU itself: these tests exist on x86-64 hosts only.
#![cfg(target_arch = "x86_64")]

mod common;
use common::*;
use ox86_cpu::testkit::{DATA_ADDR, STACK_TOP};

/// A register or memory operand (memory: offset into the data area, absolute disp32).
#[derive(Clone, Copy, Debug)]
enum Rm {
    R(u8),
    M(u32),
}

fn rm_bytes(reg: u8, rm: Rm) -> Vec<u8> {
    match rm {
        Rm::R(r) => vec![modrm_reg(reg, r)],
        Rm::M(off) => modrm_abs(reg, DATA_ADDR + off),
    }
}

fn rand_data(rng: &mut Rng) -> Vec<u8> {
    (0..DATA_LEN).map(|_| rng.u32() as u8).collect()
}

/// A fresh case with random registers and data.
fn base_case(rng: &mut Rng, flags: u32) -> Case {
    let mut c = Case::new(Vec::new(), rand_regs(rng), flags);
    c.data = rand_data(rng);
    c
}

/// Picks a random r/m operand (register or memory at 0x100..0x300) holding `v`.
fn rand_rm(rng: &mut Rng, c: &mut Case, bits: u32, v: u32, allow_reg: bool) -> Rm {
    if allow_reg && rng.bool() {
        let r = rng.below(8) as u8;
        set_reg(&mut c.regs, r, bits, v);
        Rm::R(r)
    } else {
        let off = 0x100 + rng.below(0x200);
        wr(&mut c.data, off as usize, bits, v);
        Rm::M(off)
    }
}

fn rand_reg(rng: &mut Rng, c: &mut Case, bits: u32, v: u32) -> u8 {
    let r = rng.below(8) as u8;
    set_reg(&mut c.regs, r, bits, v);
    r
}

fn bits3(rng: &mut Rng) -> u32 {
    rng.pick(&[8, 16, 32])
}
fn bits2(rng: &mut Rng) -> u32 {
    rng.pick(&[16, 32])
}

/// Optional LOCK prefix for a read-modify-write memory destination.
fn maybe_lock(rng: &mut Rng, rm: Rm) -> Vec<u8> {
    if matches!(rm, Rm::M(_)) && rng.below(4) == 0 {
        vec![0xf0]
    } else {
        vec![]
    }
}

/// A shift/rotate count: small counts, edges, and random bytes.
fn rand_count(rng: &mut Rng) -> u32 {
    match rng.below(4) {
        0 => rng.below(41),
        1 => rng.below(256),
        2 => rng.pick(&[0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 0x21, 0xff]),
        _ => rng.below(34),
    }
}

const CASES: usize = 8000;

// ---------------------------------------------------------------- ALU

#[test]
fn alu_binary() {
    // ADD OR ADC SBB AND SUB XOR CMP in every encoding form.
    run_test("alu_binary", 1, |k, rng| {
        for _ in 0..CASES * 3 {
            let op = rng.below(8) as u8;
            let logic = matches!(op, 1 | 4 | 6);
            let mut c = base_case(rng, if logic { ALL & !AF } else { ALL });
            let bits = bits3(rng);
            let w = u8::from(bits != 8);
            let (a, b) = (rng.val(bits), rng.val(bits));
            let mut code = osz(bits).to_vec();
            match rng.below(5) {
                0 => {
                    let reg = rand_reg(rng, &mut c, bits, b);
                    let rm = rand_rm(rng, &mut c, bits, a, true);
                    if op != 7 {
                        code.splice(0..0, maybe_lock(rng, rm));
                    }
                    code.push(op * 8 + w);
                    code.extend(rm_bytes(reg, rm));
                }
                1 => {
                    let rm = rand_rm(rng, &mut c, bits, b, true);
                    let reg = rand_reg(rng, &mut c, bits, a);
                    code.push(op * 8 + 2 + w);
                    code.extend(rm_bytes(reg, rm));
                }
                2 => {
                    set_reg(&mut c.regs, 0, bits, a);
                    code.push(op * 8 + 4 + w);
                    code.extend(imm(bits, b));
                }
                3 => {
                    let rm = rand_rm(rng, &mut c, bits, a, true);
                    if op != 7 {
                        code.splice(0..0, maybe_lock(rng, rm));
                    }
                    code.push(if bits == 8 { 0x80 } else { 0x81 });
                    code.extend(rm_bytes(op, rm));
                    code.extend(imm(bits, b));
                }
                _ => {
                    let rm = rand_rm(rng, &mut c, bits, a, true);
                    code.push(if bits == 8 { 0x82 } else { 0x83 });
                    code.extend(rm_bytes(op, rm));
                    code.push(rng.val(8) as u8);
                }
            }
            c.code = code;
            k.check(&c);
        }
    });
}

#[test]
fn alu_unary_test() {
    // TEST, INC, DEC (incl. 0x40/0x48 short forms), NEG, NOT.
    run_test("alu_unary_test", 2, |k, rng| {
        for _ in 0..CASES * 2 {
            let bits = bits3(rng);
            let w = u8::from(bits != 8);
            let a = rng.val(bits);
            let mut code = osz(bits).to_vec();
            let kind = rng.below(9);
            let flags = match kind {
                0..=2 => ALL & !AF, // TEST
                _ => ALL,
            };
            let mut c = base_case(rng, flags);
            match kind {
                0 => {
                    let b = rng.val(bits);
                    let reg = rand_reg(rng, &mut c, bits, b);
                    let rm = rand_rm(rng, &mut c, bits, a, true);
                    code.push(0x84 + w);
                    code.extend(rm_bytes(reg, rm));
                }
                1 => {
                    set_reg(&mut c.regs, 0, bits, a);
                    code.push(0xa8 + w);
                    code.extend(imm(bits, rng.val(bits)));
                }
                2 => {
                    let rm = rand_rm(rng, &mut c, bits, a, true);
                    code.push(0xf6 + w);
                    code.extend(rm_bytes(0, rm));
                    code.extend(imm(bits, rng.val(bits)));
                }
                3 | 4 => {
                    // INC/DEC r/m
                    let rm = rand_rm(rng, &mut c, bits, a, true);
                    code.splice(0..0, maybe_lock(rng, rm));
                    code.push(if bits == 8 { 0xfe } else { 0xff });
                    code.extend(rm_bytes(kind as u8 - 3, rm));
                }
                5 | 6 if bits != 8 => {
                    // INC/DEC r16/r32 short forms
                    let r = rand_reg(rng, &mut c, bits, a);
                    code.push(if kind == 5 { 0x40 } else { 0x48 } + r);
                }
                5 | 6 => {
                    code.clear();
                    let v_ = rng.val(32);
                    let r = rand_reg(rng, &mut c, 32, v_);
                    code.push(if kind == 5 { 0x40 } else { 0x48 } + r);
                }
                _ => {
                    // NOT (/2), NEG (/3)
                    let rm = rand_rm(rng, &mut c, bits, a, true);
                    code.splice(0..0, maybe_lock(rng, rm));
                    code.push(0xf6 + w);
                    code.extend(rm_bytes(kind as u8 - 5, rm));
                }
            }
            c.code = code;
            k.check(&c);
        }
    });
}

// ---------------------------------------------------------------- shifts

/// Defined flags after a group-2 shift/rotate (`op` = ModRM reg field).
fn shift_flags(op: u8, bits: u32, count: u32) -> u32 {
    let c = count & 0x1f;
    if c == 0 {
        return ALL; // nothing changes
    }
    let of = if c == 1 { OF } else { 0 };
    match op {
        0..=3 => (ALL & !OF) | of, // rotates: only CF/OF written
        _ => {
            let mut f = (ALL & !OF & !AF) | of;
            if (op == 4 || op == 5 || op == 6) && c >= bits {
                f &= !CF;
            }
            f
        }
    }
}

#[test]
fn shifts_rotates() {
    // ROL ROR RCL RCR SHL SHR SAL(/6) SAR by 1, by CL and by imm8.
    run_test("shifts_rotates", 3, |k, rng| {
        for _ in 0..CASES * 3 {
            let bits = bits3(rng);
            let w = u8::from(bits != 8);
            let op = rng.below(8) as u8;
            let form = rng.below(3);
            let count = if form == 0 { 1 } else { rand_count(rng) };
            let mut c = base_case(rng, shift_flags(op, bits, count));
            let a = rng.val(bits);
            let rm = rand_rm(rng, &mut c, bits, a, true);
            if form == 1 {
                if let Rm::R(1) = rm {
                    // the operand is CL/CX/ECX itself: the count is its low byte
                    let cnt = get_reg(&c.regs, 1, 8);
                    c.flags = shift_flags(op, bits, cnt);
                } else {
                    set_reg(&mut c.regs, 1, 8, count);
                }
            }
            let mut code = osz(bits).to_vec();
            code.push(
                match form {
                    0 => 0xd0,
                    1 => 0xd2,
                    _ => 0xc0,
                } + w,
            );
            code.extend(rm_bytes(op, rm));
            if form == 2 {
                code.push(count as u8);
            }
            c.code = code;
            k.check(&c);
        }
    });
}

#[test]
fn shld_shrd() {
    run_test("shld_shrd", 4, |k, rng| {
        for _ in 0..CASES * 2 {
            let bits = bits2(rng);
            let right = rng.bool();
            let by_cl = rng.bool();
            let count = rand_count(rng);
            let mut c = base_case(rng, ALL);
            let a = rng.val(bits);
            let b = rng.val(bits);
            let reg = rand_reg(rng, &mut c, bits, b);
            let rm = rand_rm(rng, &mut c, bits, a, true);
            let mut cnt = count;
            if by_cl {
                set_reg(&mut c.regs, 1, 8, count);
                // CL may have been overwritten by the operands.
                cnt = get_reg(&c.regs, 1, 8);
            }
            let n = cnt & 31;
            if n != 0 {
                c.flags = (ALL & !AF & !OF) | if n == 1 { OF } else { 0 };
                if n > bits {
                    // result and flags undefined
                    c.flags = DF;
                    match rm {
                        Rm::R(r) => c.reg_mask[r as usize] = !mask(bits),
                        Rm::M(off) => {
                            let mut m = vec![0xff; DATA_LEN];
                            for i in 0..(bits / 8) as usize {
                                m[off as usize + i] = 0;
                            }
                            c.data_mask = Some(m);
                        }
                    }
                }
            }
            let mut code = osz(bits).to_vec();
            code.extend([0x0f, if right { 0xac } else { 0xa4 } + u8::from(by_cl)]);
            code.extend(rm_bytes(reg, rm));
            if !by_cl {
                code.push(count as u8);
            }
            c.code = code;
            k.check(&c);
        }
    });
}

// ---------------------------------------------------------------- mul/div

#[test]
fn mul_imul() {
    run_test("mul_imul", 5, |k, rng| {
        for _ in 0..CASES * 2 {
            let mut c = base_case(rng, CF | OF | DF);
            let form = rng.below(4);
            let bits = if form == 0 { bits3(rng) } else { bits2(rng) };
            let w = u8::from(bits != 8);
            let a = rng.val(bits);
            let b = rng.val(bits);
            let mut code = osz(bits).to_vec();
            match form {
                0 => {
                    // MUL /4, IMUL /5: accumulator times r/m
                    set_reg(&mut c.regs, 0, bits, a);
                    let rm = rand_rm(rng, &mut c, bits, b, true);
                    code.push(0xf6 + w);
                    code.extend(rm_bytes(4 + rng.below(2) as u8, rm));
                }
                1 => {
                    let rm = rand_rm(rng, &mut c, bits, b, true);
                    let reg = rand_reg(rng, &mut c, bits, a);
                    code.extend([0x0f, 0xaf]);
                    code.extend(rm_bytes(reg, rm));
                }
                2 => {
                    let rm = rand_rm(rng, &mut c, bits, b, true);
                    let reg = rng.below(8) as u8;
                    code.push(0x69);
                    code.extend(rm_bytes(reg, rm));
                    code.extend(imm(bits, a));
                }
                _ => {
                    let rm = rand_rm(rng, &mut c, bits, b, true);
                    let reg = rng.below(8) as u8;
                    code.push(0x6b);
                    code.extend(rm_bytes(reg, rm));
                    code.push(rng.val(8) as u8);
                }
            }
            c.code = code;
            k.check(&c);
        }
    });
}

fn sext(v: u64, bits: u32) -> i128 {
    ((v << (64 - bits)) as i64 >> (64 - bits)) as i128
}

#[test]
fn div_idiv() {
    let mut faulting = 0;
    run_test("div_idiv", 6, |k, rng| {
        for _ in 0..CASES * 2 {
            let bits = bits3(rng);
            let w = u8::from(bits != 8);
            let signed = rng.bool();
            let mut c = base_case(rng, DF);
            let d = match rng.below(8) {
                0 => 0,
                _ => rng.val(bits),
            };
            // dividend: random, or built so that the quotient fits
            let dividend: u64 = match rng.below(4) {
                0 => (rng.next_u64()) & (u64::MAX >> (64 - 2 * bits)),
                1 if signed => {
                    // -2^(2n-1) or the most negative quotient
                    let v = (1u64 << (2 * bits - 1)).wrapping_neg();
                    v & (u64::MAX >> (64 - 2 * bits))
                }
                _ => {
                    let q = rng.val(bits) as u64;
                    let q = if signed { sext(q, bits) } else { q as i128 };
                    let dd = if signed {
                        sext(d as u64, bits)
                    } else {
                        d as i128
                    };
                    let r = if dd == 0 {
                        0
                    } else {
                        (rng.next_u64() as i128).rem_euclid(dd.abs())
                    };
                    let prod = q * dd;
                    let v = if prod < 0 { prod - r } else { prod + r };
                    (v as u64) & (u64::MAX >> (64 - 2 * bits))
                }
            };
            let d = if signed && rng.below(16) == 0 {
                mask(bits)
            } else {
                d
            }; // -1
            let lo = (dividend & mask(bits) as u64) as u32;
            let hi = (dividend >> bits) as u32 & mask(bits);
            let mut rm = rand_rm(rng, &mut c, bits, d, true);
            // the divisor register must not overlap the dividend
            if let Rm::R(r) = rm {
                let clash = if bits == 8 {
                    r == 0 || r == 4
                } else {
                    r == 0 || r == 2
                };
                if clash {
                    let off = 0x100 + rng.below(0x200);
                    wr(&mut c.data, off as usize, bits, d);
                    rm = Rm::M(off);
                }
            }
            if bits == 8 {
                set_reg(&mut c.regs, 0, 16, dividend as u32);
            } else {
                set_reg(&mut c.regs, 0, bits, lo);
                set_reg(&mut c.regs, 2, bits, hi);
            }
            let fault = if d == 0 {
                true
            } else if signed {
                let q = sext(dividend, 2 * bits) / sext(d as u64, bits);
                q < -(1i128 << (bits - 1)) || q >= (1i128 << (bits - 1))
            } else {
                dividend / d as u64 > mask(bits) as u64
            };
            c.note = format!("divisor={d:#x} dividend={dividend:#x} fault={fault}");
            if fault {
                c.expect_exception = Some(0);
                faulting += 1;
            }
            let mut code = osz(bits).to_vec();
            code.push(0xf6 + w);
            code.extend(rm_bytes(if signed { 7 } else { 6 }, rm));
            c.code = code;
            k.check(&c);
        }
    });
    assert!(
        faulting > 100,
        "too few faulting division cases: {faulting}"
    );
}

// ---------------------------------------------------------------- BCD

#[test]
fn bcd() {
    run_test("bcd", 7, |k, rng| {
        for _ in 0..CASES * 2 {
            let kind = rng.below(6);
            let flags = match kind {
                0 | 1 => ALL & !OF,     // DAA DAS
                2 | 3 => CF | AF | DF,  // AAA AAS
                _ => SF | ZF | PF | DF, // AAM AAD
            };
            let mut c = base_case(rng, flags);
            c.regs.gpr[EAX] = rng.u32();
            set_reg(&mut c.regs, 0, 8, rng.u32());
            let mut code = vec![[0x27, 0x2f, 0x37, 0x3f, 0xd4, 0xd5][kind as usize]];
            if kind >= 4 {
                let base = match rng.below(4) {
                    0 => 10,
                    1 => rng.below(3),
                    _ => rng.u32() & 0xff,
                } as u8;
                code.push(base);
                if kind == 4 && base == 0 {
                    c.expect_exception = Some(0);
                }
            }
            c.code = code;
            k.check(&c);
        }
    });
}

// ---------------------------------------------------------------- bits

#[test]
fn bit_test() {
    // BT BTS BTR BTC with register offsets (reg and memory, beyond the operand) and imm8.
    run_test("bit_test", 8, |k, rng| {
        for _ in 0..CASES * 2 {
            let bits = bits2(rng);
            let op = rng.below(4) as u8; // BT BTS BTR BTC
            let mut c = base_case(rng, CF | ZF | DF);
            let a = rng.val(bits);
            let mut code = osz(bits).to_vec();
            if rng.bool() {
                // register offset
                let mem = rng.bool();
                let off_val = if mem {
                    // signed bit offset reaching +-0x1f0 bytes around the operand
                    (rng.below(0x1f0 * 16) as i32 - 0x1f0 * 8) as u32
                } else {
                    rng.reg(32)
                };
                let rm = if mem {
                    wr(&mut c.data, 0x200, bits, a);
                    Rm::M(0x200)
                } else {
                    Rm::R(rng.below(8) as u8)
                };
                let reg = rng.below(8) as u8;
                c.regs.gpr[reg as usize] = off_val;
                if let Rm::R(r) = rm {
                    set_reg(&mut c.regs, r, bits, a);
                }
                if op != 0 {
                    code.splice(0..0, maybe_lock(rng, rm));
                }
                code.extend([0x0f, 0xa3 + 8 * op]);
                code.extend(rm_bytes(reg, rm));
            } else {
                let rm = rand_rm(rng, &mut c, bits, a, true);
                if op != 0 {
                    code.splice(0..0, maybe_lock(rng, rm));
                }
                code.extend([0x0f, 0xba]);
                code.extend(rm_bytes(4 + op, rm));
                code.push(rng.u32() as u8);
            }
            c.code = code;
            k.check(&c);
        }
    });
}

#[test]
fn bsf_bsr_bswap() {
    run_test("bsf_bsr_bswap", 9, |k, rng| {
        for _ in 0..CASES {
            let bits = bits2(rng);
            let mut c = base_case(rng, ZF | DF);
            let mut code = osz(bits).to_vec();
            match rng.below(5) {
                0 => {
                    c.flags = ALL;
                    code.clear();
                    code.extend([0x0f, 0xc8 + rng.below(8) as u8]);
                }
                kind => {
                    let v = if rng.below(4) == 0 {
                        1u32 << rng.below(bits)
                    } else {
                        rng.val(bits)
                    };
                    let rm = rand_rm(rng, &mut c, bits, v, true);
                    let reg = rng.below(8) as u8;
                    code.extend([0x0f, if kind <= 2 { 0xbc } else { 0xbd }]);
                    code.extend(rm_bytes(reg, rm));
                }
            }
            c.code = code;
            k.check(&c);
        }
    });
}

// ---------------------------------------------------------------- conditions

#[test]
fn setcc_cmovcc_jcc() {
    run_test("setcc_cmovcc_jcc", 10, |k, rng| {
        for _ in 0..CASES * 2 {
            let cc = rng.below(16) as u8;
            let mut c = base_case(rng, ALL);
            let code = match rng.below(6) {
                0 => {
                    let v_ = rng.u32();
                    let rm = rand_rm(rng, &mut c, 8, v_, true);
                    let mut v = vec![0x0f, 0x90 + cc];
                    v.extend(rm_bytes(rng.below(8) as u8, rm));
                    v
                }
                1 => {
                    let bits = bits2(rng);
                    let v_ = rng.u32();
                    let rm = rand_rm(rng, &mut c, bits, v_, true);
                    let mut v = osz(bits).to_vec();
                    v.extend([0x0f, 0x40 + cc]);
                    v.extend(rm_bytes(rng.below(8) as u8, rm));
                    v
                }
                2 => vec![0x70 + cc, 5, 0xb8, 0x11, 0x11, 0x11, 0x11],
                3 => vec![0x0f, 0x80 + cc, 5, 0, 0, 0, 0xb8, 0x11, 0x11, 0x11, 0x11],
                4 => {
                    // JECXZ/JCXZ, LOOP, LOOPE, LOOPNE with small or edge counts
                    let r_ = rng.u32();
                    c.regs.gpr[ECX] = rng.pick(&[0, 1, 2, 0x10000, 0x10001, 0xffff_ffff, r_]);
                    let op = rng.pick(&[0xe0u8, 0xe1, 0xe2, 0xe3]);
                    let mut v = if rng.below(3) == 0 {
                        vec![0x67]
                    } else {
                        vec![]
                    };
                    v.extend([op, 5, 0xb8, 0x11, 0x11, 0x11, 0x11]);
                    v
                }
                _ => {
                    // LAHF SAHF CLC STC CMC CLD STD
                    c.regs.gpr[EAX] = rng.u32();
                    let op = rng.pick(&[0x9fu8, 0x9e, 0xf8, 0xf9, 0xf5, 0xfc, 0xfd]);
                    if rng.bool() {
                        c.regs.eflags |= DF;
                    }
                    vec![op]
                }
            };
            c.code = code;
            k.check(&c);
        }
    });
}

// ---------------------------------------------------------------- data movement

#[test]
fn data_movement() {
    // CBW CWDE CWD CDQ, MOVZX MOVSX, XCHG XADD CMPXCHG CMPXCHG8B, XLAT.
    run_test("data_movement", 11, |k, rng| {
        for _ in 0..CASES * 3 {
            let mut c = base_case(rng, ALL);
            let mut code = Vec::new();
            match rng.below(8) {
                0 => {
                    c.regs.gpr[EAX] = rng.reg(32);
                    if rng.bool() {
                        set_reg(&mut c.regs, 0, 16, rng.val(16));
                    } else {
                        set_reg(&mut c.regs, 0, 8, rng.val(8));
                    }
                    code.extend(rng.pick(&[&[0x66u8, 0x98][..], &[0x98], &[0x66, 0x99], &[0x99]]));
                }
                1 => {
                    // MOVZX/MOVSX r16/r32 <- r/m8, r32 <- r/m16
                    let sbits = rng.pick(&[8, 16]);
                    let dbits = if sbits == 16 { 32 } else { bits2(rng) };
                    let v_ = rng.val(sbits);
                    let rm = rand_rm(rng, &mut c, sbits, v_, true);
                    code.extend(osz(dbits));
                    let op = if rng.bool() { 0xb6 } else { 0xbe } + u8::from(sbits == 16);
                    code.extend([0x0f, op]);
                    code.extend(rm_bytes(rng.below(8) as u8, rm));
                }
                2 => {
                    // XCHG r/m, r and XCHG eAX, r
                    let bits = bits3(rng);
                    code.extend(osz(bits));
                    if bits != 8 && rng.bool() {
                        code.push(0x90 + rng.below(8) as u8);
                    } else {
                        let v_ = rng.val(bits);
                        let rm = rand_rm(rng, &mut c, bits, v_, true);
                        code.splice(0..0, maybe_lock(rng, rm));
                        code.push(0x86 + u8::from(bits != 8));
                        code.extend(rm_bytes(rng.below(8) as u8, rm));
                    }
                }
                3 => {
                    // XADD
                    let bits = bits3(rng);
                    let a = rng.val(bits);
                    let b = rng.val(bits);
                    let reg = rand_reg(rng, &mut c, bits, b);
                    let rm = rand_rm(rng, &mut c, bits, a, true);
                    code.extend(maybe_lock(rng, rm));
                    code.extend(osz(bits));
                    code.extend([0x0f, 0xc0 + u8::from(bits != 8)]);
                    code.extend(rm_bytes(reg, rm));
                }
                4 => {
                    // CMPXCHG, the accumulator often equal to the destination
                    let bits = bits3(rng);
                    let a = rng.val(bits);
                    let rm = rand_rm(rng, &mut c, bits, a, true);
                    let v_ = rng.val(bits);
                    let reg = rand_reg(rng, &mut c, bits, v_);
                    if rng.bool() {
                        set_reg(&mut c.regs, 0, bits, a);
                    } else if rng.bool() {
                        set_reg(&mut c.regs, 0, bits, rng.val(bits));
                    }
                    // re-establish the destination if the accumulator was it
                    code.extend(maybe_lock(rng, rm));
                    code.extend(osz(bits));
                    code.extend([0x0f, 0xb0 + u8::from(bits != 8)]);
                    code.extend(rm_bytes(reg, rm));
                }
                5 => {
                    // CMPXCHG8B
                    let off = 0x100 + rng.below(0x200);
                    let m = rng.next_u64();
                    c.data[off as usize..off as usize + 8].copy_from_slice(&m.to_le_bytes());
                    match rng.below(3) {
                        0 => {
                            c.regs.gpr[EAX] = m as u32;
                            c.regs.gpr[EDX] = (m >> 32) as u32;
                        }
                        1 => {
                            c.regs.gpr[EAX] = m as u32;
                        }
                        _ => {}
                    }
                    if rng.bool() {
                        code.push(0xf0);
                    }
                    code.extend([0x0f, 0xc7]);
                    code.extend(modrm_abs(1, DATA_ADDR + off));
                }
                6 => {
                    // XLAT, with or without a segment override
                    c.regs.gpr[EBX] = DATA_ADDR + rng.below(0x300);
                    if rng.bool() {
                        code.push(rng.pick(&[0x26u8, 0x2e, 0x36, 0x3e]));
                    }
                    code.push(0xd7);
                }
                _ => {
                    // MOV forms: 88-8B, B0-BF, C6/C7, A0-A3 (moffs)
                    let bits = bits3(rng);
                    let w = u8::from(bits != 8);
                    code.extend(osz(bits));
                    match rng.below(4) {
                        0 => {
                            let v_ = rng.val(bits);
                            let rm = rand_rm(rng, &mut c, bits, v_, true);
                            code.push(0x88 + w + 2 * rng.below(2) as u8);
                            code.extend(rm_bytes(rng.below(8) as u8, rm));
                        }
                        1 => {
                            code.push(if bits == 8 { 0xb0 } else { 0xb8 } + rng.below(8) as u8);
                            code.extend(imm(bits, rng.val(bits)));
                        }
                        2 => {
                            let rm = rand_rm(rng, &mut c, bits, 0, true);
                            code.push(0xc6 + w);
                            code.extend(rm_bytes(0, rm));
                            code.extend(imm(bits, rng.val(bits)));
                        }
                        _ => {
                            code.push(0xa0 + w + 2 * rng.below(2) as u8);
                            code.extend((DATA_ADDR + rng.below(0x300)).to_le_bytes());
                        }
                    }
                }
            }
            c.code = code;
            k.check(&c);
        }
    });
}

// ---------------------------------------------------------------- addressing

/// A random 32- or 16-bit-address ModRM memory operand: (bytes after the opcode,
/// a closure-free description of how to compute its effective address).
struct Addr {
    bytes: Vec<u8>,
    a16: bool,
}

fn rand_addr(rng: &mut Rng, reg: u8, a16: bool) -> Addr {
    let md = rng.below(3) as u8;
    let rm = rng.below(8) as u8;
    let mut b = vec![md << 6 | (reg & 7) << 3 | rm];
    let disp8 = |rng: &mut Rng, b: &mut Vec<u8>| b.push(rng.u32() as u8);
    if a16 {
        match (md, rm) {
            (0, 6) | (2, _) => b.extend(&(rng.u32() as u16).to_le_bytes()),
            (1, _) => disp8(rng, &mut b),
            _ => {}
        }
    } else {
        let mut base5 = false;
        if rm == 4 {
            let sib = rng.u32() as u8;
            base5 = sib & 7 == 5;
            b.push(sib);
        }
        match (md, rm) {
            (0, 5) => b.extend(rng.u32().to_le_bytes()),
            (0, 4) if base5 => b.extend(rng.u32().to_le_bytes()),
            (1, _) => disp8(rng, &mut b),
            (2, _) => b.extend(rng.u32().to_le_bytes()),
            _ => {}
        }
    }
    Addr { bytes: b, a16 }
}

/// Effective address of a ModRM memory operand (bytes as produced by rand_addr).
fn eff_addr(regs: &[u32; 8], a: &Addr) -> u32 {
    let b = &a.bytes;
    let md = b[0] >> 6;
    let rm = b[0] & 7;
    if a.a16 {
        let r16 = |i: usize| regs[i] & 0xffff;
        let (bx, bp, si, di) = (r16(EBX), r16(EBP), r16(ESI), r16(EDI));
        let base = match rm {
            0 => bx + si,
            1 => bx + di,
            2 => bp + si,
            3 => bp + di,
            4 => si,
            5 => di,
            6 if md == 0 => 0,
            6 => bp,
            _ => bx,
        };
        let disp = match (md, rm) {
            (0, 6) | (2, _) => u16::from_le_bytes([b[1], b[2]]) as u32,
            (1, _) => b[1] as i8 as i32 as u32,
            _ => 0,
        };
        return base.wrapping_add(disp) & 0xffff;
    }
    let mut i = 1;
    let mut ea: u32;
    let mut disp32 = md == 2;
    if rm == 4 {
        let sib = b[1];
        i = 2;
        let (scale, idx, base) = (sib >> 6, (sib >> 3) & 7, sib & 7);
        ea = if idx == 4 {
            0
        } else {
            regs[idx as usize] << scale
        };
        if base == 5 && md == 0 {
            disp32 = true;
        } else {
            ea = ea.wrapping_add(regs[base as usize]);
        }
    } else if rm == 5 && md == 0 {
        ea = 0;
        disp32 = true;
    } else {
        ea = regs[rm as usize];
    }
    let disp = if disp32 {
        u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
    } else if md == 1 {
        b[i] as i8 as i32 as u32
    } else {
        0
    };
    ea.wrapping_add(disp)
}

#[test]
fn lea_all_forms() {
    run_test("lea_all_forms", 12, |k, rng| {
        for _ in 0..CASES * 2 {
            let mut c = base_case(rng, ALL);
            let a16 = rng.below(3) == 0;
            let bits = bits2(rng);
            let mut code = osz(bits).to_vec();
            if a16 {
                code.push(0x67);
            }
            code.push(0x8d);
            let r_ = rng.below(8) as u8;
            let a = rand_addr(rng, r_, a16);
            code.extend(&a.bytes);
            c.code = code;
            k.check(&c);
        }
    });
}

#[test]
fn memory_addressing_forms() {
    // MOV loads/stores through every 32-bit ModRM/SIB form, with the registers
    // chosen so that the effective address falls in the data area; plus segment
    // override prefixes (all flat).
    run_test("memory_addressing_forms", 13, |k, rng| {
        let mut done = 0;
        while done < CASES * 2 {
            let mut c = base_case(rng, ALL);
            let bits = bits3(rng);
            let store = rng.bool();
            let reg = rng.below(8) as u8;
            let a = rand_addr(rng, reg, false);
            // pick a target and solve for one register or the displacement
            let target = DATA_ADDR + 0x40 + rng.below(0x300);
            let b0 = a.bytes[0];
            let (md, rm) = (b0 >> 6, b0 & 7);
            let mut regs = c.regs.gpr;
            let ea0 = eff_addr(&regs, &a);
            let adjust = target.wrapping_sub(ea0);
            // Registers that contribute to the address with scale 1 (base).
            let base_reg = if rm == 4 {
                let sib = a.bytes[1];
                let (idx, base) = ((sib >> 3) & 7, sib & 7);
                if (base == 5 && md == 0) || idx == base {
                    None
                } else {
                    Some(base)
                }
            } else if rm == 5 && md == 0 {
                None
            } else {
                Some(rm)
            };
            let mut a = a;
            match base_reg {
                Some(r) if r != reg || store => {
                    regs[r as usize] = regs[r as usize].wrapping_add(adjust)
                }
                _ => {
                    // disp32 forms: adjust the displacement; others: skip
                    let di = if rm == 4 { 2 } else { 1 };
                    let has_disp32 =
                        md == 2 || (md == 0 && (rm == 5 || (rm == 4 && a.bytes[1] & 7 == 5)));
                    if !has_disp32 {
                        continue;
                    }
                    let d = u32::from_le_bytes(a.bytes[di..di + 4].try_into().unwrap())
                        .wrapping_add(adjust);
                    a.bytes[di..di + 4].copy_from_slice(&d.to_le_bytes());
                }
            }
            c.regs.gpr = regs;
            if eff_addr(&c.regs.gpr, &a) != target {
                continue;
            }
            let mut code = Vec::new();
            if rng.below(4) == 0 {
                let segs: &[u8] = if store {
                    &[0x26, 0x36, 0x3e]
                } else {
                    &[0x26, 0x2e, 0x36, 0x3e]
                };
                code.push(rng.pick(segs));
            }
            code.extend(osz(bits));
            code.push(0x88 + u8::from(bits != 8) + if store { 0 } else { 2 });
            code.extend(&a.bytes);
            c.code = code;
            c.note = format!("ea={target:#x}");
            k.check(&c);
            done += 1;
        }
    });
}

// ---------------------------------------------------------------- stack

#[test]
fn stack_ops() {
    // PUSH/POP (reg, imm, mem, ESP itself), PUSHA/POPA, PUSHF/POPF, ENTER/LEAVE,
    // CALL/RET imm; the stack lives in the data area, so it is compared.
    run_test("stack_ops", 14, |k, rng| {
        for _ in 0..CASES * 2 {
            let mut c = base_case(rng, ALL);
            c.regs.gpr[ESP] = DATA_ADDR + 0x300 + rng.below(0x80);
            let b16 = rng.below(3) == 0;
            let mut code = if b16 { vec![0x66] } else { vec![] };
            match rng.below(12) {
                0 => code.push(0x50 + rng.below(8) as u8),
                1 => code.push(0x58 + rng.below(8) as u8),
                2 => {
                    code.push(0x68);
                    code.extend(imm(if b16 { 16 } else { 32 }, rng.val(32)));
                }
                3 => code.extend([0x6a, rng.val(8) as u8]),
                4 => {
                    code.extend([0xff]);
                    code.extend(modrm_abs(6, DATA_ADDR + 0x100 + rng.below(0x100)));
                }
                5 => {
                    if rng.bool() {
                        code.extend([0x8f]);
                        code.extend(modrm_abs(0, DATA_ADDR + 0x100 + rng.below(0x100)));
                    } else {
                        // pop [esp+disp8]: the address uses the incremented ESP
                        code.extend([0x8f, 0x44, 0x24, rng.below(0x40) as u8]);
                    }
                }
                6 => code.push(if rng.bool() { 0x60 } else { 0x61 }),
                7 => {
                    // PUSHF: IF/IOPL/AC... differ between ring 3 and ring 0
                    code.push(0x9c);
                    let mut m = vec![0xff; DATA_LEN];
                    let sp = (c.regs.gpr[ESP] - DATA_ADDR) as usize;
                    let n = if b16 { 2 } else { 4 };
                    for i in 0..n {
                        m[sp - n + i] = [0xd7, 0x0c, 0, 0][i];
                    }
                    c.data_mask = Some(m);
                }
                8 => {
                    // POPF with random status flags and DF (never TF/IF/IOPL/AC)
                    code.push(0x9d);
                    let sp = (c.regs.gpr[ESP] - DATA_ADDR) as usize;
                    let v = rng.u32() & ALL;
                    wr(&mut c.data, sp, 32, v);
                }
                9 => {
                    // ENTER size, level
                    c.regs.gpr[EBP] = DATA_ADDR + 0x100 + rng.below(0x200);
                    // (the host probes the final stack location, so stay in the data area)
                    code.push(0xc8);
                    let x_ = rng.below(0x280) as u16;
                    code.extend(rng.pick(&[0u16, 1, 2, 4, x_]).to_le_bytes());
                    let (x_, y_) = (rng.below(32) as u8, rng.u32() as u8);
                    code.push(rng.pick(&[0u8, 1, 2, 3, x_, y_]));
                }
                10 => {
                    c.regs.gpr[EBP] = DATA_ADDR + 0x10 + rng.below(0x3e0);
                    code.push(0xc9);
                }
                _ => {
                    // call +2 ; jmp +3 ; ret imm16   (or plain ret)
                    code.clear();
                    let x_ = rng.below(0x100) as u16;
                    let n = rng.pick(&[0u16, 4, 8, x_]);
                    if rng.bool() {
                        code.extend([0xe8, 2, 0, 0, 0, 0xeb, 3, 0xc2]);
                        code.extend(n.to_le_bytes());
                    } else {
                        code.extend([0xe8, 2, 0, 0, 0, 0xeb, 1, 0xc3]);
                    }
                }
            }
            c.code = code;
            k.check(&c);
        }
    });
    let _ = STACK_TOP;
}

// ---------------------------------------------------------------- strings

#[test]
fn string_ops() {
    // MOVS STOS LODS SCAS CMPS, byte/word/dword, no prefix / REP / REPE / REPNE,
    // DF = 0 and 1, small counts.
    run_test("string_ops", 15, |k, rng| {
        for _ in 0..CASES * 2 {
            let mut c = base_case(rng, ALL);
            let size = rng.pick(&[1u32, 2, 4]);
            let op = rng.pick(&[0xa4u8, 0xaa, 0xac, 0xae, 0xa6]); // MOVS STOS LODS SCAS CMPS
            let cmp = op == 0xae || op == 0xa6;
            if rng.bool() {
                c.regs.eflags |= DF;
            }
            let count = match rng.below(4) {
                0 => rng.pick(&[0u32, 1, 2]),
                _ => rng.below(17),
            };
            c.regs.gpr[ECX] = count;
            c.regs.gpr[ESI] = DATA_ADDR + 0x60 + rng.below(0x2a0);
            c.regs.gpr[EDI] = DATA_ADDR + 0x60 + rng.below(0x2a0);
            c.regs.gpr[ESP] = DATA_ADDR + 0x3f0;
            if cmp {
                // a small alphabet, and often equal runs, so REPE/REPNE stop anywhere
                for b in c.data.iter_mut() {
                    *b = (rng.below(2)) as u8;
                }
                c.regs.gpr[EAX] = rng.u32() & 0x0101_0101;
                if rng.bool() {
                    let s = (c.regs.gpr[ESI] - DATA_ADDR) as usize - 0x40;
                    let d = (c.regs.gpr[EDI] - DATA_ADDR) as usize - 0x40;
                    let src: Vec<u8> = c.data[s..s + 0x80].to_vec();
                    c.data[d..d + 0x80].copy_from_slice(&src);
                    let x = d + rng.below(0x80) as usize;
                    c.data[x] ^= 1;
                }
            }
            let mut code = Vec::new();
            match rng.below(3) {
                0 => {}
                1 => code.push(0xf3),
                _ => code.push(if cmp { 0xf2 } else { 0xf3 }),
            }
            if rng.below(6) == 0 && op != 0xaa && op != 0xae {
                code.push(rng.pick(&[0x26u8, 0x2e, 0x36, 0x3e])); // source segment override
            }
            if size == 2 {
                code.push(0x66);
            }
            code.push(op + u8::from(size != 1));
            c.code = code;
            k.check(&c);
        }
    });
}

#[test]
fn long_rep_moves_and_stores() {
    // REP MOVS and REP STOS over thousands of bytes: across page ends, with the source
    // and destination overlapping in either order (or not), in both directions, and
    // past the 4096 iterations one execution runs (ox86 copies a page at a time where
    // it can; the result must be that of the iterations one by one).
    const LEN: u32 = 0x3000;
    run_test("long_rep_moves_and_stores", 16, |k, rng| {
        for _ in 0..CASES / 8 {
            let mut c = base_case(rng, ALL);
            c.data = (0..LEN).map(|_| rng.u32() as u8).collect();
            let size = rng.pick(&[1u32, 2, 4]);
            let movs = rng.bool();
            let down = rng.below(4) == 0;
            if down {
                c.regs.eflags |= DF;
            } else {
                c.regs.eflags &= !DF;
            }
            let span = match rng.below(3) {
                0 => rng.below(64),
                1 => rng.below(0x1000),
                _ => rng.below(LEN - 0x400),
            };
            let count = span / size;
            let bytes = count * size;
            // An address whose `count` elements stay in the data area going up (from
            // it) or down (to it).
            let pick = |rng: &mut Rng| {
                let room = LEN - bytes - size;
                let off = match rng.below(3) {
                    // Near a page end.
                    0 => (0x1000 * (1 + rng.below(2)) - rng.below(8)).min(room),
                    _ => rng.below(room + 1),
                };
                let off = if down { off + bytes } else { off };
                DATA_ADDR + off
            };
            let src = pick(rng);
            let dst = if movs && rng.bool() {
                // Overlapping: the destination a few bytes either side of the source.
                let d = i64::from(src) + i64::from(rng.below(17)) - 8;
                let lo = i64::from(DATA_ADDR) + if down { i64::from(bytes) } else { 0 };
                let hi =
                    i64::from(DATA_ADDR + LEN - size) - if down { 0 } else { i64::from(bytes) };
                d.clamp(lo, hi) as u32
            } else {
                pick(rng)
            };
            c.regs.gpr[ECX] = count;
            c.regs.gpr[ESI] = src;
            c.regs.gpr[EDI] = dst;
            c.regs.gpr[ESP] = DATA_ADDR + 0x3f0;
            let mut code = vec![0xf3];
            if size == 2 {
                code.push(0x66);
            }
            code.push(if movs { 0xa4 } else { 0xaa } + u8::from(size != 1));
            c.code = code;
            k.check(&c);
        }
    });
}

// ---------------------------------------------------------------- harness integrity

#[test]
fn snippet_sees_rewritten_code() {
    // Re-running one Snippet with new code at the same address must execute the new
    // code. (The instruction tests reuse one Snippet; on a mismatch they re-check with
    // a fresh one and report "only on the reused Snippet" separately.)
    use ox86_cpu::testkit::{Regs32, Snippet, SnippetEnd};
    let mut bad = Vec::new();
    let mut check = |sn: &mut Snippet, what: &str, code: &[u8], want_eax: u32| {
        let mut r = Regs32 {
            gpr: [0, 0, 0, 0, DEFAULT_ESP, 0, 0, 0],
            eflags: 2,
        };
        let mut d = vec![0u8; 16];
        let end = sn.run(code, &mut r, &mut d, 100);
        if end != SnippetEnd::Done || r.gpr[EAX] != want_eax {
            bad.push(format!(
                "{what}: [{}] gave {end:?} eax={:#x}, want eax={want_eax:#x}",
                hex(code),
                r.gpr[EAX]
            ));
        }
    };
    // (a) same-length instructions in consecutive runs
    let mut sn = Snippet::new();
    for v in 1u8..5 {
        check(
            &mut sn,
            "mov eax,imm after mov eax,imm",
            &[0xb8, v, 0, 0, 0],
            v as u32,
        );
    }
    // (b) one-byte instructions: inc eax / dec eax / nop
    let mut sn = Snippet::new();
    for (code, want) in [
        ([0x40u8], 1u32),
        ([0x48], 0xffff_ffff),
        ([0x90], 0),
        ([0x40], 1),
        ([0x48], 0xffff_ffff),
    ] {
        check(&mut sn, "one-byte instruction after another", &code, want);
    }
    // (c) after a run that faulted (#DE)
    let mut sn = Snippet::new();
    for v in 1u8..4 {
        let mut r = Regs32 {
            gpr: [0, 0, 0, 0, DEFAULT_ESP, 0, 0, 0],
            eflags: 2,
        };
        sn.run(&[0xf7, 0xf1], &mut r, &mut [], 100); // div ecx (ecx = 0)
        check(&mut sn, "after a #DE run", &[0xb8, v, 0, 0, 0], v as u32);
    }
    assert!(
        bad.is_empty(),
        "stale decoded code executed:\n{}",
        bad.join("\n")
    );
}

#[test]
fn trampoline_sanity() {
    // add eax, ecx ; inc edx ; stc — known results natively.
    let mut c = Case::new(vec![0x01, 0xc8, 0x42, 0xf9], Default::default(), ALL);
    c.regs.gpr = [5, 7, 0xffff_ffff, 0, DEFAULT_ESP, 0, 0, 0];
    c.regs.eflags = 2;
    let (end, r, _) = Checker::run_native(&c);
    assert_eq!(end, NativeEnd::Done);
    assert_eq!(r.gpr[EAX], 12);
    assert_eq!(r.gpr[EDX], 0);
    assert_eq!(r.eflags & ALL, CF | ZF | PF | AF);
    // A native fault (ud2) is caught and the next run works.
    let c2 = Case::new(vec![0x0f, 0x0b], c.regs, ALL);
    let (end, _, _) = Checker::run_native(&c2);
    assert!(matches!(end, NativeEnd::Signal(libc::SIGILL, _)), "{end:?}");
    let (end, r, _) = Checker::run_native(&c);
    assert_eq!(end, NativeEnd::Done);
    assert_eq!(r.gpr[EAX], 12);
    // Every loaded flag survives an empty snippet, natively and in ox86.
    let mut e = Case::new(vec![], c.regs, ALL);
    e.regs.eflags = ALL | 2;
    let (end, r, _) = Checker::run_native(&e);
    assert_eq!(end, NativeEnd::Done);
    assert_eq!(r.eflags & ALL, ALL);
    assert_eq!(r.gpr, e.regs.gpr);
    for case in [&c, &e] {
        let mut k = Checker::new("sanity");
        k.check(case);
        k.finish();
    }
}

#[test]
fn invalid_lock_ud() {
    // LOCK on a register destination or a non-lockable instruction: #UD natively
    // (SIGILL) and in ox86.
    run_test("invalid_lock_ud", 16, |k, rng| {
        for _ in 0..500 {
            let mut c = base_case(rng, ALL);
            let mut code = vec![0xf0];
            let (x, y) = (rng.below(8) as u8, rng.below(8) as u8);
            match rng.below(4) {
                0 => code.extend([rng.below(7) as u8 * 8 + 1, modrm_reg(x, y)]),
                1 => code.extend([0xf7, modrm_reg(2 + rng.below(2) as u8, y)]),
                2 => {
                    code.push(0x8b);
                    code.extend(modrm_abs(x, DATA_ADDR + 0x100));
                }
                _ => {
                    code.push(0x39); // cmp [mem], reg
                    code.extend(modrm_abs(x, DATA_ADDR + 0x100));
                }
            }
            c.code = code;
            c.expect_exception = Some(6);
            k.check(&c);
        }
    });
}
