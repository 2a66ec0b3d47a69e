//! The 80-bit extended-precision register format and its classification.

/// Exponent bias of the extended format.
pub const EXT_BIAS: i32 = 16383;

/// One 80-bit x87 value as stored in a register or in memory (m80fp).
///
/// `signif` holds the 64-bit significand with its explicit integer bit (bit 63);
/// `sign_exp` holds the sign (bit 15) and the 15-bit biased exponent.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct F80 {
    /// Significand with the explicit integer bit in bit 63.
    pub signif: u64,
    /// Sign (bit 15) and biased exponent (bits 0-14).
    pub sign_exp: u16,
}

/// What an 80-bit encoding means to the x87.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// ±0.
    Zero,
    /// Exponent 0, integer bit 0, fraction non-zero.
    Denormal,
    /// Exponent 0 with the integer bit set (accepted as an operand, raises #D).
    PseudoDenormal,
    /// A normalized finite value.
    Normal,
    /// ±∞.
    Infinity,
    /// Quiet NaN.
    QNaN,
    /// Signaling NaN.
    SNaN,
    /// Unnormal, pseudo-NaN, pseudo-infinity: invalid operands since the 80387.
    Unsupported,
}

impl F80 {
    /// The "real indefinite" QNaN produced by masked invalid operations.
    pub const INDEFINITE: F80 = F80 {
        signif: 0xC000_0000_0000_0000,
        sign_exp: 0xFFFF,
    };
    /// +1.0.
    pub const ONE: F80 = F80 {
        signif: 1 << 63,
        sign_exp: 0x3FFF,
    };

    /// Builds a value from its sign, biased exponent and significand.
    #[inline]
    pub const fn new(sign: bool, biased_exp: u16, signif: u64) -> F80 {
        F80 {
            signif,
            sign_exp: ((sign as u16) << 15) | (biased_exp & 0x7FFF),
        }
    }

    /// ±0.
    #[inline]
    pub const fn zero(sign: bool) -> F80 {
        F80::new(sign, 0, 0)
    }

    /// ±∞.
    #[inline]
    pub const fn infinity(sign: bool) -> F80 {
        F80::new(sign, 0x7FFF, 1 << 63)
    }

    /// Decodes the little-endian 10-byte memory image.
    pub fn from_le_bytes(b: [u8; 10]) -> F80 {
        let mut lo = [0u8; 8];
        lo.copy_from_slice(&b[..8]);
        F80 {
            signif: u64::from_le_bytes(lo),
            sign_exp: u16::from_le_bytes([b[8], b[9]]),
        }
    }

    /// Encodes the little-endian 10-byte memory image.
    pub fn to_le_bytes(self) -> [u8; 10] {
        let mut out = [0u8; 10];
        out[..8].copy_from_slice(&self.signif.to_le_bytes());
        out[8..].copy_from_slice(&self.sign_exp.to_le_bytes());
        out
    }

    /// The sign bit.
    #[inline]
    pub const fn sign(self) -> bool {
        self.sign_exp & 0x8000 != 0
    }

    /// The biased exponent.
    #[inline]
    pub const fn biased_exp(self) -> u16 {
        self.sign_exp & 0x7FFF
    }

    /// The value with its sign replaced.
    #[inline]
    pub const fn with_sign(self, sign: bool) -> F80 {
        F80 {
            signif: self.signif,
            sign_exp: (self.sign_exp & 0x7FFF) | ((sign as u16) << 15),
        }
    }

    /// The value with the quiet bit set (only meaningful for NaNs).
    #[inline]
    pub const fn quieted(self) -> F80 {
        F80 {
            signif: self.signif | (1 << 62),
            sign_exp: self.sign_exp,
        }
    }

    /// Classifies the encoding.
    #[inline]
    pub const fn class(self) -> Class {
        let e = self.biased_exp();
        let j = self.signif >> 63 != 0;
        let frac = self.signif << 1;
        match e {
            0 => {
                if j {
                    Class::PseudoDenormal
                } else if self.signif == 0 {
                    Class::Zero
                } else {
                    Class::Denormal
                }
            }
            0x7FFF => {
                if !j {
                    Class::Unsupported
                } else if frac == 0 {
                    Class::Infinity
                } else if self.signif & (1 << 62) != 0 {
                    Class::QNaN
                } else {
                    Class::SNaN
                }
            }
            _ => {
                if j {
                    Class::Normal
                } else {
                    Class::Unsupported
                }
            }
        }
    }

    /// True for QNaN and SNaN.
    #[inline]
    pub const fn is_nan(self) -> bool {
        matches!(self.class(), Class::QNaN | Class::SNaN)
    }

    /// True for denormals and pseudo-denormals (operands that raise #D).
    #[inline]
    pub const fn is_denormal(self) -> bool {
        matches!(self.class(), Class::Denormal | Class::PseudoDenormal)
    }

    /// The finite non-zero value as (sign, unbiased exponent of bit 63, normalized significand).
    /// Returns `None` for zeros, infinities, NaNs and unsupported encodings.
    #[inline]
    pub fn unpack(self) -> Option<Unpacked> {
        match self.class() {
            Class::Normal => Some(Unpacked {
                sign: self.sign(),
                exp: i32::from(self.biased_exp()) - EXT_BIAS,
                sig: self.signif,
            }),
            Class::Denormal | Class::PseudoDenormal => {
                let lz = self.signif.leading_zeros();
                Some(Unpacked {
                    sign: self.sign(),
                    exp: 1 - EXT_BIAS - lz as i32,
                    sig: self.signif << lz,
                })
            }
            _ => None,
        }
    }
}

/// A finite non-zero value: `sig × 2^(exp − 63)`, `sig` normalized (bit 63 set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unpacked {
    /// Sign.
    pub sign: bool,
    /// Unbiased exponent of bit 63 of `sig`.
    pub exp: i32,
    /// Significand, bit 63 set.
    pub sig: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(F80::zero(true).class(), Class::Zero);
        assert_eq!(F80::new(false, 0, 1).class(), Class::Denormal);
        assert_eq!(F80::new(false, 0, 1 << 63).class(), Class::PseudoDenormal);
        assert_eq!(F80::ONE.class(), Class::Normal);
        assert_eq!(F80::new(false, 1, 1).class(), Class::Unsupported);
        assert_eq!(F80::infinity(false).class(), Class::Infinity);
        assert_eq!(F80::INDEFINITE.class(), Class::QNaN);
        assert_eq!(F80::new(false, 0x7FFF, (1 << 63) | 1).class(), Class::SNaN);
        assert_eq!(F80::new(false, 0x7FFF, 1).class(), Class::Unsupported);
        let d = F80::new(false, 0, 1).unpack().unwrap();
        assert_eq!(d.exp, -16382 - 63);
        let p = F80::new(false, 0, 1 << 63).unpack().unwrap();
        assert_eq!(p.exp, -16382);
    }
}
