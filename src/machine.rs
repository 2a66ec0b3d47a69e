//! The machine: CPU, memory, devices and firmware, and the run loop that drives them
//! on a virtual clock.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ox86_bios::{EntryMode, EntryState};
use ox86_cpu::state::{
    attr, Segment, CR0_PE, CS, DS, ES, FS, GS, IF, RAX, RBP, RBX, RCX, RDI, RDX, RSI, RSP, SS,
};
use ox86_cpu::{AccelStats, Cpu, CpuExit, DebugStop, RunLimits, Watchpoint};
use ox86_devices::uart::SerialInput;
use ox86_devices::{Platform, PlatformConfig};
use ox86_jit::{Jit, JitConfig};
use ox86_mmu::{Memory, PhysAddr};

use crate::bus::MachineBus;
use crate::clock::{Clock, ClockMode};
use crate::digest::{Digest, PeriodicDigest};
use crate::error::MachineError;
use crate::replay::{Check, Event, Recorder, Replayer};
use crate::snapshot::{self, SnapshotError};

/// Where the guest's COM1 output goes.
pub enum SerialOut {
    /// The host's standard output.
    Stdout,
    /// Discarded.
    None,
    /// Any writer (a file, a buffer shared with a test).
    Writer(Box<dyn Write + Send>),
}

impl std::fmt::Debug for SerialOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SerialOut::Stdout => "Stdout",
            SerialOut::None => "None",
            SerialOut::Writer(_) => "Writer",
        })
    }
}

/// The guest to boot.
#[derive(Debug, Clone)]
pub enum Guest {
    /// A kernel image (format detected) with its command line and initrd/module.
    Kernel {
        /// The image bytes.
        image: Vec<u8>,
        /// The command line.
        cmdline: String,
        /// An initrd (Linux) or Multiboot module.
        initrd: Option<Vec<u8>>,
    },
    /// The built-in demo guest.
    Demo,
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest wrote to the isa-debug-exit port: status `(value << 1) | 1`.
    GuestExit(u32),
    /// The guest reset the machine and `no_reboot` was set.
    Reset,
    /// The guest halted with interrupts disabled: nothing can wake it.
    Halted,
    /// The instruction limit was reached.
    InstructionLimit,
    /// The host asked to quit (the console's Ctrl-A x).
    Quit,
    /// A replay reached the end of its log.
    ReplayEnd,
    /// The host asked for a pause (the console's Ctrl-A c, for the monitor): the
    /// machine stopped at a slice boundary, and `run` goes on from there.
    Paused,
    /// The next instruction is at a breakpoint (linear address) of the debugger.
    Breakpoint(u64),
    /// The instruction that just completed accessed a watched range.
    Watchpoint {
        /// The watchpoint.
        watch: Watchpoint,
        /// Whether the access was a write.
        write: bool,
    },
    /// The instruction count given to [`Machine::run_until`] was reached.
    Reached,
    /// [`Machine::step`] ran one instruction (or delivered one exception or
    /// interrupt).
    Stepped,
    /// The host time given to [`Machine::run_until`] ran out.
    TimeUp,
    /// Reverse execution reached the start of the debugger's history.
    HistoryStart,
}

/// Counters for `--stats`.
#[derive(Debug, Clone, Default)]
pub struct MachineStats {
    /// Guest instructions retired in this run (since the snapshot it resumed, if any).
    pub instructions: u64,
    /// Decoded blocks created.
    pub blocks_decoded: u64,
    /// TLB misses.
    pub tlb_misses: u64,
    /// Whole-TLB flushes.
    pub tlb_flushes: u64,
    /// Decoded blocks invalidated by code writes.
    pub invalidations: u64,
    /// Exceptions and interrupts delivered.
    pub interrupts: u64,
    /// What the JIT did (None with the interpreter alone).
    pub jit: Option<AccelStats>,
}

/// In lockstep mode, guest memory is compared every this many slices (and at the end).
const LOCKSTEP_MEMORY_EVERY: u64 = 64;
/// Longest host sleep of an idle guest before input and quit are looked at again.
const MAX_IDLE_WAIT: Duration = Duration::from_millis(10);

/// A whole PC.
pub struct Machine {
    pub(crate) cpu: Cpu,
    pub(crate) mem: Memory,
    pub(crate) bus: MachineBus,
    pub(crate) guest: Guest,
    pub(crate) quit: Arc<AtomicBool>,
    /// While set (from any thread), the run stops at the next slice boundary with
    /// [`ExitReason::Paused`].
    pub(crate) pause: Arc<AtomicBool>,
    pub(crate) no_reboot: bool,
    pub(crate) max_insns: Option<u64>,
    /// Digests every this many instructions (`--hash-every`), and where they go.
    pub(crate) hash_every: Option<PeriodicDigest>,
    /// The instruction count of the last periodic digest.
    pub(crate) hashed_at: u64,
    /// Recording (`--record`): the log, and the queue the host's console input goes to
    /// until the machine takes it at a slice boundary.
    pub(crate) recorder: Option<(Recorder, SerialInput)>,
    /// Replaying (`--replay`).
    pub(crate) replayer: Option<Replayer>,
    /// Icount mode: sleep through the guest time an idle guest skips, so that an idle
    /// guest costs no host CPU and its clock keeps pace with the host's.
    pub(crate) pace_idle: bool,
    /// The instruction count this run started from (not 0 after a restore).
    pub(crate) start_icount: u64,
    /// Save a snapshot here when the instruction count reaches this (`--snapshot-at`).
    pub(crate) snapshot_at: Option<(u64, std::path::PathBuf)>,
    /// The interpreter-only twin of a lockstep run.
    pub(crate) shadow: Option<Box<Machine>>,
    /// What a debugging run stops at beside stop points (see [`crate::debug`]).
    pub(crate) until: crate::debug::Until,
    /// The debugger's history of checkpoints, when kept (see [`crate::history`]).
    pub(crate) history: Option<crate::history::History>,
    /// While set, the guest's console output is dropped (a re-execution).
    pub(crate) muted: Arc<AtomicBool>,
    /// The instruction trace asked for, being written, or written.
    pub(crate) trace: Option<Tracing>,
    /// Trace sinks made so far (each sink's raw ids carry its number).
    pub(crate) trace_epoch: u32,
}

/// Where the instruction trace is.
pub(crate) enum Tracing {
    /// To start at `plan.from`, into its file or (given) the embedder's hooks.
    Planned(
        crate::trace::TracePlan,
        Option<Box<dyn crate::trace::TraceHooks>>,
    ),
    /// Being written, until `plan.to` (with the thread that calls the hooks).
    Writing(
        crate::trace::TracePlan,
        crate::trace::TraceWriter,
        Option<std::thread::JoinHandle<Result<(), String>>>,
    ),
    /// Written.
    Done(crate::trace::TraceSummary),
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("cpu", &self.cpu)
            .field("mem", &self.mem)
            .finish()
    }
}

impl Machine {
    /// Creates the machine and loads the guest.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        ram: u64,
        serial: SerialOut,
        guest: Guest,
        no_reboot: bool,
        max_insns: Option<u64>,
        clock: ClockMode,
        jit: Option<JitConfig>,
        rtc_start: u64,
    ) -> Result<Machine, MachineError> {
        let mem = Memory::new(ram)?;
        let out: Box<dyn Write + Send> = match serial {
            SerialOut::Stdout => Box::new(std::io::stdout()),
            SerialOut::None => Box::new(std::io::sink()),
            SerialOut::Writer(w) => w,
        };
        let muted = Arc::new(AtomicBool::new(false));
        let out = Box::new(crate::mute::Mutable::new(out, muted.clone()));
        let config = PlatformConfig::default()
            .with_com1(out)
            .with_ram_size(ram)
            .with_rtc_start(rtc_start);
        let platform = Platform::new(config).map_err(|e| MachineError::Devices(e.to_string()))?;
        let bus = MachineBus::new(platform, Clock::new(clock));
        let quit = Arc::new(AtomicBool::new(false));
        let mut cpu = Cpu::new();
        if let Some(config) = jit {
            cpu.accel = Some(Box::new(Jit::new(config)));
        }
        let mut m = Machine {
            cpu,
            mem,
            bus,
            guest,
            quit,
            pause: Arc::new(AtomicBool::new(false)),
            no_reboot,
            max_insns,
            hash_every: None,
            hashed_at: 0,
            snapshot_at: None,
            start_icount: 0,
            recorder: None,
            replayer: None,
            pace_idle: false,
            shadow: None,
            until: Default::default(),
            history: None,
            muted,
            trace: None,
            trace_epoch: 0,
        };
        m.load_guest()?;
        Ok(m)
    }

    fn load_guest(&mut self) -> Result<(), MachineError> {
        let entry = match &self.guest {
            Guest::Kernel {
                image,
                cmdline,
                initrd,
            } => {
                let modules: Vec<ox86_bios::Module<'_>> = initrd
                    .iter()
                    .map(|d| ox86_bios::Module {
                        data: d,
                        cmdline: "initrd",
                    })
                    .collect();
                ox86_bios::load_kernel(&mut self.mem, image, cmdline, &modules)?
            }
            Guest::Demo => {
                let (image, addr, entry) = ox86_bios::demo_image();
                ox86_bios::load_flat(&mut self.mem, &image, PhysAddr(addr), entry)?
            }
        };
        self.cpu.reset();
        apply_entry(&mut self.cpu, &entry);
        Ok(())
    }

    /// Statistics so far.
    pub fn stats(&self) -> MachineStats {
        MachineStats {
            instructions: self.cpu.state.icount - self.start_icount,
            blocks_decoded: self.cpu.blocks.decoded,
            tlb_misses: self.cpu.tlb.misses,
            tlb_flushes: self.cpu.tlb.flushes,
            invalidations: self.cpu.blocks.invalidated,
            interrupts: self.cpu.stats.interrupts,
            jit: self.cpu.accel.as_ref().map(|a| a.stats()),
        }
    }

    /// Ends the machine as its process exits: the accelerator stops (its threads end,
    /// and the entries it handed the translation cache are written), and the rest —
    /// guest RAM, decoded blocks, devices — is left for the operating system to reclaim
    /// with the process, at once (freeing some hundred thousand allocations one by one
    /// took about 25 ms at the end of a shell session). Only for a process about to
    /// exit, whose serial output is unbuffered (the host's standard output, which the
    /// runtime flushes at exit, a file, or nothing).
    pub fn end_with_process(mut self) {
        drop(self.cpu.accel.take());
        if let Some(shadow) = self.shadow.as_deref_mut() {
            drop(shadow.cpu.accel.take());
        }
        std::mem::forget(self);
    }

    /// The digests of the machine's state now (CPU and FPU, devices, RAM): equal for
    /// two runs that reached the same state.
    pub fn digest(&self) -> Digest {
        Digest::of(&self.cpu.state, &self.bus.platform.state_bytes(), &self.mem)
    }

    /// What snapshots name this machine by: a hash of its guest (kernel image, initrd,
    /// command line, or the demo) and its RAM size.
    pub(crate) fn identity(&self) -> u128 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        let mut part = |b: &[u8]| {
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        };
        match &self.guest {
            Guest::Kernel {
                image,
                cmdline,
                initrd,
            } => {
                part(b"kernel");
                part(image);
                part(cmdline.as_bytes());
                part(initrd.as_deref().unwrap_or(b"no initrd"));
            }
            Guest::Demo => part(b"demo"),
        }
        part(&self.mem.ram_size().to_le_bytes());
        h.digest128()
    }

    /// A snapshot of the whole machine, as the bytes of a snapshot file (see
    /// [`crate::snapshot`]): CPU and FPU, devices, the clock, RAM.
    pub fn snapshot(&self) -> Vec<u8> {
        snapshot::encode(&snapshot::Body {
            machine: self.identity(),
            ram_size: self.mem.ram_size(),
            cpu: self.cpu.state.clone(),
            a20: self.mem.a20_enabled(),
            clock: self.bus.clock.save(),
            devices: self.bus.platform.state_bytes(),
            chunks: snapshot::save_ram(&self.mem),
        })
    }

    /// Puts the machine in the state of snapshot file bytes `bytes`, taken of the same
    /// machine (the same guest and RAM size). Everything is checked before anything
    /// changes, except the devices' own state, which is checked as it is taken back:
    /// after an error there the machine is not to be run. Decoded blocks and compiled
    /// code over RAM that changed are dropped as after any write to code.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        let body = snapshot::decode(bytes)?;
        if body.machine != self.identity() || body.ram_size != self.mem.ram_size() {
            return Err(SnapshotError::OtherMachine);
        }
        let ram = snapshot::load_ram(&body.chunks, body.ram_size)?;
        self.bus
            .platform
            .restore(&body.devices)
            .map_err(SnapshotError::Corrupt)?;
        self.mem.set_a20(true);
        snapshot::write_ram(&mut self.mem, &ram);
        self.mem.set_a20(body.a20);
        self.cpu.state = body.cpu;
        self.cpu.flush_tlb();
        self.bus.clock.restore(body.clock);
        self.hashed_at = self.cpu.state.icount;
        self.start_icount = self.cpu.state.icount;
        if let Some(shadow) = self.shadow.as_deref_mut() {
            shadow.restore(bytes)?;
        }
        // The debugger's history was of another run: it starts again from here.
        self.restart_history();
        Ok(())
    }

    /// The CPU (for inspection).
    pub fn cpu(&self) -> &Cpu {
        &self.cpu
    }

    /// Guest memory (for inspection).
    pub fn memory(&self) -> &Memory {
        &self.mem
    }

    /// A handle that feeds host input to COM1.
    pub fn serial_input(&self) -> Option<SerialInput> {
        if let Some(h) = &self.history {
            // Taken into COM1 at slice boundaries, and kept for re-execution.
            return Some(h.staging.clone());
        }
        if let Some((_, staging)) = &self.recorder {
            // Taken into COM1 at slice boundaries, and logged.
            return Some(staging.clone());
        }
        if self.shadow.is_some() || self.replayer.is_some() {
            // Replay: the log is the only input.
            // Lockstep: host input would reach one run only; it goes nowhere.
            return Some(SerialInput::default());
        }
        self.bus.platform.serial_input(0)
    }

    /// A flag that, while set (from any thread), stops the run at the next slice
    /// boundary with [`ExitReason::Paused`]; whoever clears it lets `run` go on.
    pub fn pause_flag(&self) -> Arc<AtomicBool> {
        self.pause.clone()
    }

    /// A flag that, once set (from any thread), ends the run with [`ExitReason::Quit`].
    pub fn quit_flag(&self) -> Arc<AtomicBool> {
        self.quit.clone()
    }

    /// Runs the guest until it exits, resets (with `no_reboot`), halts for good,
    /// reaches the instruction limit, or the host asks to quit. In lockstep mode a
    /// second machine runs the interpreter alone beside this one, and the two are
    /// compared after every slice.
    pub fn run(&mut self) -> Result<ExitReason, MachineError> {
        let mut slices = 0u64;
        loop {
            if self.pause.load(Ordering::Relaxed) {
                return Ok(ExitReason::Paused);
            }
            let r = self.slice()?;
            if let Some(mut shadow) = self.shadow.take() {
                let r2 = shadow.slice()?;
                slices += 1;
                let full = r.is_some() || slices.is_multiple_of(LOCKSTEP_MEMORY_EVERY);
                crate::lockstep::compare(self, &shadow, full).map_err(MachineError::Lockstep)?;
                if r != r2 {
                    return Err(MachineError::Lockstep(format!(
                        "the runs ended differently: JIT {r:?}, interpreter {r2:?}"
                    )));
                }
                self.shadow = Some(shadow);
            }
            if let Some(r) = r {
                let icount = self.cpu.state.icount;
                if !matches!(
                    r,
                    ExitReason::Paused
                        | ExitReason::Breakpoint(_)
                        | ExitReason::Watchpoint { .. }
                        | ExitReason::Reached
                        | ExitReason::Stepped
                        | ExitReason::TimeUp
                        | ExitReason::HistoryStart
                ) {
                    self.finish_trace()?;
                }
                if self.recorder.is_some() {
                    // A last check: the state the run ended in.
                    let c = Check::of(&self.cpu.state, &self.bus.platform.state_bytes(), &self.mem);
                    if let Some((rec, _)) = self.recorder.as_mut() {
                        rec.write(&Event::Check(c))
                            .and_then(|_| rec.finish(icount))
                            .map_err(|msg| MachineError::RecordWrite {
                                path: rec.path().to_string(),
                                msg,
                            })?;
                    }
                }
                // (Under the debugger's history the replayed input is a re-execution's,
                // which may stop anywhere.)
                if !matches!(r, ExitReason::ReplayEnd | ExitReason::Quit)
                    && self.replayer.is_some()
                    && self.history.is_none()
                {
                    // The run ended by itself: where the recording did, in its state?
                    if self.replay(icount)?.is_some() {
                        return Err(MachineError::Diverged {
                            icount,
                            what: format!("the run ended ({r:?}) before the recording did"),
                        });
                    }
                }
                return Ok(r);
            }
        }
    }

    /// At a slice boundary with a trace asked for: starts or stops it when its window
    /// says, and reports a writer that failed. Returns the instructions to the next
    /// start or stop.
    fn trace_at(&mut self, icount: u64) -> Result<u64, MachineError> {
        if let Some(Tracing::Planned(plan, _)) = &self.trace {
            if icount < plan.from {
                return Ok(plan.from - icount);
            }
            let Some(Tracing::Planned(plan, hooks)) = self.trace.take() else {
                unreachable!("matched above");
            };
            let fail = |msg: String| MachineError::Trace {
                path: plan.path.display().to_string(),
                msg,
            };
            let (w, out, thread) = match hooks {
                None => {
                    let (w, out) = crate::trace::TraceWriter::create(
                        &plan.path,
                        icount,
                        self.identity(),
                        plan.flags(),
                    )
                    .map_err(fail)?;
                    (w, out, None)
                }
                Some(h) => {
                    let (pipe, thread) = crate::trace::hooks::spawn(h).map_err(fail)?;
                    let (w, out) = crate::trace::TraceWriter::to_stream(
                        Box::new(pipe),
                        icount,
                        self.identity(),
                        plan.flags(),
                    )
                    .map_err(fail)?;
                    (w, out, Some(thread))
                }
            };
            self.trace_epoch += 1;
            let mut sink = ox86_cpu::trace::TraceSink::new(out, icount, self.trace_epoch);
            if plan.memory {
                sink = sink.with_memory();
            }
            let ns = self.bus.clock.now(icount);
            sink.event(icount, ox86_cpu::trace::kind::TIME, &[ns]);
            self.cpu.trace = Some(Box::new(sink));
            self.trace = Some(Tracing::Writing(plan, w, thread));
        }
        let Some(Tracing::Writing(plan, w, _)) = &self.trace else {
            return Ok(u64::MAX);
        };
        if let Some(msg) = w.error() {
            let path = plan.path.display().to_string();
            self.cpu.trace = None;
            self.trace = None;
            return Err(MachineError::Trace {
                path,
                msg: format!(
                    "{msg}; the trace stops at the last whole chunk before instruction {icount}"
                ),
            });
        }
        match plan.to {
            Some(to) if icount >= to => {
                self.finish_trace()?;
                Ok(u64::MAX)
            }
            Some(to) => Ok(to - icount),
            None => Ok(u64::MAX),
        }
    }

    /// Ends the trace being written here (at the current instruction count): the
    /// writer writes what it was handed and the end record. Returns what it wrote, if
    /// a trace was written.
    pub fn finish_trace(&mut self) -> Result<Option<crate::trace::TraceSummary>, MachineError> {
        match self.trace.take() {
            Some(Tracing::Writing(plan, w, thread)) => {
                if let Some(mut sink) = self.cpu.trace.take() {
                    let icount = self.cpu.state.icount;
                    let ns = self.bus.clock.now(icount);
                    sink.event(icount, ox86_cpu::trace::kind::TIME, &[ns]);
                    sink.finish(icount);
                }
                let fail = |msg: String| MachineError::Trace {
                    path: plan.path.display().to_string(),
                    msg,
                };
                let s = w.finish().map_err(fail)?;
                if let Some(t) = thread {
                    t.join()
                        .map_err(|_| fail("a hook panicked".into()))?
                        .map_err(fail)?;
                }
                self.trace = Some(Tracing::Done(s.clone()));
                Ok(Some(s))
            }
            Some(Tracing::Done(s)) => {
                self.trace = Some(Tracing::Done(s.clone()));
                Ok(Some(s))
            }
            other => {
                self.trace = other;
                Ok(None)
            }
        }
    }

    /// Recording, at a slice boundary: moves the host's console input into COM1 and
    /// logs it, and logs a check of the state when one is due. Returns the instructions
    /// to the next check.
    fn record(&mut self, icount: u64) -> Result<u64, MachineError> {
        let ns = self.bus.clock.now(icount);
        let check = self
            .recorder
            .as_ref()
            .is_some_and(|(r, _)| icount >= r.next_check)
            .then(|| Check::of(&self.cpu.state, &self.bus.platform.state_bytes(), &self.mem));
        let com1 = self.bus.platform.serial_input(0);
        let Some((rec, staging)) = self.recorder.as_mut() else {
            return Ok(u64::MAX);
        };
        let fail = |rec: &Recorder, msg: String| MachineError::RecordWrite {
            path: rec.path().to_string(),
            msg,
        };
        let typed = staging.take(usize::MAX);
        if let (false, Some(com1)) = (typed.is_empty(), com1) {
            // What the queue refuses is lost, as without recording.
            let n = com1.push(&typed);
            let e = Event::Console {
                icount,
                ns,
                bytes: typed[..n].to_vec(),
            };
            rec.write(&e).map_err(|m| fail(rec, m))?;
            rec.next_check = rec
                .next_check
                .min(icount + crate::replay::CHECK_AFTER_INPUT);
        }
        if let Some(c) = check {
            rec.write(&Event::Check(c)).map_err(|m| fail(rec, m))?;
            rec.next_check = (icount / crate::replay::CHECK_EVERY + 1) * crate::replay::CHECK_EVERY;
        }
        Ok(rec.next_check - icount)
    }

    /// Replaying, at a slice boundary: feeds the logged input due now and compares the
    /// checks due now. Returns the instructions to the next event, or None at the end
    /// of the log.
    fn replay(&mut self, icount: u64) -> Result<Option<u64>, MachineError> {
        let ns = self.bus.clock.now(icount);
        loop {
            let Some(rp) = self.replayer.as_mut() else {
                return Ok(Some(u64::MAX));
            };
            match rp.next_icount() {
                None => return Ok(None),
                Some(n) if n > icount => return Ok(Some(n - icount)),
                Some(n) if n < icount => {
                    return Err(MachineError::Diverged {
                        icount,
                        what: format!("the run passed instruction {n}, where the log has an event"),
                    })
                }
                Some(_) => {}
            }
            // Console input at this count but a later guest time: the guest is halted
            // and its time has to move on first.
            if let Some(Event::Console { ns: want, .. }) = rp.peek() {
                if *want > ns {
                    if self.bus.platform.next_event_ns().is_none() {
                        // Guest time cannot move on: it never reaches the input.
                        return Err(MachineError::Diverged {
                            icount,
                            what: format!(
                                "the logged input is due at {want} ns, and guest time stopped at {ns} ns"
                            ),
                        });
                    }
                    return Ok(Some(u64::MAX));
                }
                if *want < ns {
                    return Err(MachineError::Diverged {
                        icount,
                        what: format!("guest time is {ns} ns, the logged input came at {want} ns"),
                    });
                }
            }
            match rp.take_due(icount) {
                Some(Event::Console { bytes, .. }) => {
                    if let Some(com1) = self.bus.platform.serial_input(0) {
                        com1.push(&bytes);
                    }
                }
                Some(Event::Check(want)) => {
                    let now =
                        Check::of(&self.cpu.state, &self.bus.platform.state_bytes(), &self.mem);
                    if let Some(what) = now.differs(&want) {
                        return Err(MachineError::Diverged { icount, what });
                    }
                }
                Some(Event::End { .. }) => return Ok(None),
                Some(Event::Header(_)) | None => {}
            }
        }
    }

    /// Runs one slice (sized by the clock to end by the next device event, see
    /// [`crate::clock::Clock::slice_budget`]), then devices, requests, idling.
    /// Returns why the run ends, if it does.
    fn slice(&mut self) -> Result<Option<ExitReason>, MachineError> {
        if self.quit.load(Ordering::Relaxed) {
            return Ok(Some(ExitReason::Quit));
        }
        let icount = self.cpu.state.icount;
        self.bus.advance(icount);
        // In real time, slices also end at the edges of masked timers (see
        // Platform::next_timer_ns); in icount mode time cannot run past an event.
        let next = match self.bus.clock.mode() {
            ClockMode::Realtime => self.bus.platform.next_timer_ns(),
            ClockMode::Icount { .. } => self.bus.platform.next_event_ns(),
        };
        let mut budget = self.bus.clock.slice_budget(icount, next);
        if let Some(every) = self.hash_every.as_ref().map(|h| h.every) {
            // Slices end at each multiple, where the digest is taken.
            if icount.is_multiple_of(every) && icount > 0 && self.hashed_at != icount {
                self.hashed_at = icount;
                let d = self.digest();
                if let Some(h) = self.hash_every.as_mut() {
                    (h.out)(&d);
                }
            }
            budget = budget.min(every - icount % every);
        }
        // Input moved into COM1 here (record, replay, the history) enters the guest
        // here: the devices are advanced again after it (see the UART).
        let feeds = self.recorder.is_some() || self.replayer.is_some() || self.history.is_some();
        if self.history.is_some() {
            budget = budget.min(self.keep_history_at(icount));
            budget = budget.min(self.history_input(icount));
        }
        if self.recorder.is_some() {
            budget = budget.min(self.record(icount)?);
        }
        if self.replayer.is_some() {
            match self.replay(icount)? {
                Some(n) => budget = budget.min(n),
                // Re-execution under the history: the logged input is all fed, and
                // new input is taken again once the run passes where it went before.
                None if self.history.is_some() => self.replayer = None,
                None => return Ok(Some(ExitReason::ReplayEnd)),
            }
        }
        if feeds {
            self.bus.advance(icount);
        }
        if let Some((at, path)) = &self.snapshot_at {
            if icount == *at {
                std::fs::write(path, self.snapshot()).map_err(|e| MachineError::SnapshotWrite {
                    path: path.display().to_string(),
                    msg: e.to_string(),
                })?;
                self.snapshot_at = None;
            } else if icount < *at {
                budget = budget.min(at - icount);
            }
        }
        if self.trace.is_some() {
            budget = budget.min(self.trace_at(icount)?);
        }
        if let Some(max) = self.max_insns {
            let left = max.saturating_sub(icount);
            if left == 0 {
                return Ok(Some(ExitReason::InstructionLimit));
            }
            budget = budget.min(left);
        }
        match self.until.budget(icount, self.cpu.stats.interrupts) {
            Ok(n) => budget = budget.min(n),
            Err(r) => return Ok(Some(r)),
        }
        let exit = self.cpu.run(
            &mut self.mem,
            &mut self.bus,
            RunLimits { max_insns: budget },
        );
        self.bus.advance(self.cpu.state.icount);
        if exit == CpuExit::Debug {
            return Ok(match self.cpu.stops.take_stop() {
                Some(DebugStop::Breakpoint(lin)) => Some(ExitReason::Breakpoint(lin)),
                Some(DebugStop::Watch { watch, write }) => {
                    Some(ExitReason::Watchpoint { watch, write })
                }
                None => None,
            });
        }
        let req = self.bus.platform.take_requests();
        if let Some(a20) = req.a20 {
            self.mem.set_a20(a20);
            self.cpu.flush_tlb();
        }
        if let Some(status) = req.exit_status {
            let _ = std::io::stdout().flush();
            return Ok(Some(ExitReason::GuestExit(status)));
        }
        if req.reset.is_some() || exit == CpuExit::Shutdown {
            if self.no_reboot {
                return Ok(Some(ExitReason::Reset));
            }
            tracing::info!(target: "ox86::machine", "guest reset: reloading the guest");
            self.bus.platform.reset();
            self.load_guest()?;
            return Ok(None);
        }
        if exit == CpuExit::Halted {
            if self.cpu.state.flags & IF == 0 {
                return Ok(Some(ExitReason::Halted));
            }
            // Idle: wait for the next device event (or input), costing no host CPU.
            let next = self.bus.platform.next_event_ns();
            let icount = self.cpu.state.icount;
            let skipped = self.bus.clock.idle_until(icount, next, MAX_IDLE_WAIT);
            if self.pace_idle && !skipped.is_zero() {
                // Icount mode, paced: the guest's idle time passes on the host too.
                std::thread::sleep(skipped);
            }
            if next.is_none() && matches!(self.bus.clock.mode(), ClockMode::Icount { .. }) {
                // Nothing but host input can wake the guest.
                std::thread::sleep(MAX_IDLE_WAIT);
            }
        }
        Ok(None)
    }
}

/// Sets the CPU state a loader asked for.
fn apply_entry(cpu: &mut Cpu, e: &EntryState) {
    let s = &mut cpu.state;
    for (r, v) in [
        (RAX, e.eax),
        (RBX, e.ebx),
        (RCX, e.ecx),
        (RDX, e.edx),
        (RSI, e.esi),
        (RDI, e.edi),
        (RBP, e.ebp),
        (RSP, e.esp),
    ] {
        s.regs[r] = v as u64;
    }
    s.rip = e.eip as u64;
    if let Some(g) = e.gdtr {
        s.gdtr.base = g.base as u64;
        s.gdtr.limit = g.limit as u32;
    }
    match e.mode {
        EntryMode::Real {
            cs,
            ds,
            es,
            fs,
            gs,
            ss,
        } => {
            for (seg, sel) in [(CS, cs), (DS, ds), (ES, es), (FS, fs), (GS, gs), (SS, ss)] {
                s.seg[seg] = Segment::real(sel);
            }
            s.seg[CS].attr |= attr::CODE;
            s.seg[CS].update_rights();
        }
        EntryMode::Flat32 => {
            s.cr0 |= CR0_PE;
            for seg in [CS, DS, ES, FS, GS, SS] {
                let code = seg == CS;
                let mut a = attr::P | attr::S | attr::RW | attr::ACCESSED | attr::DB | attr::G;
                if code {
                    a |= attr::CODE;
                }
                let mut sg = Segment {
                    selector: if code { 0x10 } else { 0x18 },
                    attr: a,
                    limit: 0xffff_ffff,
                    ..Default::default()
                };
                sg.update_rights();
                s.seg[seg] = sg;
            }
        }
    }
    cpu.flush_tlb();
}
