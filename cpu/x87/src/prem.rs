//! FPREM and FPREM1: exact partial remainders.

use crate::arith::{screen2, Operand, Res};
use crate::float::{Class, F80};
use crate::round::{ext, round};
use crate::status::{Control, C0, C1, C2, C3, DE};

fn quotient_cc(q: u128) -> u16 {
    let mut cc = 0;
    if q & 4 != 0 {
        cc |= C0;
    }
    if q & 2 != 0 {
        cc |= C3;
    }
    if q & 1 != 0 {
        cc |= C1;
    }
    cc
}

/// FPREM (`ieee` = false, truncated quotient) or FPREM1 (`ieee` = true, quotient
/// rounded to nearest even). Returns the new ST(0) and the condition codes
/// (C2 set for an incomplete reduction; C0, C3, C1 = quotient bits Q2, Q1, Q0).
pub fn fprem(a: Operand, b: Operand, ieee: bool, ctl: &Control) -> (Res, Option<u16>) {
    let de = match screen2(a, b) {
        Ok(f) => f,
        Err(r) => return (r, None),
    };
    let (ca, cb) = (a.v.class(), b.v.class());
    // An infinite dividend or a zero divisor is invalid before any #D.
    if ca == Class::Infinity || cb == Class::Zero {
        return (Res::invalid(), None);
    }
    if de != 0 && !ctl.masked(DE) {
        return (
            Res {
                value: a.v,
                exc: DE,
                up: false,
            },
            None,
        );
    }
    let done = |v: F80| {
        (
            Res {
                value: v,
                exc: de,
                up: false,
            },
            Some(0),
        )
    };
    if ca == Class::Zero || cb == Class::Infinity {
        return done(a.v);
    }
    let (Some(x), Some(y)) = (a.v.unpack(), b.v.unpack()) else {
        return (Res::invalid(), None);
    };
    let d = x.exp - y.exp;
    if d < -1 || (d == -1 && !ieee) {
        // The dividend itself, through the usual rounding (normalizes
        // pseudo-denormals; a tiny value underflows when #U is unmasked).
        let o = round(
            x.sign,
            x.exp,
            u128::from(x.sig) << 64,
            false,
            ext(64),
            ctl,
            true,
        );
        let mut res = Res::from_outcome(&o);
        res.exc |= de;
        return (res, Some(0));
    }
    let (partial, n, den, unit) = if d >= 64 {
        let n = (d & 31) | 32;
        (true, n, u128::from(y.sig), y.exp - 63 + d - n)
    } else if d >= 0 {
        (false, d, u128::from(y.sig), y.exp - 63)
    } else {
        (false, 0, u128::from(y.sig) << 1, x.exp - 63)
    };
    let num = u128::from(x.sig) << n;
    let (mut q, mut r) = (num / den, num % den);
    let mut sign = x.sign;
    if ieee && !partial && (2 * r > den || (2 * r == den && q & 1 != 0)) {
        q += 1;
        r = den - r;
        sign = !sign;
    }
    let cc = if partial { C2 } else { quotient_cc(q) };
    if r == 0 {
        return (
            Res {
                value: F80::zero(x.sign),
                exc: de,
                up: false,
            },
            Some(cc),
        );
    }
    let o = round(sign, unit + 127, r, false, ext(64), ctl, true);
    let mut res = Res::from_outcome(&o);
    res.exc |= de;
    (res, Some(cc))
}
