//! Add, subtract, multiply, divide and square root with x87 operand rules.

use crate::float::{Class, Unpacked, F80};
use crate::round::{ext, round, Outcome};
use crate::status::{Control, Rounding, DE, IE, ZE};

/// A source operand: its 80-bit value and whether it was a denormal in its
/// source format (a m32/m64 denormal becomes a normal 80-bit value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operand {
    /// The value, widened to 80 bits.
    pub v: F80,
    /// Raises #D when used.
    pub denormal: bool,
}

impl Operand {
    /// A register operand.
    #[inline]
    pub fn reg(v: F80) -> Operand {
        Operand {
            v,
            denormal: v.is_denormal(),
        }
    }
}

/// Result of an arithmetic operation before it is committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Res {
    /// The value to store.
    pub value: F80,
    /// Exceptions raised.
    pub exc: u16,
    /// Rounded up (C1).
    pub up: bool,
}

impl Res {
    #[inline]
    pub(crate) fn exact(value: F80) -> Res {
        Res {
            value,
            exc: 0,
            up: false,
        }
    }
    pub(crate) fn invalid() -> Res {
        Res {
            value: F80::INDEFINITE,
            exc: IE,
            up: false,
        }
    }
    #[inline]
    pub(crate) fn from_outcome(o: &Outcome) -> Res {
        Res {
            value: o.to_f80(),
            exc: o.exc,
            up: o.up,
        }
    }
}

/// Which binary operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// a + b
    Add,
    /// a − b
    Sub,
    /// a × b
    Mul,
    /// a ÷ b
    Div,
}

/// x87 NaN propagation for two operands (at least one is a NaN).
pub fn propagate_nan(a: F80, b: F80) -> Res {
    let (ca, cb) = (a.class(), b.class());
    let a_snan = ca == Class::SNaN;
    let b_snan = cb == Class::SNaN;
    let a_nan = a_snan || ca == Class::QNaN;
    let b_nan = b_snan || cb == Class::QNaN;
    let exc = if a_snan || b_snan { IE } else { 0 };
    let (qa, qb) = (a.quieted(), b.quieted());
    // The larger significand wins; on a tie, the smaller sign/exponent word.
    let larger = || {
        if (qa.signif, qb.sign_exp) > (qb.signif, qa.sign_exp) {
            qa
        } else {
            qb
        }
    };
    let value = if a_snan {
        if b_snan {
            larger()
        } else if b_nan {
            qb
        } else {
            qa
        }
    } else if a_nan {
        if b_snan || !b_nan {
            qa
        } else {
            larger()
        }
    } else {
        qb
    };
    Res {
        value,
        exc,
        up: false,
    }
}

/// Handles a single NaN or unsupported operand; `None` when the operand is ordinary.
pub fn unary_special(a: F80) -> Option<Res> {
    match a.class() {
        Class::Unsupported => Some(Res::invalid()),
        Class::SNaN => Some(Res {
            value: a.quieted(),
            exc: IE,
            up: false,
        }),
        Class::QNaN => Some(Res::exact(a)),
        _ => None,
    }
}

/// Common operand screening of two-operand arithmetic: unsupported encodings,
/// NaNs, and the denormal-operand flag. Returns `Err` with a final result, or
/// `Ok(flags)` to go on.
pub fn screen2(a: Operand, b: Operand) -> Result<u16, Res> {
    let (ca, cb) = (a.v.class(), b.v.class());
    if ca == Class::Unsupported || cb == Class::Unsupported {
        return Err(Res::invalid());
    }
    if a.v.is_nan() || b.v.is_nan() {
        return Err(propagate_nan(a.v, b.v));
    }
    Ok(if a.denormal || b.denormal { DE } else { 0 })
}

#[inline]
pub(crate) fn shr_sticky(v: u128, d: u32) -> (u128, bool) {
    if d >= 128 {
        (0, v != 0)
    } else if d == 0 {
        (v, false)
    } else {
        (v >> d, v & ((1u128 << d) - 1) != 0)
    }
}

fn with_exc(mut r: Res, exc: u16) -> Res {
    r.exc |= exc;
    r
}

/// Exact sum of two finite non-zero values rounded per `ctl`.
pub fn add_finite(a: Unpacked, b: Unpacked, ctl: &Control) -> Res {
    let (x, y) = if a.exp >= b.exp { (a, b) } else { (b, a) };
    let d = x.exp.wrapping_sub(y.exp) as u32;
    let xs = u128::from(x.sig) << 62;
    let (ys, sticky) = shr_sticky(u128::from(y.sig) << 62, d);
    let e = x.exp + 2;
    let fmt = ext(ctl.prec);
    if x.sign == y.sign {
        return Res::from_outcome(&round(x.sign, e, xs + ys, sticky, fmt, ctl, true));
    }
    let (sign, diff) = if xs > ys {
        (x.sign, xs - ys - u128::from(sticky))
    } else if ys > xs {
        (y.sign, ys - xs)
    } else {
        return Res::exact(F80::zero(ctl.rc == Rounding::Down));
    };
    Res::from_outcome(&round(sign, e, diff, sticky, fmt, ctl, true))
}

/// The four basic operations with all x87 special cases.
pub fn binop(op: BinOp, a: Operand, b: Operand, ctl: &Control) -> Res {
    let de = match screen2(a, b) {
        Ok(f) => f,
        Err(r) => return r,
    };
    // A zero divisor is reported before a denormal dividend (ZE without DE).
    let de = if op == BinOp::Div && b.v.class() == Class::Zero && a.v.class() != Class::Zero {
        0
    } else {
        de
    };
    if de != 0 && !ctl.masked(DE) {
        return Res {
            value: a.v,
            exc: DE,
            up: false,
        };
    }
    let r = match op {
        BinOp::Add => add(a.v, b.v, ctl),
        BinOp::Sub => add(a.v, b.v.with_sign(!b.v.sign()), ctl),
        BinOp::Mul => mul(a.v, b.v, ctl),
        BinOp::Div => div(a.v, b.v, ctl),
    };
    with_exc(r, de)
}

fn add(a: F80, b: F80, ctl: &Control) -> Res {
    let (ca, cb) = (a.class(), b.class());
    match (ca, cb) {
        (Class::Infinity, Class::Infinity) => {
            if a.sign() == b.sign() {
                Res::exact(a)
            } else {
                Res::invalid()
            }
        }
        (Class::Infinity, _) => Res::exact(a),
        (_, Class::Infinity) => Res::exact(b),
        (Class::Zero, Class::Zero) => {
            let s = if a.sign() == b.sign() {
                a.sign()
            } else {
                ctl.rc == Rounding::Down
            };
            Res::exact(F80::zero(s))
        }
        _ => match (a.unpack(), b.unpack()) {
            (Some(x), Some(y)) => add_finite(x, y, ctl),
            (Some(x), None) | (None, Some(x)) => Res::from_outcome(&round(
                x.sign,
                x.exp,
                u128::from(x.sig) << 64,
                false,
                ext(ctl.prec),
                ctl,
                true,
            )),
            (None, None) => Res::invalid(),
        },
    }
}

fn mul(a: F80, b: F80, ctl: &Control) -> Res {
    let sign = a.sign() ^ b.sign();
    let (ca, cb) = (a.class(), b.class());
    match (ca, cb) {
        (Class::Infinity, Class::Zero) | (Class::Zero, Class::Infinity) => Res::invalid(),
        (Class::Infinity, _) | (_, Class::Infinity) => Res::exact(F80::infinity(sign)),
        (Class::Zero, _) | (_, Class::Zero) => Res::exact(F80::zero(sign)),
        _ => match (a.unpack(), b.unpack()) {
            (Some(x), Some(y)) => mul_finite(x, y, ctl),
            _ => Res::invalid(),
        },
    }
}

/// Exact product of two finite non-zero values rounded per `ctl`.
#[inline]
pub fn mul_finite(x: Unpacked, y: Unpacked, ctl: &Control) -> Res {
    let p = u128::from(x.sig) * u128::from(y.sig);
    Res::from_outcome(&round(
        x.sign ^ y.sign,
        x.exp + y.exp + 1,
        p,
        false,
        ext(ctl.prec),
        ctl,
        true,
    ))
}

/// Quotient of two finite non-zero values rounded per `ctl`.
#[inline]
pub fn div_finite(x: Unpacked, y: Unpacked, ctl: &Control) -> Res {
    let (q, sticky) = div_sig(x.sig, y.sig);
    Res::from_outcome(&round(
        x.sign ^ y.sign,
        x.exp - y.exp,
        q,
        sticky,
        ext(ctl.prec),
        ctl,
        true,
    ))
}

/// 128-bit quotient of two normalized significands: `(Q, sticky)` with
/// `Q ≈ a/b × 2^127`.
pub(crate) fn div_sig(a: u64, b: u64) -> (u128, bool) {
    let b = u128::from(b);
    let n1 = u128::from(a) << 63;
    let (q1, r1) = (n1 / b, n1 % b);
    let n2 = r1 << 64;
    let (q2, r2) = (n2 / b, n2 % b);
    ((q1 << 64) | q2, r2 != 0)
}

fn div(a: F80, b: F80, ctl: &Control) -> Res {
    let sign = a.sign() ^ b.sign();
    let (ca, cb) = (a.class(), b.class());
    match (ca, cb) {
        (Class::Infinity, Class::Infinity) | (Class::Zero, Class::Zero) => Res::invalid(),
        (Class::Infinity, _) => Res::exact(F80::infinity(sign)),
        (_, Class::Infinity) | (Class::Zero, _) => Res::exact(F80::zero(sign)),
        (_, Class::Zero) => Res {
            value: F80::infinity(sign),
            exc: ZE,
            up: false,
        },
        _ => match (a.unpack(), b.unpack()) {
            (Some(x), Some(y)) => div_finite(x, y, ctl),
            _ => Res::invalid(),
        },
    }
}

/// Floor square root of `m × 2^72` where `m < 2^66`: (root, remainder non-zero).
fn isqrt_stream(m: u128) -> (u128, bool) {
    let mut rem: u128 = 0;
    let mut root: u128 = 0;
    for i in 0..69u32 {
        let pair = if i < 33 { (m >> (64 - 2 * i)) & 3 } else { 0 };
        rem = (rem << 2) | pair;
        let trial = (root << 2) | 1;
        if rem >= trial {
            rem -= trial;
            root = (root << 1) | 1;
        } else {
            root <<= 1;
        }
    }
    (root, rem != 0)
}

/// Square root of a finite positive value: (sig, e, sticky) in `round` convention.
pub(crate) fn sqrt_finite(x: Unpacked) -> (u128, i32, bool) {
    let k = x.exp - 63;
    let (m, k) = if k & 1 != 0 {
        (u128::from(x.sig) << 1, k - 1)
    } else {
        (u128::from(x.sig), k)
    };
    let (root, sticky) = isqrt_stream(m);
    (root, k / 2 + 91, sticky)
}

/// FSQRT.
pub fn sqrt(a: Operand, ctl: &Control) -> Res {
    if let Some(r) = unary_special(a.v) {
        return r;
    }
    if a.v.sign() && a.v.class() != Class::Zero {
        // Negative operands are invalid before they are denormal.
        return Res::invalid();
    }
    let de = if a.denormal { DE } else { 0 };
    if de != 0 && !ctl.masked(DE) {
        return Res {
            value: a.v,
            exc: DE,
            up: false,
        };
    }
    let r = match a.v.class() {
        Class::Zero => Res::exact(a.v),
        Class::Infinity if !a.v.sign() => Res::exact(a.v),
        _ if a.v.sign() => Res::invalid(),
        _ => match a.v.unpack() {
            Some(x) => {
                let (sig, e, sticky) = sqrt_finite(x);
                Res::from_outcome(&round(false, e, sig, sticky, ext(ctl.prec), ctl, true))
            }
            None => Res::invalid(),
        },
    };
    with_exc(r, de)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(x: f64) -> F80 {
        crate::convert::f64_to_f80(x.to_bits()).v
    }
    const CTL: Control = Control {
        rc: Rounding::Nearest,
        prec: 64,
        masks: 0x3F,
    };

    #[test]
    fn basic_ops() {
        let (a, b) = (Operand::reg(f(1.5)), Operand::reg(f(2.25)));
        assert_eq!(binop(BinOp::Add, a, b, &CTL).value, f(3.75));
        assert_eq!(binop(BinOp::Sub, a, b, &CTL).value, f(-0.75));
        assert_eq!(binop(BinOp::Mul, a, b, &CTL).value, f(3.375));
        assert_eq!(binop(BinOp::Div, b, a, &CTL).value, f(1.5));
        assert_eq!(sqrt(b, &CTL).value, f(1.5));
        assert_eq!(
            sqrt(Operand::reg(f(2.0)), &CTL).value.signif,
            0xB504_F333_F9DE_6484
        );
    }
}
