//! Executes one decoded x87 instruction against an `X87State`.

use crate::arith::{binop, sqrt, Operand, Res};
use crate::compare::{compare, fxam, Order};
use crate::context::{X87Context, X87Error};
use crate::convert::{
    f80_to_bcd, f80_to_f32, f80_to_f64, f80_to_int, mem_to_operand, round_int_f80, BCD_INDEFINITE,
};
use crate::env::EnvLayout;
use crate::float::{Class, F80};
use crate::ops::{classify, is_nowait, Binary01, Cond, Const, Mem, Op, Src, Unary};
use crate::state::X87State;
use crate::status::{Rounding, C0, C1, C2, C3, DE, IE, PE, ZE};
use crate::{prem, scale, transcendental as tr};
use iced_x86::{Code, Instruction, OpKind, Register};

type Out<C> = Result<(), X87Error<<C as X87Context>::Fault>>;

#[inline]
fn read<C: X87Context, const N: usize>(ctx: &mut C) -> Result<[u8; N], X87Error<C::Fault>> {
    let mut b = [0u8; N];
    ctx.read_mem(0, &mut b).map_err(X87Error::Fault)?;
    Ok(b)
}

fn write<C: X87Context>(ctx: &mut C, data: &[u8]) -> Out<C> {
    ctx.write_mem(0, data).map_err(X87Error::Fault)
}

/// Reads a memory operand and widens it to an operand.
#[inline]
fn load_mem<C: X87Context>(ctx: &mut C, fmt: Mem) -> Result<Operand, X87Error<C::Fault>> {
    let mut b = [0u8; 10];
    ctx.read_mem(0, &mut b[..usize::from(fmt.size())])
        .map_err(X87Error::Fault)?;
    Ok(mem_to_operand(fmt, b))
}

/// Index i of the instruction's ST(i) operand (the one that is not ST(0), if any).
pub fn sti_of(insn: &Instruction) -> usize {
    sti(insn)
}

/// Index i of the instruction's ST(i) operand (the one that is not ST(0), if any).
#[inline]
fn sti(insn: &Instruction) -> usize {
    let mut idx = 0usize;
    for n in 0..insn.op_count() {
        if insn.op_kind(n) == OpKind::Register {
            let r = insn.op_register(n);
            if (Register::ST0..=Register::ST7).contains(&r) {
                let i = (r as usize).wrapping_sub(Register::ST0 as usize) & 7;
                if i != 0 {
                    idx = i;
                }
            }
        }
    }
    idx
}

fn constant(c: Const, rc: Rounding) -> F80 {
    // (exponent, significand rounded to nearest, whether that rounding went up)
    let (e, sig, rn_up) = match c {
        Const::One => return F80::ONE,
        Const::Zero => return F80::zero(false),
        Const::L2T => (0x4000, 0xD49A_784B_CD1B_8AFEu64, false),
        Const::L2E => (0x3FFF, 0xB8AA_3B29_5C17_F0BC, true),
        Const::Pi => (0x4000, 0xC90F_DAA2_2168_C235, true),
        Const::LG2 => (0x3FFD, 0x9A20_9A84_FBCF_F799, true),
        Const::LN2 => (0x3FFE, 0xB172_17F7_D1CF_79AC, true),
    };
    let sig = match rc {
        Rounding::Down | Rounding::Zero if rn_up => sig - 1,
        Rounding::Up if !rn_up => sig + 1,
        _ => sig,
    };
    F80::new(false, e, sig)
}

/// The 11-bit FOP of an instruction: low 3 bits of the D8-DF opcode and the ModRM byte.
pub fn fop_of(insn: &Instruction) -> u16 {
    let info = insn.op_code();
    let oc = info.op_code();
    if oc > 0xFF {
        // Two-byte opcode (D8 C0+i, D9 E8, ...): the register number is added in.
        return ((oc & 0x7FF) as u16) | if oc & 7 == 0 { sti(insn) as u16 } else { 0 };
    }
    let op = (oc & 7) as u16;
    let reg = (info.group_index().max(0) & 7) as u16;
    let has_mem = (0..insn.op_count()).any(|n| insn.op_kind(n) == OpKind::Memory);
    let modrm = if has_mem {
        let disp = insn.memory_displ_size();
        let base = insn.memory_base();
        let index = insn.memory_index();
        if base == Register::None && index == Register::None {
            (reg << 3) | 5
        } else {
            let md = match disp {
                0 => 0,
                1 => 1,
                _ => 2,
            };
            let rm = if index != Register::None || base.number() == 4 {
                4
            } else {
                (base.number() & 7) as u16
            };
            (md << 6) | (reg << 3) | rm
        }
    } else if info.is_rm_group() {
        0xC0 | (reg << 3) | (info.rm_group_index().max(0) & 7) as u16
    } else {
        0xC0 | (reg << 3) | sti(insn) as u16
    };
    (op << 8) | (modrm & 0xFF)
}

impl X87State {
    /// True when `code` is an x87 instruction that `execute` handles.
    pub fn is_x87(code: Code) -> bool {
        classify(code).is_some()
    }

    /// True for the no-wait control instructions (FNINIT, FNCLEX, FNSTSW,
    /// FNSTCW, FNSTENV, FNSAVE, FXSAVE, FXRSTOR): the CPU must not raise #MF
    /// before them.
    pub fn is_nowait(code: Code) -> bool {
        is_nowait(code)
    }

    /// Executes one x87 instruction. A memory fault leaves the FPU unchanged.
    /// Unmasked exceptions set FSW.ES; the CPU raises #MF at the next waiting
    /// instruction (see [`X87State::exception_pending`]).
    pub fn execute<C: X87Context>(&mut self, insn: &Instruction, ctx: &mut C) -> Out<C> {
        let code = insn.code();
        let Some(op) = classify(code) else {
            return Err(X87Error::Unimplemented(code));
        };
        self.execute_op(op, insn, fop_of(insn), ctx)
    }

    /// [`X87State::execute`] for an instruction already classified: `op` must be
    /// `classify(insn.code())` and `fop` must be `fop_of(insn)`.
    pub fn execute_op<C: X87Context>(
        &mut self,
        op: Op,
        insn: &Instruction,
        fop: u16,
        ctx: &mut C,
    ) -> Out<C> {
        self.exec_op(op, insn, ctx)?;
        if !op.is_control() && op != Op::Nop {
            self.fop = fop;
            let (ip, cs) = ctx.instruction_pointer();
            self.fip = u64::from(ip);
            self.fcs = cs;
            if (0..insn.op_count()).any(|n| insn.op_kind(n) == OpKind::Memory) {
                let (dp, ds) = ctx.data_pointer();
                self.fdp = u64::from(dp);
                self.fds = ds;
            }
        }
        Ok(())
    }

    /// Commits a result to ST(dst) unless an unmasked IE/DE/ZE blocks it.
    fn commit(&mut self, dst: usize, r: Res, pop: bool) -> bool {
        let masks = self.fcw;
        self.set_c1(r.up && r.exc & PE != 0);
        self.raise(r.exc);
        if r.exc & (IE | DE | ZE) & !masks != 0 {
            return false;
        }
        self.set_st(dst, r.value);
        if pop {
            self.pop();
        }
        true
    }

    fn blocked(&self, exc: u16) -> bool {
        exc & (IE | DE | ZE) & !self.fcw != 0
    }

    /// Pushes a result (stack overflow checked by the caller).
    fn commit_push(&mut self, r: Res) {
        self.set_c1(false);
        self.raise(r.exc);
        if !self.blocked(r.exc) {
            self.push(r.value);
        }
    }

    fn exec_op<C: X87Context>(&mut self, op: Op, insn: &Instruction, ctx: &mut C) -> Out<C> {
        let ctl = self.control();
        match op {
            Op::Arith {
                op: bop,
                rev,
                src,
                dst_sti,
                pop,
            } => {
                let i = sti(insn);
                let mem = match src {
                    Src::Mem(f) => Some(load_mem(ctx, f)?),
                    _ => None,
                };
                let dst = if dst_sti { i } else { 0 };
                let other = if dst_sti { 0 } else { i };
                if self.is_empty(dst) || (mem.is_none() && self.is_empty(other)) {
                    if self.stack_underflow() {
                        self.set_st(dst, F80::INDEFINITE);
                        if pop {
                            self.pop();
                        }
                    }
                    return Ok(());
                }
                let x = Operand::reg(self.st(dst));
                let y = match mem {
                    Some(m) => m,
                    None => Operand::reg(self.st(other)),
                };
                let r = if rev {
                    binop(bop, y, x, &ctl)
                } else {
                    binop(bop, x, y, &ctl)
                };
                self.commit(dst, r, pop);
            }
            Op::Compare {
                src,
                quiet,
                pops,
                eflags,
            } => {
                let mem = match src {
                    Src::Mem(f) => Some(load_mem(ctx, f)?),
                    _ => None,
                };
                let other = match src {
                    Src::Sti => Some(sti(insn)),
                    Src::St1 => Some(1),
                    _ => None,
                };
                let set = |s: &mut X87State, ctx: &mut C, o: Order| {
                    if eflags {
                        let (z, p, c) = o.eflags();
                        ctx.set_compare_flags(z, p, c);
                    } else {
                        s.set_cc(C0 | C2 | C3, o.cc());
                    }
                };
                if self.is_empty(0) || other.is_some_and(|i| self.is_empty(i)) {
                    // The condition codes are written even when IE is unmasked.
                    set(self, ctx, Order::Unordered);
                    if self.stack_underflow() {
                        for _ in 0..pops {
                            self.pop();
                        }
                    }
                    return Ok(());
                }
                let a = Operand::reg(self.st(0));
                let b = match (mem, other) {
                    (Some(m), _) => m,
                    (None, Some(i)) => Operand::reg(self.st(i)),
                    (None, None) => Operand {
                        v: F80::zero(false),
                        denormal: false,
                    },
                };
                let (o, exc) = compare(a, b, quiet);
                self.set_c1(false);
                self.raise(exc);
                set(self, ctx, o);
                if self.blocked(exc) {
                    return Ok(());
                }
                for _ in 0..pops {
                    self.pop();
                }
            }
            Op::LoadMem(fmt) => {
                let v = load_mem(ctx, fmt)?;
                if !self.is_empty(7) {
                    if self.stack_overflow() {
                        self.push(F80::INDEFINITE);
                    }
                    return Ok(());
                }
                let r = match v.v.class() {
                    _ if matches!(fmt, Mem::F80 | Mem::Bcd) => Res::exact(v.v),
                    Class::SNaN => Res {
                        value: v.v.quieted(),
                        exc: IE,
                        up: false,
                    },
                    _ if v.denormal => Res {
                        value: v.v,
                        exc: DE,
                        up: false,
                    },
                    _ => Res::exact(v.v),
                };
                // An unmasked #D does not stop the load (the value is exact).
                self.set_c1(false);
                self.raise(r.exc);
                if !self.blocked(r.exc & !DE) {
                    self.push(r.value);
                }
            }
            Op::LoadSti => {
                let i = sti(insn);
                // An empty source is reported before a full stack.
                if self.is_empty(i) {
                    if self.stack_underflow() {
                        self.push(F80::INDEFINITE);
                    }
                    return Ok(());
                }
                if !self.is_empty(7) {
                    if self.stack_overflow() {
                        self.push(F80::INDEFINITE);
                    }
                    return Ok(());
                }
                let v = self.st(i);
                self.commit_push(Res::exact(v));
            }
            Op::LoadConst(c) => {
                if !self.is_empty(7) {
                    if self.stack_overflow() {
                        self.push(F80::INDEFINITE);
                    }
                    return Ok(());
                }
                self.commit_push(Res::exact(constant(c, ctl.rc)));
            }
            Op::StoreMem { fmt, pop, trunc } => self.exec_store(ctx, fmt, pop, trunc)?,
            Op::StoreSti { pop, nce } => {
                let i = sti(insn);
                if self.is_empty(0) && nce {
                    // FSTPNCE with an empty ST(0): no exception, no copy, just the pop.
                    self.set_c1(false);
                    self.pop();
                    return Ok(());
                }
                if self.is_empty(0) {
                    if self.stack_underflow() {
                        self.set_st(i, F80::INDEFINITE);
                        if pop {
                            self.pop();
                        }
                    }
                    return Ok(());
                }
                let v = self.st(0);
                self.set_c1(false);
                self.set_st(i, v);
                if pop {
                    self.pop();
                }
            }
            Op::Xch => {
                let i = sti(insn);
                if self.is_empty(0) || self.is_empty(i) {
                    if self.stack_underflow() {
                        let a = if self.is_empty(0) {
                            F80::INDEFINITE
                        } else {
                            self.st(0)
                        };
                        let b = if self.is_empty(i) {
                            F80::INDEFINITE
                        } else {
                            self.st(i)
                        };
                        self.set_st(0, b);
                        self.set_st(i, a);
                    }
                    return Ok(());
                }
                let (a, b) = (self.st(0), self.st(i));
                self.set_st(0, b);
                self.set_st(i, a);
                self.set_c1(false);
            }
            Op::Cmov(cond) => {
                let i = sti(insn);
                let f = ctx.eflags();
                let (cf, pf, zf) = (f & 1 != 0, f & 4 != 0, f & 0x40 != 0);
                let take = match cond {
                    Cond::B => cf,
                    Cond::E => zf,
                    Cond::BE => cf || zf,
                    Cond::U => pf,
                    Cond::NB => !cf,
                    Cond::NE => !zf,
                    Cond::NBE => !cf && !zf,
                    Cond::NU => !pf,
                };
                if self.is_empty(0) || self.is_empty(i) {
                    if self.stack_underflow() {
                        self.set_st(0, F80::INDEFINITE);
                    }
                    return Ok(());
                }
                if take {
                    let v = self.st(i);
                    self.set_st(0, v);
                }
            }
            Op::Unary(u) => {
                if self.is_empty(0) {
                    if matches!(u, Unary::Sin | Unary::Cos) {
                        self.set_cc(C2, 0);
                    }
                    if self.stack_underflow() {
                        self.set_st(0, F80::INDEFINITE);
                    }
                    return Ok(());
                }
                let v = self.st(0);
                let a = Operand::reg(v);
                let r = match u {
                    Unary::Chs => Res::exact(v.with_sign(!v.sign())),
                    Unary::Abs => Res::exact(v.with_sign(false)),
                    Unary::Sqrt => sqrt(a, &ctl),
                    Unary::Rndint => match crate::arith::unary_special(v) {
                        Some(r) => r,
                        None if v.is_denormal() && !ctl.masked(DE) => Res {
                            value: v,
                            exc: DE,
                            up: false,
                        },
                        None => round_int_f80(v, &ctl),
                    },
                    Unary::F2xm1 => tr::f2xm1(a, &ctl),
                    Unary::Sin | Unary::Cos => {
                        let r = if u == Unary::Sin {
                            tr::fsin(a, &ctl)
                        } else {
                            tr::fcos(a, &ctl)
                        };
                        match r {
                            Some(r) => {
                                self.set_cc(C2, 0);
                                r
                            }
                            None => {
                                self.set_cc(C2, C2);
                                return Ok(());
                            }
                        }
                    }
                };
                self.commit(0, r, false);
            }
            Op::Binary01(b) => {
                if self.is_empty(0) || self.is_empty(1) {
                    if matches!(b, Binary01::Prem | Binary01::Prem1) {
                        self.set_cc(C2, 0);
                    }
                    if self.stack_underflow() {
                        match b {
                            Binary01::Scale => self.set_st(0, F80::INDEFINITE),
                            Binary01::Prem | Binary01::Prem1 => {
                                self.set_st(0, F80::INDEFINITE);
                            }
                            _ => {
                                self.set_st(1, F80::INDEFINITE);
                                self.pop();
                            }
                        }
                    }
                    return Ok(());
                }
                let (x, y) = (Operand::reg(self.st(0)), Operand::reg(self.st(1)));
                match b {
                    Binary01::Yl2x => {
                        let r = tr::fyl2x(x, y, &ctl);
                        self.commit(1, r, true);
                    }
                    Binary01::Yl2xp1 => {
                        let r = tr::fyl2xp1(x, y, &ctl);
                        self.commit(1, r, true);
                    }
                    Binary01::Patan => {
                        let r = tr::fpatan(x, y, &ctl);
                        self.commit(1, r, true);
                    }
                    Binary01::Scale => {
                        let r = scale::fscale(x, y, &ctl);
                        self.commit(0, r, false);
                    }
                    Binary01::Prem | Binary01::Prem1 => {
                        let (r, cc) = prem::fprem(x, y, b == Binary01::Prem1, &ctl);
                        let stored = self.commit(0, r, false);
                        match cc {
                            Some(cc) if stored => self.set_cc(C0 | C1 | C2 | C3, cc),
                            // NaN or invalid operands: only C2 is cleared.
                            _ => self.set_cc(C2, 0),
                        }
                    }
                }
            }
            Op::Ptan | Op::Sincos | Op::Xtract => {
                if self.is_empty(0) || !self.is_empty(7) {
                    if op != Op::Xtract {
                        self.set_cc(C2, 0);
                    }
                    let masked = if self.is_empty(0) {
                        self.stack_underflow()
                    } else {
                        self.stack_overflow()
                    };
                    if masked {
                        self.set_st(0, F80::INDEFINITE);
                        self.push(F80::INDEFINITE);
                    }
                    return Ok(());
                }
                let a = Operand::reg(self.st(0));
                let pair = match op {
                    Op::Ptan => tr::fptan(a, &ctl),
                    Op::Sincos => tr::fsincos(a, &ctl),
                    _ => Some(scale::fxtract(a, &ctl)),
                };
                let Some((r0, r1)) = pair else {
                    self.set_cc(C2, C2);
                    return Ok(());
                };
                if op != Op::Xtract {
                    self.set_cc(C2, 0);
                }
                let exc = r0.exc | r1.exc;
                self.raise(exc);
                self.set_c1((r0.up && r0.exc & PE != 0) || (r1.up && r1.exc & PE != 0));
                if self.blocked(exc) {
                    return Ok(());
                }
                // r0 replaces ST(0), r1 is pushed.
                self.set_st(0, r0.value);
                self.push(r1.value);
            }
            Op::Xam => {
                let cc = fxam(self.st(0), self.is_empty(0));
                self.set_cc(C0 | C1 | C2 | C3, cc);
            }
            Op::Incstp => {
                self.set_c1(false);
                self.set_top(self.top() + 1);
            }
            Op::Decstp => {
                self.set_c1(false);
                self.set_top(self.top().wrapping_sub(1));
            }
            Op::Free { pop } => {
                let p = self.phys(sti(insn));
                self.tag_valid &= !(1 << p);
                if pop {
                    self.pop();
                }
            }
            Op::Nop | Op::Wait => {}
            Op::Init => self.reset(),
            Op::Clex => self.clear_exceptions(),
            Op::Ldcw => {
                let b = read::<C, 2>(ctx)?;
                self.set_fcw(u16::from_le_bytes(b));
                self.update_es();
            }
            Op::Stcw => write(ctx, &self.fcw.to_le_bytes())?,
            Op::StswMem => write(ctx, &self.fsw.to_le_bytes())?,
            Op::StswAx => ctx.set_ax(self.fsw),
            Op::Stenv { size16 } => {
                let layout = EnvLayout {
                    size16,
                    real: ctx.real_mode(),
                };
                let mut img = [0u8; 28];
                self.store_env(layout, &mut img);
                write(ctx, &img[..layout.len()])?;
                self.fcw |= 0x3F;
                self.update_es();
            }
            Op::Ldenv { size16 } => {
                let layout = EnvLayout {
                    size16,
                    real: ctx.real_mode(),
                };
                let mut img = [0u8; 28];
                ctx.read_mem(0, &mut img[..layout.len()])
                    .map_err(X87Error::Fault)?;
                self.load_env(layout, &img);
            }
            Op::Save { size16 } => {
                let layout = EnvLayout {
                    size16,
                    real: ctx.real_mode(),
                };
                let mut img = [0u8; 108];
                self.store_save(layout, &mut img);
                write(ctx, &img[..layout.len() + 80])?;
                self.reset();
            }
            Op::Rstor { size16 } => {
                let layout = EnvLayout {
                    size16,
                    real: ctx.real_mode(),
                };
                let mut img = [0u8; 108];
                ctx.read_mem(0, &mut img[..layout.len() + 80])
                    .map_err(X87Error::Fault)?;
                self.load_save(layout, &img);
            }
            Op::Fxsave { rex_w } => {
                let mut img = [0u8; 416];
                self.store_fxsave(rex_w, &mut img);
                write(ctx, &img)?;
            }
            Op::Fxrstor { rex_w } => {
                let img = read::<C, 416>(ctx)?;
                self.load_fxrstor(rex_w, &img);
            }
        }
        Ok(())
    }

    fn exec_store<C: X87Context>(
        &mut self,
        ctx: &mut C,
        fmt: Mem,
        pop: bool,
        trunc: bool,
    ) -> Out<C> {
        let ctl = self.control();
        let empty = self.is_empty(0);
        let v = if empty { F80::INDEFINITE } else { self.st(0) };
        let mut buf = [0u8; 10];
        let (len, exc, up, store) = match fmt {
            Mem::F32 => {
                let n = f80_to_f32(v, &ctl);
                buf[..4].copy_from_slice(&n.bits.to_le_bytes());
                (4, n.exc, n.up, n.store)
            }
            Mem::F64 => {
                let n = f80_to_f64(v, &ctl);
                buf[..8].copy_from_slice(&n.bits.to_le_bytes());
                (8, n.exc, n.up, n.store)
            }
            Mem::F80 => {
                buf = v.to_le_bytes();
                (10, 0, false, true)
            }
            Mem::I16 | Mem::I32 | Mem::I64 => {
                let (bits, len) = match fmt {
                    Mem::I16 => (16, 2),
                    Mem::I32 => (32, 4),
                    _ => (64, 8),
                };
                let rc = if trunc { Rounding::Zero } else { ctl.rc };
                let n = f80_to_int(v, bits, rc, &ctl);
                buf[..8].copy_from_slice(&n.bits.to_le_bytes());
                (len, n.exc, n.up, n.store)
            }
            Mem::Bcd => {
                let n = f80_to_bcd(v, &ctl);
                buf = n.bits;
                (10, n.exc, n.up, n.store)
            }
        };
        if empty {
            let masked = ctl.masked(IE);
            if masked {
                let bytes: &[u8] = match fmt {
                    Mem::Bcd => &BCD_INDEFINITE,
                    _ => &buf[..len],
                };
                write(ctx, bytes)?;
            }
            self.stack_underflow();
            if masked && pop {
                self.pop();
            }
            return Ok(());
        }
        if store {
            write(ctx, &buf[..len])?;
        }
        self.set_c1(up && exc & PE != 0);
        self.raise(exc);
        if store && pop {
            self.pop();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions};

    #[test]
    fn fop_values() {
        for (bytes, fop) in [
            (&[0xD9u8, 0xE8][..], 0x1E8u16),
            (&[0xD8, 0xC1][..], 0x0C1),
            (&[0xDC, 0xE9][..], 0x4E9),
            (&[0xDD, 0x06][..], 0x506),
            (&[0xD9, 0x45, 0x08][..], 0x145),
        ] {
            let mut d = Decoder::with_ip(32, bytes, 0, DecoderOptions::NONE);
            let insn = d.decode();
            assert_eq!(fop_of(&insn), fop, "{insn}");
        }
    }

    #[test]
    fn every_fpu_code_is_classified() {
        for code in iced_x86::Code::values() {
            let m = format!("{:?}", code.mnemonic()).to_ascii_lowercase();
            let fpu = m.starts_with('f')
                && !matches!(m.as_str(), "femms" | "fisttp" | "fxsave" | "fxrstor")
                || m == "wait";
            if fpu {
                assert!(X87State::is_x87(code), "{code:?}");
            }
        }
    }
}
