//! System instructions: descriptor tables (LGDT, LIDT, LLDT, LTR and their stores),
//! control and debug registers, LMSW/SMSW/CLTS, INVLPG, caches, HLT, CLI/STI,
//! CPUID, RDTSC, RDMSR/WRMSR, and the protection queries ARPL, LAR, LSL, VERR, VERW.

use iced_x86::{Instruction, Mnemonic, OpKind, Register};

use crate::exception::{Exception, Fault};
use crate::state::{Segment, CR0_ET, CR0_PE, CR0_PG, CR0_TS, IF, RAX, RBX, RCX, RDX, ZF};
use crate::Exec;

use super::operand::{reg_read, reg_write};
use super::segment::{sel_err, Desc};

/// CR4 bits ox86 implements: TSD, DE, PSE, PAE, MCE, PGE, PCE, OSFXSR, OSXMMEXCPT.
const CR4_SUPPORTED: u64 = (1 << 2)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | (1 << 8)
    | (1 << 9)
    | (1 << 10);

impl Exec<'_> {
    /// #GP(0) unless at CPL 0 (real mode counts as CPL 0; V86 as CPL 3).
    #[inline]
    pub fn require_cpl0(&self) -> Fault {
        if self.s.protected() && (self.s.cpl != 0 || self.s.v86()) {
            return Err(Exception::GP0);
        }
        Ok(())
    }

    /// #UD in real and V86 mode (for LLDT, LTR, LAR, ...).
    fn require_protected(&self) -> Fault {
        if !self.s.protected() || self.s.v86() {
            return Err(Exception::UD);
        }
        Ok(())
    }

    /// Writes CR0 with the architectural checks and side effects.
    pub fn write_cr0(&mut self, v: u64) -> Fault {
        let v = (v & 0xe005_003f) | CR0_ET;
        if v & CR0_PG != 0 && v & CR0_PE == 0 {
            return Err(Exception::GP0);
        }
        // NW without CD is invalid.
        if v & (1 << 29) != 0 && v & (1 << 30) == 0 {
            return Err(Exception::GP0);
        }
        let old = self.s.cr0;
        self.s.cr0 = v;
        if (old ^ v) & (CR0_PG | CR0_PE | crate::state::CR0_WP) != 0 {
            self.flush_tlb();
        }
        if v & CR0_PE == 0 {
            self.s.cpl = 0;
        }
        Ok(())
    }

    /// Writes CR4.
    pub fn write_cr4(&mut self, v: u64) -> Fault {
        if v & !CR4_SUPPORTED != 0 {
            return Err(Exception::GP0);
        }
        let old = self.s.cr4;
        self.s.cr4 = v;
        if (old ^ v) & ((1 << 4) | (1 << 5) | (1 << 7)) != 0 {
            self.flush_tlb();
        }
        Ok(())
    }

    /// Writes CR3: flushes the TLB except global pages.
    pub fn write_cr3(&mut self, v: u64) {
        self.s.cr3 = v & 0xffff_ffff;
        self.tlb.flush_nonglobal();
    }
}

/// LGDT, LIDT.
pub fn exec_lgdt_lidt(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    e.require_cpl0()?;
    if i.op_kind(0) != OpKind::Memory {
        return Err(Exception::UD);
    }
    let (seg, off) = e.mem_operand(i);
    let limit = e.read::<u16>(seg, off)? as u32;
    let mut base = e.read::<u32>(seg, (off + 2) & super::operand::addr_mask(i))? as u64;
    if i.code_size() != iced_x86::CodeSize::Code64 && is_16bit_opsize(i) {
        base &= 0x00ff_ffff;
    }
    let t = if i.mnemonic() == Mnemonic::Lgdt {
        &mut e.s.gdtr
    } else {
        &mut e.s.idtr
    };
    t.base = base;
    t.limit = limit;
    Ok(())
}

fn is_16bit_opsize(i: &Instruction) -> bool {
    matches!(
        i.code(),
        iced_x86::Code::Lgdt_m1632_16
            | iced_x86::Code::Lidt_m1632_16
            | iced_x86::Code::Sgdt_m1632_16
            | iced_x86::Code::Sidt_m1632_16
    )
}

/// SGDT, SIDT.
pub fn exec_sgdt_sidt(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    if i.op_kind(0) != OpKind::Memory {
        return Err(Exception::UD);
    }
    let t = if i.mnemonic() == Mnemonic::Sgdt {
        e.s.gdtr
    } else {
        e.s.idtr
    };
    let (seg, off) = e.mem_operand(i);
    e.probe_write(seg, off, 6)?;
    e.write::<u16>(seg, off, t.limit as u16)?;
    e.write::<u32>(seg, (off + 2) & super::operand::addr_mask(i), t.base as u32)
}

/// SLDT, STR, SMSW: register destinations get the zero-extended value.
pub fn exec_store_sys(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let v = match i.mnemonic() {
        Mnemonic::Sldt => {
            e.require_protected()?;
            e.s.ldtr.selector as u64
        }
        Mnemonic::Str => {
            e.require_protected()?;
            e.s.tr.selector as u64
        }
        _ => e.s.cr0 & 0xffff_ffff,
    };
    match i.op_kind(0) {
        OpKind::Register => {
            let r = i.op0_register();
            let v = if r.size() == 2 { v & 0xffff } else { v };
            reg_write(e.s, r, v);
            Ok(())
        }
        _ => e.wr::<u16>(i, 0, v as u16),
    }
}

/// LLDT.
pub fn exec_lldt(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    e.require_protected()?;
    e.require_cpl0()?;
    let sel = e.rd::<u16>(i, 0)?;
    if sel & 0xfffc == 0 {
        e.s.ldtr = Segment {
            selector: sel,
            ..Default::default()
        };
        return Ok(());
    }
    if sel & 4 != 0 {
        return Err(Exception::gp(sel_err(sel)));
    }
    let (_, d) = e.read_desc(sel, Exception::gp(sel_err(sel)))?;
    if d.s() || d.typ() != 2 {
        return Err(Exception::gp(sel_err(sel)));
    }
    if !d.present() {
        return Err(Exception::np(sel_err(sel)));
    }
    e.s.ldtr = d.to_segment(sel);
    e.s.ldtr.attr = d.attr();
    Ok(())
}

/// LTR: loads TR and marks the TSS busy.
pub fn exec_ltr(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    e.require_protected()?;
    e.require_cpl0()?;
    let sel = e.rd::<u16>(i, 0)?;
    if sel & 0xfffc == 0 || sel & 4 != 0 {
        return Err(Exception::gp(sel_err(sel)));
    }
    let (addr, d) = e.read_desc(sel, Exception::gp(sel_err(sel)))?;
    if !super::task::is_available_tss(&d) {
        return Err(Exception::gp(sel_err(sel)));
    }
    if !d.present() {
        return Err(Exception::np(sel_err(sel)));
    }
    let b: u8 = e.read_sys(addr + 5)?;
    e.write_sys::<u8>(addr + 5, b | 2)?;
    let mut nd = d;
    nd.0 |= 2 << 40;
    e.s.tr = nd.to_segment(sel);
    e.s.tr.attr = nd.attr();
    Ok(())
}

/// LMSW: loads CR0 bits 0-3; can set PE but not clear it.
pub fn exec_lmsw(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    e.require_cpl0()?;
    let v = e.rd::<u16>(i, 0)? as u64;
    let pe = (e.s.cr0 | v) & CR0_PE;
    let new = (e.s.cr0 & !0xe) | (v & 0xe) | pe;
    e.write_cr0(new)
}

/// CLTS.
pub fn exec_clts(e: &mut Exec<'_>, _i: &Instruction) -> Fault {
    e.require_cpl0()?;
    e.s.cr0 &= !CR0_TS;
    Ok(())
}

/// MOV to or from CR0, CR2, CR3, CR4 (and CR8 in long mode).
pub fn exec_mov_cr(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    e.require_cpl0()?;
    let to_cr = i.op0_register().is_cr();
    let cr = if to_cr {
        i.op0_register()
    } else {
        i.op1_register()
    };
    if to_cr {
        let v = reg_read(e.s, i.op1_register());
        match cr {
            Register::CR0 => e.write_cr0(v)?,
            Register::CR2 => e.s.cr2 = v,
            Register::CR3 => e.write_cr3(v),
            Register::CR4 => e.write_cr4(v)?,
            _ => return Err(Exception::UD),
        }
    } else {
        let v = match cr {
            Register::CR0 => e.s.cr0,
            Register::CR2 => e.s.cr2,
            Register::CR3 => e.s.cr3,
            Register::CR4 => e.s.cr4,
            _ => return Err(Exception::UD),
        };
        reg_write(e.s, i.op0_register(), v);
    }
    Ok(())
}

/// MOV to or from DR0-DR7 (DR4/DR5 alias DR6/DR7 unless CR4.DE).
pub fn exec_mov_dr(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    e.require_cpl0()?;
    let to_dr = i.op0_register().is_dr();
    let dr = if to_dr {
        i.op0_register()
    } else {
        i.op1_register()
    };
    let mut n = dr as usize - Register::DR0 as usize;
    if n == 4 || n == 5 {
        if e.s.cr4 & (1 << 3) != 0 {
            return Err(Exception::UD);
        }
        n += 2;
    }
    if n > 7 {
        return Err(Exception::UD);
    }
    if to_dr {
        let v = reg_read(e.s, i.op1_register()) & 0xffff_ffff;
        e.s.dr[n] = match n {
            6 => v | 0xffff_0ff0,
            7 => (v | 0x400) & !0x2000,
            _ => v,
        };
        // Pages holding data breakpoints must leave the TLB fast path (and the others
        // may return to it).
        if n != 6 {
            e.flush_tlb();
        }
    } else {
        reg_write(e.s, i.op0_register(), e.s.dr[n]);
    }
    Ok(())
}

/// INVLPG m.
pub fn exec_invlpg(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    e.require_cpl0()?;
    if i.op_kind(0) != OpKind::Memory {
        return Err(Exception::UD);
    }
    let (seg, off) = e.mem_operand(i);
    let lin = e.s.seg[seg].base.wrapping_add(off) & 0xffff_ffff;
    // Large pages are cached as 4 KiB pieces: flush everything to be safe.
    let large = e.s.cr4 & ((1 << 4) | (1 << 5)) != 0;
    e.tlb.flush_page(lin, large);
    Ok(())
}

/// WBINVD, INVD: caches are not modelled.
pub fn exec_wbinvd(e: &mut Exec<'_>, _i: &Instruction) -> Fault {
    e.require_cpl0()
}

/// HLT.
pub fn exec_hlt(e: &mut Exec<'_>, _i: &Instruction) -> Fault {
    e.require_cpl0()?;
    e.s.halted = 1;
    Ok(())
}

/// CLI and STI with the IOPL rules (no VME/PVI).
pub fn exec_cli_sti(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    if e.s.protected() && e.s.cpl > e.s.iopl() || e.s.v86() && e.s.iopl() < 3 {
        return Err(Exception::GP0);
    }
    if i.mnemonic() == Mnemonic::Cli {
        e.s.flags &= !IF;
    } else {
        if e.s.flags & IF == 0 {
            e.s.irq_shadow = 1;
        }
        e.s.flags |= IF;
    }
    Ok(())
}

/// CPUID.
pub fn exec_cpuid(e: &mut Exec<'_>, _i: &Instruction) -> Fault {
    let r = crate::cpuid::cpuid(e.s.regs[RAX] as u32, e.s.regs[RCX] as u32);
    for (reg, v) in [RAX, RBX, RCX, RDX].into_iter().zip(r) {
        e.s.regs[reg] = v as u64;
    }
    Ok(())
}

impl Exec<'_> {
    /// The time-stamp counter: the machine's clock at this instruction, plus the
    /// guest's IA32_TSC adjustment.
    pub fn tsc(&mut self) -> u64 {
        self.io
            .tsc(self.s.icount)
            .wrapping_add(self.s.msr.tsc_offset)
    }
}

/// RDTSC (CR4.TSD makes it privileged).
pub fn exec_rdtsc(e: &mut Exec<'_>, _i: &Instruction) -> Fault {
    if e.s.cr4 & (1 << 2) != 0 {
        e.require_cpl0()?;
    }
    let t = e.tsc();
    e.s.regs[RAX] = t & 0xffff_ffff;
    e.s.regs[RDX] = t >> 32;
    Ok(())
}

/// RDMSR.
pub fn exec_rdmsr(e: &mut Exec<'_>, _i: &Instruction) -> Fault {
    e.require_cpl0()?;
    let m = &e.s.msr;
    let v = match e.s.regs[RCX] as u32 {
        0x10 => e.tsc(),
        // IA32_TSC_ADJUST: what has been added to the TSC since reset.
        0x3b => m.tsc_offset,
        0x1b => m.apic_base,
        0x174 => m.sysenter_cs,
        0x175 => m.sysenter_esp,
        0x176 => m.sysenter_eip,
        0x1a0 => m.misc_enable,
        0x8b => m.bios_sign_id,
        0x186 | 0x187 => m.perf[(e.s.regs[RCX] as usize) - 0x186],
        0xc1 | 0xc2 => m.perf[2 + (e.s.regs[RCX] as usize) - 0xc1],
        _ => return Err(Exception::GP0),
    };
    e.s.regs[RAX] = v & 0xffff_ffff;
    e.s.regs[RDX] = v >> 32;
    Ok(())
}

/// WRMSR.
pub fn exec_wrmsr(e: &mut Exec<'_>, _i: &Instruction) -> Fault {
    e.require_cpl0()?;
    let v = (e.s.regs[RDX] & 0xffff_ffff) << 32 | (e.s.regs[RAX] & 0xffff_ffff);
    let tsc_now = e.io.tsc(e.s.icount);
    let ecx = e.s.regs[RCX] as u32;
    let m = &mut e.s.msr;
    match ecx {
        // Writing IA32_TSC changes IA32_TSC_ADJUST by the same amount, and the other
        // way round: the two are one offset.
        0x10 => m.tsc_offset = v.wrapping_sub(tsc_now),
        0x3b => m.tsc_offset = v,
        0x1b => m.apic_base = v,
        0x174 => m.sysenter_cs = v & 0xffff,
        0x175 => m.sysenter_esp = v,
        0x176 => m.sysenter_eip = v,
        0x1a0 => m.misc_enable = v,
        // Writing 0 then executing CPUID(1) loads the signature; none is loaded here.
        0x8b => m.bios_sign_id = 0,
        0x186 | 0x187 => m.perf[(ecx as usize) - 0x186] = v & 0xffff_ffff,
        0xc1 | 0xc2 => m.perf[2 + (ecx as usize) - 0xc1] = v & 0xff_ffff_ffff,
        _ => return Err(Exception::GP0),
    }
    Ok(())
}

/// RDPMC: the P6 performance counters PERFCTR0/1 (CR4.PCE lets CPL 3 read them).
pub fn exec_rdpmc(e: &mut Exec<'_>, _i: &Instruction) -> Fault {
    if e.s.cr4 & (1 << 8) == 0 {
        e.require_cpl0()?;
    }
    let v = match e.s.regs[RCX] as u32 {
        0 => e.s.msr.perf[2],
        1 => e.s.msr.perf[3],
        _ => return Err(Exception::GP0),
    };
    e.s.regs[RAX] = v & 0xffff_ffff;
    e.s.regs[RDX] = (v >> 32) & 0xff;
    Ok(())
}

/// ARPL r/m16, r16.
pub fn exec_arpl(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    e.require_protected()?;
    let src = reg_read(e.s, i.op1_register()) as u16;
    let adj = e.rmw::<u16, bool>(i, |_, d| {
        if d & 3 < src & 3 {
            (Some((d & !3) | (src & 3)), true)
        } else {
            (None, false)
        }
    })?;
    e.s.set_arith_flags(ZF, if adj { ZF } else { 0 });
    Ok(())
}

/// LAR, LSL, VERR, VERW: protection queries that set ZF.
pub fn exec_prot_query(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    e.require_protected()?;
    let mn = i.mnemonic();
    let src_n = if matches!(mn, Mnemonic::Verr | Mnemonic::Verw) {
        0
    } else {
        1
    };
    let sel = e.rd::<u16>(i, src_n)?;
    let desc = if sel & 0xfffc == 0 {
        None
    } else {
        e.desc_addr(sel).map(|a| (a, sel))
    };
    let d = match desc {
        Some((a, _)) => Some(Desc(e.read_sys::<u64>(a)?)),
        None => None,
    };
    let cpl = e.s.cpl;
    let rpl = (sel & 3) as u32;
    let visible = |d: &Desc| d.conforming() || (d.dpl() >= cpl && d.dpl() >= rpl);
    let ok = match (mn, d) {
        (_, None) => None,
        (Mnemonic::Lar, Some(d)) => {
            let sys_ok = !d.s() && matches!(d.typ(), 1 | 2 | 3 | 4 | 5 | 9 | 11 | 12);
            ((d.s() || sys_ok) && visible(&d)).then_some((d.0 >> 32) & 0x00f0_ff00)
        }
        (Mnemonic::Lsl, Some(d)) => {
            let sys_ok = !d.s() && matches!(d.typ(), 1 | 2 | 3 | 9 | 11);
            ((d.s() || sys_ok) && visible(&d)).then(|| d.limit() as u64)
        }
        (Mnemonic::Verr, Some(d)) => (d.s() && d.readable() && visible(&d)).then_some(0),
        (_, Some(d)) => (d.writable() && visible(&d)).then_some(0),
    };
    match ok {
        Some(v) => {
            if matches!(mn, Mnemonic::Lar | Mnemonic::Lsl) {
                let r = i.op0_register();
                let v = if r.size() == 2 { v & 0xffff } else { v };
                reg_write(e.s, r, v);
            }
            e.s.set_arith_flags(ZF, ZF);
        }
        None => e.s.set_arith_flags(ZF, 0),
    }
    Ok(())
}

/// Instructions that always raise #UD (UD0, UD1, UD2, and anything ox86 does not implement).
pub fn exec_ud(_e: &mut Exec<'_>, _i: &Instruction) -> Fault {
    Err(Exception::UD)
}
