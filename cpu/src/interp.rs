//! The interpreter's run loop: interrupt checks, block lookup and decoding, executing
//! a block's instructions, delivering exceptions, and self-modifying-code handling.

use ox86_mmu::paging::Access;
use ox86_mmu::{PhysAddr, PAGE_MASK};

use crate::block::{decode_block, AccelHint, Block, Pc, MAX_BLOCK_INSNS, NO_SUCC};

/// Most bytes a block can span.
const MAX_BLOCK_BYTES: u64 = MAX_BLOCK_INSNS as u64 * 15;
use crate::exception::{Exception, Fault};
use crate::state::{CS, IF, RF, TF};
use crate::{Accel, AccelRun, Cpu, Exec};
use iced_x86::Mnemonic;

/// An instruction's length byte in a trace definition (see [`crate::trace::FLOW`]).
pub fn trace_len(i: &iced_x86::Instruction) -> u8 {
    let flow = i.flow_control() != iced_x86::FlowControl::Next;
    i.len() as u8 | if flow { crate::trace::FLOW } else { 0 }
}

/// Why `run` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuExit {
    /// The instruction budget is used up.
    Budget,
    /// The CPU executed HLT and no interrupt is pending.
    Halted,
    /// A device asked to stop (exit port, reset request, A20 change).
    Stop,
    /// Triple fault: the machine must reset.
    Shutdown,
    /// A stop point of the host debugger was reached (see [`crate::stops`]): the
    /// state is before the instruction at a breakpoint, or after the instruction that
    /// hit a watchpoint.
    Debug,
}

/// How long `run` may go on.
#[derive(Debug, Clone, Copy)]
pub struct RunLimits {
    /// Most instructions to retire.
    pub max_insns: u64,
}

impl Cpu {
    /// Runs until the budget is used, the CPU halts, a device asks to stop or the
    /// machine shuts down.
    pub fn run(
        &mut self,
        mem: &mut ox86_mmu::Memory,
        io: &mut dyn ox86_mmu::IoBus,
        limits: RunLimits,
    ) -> CpuExit {
        let mut accel = self.accel.take();
        let exit = self.exec(mem, io).run(limits, accel.as_deref_mut());
        self.accel = accel;
        exit
    }
}

impl Exec<'_> {
    /// The run loop, with compiled code from `accel` where it has some.
    pub fn run(
        &mut self,
        limits: RunLimits,
        mut accel: Option<&mut (dyn Accel + 'static)>,
    ) -> CpuExit {
        let end = self.s.icount.saturating_add(limits.max_insns);
        // Exceptions retire no instruction; they count against the budget here so that
        // a guest stuck in a fault loop still returns control to the machine.
        let mut events = 0u64;
        let hot_every = accel
            .as_deref()
            .map_or(u64::MAX, |a| a.hot_threshold().max(1));
        // The block that ran last, if nothing came between it and the next one.
        let mut prev: Option<u32> = None;
        // The host debugger's stop points, if any are set (they change only between
        // runs; a stop reached during this one needs a watchpoint, so they are set).
        let dbg_on = self.dbg.armed();
        // Whether a trace is being recorded (it starts and stops between runs).
        let tracing = self.trace.is_some();
        loop {
            let last = prev.take();
            if *self.shutdown {
                return CpuExit::Shutdown;
            }
            // Code written since the last instruction (by the guest, a faulting
            // instruction, DMA or a loader) is invalidated before anything is fetched.
            if self.mem.has_dirty_code() {
                self.process_code_writes(accel.as_deref_mut());
            }
            // Maskable interrupts, unless in an interrupt shadow.
            let shadow = std::mem::take(&mut self.s.irq_shadow) != 0;
            if !shadow && self.s.flags & IF != 0 && self.io.intr_pending() {
                let vector = self.io.intr_ack();
                self.s.halted = 0;
                events += 1;
                self.external_interrupt(vector);
                continue;
            }
            if self.s.halted != 0 {
                return CpuExit::Halted;
            }
            if self.io.stop_requested() {
                return CpuExit::Stop;
            }
            if dbg_on && self.dbg.stopped() {
                return CpuExit::Debug;
            }
            if self.s.icount.saturating_add(events) >= end {
                return CpuExit::Budget;
            }
            let debug = self.debug_armed();
            // A page with a breakpoint of the host debugger runs here, instruction by
            // instruction checked against them.
            let mut host_bp = false;
            if dbg_on {
                match self.host_breakpoints() {
                    None => return CpuExit::Debug,
                    Some(on_page) => host_bp = on_page,
                }
            }
            // The block first, then the accelerator: the block carries what the
            // accelerator found at its entry last time (see `AccelHint`).
            let id = match self.current_block(last) {
                Ok(id) => id,
                Err(ex) => {
                    events += 1;
                    self.raise(ex);
                    continue;
                }
            };
            if let Some(a) = accel.as_deref_mut() {
                if !debug && !shadow && !host_bp {
                    // Exceptions count against the budget too (see above).
                    match a.run(self, end.saturating_sub(events), id) {
                        AccelRun::NotRun => {}
                        AccelRun::Ran => continue,
                        AccelRun::Fault(ex) => {
                            events += 1;
                            self.s.dbg_pending = 0;
                            self.dbg.cancel_watch_hit();
                            self.raise(ex);
                            continue;
                        }
                    }
                }
            }
            if tracing {
                self.trace_block(id);
            }
            let block = self.blocks.get_mut(id);
            block.execs += 1;
            let first = block.next_hot == 0;
            // Every `hot_every` runs (the division only when a multiple is reached).
            let hot = block.execs >= block.next_hot && {
                let execs = block.execs;
                block.next_hot = (execs / hot_every)
                    .saturating_add(1)
                    .saturating_mul(hot_every);
                execs.is_multiple_of(hot_every)
            };
            let insns = block.insns.clone();
            if let Some(a) = accel.as_deref_mut() {
                if first {
                    a.seen(self, id);
                }
                if hot {
                    // Asked again every threshold runs: a region can be dropped, or its
                    // compilation refused while the compiler was busy.
                    a.hot(self, id);
                }
            }
            // One instruction at a time while debugging, and in an interrupt shadow (so
            // that an interrupt is taken right after the instruction following STI).
            let n = if debug || shadow {
                1
            } else {
                // Exceptions count against the budget here too (checked above), so
                // that the interpreter and the JIT stop at the same instruction.
                insns.len().min((end - events - self.s.icount) as usize)
            };
            if debug {
                let lin = self.s.seg[CS].base.wrapping_add(self.s.rip) & 0xffff_ffff;
                if let Some(ex) = self.instruction_breakpoint(lin) {
                    events += 1;
                    self.raise(ex);
                    continue;
                }
            }
            // The instruction count is kept exact at every instruction, so that device
            // time seen by I/O (and RDTSC) is a function of it.
            let mut clean = true;
            for (k, d) in insns[..n].iter().enumerate() {
                let ip = self.s.rip;
                if host_bp && k > 0 && self.host_breakpoint_here() {
                    return CpuExit::Debug;
                }
                // TF and RF as the instruction starts (only looked at while debugging).
                let (tf, rf) = (self.s.flags & TF != 0, self.s.flags & RF != 0);
                self.s.rip = d.next_ip;
                if let Err(ex) = (d.handler)(self, &d.insn) {
                    self.s.rip = ip;
                    events += 1;
                    self.s.dbg_pending = 0;
                    self.dbg.cancel_watch_hit();
                    self.raise(ex);
                    clean = false;
                    break;
                }
                self.s.icount += 1;
                if dbg_on && self.dbg.stopped() {
                    // A watchpoint: the instruction completed.
                    if self.mem.has_dirty_code() {
                        self.process_code_writes(accel.as_deref_mut());
                    }
                    return CpuExit::Debug;
                }
                if debug {
                    let soft_int = matches!(
                        d.insn.mnemonic(),
                        Mnemonic::Int | Mnemonic::Int3 | Mnemonic::Int1
                    ) || (d.insn.mnemonic() == Mnemonic::Into
                        && self.s.rip != d.next_ip);
                    if let Some(ex) = self.debug_trap_after(tf, rf, soft_int) {
                        events += 1;
                        self.raise(ex);
                        clean = false;
                        break;
                    }
                }
                if self.mem.has_dirty_code() {
                    self.process_code_writes(accel.as_deref_mut());
                    clean = false;
                    break;
                }
                if self.s.rip != d.next_ip {
                    break;
                }
            }
            if clean {
                prev = Some(id);
            }
        }
    }

    /// At a block's start with stop points set: None if the next instruction is at a
    /// breakpoint, else whether its page holds one (then each instruction is checked).
    #[cold]
    #[inline(never)]
    fn host_breakpoints(&mut self) -> Option<bool> {
        let lin = self.s.seg[CS].base.wrapping_add(self.s.rip) & 0xffff_ffff;
        let on_page = self.dbg.has_breakpoints() && self.dbg.page_has_breakpoint(lin);
        if on_page && self.dbg.check_breakpoint(lin) {
            return None;
        }
        self.dbg.resume_at = None;
        Some(on_page)
    }

    /// Whether the next instruction is at a breakpoint (on a page that holds one).
    #[cold]
    #[inline(never)]
    fn host_breakpoint_here(&mut self) -> bool {
        let lin = self.s.seg[CS].base.wrapping_add(self.s.rip) & 0xffff_ffff;
        self.dbg.check_breakpoint(lin)
    }

    /// Records that the interpreter runs block `id` now (defining it for the trace the
    /// first time), after the context if it changed.
    #[cold]
    #[inline(never)]
    fn trace_block(&mut self, id: u32) {
        let Some(t) = self.trace.as_deref_mut() else {
            return;
        };
        t.context(self.s);
        let icount = self.s.icount;
        let b = self.blocks.get_mut(id);
        let epoch = u64::from(t.epoch());
        let raw = if b.trace >> 32 == epoch {
            b.trace as u32
        } else {
            let raw = t.new_ids(1);
            let lens: Vec<u8> = b.insns.iter().map(|d| trace_len(&d.insn)).collect();
            let mut bytes = Vec::new();
            for &(s, e) in b.ranges.iter().filter(|r| r.1 > r.0) {
                let at = bytes.len();
                bytes.resize(at + (e - s) as usize, 0);
                self.mem.read_phys(PhysAddr(s), &mut bytes[at..]);
            }
            let (s2, e2) = b.ranges[1];
            let def = crate::trace::BlockDef {
                eip: b.eip,
                cs_base: b.cs_base,
                phys: b.phys,
                phys2: if e2 > s2 { s2 & !PAGE_MASK } else { 0 },
                bitness: b.bitness,
                lens: &lens,
                bytes: &bytes,
            };
            t.define(raw, icount, &def);
            b.trace = (epoch << 32) | u64::from(raw);
            raw
        };
        t.block(raw, icount);
    }

    /// Invalidates blocks whose bytes were written.
    pub fn process_code_writes(&mut self, mut accel: Option<&mut (dyn Accel + 'static)>) {
        match self.mem.take_dirty_code() {
            Some(list) => {
                for (addr, len) in list {
                    self.stats.smc_writes += 1;
                    let compiled = accel
                        .as_deref_mut()
                        .is_some_and(|a| a.invalidate(addr, len as u64));
                    if !self.blocks.invalidate_range(addr, len as u64) && !compiled {
                        self.mem.unmark_code_page(PhysAddr(addr));
                    }
                }
            }
            None => {
                let mut frames: Vec<u64> = self.blocks.code_frames().collect();
                if let Some(a) = accel {
                    frames.extend(a.code_frames());
                    a.clear();
                }
                for f in frames {
                    self.mem.unmark_code_page(PhysAddr(f << 12));
                }
                self.blocks.clear();
            }
        }
    }

    /// Code size of the current CS in bits.
    #[inline(always)]
    pub fn bitness(&self) -> u32 {
        if self.s.seg[CS].big() {
            32
        } else {
            16
        }
    }

    /// Finds or decodes the block at CS:EIP; `prev` is the block that ran just before
    /// (its successors are looked at first).
    fn current_block(&mut self, prev: Option<u32>) -> Fault<u32> {
        let eip = self.s.rip;
        let cs_base = self.s.seg[CS].base;
        let pc = Pc {
            lin: cs_base.wrapping_add(eip) & 0xffff_ffff,
            eip,
            cs_base,
            bitness: self.bitness(),
            user: self.user(),
        };
        let Some(p) = prev else {
            return self.find_block(&pc);
        };
        if let Some(id) = self.blocks.lookup_succ(p, &pc, self.tlb) {
            return Ok(id);
        }
        let id = self.find_block(&pc)?;
        self.blocks.set_succ(p, eip, id);
        Ok(id)
    }

    /// Finds or decodes the block at `pc` through the jump cache and the physical
    /// index.
    fn find_block(&mut self, pc: &Pc) -> Fault<u32> {
        let Pc {
            lin,
            eip,
            cs_base,
            bitness,
            user,
        } = *pc;
        if let Some(id) = self
            .blocks
            .lookup_jump(lin, eip, cs_base, bitness, self.tlb, user)
        {
            return Ok(id);
        }
        let cs = self.s.seg[CS];
        if eip > cs.hi as u64 {
            return Err(Exception::GP0);
        }
        let phys = self.fetch_phys(lin, user)?;
        // A TLB miss (after a context switch flushed the TLB) fails the jump cache's
        // check, but its block is usually still the one: the walk has filled the TLB,
        // so it is found again without a probe of the physical index.
        if let Some(id) = self
            .blocks
            .lookup_jump(lin, eip, cs_base, bitness, self.tlb, user)
        {
            return Ok(id);
        }
        if let Some(id) = self
            .blocks
            .lookup_phys(lin, phys, eip, cs_base, bitness, self.tlb, user)
        {
            return Ok(id);
        }
        let page_left = PAGE_MASK + 1 - (lin & PAGE_MASK);
        let lim_left = cs.hi as u64 - eip + 1;
        // A block holds at most MAX_BLOCK_INSNS instructions of at most 15 bytes.
        let avail = page_left.min(lim_left).min(MAX_BLOCK_BYTES) as usize;
        let mut bytes = vec![0u8; avail];
        self.mem.read_phys(PhysAddr(phys), &mut bytes);
        let select = crate::exec::select;
        let (mut insns, mut used, truncated) = decode_block(&bytes, eip, bitness, select);
        let mut ranges = [(phys, phys + used as u64), (0, 0)];
        if insns.is_empty() && truncated {
            // The first instruction crosses the page end or the CS limit.
            if lim_left <= page_left {
                return Err(Exception::GP0);
            }
            let more = (lim_left - page_left).min(15) as usize;
            let phys2 = self.fetch_phys((lin + page_left) & 0xffff_ffff, user)?;
            let mut tail = vec![0u8; more];
            self.mem.read_phys(PhysAddr(phys2), &mut tail);
            bytes.extend_from_slice(&tail);
            // Still nothing decodable: the instruction runs past the CS limit.
            let (i2, _, _) = decode_block(&bytes, eip, bitness, select);
            if i2.is_empty() {
                return Err(Exception::GP0);
            }
            insns = i2.into_iter().take(1).collect();
            used = insns[0].insn.len();
            ranges = [
                (phys, phys + page_left),
                (phys2, phys2 + (used as u64 - page_left)),
            ];
        }
        for r in ranges.iter().filter(|r| r.1 > r.0) {
            if self.mem.mark_code(PhysAddr(r.0), r.1 - r.0) {
                self.tlb.protect_frame(r.0 & !PAGE_MASK);
            }
        }
        let block = Block {
            eip,
            cs_base,
            bitness,
            phys,
            insns: insns.into(),
            ranges,
            execs: 0,
            next_hot: 0,
            accel: AccelHint::default(),
            succ: NO_SUCC,
            trace: 0,
        };
        Ok(self.blocks.insert(lin, block))
    }

    /// Translates a linear code address for an instruction fetch.
    fn fetch_phys(&mut self, lin: u64, user: bool) -> Fault<u64> {
        match self.tlb.lookup_exec(user, lin) {
            Some(frame) => Ok(frame | (lin & PAGE_MASK)),
            None => self.translate(lin, Access::Execute, user),
        }
    }
}
