//! Comparisons (FCOM/FUCOM/FICOM/FTST/FCOMI/FUCOMI) and classification (FXAM).

use crate::arith::Operand;
use crate::float::{Class, F80};
use crate::status::{C0, C1, C2, C3, DE, IE};

/// Result of an x87 comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// a < b
    Less,
    /// a = b
    Equal,
    /// a > b
    Greater,
    /// A NaN or unsupported operand.
    Unordered,
}

impl Order {
    /// C3, C2, C0 as FCOM sets them (C1 cleared).
    pub fn cc(self) -> u16 {
        match self {
            Order::Greater => 0,
            Order::Less => C0,
            Order::Equal => C3,
            Order::Unordered => C3 | C2 | C0,
        }
    }

    /// (ZF, PF, CF) as FCOMI sets them.
    pub fn eflags(self) -> (bool, bool, bool) {
        match self {
            Order::Greater => (false, false, false),
            Order::Less => (false, false, true),
            Order::Equal => (true, false, false),
            Order::Unordered => (true, true, true),
        }
    }
}

/// Compares two operands. `quiet` selects the FUCOM rules (only SNaNs and
/// unsupported encodings raise IE). Returns the order and exception flags.
pub fn compare(a: Operand, b: Operand, quiet: bool) -> (Order, u16) {
    let (ca, cb) = (a.v.class(), b.v.class());
    if ca == Class::Unsupported || cb == Class::Unsupported {
        return (Order::Unordered, IE);
    }
    if a.v.is_nan() || b.v.is_nan() {
        let snan = ca == Class::SNaN || cb == Class::SNaN;
        return (Order::Unordered, if snan || !quiet { IE } else { 0 });
    }
    let exc = if a.denormal || b.denormal { DE } else { 0 };
    (order(a.v, b.v), exc)
}

/// Orders two non-NaN values (±0 equal).
fn order(a: F80, b: F80) -> Order {
    let az = a.class() == Class::Zero;
    let bz = b.class() == Class::Zero;
    if az && bz {
        return Order::Equal;
    }
    let key = |v: F80, zero: bool| -> (bool, u16, u64) {
        if zero {
            return (v.sign(), 0, 0);
        }
        match v.unpack() {
            // Biased so that pseudo-denormals compare by value.
            Some(u) => (u.sign, (u.exp + 16383 + 64) as u16, u.sig),
            None => (v.sign(), 0xFFFF, v.signif),
        }
    };
    let (sa, ea, ma) = key(a, az);
    let (sb, eb, mb) = key(b, bz);
    let mag = (ea, ma).cmp(&(eb, mb));
    let mag = if az {
        std::cmp::Ordering::Less
    } else if bz {
        std::cmp::Ordering::Greater
    } else {
        mag
    };
    use std::cmp::Ordering::*;
    let res = match (sa && !az, sb && !bz) {
        (false, true) => Greater,
        (true, false) => Less,
        (false, false) => mag,
        (true, true) => mag.reverse(),
    };
    match res {
        Less => Order::Less,
        Equal => Order::Equal,
        Greater => Order::Greater,
    }
}

/// FXAM condition codes for ST(0) (`empty` when its tag is empty).
pub fn fxam(v: F80, empty: bool) -> u16 {
    let c1 = if v.sign() { C1 } else { 0 };
    let cls = if empty {
        C3 | C0
    } else {
        match v.class() {
            Class::Unsupported => 0,
            Class::QNaN | Class::SNaN => C0,
            Class::Normal => C2,
            Class::Infinity => C2 | C0,
            Class::Zero => C3,
            Class::Denormal | Class::PseudoDenormal => C3 | C2,
        }
    };
    c1 | cls
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::f64_to_f80;

    fn op(x: f64) -> Operand {
        f64_to_f80(x.to_bits())
    }

    #[test]
    fn orders() {
        assert_eq!(compare(op(1.0), op(2.0), false).0, Order::Less);
        assert_eq!(compare(op(-1.0), op(-2.0), false).0, Order::Greater);
        assert_eq!(compare(op(0.0), op(-0.0), false).0, Order::Equal);
        assert_eq!(compare(op(-0.0), op(1e-310), false).0, Order::Less);
        assert_eq!(compare(op(f64::NAN), op(1.0), true), (Order::Unordered, 0));
        assert_eq!(
            compare(op(f64::NAN), op(1.0), false),
            (Order::Unordered, IE)
        );
        assert_eq!(
            compare(op(f64::NEG_INFINITY), op(-1e300), false).0,
            Order::Less
        );
    }
}
