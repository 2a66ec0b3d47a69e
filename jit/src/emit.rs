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
        Kind::Shift => shift(t, i, live_after & ARITH == 0),
        Kind::Rotate => rotate(t, i),
        Kind::Imul => {
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
            if flags_dead {
                t.flags = FlagSrc::Dead;
            } else {
                // CF = OF = the signed product does not fit; SF ZF PF from the low
                // half, AF clear (as the interpreter).
                let wa = t.widen_signed(a);
                let wb = t.widen_signed(b);
                let p = t.b.ins().imul(wa, wb);
                let sx = t.widen_signed(r);
                let o = t.b.ins().icmp(IntCC::NotEqual, p, sx);
                let o = t.b.ins().uextend(I64, o);
                let lo = t.widen(r);
                let bits = t.szp_bits(lo, size, o, o);
                t.flags = FlagSrc::Bits(bits);
            }
        }
        k @ (Kind::Mul | Kind::Imul1) => {
            // EDX:EAX = EAX × operand, unsigned (MUL) or signed (IMUL): the full
            // product of two 32-bit values fits in 64 bits either way.
            let signed = k == Kind::Imul1;
            let s = t.read_op(i, 0, 4);
            let a = t.get(Register::EAX);
            let (wa, ws) = if signed {
                (t.widen_signed(a), t.widen_signed(s))
            } else {
                (t.widen(a), t.widen(s))
            };
            let p = t.b.ins().imul(wa, ws);
            let lo = t.narrow(p, 4);
            let hi = t.b.ins().ushr_imm_s(p, 32);
            let hi = t.narrow(hi, 4);
            t.set(Register::EAX, lo);
            t.set(Register::EDX, hi);
            if flags_dead {
                t.flags = FlagSrc::Dead;
            } else {
                // CF = OF = the product does not fit in the low half (as a signed
                // number for IMUL); SF ZF PF from the low half, AF clear (as the
                // interpreter).
                let fits = if signed {
                    t.widen_signed(lo)
                } else {
                    t.widen(lo)
                };
                let c = t.b.ins().icmp(IntCC::NotEqual, p, fits);
                let c = t.b.ins().uextend(I64, c);
                let wl = t.widen(lo);
                let bits = t.szp_bits(wl, 4, c, c);
                t.flags = FlagSrc::Bits(bits);
            }
        }
        Kind::Shxd => {
            let left = i.mnemonic() == M::Shld;
            let p = t.place0(i);
            let d = t.read_place(&p, 4);
            let src = t.read_op(i, 1, 4);
            let c = if i.op2_kind() == OpKind::Register {
                let cl = t.get(Register::CL);
                let c = t.widen(cl);
                let c = t.b.ins().band_imm_s(c, 31);
                let bail = t.bail_block();
                let zero = t.b.ins().icmp_imm_s(IntCC::Equal, c, 0);
                let go = t.b.create_block();
                t.b.ins().brif(zero, bail, &[], go, &[]);
                t.b.switch_to_block(go);
                c
            } else {
                t.b.ins().iconst(I64, i64::from(i.immediate8() & 31))
            };
            // 1 <= c <= 31: the bits shifted in come from the source, the last bit
            // shifted out goes to CF; OF tells whether the sign changed (as the
            // interpreter, for every count).
            let (wd, ws) = (t.widen(d), t.widen(src));
            let thirty_two = t.b.ins().iconst(I64, 32);
            let back = t.b.ins().isub(thirty_two, c);
            let (r, out) = if left {
                let hi = t.b.ins().ishl(wd, c);
                let lo = t.b.ins().ushr(ws, back);
                (t.b.ins().bor(hi, lo), t.b.ins().ushr(wd, back))
            } else {
                let lo = t.b.ins().ushr(wd, c);
                let hi = t.b.ins().ishl(ws, back);
                let c1 = t.b.ins().iadd_imm_s(c, -1);
                (t.b.ins().bor(hi, lo), t.b.ins().ushr(wd, c1))
            };
            let r = t.narrow(r, 4);
            t.write_place(&p, 4, r);
            if flags_dead {
                t.flags = FlagSrc::Dead;
            } else {
                let cf = t.b.ins().band_imm_s(out, 1);
                let wr = t.widen(r);
                let x = t.b.ins().bxor(wr, wd);
                let of = t.b.ins().ushr_imm_s(x, 31);
                let of = t.b.ins().band_imm_s(of, 1);
                let bits = t.szp_bits(wr, 4, cf, of);
                t.flags = FlagSrc::Bits(bits);
            }
        }
        Kind::Div => {
            // The flags are left as they were, as the interpreter leaves them.
            let d = t.read_op(i, 0, 4);
            let d = t.widen(d);
            let bail = t.bail_block();
            let zero = t.b.ins().icmp_imm_s(IntCC::Equal, d, 0);
            let go = t.b.create_block();
            t.b.ins().brif(zero, bail, &[], go, &[]);
            t.b.switch_to_block(go);
            let lo = t.get(Register::EAX);
            let hi = t.get(Register::EDX);
            let (lo, hi) = (t.widen(lo), t.widen(hi));
            let hi = t.b.ins().ishl_imm_s(hi, 32);
            let n = t.b.ins().bor(hi, lo);
            let q = t.b.ins().udiv(n, d);
            let big =
                t.b.ins()
                    .icmp_imm_s(IntCC::UnsignedGreaterThan, q, 0xffff_ffff);
            let ok = t.b.create_block();
            t.b.ins().brif(big, bail, &[], ok, &[]);
            t.b.switch_to_block(ok);
            let r = t.b.ins().urem(n, d);
            let (q, r) = (t.narrow(q, 4), t.narrow(r, 4));
            t.set(Register::EAX, q);
            t.set(Register::EDX, r);
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
        Kind::Xadd => {
            let size = op_size(i, 0);
            let p = t.place0(i);
            let d = t.read_place(&p, size);
            let src = t.get(i.op1_register());
            let sum = t.b.ins().iadd(d, src);
            // The source register gets the old value first, then the destination the
            // sum (XADD r, r leaves the sum).
            match p {
                Place::Reg(r0) => {
                    t.set(i.op1_register(), d);
                    t.set(r0, sum);
                }
                Place::Mem(..) => {
                    t.write_place(&p, size, sum);
                    t.set(i.op1_register(), d);
                }
            }
            t.set_flags(Lazy::Add, size, d, src, sum);
        }
        Kind::Cmpxchg => {
            let size = op_size(i, 0);
            let acc_reg = match size {
                1 => Register::AL,
                2 => Register::AX,
                _ => Register::EAX,
            };
            let p = t.place0(i);
            let d = t.read_place(&p, size);
            let acc = t.get(acc_reg);
            let src = t.get(i.op1_register());
            let eq = t.b.ins().icmp(IntCC::Equal, d, acc);
            let new = t.b.ins().select(eq, src, d);
            t.write_place(&p, size, new);
            // The accumulator gets the destination when they differ; read again, as
            // it may have been the destination.
            let cur = t.get(acc_reg);
            let a = t.b.ins().select(eq, cur, d);
            t.set(acc_reg, a);
            let res = t.b.ins().isub(acc, d);
            t.set_flags(Lazy::Sub, size, acc, d, res);
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
            let sp = t.mask(ebp, m);
            let v = t.load(ox86_cpu::state::SS, sp, size);
            let sp = t.b.ins().iadd_imm_s(sp, size as i64);
            let esp = t.new_esp(sp);
            t.b.def_var(t.regs[4], esp);
            let bp = if size == 2 {
                Register::BP
            } else {
                Register::EBP
            };
            t.set(bp, v);
        }
        Kind::Nop => {}
        Kind::X87 => return t.x87(i),
        _ => return false,
    }
    true
}

/// The shift count (CL or an immediate) masked to 5 bits, as an i64, and its value
/// when it is a constant.
fn count(t: &mut Tx<'_, '_>, i: &Instruction) -> (Value, Option<i64>) {
    if i.op1_kind() == OpKind::Register {
        let c = t.get(i.op1_register());
        let c = t.b.ins().uextend(I64, c);
        (t.b.ins().band_imm_s(c, 0x1f), None)
    } else {
        let c = (i.immediate(1) & 0x1f) as i64;
        (t.b.ins().iconst(I64, c), Some(c))
    }
}

/// SHL, SHR, SAR by an immediate or CL, with the flags the interpreter gives: CF and
/// OF as defined for a count of 1 and as Intel gives for more, SF ZF PF from the
/// result, AF clear; a count of zero changes nothing.
fn shift(t: &mut Tx<'_, '_>, i: &Instruction, flags_dead: bool) {
    let size = op_size(i, 0);
    let bits = (size * 8) as i64;
    let m = if bits == 32 {
        0xffff_ffff
    } else {
        (1i64 << bits) - 1
    };
    let p = t.place0(i);
    let v = t.read_place(&p, size);
    let (c, known) = count(t, i);
    if known == Some(0) {
        // The operand is still read; nothing changes.
        return;
    }
    let one = t.b.ins().iconst(I64, 1);
    let cm1 = t.b.ins().isub(c, one);
    let (r, cf, of) = match i.mnemonic() {
        M::Shr => {
            let d = t.widen(v);
            let r = t.b.ins().ushr(d, c);
            let x = t.b.ins().ushr(d, cm1);
            let cf = t.b.ins().band_imm_s(x, 1);
            let of = t.b.ins().ushr_imm_s(d, bits - 1);
            (r, cf, of)
        }
        M::Sar => {
            let d = t.widen_signed(v);
            let r = t.b.ins().sshr(d, c);
            let r = t.mask(r, m);
            let x = t.b.ins().sshr(d, cm1);
            let cf = t.b.ins().band_imm_s(x, 1);
            let of = t.b.ins().iconst(I64, 0);
            (r, cf, of)
        }
        _ => {
            let d = t.widen(v);
            let wide = t.b.ins().ishl(d, c);
            let r = t.mask(wide, m);
            let x = t.b.ins().ushr_imm_s(wide, bits);
            let cf = t.b.ins().band_imm_s(x, 1);
            let sgn = t.b.ins().ushr_imm_s(r, bits - 1);
            let of = t.b.ins().bxor(sgn, cf);
            (r, cf, of)
        }
    };
    let res = t.narrow(r, size);
    if flags_dead {
        t.write_place(&p, size, res);
        t.flags = FlagSrc::Dead;
        return;
    }
    let new = t.szp_bits(r, size, cf, of);
    let new = match known {
        Some(_) => new,
        None => {
            let old = t.flags.clone();
            let old = t.all_bits(&old);
            let zero = t.b.ins().icmp_imm_s(IntCC::Equal, c, 0);
            t.b.ins().select(zero, old, new)
        }
    };
    t.write_place(&p, size, res);
    t.flags = FlagSrc::Bits(new);
}

/// ROL, ROR by an immediate: CF and OF change (for a non-zero count), the other
/// flags stay.
fn rotate(t: &mut Tx<'_, '_>, i: &Instruction) {
    let size = op_size(i, 0);
    let bits = (size * 8) as i64;
    let p = t.place0(i);
    let v = t.read_place(&p, size);
    let c = (i.immediate(1) & 0x1f) as i64;
    if c == 0 {
        return;
    }
    let k = c % bits;
    let r = if i.mnemonic() == M::Rol {
        t.b.ins().rotl_imm_s(v, k)
    } else {
        t.b.ins().rotr_imm_s(v, k)
    };
    let w = t.widen(r);
    let (cf, of) = if i.mnemonic() == M::Rol {
        let cf = t.b.ins().band_imm_s(w, 1);
        let sgn = t.b.ins().ushr_imm_s(w, bits - 1);
        (cf, t.b.ins().bxor(sgn, cf))
    } else {
        let msb = t.b.ins().ushr_imm_s(w, bits - 1);
        let msb1 = t.b.ins().ushr_imm_s(w, bits - 2);
        let msb1 = t.b.ins().band_imm_s(msb1, 1);
        (msb, t.b.ins().bxor(msb, msb1))
    };
    let old = t.flags.clone();
    let old = t.all_bits(&old);
    let old = t.b.ins().band_imm_s(old, !0x801);
    let of = t.b.ins().ishl_imm_s(of, 11);
    let new = t.b.ins().bor(old, cf);
    let new = t.b.ins().bor(new, of);
    t.write_place(&p, size, r);
    t.flags = FlagSrc::Bits(new);
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
