//! The registers GDB sees, and the target description that names them.
//!
//! The `g` packet holds GDB's i386 core registers (`org.gnu.gdb.i386.core`: the eight
//! GPRs, EIP, EFLAGS, the six selectors, ST0-ST7 and the x87 control registers), then
//! ox86's system registers in a feature of their own (`org.ox86.i386.system`: CR0-CR4,
//! EFER, the descriptor-table registers, LDTR and TR, every segment's descriptor
//! cache, DR0-DR7 and the instruction count). The description is made when GDB asks
//! for it, for the CPU's mode then: `i8086` in real mode (so GDB disassembles 16-bit
//! code), `i386` otherwise, with the same registers in both, so the `g` packet keeps
//! its size when the guest changes mode.

use std::fmt::Write as _;
use std::num::NonZeroUsize;

use gdbstub::arch::{Arch, RegId, Registers};
use ox86_cpu::state::{CR0_PE, CS, DS, ES, FS, GS, SS};
use ox86_cpu::CpuState;

/// ox86's x86 for gdbstub: 32-bit addresses, the registers below.
#[derive(Debug)]
pub enum X86System {}

/// No single-register access: GDB reads and writes the whole `g` packet.
#[derive(Debug)]
pub struct NoRegId;

impl RegId for NoRegId {
    fn from_raw_id(_id: usize) -> Option<(Self, Option<NonZeroUsize>)> {
        None
    }
}

impl Arch for X86System {
    type Usize = u32;
    type Registers = Regs;
    type RegId = NoRegId;
    type BreakpointKind = usize;

    fn target_description_xml() -> Option<&'static str> {
        // Made per mode by the target (`TargetDescriptionXmlOverride`).
        None
    }
}

/// The selectors in the `g` packet's order (CS, SS, DS, ES, FS, GS).
const SELECTORS: [usize; 6] = [CS, SS, DS, ES, FS, GS];
/// Names and state indices of the segment caches in the system feature.
const CACHES: [(&str, usize); 6] = [
    ("es", ES),
    ("cs", CS),
    ("ss", SS),
    ("ds", DS),
    ("fs", FS),
    ("gs", GS),
];

/// The registers of the `g` packet, as bytes in its order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Regs {
    /// The packet's bytes.
    pub bytes: Vec<u8>,
}

/// The core feature's size in bytes.
const CORE_BYTES: usize = 16 * 4 + 8 * 10 + 8 * 4;

impl Regs {
    /// The registers of CPU state `s`.
    pub fn of(s: &CpuState) -> Regs {
        let mut b = Vec::with_capacity(CORE_BYTES + 200);
        let u32s = |b: &mut Vec<u8>, v: u64| b.extend_from_slice(&(v as u32).to_le_bytes());
        // GDB's order: eax ecx edx ebx esp ebp esi edi.
        for r in 0..8 {
            u32s(&mut b, s.regs[r]);
        }
        u32s(&mut b, s.rip);
        u32s(&mut b, s.eflags());
        for k in SELECTORS {
            u32s(&mut b, s.seg[k].selector as u64);
        }
        for i in 0..8 {
            let v = s.fpu.st(i);
            b.extend_from_slice(&v.signif.to_le_bytes());
            b.extend_from_slice(&v.sign_exp.to_le_bytes());
        }
        let f = &s.fpu;
        for v in [
            f.fcw() as u64,
            f.fsw() as u64,
            f.ftw_full() as u64,
            f.fcs as u64,
            f.fip,
            f.fds as u64,
            f.fdp,
            f.fop as u64,
        ] {
            u32s(&mut b, v);
        }
        debug_assert_eq!(b.len(), CORE_BYTES);
        for v in [s.cr0, s.cr2, s.cr3, s.cr4] {
            u32s(&mut b, v);
        }
        b.extend_from_slice(&s.efer.to_le_bytes());
        for v in [
            s.gdtr.base,
            s.gdtr.limit as u64,
            s.idtr.base,
            s.idtr.limit as u64,
            s.ldtr.selector as u64,
            s.tr.selector as u64,
        ] {
            u32s(&mut b, v);
        }
        let caches = CACHES
            .iter()
            .map(|&(_, k)| &s.seg[k])
            .chain([&s.ldtr, &s.tr]);
        for g in caches {
            u32s(&mut b, g.base);
            u32s(&mut b, g.limit as u64);
            u32s(&mut b, g.attr as u64);
        }
        for i in [0, 1, 2, 3, 6, 7] {
            u32s(&mut b, s.dr[i]);
        }
        b.extend_from_slice(&s.icount.to_le_bytes());
        Regs { bytes: b }
    }

    /// Writes what GDB may change back into `s`: the GPRs, EIP, the status flags and
    /// DF, TF, IF of EFLAGS, ST0-ST7 and the x87 control word. Selectors and system
    /// registers are shown, not written (a selector alone is not a segment).
    pub fn apply(&self, s: &mut CpuState) {
        let b = &self.bytes;
        if b.len() < CORE_BYTES {
            return;
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as u64;
        for r in 0..8 {
            s.regs[r] = (s.regs[r] & !0xffff_ffff) | u32_at(4 * r);
        }
        s.rip = u32_at(32);
        // CF PF AF ZF SF TF IF DF OF.
        const WRITABLE: u64 = 0xfd5;
        s.set_arith_flags(WRITABLE, u32_at(36));
        for i in 0..8 {
            let o = 64 + 10 * i;
            let mut sig = [0u8; 8];
            sig.copy_from_slice(&b[o..o + 8]);
            let mut v = s.fpu.st(i);
            v.signif = u64::from_le_bytes(sig);
            v.sign_exp = u16::from_le_bytes([b[o + 8], b[o + 9]]);
            if v != s.fpu.st(i) {
                s.fpu.set_st(i, v);
            }
        }
        let fcw = u32_at(144) as u16;
        if fcw != s.fpu.fcw() {
            s.fpu.set_fcw(fcw);
        }
    }
}

impl Registers for Regs {
    type ProgramCounter = u32;

    fn pc(&self) -> u32 {
        self.bytes
            .get(32..36)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        for &b in &self.bytes {
            write_byte(Some(b));
        }
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        if bytes.len() < CORE_BYTES {
            return Err(());
        }
        self.bytes = bytes.to_vec();
        Ok(())
    }
}

/// The target description for CPU state `s` (see the module's documentation).
pub fn target_xml(s: &CpuState) -> String {
    let arch = if s.cr0 & CR0_PE == 0 { "i8086" } else { "i386" };
    let mut x = String::new();
    let _ = write!(
        x,
        r#"<?xml version="1.0"?>
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<target version="1.0">
<architecture>{arch}</architecture>
<feature name="org.gnu.gdb.i386.core">
<flags id="i386_eflags" size="4">
<field name="" start="22" end="31"/>
<field name="CF" start="0" end="0"/>
<field name="" start="1" end="1"/>
<field name="PF" start="2" end="2"/>
<field name="AF" start="4" end="4"/>
<field name="ZF" start="6" end="6"/>
<field name="SF" start="7" end="7"/>
<field name="TF" start="8" end="8"/>
<field name="IF" start="9" end="9"/>
<field name="DF" start="10" end="10"/>
<field name="OF" start="11" end="11"/>
<field name="NT" start="14" end="14"/>
<field name="RF" start="16" end="16"/>
<field name="VM" start="17" end="17"/>
<field name="AC" start="18" end="18"/>
<field name="VIF" start="19" end="19"/>
<field name="VIP" start="20" end="20"/>
<field name="ID" start="21" end="21"/>
</flags>
"#
    );
    for (i, r) in ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"]
        .iter()
        .enumerate()
    {
        let ty = if i == 4 || i == 5 {
            "data_ptr"
        } else {
            "int32"
        };
        let _ = writeln!(x, r#"<reg name="{r}" bitsize="32" type="{ty}"/>"#);
    }
    x.push_str(
        r#"<reg name="eip" bitsize="32" type="code_ptr"/>
<reg name="eflags" bitsize="32" type="i386_eflags"/>
"#,
    );
    for r in ["cs", "ss", "ds", "es", "fs", "gs"] {
        let _ = writeln!(x, r#"<reg name="{r}" bitsize="32" type="int32"/>"#);
    }
    for i in 0..8 {
        let _ = writeln!(x, r#"<reg name="st{i}" bitsize="80" type="i387_ext"/>"#);
    }
    for r in [
        "fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop",
    ] {
        let _ = writeln!(
            x,
            r#"<reg name="{r}" bitsize="32" type="int" group="float"/>"#
        );
    }
    x.push_str("</feature>\n<feature name=\"org.ox86.i386.system\">\n");
    let sys = |x: &mut String, name: &str, bits: u32| {
        let _ = writeln!(
            x,
            r#"<reg name="{name}" bitsize="{bits}" type="uint{bits}" group="system"/>"#
        );
    };
    for r in ["cr0", "cr2", "cr3", "cr4"] {
        sys(&mut x, r, 32);
    }
    sys(&mut x, "efer", 64);
    for r in [
        "gdtr_base",
        "gdtr_limit",
        "idtr_base",
        "idtr_limit",
        "ldtr",
        "tr",
    ] {
        sys(&mut x, r, 32);
    }
    for name in CACHES.iter().map(|c| c.0).chain(["ldtr", "tr"]) {
        for part in ["base", "limit", "attr"] {
            sys(&mut x, &format!("{name}_{part}"), 32);
        }
    }
    for r in ["dr0", "dr1", "dr2", "dr3", "dr6", "dr7"] {
        sys(&mut x, r, 32);
    }
    sys(&mut x, "icount", 64);
    x.push_str("</feature>\n</target>\n");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packet_has_every_register_the_description_names() {
        let s = CpuState::reset();
        let regs = Regs::of(&s);
        let xml = target_xml(&s);
        let bits: usize = xml
            .lines()
            .filter(|l| l.starts_with("<reg "))
            .map(|l| {
                let v = l.split("bitsize=\"").nth(1).unwrap();
                v[..v.find('"').unwrap()].parse::<usize>().unwrap()
            })
            .sum();
        assert_eq!(bits / 8, regs.bytes.len());
        assert!(xml.contains("<architecture>i8086</architecture>"));
        let mut p = s.clone();
        p.cr0 |= CR0_PE;
        assert!(target_xml(&p).contains("<architecture>i386</architecture>"));
        assert_eq!(target_xml(&p).len() + 1, xml.len(), "the same registers");
    }

    #[test]
    fn writes_change_only_what_gdb_may_change() {
        let mut s = CpuState::reset();
        let mut regs = Regs::of(&s);
        regs.bytes[0..4].copy_from_slice(&0x1234_5678u32.to_le_bytes());
        regs.bytes[32..36].copy_from_slice(&0xabcdu32.to_le_bytes());
        regs.bytes[36..40].copy_from_slice(&0x0000_0041u32.to_le_bytes()); // ZF, CF
        regs.bytes[40..44].copy_from_slice(&0x99u32.to_le_bytes()); // CS selector
        regs.apply(&mut s);
        assert_eq!(s.regs[0], 0x1234_5678);
        assert_eq!(s.rip, 0xabcd);
        assert_eq!(s.eflags() & 0xfd5, 0x41);
        assert_eq!(s.seg[CS].selector, 0xf000, "selectors are not written");
        assert_eq!(Regs::of(&s).pc(), 0xabcd);
    }
}
