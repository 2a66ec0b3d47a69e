//! The virtual clock: guest time in nanoseconds, either following the host's
//! monotonic clock (the default) or derived from the retired-instruction count
//! (`--icount`), which makes runs deterministic: the same image and input give the
//! same execution on every run.
//!
//! In real time the guest does not see the emulator's stalls: when the host preempts
//! the emulator (another process, the JIT's compiler thread on one core) or a sleep
//! overshoots, guest time pauses rather than jumping. Guest time advances by at most
//! [`MAX_NS_PER_INSN`] for each instruction retired since it was last read, and never
//! runs more than [`DEADLINE_GRACE_NS`] past the next device event until that event
//! has been delivered. The host time held back is kept as a lag. Without this a stall
//! of a few milliseconds let several PIT periods pass with one interrupt (lost ticks:
//! the kernel's jiffies-based PIT clocksource then disagrees with the TSC and the
//! clocksource watchdog marks the TSC unstable), or made two reads of the PIT a few
//! instructions apart look milliseconds apart (the TSC calibration fails).

use std::time::{Duration, Instant};

/// How guest time advances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockMode {
    /// Guest time is host time since the machine started.
    Realtime,
    /// Guest time is `icount << shift` nanoseconds, plus the idle time skipped while
    /// the guest was halted.
    Icount {
        /// Each instruction takes 2^shift ns.
        shift: u32,
    },
}

/// Guest time.
#[derive(Debug)]
pub struct Clock {
    mode: ClockMode,
    start: Instant,
    /// Time skipped while halted (icount mode).
    idle_ns: u64,
    /// The latest time handed out: guest time never goes backwards.
    last: u64,
    /// Real time: instruction count and time of the last slice, and the host time per
    /// instruction measured over recent slices (in 1/1024 ns).
    pace: (u64, u64, u64),
    /// Real time: host time the guest did not see (stalls), in ns.
    lag: u64,
    /// Real time: the instruction count when the clock was last read.
    last_icount: u64,
    /// Real time: guest time of the next device event, set by [`Clock::slice_budget`].
    deadline: Option<u64>,
}

/// The TSC runs at 1 GHz: one tick per nanosecond of guest time.
pub const TSC_HZ: u64 = 1_000_000_000;

/// Most guest time an idle guest skips at once in icount mode (10 ms).
pub const ICOUNT_IDLE_STEP: u64 = 10_000_000;
/// Most instructions between device checks in icount mode (events land exactly on
/// their instruction anyway; this bounds the latency of host input and quit).
const ICOUNT_SLICE: u64 = 100_000;
/// Fewest and most instructions between device checks in real time.
const REALTIME_SLICE: (u64, u64) = (100_000, 1_000_000);
/// Host time per instruction assumed before any has been measured (1/1024 ns).
const INITIAL_NS_PER_KINSN: u64 = 10 << 10;
/// Real time: the most guest time one instruction may take (the guest sees a machine
/// of at least 1 MIPS however slowly the host runs it). Each reading of the clock
/// also allows one instruction's worth.
pub const MAX_NS_PER_INSN: u64 = 1_000;
/// Real time: how far guest time may run past the next device event before that event
/// is delivered (well under any timer period a guest programs).
pub const DEADLINE_GRACE_NS: u64 = 100_000;

impl Clock {
    /// A clock at time 0.
    pub fn new(mode: ClockMode) -> Clock {
        Clock {
            mode,
            start: Instant::now(),
            idle_ns: 0,
            last: 0,
            pace: (0, 0, INITIAL_NS_PER_KINSN),
            lag: 0,
            last_icount: 0,
            deadline: None,
        }
    }

    /// The mode.
    pub fn mode(&self) -> ClockMode {
        self.mode
    }

    /// What a snapshot keeps of the clock: the idle time skipped (icount mode) and the
    /// latest guest time handed out.
    pub fn save(&self) -> (u64, u64) {
        (self.idle_ns, self.last)
    }

    /// Goes on from a saved clock: in icount mode guest time is again a function of
    /// the instruction count; in real time it continues from the saved time.
    pub fn restore(&mut self, (idle_ns, last): (u64, u64)) {
        self.idle_ns = idle_ns;
        self.last = last;
        if self.mode == ClockMode::Realtime {
            // Host time from now on counts from the saved guest time.
            let host = self.host_elapsed();
            if host >= last {
                self.lag = host - last;
            } else {
                self.lag = 0;
                if let Some(s) = self.start.checked_sub(Duration::from_nanos(last - host)) {
                    self.start = s;
                }
            }
            self.deadline = None;
        }
    }

    /// Guest time at instruction count `icount`.
    #[inline]
    pub fn now(&mut self, icount: u64) -> u64 {
        let t = match self.mode {
            ClockMode::Realtime => self.realtime_now(icount),
            ClockMode::Icount { shift } => (icount << shift).wrapping_add(self.idle_ns),
        };
        self.last = self.last.max(t);
        self.last
    }

    /// Real time: host time less the lag, held to the limits the module describes
    /// (what is held back joins the lag).
    fn realtime_now(&mut self, icount: u64) -> u64 {
        let host = self.host_elapsed().saturating_sub(self.lag);
        let insns = icount.saturating_sub(self.last_icount).saturating_add(1);
        self.last_icount = icount;
        let mut limit = self
            .last
            .saturating_add(insns.saturating_mul(MAX_NS_PER_INSN));
        if let Some(d) = self.deadline {
            limit = limit.min(d.saturating_add(DEADLINE_GRACE_NS).max(self.last));
        }
        if host > limit {
            self.lag += host - limit;
            limit
        } else {
            host
        }
    }

    fn host_elapsed(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Real time: whether the host clock (less the lag) has reached the next device
    /// event; false in icount mode, where slices end exactly at events.
    pub fn deadline_passed(&self) -> bool {
        self.deadline
            .is_some_and(|d| self.host_elapsed().saturating_sub(self.lag) >= d)
    }

    /// Host time held back from the guest so far (ns; 0 in icount mode).
    pub fn lag_ns(&self) -> u64 {
        self.lag
    }

    /// How many instructions fit before guest time `t` (icount mode), or None when time
    /// does not follow instructions.
    pub fn insns_until(&mut self, icount: u64, t: u64) -> Option<u64> {
        match self.mode {
            ClockMode::Realtime => None,
            ClockMode::Icount { shift } => {
                let now = self.now(icount);
                Some((t.saturating_sub(now) >> shift).max(1))
            }
        }
    }

    /// How many instructions to run before devices are looked at again, when the next
    /// device event is due at guest time `next` (if any). In icount mode the slice
    /// ends exactly at the event. In real time it covers half the time to the event
    /// at the speed measured over the last slices, within [`REALTIME_SLICE`]: every
    /// slice costs a device check, and the interpreter runs the end of each; `next`
    /// becomes the deadline ([`Clock::deadline_passed`]) that guest time does not run
    /// past by more than [`DEADLINE_GRACE_NS`].
    pub fn slice_budget(&mut self, icount: u64, next: Option<u64>) -> u64 {
        match self.mode {
            ClockMode::Icount { .. } => next
                .and_then(|t| self.insns_until(icount, t))
                .map_or(ICOUNT_SLICE, |n| n.min(ICOUNT_SLICE)),
            ClockMode::Realtime => {
                let now = self.now(icount);
                let (last_icount, last_ns, pace) = self.pace;
                let pace = match (icount.checked_sub(last_icount), now.checked_sub(last_ns)) {
                    (Some(n), Some(dt)) if n > 0 => {
                        let sample = (u128::from(dt) << 10) / u128::from(n);
                        let sample = sample.clamp(1, u128::from(u32::MAX)) as u64;
                        (pace * 3 + sample) / 4
                    }
                    _ => pace,
                };
                self.pace = (icount, now, pace.max(1));
                self.deadline = next;
                let (min, max) = REALTIME_SLICE;
                next.map_or(max, |t| {
                    let dt = u128::from(t.saturating_sub(now));
                    let n = (dt << 9) / u128::from(self.pace.2);
                    (n.min(u128::from(max)) as u64).clamp(min, max)
                })
            }
        }
    }

    /// The guest is idle until guest time `t` (or, in real time, at most `max_wait`
    /// of host time). Icount mode skips the time at once, at most [`ICOUNT_IDLE_STEP`]
    /// at a time (a step that depends only on guest time, so that runs repeat), and
    /// returns the time skipped, for a caller that paces guest time against the host
    /// to sleep; real time sleeps, and guest time then catches up with the host (up to
    /// `t`; an oversleep joins the lag), and returns zero.
    pub fn idle_until(&mut self, icount: u64, t: Option<u64>, max_wait: Duration) -> Duration {
        let now = self.now(icount);
        match self.mode {
            ClockMode::Icount { .. } => {
                let step = t.map_or(0, |t| t.saturating_sub(now).min(ICOUNT_IDLE_STEP));
                self.idle_ns += step;
                Duration::from_nanos(step)
            }
            ClockMode::Realtime => {
                let wait = t.map_or(max_wait, |t| {
                    Duration::from_nanos(t.saturating_sub(now)).min(max_wait)
                });
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
                let host = self.host_elapsed().saturating_sub(self.lag);
                let woke = t.map_or(host, |t| host.min(t.max(now)));
                self.lag += host - woke;
                self.last = self.last.max(woke);
                self.last_icount = icount;
                Duration::ZERO
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icount_time_is_a_function_of_instructions() {
        let mut c = Clock::new(ClockMode::Icount { shift: 2 });
        assert_eq!(c.now(0), 0);
        assert_eq!(c.now(10), 40);
        assert_eq!(c.insns_until(10, 100), Some(15));
        assert_eq!(c.idle_until(10, Some(1000), Duration::ZERO).as_nanos(), 960);
        assert_eq!(c.now(10), 1000);
        assert_eq!(c.now(11), 1004);
        // Never backwards.
        assert_eq!(c.now(5), 1004);
        // Far events are reached in steps.
        let far = c.now(11) + 3 * ICOUNT_IDLE_STEP + 5;
        for step in [ICOUNT_IDLE_STEP, ICOUNT_IDLE_STEP, ICOUNT_IDLE_STEP, 5, 0] {
            assert_eq!(
                c.idle_until(11, Some(far), Duration::ZERO).as_nanos(),
                u128::from(step)
            );
        }
        assert_eq!(c.now(11), far);
    }

    #[test]
    fn slices_end_at_or_before_the_next_event() {
        let mut c = Clock::new(ClockMode::Icount { shift: 0 });
        assert_eq!(c.slice_budget(0, Some(500)), 500);
        assert_eq!(c.slice_budget(0, None), ICOUNT_SLICE);
        assert_eq!(c.slice_budget(0, Some(1 << 40)), ICOUNT_SLICE);
        let mut c = Clock::new(ClockMode::Realtime);
        let (min, max) = REALTIME_SLICE;
        assert_eq!(c.slice_budget(0, None), max);
        // An event due now or past: the shortest slice.
        assert_eq!(c.slice_budget(0, Some(0)), min);
        // 20 ms away: half of it at the assumed pace (10 ns per instruction), less
        // as time passes.
        let t = c.now(0) + 20_000_000;
        let n = c.slice_budget(0, Some(t));
        assert!(n <= 1_000_000 && n > 900_000, "{n}");
        let far = c.now(0) + (1 << 40);
        assert_eq!(c.slice_budget(0, Some(far)), max);
        // A measured pace: about 1 ms for a million instructions, then an event 4 ms
        // away gets about 2 ms of instructions (within the bounds).
        let mut c = Clock::new(ClockMode::Realtime);
        c.slice_budget(0, None);
        let mut icount = 0;
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(1));
            icount += 1_000_000;
            c.slice_budget(icount, None);
        }
        // A sleep is never shorter than asked, and may be much longer on a busy host:
        // the pace is at least 1 ns per instruction, and measured (not the initial 10).
        let ns_per_insn = c.pace.2 as f64 / 1024.0;
        assert!((0.9..9.0).contains(&ns_per_insn), "{ns_per_insn}");
        let t = c.now(icount) + 400_000;
        let n = c.slice_budget(icount, Some(t));
        assert!(n >= min && n <= 250_000, "{n}");
    }

    #[test]
    fn realtime_follows_the_host_and_sleeps_when_idle() {
        let mut c = Clock::new(ClockMode::Realtime);
        let a = c.now(0);
        c.idle_until(0, Some(a + 2_000_000), Duration::from_millis(50));
        let b = c.now(0);
        assert!(b >= a + 2_000_000, "slept until the event: {a} -> {b}");
        assert!(c.insns_until(0, b + 10).is_none());
    }

    #[test]
    fn realtime_hides_a_stall_of_the_emulator() {
        let mut c = Clock::new(ClockMode::Realtime);
        let a = c.now(1000);
        std::thread::sleep(Duration::from_millis(20));
        // Ten instructions later: at most eleven instructions' worth, not 20 ms.
        let b = c.now(1010);
        assert!(b - a <= 11 * MAX_NS_PER_INSN, "{a} -> {b}");
        assert!(c.lag_ns() >= 19_000_000, "lag {}", c.lag_ns());
        // Afterwards time runs at the host's pace again, less the lag.
        std::thread::sleep(Duration::from_millis(2));
        let d = c.now(1_000_000_000);
        assert!(d - b >= 2_000_000 && d - b < 19_000_000, "{b} -> {d}");
    }

    #[test]
    fn realtime_stops_short_of_the_event_after_next() {
        let mut c = Clock::new(ClockMode::Realtime);
        let t = c.now(0);
        // The next event 1 ms away; the host stalls 10 ms with the slice's instructions
        // all run: time stops just past the event, however many instructions ran.
        c.slice_budget(0, Some(t + 1_000_000));
        std::thread::sleep(Duration::from_millis(10));
        assert!(c.deadline_passed());
        let b = c.now(1 << 40);
        assert_eq!(b, t + 1_000_000 + DEADLINE_GRACE_NS);
        assert!(c.deadline_passed(), "the lag keeps the deadline passed");
        // The next slice's deadline lets time go on.
        c.slice_budget(1 << 40, Some(t + 5_000_000));
        std::thread::sleep(Duration::from_millis(1));
        let d = c.now(1 << 41);
        assert!(d > b && d < t + 5_000_000, "{b} -> {d}");
    }

    #[test]
    fn realtime_idle_catches_up_to_the_event_and_no_further() {
        let mut c = Clock::new(ClockMode::Realtime);
        let a = c.now(0);
        c.slice_budget(0, Some(a + 1_000_000));
        // A sleep that overshoots (asked for 1 ms, at most 30 ms allowed): guest time
        // lands on the event, the oversleep joins the lag.
        c.idle_until(0, Some(a + 1_000_000), Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(5));
        let woke = c.now(0);
        assert!(
            (a + 1_000_000..=a + 1_000_000 + MAX_NS_PER_INSN).contains(&woke),
            "{a} -> {woke}"
        );
        // Idle with no event: guest time follows the host through the whole wait.
        let b = c.now(0);
        c.idle_until(0, None, Duration::from_millis(3));
        let d = c.now(0);
        assert!(d >= b + 3_000_000, "{b} -> {d}");
    }

    #[test]
    fn realtime_icount_going_back_does_not_stop_time() {
        // A guest reset restarts nothing in the clock, but icount may restart.
        let mut c = Clock::new(ClockMode::Realtime);
        c.now(1_000_000);
        let a = c.now(0);
        std::thread::sleep(Duration::from_millis(2));
        let b = c.now(2_000_000);
        assert!(b >= a + 2_000_000, "{a} -> {b}");
    }
}
