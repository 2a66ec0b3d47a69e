//! Operand access shared by every handler: registers by iced `Register`, memory
//! operands (effective address, segment), immediates, and the stack.

use iced_x86::{Instruction, OpKind, Register};

use crate::access::Word;
use crate::exception::Fault;
use crate::state::{CpuState, RSP, SS};
use crate::Exec;

/// Reads a general-purpose register of any width (8-bit high registers included).
#[inline(always)]
pub fn reg_read(s: &CpuState, r: Register) -> u64 {
    let n = r as usize;
    match n {
        1..=4 => s.regs[n - 1] & 0xff,
        5..=8 => (s.regs[n - 5] >> 8) & 0xff,
        9..=20 => s.regs[n - 9 + 4] & 0xff,
        21..=36 => s.regs[n - 21] & 0xffff,
        37..=52 => s.regs[n - 37] & 0xffff_ffff,
        53..=68 => s.regs[n - 53],
        _ => 0,
    }
}

/// Writes a general-purpose register of any width; 8- and 16-bit writes keep the
/// other bits, 32-bit writes zero the upper half.
#[inline(always)]
pub fn reg_write(s: &mut CpuState, r: Register, v: u64) {
    let n = r as usize;
    match n {
        1..=4 => s.regs[n - 1] = (s.regs[n - 1] & !0xff) | (v & 0xff),
        5..=8 => s.regs[n - 5] = (s.regs[n - 5] & !0xff00) | ((v & 0xff) << 8),
        9..=20 => s.regs[n - 9 + 4] = (s.regs[n - 9 + 4] & !0xff) | (v & 0xff),
        21..=36 => s.regs[n - 21] = (s.regs[n - 21] & !0xffff) | (v & 0xffff),
        37..=52 => s.regs[n - 37] = v & 0xffff_ffff,
        53..=68 => s.regs[n - 53] = v,
        _ => {}
    }
}

/// Index (0-5) of a segment register.
#[inline(always)]
pub fn seg_index(r: Register) -> usize {
    (r as usize).wrapping_sub(Register::ES as usize).min(5)
}

/// Size in bytes of operand `n`.
pub fn op_size(i: &Instruction, n: u32) -> u32 {
    match i.op_kind(n) {
        OpKind::Register => i.op_register(n).size() as u32,
        OpKind::Memory => i.memory_size().size() as u32,
        OpKind::Immediate8 => 1,
        OpKind::Immediate16 | OpKind::Immediate8to16 => 2,
        OpKind::Immediate32 | OpKind::Immediate8to32 => 4,
        OpKind::Immediate64 | OpKind::Immediate8to64 | OpKind::Immediate32to64 => 8,
        _ => 0,
    }
}

/// Mask of the address size of a memory operand.
#[inline(always)]
pub fn addr_mask(i: &Instruction) -> u64 {
    let base = i.memory_base();
    let index = i.memory_index();
    let size = if base != Register::None {
        base.size()
    } else if index != Register::None {
        index.size()
    } else {
        i.memory_displ_size() as usize
    };
    match size {
        2 => 0xffff,
        8 => u64::MAX,
        _ => 0xffff_ffff,
    }
}

impl Exec<'_> {
    /// The offset (effective address) of the instruction's memory operand.
    #[inline(always)]
    pub fn ea(&self, i: &Instruction) -> u64 {
        let mut a = i.memory_displacement64();
        let base = i.memory_base();
        if base != Register::None {
            a = a.wrapping_add(reg_read(self.s, base));
        }
        let index = i.memory_index();
        if index != Register::None {
            a = a.wrapping_add(reg_read(self.s, index).wrapping_mul(i.memory_index_scale() as u64));
        }
        a & addr_mask(i)
    }

    /// Segment index and offset of the instruction's memory operand.
    #[inline(always)]
    pub fn mem_operand(&self, i: &Instruction) -> (usize, u64) {
        (seg_index(i.memory_segment()), self.ea(i))
    }

    /// Reads operand `n` (register, memory or immediate).
    #[inline(always)]
    pub fn rd<W: Word>(&mut self, i: &Instruction, n: u32) -> Fault<W> {
        match i.op_kind(n) {
            OpKind::Register => Ok(W::from_u64(reg_read(self.s, i.op_register(n)))),
            OpKind::Memory => {
                let (seg, off) = self.mem_operand(i);
                self.read::<W>(seg, off)
            }
            _ => Ok(W::from_u64(i.immediate(n))),
        }
    }

    /// Writes operand `n` (register or memory).
    #[inline(always)]
    pub fn wr<W: Word>(&mut self, i: &Instruction, n: u32, v: W) -> Fault {
        match i.op_kind(n) {
            OpKind::Register => {
                reg_write(self.s, i.op_register(n), v.to_u64());
                Ok(())
            }
            _ => {
                let (seg, off) = self.mem_operand(i);
                self.write::<W>(seg, off, v)
            }
        }
    }

    /// Read-modify-write of operand 0: `f(old) -> (new, extra)`; the new value is
    /// written only if `f` asks, and nothing else changes if the write faults.
    #[inline(always)]
    pub fn rmw<W: Word, R>(
        &mut self,
        i: &Instruction,
        f: impl FnOnce(&mut Self, W) -> (Option<W>, R),
    ) -> Fault<R> {
        match i.op_kind(0) {
            OpKind::Register => {
                let r = i.op_register(0);
                let old = W::from_u64(reg_read(self.s, r));
                let (new, extra) = f(self, old);
                if let Some(v) = new {
                    reg_write(self.s, r, v.to_u64());
                }
                Ok(extra)
            }
            _ => {
                let (seg, off) = self.mem_operand(i);
                let lin = self.seg_linear(seg, off, W::SIZE, true)?;
                let user = self.user();
                let old: W = self.read_lin(lin, user)?;
                let (new, extra) = f(self, old);
                if let Some(v) = new {
                    self.write_lin(lin, v, user)?;
                }
                Ok(extra)
            }
        }
    }

    /// Stack pointer mask for the current stack size.
    #[inline(always)]
    pub fn sp_mask(&self) -> u64 {
        if self.s.seg[SS].big() {
            0xffff_ffff
        } else {
            0xffff
        }
    }

    /// The stack pointer (ESP or SP).
    #[inline(always)]
    pub fn sp(&self) -> u64 {
        self.s.regs[RSP] & self.sp_mask()
    }

    /// Sets the stack pointer, keeping the upper bits for a 16-bit stack.
    #[inline(always)]
    pub fn set_sp(&mut self, v: u64) {
        let m = self.sp_mask();
        self.s.regs[RSP] = (self.s.regs[RSP] & !m) | (v & m);
    }

    /// Pushes a value.
    #[inline(always)]
    pub fn push<W: Word>(&mut self, v: W) -> Fault {
        let sp = self.sp().wrapping_sub(W::SIZE as u64) & self.sp_mask();
        self.write::<W>(SS, sp, v)?;
        self.set_sp(sp);
        Ok(())
    }

    /// Pops a value.
    #[inline(always)]
    pub fn pop<W: Word>(&mut self) -> Fault<W> {
        let sp = self.sp();
        let v = self.read::<W>(SS, sp)?;
        self.set_sp(sp.wrapping_add(W::SIZE as u64));
        Ok(v)
    }

    /// Reads the stack at `sp + k` without popping.
    #[inline]
    pub fn peek<W: Word>(&mut self, k: u64) -> Fault<W> {
        let off = self.sp().wrapping_add(k) & self.sp_mask();
        self.read::<W>(SS, off)
    }

    /// Writes `v` `k` bytes below the stack pointer without moving it.
    #[inline]
    pub fn poke_below<W: Word>(&mut self, k: u64, v: W) -> Fault {
        let off = self.sp().wrapping_sub(k) & self.sp_mask();
        self.write::<W>(SS, off, v)
    }
}
