//! Interrupt and exception delivery (IVT in real mode, IDT gates in protected mode,
//! from V86 mode, with stack switches through the TSS), double and triple faults,
//! and the instructions INT n, INT3, INTO, BOUND and IRET.

use iced_x86::Instruction;

use crate::access::Word;
use crate::exception::{vec, Exception, Fault};
use crate::state::{attr, Segment, AC, CS, DS, ES, FS, GS, IF, IOPL, NT, RF, RSP, SS, TF, VM};
use crate::Exec;

use super::segment::{sel_err, Desc};

/// Where an event comes from; decides privilege checks and the EXT bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// INT n, INT3, INTO: gate DPL checked against CPL.
    Software,
    /// A CPU exception.
    Exception,
    /// An external interrupt (INTR, NMI).
    External,
}

impl Exec<'_> {
    /// Delivers an exception, escalating to #DF and to a triple fault (shutdown) as the
    /// SDM's double-fault table says.
    pub fn raise(&mut self, ex: Exception) {
        self.stats.last_vector = ex.vector;
        self.raise_nested(ex);
    }

    fn raise_nested(&mut self, ex: Exception) {
        self.stats.interrupts += 1;
        if let Some(t) = self.trace.as_deref_mut() {
            let lin = self.s.seg[CS].base.wrapping_add(self.s.rip) & 0xffff_ffff;
            let code = ex.error_code.map_or(0, |c| u64::from(c) + 1);
            t.event(
                self.s.icount,
                crate::trace::kind::EXCEPTION,
                &[u64::from(ex.vector), code, lin, self.s.cr2],
            );
        }
        let Err(second) = self.deliver(ex.vector, ex.error_code, Source::Exception) else {
            return;
        };
        if ex.vector == vec::DF {
            tracing::warn!(target: "ox86::cpu", "triple fault (rip={:#x})", self.s.rip);
            *self.shutdown = true;
            return;
        }
        let df = (ex.contributory() && second.contributory())
            || (ex.vector == vec::PF && (second.contributory() || second.vector == vec::PF));
        if df {
            if self.deliver(vec::DF, Some(0), Source::Exception).is_err() {
                tracing::warn!(target: "ox86::cpu", "triple fault in #DF delivery");
                *self.shutdown = true;
            }
        } else {
            self.raise_nested(second);
        }
    }

    /// Delivers an external interrupt.
    pub fn external_interrupt(&mut self, vector: u8) {
        self.stats.interrupts += 1;
        if let Some(t) = self.trace.as_deref_mut() {
            t.event(
                self.s.icount,
                crate::trace::kind::INTERRUPT,
                &[u64::from(vector)],
            );
        }
        if let Err(ex) = self.deliver(vector, None, Source::External) {
            self.raise(ex);
        }
    }

    /// Delivers vector `v` (the return address is the current RIP).
    pub fn deliver(&mut self, v: u8, code: Option<u32>, src: Source) -> Fault {
        self.s.halted = 0;
        if !self.s.protected() {
            return self.deliver_real(v);
        }
        self.deliver_protected(v, code, src)
    }

    fn deliver_real(&mut self, v: u8) -> Fault {
        let off = v as u64 * 4;
        if off + 3 > self.s.idtr.limit as u64 {
            return Err(Exception::GP0);
        }
        let ip: u16 = self.read_sys(self.s.idtr.base + off)?;
        let cs: u16 = self.read_sys(self.s.idtr.base + off + 2)?;
        let flags = self.s.eflags() as u16;
        let sp0 = self.s.regs[RSP];
        let r = (|| {
            self.push::<u16>(flags)?;
            self.push::<u16>(self.s.seg[CS].selector)?;
            self.push::<u16>(self.s.rip as u16)
        })();
        if let Err(x) = r {
            self.s.regs[RSP] = sp0;
            return Err(x);
        }
        self.s.materialize_flags();
        self.s.flags &= !(IF | TF | AC | RF);
        self.load_cs_real(cs);
        self.s.rip = ip as u64;
        Ok(())
    }

    /// Loads CS in real or V86 mode.
    pub fn load_cs_real(&mut self, sel: u16) {
        let s = &mut self.s.seg[CS];
        s.selector = sel;
        s.base = (sel as u64) << 4;
        if self.s.flags & VM != 0 {
            *s = Segment::real(sel);
            s.attr |= attr::CODE | (3 << attr::DPL_SHIFT);
            s.update_rights();
        }
    }

    fn deliver_protected(&mut self, v: u8, code: Option<u32>, src: Source) -> Fault {
        let ext = (src != Source::Software) as u32;
        let idt_err = (v as u32) * 8 + 2 + ext;
        if v as u64 * 8 + 7 > self.s.idtr.limit as u64 {
            return Err(Exception::gp(idt_err));
        }
        let gate = Desc(self.read_sys::<u64>(self.s.idtr.base + v as u64 * 8)?);
        let typ = gate.typ();
        if gate.s() || !matches!(typ, 5 | 6 | 7 | 14 | 15) {
            return Err(Exception::gp(idt_err));
        }
        if src == Source::Software && gate.dpl() < self.s.cpl {
            return Err(Exception::gp(idt_err));
        }
        if !gate.present() {
            return Err(Exception::np(idt_err));
        }
        if typ == 5 {
            let tss = gate.gate_selector();
            self.task_switch(tss, super::task::SwitchKind::Call, Some(ext))?;
            if let Some(c) = code {
                let big = self.s.tr.attr & 8 != 0;
                if big {
                    self.push::<u32>(c)?;
                } else {
                    self.push::<u16>(c as u16)?;
                }
            }
            return Ok(());
        }
        let big = typ & 8 != 0;
        let trap = typ & 1 != 0;
        let sel = gate.gate_selector();
        if sel & 0xfffc == 0 {
            return Err(Exception::gp(ext));
        }
        let (_, cd) = self.read_desc(sel, Exception::gp(sel_err(sel) + ext))?;
        if !cd.is_code() || cd.dpl() > self.s.cpl {
            return Err(Exception::gp(sel_err(sel) + ext));
        }
        if !cd.present() {
            return Err(Exception::np(sel_err(sel) + ext));
        }
        let offset = gate.gate_offset();
        if offset > cd.limit() as u64 {
            return Err(Exception::gp(ext));
        }
        let old_flags = self.s.eflags();
        let from_v86 = old_flags & VM != 0;
        let old_cs = self.s.seg[CS];
        let old_ss = self.s.seg[SS];
        let old_esp = self.s.regs[RSP];
        let old_cpl = self.s.cpl;
        let ret_ip = self.s.rip;
        let inner = !cd.conforming() && cd.dpl() < self.s.cpl;
        if from_v86 && (!inner || cd.dpl() != 0) {
            return Err(Exception::gp(sel_err(sel) + ext));
        }
        let snapshot = (self.s.seg, self.s.regs[RSP], self.s.cpl, self.s.flags);
        let r = (|| -> Fault {
            if inner {
                let new_cpl = cd.dpl();
                let (ss_sel, esp) = self.tss_stack(new_cpl, ext)?;
                self.load_stack_seg_for_cpl(ss_sel, new_cpl, ext)?;
                self.s.regs[RSP] = esp;
                self.s.cpl = new_cpl;
                if from_v86 {
                    for seg in [GS, FS, DS, ES] {
                        let sel = snapshot.0[seg].selector as u32;
                        self.push_gate(big, sel)?;
                    }
                }
                self.push_gate(big, old_ss.selector as u32)?;
                self.push_gate(big, old_esp as u32)?;
            }
            self.push_gate(big, old_flags as u32)?;
            self.push_gate(big, old_cs.selector as u32)?;
            self.push_gate(big, ret_ip as u32)?;
            if let Some(c) = code {
                self.push_gate(big, c)?;
            }
            Ok(())
        })();
        if let Err(x) = r {
            (self.s.seg, self.s.regs[RSP], self.s.cpl, self.s.flags) = snapshot;
            return Err(x);
        }
        if from_v86 {
            for seg in [GS, FS, DS, ES] {
                self.s.seg[seg] = Segment::default();
                self.s.seg[seg].update_rights();
            }
        }
        let new_cpl = if cd.conforming() { old_cpl } else { cd.dpl() };
        let mut cs = cd.to_segment((sel & 0xfffc) | new_cpl as u16);
        cs.update_rights();
        self.s.seg[CS] = cs;
        self.s.cpl = new_cpl;
        self.s.materialize_flags();
        self.s.flags &= !(TF | NT | VM | RF);
        if !trap {
            self.s.flags &= !IF;
        }
        self.s.rip = if big { offset } else { offset & 0xffff };
        Ok(())
    }

    fn push_gate(&mut self, big: bool, v: u32) -> Fault {
        if big {
            self.push::<u32>(v)
        } else {
            self.push::<u16>(v as u16)
        }
    }

    /// The inner stack (SS, ESP) for privilege level `cpl` from the current TSS.
    pub fn tss_stack(&mut self, cpl: u32, ext: u32) -> Fault<(u16, u64)> {
        let tr = self.s.tr;
        let big = tr.attr & 8 != 0;
        let (off_sp, off_ss, span) = if big {
            (4 + 8 * cpl, 8 + 8 * cpl, 4)
        } else {
            (2 + 4 * cpl, 4 + 4 * cpl, 2)
        };
        if off_ss as u64 + 1 > tr.limit as u64 || (off_sp + span - 1) as u64 > tr.limit as u64 {
            return Err(Exception::ts(sel_err(tr.selector) + ext));
        }
        let esp = if big {
            self.read_sys::<u32>(tr.base + off_sp as u64)? as u64
        } else {
            self.read_sys::<u16>(tr.base + off_sp as u64)? as u64
        };
        let ss: u16 = self.read_sys(tr.base + off_ss as u64)?;
        Ok((ss, esp))
    }

    /// Loads SS for a stack switch to privilege `cpl`; faults are #TS.
    pub fn load_stack_seg_for_cpl(&mut self, sel: u16, cpl: u32, ext: u32) -> Fault {
        if sel & 0xfffc == 0 {
            return Err(Exception::ts(ext));
        }
        let (addr, mut d) = self.read_desc(sel, Exception::ts(sel_err(sel) + ext))?;
        if (sel & 3) as u32 != cpl || d.dpl() != cpl || !d.writable() {
            return Err(Exception::ts(sel_err(sel) + ext));
        }
        if !d.present() {
            return Err(Exception::ss(sel_err(sel) + ext));
        }
        self.set_accessed(addr, &mut d)?;
        self.s.seg[SS] = d.to_segment(sel);
        Ok(())
    }
}

/// INT n, INT3, INTO, INT1.
pub fn exec_int(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    use iced_x86::Mnemonic as M;
    let v = match i.mnemonic() {
        M::Int3 => vec::BP,
        M::Into => {
            if !e.s.of() {
                return Ok(());
            }
            vec::OF
        }
        M::Int1 => vec::DB,
        _ => i.immediate8(),
    };
    // INT n in V86 mode with IOPL < 3 is #GP(0) (no VME); INT3/INTO are not affected.
    if e.s.v86() && e.s.iopl() < 3 && i.mnemonic() == M::Int {
        return Err(Exception::GP0);
    }
    let src = if i.mnemonic() == M::Int1 {
        Source::External
    } else {
        Source::Software
    };
    e.deliver(v, None, src)
}

/// BOUND r, m: #BR when the index is outside [lower, upper].
pub fn exec_bound<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    if i.op_kind(1) != iced_x86::OpKind::Memory {
        return Err(Exception::UD);
    }
    let sh = 64 - W::SIZE * 8;
    let sx = |v: u64| ((v << sh) as i64) >> sh;
    let idx = sx(e.rd::<W>(i, 0)?.to_u64());
    let (seg, off) = e.mem_operand(i);
    let lo = sx(e.read::<W>(seg, off)?.to_u64());
    let hi = sx(e
        .read::<W>(seg, (off + W::SIZE as u64) & super::operand::addr_mask(i))?
        .to_u64());
    if idx < lo || idx > hi {
        return Err(Exception::new(vec::BR));
    }
    Ok(())
}

/// IRET/IRETD.
pub fn exec_iret<W: Word>(e: &mut Exec<'_>, _i: &Instruction) -> Fault {
    let n = W::SIZE as u64;
    if !e.s.protected() || e.s.v86() {
        if e.s.v86() && e.s.iopl() < 3 {
            return Err(Exception::GP0);
        }
        let ip = e.peek::<W>(0)?.to_u64();
        let cs = e.peek::<W>(n)?.to_u64() as u16;
        let fl = e.peek::<W>(2 * n)?.to_u64();
        if ip > 0xffff && !e.s.v86() && e.s.seg[CS].hi <= 0xffff {
            return Err(Exception::GP0);
        }
        let sp = e.sp().wrapping_add(3 * n);
        e.set_sp(sp);
        e.load_cs_real(cs);
        e.s.rip = ip;
        let mut mask = crate::state::ARITH_FLAGS | TF | IF | crate::state::DF | NT;
        if W::SIZE == 4 {
            mask |= AC | crate::state::ID;
        }
        if !e.s.v86() {
            mask |= IOPL;
        }
        e.s.materialize_flags();
        e.s.flags = (e.s.flags & !mask) | (fl & mask);
        return Ok(());
    }
    if e.s.flags & NT != 0 {
        // Return from a nested task through the back link.
        let link: u16 = e.read_sys(e.s.tr.base)?;
        return e.task_switch(link, super::task::SwitchKind::Iret, None);
    }
    let ip = e.peek::<W>(0)?.to_u64();
    let cs_sel = e.peek::<W>(n)?.to_u64() as u16;
    let fl = e.peek::<W>(2 * n)?.to_u64();
    if W::SIZE == 4 && fl & VM != 0 && e.s.cpl == 0 {
        return iret_to_v86(e, ip, cs_sel, fl);
    }
    let cpl = e.s.cpl;
    let rpl = (cs_sel & 3) as u32;
    if cs_sel & 0xfffc == 0 {
        return Err(Exception::GP0);
    }
    let (addr, mut d) = e.read_desc(cs_sel, Exception::gp(sel_err(cs_sel)))?;
    if !d.is_code()
        || rpl < cpl
        || (d.conforming() && d.dpl() > rpl)
        || (!d.conforming() && d.dpl() != rpl)
    {
        return Err(Exception::gp(sel_err(cs_sel)));
    }
    if !d.present() {
        return Err(Exception::np(sel_err(cs_sel)));
    }
    if ip > d.limit() as u64 {
        return Err(Exception::GP0);
    }
    let (new_sp, new_ss) = if rpl > cpl {
        let sp = e.peek::<W>(3 * n)?.to_u64();
        let ss = e.peek::<W>(4 * n)?.to_u64() as u16;
        (Some(sp), Some(ss))
    } else {
        (None, None)
    };
    // Commit: flags first need the old CPL's rules.
    let mut mask = crate::state::ARITH_FLAGS | TF | crate::state::DF | NT | RF;
    if W::SIZE == 4 {
        mask |= AC | crate::state::ID;
    }
    if cpl <= e.s.iopl() {
        mask |= IF;
    }
    if cpl == 0 {
        mask |= IOPL;
    }
    let saved = (e.s.seg, e.s.regs[RSP], e.s.cpl);
    if let (Some(sp), Some(ss)) = (new_sp, new_ss) {
        e.s.cpl = rpl;
        if let Err(x) = e.load_stack_seg_checked(ss, rpl) {
            (e.s.seg, e.s.regs[RSP], e.s.cpl) = saved;
            return Err(x);
        }
        e.s.regs[RSP] = if e.s.seg[SS].big() {
            sp & 0xffff_ffff
        } else {
            (e.s.regs[RSP] & !0xffff) | (sp & 0xffff)
        };
    } else {
        let sp = e.sp().wrapping_add(3 * n);
        e.set_sp(sp);
    }
    e.set_accessed(addr, &mut d)?;
    e.s.seg[CS] = d.to_segment(cs_sel);
    e.s.cpl = rpl;
    e.s.rip = ip;
    e.s.materialize_flags();
    e.s.flags = (e.s.flags & !mask) | (fl & mask);
    if rpl > cpl {
        e.null_inaccessible_segs();
    }
    Ok(())
}

fn iret_to_v86(e: &mut Exec<'_>, ip: u64, cs: u16, fl: u64) -> Fault {
    let esp = e.peek::<u32>(12)? as u64;
    let ss = e.peek::<u32>(16)? as u16;
    let es = e.peek::<u32>(20)? as u16;
    let ds = e.peek::<u32>(24)? as u16;
    let fs = e.peek::<u32>(28)? as u16;
    let gs = e.peek::<u32>(32)? as u16;
    e.s.materialize_flags();
    e.s.flags = (fl & 0x003f_7fd5) | 2;
    e.s.cpl = 3;
    for (seg, sel) in [(ES, es), (DS, ds), (FS, fs), (GS, gs), (SS, ss)] {
        e.s.seg[seg] = Segment::real(sel);
        e.s.seg[seg].attr |= 3 << attr::DPL_SHIFT;
        e.s.seg[seg].update_rights();
    }
    e.load_cs_real(cs);
    e.s.regs[RSP] = esp;
    e.s.rip = ip & 0xffff;
    Ok(())
}

impl Exec<'_> {
    /// Loads SS on a return to privilege `rpl` (IRET, RETF): #GP/#SS on bad selectors.
    pub fn load_stack_seg_checked(&mut self, sel: u16, rpl: u32) -> Fault {
        if sel & 0xfffc == 0 {
            return Err(Exception::GP0);
        }
        let (addr, mut d) = self.read_desc(sel, Exception::gp(sel_err(sel)))?;
        if (sel & 3) as u32 != rpl || d.dpl() != rpl || !d.writable() {
            return Err(Exception::gp(sel_err(sel)));
        }
        if !d.present() {
            return Err(Exception::ss(sel_err(sel)));
        }
        self.set_accessed(addr, &mut d)?;
        self.s.seg[SS] = d.to_segment(sel);
        Ok(())
    }
}
