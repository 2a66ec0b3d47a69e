//! Segment descriptors and segment-register loads: MOV/POP to a segment register,
//! LDS/LES/LFS/LGS/LSS, with the protection checks of protected mode.

use iced_x86::Instruction;

use crate::access::Word;
use crate::exception::{Exception, Fault};
use crate::state::{attr, Segment, CS, SS};
use crate::Exec;

use super::operand::{reg_write, seg_index};

/// A raw 8-byte segment or gate descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc(pub u64);

impl Desc {
    /// Base address (segment descriptors).
    pub fn base(&self) -> u64 {
        let d = self.0;
        ((d >> 16) & 0xff_ffff) | (((d >> 56) & 0xff) << 24)
    }
    /// Limit in bytes, scaled by G.
    pub fn limit(&self) -> u32 {
        let d = self.0;
        let raw = ((d & 0xffff) | (((d >> 48) & 0xf) << 16)) as u32;
        if self.attr() & attr::G != 0 {
            (raw << 12) | 0xfff
        } else {
            raw
        }
    }
    /// Attribute bits 40..55 (type, S, DPL, P, AVL, L, D/B, G).
    pub fn attr(&self) -> u32 {
        ((self.0 >> 40) as u32) & 0xf0ff
    }
    /// The 4-bit type field.
    pub fn typ(&self) -> u32 {
        self.attr() & 0xf
    }
    /// Code/data (true) or system (false) descriptor.
    pub fn s(&self) -> bool {
        self.attr() & attr::S != 0
    }
    /// Present bit.
    pub fn present(&self) -> bool {
        self.attr() & attr::P != 0
    }
    /// Descriptor privilege level.
    pub fn dpl(&self) -> u32 {
        (self.attr() >> attr::DPL_SHIFT) & 3
    }
    /// A code segment.
    pub fn is_code(&self) -> bool {
        self.s() && self.attr() & attr::CODE != 0
    }
    /// A data segment.
    pub fn is_data(&self) -> bool {
        self.s() && self.attr() & attr::CODE == 0
    }
    /// A conforming code segment.
    pub fn conforming(&self) -> bool {
        self.is_code() && self.attr() & attr::DC != 0
    }
    /// Readable (code) or always (data).
    pub fn readable(&self) -> bool {
        self.is_data() || (self.is_code() && self.attr() & attr::RW != 0)
    }
    /// Writable data.
    pub fn writable(&self) -> bool {
        self.is_data() && self.attr() & attr::RW != 0
    }
    /// Gate: target selector.
    pub fn gate_selector(&self) -> u16 {
        (self.0 >> 16) as u16
    }
    /// Gate: target offset (32-bit gates; 286 gates use the low 16 bits only).
    pub fn gate_offset(&self) -> u64 {
        let d = self.0;
        let lo = d & 0xffff;
        if self.typ() & 8 != 0 {
            lo | ((d >> 32) & 0xffff_0000)
        } else {
            lo
        }
    }
    /// Call gate: parameter count.
    pub fn gate_params(&self) -> u32 {
        ((self.0 >> 32) & 0x1f) as u32
    }
    /// The segment cache contents for selector `sel`.
    pub fn to_segment(&self, sel: u16) -> Segment {
        let mut s = Segment {
            selector: sel,
            attr: self.attr(),
            base: self.base(),
            limit: self.limit(),
            ..Default::default()
        };
        s.update_rights();
        s
    }
}

/// The error code for a selector (with the EXT bit clear).
pub fn sel_err(sel: u16) -> u32 {
    (sel & 0xfffc) as u32
}

impl Exec<'_> {
    /// Linear address of the descriptor for `sel`, or None beyond the table limit.
    pub fn desc_addr(&self, sel: u16) -> Option<u64> {
        let index = (sel & !7) as u64;
        let (base, limit) = if sel & 4 != 0 {
            if self.s.ldtr.attr & attr::P == 0 {
                return None;
            }
            (self.s.ldtr.base, self.s.ldtr.limit as u64)
        } else {
            (self.s.gdtr.base, self.s.gdtr.limit as u64)
        };
        (index + 7 <= limit).then_some(base.wrapping_add(index))
    }

    /// Reads the descriptor for a non-null selector; `err` is raised beyond the limit.
    pub fn read_desc(&mut self, sel: u16, err: Exception) -> Fault<(u64, Desc)> {
        let addr = self.desc_addr(sel).ok_or(err)?;
        let d: u64 = self.read_sys(addr)?;
        Ok((addr, Desc(d)))
    }

    /// Sets the accessed bit of a code/data descriptor in memory.
    pub fn set_accessed(&mut self, addr: u64, d: &mut Desc) -> Fault {
        if d.0 & (1 << 40) == 0 {
            d.0 |= 1 << 40;
            let b: u8 = self.read_sys(addr + 5)?;
            self.write_sys::<u8>(addr + 5, b | 1)?;
        }
        Ok(())
    }

    /// Loads a data segment register (DS, ES, FS, GS, SS) as MOV/POP/LxS do.
    pub fn load_seg(&mut self, seg: usize, sel: u16) -> Fault {
        if !self.s.protected() || self.s.v86() {
            // Real mode keeps the limit (unreal mode) and makes the segment a present,
            // writable data segment; V86 mode also resets the limit to 64 KiB.
            let v86 = self.s.v86();
            let s = &mut self.s.seg[seg];
            if v86 {
                *s = Segment::real(sel);
                s.attr |= 3 << attr::DPL_SHIFT;
            } else {
                s.selector = sel;
                s.base = (sel as u64) << 4;
                s.attr =
                    (s.attr & (attr::G | attr::DB)) | attr::P | attr::S | attr::RW | attr::ACCESSED;
            }
            s.update_rights();
            return Ok(());
        }
        let cpl = self.s.cpl;
        let rpl = (sel & 3) as u32;
        if sel & 0xfffc == 0 {
            if seg == SS {
                return Err(Exception::GP0);
            }
            self.s.seg[seg] = Segment {
                selector: sel,
                ..Default::default()
            };
            self.s.seg[seg].update_rights();
            return Ok(());
        }
        let (addr, mut d) = self.read_desc(sel, Exception::gp(sel_err(sel)))?;
        if seg == SS {
            if rpl != cpl || d.dpl() != cpl || !d.writable() {
                return Err(Exception::gp(sel_err(sel)));
            }
            if !d.present() {
                return Err(Exception::ss(sel_err(sel)));
            }
        } else {
            if !d.readable() {
                return Err(Exception::gp(sel_err(sel)));
            }
            if (d.is_data() || !d.conforming()) && (rpl > d.dpl() || cpl > d.dpl()) {
                return Err(Exception::gp(sel_err(sel)));
            }
            if !d.present() {
                return Err(Exception::np(sel_err(sel)));
            }
        }
        self.set_accessed(addr, &mut d)?;
        self.s.seg[seg] = d.to_segment(sel);
        Ok(())
    }

    /// After a return to an outer privilege level: data segment registers that the new
    /// CPL may not use become null.
    pub fn null_inaccessible_segs(&mut self) {
        let cpl = self.s.cpl;
        for seg in [
            crate::state::ES,
            crate::state::DS,
            crate::state::FS,
            crate::state::GS,
        ] {
            let s = self.s.seg[seg];
            let dpl = s.dpl() as u32;
            let code = s.attr & attr::CODE != 0;
            let conforming = code && s.attr & attr::DC != 0;
            if s.attr & attr::S != 0 && !conforming && dpl < cpl {
                self.s.seg[seg] = Segment {
                    selector: 0,
                    ..Default::default()
                };
                self.s.seg[seg].update_rights();
            }
        }
    }
}

/// MOV Sreg, r/m16.
pub fn exec_mov_to_seg(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let seg = seg_index(i.op0_register());
    if seg == CS {
        return Err(Exception::UD);
    }
    let sel = e.rd::<u16>(i, 1)?;
    e.load_seg(seg, sel)?;
    if seg == SS {
        e.s.irq_shadow = 1;
    }
    Ok(())
}

/// MOV r/m, Sreg (a 32-bit register destination gets the zero-extended selector).
pub fn exec_mov_from_seg(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let sel = e.s.seg[seg_index(i.op1_register())].selector as u64;
    match i.op_kind(0) {
        iced_x86::OpKind::Register => {
            reg_write(e.s, i.op0_register(), sel);
            Ok(())
        }
        _ => e.wr::<u16>(i, 0, sel as u16),
    }
}

/// PUSH Sreg: a 32-bit push writes the selector in the low word.
pub fn exec_push_seg<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let sel = e.s.seg[seg_index(i.op0_register())].selector;
    if W::SIZE == 2 {
        return e.push::<u16>(sel);
    }
    let sp = e.sp().wrapping_sub(4) & e.sp_mask();
    e.probe_write(SS, sp, 4)?;
    e.write::<u16>(SS, sp, sel)?;
    e.set_sp(sp);
    Ok(())
}

/// POP Sreg.
pub fn exec_pop_seg<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let seg = seg_index(i.op0_register());
    let sel = e.peek::<W>(0)?.to_u64() as u16;
    e.load_seg(seg, sel)?;
    let sp = e.sp().wrapping_add(W::SIZE as u64);
    e.set_sp(sp);
    if seg == SS {
        e.s.irq_shadow = 1;
    }
    Ok(())
}

/// LDS, LES, LFS, LGS, LSS: load a far pointer into a segment register and a GPR.
pub fn exec_lxs<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    if i.op_kind(1) != iced_x86::OpKind::Memory {
        return Err(Exception::UD);
    }
    let seg = match i.mnemonic() {
        iced_x86::Mnemonic::Lds => crate::state::DS,
        iced_x86::Mnemonic::Les => crate::state::ES,
        iced_x86::Mnemonic::Lfs => crate::state::FS,
        iced_x86::Mnemonic::Lgs => crate::state::GS,
        _ => SS,
    };
    let (s, off) = e.mem_operand(i);
    let v = e.read::<W>(s, off)?;
    let sel = e.read::<u16>(s, (off + W::SIZE as u64) & super::operand::addr_mask(i))?;
    e.load_seg(seg, sel)?;
    reg_write(e.s, i.op0_register(), v.to_u64());
    Ok(())
}
