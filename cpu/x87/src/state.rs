//! The x87 register file, control/status/tag words and stack handling.

use crate::float::{Class, F80};
use crate::status::{Control, B, C1, ES, EXC_MASK, IE, SF, TOP_MASK};

/// FCW after FNINIT.
pub const FCW_INIT: u16 = 0x037F;
/// MXCSR after reset.
pub const MXCSR_INIT: u32 = 0x1F80;
/// MXCSR_MASK reported by FXSAVE.
pub const MXCSR_MASK_INIT: u32 = 0xFFFF;

/// The x87 register file and control state, embedded in the CPU state.
///
/// `Default` is the state after FNINIT: FCW=0x037F, FSW=0, all tags empty,
/// FOP/FIP/FDP zero.
#[repr(C)]
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct X87State {
    /// Physical registers R0-R7 (ST(i) is `regs[(top + i) & 7]`).
    pub regs: [F80; 8],
    /// Control word.
    pub fcw: u16,
    /// Status word, TOP included in bits 11-13.
    pub fsw: u16,
    /// Abridged tag: bit i set when physical register i is not empty.
    pub tag_valid: u8,
    /// Last non-control opcode (11 bits).
    pub fop: u16,
    /// Last non-control instruction pointer (offset).
    pub fip: u64,
    /// Its code segment selector.
    pub fcs: u16,
    /// Last memory operand pointer (offset).
    pub fdp: u64,
    /// Its data segment selector.
    pub fds: u16,
    /// MXCSR (only stored and restored by FXSAVE/FXRSTOR here).
    pub mxcsr: u32,
    /// MXCSR_MASK written by FXSAVE.
    pub mxcsr_mask: u32,
    /// Bytes 160-415 of the FXSAVE image (XMM0-15), kept opaque.
    #[serde(with = "blob")]
    pub xmm_blob: [u8; 256],
}

/// Serde for the opaque FXSAVE bytes (serde's arrays stop at 32 elements).
mod blob {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(a: &[u8; 256], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(a)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 256], D::Error> {
        let v: Vec<u8> = Deserialize::deserialize(d)?;
        v.try_into()
            .map_err(|_| D::Error::custom("the FXSAVE image is not 256 bytes"))
    }
}

impl Default for X87State {
    fn default() -> Self {
        X87State {
            regs: [F80::default(); 8],
            fcw: FCW_INIT,
            fsw: 0,
            tag_valid: 0,
            fop: 0,
            fip: 0,
            fcs: 0,
            fdp: 0,
            fds: 0,
            mxcsr: MXCSR_INIT,
            mxcsr_mask: MXCSR_MASK_INIT,
            xmm_blob: [0; 256],
        }
    }
}

/// Tag value of one register as FSTENV/FSAVE report it.
pub fn tag_of(v: F80) -> u16 {
    match v.class() {
        Class::Normal => 0,
        Class::Zero => 1,
        _ => 2,
    }
}

impl X87State {
    /// The control word.
    pub fn fcw(&self) -> u16 {
        self.fcw
    }

    /// The status word with TOP merged in.
    pub fn fsw(&self) -> u16 {
        self.fsw
    }

    /// The full 16-bit tag word (two bits per physical register, computed from
    /// the register contents as FSTENV/FSAVE do).
    pub fn ftw_full(&self) -> u16 {
        let mut t = 0u16;
        for i in 0..8 {
            let v = if self.tag_valid & (1 << i) == 0 {
                3
            } else {
                tag_of(self.regs[i])
            };
            t |= v << (2 * i);
        }
        t
    }

    /// The abridged tag byte as FXSAVE stores it (bit set = not empty).
    pub fn ftw_abridged(&self) -> u8 {
        self.tag_valid
    }

    /// Loads a full tag word: only "empty" (11) versus anything else matters.
    pub fn set_ftw_full(&mut self, ftw: u16) {
        let mut v = 0u8;
        for i in 0..8 {
            if (ftw >> (2 * i)) & 3 != 3 {
                v |= 1 << i;
            }
        }
        self.tag_valid = v;
    }

    /// Loads the control word (reserved bits 13-15 read as 0, bit 6 as 1).
    pub fn set_fcw(&mut self, fcw: u16) {
        self.fcw = (fcw & 0x1F3F) | 0x40;
    }

    /// TOP of stack.
    #[inline]
    pub fn top(&self) -> usize {
        usize::from((self.fsw >> 11) & 7)
    }

    #[inline]
    pub(crate) fn set_top(&mut self, top: usize) {
        self.fsw = (self.fsw & !TOP_MASK) | (((top & 7) as u16) << 11);
    }

    /// Physical index of ST(i).
    #[inline]
    pub fn phys(&self, i: usize) -> usize {
        (self.top() + i) & 7
    }

    /// True when ST(i) is empty.
    #[inline]
    pub fn is_empty(&self, i: usize) -> bool {
        self.tag_valid & (1 << self.phys(i)) == 0
    }

    /// ST(i), whatever its tag.
    #[inline]
    pub fn st(&self, i: usize) -> F80 {
        self.regs[self.phys(i)]
    }

    /// Writes ST(i) and marks it valid.
    #[inline]
    pub fn set_st(&mut self, i: usize, v: F80) {
        let p = self.phys(i);
        self.regs[p] = v;
        self.tag_valid |= 1 << p;
    }

    /// Marks ST(0) empty and increments TOP.
    #[inline]
    pub fn pop(&mut self) {
        let p = self.phys(0);
        self.tag_valid &= !(1 << p);
        self.set_top(self.top() + 1);
    }

    /// Decrements TOP and writes the new ST(0).
    #[inline]
    pub fn push(&mut self, v: F80) {
        self.set_top(self.top().wrapping_sub(1));
        self.set_st(0, v);
    }

    /// Decoded control word.
    #[inline]
    pub fn control(&self) -> Control {
        Control::from_fcw(self.fcw)
    }

    /// True when FSW.ES is set (an unmasked exception is pending).
    #[inline]
    pub fn exception_pending(&self) -> bool {
        self.fsw & ES != 0
    }

    /// Recomputes ES and B from the flags and the masks.
    #[inline]
    pub(crate) fn update_es(&mut self) {
        if self.fsw & EXC_MASK & !self.fcw & EXC_MASK != 0 {
            self.fsw |= ES | B;
        } else {
            self.fsw &= !(ES | B);
        }
    }

    /// Raises exception flags (sets ES/B when one is unmasked).
    #[inline]
    pub(crate) fn raise(&mut self, exc: u16) {
        self.fsw |= exc & (EXC_MASK | SF);
        self.update_es();
    }

    /// Sets or clears C1.
    #[inline]
    pub(crate) fn set_c1(&mut self, v: bool) {
        if v {
            self.fsw |= C1;
        } else {
            self.fsw &= !C1;
        }
    }

    /// Sets the condition codes given by `mask` to `value`.
    #[inline]
    pub(crate) fn set_cc(&mut self, mask: u16, value: u16) {
        self.fsw = (self.fsw & !mask) | (value & mask);
    }

    /// Stack underflow: IE|SF with C1=0. Returns true when masked (the caller
    /// then writes the indefinite result).
    pub(crate) fn stack_underflow(&mut self) -> bool {
        self.set_c1(false);
        self.raise(IE | SF);
        self.fcw & IE != 0
    }

    /// Stack overflow: IE|SF with C1=1. Returns true when masked.
    pub(crate) fn stack_overflow(&mut self) -> bool {
        self.set_c1(true);
        self.raise(IE | SF);
        self.fcw & IE != 0
    }

    /// FNINIT.
    pub fn reset(&mut self) {
        self.fcw = FCW_INIT;
        self.fsw = 0;
        self.tag_valid = 0;
        self.fop = 0;
        self.fip = 0;
        self.fcs = 0;
        self.fdp = 0;
        self.fds = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_pop_and_tags() {
        let mut s = X87State::default();
        assert_eq!(s.ftw_full(), 0xFFFF);
        s.push(F80::ONE);
        assert_eq!(s.top(), 7);
        assert_eq!(s.ftw_full(), 0x3FFF);
        s.push(F80::zero(false));
        assert_eq!(s.ftw_full(), 0x1FFF);
        s.pop();
        s.pop();
        assert_eq!(s.top(), 0);
        assert_eq!(s.ftw_full(), 0xFFFF);
    }
}
