//! Conversions between the 80-bit register format and the memory formats:
//! m32fp, m64fp, m16/m32/m64int and m80bcd, and rounding to an integer.

use crate::arith::{Operand, Res};
use crate::float::{Class, Unpacked, EXT_BIAS, F80};
use crate::round::{round64, Format, DOUBLE, SINGLE};
use crate::status::{Control, Rounding, DE, IE, PE};

fn widen(sign: bool, biased: u32, frac: u64, frac_bits: u32, bias: i32, all_ones: u32) -> Operand {
    let shift = 63 - frac_bits;
    if biased == all_ones {
        let v = F80::new(sign, 0x7FFF, (1 << 63) | (frac << shift));
        return Operand { v, denormal: false };
    }
    if biased == 0 {
        if frac == 0 {
            return Operand {
                v: F80::zero(sign),
                denormal: false,
            };
        }
        let lz = frac.leading_zeros();
        let sig = frac << lz;
        // value = frac × 2^(1 − bias − frac_bits)
        let exp = 1 - bias - frac_bits as i32 + 63 - lz as i32;
        return Operand {
            v: F80::new(sign, (exp + EXT_BIAS) as u16, sig),
            denormal: true,
        };
    }
    let exp = biased as i32 - bias;
    Operand {
        v: F80::new(sign, (exp + EXT_BIAS) as u16, (1 << 63) | (frac << shift)),
        denormal: false,
    }
}

/// Widens an IEEE single (exact; SNaNs stay signaling).
pub fn f32_to_f80(bits: u32) -> Operand {
    widen(
        bits >> 31 != 0,
        (bits >> 23) & 0xFF,
        u64::from(bits & 0x7F_FFFF),
        23,
        127,
        0xFF,
    )
}

/// Widens an IEEE double (exact; SNaNs stay signaling).
pub fn f64_to_f80(bits: u64) -> Operand {
    widen(
        bits >> 63 != 0,
        ((bits >> 52) & 0x7FF) as u32,
        bits & ((1 << 52) - 1),
        52,
        1023,
        0x7FF,
    )
}

/// Result of a store conversion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Narrowed<T> {
    /// The bits to write.
    pub bits: T,
    /// Exceptions raised.
    pub exc: u16,
    /// Rounded up (C1).
    pub up: bool,
    /// False when an unmasked exception suppresses the store.
    pub store: bool,
}

fn narrow(v: F80, fmt: Format, ctl: &Control) -> Narrowed<u64> {
    let (frac_bits, exp_bits) = if fmt == SINGLE {
        (23u32, 8u32)
    } else {
        (52u32, 11u32)
    };
    let total = 1 + exp_bits + frac_bits;
    let sign_bit = u64::from(v.sign()) << (total - 1);
    let exp_all = ((1u64 << exp_bits) - 1) << frac_bits;
    let indefinite = (1u64 << (total - 1)) | exp_all | (1u64 << (frac_bits - 1));
    let masked_ie = ctl.masked(IE);
    let invalid = |bits: u64| Narrowed {
        bits,
        exc: IE,
        up: false,
        store: masked_ie,
    };
    match v.class() {
        Class::Unsupported => invalid(indefinite),
        Class::SNaN | Class::QNaN => {
            let frac = (v.signif << 1) >> (64 - frac_bits);
            let q = 1u64 << (frac_bits - 1);
            let bits = sign_bit | exp_all | frac | q;
            if v.class() == Class::SNaN {
                invalid(bits)
            } else {
                Narrowed {
                    bits,
                    exc: 0,
                    up: false,
                    store: true,
                }
            }
        }
        Class::Infinity => Narrowed {
            bits: sign_bit | exp_all,
            exc: 0,
            up: false,
            store: true,
        },
        Class::Zero => Narrowed {
            bits: sign_bit,
            exc: 0,
            up: false,
            store: true,
        },
        _ => {
            // A denormal source does not raise #D here (it underflows instead).
            let Some(x) = v.unpack() else {
                return invalid(indefinite);
            };
            let o = round64(x.sign, x.exp, x.sig, fmt, ctl, false);
            let bits = if fmt == SINGLE {
                u64::from(o.to_f32_bits())
            } else {
                o.to_f64_bits()
            };
            Narrowed {
                bits,
                exc: o.exc,
                up: o.up,
                store: o.store,
            }
        }
    }
}

/// FST m32fp conversion.
pub fn f80_to_f32(v: F80, ctl: &Control) -> Narrowed<u32> {
    let n = narrow(v, SINGLE, ctl);
    Narrowed {
        bits: n.bits as u32,
        exc: n.exc,
        up: n.up,
        store: n.store,
    }
}

/// FST m64fp conversion.
pub fn f80_to_f64(v: F80, ctl: &Control) -> Narrowed<u64> {
    narrow(v, DOUBLE, ctl)
}

/// Loads an integer exactly.
pub fn int_to_f80(i: i64) -> F80 {
    if i == 0 {
        return F80::zero(false);
    }
    let sign = i < 0;
    let m = i.unsigned_abs();
    let lz = m.leading_zeros();
    F80::new(sign, (63 - lz as i32 + EXT_BIAS) as u16, m << lz)
}

/// Rounds a finite value to an integer magnitude: `(magnitude, inexact, up)`;
/// `None` when the magnitude is 2^64 or more.
pub fn round_to_int(x: Unpacked, rc: Rounding) -> Option<(u64, bool, bool)> {
    if x.exp >= 64 {
        return None;
    }
    if x.exp >= 63 {
        return Some((x.sig, false, false));
    }
    let sh = (63 - x.exp) as u32; // 1..
    let (kept, rb, below) = if sh >= 65 {
        (0u64, false, true)
    } else if sh == 64 {
        (0u64, true, x.sig << 1 != 0)
    } else {
        (
            x.sig >> sh,
            (x.sig >> (sh - 1)) & 1 != 0,
            sh > 1 && x.sig << (65 - sh) != 0,
        )
    };
    let inexact = rb || below;
    let up = match rc {
        Rounding::Nearest => rb && (below || kept & 1 != 0),
        Rounding::Zero => false,
        Rounding::Down => inexact && x.sign,
        Rounding::Up => inexact && !x.sign,
    };
    let (m, ovf) = kept.overflowing_add(u64::from(up));
    if ovf {
        return None;
    }
    Some((m, inexact, up))
}

/// FIST/FISTP/FISTTP: converts to an integer of `bits` width (16, 32, 64).
/// Out-of-range values, NaNs and infinities give IE and the integer indefinite.
pub fn f80_to_int(v: F80, bits: u32, rc: Rounding, ctl: &Control) -> Narrowed<i64> {
    let indefinite = i64::MIN >> (64 - bits);
    let invalid = Narrowed {
        bits: indefinite,
        exc: IE,
        up: false,
        store: ctl.masked(IE),
    };
    match v.class() {
        Class::Zero => Narrowed {
            bits: 0,
            exc: 0,
            up: false,
            store: true,
        },
        Class::Unsupported | Class::SNaN | Class::QNaN | Class::Infinity => invalid,
        _ => {
            // A denormal source does not raise #D (it is just inexact).
            let de = 0;
            let Some(x) = v.unpack() else { return invalid };
            let Some((m, inexact, up)) = round_to_int(x, rc) else {
                return invalid;
            };
            let limit = 1u64 << (bits - 1);
            let value = if x.sign {
                if m > limit {
                    return invalid;
                }
                0i64.wrapping_sub(m as i64)
            } else {
                if m >= limit {
                    return invalid;
                }
                m as i64
            };
            let exc = de | if inexact { PE } else { 0 };
            Narrowed {
                bits: value,
                exc,
                up,
                store: true,
            }
        }
    }
}

/// FRNDINT on a finite non-zero value.
pub fn round_int_f80(v: F80, ctl: &Control) -> Res {
    let Some(x) = v.unpack() else {
        return Res::exact(v);
    };
    if x.exp >= 63 {
        return Res::exact(v);
    }
    let de = if v.is_denormal() { DE } else { 0 };
    match round_to_int(x, ctl.rc) {
        Some((m, inexact, up)) => {
            let r = if m == 0 {
                F80::zero(x.sign)
            } else {
                int_to_f80(m as i64).with_sign(x.sign)
            };
            let r = if m == 1 << 63 {
                F80::new(x.sign, (63 + EXT_BIAS) as u16, m)
            } else {
                r
            };
            Res {
                value: r,
                exc: de | if inexact { PE } else { 0 },
                up,
            }
        }
        None => Res::exact(F80::new(x.sign, (64 + EXT_BIAS) as u16, 1 << 63)),
    }
}

/// FBLD: decodes 18 packed BCD digits (invalid digits give an undefined value;
/// here they are used with their binary weight).
pub fn bcd_to_f80(b: [u8; 10]) -> F80 {
    let mut v: u64 = 0;
    for i in (0..9).rev() {
        let hi = u64::from(b[i] >> 4);
        let lo = u64::from(b[i] & 15);
        v = v.wrapping_mul(100).wrapping_add(hi * 10 + lo);
    }
    let sign = b[9] & 0x80 != 0;
    if v == 0 {
        return F80::zero(sign);
    }
    let lz = v.leading_zeros();
    F80::new(sign, (63 - lz as i32 + EXT_BIAS) as u16, v << lz)
}

/// The packed BCD indefinite.
pub const BCD_INDEFINITE: [u8; 10] = [0, 0, 0, 0, 0, 0, 0, 0xC0, 0xFF, 0xFF];

/// FBSTP conversion.
pub fn f80_to_bcd(v: F80, ctl: &Control) -> Narrowed<[u8; 10]> {
    let invalid = Narrowed {
        bits: BCD_INDEFINITE,
        exc: IE,
        up: false,
        store: ctl.masked(IE),
    };
    let (m, exc, up) = match v.class() {
        Class::Zero => (0u64, 0u16, false),
        Class::Unsupported | Class::SNaN | Class::QNaN | Class::Infinity => return invalid,
        _ => {
            // A denormal source does not raise #D (it is just inexact).
            let de = 0;
            let Some(x) = v.unpack() else { return invalid };
            let Some((m, inexact, up)) = round_to_int(x, ctl.rc) else {
                return invalid;
            };
            if m > 999_999_999_999_999_999 {
                return invalid;
            }
            (m, de | if inexact { PE } else { 0 }, up)
        }
    };
    let mut out = [0u8; 10];
    let mut r = m;
    for byte in out.iter_mut().take(9) {
        let lo = (r % 10) as u8;
        r /= 10;
        let hi = (r % 10) as u8;
        r /= 10;
        *byte = (hi << 4) | lo;
    }
    out[9] = if v.sign() { 0x80 } else { 0 };
    Narrowed {
        bits: out,
        exc,
        up,
        store: true,
    }
}

/// A memory operand of format `fmt` from its little-endian bytes (the first
/// `fmt.size()` of `b`), widened to an operand.
pub fn mem_to_operand(fmt: crate::ops::Mem, b: [u8; 10]) -> Operand {
    use crate::ops::Mem;
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    let bits = u64::from_le_bytes(w);
    let int = |i: i64| Operand {
        v: int_to_f80(i),
        denormal: false,
    };
    match fmt {
        Mem::F32 => f32_to_f80(bits as u32),
        Mem::F64 => f64_to_f80(bits),
        Mem::I16 => int(i64::from(bits as u16 as i16)),
        Mem::I32 => int(i64::from(bits as u32 as i32)),
        Mem::I64 => int(bits as i64),
        Mem::F80 => Operand {
            v: F80::from_le_bytes(b),
            denormal: false,
        },
        Mem::Bcd => Operand {
            v: bcd_to_f80(b),
            denormal: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widen_and_narrow() {
        let ctl = Control {
            rc: Rounding::Nearest,
            prec: 64,
            masks: 0x3F,
        };
        for x in [
            1.0f64,
            -2.5,
            1e-310,
            f64::MAX,
            f64::INFINITY,
            0.0,
            -0.0,
            3.0e300,
        ] {
            let v = f64_to_f80(x.to_bits()).v;
            assert_eq!(f80_to_f64(v, &ctl).bits, x.to_bits(), "{x}");
        }
        for x in [1.0f32, -2.5, 1e-40, f32::MAX, 0.1] {
            let v = f32_to_f80(x.to_bits()).v;
            assert_eq!(f80_to_f32(v, &ctl).bits, x.to_bits(), "{x}");
        }
        assert_eq!(int_to_f80(i64::MIN), F80::new(true, 0x403E, 1 << 63));
        let b = f80_to_bcd(int_to_f80(-123_456_789_012), &ctl).bits;
        assert_eq!(bcd_to_f80(b), int_to_f80(-123_456_789_012));
    }
}
