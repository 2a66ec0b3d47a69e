//! Status-word and control-word bits.

/// Invalid operation.
pub const IE: u16 = 1 << 0;
/// Denormal operand.
pub const DE: u16 = 1 << 1;
/// Zero divide.
pub const ZE: u16 = 1 << 2;
/// Overflow.
pub const OE: u16 = 1 << 3;
/// Underflow.
pub const UE: u16 = 1 << 4;
/// Precision (inexact).
pub const PE: u16 = 1 << 5;
/// Stack fault.
pub const SF: u16 = 1 << 6;
/// Error summary.
pub const ES: u16 = 1 << 7;
/// Condition code C0.
pub const C0: u16 = 1 << 8;
/// Condition code C1.
pub const C1: u16 = 1 << 9;
/// Condition code C2.
pub const C2: u16 = 1 << 10;
/// Condition code C3.
pub const C3: u16 = 1 << 14;
/// Busy (mirrors ES on the 80387 and later).
pub const B: u16 = 1 << 15;
/// TOP field mask.
pub const TOP_MASK: u16 = 7 << 11;
/// The six exception flags (and the matching FCW mask bits).
pub const EXC_MASK: u16 = 0x3F;
/// All four condition codes.
pub const CC_MASK: u16 = C0 | C1 | C2 | C3;

/// Rounding control (FCW bits 10-11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    /// Round to nearest, ties to even.
    Nearest,
    /// Round toward −∞.
    Down,
    /// Round toward +∞.
    Up,
    /// Round toward zero.
    Zero,
}

/// The parts of the FCW that arithmetic needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Control {
    /// Rounding control.
    pub rc: Rounding,
    /// Significand precision of register results: 24, 53 or 64 bits.
    pub prec: u32,
    /// Exception mask bits (FCW bits 0-5): a set bit masks the exception.
    pub masks: u16,
}

impl Control {
    /// Decodes an FCW value.
    #[inline]
    pub fn from_fcw(fcw: u16) -> Control {
        let rc = match (fcw >> 10) & 3 {
            0 => Rounding::Nearest,
            1 => Rounding::Down,
            2 => Rounding::Up,
            _ => Rounding::Zero,
        };
        // PC=01 is reserved; it behaves as 64-bit precision here.
        let prec = match (fcw >> 8) & 3 {
            0 => 24,
            2 => 53,
            _ => 64,
        };
        Control {
            rc,
            prec,
            masks: fcw & EXC_MASK,
        }
    }

    /// True when every exception in `exc` is masked.
    #[inline]
    pub fn masked(&self, exc: u16) -> bool {
        exc & EXC_MASK & !self.masks == 0
    }
}
