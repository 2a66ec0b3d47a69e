//! The architectural state of one x86 CPU, `#[repr(C)]` so that JIT code can reach
//! every field at an `offset_of!` offset.

use ox86_x87::X87State;

/// EFLAGS.CF
pub const CF: u64 = 1 << 0;
/// EFLAGS bit 1, always set.
pub const FIXED1: u64 = 1 << 1;
/// EFLAGS.PF
pub const PF: u64 = 1 << 2;
/// EFLAGS.AF
pub const AF: u64 = 1 << 4;
/// EFLAGS.ZF
pub const ZF: u64 = 1 << 6;
/// EFLAGS.SF
pub const SF: u64 = 1 << 7;
/// EFLAGS.TF
pub const TF: u64 = 1 << 8;
/// EFLAGS.IF
pub const IF: u64 = 1 << 9;
/// EFLAGS.DF
pub const DF: u64 = 1 << 10;
/// EFLAGS.OF
pub const OF: u64 = 1 << 11;
/// EFLAGS.IOPL (two bits)
pub const IOPL: u64 = 3 << 12;
/// EFLAGS.NT
pub const NT: u64 = 1 << 14;
/// EFLAGS.RF
pub const RF: u64 = 1 << 16;
/// EFLAGS.VM
pub const VM: u64 = 1 << 17;
/// EFLAGS.AC
pub const AC: u64 = 1 << 18;
/// EFLAGS.VIF
pub const VIF: u64 = 1 << 19;
/// EFLAGS.VIP
pub const VIP: u64 = 1 << 20;
/// EFLAGS.ID
pub const ID: u64 = 1 << 21;
/// The six arithmetic flags.
pub const ARITH_FLAGS: u64 = CF | PF | AF | ZF | SF | OF;

/// CR0.PE
pub const CR0_PE: u64 = 1 << 0;
/// CR0.MP
pub const CR0_MP: u64 = 1 << 1;
/// CR0.EM
pub const CR0_EM: u64 = 1 << 2;
/// CR0.TS
pub const CR0_TS: u64 = 1 << 3;
/// CR0.ET
pub const CR0_ET: u64 = 1 << 4;
/// CR0.NE
pub const CR0_NE: u64 = 1 << 5;
/// CR0.WP
pub const CR0_WP: u64 = 1 << 16;
/// CR0.AM
pub const CR0_AM: u64 = 1 << 18;
/// CR0.NW
pub const CR0_NW: u64 = 1 << 29;
/// CR0.CD
pub const CR0_CD: u64 = 1 << 30;
/// CR0.PG
pub const CR0_PG: u64 = 1 << 31;

/// Segment register indexes, in the order of their encoding in instructions.
pub const ES: usize = 0;
/// CS index.
pub const CS: usize = 1;
/// SS index.
pub const SS: usize = 2;
/// DS index.
pub const DS: usize = 3;
/// FS index.
pub const FS: usize = 4;
/// GS index.
pub const GS: usize = 5;

/// General-purpose register indexes.
pub const RAX: usize = 0;
/// RCX index.
pub const RCX: usize = 1;
/// RDX index.
pub const RDX: usize = 2;
/// RBX index.
pub const RBX: usize = 3;
/// RSP index.
pub const RSP: usize = 4;
/// RBP index.
pub const RBP: usize = 5;
/// RSI index.
pub const RSI: usize = 6;
/// RDI index.
pub const RDI: usize = 7;

/// Descriptor attribute bits as kept in [`Segment::attr`] (descriptor bits 40..55 shifted down by 40).
pub mod attr {
    /// Accessed (bit 0 of the type).
    pub const ACCESSED: u32 = 1 << 0;
    /// Data: writable. Code: readable.
    pub const RW: u32 = 1 << 1;
    /// Data: expand-down. Code: conforming.
    pub const DC: u32 = 1 << 2;
    /// Code segment.
    pub const CODE: u32 = 1 << 3;
    /// Code or data (not system).
    pub const S: u32 = 1 << 4;
    /// Descriptor privilege level shift.
    pub const DPL_SHIFT: u32 = 5;
    /// Present.
    pub const P: u32 = 1 << 7;
    /// Available to software.
    pub const AVL: u32 = 1 << 12;
    /// 64-bit code segment.
    pub const L: u32 = 1 << 13;
    /// Default operation size 32 / big stack.
    pub const DB: u32 = 1 << 14;
    /// Granularity 4 KiB.
    pub const G: u32 = 1 << 15;
}

/// A segment register with its hidden descriptor cache.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    /// The visible selector.
    pub selector: u16,
    /// Reserved for alignment.
    pub _pad: u16,
    /// Descriptor attributes (see [`attr`]); 0 for a null selector in protected mode.
    pub attr: u32,
    /// Linear base address.
    pub base: u64,
    /// Limit in bytes (already scaled by the granularity bit).
    pub limit: u32,
    /// Lowest valid offset (limit+1 for expand-down segments).
    pub lo: u32,
    /// Highest valid offset.
    pub hi: u32,
    /// Access rights for fast checks: bit 0 readable, bit 1 writable, bit 2 usable.
    pub rights: u32,
}

/// [`Segment::rights`]: reads allowed.
pub const SEG_READ: u32 = 1;
/// [`Segment::rights`]: writes allowed.
pub const SEG_WRITE: u32 = 2;

impl Segment {
    /// A real-mode style segment: base = selector * 16, 64 KiB limit, read/write.
    pub fn real(selector: u16) -> Segment {
        let mut s = Segment {
            selector,
            attr: attr::P | attr::S | attr::RW | attr::ACCESSED,
            base: (selector as u64) << 4,
            limit: 0xffff,
            ..Default::default()
        };
        s.update_rights();
        s
    }

    /// Recomputes the derived fields `lo`, `hi`, `rights` from `attr` and `limit`.
    pub fn update_rights(&mut self) {
        let a = self.attr;
        if a & attr::P == 0 || a & attr::S == 0 {
            // Null or system descriptors (LDT/TSS are never used for data accesses).
            self.rights = 0;
            self.lo = 1;
            self.hi = 0;
            return;
        }
        let code = a & attr::CODE != 0;
        let mut rights = 0;
        if !code || a & attr::RW != 0 {
            rights |= SEG_READ;
        }
        if !code && a & attr::RW != 0 {
            rights |= SEG_WRITE;
        }
        self.rights = rights;
        if !code && a & attr::DC != 0 {
            self.lo = self.limit.wrapping_add(1);
            self.hi = if a & attr::DB != 0 { u32::MAX } else { 0xffff };
        } else {
            self.lo = 0;
            self.hi = self.limit;
        }
    }

    /// The descriptor privilege level.
    pub fn dpl(&self) -> u8 {
        ((self.attr >> attr::DPL_SHIFT) & 3) as u8
    }

    /// Whether the default operation size (CS) or stack size (SS) is 32 bits.
    pub fn big(&self) -> bool {
        self.attr & attr::DB != 0
    }
}

/// GDTR or IDTR.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct TableReg {
    /// Linear base.
    pub base: u64,
    /// Limit in bytes.
    pub limit: u32,
}

/// Model-specific registers that ox86 implements.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Msrs {
    /// IA32_TSC_ADJUST: TSC = the machine clock's value + this.
    pub tsc_offset: u64,
    /// IA32_APIC_BASE.
    pub apic_base: u64,
    /// IA32_SYSENTER_CS / ESP / EIP.
    pub sysenter_cs: u64,
    /// IA32_SYSENTER_ESP.
    pub sysenter_esp: u64,
    /// IA32_SYSENTER_EIP.
    pub sysenter_eip: u64,
    /// IA32_MISC_ENABLE.
    pub misc_enable: u64,
    /// IA32_BIOS_SIGN_ID: the microcode update signature (0: none loaded).
    pub bios_sign_id: u64,
    /// P6 performance-monitoring MSRs: PERFEVTSEL0/1 (0x186/0x187) and PERFCTR0/1
    /// (0xC1/0xC2). They hold what the guest writes; the counters do not count.
    pub perf: [u64; 4],
    /// IA32_PAT.
    pub pat: u64,
    /// MTRR default type.
    pub mtrr_def_type: u64,
}

/// The state of one x86 CPU.
#[repr(C)]
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CpuState {
    /// RAX..R15, in encoding order.
    pub regs: [u64; 16],
    /// Instruction pointer (offset within CS).
    pub rip: u64,
    /// EFLAGS. The arithmetic bits are stale while `lazy_op` is not `Lazy::None`.
    pub flags: u64,
    /// The operation whose result defines the arithmetic flags (see `flags.rs`).
    pub lazy_op: u32,
    /// Operand width in bytes of that operation.
    pub lazy_size: u32,
    /// Its result.
    pub lazy_res: u64,
    /// Its first (destination) operand before the operation.
    pub lazy_dst: u64,
    /// Its second (source) operand.
    pub lazy_src: u64,
    /// ES, CS, SS, DS, FS, GS.
    pub seg: [Segment; 6],
    /// The LDT register.
    pub ldtr: Segment,
    /// The task register.
    pub tr: Segment,
    /// GDTR.
    pub gdtr: TableReg,
    /// IDTR.
    pub idtr: TableReg,
    /// CR0.
    pub cr0: u64,
    /// CR2.
    pub cr2: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// CR8 (task priority; long mode).
    pub cr8: u64,
    /// DR0-DR7 (DR4/DR5 alias DR6/DR7).
    pub dr: [u64; 8],
    /// IA32_EFER.
    pub efer: u64,
    /// Other MSRs.
    pub msr: Msrs,
    /// Current privilege level (cached: CS.RPL in protected mode, 3 in V86, 0 in real mode).
    pub cpl: u32,
    /// Set by HLT; cleared by an interrupt or reset.
    pub halted: u32,
    /// Interrupts are inhibited for one instruction (after STI, MOV SS, POP SS).
    pub irq_shadow: u32,
    /// DR6 B0-B3 bits of data breakpoints hit by the current instruction (a #DB trap
    /// is raised after it).
    pub dbg_pending: u32,
    /// Instructions retired since reset.
    pub icount: u64,
    /// The x87 FPU.
    pub fpu: X87State,
}

impl Default for CpuState {
    fn default() -> Self {
        CpuState::reset()
    }
}

impl CpuState {
    /// The state after RESET: real mode at F000:FFF0, as on an Intel CPU.
    pub fn reset() -> CpuState {
        let mut seg = [Segment::real(0); 6];
        seg[CS] = Segment::real(0xf000);
        seg[CS].base = 0xffff_0000;
        seg[CS].attr |= attr::CODE;
        seg[CS].update_rights();
        let mut ldtr = Segment {
            attr: attr::P | 2,
            limit: 0xffff,
            ..Default::default()
        };
        ldtr.update_rights();
        let mut tr = Segment {
            attr: attr::P | 11,
            limit: 0xffff,
            ..Default::default()
        };
        tr.update_rights();
        let mut regs = [0u64; 16];
        // EDX holds the processor signature after reset (family 6, model 1 = Pentium Pro).
        regs[RDX] = crate::cpuid::SIGNATURE as u64;
        CpuState {
            regs,
            rip: 0xfff0,
            flags: FIXED1,
            lazy_op: 0,
            lazy_size: 4,
            lazy_res: 0,
            lazy_dst: 0,
            lazy_src: 0,
            seg,
            ldtr,
            tr,
            gdtr: TableReg {
                base: 0,
                limit: 0xffff,
            },
            idtr: TableReg {
                base: 0,
                limit: 0x3ff,
            },
            cr0: CR0_ET | CR0_CD | CR0_NW,
            cr2: 0,
            cr3: 0,
            cr4: 0,
            cr8: 0,
            dr: [0, 0, 0, 0, 0xffff_0ff0, 0x400, 0xffff_0ff0, 0x400],
            efer: 0,
            msr: Msrs {
                apic_base: 0xfee0_0900,
                pat: 0x0007_0406_0007_0406,
                ..Default::default()
            },
            cpl: 0,
            halted: 0,
            irq_shadow: 0,
            dbg_pending: 0,
            icount: 0,
            fpu: X87State::default(),
        }
    }

    /// Whether protected mode is enabled (CR0.PE).
    #[inline]
    pub fn protected(&self) -> bool {
        self.cr0 & CR0_PE != 0
    }

    /// Whether the CPU is in virtual-8086 mode.
    #[inline]
    pub fn v86(&self) -> bool {
        self.flags & VM != 0
    }

    /// The I/O privilege level.
    #[inline]
    pub fn iopl(&self) -> u32 {
        ((self.flags & IOPL) >> 12) as u32
    }

    /// The 32-bit view of a general-purpose register.
    #[inline]
    pub fn r32(&self, i: usize) -> u32 {
        self.regs[i] as u32
    }

    /// Writes the low 32 bits of a register (outside long mode the upper half is kept at 0).
    #[inline]
    pub fn set_r32(&mut self, i: usize, v: u32) {
        self.regs[i] = v as u64;
    }

    /// Writes the low 16 bits of a register, keeping the rest.
    #[inline]
    pub fn set_r16(&mut self, i: usize, v: u16) {
        self.regs[i] = (self.regs[i] & !0xffff) | v as u64;
    }

    /// EIP.
    #[inline]
    pub fn eip(&self) -> u32 {
        self.rip as u32
    }
}
