//! Far control transfers: JMP far, CALL far (direct to code segments, through call
//! gates with stack switch and parameter copy, or to tasks), and RETF.

use iced_x86::{Instruction, OpKind};

use crate::access::Word;
use crate::exception::{Exception, Fault};
use crate::state::{CS, RSP, SS};
use crate::Exec;

use super::segment::{sel_err, Desc};
use super::task::SwitchKind;

/// The far pointer operand: (selector, offset).
fn far_target<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault<(u16, u64)> {
    match i.op_kind(0) {
        OpKind::FarBranch16 => Ok((i.far_branch_selector(), i.far_branch16() as u64)),
        OpKind::FarBranch32 => Ok((i.far_branch_selector(), i.far_branch32() as u64)),
        OpKind::Memory => {
            let (seg, off) = e.mem_operand(i);
            let o = e.read::<W>(seg, off)?.to_u64();
            let s = e.read::<u16>(seg, (off + W::SIZE as u64) & super::operand::addr_mask(i))?;
            Ok((s, o))
        }
        _ => Err(Exception::UD),
    }
}

/// JMP far.
pub fn exec_jmp_far<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let (sel, off) = far_target::<W>(e, i)?;
    if !e.s.protected() || e.s.v86() {
        if off > e.s.seg[CS].limit as u64 && !e.s.v86() {
            return Err(Exception::GP0);
        }
        e.load_cs_real(sel);
        e.s.rip = off;
        return Ok(());
    }
    far_transfer::<W>(e, sel, off, false)
}

/// CALL far.
pub fn exec_call_far<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let (sel, off) = far_target::<W>(e, i)?;
    if !e.s.protected() || e.s.v86() {
        let sp0 = e.s.regs[RSP];
        let cs = e.s.seg[CS].selector;
        let ret = e.s.rip;
        let r = (|| {
            e.push::<W>(W::from_u64(cs as u64))?;
            e.push::<W>(W::from_u64(ret))
        })();
        if let Err(x) = r {
            e.s.regs[RSP] = sp0;
            return Err(x);
        }
        e.load_cs_real(sel);
        e.s.rip = off;
        return Ok(());
    }
    far_transfer::<W>(e, sel, off, true)
}

/// Protected-mode far JMP/CALL to a code segment, call gate, TSS or task gate.
fn far_transfer<W: Word>(e: &mut Exec<'_>, sel: u16, off: u64, call: bool) -> Fault {
    if sel & 0xfffc == 0 {
        return Err(Exception::GP0);
    }
    let (addr, mut d) = e.read_desc(sel, Exception::gp(sel_err(sel)))?;
    let cpl = e.s.cpl;
    let rpl = (sel & 3) as u32;
    if d.is_code() {
        if d.conforming() {
            if d.dpl() > cpl {
                return Err(Exception::gp(sel_err(sel)));
            }
        } else if rpl > cpl || d.dpl() != cpl {
            return Err(Exception::gp(sel_err(sel)));
        }
        if !d.present() {
            return Err(Exception::np(sel_err(sel)));
        }
        if off > d.limit() as u64 {
            return Err(Exception::GP0);
        }
        if call {
            let cs = e.s.seg[CS].selector;
            let ret = e.s.rip;
            let sp0 = e.s.regs[RSP];
            let r = (|| {
                e.push::<W>(W::from_u64(cs as u64))?;
                e.push::<W>(W::from_u64(ret))
            })();
            if let Err(x) = r {
                e.s.regs[RSP] = sp0;
                return Err(x);
            }
        }
        e.set_accessed(addr, &mut d)?;
        e.s.seg[CS] = d.to_segment((sel & 0xfffc) | cpl as u16);
        e.s.rip = if W::SIZE == 2 { off & 0xffff } else { off };
        return Ok(());
    }
    if d.s() {
        return Err(Exception::gp(sel_err(sel)));
    }
    match d.typ() {
        // Available TSS (286 or 386).
        1 | 9 => {
            if d.dpl() < cpl || d.dpl() < rpl {
                return Err(Exception::gp(sel_err(sel)));
            }
            if !d.present() {
                return Err(Exception::np(sel_err(sel)));
            }
            e.task_switch(
                sel,
                if call {
                    SwitchKind::Call
                } else {
                    SwitchKind::Jmp
                },
                None,
            )
        }
        // Task gate.
        5 => {
            if d.dpl() < cpl || d.dpl() < rpl {
                return Err(Exception::gp(sel_err(sel)));
            }
            if !d.present() {
                return Err(Exception::np(sel_err(sel)));
            }
            e.task_switch(
                d.gate_selector(),
                if call {
                    SwitchKind::Call
                } else {
                    SwitchKind::Jmp
                },
                None,
            )
        }
        // Call gate (286 or 386).
        4 | 12 => call_gate(e, sel, d, call),
        _ => Err(Exception::gp(sel_err(sel))),
    }
}

fn call_gate(e: &mut Exec<'_>, gsel: u16, gate: Desc, call: bool) -> Fault {
    let cpl = e.s.cpl;
    let rpl = (gsel & 3) as u32;
    if gate.dpl() < cpl || gate.dpl() < rpl {
        return Err(Exception::gp(sel_err(gsel)));
    }
    if !gate.present() {
        return Err(Exception::np(sel_err(gsel)));
    }
    let sel = gate.gate_selector();
    if sel & 0xfffc == 0 {
        return Err(Exception::GP0);
    }
    let (addr, mut d) = e.read_desc(sel, Exception::gp(sel_err(sel)))?;
    if !d.is_code() || d.dpl() > cpl {
        return Err(Exception::gp(sel_err(sel)));
    }
    if !call && !d.conforming() && d.dpl() != cpl {
        return Err(Exception::gp(sel_err(sel)));
    }
    if !d.present() {
        return Err(Exception::np(sel_err(sel)));
    }
    let big = gate.typ() == 12;
    let off = gate.gate_offset();
    if off > d.limit() as u64 {
        return Err(Exception::GP0);
    }
    let ret_cs = e.s.seg[CS].selector;
    let ret_ip = e.s.rip;
    let inner = call && !d.conforming() && d.dpl() < cpl;
    let snapshot = (e.s.seg, e.s.regs[RSP], e.s.cpl);
    let r = (|| -> Fault {
        if inner {
            let new_cpl = d.dpl();
            let (ss_sel, esp) = e.tss_stack(new_cpl, 0)?;
            // Read the parameters from the old stack before switching.
            let n = gate.gate_params() as u64;
            let w = if big { 4 } else { 2 };
            let mut params = Vec::with_capacity(n as usize);
            for k in 0..n {
                params.push(if big {
                    e.peek::<u32>(k * w)?
                } else {
                    e.peek::<u16>(k * w)? as u32
                });
            }
            let old_ss = e.s.seg[SS].selector;
            let old_esp = e.s.regs[RSP];
            e.load_stack_seg_for_cpl(ss_sel, new_cpl, 0)?;
            e.s.regs[RSP] = esp;
            e.s.cpl = new_cpl;
            push_w(e, big, old_ss as u32)?;
            push_w(e, big, old_esp as u32)?;
            for &p in params.iter().rev() {
                push_w(e, big, p)?;
            }
        }
        if call {
            push_w(e, big, ret_cs as u32)?;
            push_w(e, big, ret_ip as u32)?;
        }
        Ok(())
    })();
    if let Err(x) = r {
        (e.s.seg, e.s.regs[RSP], e.s.cpl) = snapshot;
        return Err(x);
    }
    e.set_accessed(addr, &mut d)?;
    let new_cpl = if d.conforming() { cpl } else { d.dpl() };
    e.s.cpl = new_cpl;
    e.s.seg[CS] = d.to_segment((sel & 0xfffc) | new_cpl as u16);
    e.s.rip = if big { off } else { off & 0xffff };
    Ok(())
}

fn push_w(e: &mut Exec<'_>, big: bool, v: u32) -> Fault {
    if big {
        e.push::<u32>(v)
    } else {
        e.push::<u16>(v as u16)
    }
}

/// RETF and RETF imm16.
pub fn exec_retf<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let n = W::SIZE as u64;
    let imm = if i.op_count() > 0 {
        i.immediate(0) & 0xffff
    } else {
        0
    };
    let ip = e.peek::<W>(0)?.to_u64();
    let sel = e.peek::<W>(n)?.to_u64() as u16;
    if !e.s.protected() || e.s.v86() {
        let sp = e.sp().wrapping_add(2 * n + imm);
        e.set_sp(sp);
        e.load_cs_real(sel);
        e.s.rip = ip;
        return Ok(());
    }
    let cpl = e.s.cpl;
    let rpl = (sel & 3) as u32;
    if sel & 0xfffc == 0 {
        return Err(Exception::GP0);
    }
    let (addr, mut d) = e.read_desc(sel, Exception::gp(sel_err(sel)))?;
    if !d.is_code()
        || rpl < cpl
        || (d.conforming() && d.dpl() > rpl)
        || (!d.conforming() && d.dpl() != rpl)
    {
        return Err(Exception::gp(sel_err(sel)));
    }
    if !d.present() {
        return Err(Exception::np(sel_err(sel)));
    }
    if ip > d.limit() as u64 {
        return Err(Exception::GP0);
    }
    if rpl > cpl {
        let sp = e.peek::<W>(2 * n + imm)?.to_u64();
        let ss = e.peek::<W>(3 * n + imm)?.to_u64() as u16;
        let saved = (e.s.seg, e.s.regs[RSP], e.s.cpl);
        e.s.cpl = rpl;
        if let Err(x) = e.load_stack_seg_checked(ss, rpl) {
            (e.s.seg, e.s.regs[RSP], e.s.cpl) = saved;
            return Err(x);
        }
        let m = e.sp_mask();
        e.s.regs[RSP] = (e.s.regs[RSP] & !m) | (sp.wrapping_add(imm) & m);
        e.set_accessed(addr, &mut d)?;
        e.s.seg[CS] = d.to_segment(sel);
        e.s.rip = ip;
        e.null_inaccessible_segs();
    } else {
        let sp = e.sp().wrapping_add(2 * n + imm);
        e.set_sp(sp);
        e.set_accessed(addr, &mut d)?;
        e.s.seg[CS] = d.to_segment(sel);
        e.s.rip = ip;
    }
    Ok(())
}
