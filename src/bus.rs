//! The machine's view of I/O for the CPU: the PC platform with device time brought up
//! to the guest clock before every access, and the TSC read from the same clock.

use std::cell::Cell;

use ox86_devices::Platform;
use ox86_mmu::{IoBus, PhysAddr, Port};

use crate::clock::Clock;

/// The platform and the clock, as one [`IoBus`].
pub struct MachineBus {
    /// The devices.
    pub platform: Platform,
    /// Guest time.
    pub clock: Clock,
    /// Calls of `stop_requested` since the clock was last read.
    polls: Cell<u32>,
}

/// `stop_requested` reads the host clock once in this many calls.
const DEADLINE_POLL: u32 = 32;

impl MachineBus {
    /// The bus of `platform` with time from `clock`.
    pub fn new(platform: Platform, clock: Clock) -> MachineBus {
        MachineBus {
            platform,
            clock,
            polls: Cell::new(0),
        }
    }

    /// Runs device time up to the clock's time at `icount`.
    pub fn advance(&mut self, icount: u64) {
        let now = self.clock.now(icount);
        self.platform.advance_to(now);
    }
}

impl IoBus for MachineBus {
    fn port_read(&mut self, port: Port, size: u8) -> u32 {
        self.platform.port_read(port, size)
    }
    fn port_write(&mut self, port: Port, size: u8, value: u32) {
        self.platform.port_write(port, size, value)
    }
    fn mmio_read(&mut self, addr: PhysAddr, size: u8) -> u64 {
        self.platform.mmio_read(addr, size)
    }
    fn mmio_write(&mut self, addr: PhysAddr, size: u8, value: u64) {
        self.platform.mmio_write(addr, size, value)
    }
    fn sync(&mut self, icount: u64) {
        self.advance(icount);
    }
    fn tsc(&mut self, icount: u64) -> u64 {
        // TSC_HZ is 1 GHz: one tick per nanosecond.
        self.clock.now(icount)
    }
    fn intr_pending(&self) -> bool {
        self.platform.intr_pending()
    }
    fn intr_ack(&mut self) -> u8 {
        self.platform.intr_ack()
    }
    fn fpu_error(&mut self) {
        self.platform.fpu_error()
    }
    /// Also true in real time once the host clock passes the slice's deadline (looked
    /// at every [`DEADLINE_POLL`] calls: the CPU asks between blocks and after I/O), so
    /// that a slice sized for fast code still ends in time for the next device event
    /// when it runs slowly (the interpreter, console output).
    fn stop_requested(&self) -> bool {
        if self.platform.stop_requested() {
            return true;
        }
        let n = self.polls.get().wrapping_add(1);
        self.polls.set(n);
        n.is_multiple_of(DEADLINE_POLL) && self.clock.deadline_passed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ClockMode;
    use ox86_devices::PlatformConfig;

    fn bus(mode: ClockMode) -> MachineBus {
        let p = Platform::new(PlatformConfig::default()).expect("a platform");
        MachineBus::new(p, Clock::new(mode))
    }

    #[test]
    fn a_real_time_slice_stops_once_its_deadline_passes() {
        let mut b = bus(ClockMode::Realtime);
        let polls = |b: &MachineBus| (0..DEADLINE_POLL).any(|_| b.stop_requested());
        assert!(!polls(&b), "no deadline");
        let t = b.clock.now(0);
        b.clock.slice_budget(0, Some(t + 10_000_000_000));
        assert!(!polls(&b), "a deadline far ahead");
        b.clock.slice_budget(0, Some(t + 2_000_000));
        std::thread::sleep(std::time::Duration::from_millis(3));
        assert!(polls(&b), "a deadline passed");
        // Icount mode never sets one: the stop does not depend on the host clock.
        let mut b = bus(ClockMode::Icount { shift: 0 });
        b.clock.slice_budget(0, Some(1));
        std::thread::sleep(std::time::Duration::from_millis(1));
        assert!(!polls(&b));
    }
}
