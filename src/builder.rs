//! Building a [`Machine`] in small steps.

use crate::clock::ClockMode;
use crate::digest::{Digest, PeriodicDigest};
use crate::error::MachineError;
use crate::machine::{Guest, Machine, SerialOut};
use crate::rtc::{RtcBase, ICOUNT_RTC_BASE};
use ox86_jit::JitConfig;

/// Builds a [`Machine`].
#[derive(Debug)]
pub struct MachineBuilder {
    ram: u64,
    serial: SerialOut,
    guest: Option<Guest>,
    no_reboot: bool,
    max_insns: Option<u64>,
    clock: ClockMode,
    jit: Option<JitConfig>,
    lockstep: bool,
    rtc: Option<RtcBase>,
    hash_every: Option<PeriodicDigest>,
    snapshot_at: Option<(u64, std::path::PathBuf)>,
    record: Option<std::path::PathBuf>,
    replay: Option<Vec<u8>>,
    pace_idle: bool,
    trace: Option<crate::trace::TracePlan>,
    hooks: Option<Box<dyn crate::trace::TraceHooks>>,
}

impl Default for MachineBuilder {
    fn default() -> Self {
        MachineBuilder::new()
    }
}

impl MachineBuilder {
    /// A builder for a machine with 128 MiB of RAM and COM1 on stdout.
    pub fn new() -> MachineBuilder {
        MachineBuilder {
            ram: 128 << 20,
            serial: SerialOut::Stdout,
            guest: None,
            no_reboot: false,
            max_insns: None,
            clock: ClockMode::Realtime,
            jit: Some(JitConfig::default()),
            lockstep: false,
            rtc: None,
            hash_every: None,
            snapshot_at: None,
            record: None,
            replay: None,
            pace_idle: false,
            trace: None,
            hooks: None,
        }
    }

    /// Lockstep mode: run the interpreter alone beside the JIT and compare the two
    /// after every slice (time then derives from the instruction count, so that both
    /// see the same devices). Host input is not fed to the guest.
    pub fn lockstep(mut self, yes: bool) -> Self {
        self.lockstep = yes;
        self
    }

    /// The JIT's configuration, or `None` to run the interpreter alone (`--interp`).
    pub fn jit(mut self, config: Option<JitConfig>) -> Self {
        self.jit = config;
        self
    }

    /// Guest RAM size in bytes.
    pub fn ram_size(mut self, bytes: u64) -> Self {
        self.ram = bytes;
        self
    }

    /// Where COM1's output goes.
    pub fn serial(mut self, out: SerialOut) -> Self {
        self.serial = out;
        self
    }

    /// End the run on a guest reset instead of rebooting.
    pub fn no_reboot(mut self, yes: bool) -> Self {
        self.no_reboot = yes;
        self
    }

    /// Stop after this many instructions.
    pub fn max_insns(mut self, n: u64) -> Self {
        self.max_insns = Some(n);
        self
    }

    /// Boot a kernel image (Multiboot ELF, plain ELF32; the format is detected).
    pub fn kernel(mut self, image: Vec<u8>, cmdline: String, initrd: Option<Vec<u8>>) -> Self {
        self.guest = Some(Guest::Kernel {
            image,
            cmdline,
            initrd,
        });
        self
    }

    /// Derive guest time from the instruction count: 2^shift ns per instruction. Runs
    /// are then deterministic.
    pub fn icount(mut self, shift: u32) -> Self {
        self.clock = ClockMode::Icount {
            shift: shift.min(10),
        };
        self
    }

    /// Where the RTC's time starts. The default is the host's time in UTC, or under
    /// icount (and lockstep) a fixed date ([`ICOUNT_RTC_BASE`]), so that runs repeat.
    pub fn rtc(mut self, base: RtcBase) -> Self {
        self.rtc = Some(base);
        self
    }

    /// Hands `out` the machine's digests at every multiple of `n` instructions (runs
    /// then stop at each, which costs a little speed; the digest of RAM costs about a
    /// millisecond per 64 MiB). `n` must be at least 1.
    pub fn hash_every(mut self, n: u64, out: impl FnMut(&Digest) + Send + 'static) -> Self {
        self.hash_every = Some(PeriodicDigest {
            every: n.max(1),
            out: Box::new(out),
        });
        self
    }

    /// Saves a snapshot of the machine to `path` when the instruction count reaches
    /// `n` (if it does; a count already past, as after a restore, saves nothing).
    pub fn snapshot_at(mut self, n: u64, path: std::path::PathBuf) -> Self {
        self.snapshot_at = Some((n, path));
        self
    }

    /// Record the run to a replay log at `path` (implies icount): every input from the
    /// host, with the instruction count at which it entered, and checks of the state.
    pub fn record(mut self, path: std::path::PathBuf) -> Self {
        self.record = Some(path);
        self
    }

    /// Replay the log `log` (the bytes of a `record` file): its clock, RTC and input,
    /// and no input from the host; the run stops at the first check that differs.
    pub fn replay(mut self, log: Vec<u8>) -> Self {
        self.replay = Some(log);
        self
    }

    /// Under icount, sleep through the time an idle guest skips (QEMU's `sleep=on`),
    /// so that an idle guest costs no host CPU and its clock keeps pace with the
    /// host's; what the guest sees is the same either way. Off by default (batch runs
    /// go as fast as they can); never while replaying.
    pub fn pace_idle(mut self, yes: bool) -> Self {
        self.pace_idle = yes;
        self
    }

    /// Record an instruction trace (see [`crate::trace`]) to `plan.path`, from
    /// instruction count `plan.from` to `plan.to` (or the end of the run).
    pub fn trace(mut self, plan: crate::trace::TracePlan) -> Self {
        self.trace = Some(plan);
        self
    }

    /// Call `hooks` for every event the tracer sees (see [`crate::trace::TraceHooks`])
    /// from instruction count `from` to `to` (or the end of the run), instead of
    /// writing a trace file.
    pub fn hooks(
        mut self,
        hooks: Box<dyn crate::trace::TraceHooks>,
        from: u64,
        to: Option<u64>,
    ) -> Self {
        self.trace = Some(crate::trace::TracePlan {
            path: "(hooks)".into(),
            from,
            to,
            memory: hooks.wants_memory(),
        });
        self.hooks = Some(hooks);
        self
    }

    /// Boot the built-in demo guest.
    pub fn demo(mut self) -> Self {
        self.guest = Some(Guest::Demo);
        self
    }

    /// Creates the machine and loads its guest.
    pub fn build(self) -> Result<Machine, MachineError> {
        let guest = self.guest.ok_or(MachineError::NoGuest)?;
        let log = match &self.replay {
            Some(bytes) => Some(crate::replay::parse(bytes)?),
            None => None,
        };
        let icount = self.lockstep || self.record.is_some();
        let clock = match (&log, icount, self.clock) {
            (Some((h, _)), _, _) => ClockMode::Icount { shift: h.shift },
            (None, true, ClockMode::Realtime) => ClockMode::Icount { shift: 0 },
            (None, _, c) => c,
        };
        let rtc = self.rtc.unwrap_or(match clock {
            ClockMode::Realtime => RtcBase::Utc,
            ClockMode::Icount { .. } => RtcBase::At(ICOUNT_RTC_BASE),
        });
        let host_utc = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let rtc_start = match &log {
            Some((h, _)) => h.rtc_start,
            None => rtc.start_secs(host_utc),
        };
        let shadow = if self.lockstep {
            Some(Box::new(Machine::new(
                self.ram,
                SerialOut::None,
                guest.clone(),
                self.no_reboot,
                self.max_insns,
                clock,
                None,
                rtc_start,
            )?))
        } else {
            None
        };
        let jit = if self.lockstep {
            Some(self.jit.unwrap_or_default())
        } else {
            self.jit
        };
        let mut m = Machine::new(
            self.ram,
            self.serial,
            guest,
            self.no_reboot,
            self.max_insns,
            clock,
            jit,
            rtc_start,
        )?;
        m.shadow = shadow;
        let hooks = self.hooks;
        m.trace = self
            .trace
            .map(|plan| crate::machine::Tracing::Planned(plan, hooks));
        m.hash_every = self.hash_every;
        m.snapshot_at = self.snapshot_at;
        m.pace_idle = self.pace_idle && self.replay.is_none();
        if let Some((h, events)) = log {
            if h.machine != m.identity() {
                return Err(crate::replay::LogError::OtherMachine.into());
            }
            m.replayer = Some(crate::replay::Replayer::new(events));
        }
        if let Some(path) = self.record {
            let shift = match clock {
                ClockMode::Icount { shift } => shift,
                ClockMode::Realtime => 0,
            };
            let header = crate::replay::Header {
                machine: m.identity(),
                rtc_start,
                shift,
            };
            let rec = crate::replay::Recorder::create(&path, header).map_err(|msg| {
                MachineError::RecordWrite {
                    path: path.display().to_string(),
                    msg,
                }
            })?;
            m.recorder = Some((rec, ox86_devices::host_input::HostInput::default()));
        }
        Ok(m)
    }
}
