//! Rounding of exact intermediate results to a destination format, with the
//! x87 rules for overflow, underflow, precision control and the C1 round-up bit.

use crate::float::{EXT_BIAS, F80};
use crate::status::{Control, Rounding, OE, PE, UE};

/// A binary floating-point destination format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Format {
    /// Significand bits, integer bit included.
    pub prec: u32,
    /// Unbiased exponent of the smallest normal number.
    pub emin: i32,
    /// Unbiased exponent of the largest finite number.
    pub emax: i32,
}

/// The extended format with a significand of `prec` bits (x87 precision control).
pub const fn ext(prec: u32) -> Format {
    Format {
        prec,
        emin: -16382,
        emax: 16383,
    }
}
/// IEEE double (m64fp).
pub const DOUBLE: Format = Format {
    prec: 53,
    emin: -1022,
    emax: 1023,
};
/// IEEE single (m32fp).
pub const SINGLE: Format = Format {
    prec: 24,
    emin: -126,
    emax: 127,
};

/// Exponent bias adjustment for unmasked overflow/underflow to a register.
pub const BIAS_ADJUST: i32 = 24576;

/// x87 detects tininess after rounding (SoftFloat's x86 convention).
const TININESS_AFTER_ROUNDING: bool = true;

/// A rounded finite result, or an infinity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Sign of the result.
    pub sign: bool,
    /// Unbiased exponent of bit 63 of `sig`; for denormals and zero it is `emin`
    /// and bit 63 is clear.
    pub exp: i32,
    /// Significand, left-aligned: bit 63 is the integer bit.
    pub sig: u64,
    /// The result is an infinity.
    pub inf: bool,
    /// Exception flags raised (OE, UE, PE).
    pub exc: u16,
    /// The magnitude was rounded up (goes to C1 when PE is raised).
    pub up: bool,
    /// False when an unmasked overflow/underflow to memory suppresses the store.
    pub store: bool,
}

impl Outcome {
    /// Encodes as an 80-bit value (the format must have the extended exponent range).
    #[inline]
    pub fn to_f80(&self) -> F80 {
        if self.inf {
            return F80::infinity(self.sign);
        }
        if self.sig >> 63 == 0 {
            return F80::new(self.sign, 0, self.sig);
        }
        let be = self.exp + EXT_BIAS;
        F80::new(self.sign, be.clamp(0, 0x7FFF) as u16, self.sig)
    }

    /// Encodes as an IEEE double.
    pub fn to_f64_bits(&self) -> u64 {
        let s = (self.sign as u64) << 63;
        if self.inf {
            return s | 0x7FF0_0000_0000_0000;
        }
        let frac = (self.sig >> 11) & ((1 << 52) - 1);
        if self.sig >> 63 == 0 {
            return s | frac;
        }
        s | (((self.exp + 1023) as u64 & 0x7FF) << 52) | frac
    }

    /// Encodes as an IEEE single.
    pub fn to_f32_bits(&self) -> u32 {
        let s = (self.sign as u32) << 31;
        if self.inf {
            return s | 0x7F80_0000;
        }
        let frac = ((self.sig >> 40) as u32) & ((1 << 23) - 1);
        if self.sig >> 63 == 0 {
            return s | frac;
        }
        s | (((self.exp + 127) as u32 & 0xFF) << 23) | frac
    }
}

/// Raw rounding: `kept × 2^lsb_exp`, before range checks.
struct Raw {
    kept: u128,
    lsb_exp: i32,
    inexact: bool,
    up: bool,
}

#[inline]
fn round_raw(
    sign: bool,
    e: i32,
    sig: u128,
    sticky: bool,
    prec: u32,
    emin: Option<i32>,
    rc: Rounding,
) -> Raw {
    let base = match emin {
        Some(m) if m > e => m,
        _ => e,
    };
    let lsb_exp = base - (prec as i32 - 1);
    // Bit k of `sig` weighs 2^(e - 127 + k); the kept lsb is bit `k`.
    let k = i64::from(lsb_exp) - i64::from(e) + 127;
    let (kept, rb, below) = if k > 128 {
        (0u128, false, true)
    } else if k == 128 {
        (0u128, sig >> 127 != 0, (sig << 1) != 0 || sticky)
    } else {
        let k = k as u32;
        let kept = sig >> k;
        let rb = (sig >> (k - 1)) & 1 != 0;
        let below = (k > 1 && sig & ((1u128 << (k - 1)) - 1) != 0) || sticky;
        (kept, rb, below)
    };
    let inexact = rb || below;
    let up = match rc {
        Rounding::Nearest => rb && (below || kept & 1 != 0),
        Rounding::Zero => false,
        Rounding::Down => inexact && sign,
        Rounding::Up => inexact && !sign,
    };
    Raw {
        kept: kept + up as u128,
        lsb_exp,
        inexact,
        up,
    }
}

/// The largest finite value of `fmt` as an outcome.
fn max_finite(sign: bool, fmt: Format) -> Outcome {
    let sig = if fmt.prec >= 64 {
        u64::MAX
    } else {
        ((1u64 << fmt.prec) - 1) << (64 - fmt.prec)
    };
    Outcome {
        sign,
        exp: fmt.emax,
        sig,
        inf: false,
        exc: 0,
        up: false,
        store: true,
    }
}

/// Rounds the exact value `(sig × 2^(e − 127)) + sticky·ε` (`sig` non-zero) to `fmt`.
///
/// `to_register` selects the x87 register rules for unmasked overflow/underflow
/// (result scaled by 2^∓24576) instead of the memory rules (no store).
#[inline]
pub fn round(
    sign: bool,
    e: i32,
    sig: u128,
    sticky: bool,
    fmt: Format,
    ctl: &Control,
    to_register: bool,
) -> Outcome {
    match round_normal(sign, e, sig, sticky, fmt, ctl.rc) {
        Some(o) => o,
        None => round_any(sign, e, sig, sticky, fmt, ctl, to_register),
    }
}

/// [`round`] for the common case, a result that is normal in `fmt` whether or not it
/// rounds up: no underflow, no overflow, so the control word's masks and the
/// destination do not matter. `None` for anything else.
#[inline]
fn round_normal(
    sign: bool,
    e: i32,
    sig: u128,
    sticky: bool,
    fmt: Format,
    rc: Rounding,
) -> Option<Outcome> {
    if sig == 0 {
        return None;
    }
    let lz = sig.leading_zeros();
    let sig = sig << lz;
    // Bit 127 of `sig` now weighs 2^e.
    let e = e - lz as i32;
    if e < fmt.emin || e >= fmt.emax || !(1..=64).contains(&fmt.prec) {
        return None;
    }
    let sh = 128 - fmt.prec;
    let kept = (sig >> sh) as u64;
    let rb = (sig >> (sh - 1)) & 1 != 0;
    let below = sig & ((1u128 << (sh - 1)) - 1) != 0 || sticky;
    let inexact = rb || below;
    let up = match rc {
        Rounding::Nearest => rb && (below || kept & 1 != 0),
        Rounding::Zero => false,
        Rounding::Down => inexact && sign,
        Rounding::Up => inexact && !sign,
    };
    let (kept, exp) = match kept.checked_add(up as u64) {
        // Rounding up carried into a new leading bit: 1.0 × 2^(e+1).
        Some(k) if k >> (fmt.prec - 1) > 1 => (1u64 << (fmt.prec - 1), e + 1),
        Some(k) => (k, e),
        None => (1u64 << 63, e + 1),
    };
    Some(Outcome {
        sign,
        exp,
        sig: kept << (64 - fmt.prec),
        inf: false,
        exc: if inexact { PE } else { 0 },
        up,
        store: true,
    })
}

/// [`round`] for every case.
fn round_any(
    sign: bool,
    e: i32,
    sig: u128,
    sticky: bool,
    fmt: Format,
    ctl: &Control,
    to_register: bool,
) -> Outcome {
    if sig == 0 {
        // Only sticky bits: an infinitesimal value.
        return round(
            sign,
            e.saturating_sub(200),
            1 << 127,
            false,
            fmt,
            ctl,
            to_register,
        );
    }
    let lz = sig.leading_zeros();
    let sig = sig << lz;
    let e = e - lz as i32;
    let rc = ctl.rc;

    let tiny = if e >= fmt.emin {
        false
    } else if TININESS_AFTER_ROUNDING {
        let r = round_raw(sign, e, sig, sticky, fmt.prec, None, rc);
        let bits = 128 - r.kept.leading_zeros() as i32;
        r.lsb_exp + bits - 1 < fmt.emin
    } else {
        true
    };

    if tiny && !ctl.masked(UE) && e + BIAS_ADJUST < fmt.emin {
        // Still tiny after the bias adjustment: a signed zero.
        return Outcome {
            sign,
            exp: fmt.emin,
            sig: 0,
            inf: false,
            exc: UE | PE,
            up: false,
            store: to_register,
        };
    }
    if tiny && !ctl.masked(UE) {
        if !to_register {
            return Outcome {
                sign,
                exp: 0,
                sig: 0,
                inf: false,
                exc: UE,
                up: false,
                store: false,
            };
        }
        let mut o = finish(
            sign,
            round_raw(
                sign,
                e + BIAS_ADJUST,
                sig,
                sticky,
                fmt.prec,
                Some(fmt.emin),
                rc,
            ),
            fmt,
        );
        o.exc |= UE;
        return o;
    }

    let r = round_raw(sign, e, sig, sticky, fmt.prec, Some(fmt.emin), rc);
    let bits = 128 - r.kept.leading_zeros() as i32;
    if r.kept != 0 && r.lsb_exp + bits - 1 > fmt.emax {
        // Still out of range after the bias adjustment: the masked response.
        if !ctl.masked(OE) && e - BIAS_ADJUST > fmt.emax {
            // Still out of range after the bias adjustment: an infinity.
            return Outcome {
                sign,
                exp: fmt.emax,
                sig: 0,
                inf: true,
                exc: OE | PE,
                up: true,
                store: to_register,
            };
        }
        if !ctl.masked(OE) {
            if !to_register {
                return Outcome {
                    sign,
                    exp: 0,
                    sig: 0,
                    inf: false,
                    exc: OE,
                    up: false,
                    store: false,
                };
            }
            let mut o = finish(
                sign,
                round_raw(sign, e - BIAS_ADJUST, sig, sticky, fmt.prec, None, rc),
                fmt,
            );
            o.exc |= OE;
            return o;
        }
        let to_inf = match rc {
            Rounding::Nearest => true,
            Rounding::Zero => false,
            Rounding::Down => sign,
            Rounding::Up => !sign,
        };
        let mut o = if to_inf {
            Outcome {
                sign,
                exp: fmt.emax,
                sig: 0,
                inf: true,
                exc: 0,
                up: true,
                store: true,
            }
        } else {
            max_finite(sign, fmt)
        };
        o.exc |= OE | PE;
        return o;
    }
    let mut o = finish(sign, r, fmt);
    if tiny && o.exc & PE != 0 {
        o.exc |= UE;
    }
    o
}

#[inline]
fn finish(sign: bool, r: Raw, fmt: Format) -> Outcome {
    let exc = if r.inexact { PE } else { 0 };
    if r.kept == 0 {
        return Outcome {
            sign,
            exp: fmt.emin,
            sig: 0,
            inf: false,
            exc,
            up: r.up,
            store: true,
        };
    }
    let bits = 128 - r.kept.leading_zeros() as i32;
    let exp = r.lsb_exp + bits - 1;
    let (exp, sig) = if exp >= fmt.emin {
        (exp, (r.kept << (128 - bits) >> 64) as u64)
    } else {
        // Denormal: bit 63 weighs 2^emin.
        let shift = r.lsb_exp - (fmt.emin - 63);
        (
            fmt.emin,
            if (0..64).contains(&shift) {
                (r.kept << shift) as u64
            } else {
                0
            },
        )
    };
    Outcome {
        sign,
        exp,
        sig,
        inf: false,
        exc,
        up: r.up && r.inexact,
        store: true,
    }
}

/// Rounds a 64-bit-significand value `sig × 2^(exp − 63)` to `fmt`.
pub fn round64(
    sign: bool,
    exp: i32,
    sig: u64,
    fmt: Format,
    ctl: &Control,
    to_register: bool,
) -> Outcome {
    round(
        sign,
        exp,
        u128::from(sig) << 64,
        false,
        fmt,
        ctl,
        to_register,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctl(rc: Rounding) -> Control {
        Control {
            rc,
            prec: 64,
            masks: 0x3F,
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 20000, ..Default::default() })]
        #[test]
        fn fast_path_agrees_with_the_general_one(
            sign: bool,
            e in -17000i32..17000,
            hi: u64,
            lo: u64,
            shift in 0u32..128,
            sticky: bool,
            f in 0usize..5,
            rc in 0usize..4,
            masks in 0u16..0x40,
            pattern in 0usize..3,
            low_bits in 0u32..128,
        ) {
            let random = u128::from(hi) << 64 | u128::from(lo);
            let low_mask = (1u128 << low_bits) - 1;
            // Random bits, all ones (rounding up carries), or a power of two (ties and
            // exact values), each with random low bits.
            let sig = match pattern {
                0 => random,
                1 => !low_mask | random & low_mask,
                _ => 1u128 << 127 | random & low_mask,
            } >> shift;
            let fmt = [ext(64), ext(53), ext(24), DOUBLE, SINGLE][f];
            let rc = [Rounding::Nearest, Rounding::Down, Rounding::Up, Rounding::Zero][rc];
            let c = Control { rc, prec: fmt.prec, masks };
            let normal = sig != 0 && {
                let top = e - sig.leading_zeros() as i32;
                top >= fmt.emin && top < fmt.emax
            };
            let fast = round_normal(sign, e, sig, sticky, fmt, rc);
            proptest::prop_assert_eq!(fast.is_some(), normal);
            if let Some(o) = fast {
                for to_register in [false, true] {
                    proptest::prop_assert_eq!(o, round_any(sign, e, sig, sticky, fmt, &c, to_register));
                }
            }
        }
    }

    #[test]
    fn rounds_to_nearest_even() {
        // 1 + 2^-64 (half ulp): ties to even -> 1.0
        let o = round(
            false,
            0,
            (1u128 << 127) | (1u128 << 63),
            false,
            ext(64),
            &ctl(Rounding::Nearest),
            true,
        );
        assert_eq!(o.to_f80(), F80::ONE);
        assert_eq!(o.exc, PE);
        let o = round(
            false,
            0,
            (1u128 << 127) | (1u128 << 63),
            true,
            ext(64),
            &ctl(Rounding::Nearest),
            true,
        );
        assert_eq!(o.to_f80(), F80::new(false, 0x3FFF, (1 << 63) | 1));
        assert!(o.up);
    }

    #[test]
    fn overflow_and_denormals() {
        let o = round64(
            false,
            16384,
            1 << 63,
            ext(64),
            &ctl(Rounding::Nearest),
            true,
        );
        assert!(o.inf);
        let o = round64(false, 16384, 1 << 63, ext(64), &ctl(Rounding::Zero), true);
        assert_eq!(o.to_f80(), F80::new(false, 0x7FFE, u64::MAX));
        let o = round64(
            false,
            -16383,
            1 << 63,
            ext(64),
            &ctl(Rounding::Nearest),
            true,
        );
        assert_eq!(o.to_f80(), F80::new(false, 0, 1 << 62));
        assert_eq!(o.exc, 0);
        let o = round64(
            false,
            -1023,
            1 << 63,
            DOUBLE,
            &ctl(Rounding::Nearest),
            false,
        );
        assert_eq!(o.to_f64_bits(), 1 << 51);
        let o = round64(
            true,
            -127,
            (1 << 63) | 1,
            SINGLE,
            &ctl(Rounding::Nearest),
            false,
        );
        assert_eq!(o.to_f32_bits(), 0x8040_0000);
        assert_eq!(o.exc, PE | UE);
    }
}
