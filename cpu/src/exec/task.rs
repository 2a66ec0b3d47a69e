//! Hardware task switches through TSS descriptors and task gates (JMP, CALL, INT
//! through a task gate, IRET with NT set), for 32-bit and 16-bit TSSs.

use crate::exception::{Exception, Fault};
use crate::state::{attr, Segment, CR0_PG, CR0_TS, CS, DS, ES, FS, GS, NT, RF, SS, VM};
use crate::Exec;

use super::segment::{sel_err, Desc};

/// What started a task switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchKind {
    /// JMP to a TSS or task gate.
    Jmp,
    /// CALL, INT or an exception through a task gate: nests.
    Call,
    /// IRET with NT set: returns to the back-linked task.
    Iret,
}

impl Exec<'_> {
    /// Switches to the task whose TSS selector is `sel`.
    pub fn task_switch(&mut self, sel: u16, kind: SwitchKind, ext: Option<u32>) -> Fault {
        let ext = ext.unwrap_or(0);
        if sel & 4 != 0 || sel & 0xfffc == 0 {
            return Err(Exception::ts(sel_err(sel) + ext));
        }
        let (daddr, d) = self.read_desc(sel, Exception::ts(sel_err(sel) + ext))?;
        let typ = d.typ();
        let busy_ok = kind == SwitchKind::Iret;
        let valid = if busy_ok {
            matches!(typ, 3 | 11)
        } else {
            matches!(typ, 1 | 9)
        };
        if d.s() || !valid {
            return Err(if busy_ok {
                Exception::ts(sel_err(sel) + ext)
            } else {
                Exception::gp(sel_err(sel) + ext)
            });
        }
        if !d.present() {
            return Err(Exception::np(sel_err(sel) + ext));
        }
        let new_big = typ & 8 != 0;
        if d.limit() < if new_big { 0x67 } else { 0x2b } {
            return Err(Exception::ts(sel_err(sel) + ext));
        }
        let nb = d.base();

        // Read the new task's state first (faults here leave the old task intact).
        let mut regs = [0u64; 8];
        let mut sels = [0u16; 6];
        let (eip, eflags, ldt, cr3);
        if new_big {
            cr3 = self.read_sys::<u32>(nb + 0x1c)? as u64;
            eip = self.read_sys::<u32>(nb + 0x20)? as u64;
            eflags = self.read_sys::<u32>(nb + 0x24)? as u64;
            for (k, r) in regs.iter_mut().enumerate() {
                *r = self.read_sys::<u32>(nb + 0x28 + 4 * k as u64)? as u64;
            }
            for (k, s) in sels.iter_mut().enumerate() {
                *s = self.read_sys::<u16>(nb + 0x48 + 4 * k as u64)?;
            }
            ldt = self.read_sys::<u16>(nb + 0x60)?;
        } else {
            cr3 = self.s.cr3;
            eip = self.read_sys::<u16>(nb + 0x0e)? as u64;
            eflags = self.read_sys::<u16>(nb + 0x10)? as u64 | (self.s.flags & !0xffff & !VM);
            for (k, r) in regs.iter_mut().enumerate() {
                *r = self.read_sys::<u16>(nb + 0x12 + 2 * k as u64)? as u64;
            }
            for (k, s) in sels.iter_mut().take(4).enumerate() {
                *s = self.read_sys::<u16>(nb + 0x22 + 2 * k as u64)?;
            }
            ldt = self.read_sys::<u16>(nb + 0x2a)?;
        }

        // Save the outgoing task.
        let old = self.s.tr;
        let ob = old.base;
        let mut out_flags = self.s.eflags();
        if kind == SwitchKind::Iret {
            out_flags &= !NT;
        }
        if old.attr & 8 != 0 {
            self.write_sys::<u32>(ob + 0x20, self.s.rip as u32)?;
            self.write_sys::<u32>(ob + 0x24, out_flags as u32)?;
            for k in 0..8 {
                self.write_sys::<u32>(ob + 0x28 + 4 * k as u64, self.s.regs[k] as u32)?;
            }
            for k in 0..6 {
                self.write_sys::<u16>(ob + 0x48 + 4 * k as u64, self.s.seg[k].selector)?;
            }
        } else {
            self.write_sys::<u16>(ob + 0x0e, self.s.rip as u16)?;
            self.write_sys::<u16>(ob + 0x10, out_flags as u16)?;
            for k in 0..8 {
                self.write_sys::<u16>(ob + 0x12 + 2 * k as u64, self.s.regs[k] as u16)?;
            }
            for k in 0..4 {
                self.write_sys::<u16>(ob + 0x22 + 2 * k as u64, self.s.seg[k].selector)?;
            }
        }
        // Busy bits and the back link.
        if kind != SwitchKind::Call {
            if let Some(oaddr) = self.desc_addr(old.selector) {
                let b: u8 = self.read_sys(oaddr + 5)?;
                self.write_sys::<u8>(oaddr + 5, b & !2)?;
            }
        }
        let mut new_flags = eflags | 2;
        if kind == SwitchKind::Call {
            self.write_sys::<u16>(nb, old.selector)?;
            new_flags |= NT;
        }
        if kind != SwitchKind::Iret {
            let b: u8 = self.read_sys(daddr + 5)?;
            self.write_sys::<u8>(daddr + 5, b | 2)?;
        }

        // Commit: from here on faults belong to the new task.
        let mut nd = d;
        nd.0 |= 2 << 40;
        self.s.tr = nd.to_segment(sel);
        self.s.tr.attr = nd.attr();
        self.s.cr0 |= CR0_TS;
        if new_big && self.s.cr0 & CR0_PG != 0 && cr3 != self.s.cr3 {
            self.s.cr3 = cr3;
            self.flush_tlb();
        }
        self.s.rip = eip;
        self.s.lazy_op = 0;
        self.s.flags = new_flags & !RF;
        for (k, r) in regs.iter().enumerate() {
            self.s.regs[k] = *r;
        }
        // Selectors first (so that a fault shows them), then the descriptor caches.
        for (k, &s) in sels.iter().enumerate() {
            self.s.seg[k] = Segment {
                selector: s,
                ..Default::default()
            };
        }
        self.load_ldt_for_task(ldt, ext)?;
        if self.s.flags & VM != 0 {
            self.s.cpl = 3;
            for (k, &s) in sels.iter().enumerate() {
                self.s.seg[k] = Segment::real(s);
                self.s.seg[k].attr |= 3 << attr::DPL_SHIFT;
                if k == CS {
                    self.s.seg[k].attr |= attr::CODE;
                }
                self.s.seg[k].update_rights();
            }
            return Ok(());
        }
        self.s.cpl = (sels[CS] & 3) as u32;
        self.load_task_seg(CS, sels[CS], ext)?;
        self.load_task_seg(SS, sels[SS], ext)?;
        for k in [ES, DS, FS, GS] {
            self.load_task_seg(k, sels[k], ext)?;
        }
        if eip > self.s.seg[CS].limit as u64 {
            return Err(Exception::GP0);
        }
        Ok(())
    }

    fn load_ldt_for_task(&mut self, sel: u16, ext: u32) -> Fault {
        if sel & 0xfffc == 0 {
            self.s.ldtr = Segment {
                selector: sel,
                ..Default::default()
            };
            return Ok(());
        }
        if sel & 4 != 0 {
            return Err(Exception::ts(sel_err(sel) + ext));
        }
        let (_, d) = self.read_desc(sel, Exception::ts(sel_err(sel) + ext))?;
        if d.s() || d.typ() != 2 {
            return Err(Exception::ts(sel_err(sel) + ext));
        }
        if !d.present() {
            return Err(Exception::ts(sel_err(sel) + ext));
        }
        self.s.ldtr = d.to_segment(sel);
        self.s.ldtr.attr = d.attr();
        Ok(())
    }

    fn load_task_seg(&mut self, seg: usize, sel: u16, ext: u32) -> Fault {
        let ts = Exception::ts(sel_err(sel) + ext);
        if sel & 0xfffc == 0 {
            if seg == CS || seg == SS {
                return Err(ts);
            }
            self.s.seg[seg] = Segment {
                selector: sel,
                ..Default::default()
            };
            return Ok(());
        }
        let (addr, mut d) = self.read_desc(sel, ts)?;
        let cpl = self.s.cpl;
        let rpl = (sel & 3) as u32;
        let ok = match seg {
            CS => {
                d.is_code()
                    && if d.conforming() {
                        d.dpl() <= cpl
                    } else {
                        d.dpl() == cpl
                    }
            }
            SS => d.writable() && d.dpl() == cpl && rpl == cpl,
            _ => d.readable() && (d.conforming() || (d.dpl() >= cpl && d.dpl() >= rpl)),
        };
        if !ok {
            return Err(ts);
        }
        if !d.present() {
            return Err(if seg == SS {
                Exception::ss(sel_err(sel) + ext)
            } else {
                Exception::np(sel_err(sel) + ext)
            });
        }
        self.set_accessed(addr, &mut d)?;
        self.s.seg[seg] = d.to_segment(sel);
        Ok(())
    }
}

/// Checks that a descriptor names a TSS (for LTR).
pub fn is_available_tss(d: &Desc) -> bool {
    !d.s() && matches!(d.typ(), 1 | 9)
}
