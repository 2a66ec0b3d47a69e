//! The arithmetic flags at compile time: where they are (the CPU state's lazy fields,
//! a value of EFLAGS bits, or the operands of the last flag-writing instruction as
//! SSA values), conditions evaluated straight from the operands (CMP a, b; JL is one
//! signed compare), and materialization into the lazy fields, exactly as the
//! interpreter would have left them, wherever the state must be exact.

use std::mem::offset_of;
use std::rc::Rc;

use cranelift_codegen::ir::condcodes::{CondCode, IntCC};
use cranelift_codegen::ir::types::{I32, I64, I8};
use cranelift_codegen::ir::{InstBuilder, InstructionData, MemFlagsData, Opcode, Value, ValueDef};
use iced_x86::ConditionCode as C;
use ox86_cpu::flags::Lazy;
use ox86_cpu::state::{ARITH_FLAGS, CF};
use ox86_cpu::CpuState;

use crate::symbols::{symbol, Sym};
use crate::translate::Tx;

/// The operands of the last flag-writing instruction.
pub struct OpFlags {
    /// The lazy operation (as the interpreter records it).
    pub op: Lazy,
    /// Operand size in bytes.
    pub size: u32,
    /// Destination operand before the operation (sized value).
    pub dst: Value,
    /// Source operand (sized value).
    pub src: Value,
    /// Result (sized value).
    pub res: Value,
    /// For INC and DEC, which keep CF: where CF comes from.
    pub carry: Option<FlagSrc>,
}

/// Where the arithmetic flags are.
#[derive(Clone)]
pub enum FlagSrc {
    /// In the CPU state.
    State,
    /// In an i64 of EFLAGS bits (the rest of EFLAGS in the state).
    Bits(Value),
    /// Defined by an operation's operands.
    Op(Rc<OpFlags>),
    /// Dead: written by a lowering that does not compute them; liveness guarantees
    /// that nothing reads them (and nothing leaves the region) before they are
    /// written again.
    Dead,
}

const MF: MemFlagsData = MemFlagsData::trusted();

impl Tx<'_, '_> {
    /// Records an operation's flags.
    pub fn set_flags(&mut self, op: Lazy, size: u32, dst: Value, src: Value, res: Value) {
        let carry = matches!(op, Lazy::Inc | Lazy::Dec).then(|| self.flags.clone());
        self.flags = FlagSrc::Op(Rc::new(OpFlags {
            op,
            size,
            dst,
            src,
            res,
            carry,
        }));
    }

    /// Stores the flags into the state's lazy fields, as the interpreter keeps them.
    pub fn materialize(&mut self, f: &FlagSrc) {
        let st = self.state;
        match f {
            FlagSrc::State | FlagSrc::Dead => {}
            FlagSrc::Bits(v) => {
                let fl = self
                    .b
                    .ins()
                    .load(I64, MF, st, offset_of!(CpuState, flags) as i32);
                let fl = self.b.ins().band_imm_s(fl, !(ARITH_FLAGS as i64));
                let fl = self.b.ins().bor(fl, *v);
                self.b
                    .ins()
                    .store(MF, fl, st, offset_of!(CpuState, flags) as i32);
                let z = self.b.ins().iconst(I32, Lazy::None as i64);
                self.b
                    .ins()
                    .store(MF, z, st, offset_of!(CpuState, lazy_op) as i32);
            }
            FlagSrc::Op(o) => {
                if let Some(c) = &o.carry {
                    let cf = self.cf_of(c);
                    let cf = self.b.ins().uextend(I64, cf);
                    let fl = self
                        .b
                        .ins()
                        .load(I64, MF, st, offset_of!(CpuState, flags) as i32);
                    let fl = self.b.ins().band_imm_s(fl, !(CF as i64));
                    let fl = self.b.ins().bor(fl, cf);
                    self.b
                        .ins()
                        .store(MF, fl, st, offset_of!(CpuState, flags) as i32);
                }
                let op = self.b.ins().iconst(I32, o.op as i64);
                self.b
                    .ins()
                    .store(MF, op, st, offset_of!(CpuState, lazy_op) as i32);
                let sz = self.b.ins().iconst(I32, o.size as i64);
                self.b
                    .ins()
                    .store(MF, sz, st, offset_of!(CpuState, lazy_size) as i32);
                for (v, off) in [
                    (o.dst, offset_of!(CpuState, lazy_dst)),
                    (o.src, offset_of!(CpuState, lazy_src)),
                    (o.res, offset_of!(CpuState, lazy_res)),
                ] {
                    let w = self.widen(v);
                    self.b.ins().store(MF, w, st, off as i32);
                }
            }
        }
    }

    /// The flags as EFLAGS bits from the state (a helper call).
    fn state_bits(&mut self) -> Value {
        let f = symbol(self.b, Sym::Eflags);
        let call = self
            .b
            .ins()
            .call_indirect(self.sigs.eflags, f, &[self.state]);
        self.b.inst_results(call)[0]
    }

    /// Bit `n` of an EFLAGS value, as an i8 0 or 1.
    fn bit(&mut self, v: Value, n: u32) -> Value {
        let s = self.b.ins().ushr_imm_s(v, n as i64);
        let s = self.b.ins().band_imm_s(s, 1);
        self.b.ins().ireduce(I8, s)
    }

    /// Sign bit of a sized value, as i8 0/1.
    fn msb(&mut self, v: Value) -> Value {
        self.b.ins().icmp_imm_s(IntCC::SignedLessThan, v, 0)
    }

    /// CF as i8 0/1.
    pub fn cf_of(&mut self, f: &FlagSrc) -> Value {
        match f {
            FlagSrc::State => {
                let v = self.state_bits();
                self.bit(v, 0)
            }
            FlagSrc::Bits(v) => self.bit(*v, 0),
            FlagSrc::Dead => self.b.ins().iconst(I8, 0),
            FlagSrc::Op(o) => self.cf_op(o),
        }
    }

    /// CF of an operation, as i8 0/1.
    fn cf_op(&mut self, o: &OpFlags) -> Value {
        let (d, s, r) = (o.dst, o.src, o.res);
        match o.op {
            Lazy::Add => self.b.ins().icmp(IntCC::UnsignedLessThan, r, d),
            Lazy::Sub => self.b.ins().icmp(IntCC::UnsignedLessThan, d, s),
            Lazy::Adc => {
                // Carry out of the top bit: (d & s) | ((d | s) & !r).
                let a = self.b.ins().band(d, s);
                let o2 = self.b.ins().bor(d, s);
                let nr = self.b.ins().bnot(r);
                let o2 = self.b.ins().band(o2, nr);
                let c = self.b.ins().bor(a, o2);
                self.msb(c)
            }
            Lazy::Sbb | Lazy::Neg => {
                // Borrow out of the top bit: (!d & s) | ((!d | s) & r).
                let nd = self.b.ins().bnot(d);
                let a = self.b.ins().band(nd, s);
                let o2 = self.b.ins().bor(nd, s);
                let o2 = self.b.ins().band(o2, r);
                let c = self.b.ins().bor(a, o2);
                self.msb(c)
            }
            Lazy::Logic | Lazy::None => self.b.ins().iconst(I8, 0),
            Lazy::Inc | Lazy::Dec => {
                let c = o.carry.clone().unwrap_or(FlagSrc::Dead);
                self.cf_of(&c)
            }
        }
    }

    fn zf_of(&mut self, o: &OpFlags) -> Value {
        self.b.ins().icmp_imm_s(IntCC::Equal, o.res, 0)
    }

    fn of_of(&mut self, o: &OpFlags) -> Value {
        let (d, s, r) = (o.dst, o.src, o.res);
        match o.op {
            Lazy::Add | Lazy::Adc | Lazy::Inc => {
                let a = self.b.ins().bxor(d, r);
                let b = self.b.ins().bxor(s, r);
                let c = self.b.ins().band(a, b);
                self.msb(c)
            }
            Lazy::Sub | Lazy::Sbb | Lazy::Dec | Lazy::Neg => {
                let a = self.b.ins().bxor(d, s);
                let b = self.b.ins().bxor(d, r);
                let c = self.b.ins().band(a, b);
                self.msb(c)
            }
            Lazy::Logic | Lazy::None => self.b.ins().iconst(I8, 0),
        }
    }

    fn pf_of(&mut self, o: &OpFlags) -> Value {
        let r = self.widen(o.res);
        let r = self.b.ins().band_imm_s(r, 0xff);
        let p = self.b.ins().popcnt(r);
        let p = self.b.ins().band_imm_s(p, 1);
        self.b.ins().icmp_imm_s(IntCC::Equal, p, 0)
    }

    /// EFLAGS bits of a result: SF ZF PF from `r` (an i64 holding a `size`-byte
    /// value), CF and OF from i64 0/1 values, AF clear.
    pub fn szp_bits(&mut self, r: Value, size: u32, cf: Value, of: Value) -> Value {
        let z = self.b.ins().icmp_imm_s(IntCC::Equal, r, 0);
        let z = self.b.ins().uextend(I64, z);
        let sgn = self.b.ins().ushr_imm_s(r, size as i64 * 8 - 1);
        let sgn = self.b.ins().band_imm_s(sgn, 1);
        let lo = self.b.ins().band_imm_s(r, 0xff);
        let pc = self.b.ins().popcnt(lo);
        let pf = self.b.ins().band_imm_s(pc, 1);
        let pf = self.b.ins().bxor_imm_s(pf, 1);
        let mut v = cf;
        for (f, sh) in [(pf, 2), (z, 6), (sgn, 7), (of, 11)] {
            let x = self.b.ins().ishl_imm_s(f, sh);
            v = self.b.ins().bor(v, x);
        }
        v
    }

    /// All arithmetic flags as EFLAGS bits.
    pub fn all_bits(&mut self, f: &FlagSrc) -> Value {
        match f {
            FlagSrc::State => self.state_bits(),
            FlagSrc::Bits(v) => *v,
            FlagSrc::Dead => self.b.ins().iconst(I64, 0),
            FlagSrc::Op(o) => {
                let cf = self.cf_op(o);
                let pf = self.pf_of(o);
                let zf = self.zf_of(o);
                let sf = self.msb(o.res);
                let of = self.of_of(o);
                let af = match o.op {
                    Lazy::Logic | Lazy::None => self.b.ins().iconst(I8, 0),
                    _ => {
                        let x = self.b.ins().bxor(o.dst, o.src);
                        let x = self.b.ins().bxor(x, o.res);
                        let x = self.widen(x);
                        let x = self.b.ins().ushr_imm_s(x, 4);
                        let x = self.b.ins().band_imm_s(x, 1);
                        self.b.ins().ireduce(I8, x)
                    }
                };
                let mut v = self.b.ins().uextend(I64, cf);
                for (f, sh) in [(pf, 2), (af, 4), (zf, 6), (sf, 7), (of, 11)] {
                    let x = self.b.ins().uextend(I64, f);
                    let x = self.b.ins().ishl_imm_s(x, sh);
                    v = self.b.ins().bor(v, x);
                }
                v
            }
        }
    }

    /// Evaluates condition `cc` as an i8 0/1.
    pub fn cond(&mut self, cc: C) -> Value {
        if let FlagSrc::State = self.flags {
            let v = self.state_bits();
            self.flags = FlagSrc::Bits(v);
        }
        let (base, negate) = match cc {
            C::o => (C::o, false),
            C::no => (C::o, true),
            C::b => (C::b, false),
            C::ae => (C::b, true),
            C::e => (C::e, false),
            C::ne => (C::e, true),
            C::be => (C::be, false),
            C::a => (C::be, true),
            C::s => (C::s, false),
            C::ns => (C::s, true),
            C::p => (C::p, false),
            C::np => (C::p, true),
            C::l => (C::l, false),
            C::ge => (C::l, true),
            C::le => (C::le, false),
            _ => (C::le, true),
        };
        let v = match self.flags.clone() {
            FlagSrc::Op(o) => self.cond_op(&o, base),
            FlagSrc::Bits(v) => self.cond_bits(v, base),
            FlagSrc::State | FlagSrc::Dead => self.b.ins().iconst(I8, 0),
        };
        if !negate {
            return v;
        }
        // A comparison is negated by the opposite comparison (a branch on it is one
        // host compare, not a compare, a set, an XOR and a test).
        let dfg = &self.b.func.dfg;
        if let ValueDef::Result(inst, 0) = dfg.value_def(v) {
            if let InstructionData::IntCompare {
                opcode: Opcode::Icmp,
                cond,
                args,
            } = dfg.insts[inst]
            {
                return self.b.ins().icmp(cond.complement(), args[0], args[1]);
            }
        }
        self.b.ins().bxor_imm_s(v, 1)
    }

    fn cond_op(&mut self, o: &OpFlags, cc: C) -> Value {
        let (d, s, r) = (o.dst, o.src, o.res);
        if o.op == Lazy::Sub {
            let c = match cc {
                C::b => Some(IntCC::UnsignedLessThan),
                C::e => Some(IntCC::Equal),
                C::be => Some(IntCC::UnsignedLessThanOrEqual),
                C::l => Some(IntCC::SignedLessThan),
                C::le => Some(IntCC::SignedLessThanOrEqual),
                _ => None,
            };
            if let Some(c) = c {
                return self.b.ins().icmp(c, d, s);
            }
        }
        if o.op == Lazy::Logic {
            let c = match cc {
                C::e | C::be => Some(IntCC::Equal),
                C::l | C::s => Some(IntCC::SignedLessThan),
                C::le => Some(IntCC::SignedLessThanOrEqual),
                _ => None,
            };
            if let Some(c) = c {
                return self.b.ins().icmp_imm_s(c, r, 0);
            }
        }
        match cc {
            C::o => self.of_of(o),
            C::b => self.cf_op(o),
            C::e => self.zf_of(o),
            C::be => {
                let c = self.cf_op(o);
                let z = self.zf_of(o);
                self.b.ins().bor(c, z)
            }
            C::s => self.msb(r),
            C::p => self.pf_of(o),
            C::l => {
                let sf = self.msb(r);
                let of = self.of_of(o);
                self.b.ins().bxor(sf, of)
            }
            _ => {
                let sf = self.msb(r);
                let of = self.of_of(o);
                let l = self.b.ins().bxor(sf, of);
                let z = self.zf_of(o);
                self.b.ins().bor(l, z)
            }
        }
    }

    fn cond_bits(&mut self, v: Value, cc: C) -> Value {
        match cc {
            C::o => self.bit(v, 11),
            C::b => self.bit(v, 0),
            C::e => self.bit(v, 6),
            C::be => {
                let c = self.bit(v, 0);
                let z = self.bit(v, 6);
                self.b.ins().bor(c, z)
            }
            C::s => self.bit(v, 7),
            C::p => self.bit(v, 2),
            C::l => {
                let s = self.bit(v, 7);
                let o = self.bit(v, 11);
                self.b.ins().bxor(s, o)
            }
            _ => {
                let s = self.bit(v, 7);
                let o = self.bit(v, 11);
                let l = self.b.ins().bxor(s, o);
                let z = self.bit(v, 6);
                self.b.ins().bor(l, z)
            }
        }
    }
}
