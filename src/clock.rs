//! The virtual clock: guest time in nanoseconds, either following the host's
//! monotonic clock (the default) or derived from the retired-instruction count
//! (`--icount`), which makes runs deterministic: the same image and input give the
//! same execution on every run.

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
}

/// The TSC runs at 1 GHz: one tick per nanosecond of guest time.
pub const TSC_HZ: u64 = 1_000_000_000;

impl Clock {
    /// A clock at time 0.
    pub fn new(mode: ClockMode) -> Clock {
        Clock {
            mode,
            start: Instant::now(),
            idle_ns: 0,
            last: 0,
        }
    }

    /// The mode.
    pub fn mode(&self) -> ClockMode {
        self.mode
    }

    /// Guest time at instruction count `icount`.
    #[inline]
    pub fn now(&mut self, icount: u64) -> u64 {
        let t = match self.mode {
            ClockMode::Realtime => self.start.elapsed().as_nanos() as u64,
            ClockMode::Icount { shift } => (icount << shift).wrapping_add(self.idle_ns),
        };
        self.last = self.last.max(t);
        self.last
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

    /// The guest is idle until guest time `t` (or, in real time, at most `max_wait`
    /// of host time): icount mode skips the time at once; real time sleeps.
    pub fn idle_until(&mut self, icount: u64, t: Option<u64>, max_wait: Duration) {
        let now = self.now(icount);
        match self.mode {
            ClockMode::Icount { .. } => {
                if let Some(t) = t {
                    self.idle_ns += t.saturating_sub(now);
                }
            }
            ClockMode::Realtime => {
                let wait = t.map_or(max_wait, |t| {
                    Duration::from_nanos(t.saturating_sub(now)).min(max_wait)
                });
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
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
        c.idle_until(10, Some(1000), Duration::ZERO);
        assert_eq!(c.now(10), 1000);
        assert_eq!(c.now(11), 1004);
        // Never backwards.
        assert_eq!(c.now(5), 1004);
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
}
