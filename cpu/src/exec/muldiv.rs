//! MUL, IMUL (one, two and three operands), DIV and IDIV with #DE.

use iced_x86::Instruction;

use crate::access::Word;
use crate::exception::{Exception, Fault};
use crate::flags::size_mask;
use crate::state::{RAX, RDX};
use crate::Exec;

use super::operand::reg_write;

/// Sign-extends a `size`-byte value to i64.
#[inline(always)]
fn sx(v: u64, size: u32) -> i64 {
    let sh = 64 - size * 8;
    ((v << sh) as i64) >> sh
}

/// Reads the implicit accumulator pair for a width: AL, AX, EAX and DX/EDX.
fn acc(e: &Exec<'_>, size: u32) -> u64 {
    e.s.regs[RAX] & size_mask(size)
}

/// Writes the double-width product or quotient/remainder pair.
fn write_pair(e: &mut Exec<'_>, size: u32, lo: u64, hi: u64) {
    match size {
        1 => e.s.regs[RAX] = (e.s.regs[RAX] & !0xffff) | (lo & 0xff) | ((hi & 0xff) << 8),
        2 => {
            e.s.set_r16(RAX, lo as u16);
            e.s.set_r16(RDX, hi as u16);
        }
        _ => {
            e.s.set_r32(RAX, lo as u32);
            e.s.set_r32(RDX, hi as u32);
        }
    }
}

/// MUL: unsigned accumulator * operand.
pub fn exec_mul<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let s = e.rd::<W>(i, 0)?.to_u64();
    let bits = W::SIZE * 8;
    let p = acc(e, W::SIZE) as u128 * s as u128;
    let lo = p as u64 & size_mask(W::SIZE);
    let hi = (p >> bits) as u64 & size_mask(W::SIZE);
    write_pair(e, W::SIZE, lo, hi);
    e.s.set_szp_flags(W::SIZE, lo, hi != 0, hi != 0, false);
    Ok(())
}

/// IMUL with one operand: signed accumulator * operand into the pair.
pub fn exec_imul1<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let s = sx(e.rd::<W>(i, 0)?.to_u64(), W::SIZE);
    let a = sx(acc(e, W::SIZE), W::SIZE);
    let bits = W::SIZE * 8;
    let p = a as i128 * s as i128;
    let lo = p as u64 & size_mask(W::SIZE);
    let hi = (p >> bits) as u64 & size_mask(W::SIZE);
    let overflow = p != sx(lo, W::SIZE) as i128;
    write_pair(e, W::SIZE, lo, hi);
    e.s.set_szp_flags(W::SIZE, lo, overflow, overflow, false);
    Ok(())
}

/// IMUL with two or three operands: dst = src1 * src2 truncated.
pub fn exec_imuln<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let (a, b) = if i.op_count() == 3 {
        (e.rd::<W>(i, 1)?.to_u64(), i.immediate(2))
    } else {
        (e.rd::<W>(i, 0)?.to_u64(), e.rd::<W>(i, 1)?.to_u64())
    };
    let p = sx(a, W::SIZE) as i128 * sx(b & size_mask(W::SIZE), W::SIZE) as i128;
    let lo = p as u64 & size_mask(W::SIZE);
    let overflow = p != sx(lo, W::SIZE) as i128;
    reg_write(e.s, i.op0_register(), lo);
    e.s.set_szp_flags(W::SIZE, lo, overflow, overflow, false);
    Ok(())
}

/// DIV: unsigned pair / operand; #DE on a zero divisor or a quotient too large.
pub fn exec_div<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let d = e.rd::<W>(i, 0)?.to_u64();
    if d == 0 {
        return Err(Exception::DE);
    }
    let bits = W::SIZE * 8;
    let m = size_mask(W::SIZE);
    let hi = match W::SIZE {
        1 => (e.s.regs[RAX] >> 8) & 0xff,
        _ => e.s.regs[RDX] & m,
    };
    let n = ((hi as u128) << bits) | acc(e, W::SIZE) as u128;
    let q = n / d as u128;
    let r = n % d as u128;
    if q > m as u128 {
        return Err(Exception::DE);
    }
    write_pair(e, W::SIZE, q as u64, r as u64);
    Ok(())
}

/// IDIV: signed pair / operand; #DE on zero or overflow.
pub fn exec_idiv<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let d = sx(e.rd::<W>(i, 0)?.to_u64(), W::SIZE);
    if d == 0 {
        return Err(Exception::DE);
    }
    let bits = W::SIZE * 8;
    let m = size_mask(W::SIZE);
    let hi = match W::SIZE {
        1 => (e.s.regs[RAX] >> 8) & 0xff,
        _ => e.s.regs[RDX] & m,
    };
    let n_u = ((hi as u128) << bits) | acc(e, W::SIZE) as u128;
    // Sign-extend the 2*bits-wide dividend.
    let sh = 128 - 2 * bits;
    let n = ((n_u << sh) as i128) >> sh;
    let q = n / d as i128;
    let r = n % d as i128;
    let max = (m >> 1) as i128;
    if q > max || q < -max - 1 {
        return Err(Exception::DE);
    }
    write_pair(e, W::SIZE, q as u64 & m, r as u64 & m);
    Ok(())
}
