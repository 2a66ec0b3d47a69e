//! Running short code snippets on a bare CPU, for differential tests against the host
//! CPU and for benchmarks: flat 32-bit protected mode, paging off, ring 0.

use crate::state::{attr, Segment, CR0_ET, CR0_NE, CR0_PE, CS, DS, ES, FS, GS, SS};
use crate::{Cpu, CpuExit, RunLimits};
use ox86_mmu::{Memory, NullBus, PhysAddr};

/// Guest address of the data area.
pub const DATA_ADDR: u32 = 0x0010_0000;
/// Guest address where snippet code is placed.
pub const CODE_ADDR: u32 = 0x0020_0000;
/// Initial stack pointer (the stack grows down from here).
pub const STACK_TOP: u32 = 0x0030_0000;
/// RAM size of the snippet machine.
pub const RAM_SIZE: u64 = 4 << 20;

/// The general-purpose registers and flags of a 32-bit snippet, in encoding order
/// (EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Regs32 {
    /// EAX..EDI.
    pub gpr: [u32; 8],
    /// EFLAGS.
    pub eflags: u32,
}

/// How a snippet ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnippetEnd {
    /// It ran to the end of its code.
    Done,
    /// It raised this exception vector (the IDT is empty, so the run stops there).
    Exception(u8),
    /// It ran past the instruction limit.
    Timeout,
    /// It executed a HLT of its own (not the one placed after it).
    Halted,
}

/// A flat 32-bit machine for snippets.
pub struct Snippet {
    /// The CPU.
    pub cpu: Cpu,
    /// Its memory.
    pub mem: Memory,
}

impl Default for Snippet {
    fn default() -> Self {
        Snippet::new()
    }
}

fn flat(sel: u16, code: bool) -> Segment {
    let mut a = attr::P | attr::S | attr::RW | attr::ACCESSED | attr::DB | attr::G;
    if code {
        a |= attr::CODE;
    }
    let mut s = Segment {
        selector: sel,
        attr: a,
        base: 0,
        limit: 0xffff_ffff,
        ..Default::default()
    };
    s.update_rights();
    s
}

impl Snippet {
    /// A machine with 4 MiB of RAM in flat 32-bit protected mode.
    pub fn new() -> Snippet {
        let mem = Memory::new(RAM_SIZE).expect("4 MiB of RAM");
        Snippet {
            cpu: Cpu::new(),
            mem,
        }
    }

    /// Runs `code` (placed at [`CODE_ADDR`]) with registers `regs` and `data` at
    /// [`DATA_ADDR`], until it runs off its end (detected by a HLT placed after it),
    /// raises an exception, or exceeds `max_insns`. Returns the final registers, and
    /// `data` holds the final data area.
    pub fn run(
        &mut self,
        code: &[u8],
        regs: &mut Regs32,
        data: &mut [u8],
        max_insns: u64,
    ) -> SnippetEnd {
        self.cpu.reset();
        let s = &mut self.cpu.state;
        s.icount = 0;
        s.cr0 = CR0_PE | CR0_ET | CR0_NE;
        s.seg[CS] = flat(8, true);
        for seg in [DS, ES, FS, GS, SS] {
            s.seg[seg] = flat(16, false);
        }
        // An IDT with limit 0: any exception escalates to a triple fault, which stops
        // the run; the exception vector is recorded on the way.
        s.idtr.base = 0;
        s.idtr.limit = 0;
        for (k, v) in regs.gpr.iter().enumerate() {
            s.regs[k] = *v as u64;
        }
        s.flags = (regs.eflags as u64 & 0x0000_0ed5) | 2;
        s.rip = CODE_ADDR as u64;
        let mut image = code.to_vec();
        image.push(0xf4); // HLT
        self.mem.write_phys(PhysAddr(CODE_ADDR as u64), &image);
        self.mem.write_phys(PhysAddr(DATA_ADDR as u64), data);
        self.cpu.flush_tlb();
        let end_ip = CODE_ADDR as u64 + code.len() as u64;
        let mut bus = NullBus;
        let exit = self
            .cpu
            .run(&mut self.mem, &mut bus, RunLimits { max_insns });
        let s = &self.cpu.state;
        for (k, v) in regs.gpr.iter_mut().enumerate() {
            *v = s.regs[k] as u32;
        }
        regs.eflags = s.eflags() as u32;
        self.mem.read_phys(PhysAddr(DATA_ADDR as u64), data);
        match exit {
            CpuExit::Halted if s.rip == end_ip + 1 => SnippetEnd::Done,
            CpuExit::Shutdown => SnippetEnd::Exception(self.cpu.stats.last_vector),
            CpuExit::Budget => SnippetEnd::Timeout,
            CpuExit::Halted | CpuExit::Stop | CpuExit::Debug => SnippetEnd::Halted,
        }
    }
}
