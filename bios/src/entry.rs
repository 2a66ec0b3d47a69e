//! The CPU state a loader hands over to the machine.

/// The processor mode at entry, with the segment state that goes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// Real mode. Every segment base is `selector << 4` with a 64 KiB limit;
    /// EIP is the offset in CS.
    Real {
        /// Code segment.
        cs: u16,
        /// Data segment.
        ds: u16,
        /// Extra segment.
        es: u16,
        /// FS.
        fs: u16,
        /// GS.
        gs: u16,
        /// Stack segment (ESP is the offset in it).
        ss: u16,
    },
    /// 32-bit protected mode as Multiboot and the Linux 32-bit boot protocol
    /// specify: CS is flat 32-bit ring-0 code (base 0, limit 4 GiB, selector 0x10),
    /// DS/ES/FS/GS/SS flat 32-bit writable data (selector 0x18), CR0.PE=1, paging
    /// off, EFLAGS.IF=0 and EFLAGS.VM=0. The GDTR is [`EntryState::gdtr`] when
    /// that is set, else undefined (the guest loads its own before it reloads a
    /// segment register); the IDTR is undefined.
    Flat32,
}

impl EntryMode {
    /// Real mode with every segment register set to `seg`.
    pub fn real(seg: u16) -> EntryMode {
        EntryMode::Real {
            cs: seg,
            ds: seg,
            es: seg,
            fs: seg,
            gs: seg,
            ss: seg,
        }
    }
}

/// A descriptor-table register value (GDTR): the table's linear base address and
/// its limit (size in bytes minus one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gdtr {
    /// Linear address of the table.
    pub base: u32,
    /// Size of the table in bytes, minus one.
    pub limit: u16,
}

/// The CPU state a loader hands over. The machine converts it into its `CpuState`:
/// registers not named here are in their reset state, EFLAGS is `0x2` (interrupts off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryState {
    /// Processor mode and segments.
    pub mode: EntryMode,
    /// Instruction pointer (offset in CS).
    pub eip: u32,
    /// EAX (Multiboot: the magic `0x2BADB002`).
    pub eax: u32,
    /// EBX (Multiboot: the physical address of the information structure).
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
    /// ESI (Linux 32-bit boot protocol: the physical address of `boot_params`).
    pub esi: u32,
    /// EDI.
    pub edi: u32,
    /// EBP.
    pub ebp: u32,
    /// ESP (0 when the boot protocol leaves it undefined).
    pub esp: u32,
    /// The GDTR to load before entry, when the loader put a GDT in guest memory
    /// whose descriptors match the segment state of `mode` (Linux: entries 2 and
    /// 3 are the flat code and data segments for selectors 0x10 and 0x18).
    /// `None`: GDTR is left in its reset state.
    pub gdtr: Option<Gdtr>,
}

impl EntryState {
    /// Real-mode entry at `seg:ip` with every segment register set to `seg`,
    /// the stack at `seg:sp` and all other general registers zero.
    pub fn real(seg: u16, ip: u16, sp: u16) -> EntryState {
        EntryState {
            esp: u32::from(sp),
            ..EntryState::zeroed(EntryMode::real(seg), u32::from(ip))
        }
    }

    /// Flat 32-bit protected-mode entry at `eip` with all general registers zero.
    pub fn flat32(eip: u32) -> EntryState {
        EntryState::zeroed(EntryMode::Flat32, eip)
    }

    fn zeroed(mode: EntryMode, eip: u32) -> EntryState {
        EntryState {
            mode,
            eip,
            eax: 0,
            ebx: 0,
            ecx: 0,
            edx: 0,
            esi: 0,
            edi: 0,
            ebp: 0,
            esp: 0,
            gdtr: None,
        }
    }
}
