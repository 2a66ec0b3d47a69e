//! The debugging API of the machine: breakpoints and watchpoints kept by the engine,
//! single steps, runs to an instruction count or a host deadline, and reads and writes
//! of guest memory by virtual address through the guest's current paging. The GDB
//! stub, the monitor and the reverse execution of [`crate::history`] are built on it.

use std::time::Instant;

use ox86_cpu::state::CS;
use ox86_cpu::Watchpoint;
use ox86_mmu::paging::{self, Access, PagingRegs};
use ox86_mmu::{PhysAddr, PAGE_MASK};

use crate::error::MachineError;
use crate::machine::{ExitReason, Machine};

/// What a debugging run stops at beside the stop points.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Until {
    /// An instruction count.
    pub icount: Option<u64>,
    /// A host time.
    pub deadline: Option<Instant>,
    /// A single step, started at (instruction count, events delivered).
    pub step: Option<(u64, u64)>,
}

impl Until {
    /// The most instructions the next slice may run, or why the run ends now.
    pub fn budget(&self, icount: u64, events: u64) -> Result<u64, ExitReason> {
        let mut n = u64::MAX;
        if let Some(start) = self.step {
            if start != (icount, events) {
                return Err(ExitReason::Stepped);
            }
            n = 1;
        }
        if let Some(t) = self.icount {
            if icount >= t {
                return Err(ExitReason::Reached);
            }
            n = n.min(t - icount);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(ExitReason::TimeUp);
        }
        Ok(n)
    }
}

impl Machine {
    /// The instruction count: instructions retired since the machine was created.
    pub fn icount(&self) -> u64 {
        self.cpu.state.icount
    }

    /// The linear address of the next instruction (CS base + EIP).
    pub fn pc_linear(&self) -> u64 {
        self.cpu.state.seg[CS].base.wrapping_add(self.cpu.state.rip) & 0xffff_ffff
    }

    /// Mutable access to the CPU state (for a debugger writing registers).
    pub fn cpu_state_mut(&mut self) -> &mut ox86_cpu::CpuState {
        &mut self.cpu.state
    }

    /// Sets a breakpoint at linear address `lin` (kept by the engine: guest memory is
    /// not written). Returns false if one was there.
    pub fn add_breakpoint(&mut self, lin: u64) -> bool {
        self.cpu.stops.add_breakpoint(lin)
    }

    /// Removes the breakpoint at `lin`; false if there was none.
    pub fn remove_breakpoint(&mut self, lin: u64) -> bool {
        self.cpu.stops.remove_breakpoint(lin)
    }

    /// Sets a watchpoint (linear range and kind of access). Returns false if the same
    /// one was there.
    pub fn add_watchpoint(&mut self, w: Watchpoint) -> bool {
        let added = self.cpu.stops.add_watchpoint(w);
        // Pages that hold it take the slow path from now on.
        self.cpu.flush_tlb();
        added
    }

    /// Removes a watchpoint; false if there was none.
    pub fn remove_watchpoint(&mut self, w: Watchpoint) -> bool {
        let removed = self.cpu.stops.remove_watchpoint(w);
        self.cpu.flush_tlb();
        removed
    }

    /// Removes every breakpoint and watchpoint.
    pub fn clear_stop_points(&mut self) {
        let bps: Vec<u64> = self.cpu.stops.breakpoints().collect();
        for b in bps {
            self.cpu.stops.remove_breakpoint(b);
        }
        let ws = self.cpu.stops.watchpoints().to_vec();
        for w in ws {
            self.cpu.stops.remove_watchpoint(w);
        }
        self.cpu.flush_tlb();
    }

    /// Before a debugging run: a breakpoint at the next instruction does not stop it
    /// (the run resumes from there, as after stopping at it).
    fn resume(&mut self) {
        self.cpu.stops.resume_at = Some(self.pc_linear());
        self.cpu.stops.take_stop();
    }

    /// Runs one instruction, or delivers one exception or interrupt (and stops at its
    /// handler's first instruction); a halted CPU waits for its next interrupt. Stops
    /// earlier at a watchpoint (after the instruction) and at the guest's end.
    pub fn step(&mut self) -> Result<ExitReason, MachineError> {
        self.resume();
        let start = (self.cpu.state.icount, self.cpu.stats.interrupts);
        self.until = Until {
            step: Some(start),
            ..Until::default()
        };
        let r = self.run();
        self.until = Until::default();
        r
    }

    /// Runs until a stop point, the guest's end, instruction count `icount`
    /// ([`ExitReason::Reached`]) or host time `deadline` ([`ExitReason::TimeUp`]).
    /// A breakpoint at the first instruction does not stop it.
    pub fn run_until(
        &mut self,
        icount: Option<u64>,
        deadline: Option<Instant>,
    ) -> Result<ExitReason, MachineError> {
        self.resume();
        self.until = Until {
            icount,
            deadline,
            step: None,
        };
        let r = self.run();
        self.until = Until::default();
        r
    }

    /// The paging registers now.
    pub(crate) fn paging_regs(&self) -> PagingRegs {
        let s = &self.cpu.state;
        PagingRegs {
            cr0: s.cr0,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
        }
    }

    /// The physical address of linear address `lin` through the guest's paging now,
    /// without setting accessed or dirty bits; None where nothing is mapped.
    pub fn translate(&self, lin: u64) -> Option<u64> {
        let regs = self.paging_regs();
        paging::peek(&self.mem, &regs, lin & 0xffff_ffff, Access::Read, false)
            .ok()
            .map(|t| t.frame.0 | (lin & PAGE_MASK))
    }

    /// The physical pieces of `len` bytes at linear address `lin` through the current
    /// paging, up to the first unmapped page: (offset in the range, physical address,
    /// length).
    fn pieces(&self, lin: u64, len: usize) -> Vec<(usize, u64, usize)> {
        let mut v = Vec::new();
        let mut done = 0usize;
        while done < len {
            let a = (lin + done as u64) & 0xffff_ffff;
            let Some(pa) = self.translate(a) else {
                break;
            };
            let n = ((PAGE_MASK + 1 - (a & PAGE_MASK)) as usize).min(len - done);
            v.push((done, pa, n));
            done += n;
        }
        v
    }

    /// Reads guest memory at linear address `lin` through the current paging: the
    /// bytes read, up to the first unmapped page.
    pub fn read_virtual(&self, lin: u64, buf: &mut [u8]) -> usize {
        let pieces = self.pieces(lin, buf.len());
        for &(at, pa, n) in &pieces {
            self.mem.read_phys(PhysAddr(pa), &mut buf[at..at + n]);
        }
        pieces.last().map_or(0, |&(at, _, n)| at + n)
    }

    /// Writes guest memory at linear address `lin` through the current paging (code
    /// written this way is invalidated as after any write); the bytes written, up to
    /// the first unmapped page.
    pub fn write_virtual(&mut self, lin: u64, data: &[u8]) -> usize {
        let pieces = self.pieces(lin, data.len());
        for &(at, pa, n) in &pieces {
            self.mem.write_phys(PhysAddr(pa), &data[at..at + n]);
        }
        pieces.last().map_or(0, |&(at, _, n)| at + n)
    }

    /// Writes guest physical memory (RAM only), as a debugger's physical write.
    pub fn write_physical(&mut self, pa: u64, data: &[u8]) {
        self.mem.write_phys(PhysAddr(pa), data);
    }
}
