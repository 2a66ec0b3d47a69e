//! The debugger's history: checkpoints taken as the run goes, from which any earlier
//! instruction count is reached again by deterministic re-execution (icount mode).
//! Reverse execution is built on it: `goto`, reverse step and reverse continue.
//!
//! A checkpoint holds the CPU and FPU, the devices, the clock and the A20 gate as they
//! were at its instruction count, and the undo log of the interval after it: the
//! pre-images of the RAM pages first written before the next checkpoint (see
//! `ox86_mmu::undo`), compressed. RAM itself is never copied whole: to return to
//! checkpoint k, the live undo log and those of the checkpoints after k are written
//! back, newest first, so that each page ends as it was at k.
//!
//! Checkpoints are taken every [`History::every`] instructions (at multiples of it, so
//! a re-execution takes them where the first run did) and thinned as they age: the
//! newest [`DENSE`] intervals keep all, older ones one per a doubling stride, the
//! first one always. A dropped checkpoint's undo log merges into the one before it
//! (the older pre-image of a page wins), so RAM can still be returned to any
//! checkpoint kept.

use std::collections::HashSet;

use ox86_cpu::CpuState;
use ox86_mmu::undo::PreImage;
use ox86_mmu::{PhysAddr, PAGE_SIZE};

use ox86_devices::uart::SerialInput;

use crate::error::MachineError;
use crate::machine::{ExitReason, Machine};
use crate::replay::{Event, Replayer};

/// Checkpoints every this many instructions by default.
pub const DEFAULT_EVERY: u64 = 10_000_000;
/// The newest intervals kept whole.
const DENSE: u64 = 32;
/// How often a long `goto` reports progress.
pub const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// A page's pre-image, LZ4-compressed (empty for a page of zeros).
struct Page {
    pfn: u32,
    lz4: Vec<u8>,
}

/// The machine as it was at an instruction count, and its interval's undo log.
struct Checkpoint {
    icount: u64,
    cpu: CpuState,
    devices: Vec<u8>,
    clock: (u64, u64),
    a20: bool,
    /// The console input queued for COM1 and not yet in its FIFO.
    com1_queue: Vec<u8>,
    /// Pre-images (at this checkpoint) of the pages written before the next one.
    undo: Vec<Page>,
    /// Compressed bytes of `undo`.
    undo_bytes: u64,
}

impl Checkpoint {
    fn bytes(&self) -> u64 {
        self.undo_bytes + self.devices.len() as u64 + std::mem::size_of::<Checkpoint>() as u64
    }
}

/// Figures for `--stats` and the closing note.
#[derive(Debug, Clone, Copy, Default)]
pub struct HistoryStats {
    /// Checkpoints kept now.
    pub checkpoints: usize,
    /// Bytes the history holds now (undo logs, device state).
    pub bytes: u64,
    /// The most it held.
    pub peak_bytes: u64,
    /// Checkpoints taken (including those taken again by re-execution).
    pub taken: u64,
    /// Returns to an earlier checkpoint.
    pub restores: u64,
}

/// The checkpoints of a run.
pub struct History {
    checkpoints: Vec<Checkpoint>,
    /// Instructions between checkpoints.
    pub every: u64,
    stats: HistoryStats,
    /// The host's console input, taken into COM1 at slice boundaries.
    pub(crate) staging: SerialInput,
    /// The console input the guest got, with when: re-execution gets it again.
    inputs: Vec<Event>,
    /// The furthest instruction count the run reached: below it, the run is a
    /// re-execution and takes its input from `inputs`.
    frontier: u64,
}

impl History {
    fn new(every: u64) -> History {
        History {
            checkpoints: Vec::new(),
            every: every.max(1),
            stats: HistoryStats::default(),
            staging: SerialInput::default(),
            inputs: Vec::new(),
            frontier: 0,
        }
    }

    /// The instruction count of the oldest checkpoint: history reaches back to it.
    pub fn start(&self) -> u64 {
        self.checkpoints.first().map_or(0, |c| c.icount)
    }

    fn total_bytes(&self) -> u64 {
        self.checkpoints.iter().map(Checkpoint::bytes).sum()
    }

    /// The index of the newest checkpoint at or before `icount`.
    fn at_or_before(&self, icount: u64) -> Option<usize> {
        let n = self.checkpoints.partition_point(|c| c.icount <= icount);
        n.checked_sub(1)
    }

    /// Drops aged checkpoints, merging their undo logs into their predecessors'.
    fn thin(&mut self, now: u64) {
        let every = self.every;
        let mut i = 1;
        while i < self.checkpoints.len() {
            let c = &self.checkpoints[i];
            let age = now.saturating_sub(c.icount) / every;
            let keep = age < DENSE || {
                // Strides of 2, 4, 8... intervals, each band DENSE checkpoints wide.
                let band = 64 - (age / DENSE).leading_zeros();
                (c.icount / every).is_multiple_of(1 << band.min(62))
            };
            if keep {
                i += 1;
                continue;
            }
            let dropped = self.checkpoints.remove(i);
            let prev = &mut self.checkpoints[i - 1];
            let have: HashSet<u32> = prev.undo.iter().map(|p| p.pfn).collect();
            for p in dropped.undo {
                if !have.contains(&p.pfn) {
                    prev.undo_bytes += p.lz4.len() as u64;
                    prev.undo.push(p);
                }
            }
        }
    }
}

/// Compresses pre-images into pages.
fn compress(pre: Vec<PreImage>) -> (Vec<Page>, u64) {
    let mut bytes = 0;
    let pages = pre
        .into_iter()
        .map(|(pfn, b)| {
            let lz4 = if b.iter().all(|&x| x == 0) {
                Vec::new()
            } else {
                lz4_flex::block::compress_prepend_size(&b)
            };
            bytes += lz4.len() as u64;
            Page { pfn, lz4 }
        })
        .collect();
    (pages, bytes)
}

impl Machine {
    /// Keeps the debugger's history from now on, with a checkpoint every `every`
    /// instructions (icount mode only: re-execution must repeat the run).
    pub fn keep_history(&mut self, every: u64) -> Result<(), MachineError> {
        if !matches!(
            self.bus.clock.mode(),
            crate::clock::ClockMode::Icount { .. }
        ) {
            return Err(MachineError::History(
                "reverse execution needs --icount (deterministic time)".into(),
            ));
        }
        self.history = Some(History::new(every));
        self.mem.keep_undo_log(true);
        self.checkpoint();
        Ok(())
    }

    /// Starts the history again from the machine's state now (after a snapshot was
    /// restored: the checkpoints were of another run), keeping its console input
    /// handle.
    pub(crate) fn restart_history(&mut self) {
        let Some(h) = self.history.as_mut() else {
            return;
        };
        let staging = h.staging.clone();
        let mut fresh = History::new(h.every);
        fresh.staging = staging;
        self.history = Some(fresh);
        self.replayer = None;
        self.mem.keep_undo_log(true);
        self.checkpoint();
    }

    /// The history's figures, if it is kept.
    pub fn history_stats(&self) -> Option<HistoryStats> {
        self.history.as_ref().map(|h| HistoryStats {
            checkpoints: h.checkpoints.len(),
            bytes: h.total_bytes() + self.mem.undo_bytes(),
            ..h.stats
        })
    }

    /// The instruction count history reaches back to (None without history).
    pub fn history_start(&self) -> Option<u64> {
        self.history.as_ref().map(History::start)
    }

    /// At a slice boundary: takes a checkpoint when one is due. Returns the
    /// instructions to the next one.
    pub(crate) fn keep_history_at(&mut self, icount: u64) -> u64 {
        let Some(h) = self.history.as_ref() else {
            return u64::MAX;
        };
        let every = h.every;
        let last = h.checkpoints.last().map_or(0, |c| c.icount);
        if icount.is_multiple_of(every) && icount > last {
            self.checkpoint();
        }
        every - icount % every
    }

    /// At a slice boundary: below the frontier (a re-execution), mutes the console
    /// output the user saw already, and `replay` feeds the input kept; past it, moves
    /// the host's console input into COM1 and keeps it. Returns the instructions to
    /// the frontier (slices end there, where the output is heard again).
    pub(crate) fn history_input(&mut self, icount: u64) -> u64 {
        let ns = self.bus.clock.now(icount);
        let com1 = self.bus.platform.serial_input(0);
        let Some(h) = self.history.as_mut() else {
            return u64::MAX;
        };
        let again = icount < h.frontier;
        self.muted
            .store(again, std::sync::atomic::Ordering::Relaxed);
        if again {
            return h.frontier - icount;
        }
        h.frontier = icount;
        if self.replayer.is_some() {
            return u64::MAX;
        }
        let typed = h.staging.take(usize::MAX);
        if let (false, Some(com1)) = (typed.is_empty(), com1) {
            // What the queue refuses is lost, as without the history.
            let n = com1.push(&typed);
            h.inputs.push(Event::Console {
                icount,
                ns,
                bytes: typed[..n].to_vec(),
            });
        }
        u64::MAX
    }

    /// Takes a checkpoint now: the live undo log closes the newest checkpoint's
    /// interval.
    fn checkpoint(&mut self) {
        let pre = self.mem.take_undo().unwrap_or_default();
        // No page stays writable through the TLB without its first write seen.
        self.cpu.flush_tlb();
        let c = Checkpoint {
            icount: self.cpu.state.icount,
            cpu: self.cpu.state.clone(),
            devices: self.bus.platform.state_bytes(),
            clock: self.bus.clock.save(),
            a20: self.mem.a20_enabled(),
            com1_queue: self
                .bus
                .platform
                .serial_input(0)
                .map(|q| q.contents())
                .unwrap_or_default(),
            undo: Vec::new(),
            undo_bytes: 0,
        };
        let Some(h) = self.history.as_mut() else {
            return;
        };
        let (pages, bytes) = compress(pre);
        if let Some(last) = h.checkpoints.last_mut() {
            last.undo = pages;
            last.undo_bytes = bytes;
        }
        h.checkpoints.push(c);
        h.stats.taken += 1;
        h.thin(self.cpu.state.icount);
        let total = h.total_bytes();
        h.stats.peak_bytes = h.stats.peak_bytes.max(total);
    }

    /// Returns the machine to checkpoint `k`, dropping the later ones (re-execution
    /// takes them again).
    fn restore_checkpoint(&mut self, k: usize) -> Result<(), MachineError> {
        let live = self.mem.take_undo().unwrap_or_default();
        let now = self.cpu.state.icount;
        let Some(h) = self.history.as_mut() else {
            return Ok(());
        };
        h.stats.restores += 1;
        // Everything up to here was seen (a run stops between slice boundaries).
        h.frontier = h.frontier.max(now);
        let later = h.checkpoints.split_off(k + 1);
        let target = &mut h.checkpoints[k];
        // Newest first: each page ends with its oldest pre-image since checkpoint k.
        let mut page = vec![0u8; PAGE_SIZE as usize];
        let mut cur = vec![0u8; PAGE_SIZE as usize];
        let mem = &mut self.mem;
        let mut put = |pfn: u32, bytes: &[u8]| {
            let at = PhysAddr(u64::from(pfn) * PAGE_SIZE);
            mem.read_phys(at, &mut cur);
            // Unchanged pages are not written: code on them stays compiled.
            if cur != bytes {
                mem.write_phys(at, bytes);
            }
        };
        for (pfn, b) in live.iter().rev() {
            put(*pfn, b);
        }
        for c in later.iter().rev().chain(std::iter::once(&*target)) {
            for p in c.undo.iter().rev() {
                if p.lz4.is_empty() {
                    page.fill(0);
                } else {
                    let b = lz4_flex::block::decompress_size_prepended(&p.lz4)
                        .map_err(|e| MachineError::History(format!("history page: {e}")))?;
                    page.copy_from_slice(&b);
                }
                put(p.pfn, &page);
            }
        }
        target.undo.clear();
        target.undo_bytes = 0;
        self.bus
            .platform
            .restore(&target.devices)
            .map_err(MachineError::History)?;
        self.mem.set_a20(target.a20);
        if let Some(q) = self.bus.platform.serial_input(0) {
            q.replace(&target.com1_queue);
        }
        self.cpu.state = target.cpu.clone();
        self.bus.clock.restore(target.clock);
        // The restore's own writes are not part of the next interval.
        self.mem.take_undo();
        self.cpu.flush_tlb();
        self.hashed_at = self.cpu.state.icount;
        // The console input from here on comes from what the guest got before.
        let icount = self.cpu.state.icount;
        let again: Vec<Event> = self
            .history
            .as_ref()
            .map(|h| {
                h.inputs
                    .iter()
                    .filter(|e| matches!(e, Event::Console { icount: n, .. } if *n >= icount))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        self.replayer = (!again.is_empty()).then(|| Replayer::new(again));
        Ok(())
    }

    /// Runs to instruction count `target` with the debugger's stop points set aside.
    fn reexecute_to(&mut self, target: u64) -> Result<ExitReason, MachineError> {
        self.reexecute_reporting(target, &mut |_| {})
    }

    /// [`Machine::reexecute_to`], calling `progress` with the instruction count about
    /// every [`PROGRESS_EVERY`] of host time.
    fn reexecute_reporting(
        &mut self,
        target: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ExitReason, MachineError> {
        self.without_stops(|m| m.reexecute_loop(target, progress))
    }

    /// Runs `f` with the debugger's stop points set aside (a re-execution is not a
    /// run the user asked to stop), then puts them back.
    fn without_stops<R>(&mut self, f: impl FnOnce(&mut Machine) -> R) -> R {
        let saved = std::mem::take(&mut self.cpu.stops);
        // Epochs that differ from every earlier one: the JIT unchains on each change.
        self.cpu.stops.epoch = saved.epoch + 1;
        self.cpu.flush_tlb();
        let r = f(self);
        let mut saved = saved;
        saved.epoch += 2;
        self.cpu.stops = saved;
        // Watched pages take the slow path again.
        self.cpu.flush_tlb();
        r
    }

    fn reexecute_loop(
        &mut self,
        target: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ExitReason, MachineError> {
        loop {
            let deadline = std::time::Instant::now() + PROGRESS_EVERY;
            self.cpu.stops.take_stop();
            self.until = crate::debug::Until {
                icount: Some(target),
                deadline: Some(deadline),
                step: None,
            };
            let r = self.run();
            self.until = Default::default();
            match r {
                Ok(ExitReason::TimeUp) => progress(self.cpu.state.icount),
                r => return r,
            }
        }
    }

    /// Returns the machine to instruction count `target` (`monitor goto N`): back
    /// through the history and forward by re-execution, or forward by running.
    /// Stop points do not stop it.
    pub fn goto(&mut self, target: u64) -> Result<ExitReason, MachineError> {
        self.goto_reporting(target, &mut |_| {})
    }

    /// [`Machine::goto`], calling `progress` with the instruction count about every
    /// [`PROGRESS_EVERY`] of host time while it runs (a GDB client waiting for the
    /// reply is kept from timing out).
    pub fn goto_reporting(
        &mut self,
        target: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ExitReason, MachineError> {
        let Some(h) = self.history.as_ref() else {
            return Err(MachineError::History(
                "no history is kept (start with -s or --gdb)".into(),
            ));
        };
        if target < h.start() {
            return Err(MachineError::History(format!(
                "instruction {target} is before the history's start ({})",
                h.start()
            )));
        }
        if target < self.cpu.state.icount {
            let k = h.at_or_before(target).unwrap_or(0);
            self.restore_checkpoint(k)?;
        }
        self.reexecute_reporting(target, progress)
    }

    /// One instruction back (`reverse-stepi`): to the instruction count before this
    /// one. [`ExitReason::HistoryStart`] at the start of the history.
    pub fn reverse_step(&mut self) -> Result<ExitReason, MachineError> {
        let now = self.cpu.state.icount;
        if self.history_start().is_some_and(|s| now <= s) {
            return Ok(ExitReason::HistoryStart);
        }
        match self.goto(now - 1)? {
            ExitReason::Reached => Ok(ExitReason::Stepped),
            r => Ok(r),
        }
    }

    /// Back to the latest stop-point hit before the current instruction count
    /// (`reverse-continue`): a breakpoint stops with its instruction next, a
    /// watchpoint before the instruction that accessed it. At the start of the
    /// history with no hit: [`ExitReason::HistoryStart`].
    pub fn reverse_continue(&mut self) -> Result<ExitReason, MachineError> {
        let now = self.cpu.state.icount;
        let Some(h) = self.history.as_ref() else {
            return Err(MachineError::History(
                "no history is kept (start with -s or --gdb)".into(),
            ));
        };
        let Some(mut k) = h.at_or_before(now.saturating_sub(1)) else {
            return Ok(ExitReason::HistoryStart);
        };
        if now <= h.start() {
            return Ok(ExitReason::HistoryStart);
        }
        let mut end = now;
        loop {
            self.restore_checkpoint(k)?;
            let from = self.cpu.state.icount;
            // The hits between this checkpoint and `end`: (position, reason).
            let mut last: Option<(u64, ExitReason)> = None;
            // A breakpoint just reported is passed when the scan goes on (not one at
            // the instruction after a watchpoint's access: it has not been reached).
            let mut at_breakpoint = false;
            loop {
                let r = self.run_to(end, at_breakpoint)?;
                at_breakpoint = matches!(r, ExitReason::Breakpoint(_));
                match r {
                    ExitReason::Breakpoint(_) => {
                        let at = self.cpu.state.icount;
                        if at < now {
                            last = Some((at, r));
                        }
                    }
                    ExitReason::Watchpoint { .. } => {
                        // Before the instruction that made the access.
                        let at = self.cpu.state.icount.saturating_sub(1).max(from);
                        if at < now {
                            last = Some((at, r));
                        }
                    }
                    _ => break,
                }
                if self.cpu.state.icount >= end {
                    break;
                }
            }
            if let Some((at, r)) = last {
                self.restore_checkpoint(k)?;
                self.reexecute_to(at)?;
                if let ExitReason::Breakpoint(lin) = r {
                    if self.pc_linear() != lin {
                        // The breakpoint is at the handler of an interrupt delivered
                        // at this instruction count: deliver it.
                        self.without_stops(|m| m.step())?;
                    }
                }
                return Ok(r);
            }
            if k == 0 {
                self.restore_checkpoint(0)?;
                return Ok(ExitReason::HistoryStart);
            }
            end = from;
            k -= 1;
        }
    }

    /// Runs to instruction count `target` or a stop point; `pass_first`: a
    /// breakpoint at the first instruction does not stop it.
    fn run_to(&mut self, target: u64, pass_first: bool) -> Result<ExitReason, MachineError> {
        self.cpu.stops.take_stop();
        self.cpu.stops.resume_at = pass_first.then(|| self.pc_linear());
        self.until = crate::debug::Until {
            icount: Some(target),
            ..Default::default()
        };
        let r = self.run();
        self.until = Default::default();
        r
    }
}
