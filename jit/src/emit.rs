//! Host code for the lowered instructions (see `lower::Kind`). Each lowering does its
//! memory reads first, at most one store last, and defines registers only after its
//! last memory access, so that the slow path (which redoes the whole instruction in
//! the interpreter) starts from the state before the instruction.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{I16, I32, I64};
use cranelift_codegen::ir::{InstBuilder, Value};
use iced_x86::{Instruction, Mnemonic as M, OpKind, Register};
use ox86_cpu::exec::operand::op_size;
use ox86_cpu::flags::Lazy;

use crate::flagsrc::FlagSrc;
use crate::lower::{kind, stack_size, Kind};
use crate::region::ARITH;
use crate::translate::{ty, Tx};

/// Where operand 0 lives, so that it can be written after being read.
enum Place {
    Reg(Register),
    Mem(usize, Value),
}

impl Tx<'_, '_> {
    /// A constant of `size` bytes.
    pub fn imm(&mut self, size: u32, v: u64) -> Value {
        let m = if size >= 8 {
            u64::MAX
        } else {
            (1u64 << (size * 8)) - 1
        };
        self.b.ins().iconst(ty(size), (v & m) as i64)
    }

    fn place0(&mut self, i: &Instruction) -> Place {
        match i.op0_kind() {
            OpKind::Register => Place::Reg(i.op0_register()),
            _ => {
                let (seg, off) = self.mem(i);
                Place::Mem(seg, off)
            }
        }
    }

    fn read_place(&mut self, p: &Place, size: u32) -> Value {
        match *p {
            Place::Reg(r) => self.get(r),
            Place::Mem(seg, off) => self.load(seg, off, size),
        }
    }

    fn write_place(&mut self, p: &Place, size: u32, v: Value) {
        match *p {
            Place::Reg(r) => self.set(r, v),
            Place::Mem(seg, off) => self.store(seg, off, size, v),
        }
    }

    /// Branches to the slow path when `target` is beyond the CS limit (the interpreter
    /// raises #GP there).
    fn check_target(&mut self, target: Value) {
        let bail = self.bail_block();
        let over = self
            .b
            .ins()
            .icmp_imm_s(IntCC::UnsignedGreaterThan, target, self.cs_hi as i64);
        let ok = self.b.create_block();
        self.b.ins().brif(over, bail, &[], ok, &[]);
        self.b.switch_to_block(ok);
    }
}

/// Emits a non-terminating instruction; false if it is not lowered (the caller runs
/// it through the interpreter). Decides before emitting anything.
pub fn emit(t: &mut Tx<'_, '_>, i: &Instruction, live_after: u32) -> bool {
    let flags_dead = live_after & i.rflags_modified() & ARITH == 0;
    match kind(i) {
        Kind::Mov => {
            let size = op_size(i, 0);
            let p = t.place0(i);
            let v = t.read_op(i, 1, size);
            t.write_place(&p, size, v);
        }
        Kind::Alu => alu(t, i),
        Kind::IncDec => {
            let size = op_size(i, 0);
            let p = t.place0(i);
            let v = t.read_place(&p, size);
            let (res, op) = if i.mnemonic() == M::Inc {
                (t.b.ins().iadd_imm_s(v, 1), Lazy::Inc)
            } else {
                (t.b.ins().iadd_imm_s(v, -1), Lazy::Dec)
            };
            let one = t.imm(size, 1);
            t.write_place(&p, size, res);
            t.set_flags(op, size, v, one, res);
        }
        Kind::Neg => {
            let size = op_size(i, 0);
            let p = t.place0(i);
            let v = t.read_place(&p, size);
            let res = t.b.ins().ineg(v);
            let zero = t.imm(size, 0);
            t.write_place(&p, size, res);
            t.set_flags(Lazy::Neg, size, zero, v, res);
        }
        Kind::Not => {
            let size = op_size(i, 0);
            let p = t.place0(i);
            let v = t.read_place(&p, size);
            let res = t.b.ins().bnot(v);
            t.write_place(&p, size, res);
        }
        Kind::Lea => {
            let size = op_size(i, 0);
            let a = t.ea(i);
            let v = t.narrow(a, size);
            t.set(i.op0_register(), v);
        }
        Kind::Extend => {
            let dsize = op_size(i, 0);
            let ssize = op_size(i, 1);
            let v = t.read_op(i, 1, ssize);
            let v = if ssize >= dsize {
                v
            } else if i.mnemonic() == M::Movzx {
                t.b.ins().uextend(ty(dsize), v)
            } else {
                t.b.ins().sextend(ty(dsize), v)
            };
            t.set(i.op0_register(), v);
        }
        Kind::Cbw => {
            if i.mnemonic() == M::Cbw {
                let v = t.get(Register::AL);
                let v = t.b.ins().sextend(I16, v);
                t.set(Register::AX, v);
            } else {
                let v = t.get(Register::AX);
                let v = t.b.ins().sextend(I32, v);
                t.set(Register::EAX, v);
            }
        }
        Kind::Cwd => {
            if i.mnemonic() == M::Cwd {
                let v = t.get(Register::AX);
                let v = t.b.ins().sshr_imm_s(v, 15);
                t.set(Register::DX, v);
            } else {
                let v = t.get(Register::EAX);
                let v = t.b.ins().sshr_imm_s(v, 31);
                t.set(Register::EDX, v);
            }
        }
        Kind::Shift if live_after & ARITH == 0 || imm_count_zero(i) => {
            let size = op_size(i, 0);
            let p = t.place0(i);
            let v = t.read_place(&p, size);
            let cnt = if i.op1_kind() == OpKind::Register {
                let c = t.get(i.op1_register());
                t.b.ins().uextend(I64, c)
            } else {
                t.b.ins().iconst(I64, i.immediate(1) as i64)
            };
            let cnt = t.b.ins().band_imm_s(cnt, 0x1f);
            let r = match i.mnemonic() {
                M::Shr => {
                    let w = t.widen(v);
                    t.b.ins().ushr(w, cnt)
                }
                M::Sar => {
                    let w = t.widen_signed(v);
                    t.b.ins().sshr(w, cnt)
                }
                _ => {
                    let w = t.widen(v);
                    t.b.ins().ishl(w, cnt)
                }
            };
            let r = t.narrow(r, size);
            t.write_place(&p, size, r);
            if !imm_count_zero(i) {
                t.flags = FlagSrc::Dead;
            }
        }
        Kind::Shift if i.op1_kind() != OpKind::Register => shift_imm(t, i),
        Kind::Imul if flags_dead && i.op0_kind() == OpKind::Register => {
            let size = op_size(i, 0);
            let (a, b) = if i.op_count() == 3 {
                let a = t.read_op(i, 1, size);
                let b = t.imm(size, i.immediate(2));
                (a, b)
            } else {
                let a = t.get(i.op0_register());
                let b = t.read_op(i, 1, size);
                (a, b)
            };
            let r = t.b.ins().imul(a, b);
            t.set(i.op0_register(), r);
            t.flags = FlagSrc::Dead;
        }
        Kind::Setcc => {
            let p = t.place0(i);
            let c = t.cond(i.condition_code());
            t.write_place(&p, 1, c);
        }
        Kind::Cmovcc => {
            let size = op_size(i, 0);
            let src = t.read_op(i, 1, size);
            let dst = t.get(i.op0_register());
            let c = t.cond(i.condition_code());
            let v = t.b.ins().select(c, src, dst);
            t.set(i.op0_register(), v);
        }
        Kind::Xchg => {
            let size = op_size(i, 0);
            match (i.op0_kind(), i.op1_kind()) {
                (OpKind::Register, OpKind::Register) => {
                    let a = t.get(i.op0_register());
                    let b = t.get(i.op1_register());
                    t.set(i.op0_register(), b);
                    t.set(i.op1_register(), a);
                }
                (OpKind::Register, _) | (_, OpKind::Register) => {
                    let r = if i.op0_kind() == OpKind::Register {
                        i.op0_register()
                    } else {
                        i.op1_register()
                    };
                    let (seg, off) = t.mem(i);
                    let m = t.load(seg, off, size);
                    let v = t.get(r);
                    t.store(seg, off, size, v);
                    t.set(r, m);
                }
                _ => return false,
            }
        }
        Kind::Push => {
            let size = stack_size(i);
            let v = match i.op0_kind() {
                OpKind::Register => t.get(i.op0_register()),
                OpKind::Memory => {
                    let (seg, off) = t.mem(i);
                    t.load(seg, off, size)
                }
                _ => t.imm(size, i.immediate(0)),
            };
            let esp = t.push(v, size);
            t.b.def_var(t.regs[4], esp);
        }
        Kind::Pop => {
            let size = stack_size(i);
            let (v, esp) = t.pop(size);
            t.b.def_var(t.regs[4], esp);
            t.set(i.op0_register(), v);
        }
        Kind::Leave => {
            let size = stack_size(i);
            let ebp = t.b.use_var(t.regs[5]);
            let m = t.sp_mask();
            let sp = t.b.ins().band_imm_s(ebp, m);
            let v = t.load(ox86_cpu::state::SS, sp, size);
            let sp = t.b.ins().iadd_imm_s(sp, size as i64);
            let esp = t.new_esp(sp);
            t.b.def_var(t.regs[4], esp);
            let bp = if size == 2 { Register::BP } else { Register::EBP };
            t.set(bp, v);
        }
        Kind::Nop => {}
        _ => return false,
    }
    true
}

/// SHL, SHR, SAR by a non-zero immediate, with the flags the interpreter gives
/// (CF, OF as defined for count 1 and as Intel gives for more, SF ZF PF from the
/// result, AF clear).
fn shift_imm(t: &mut Tx<'_, '_>, i: &Instruction) {
    let size = op_size(i, 0);
    let bits = size * 8;
    let c = (i.immediate(1) & 0x1f) as i64;
    let p = t.place0(i);
    let v = t.read_place(&p, size);
    let sb = 1i64 << (bits - 1);
    let m = if bits == 32 { 0xffff_ffff } else { (1i64 << bits) - 1 };
    let (r, cf, of) = match i.mnemonic() {
        M::Shr => {
            let d = t.widen(v);
            let r = t.b.ins().ushr_imm_s(d, c);
            let cf = if c as u32 <= bits {
                let x = t.b.ins().ushr_imm_s(d, c - 1);
                t.b.ins().band_imm_s(x, 1)
            } else {
                t.b.ins().iconst(I64, 0)
            };
            let of = t.b.ins().band_imm_s(d, sb);
            let of = t.b.ins().ushr_imm_s(of, bits as i64 - 1);
            (r, cf, of)
        }
        M::Sar => {
            let d = t.widen_signed(v);
            let r = t.b.ins().sshr_imm_s(d, c);
            let r = t.b.ins().band_imm_s(r, m);
            let x = t.b.ins().sshr_imm_s(d, c - 1);
            let cf = t.b.ins().band_imm_s(x, 1);
            let of = t.b.ins().iconst(I64, 0);
            (r, cf, of)
        }
        _ => {
            let d = t.widen(v);
            let r = t.b.ins().ishl_imm_s(d, c);
            let r = t.b.ins().band_imm_s(r, m);
            let cf = if c as u32 <= bits {
                let x = t.b.ins().ushr_imm_s(d, bits as i64 - c);
                t.b.ins().band_imm_s(x, 1)
            } else {
                t.b.ins().iconst(I64, 0)
            };
            let s = t.b.ins().ushr_imm_s(r, bits as i64 - 1);
            let of = t.b.ins().bxor(s, cf);
            (r, cf, of)
        }
    };
    // SF, ZF, PF from the result.
    let z = t.b.ins().icmp_imm_s(IntCC::Equal, r, 0);
    let z = t.b.ins().uextend(I64, z);
    let s = t.b.ins().ushr_imm_s(r, bits as i64 - 1);
    let lo = t.b.ins().band_imm_s(r, 0xff);
    let pc = t.b.ins().popcnt(lo);
    let pf = t.b.ins().band_imm_s(pc, 1);
    let pf = t.b.ins().bxor_imm_s(pf, 1);
    let mut bits_v = cf;
    for (f, sh) in [(pf, 2), (z, 6), (s, 7), (of, 11)] {
        let x = t.b.ins().ishl_imm_s(f, sh);
        bits_v = t.b.ins().bor(bits_v, x);
    }
    let res = t.narrow(r, size);
    t.write_place(&p, size, res);
    t.flags = FlagSrc::Bits(bits_v);
}

/// A shift by an immediate that masks to zero: no effect on the flags.
fn imm_count_zero(i: &Instruction) -> bool {
    i.op1_kind() != OpKind::Register && i.immediate(1) & 0x1f == 0
}

fn alu(t: &mut Tx<'_, '_>, i: &Instruction) {
    let size = op_size(i, 0);
    let p = t.place0(i);
    let d = t.read_place(&p, size);
    let s = t.read_op(i, 1, size);
    let (res, op) = match i.mnemonic() {
        M::Add => (t.b.ins().iadd(d, s), Lazy::Add),
        M::Or => (t.b.ins().bor(d, s), Lazy::Logic),
        M::And | M::Test => (t.b.ins().band(d, s), Lazy::Logic),
        M::Xor => (t.b.ins().bxor(d, s), Lazy::Logic),
        M::Sub | M::Cmp => (t.b.ins().isub(d, s), Lazy::Sub),
        M::Adc => {
            let f = t.flags.clone();
            let c = t.cf_of(&f);
            let c = if size > 1 {
                t.b.ins().uextend(ty(size), c)
            } else {
                c
            };
            let r = t.b.ins().iadd(d, s);
            (t.b.ins().iadd(r, c), Lazy::Adc)
        }
        _ => {
            let f = t.flags.clone();
            let c = t.cf_of(&f);
            let c = if size > 1 {
                t.b.ins().uextend(ty(size), c)
            } else {
                c
            };
            let r = t.b.ins().isub(d, s);
            (t.b.ins().isub(r, c), Lazy::Sbb)
        }
    };
    if !matches!(i.mnemonic(), M::Cmp | M::Test) {
        t.write_place(&p, size, res);
    }
    t.set_flags(op, size, d, s, res);
}

/// The target of RET, JMP r/m or CALL r/m (an i64), with the stack updated.
pub fn indirect(t: &mut Tx<'_, '_>, i: &Instruction, next_ip: u64) -> Value {
    match i.mnemonic() {
        M::Ret => {
            let size = stack_size(i);
            let sp = t.sp();
            let v = t.load(ox86_cpu::state::SS, sp, size);
            let target = t.widen(v);
            t.check_target(target);
            let imm = if i.op_count() == 1 {
                i.immediate(0) as i64 & 0xffff
            } else {
                0
            };
            let sp = t.b.ins().iadd_imm_s(sp, size as i64 + imm);
            let esp = t.new_esp(sp);
            t.b.def_var(t.regs[4], esp);
            target
        }
        M::Jmp => {
            let size = op_size(i, 0);
            let v = t.read_op(i, 0, size);
            let target = t.widen(v);
            t.check_target(target);
            target
        }
        _ => {
            let size = op_size(i, 0);
            let v = t.read_op(i, 0, size);
            let target = t.widen(v);
            t.check_target(target);
            let ret = t.imm(size, next_ip);
            let esp = t.push(ret, size);
            t.b.def_var(t.regs[4], esp);
            target
        }
    }
}
