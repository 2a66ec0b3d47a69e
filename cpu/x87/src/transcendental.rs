//! F2XM1, FYL2X, FYL2XP1, FPTAN, FPATAN, FSIN, FCOS, FSINCOS.
//!
//! Evaluated in IEEE quad precision (113-bit significand, rustc_apfloat's
//! software `Quad`) with series after argument reduction, then rounded once to
//! the 64-bit significand with the FCW rounding mode. Precision control does not
//! apply to these instructions. Trigonometric reduction uses 200 bits of π/2, so
//! results stay accurate near multiples of π/2 (the result is close to correctly
//! rounded; real FPUs are within about 1 ulp of it).

use crate::arith::{binop, screen2, unary_special, BinOp, Operand, Res};
use crate::convert::int_to_f80;
use crate::float::{Class, Unpacked, F80};
use crate::round::{ext, round};
use crate::status::{Control, DE, ZE};
use core::ops::Neg;
use rustc_apfloat::ieee::Quad;
use rustc_apfloat::{Float, Round};

const RN: Round = Round::NearestTiesToEven;

/// Hex digits of π's fraction (3.243F6A88...), 256 bits.
const PI_FRAC: [u32; 8] = [
    0x243F_6A88,
    0x85A3_08D3,
    0x1319_8A2E,
    0x0370_7344,
    0xA409_3822,
    0x299F_31D0,
    0x082E_FA98,
    0xEC4E_6C89,
];

fn add(a: Quad, b: Quad) -> Quad {
    a.add_r(b, RN).value
}
fn sub(a: Quad, b: Quad) -> Quad {
    a.sub_r(b, RN).value
}
fn mul(a: Quad, b: Quad) -> Quad {
    a.mul_r(b, RN).value
}
fn div(a: Quad, b: Quad) -> Quad {
    a.div_r(b, RN).value
}
fn qi(i: i64) -> Quad {
    Quad::from_i128(i128::from(i)).value
}

/// Bit `j` of π/2 (bit 0 is the units bit, bit j weighs 2^-j).
fn pio2_bit(j: usize) -> u64 {
    // π/2 = 1.1 followed by the fraction bits of π.
    match j {
        0 | 1 => 1,
        _ => {
            let k = j - 2;
            PI_FRAC
                .get(k / 32)
                .map_or(0, |w| u64::from((w >> (31 - (k % 32))) & 1))
        }
    }
}

/// π/2 as four 50-bit chunks (`k × chunk` is exact in quad for k < 2^63).
fn pio2_chunks() -> [Quad; 4] {
    let mut out = [Quad::ZERO; 4];
    for (i, c) in out.iter_mut().enumerate() {
        let mut v: u64 = 0;
        for j in 0..50 {
            v = (v << 1) | pio2_bit(50 * i + j);
        }
        *c = Quad::from_u128(u128::from(v))
            .value
            .scalbn(-(50 * i as i32 + 49));
    }
    out
}

fn pio2() -> Quad {
    let c = pio2_chunks();
    add(add(c[0], c[1]), add(c[2], c[3]))
}

fn pi() -> Quad {
    mul(pio2(), qi(2))
}

/// ln 2 = 2·atanh(1/3).
fn ln2() -> Quad {
    mul(atanh_series(div(qi(1), qi(3))), qi(2))
}

/// atanh(s) = s + s³/3 + s⁵/5 + … for small |s|.
fn atanh_series(s: Quad) -> Quad {
    let s2 = mul(s, s);
    let mut p = s;
    let mut sum = s;
    for n in 1..200 {
        p = mul(p, s2);
        let t = div(p, qi(2 * n + 1));
        let next = add(sum, t);
        if next.bitwise_eq(sum) {
            break;
        }
        sum = next;
    }
    sum
}

/// atan(u) = u − u³/3 + u⁵/5 − … for |u| ≤ 0.27.
fn atan_series(u: Quad) -> Quad {
    let u2 = mul(u, u);
    let mut p = u;
    let mut sum = u;
    for n in 1..200 {
        p = mul(p, u2);
        let t = div(p, qi(2 * n + 1));
        let next = if n % 2 == 1 { sub(sum, t) } else { add(sum, t) };
        if next.bitwise_eq(sum) {
            break;
        }
        sum = next;
    }
    sum
}

fn sqrt3() -> Quad {
    let three = qi(3);
    let mut s = div(qi(7), qi(4));
    for _ in 0..8 {
        s = div(add(s, div(three, s)), qi(2));
    }
    s
}

/// atan(t) for 0 ≤ t ≤ 1.
fn atan01(t: Quad) -> Quad {
    let lim = div(qi(268), qi(1000));
    if t.abs() > lim {
        let r3 = sqrt3();
        let u = div(sub(mul(r3, t), qi(1)), add(r3, t));
        add(div(pi(), qi(6)), atan_series(u))
    } else {
        atan_series(t)
    }
}

/// sin and cos of |r| ≤ ~0.8 by Taylor series.
fn sin_cos_series(r: Quad) -> (Quad, Quad) {
    let r2 = mul(r, r);
    let (mut ts, mut s) = (r, r);
    let (mut tc, mut c) = (qi(1), qi(1));
    for n in 1..60i64 {
        ts = div(mul(ts, r2), qi((2 * n) * (2 * n + 1)));
        tc = div(mul(tc, r2), qi((2 * n - 1) * (2 * n)));
        let (ns, nc) = if n % 2 == 1 {
            (sub(s, ts), sub(c, tc))
        } else {
            (add(s, ts), add(c, tc))
        };
        if ns.bitwise_eq(s) && nc.bitwise_eq(c) {
            // The first lost term still decides the direction of rounding.
            if n == 1 {
                s = toward_zero(s, !ts.is_zero());
                c = toward_zero(c, !tc.is_zero());
            }
            break;
        }
        s = ns;
        c = nc;
    }
    (s, c)
}

/// One quad ulp toward zero when `lost` (a term too small to change the sum).
fn toward_zero(q: Quad, lost: bool) -> Quad {
    if !lost || q.is_zero() {
        q
    } else if q.is_negative() {
        q.next_up().value
    } else {
        q.next_down().value
    }
}

/// Converts a finite value exactly to quad.
fn to_quad(x: Unpacked) -> Quad {
    let full = u128::from(x.sig) << 49;
    let biased = x.exp + 16383;
    let s = u128::from(x.sign) << 127;
    let bits = if biased >= 1 {
        s | ((biased as u128) << 112) | (full & ((1u128 << 112) - 1))
    } else {
        let sh = (1 - biased) as u32;
        s | if sh < 128 { full >> sh } else { 0 }
    };
    Quad::from_bits(bits)
}

/// Rounds `q × 2^extra` to the 64-bit register format; `inexact` forces PE.
fn from_quad(q: Quad, extra: i32, inexact: bool, ctl: &Control) -> Res {
    let bits = q.to_bits();
    let sign = bits >> 127 != 0;
    let be = ((bits >> 112) & 0x7FFF) as i32;
    let frac = bits & ((1u128 << 112) - 1);
    if be == 0x7FFF {
        return Res::exact(F80::infinity(sign));
    }
    let (sig, e) = if be == 0 {
        (frac, -16382)
    } else {
        (frac | (1u128 << 112), be - 16383)
    };
    if sig == 0 {
        return Res {
            value: F80::zero(sign),
            exc: if inexact { crate::status::PE } else { 0 },
            up: false,
        };
    }
    Res::from_outcome(&round(
        sign,
        e + extra,
        sig << 15,
        inexact,
        ext(64),
        ctl,
        true,
    ))
}

/// Splits a finite value into a quad in [1, 2) and its binary exponent.
fn split(x: Unpacked) -> (Quad, i32) {
    (
        to_quad(Unpacked {
            sign: x.sign,
            exp: 0,
            sig: x.sig,
        }),
        x.exp,
    )
}

fn unary_screen(a: Operand, ctl: &Control) -> Result<u16, Res> {
    if let Some(r) = unary_special(a.v) {
        return Err(r);
    }
    if a.denormal {
        if !ctl.masked(DE) {
            return Err(Res {
                value: a.v,
                exc: DE,
                up: false,
            });
        }
        return Ok(DE);
    }
    Ok(0)
}

fn or_exc(mut r: Res, exc: u16) -> Res {
    r.exc |= exc;
    r
}

/// F2XM1: 2^x − 1 (defined for −1 ≤ x ≤ 1).
pub fn f2xm1(a: Operand, ctl: &Control) -> Res {
    let de = match unary_screen(a, ctl) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let r = match a.v.class() {
        Class::Zero => Res::exact(a.v),
        Class::Infinity => {
            if a.v.sign() {
                Res::exact(F80::ONE.with_sign(true))
            } else {
                Res::exact(a.v)
            }
        }
        _ => match a.v.unpack() {
            Some(x) if x.exp > 0 || (x.exp == 0 && x.sig != 1 << 63) => {
                // |x| > 1 is outside the defined domain: the operand is
                // returned unchanged, as the reference hardware does.
                Res {
                    value: a.v,
                    exc: crate::status::PE,
                    up: false,
                }
            }
            Some(x) if x.exp == 0 && x.sig == 1 << 63 => {
                // 2^±1 − 1 is exact, but the hardware still reports PE.
                Res {
                    value: if x.sign {
                        F80::new(true, 0x3FFE, 1 << 63)
                    } else {
                        F80::ONE
                    },
                    exc: crate::status::PE,
                    up: false,
                }
            }
            Some(x) if x.exp < -100 => {
                // 2^x − 1 = x·ln2·(1 + x·ln2/2 …): scaled to avoid quad denormals.
                let (qx, ex) = split(x);
                from_quad(mul(qx, ln2()), ex, true, ctl)
            }
            Some(x) => {
                let t = mul(to_quad(x), ln2());
                let mut term = t;
                let mut sum = t;
                for n in 2..200 {
                    term = div(mul(term, t), qi(n));
                    let next = add(sum, term);
                    if next.bitwise_eq(sum) {
                        break;
                    }
                    sum = next;
                }
                from_quad(sum, 0, true, ctl)
            }
            None => Res::invalid(),
        },
    };
    or_exc(r, de)
}

/// log2 of a finite positive value as (quad, exact integer result if any).
/// log2 of a positive finite quad.
fn log2_q(q: Quad) -> Quad {
    let mut e = 0;
    let m = q.frexp(&mut e); // m in [0.5, 1)
    let (mut m, mut e) = (m.scalbn(1), e - 1);
    if m > div(qi(1_414_213_562_373), qi(1_000_000_000_000)) {
        m = m.scalbn(-1);
        e += 1;
    }
    let s = div(sub(m, qi(1)), add(m, qi(1)));
    add(qi(i64::from(e)), div(mul(atanh_series(s), qi(2)), ln2()))
}

fn log2_quad(x: Unpacked) -> Quad {
    let mut m = to_quad(Unpacked {
        sign: false,
        exp: 0,
        sig: x.sig,
    });
    let mut e = x.exp;
    // √2 ≈ 1.41421356: compare with 0xB504F333F9DE6484 × 2^-63.
    if x.sig > 0xB504_F333_F9DE_6484 {
        m = m.scalbn(-1);
        e += 1;
    }
    let s = div(sub(m, qi(1)), add(m, qi(1)));
    let ln_m = mul(atanh_series(s), qi(2));
    add(qi(i64::from(e)), div(ln_m, ln2()))
}

/// tan = sin/cos, with tiny arguments rounded away from zero (tan x > x).
fn tan_of(x: Unpacked, s: Quad, c: Quad) -> Quad {
    if x.exp < -60 {
        let q = to_quad(x);
        if q.is_negative() {
            q.next_down().value
        } else {
            q.next_up().value
        }
    } else {
        div(s, c)
    }
}

/// FYL2X: y·log2(x) with x = ST(0), y = ST(1).
pub fn fyl2x(x: Operand, y: Operand, ctl: &Control) -> Res {
    let de = match screen2(x, y) {
        Ok(f) => f,
        Err(r) => return r,
    };
    // A negative x is invalid before any #D.
    if x.v.sign() && x.v.class() != Class::Zero {
        return Res::invalid();
    }
    if de != 0 && !ctl.masked(DE) {
        return Res {
            value: y.v,
            exc: DE,
            up: false,
        };
    }
    let (cx, cy) = (x.v.class(), y.v.class());
    let r = if cx != Class::Zero && x.v.sign() {
        Res::invalid()
    } else if cx == Class::Zero {
        match cy {
            Class::Zero => Res::invalid(),
            Class::Infinity => Res::exact(F80::infinity(!y.v.sign())),
            _ => Res {
                value: F80::infinity(!y.v.sign()),
                exc: ZE,
                up: false,
            },
        }
    } else if cx == Class::Infinity {
        match cy {
            Class::Zero => Res::invalid(),
            _ => Res::exact(F80::infinity(y.v.sign())),
        }
    } else {
        match x.v.unpack() {
            Some(ux) if ux.sig == 1 << 63 => {
                // Exact power of two: y × exponent, one rounding.
                let n = Operand {
                    v: int_to_f80(i64::from(ux.exp)),
                    denormal: false,
                };
                let mut r = binop(
                    BinOp::Mul,
                    Operand {
                        v: y.v,
                        denormal: false,
                    },
                    n,
                    &Control { prec: 64, ..*ctl },
                );
                // Exact, but the hardware reports PE for every FYL2X result.
                r.exc &= !DE;
                if ux.exp != 0 {
                    r.exc |= crate::status::PE;
                }
                r
            }
            Some(ux) => {
                let below_one = ux.exp < 0;
                match cy {
                    Class::Zero => Res::exact(F80::zero(y.v.sign() ^ below_one)),
                    Class::Infinity => Res::exact(F80::infinity(y.v.sign() ^ below_one)),
                    _ => match y.v.unpack() {
                        Some(uy) => {
                            let (qy, ey) = split(uy);
                            from_quad(mul(qy, log2_quad(ux)), ey, true, ctl)
                        }
                        None => Res::invalid(),
                    },
                }
            }
            None => Res::invalid(),
        }
    };
    or_exc(r, de)
}

/// FYL2XP1: y·log2(x + 1) with x = ST(0), y = ST(1) (defined for |x| < 1 − √2/2).
pub fn fyl2xp1(x: Operand, y: Operand, ctl: &Control) -> Res {
    let de = match screen2(x, y) {
        Ok(f) => f,
        Err(r) => return r,
    };
    if de != 0 && !ctl.masked(DE) {
        return Res {
            value: y.v,
            exc: DE,
            up: false,
        };
    }
    let (cx, cy) = (x.v.class(), y.v.class());
    let r = match (cx, cy) {
        (Class::Zero, Class::Infinity) | (Class::Infinity, Class::Zero) => Res::invalid(),
        (Class::Infinity, _) if x.v.sign() => Res::invalid(),
        (Class::Infinity, _) => Res::exact(F80::infinity(y.v.sign())),
        (Class::Zero, _) | (_, Class::Zero) => Res::exact(F80::zero(x.v.sign() ^ y.v.sign())),
        (_, Class::Infinity) => Res::exact(F80::infinity(x.v.sign() ^ y.v.sign())),
        _ => match (x.v.unpack(), y.v.unpack()) {
            (Some(ux), Some(uy)) => {
                let qx = to_quad(ux);
                if ux.sign && ux.exp >= 0 {
                    // x ≤ −1 is outside the domain: the reference hardware
                    // returns x (inexact).
                    Res {
                        value: x.v,
                        exc: crate::status::PE,
                        up: false,
                    }
                } else {
                    let l = if ux.exp < -100 {
                        // ln(1 + x) = x·(1 − x/2 …): scale x to avoid quad denormals.
                        let (qxs, ex) = split(ux);
                        let (qy, ey) = split(uy);
                        return or_exc(from_quad(mul(qy, div(qxs, ln2())), ey + ex, true, ctl), de);
                    } else if ux.exp >= -2 {
                        // |x| ≥ 1/4: log2 of 1 + x directly.
                        log2_q(add(qi(1), qx))
                    } else {
                        let s = div(qx, add(qi(2), qx));
                        div(mul(atanh_series(s), qi(2)), ln2())
                    };
                    let (qy, ey) = split(uy);
                    from_quad(mul(qy, l), ey, true, ctl)
                }
            }
            _ => Res::invalid(),
        },
    };
    or_exc(r, de)
}

/// FPATAN: atan(y/x) with x = ST(0), y = ST(1), in the quadrant of (x, y).
pub fn fpatan(x: Operand, y: Operand, ctl: &Control) -> Res {
    let de = match screen2(x, y) {
        Ok(f) => f,
        Err(r) => return r,
    };
    if de != 0 && !ctl.masked(DE) {
        return Res {
            value: y.v,
            exc: DE,
            up: false,
        };
    }
    let (cx, cy) = (x.v.class(), y.v.class());
    let sy = y.v.sign();
    let signed = |q: Quad| if sy { q.neg() } else { q };
    let r = match (cx, cy) {
        (_, Class::Zero) => {
            if x.v.sign() {
                from_quad(signed(pi()), 0, true, ctl)
            } else {
                Res::exact(y.v)
            }
        }
        (Class::Infinity, Class::Infinity) => {
            let q = div(pi(), qi(4));
            let q = if x.v.sign() { mul(q, qi(3)) } else { q };
            from_quad(signed(q), 0, true, ctl)
        }
        (_, Class::Infinity) | (Class::Zero, _) => from_quad(signed(pio2()), 0, true, ctl),
        (Class::Infinity, _) => {
            if x.v.sign() {
                from_quad(signed(pi()), 0, true, ctl)
            } else {
                Res::exact(F80::zero(sy))
            }
        }
        _ => match (x.v.unpack(), y.v.unpack()) {
            (Some(ux), Some(uy)) => {
                let (qx, ex) = split(Unpacked { sign: false, ..ux });
                let (qy, ey) = split(Unpacked { sign: false, ..uy });
                let d = ey - ex;
                if d < -40 && !x.v.sign() {
                    // atan(t) = t·(1 − t²/3 …) with t tiny: the correction is below 2^-80.
                    let t = toward_zero(div(qy, qx), true);
                    from_quad(signed(t), d, true, ctl)
                } else {
                    let dd = d.clamp(-20000, 20000);
                    let t = div(qy, qx).scalbn(dd);
                    let a = if t.abs() > qi(1) {
                        sub(pio2(), atan01(div(qi(1), t)))
                    } else {
                        atan01(t)
                    };
                    let a = if x.v.sign() { sub(pi(), a) } else { a };
                    from_quad(signed(a), 0, true, ctl)
                }
            }
            _ => Res::invalid(),
        },
    };
    or_exc(r, de)
}

/// Reduces |x| < 2^63 modulo π/2: (r, quadrant k mod 4).
fn reduce(x: Unpacked) -> (Quad, u32) {
    let ax = to_quad(Unpacked { sign: false, ..x });
    let c = pio2_chunks();
    // The FPU reduces with π/2 truncated to 66 significant bits (Intel
    // documents a 66-bit π; the reference host matches it bit for bit), so
    // results near multiples of π/2 carry the same error as real hardware.
    let c1 = c[1]
        .scalbn(65)
        .round_to_integral(Round::TowardZero)
        .value
        .scalbn(-65);
    let p = add(c[0], c1);
    let k = div(ax, p).round_to_integral(RN).value;
    if k.is_zero() {
        return (ax, 0);
    }
    let r = sub(sub(ax, mul(k, c[0])), mul(k, c1));
    let kb = k.to_bits();
    let be = ((kb >> 112) & 0x7FFF) as i32 - 16383;
    let kint = ((kb & ((1u128 << 112) - 1)) | (1u128 << 112)) >> (112 - be.clamp(0, 112));
    (r, (kint & 3) as u32)
}

/// sin and cos of a finite value with |x| < 2^63 (None when out of range).
fn sin_cos(x: Unpacked) -> Option<(Quad, Quad)> {
    if x.exp >= 63 {
        return None;
    }
    let (r, k) = reduce(x);
    let (s, c) = sin_cos_series(r);
    let (s, c) = match k {
        0 => (s, c),
        1 => (c, s.neg()),
        2 => (s.neg(), c.neg()),
        _ => (c.neg(), s),
    };
    Some((if x.sign { s.neg() } else { s }, c))
}

fn trig_screen(a: Operand, ctl: &Control) -> Result<(u16, Unpacked), Option<Res>> {
    let de = match unary_screen(a, ctl) {
        Ok(f) => f,
        Err(r) => return Err(Some(r)),
    };
    match a.v.class() {
        Class::Infinity => Err(Some(Res::invalid())),
        _ => match a.v.unpack() {
            Some(x) if x.exp >= 63 => Err(None),
            Some(x) => Ok((de, x)),
            None => Err(Some(Res::invalid())),
        },
    }
}

/// FSIN; `None` when |x| ≥ 2^63 (C2 set, ST(0) unchanged).
pub fn fsin(a: Operand, ctl: &Control) -> Option<Res> {
    if a.v.class() == Class::Zero {
        return Some(Res::exact(a.v));
    }
    match trig_screen(a, ctl) {
        Err(r) => r,
        Ok((de, x)) => sin_cos(x).map(|(s, _)| or_exc(from_quad(s, 0, true, ctl), de)),
    }
}

/// FCOS; `None` when |x| ≥ 2^63.
pub fn fcos(a: Operand, ctl: &Control) -> Option<Res> {
    if a.v.class() == Class::Zero {
        return Some(Res::exact(F80::ONE));
    }
    match trig_screen(a, ctl) {
        Err(r) => r,
        Ok((de, x)) => sin_cos(x).map(|(_, c)| or_exc(from_quad(c, 0, true, ctl), de)),
    }
}

/// FSINCOS: (sin → ST(0), cos → pushed); `None` when |x| ≥ 2^63.
pub fn fsincos(a: Operand, ctl: &Control) -> Option<(Res, Res)> {
    if a.v.class() == Class::Zero {
        return Some((Res::exact(a.v), Res::exact(F80::ONE)));
    }
    match trig_screen(a, ctl) {
        Err(r) => r.map(|r| (r, r)),
        Ok((de, x)) => sin_cos(x).map(|(s, c)| {
            (
                or_exc(from_quad(s, 0, true, ctl), de),
                from_quad(c, 0, true, ctl),
            )
        }),
    }
}

/// FPTAN: (tan → ST(0), 1.0 → pushed); `None` when |x| ≥ 2^63.
pub fn fptan(a: Operand, ctl: &Control) -> Option<(Res, Res)> {
    if a.v.class() == Class::Zero {
        return Some((Res::exact(a.v), Res::exact(F80::ONE)));
    }
    match trig_screen(a, ctl) {
        Err(r) => r.map(|r| (r, r)),
        Ok((de, x)) => sin_cos(x).map(|(s, c)| {
            (
                or_exc(from_quad(tan_of(x, s, c), 0, true, ctl), de),
                Res::exact(F80::ONE),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_match_fldpi_fldln2() {
        // π/2 rounded to 64 bits is FLDPI's significand; ln 2 is FLDLN2's.
        let ctl = Control {
            rc: crate::status::Rounding::Nearest,
            prec: 64,
            masks: 0x3F,
        };
        assert_eq!(
            from_quad(pi(), 0, true, &ctl).value,
            F80::new(false, 0x4000, 0xC90F_DAA2_2168_C235)
        );
        assert_eq!(
            from_quad(ln2(), 0, true, &ctl).value,
            F80::new(false, 0x3FFE, 0xB172_17F7_D1CF_79AC)
        );
        // ln 2 to 112 bits: 0.B17217F7D1CF79ABC9E3B39803F2F6AF...
        let bits = ln2().to_bits() & ((1u128 << 112) - 1);
        assert_eq!(bits >> 48, 0x62E4_2FEF_A39E_F357);
    }
}
