//! FSCALE and FXTRACT: exponent manipulation.

use crate::arith::{screen2, unary_special, Operand, Res};
use crate::convert::int_to_f80;
use crate::float::{Class, EXT_BIAS, F80};
use crate::round::{ext, round};
use crate::status::{Control, DE, IE, ZE};

/// FSCALE: `a × 2^trunc(b)` (`a` = ST(0), `b` = ST(1)).
pub fn fscale(a: Operand, b: Operand, ctl: &Control) -> Res {
    let de = match screen2(a, b) {
        Ok(f) => f,
        Err(r) => return r,
    };
    if de != 0 && !ctl.masked(DE) {
        return Res {
            value: a.v,
            exc: DE,
            up: false,
        };
    }
    let (ca, cb) = (a.v.class(), b.v.class());
    let mut r = match (ca, cb) {
        (Class::Zero, Class::Infinity) if !b.v.sign() => Res::invalid(),
        (Class::Infinity, Class::Infinity) if b.v.sign() => Res::invalid(),
        (Class::Zero, _) | (Class::Infinity, _) => Res::exact(a.v),
        (_, Class::Infinity) => {
            if b.v.sign() {
                Res::exact(F80::zero(a.v.sign()))
            } else {
                Res::exact(F80::infinity(a.v.sign()))
            }
        }
        _ => match a.v.unpack() {
            Some(x) => {
                let n: i32 = match b.v.unpack() {
                    None => 0,
                    Some(y) if y.exp < 0 => 0,
                    Some(y) if y.exp > 20 => {
                        if y.sign {
                            -(1 << 20)
                        } else {
                            1 << 20
                        }
                    }
                    Some(y) => {
                        let m = (y.sig >> (63 - y.exp)) as i32;
                        if y.sign {
                            -m
                        } else {
                            m
                        }
                    }
                };
                Res::from_outcome(&round(
                    x.sign,
                    x.exp + n,
                    u128::from(x.sig) << 64,
                    false,
                    ext(64),
                    ctl,
                    true,
                ))
            }
            None => Res::invalid(),
        },
    };
    r.exc |= de;
    r
}

/// FXTRACT: returns (exponent → ST(0), significand → pushed).
pub fn fxtract(a: Operand, ctl: &Control) -> (Res, Res) {
    if let Some(r) = unary_special(a.v) {
        return (r, r);
    }
    match a.v.class() {
        Class::Zero => (
            Res {
                value: F80::infinity(true),
                exc: ZE,
                up: false,
            },
            Res::exact(a.v),
        ),
        Class::Infinity => (Res::exact(F80::infinity(false)), Res::exact(a.v)),
        _ => match a.v.unpack() {
            Some(x) => {
                let de = if a.denormal { DE } else { 0 };
                let e = Res {
                    value: int_to_f80(i64::from(x.exp)),
                    exc: de,
                    up: false,
                };
                let s = Res::exact(F80::new(x.sign, EXT_BIAS as u16, x.sig));
                let _ = ctl;
                (e, s)
            }
            None => (
                Res::invalid(),
                Res {
                    value: F80::INDEFINITE,
                    exc: IE,
                    up: false,
                },
            ),
        },
    }
}
