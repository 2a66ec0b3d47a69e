//! The machine's view of I/O for the CPU: the PC platform with device time brought up
//! to the guest clock before every access, and the TSC read from the same clock.

use ox86_devices::Platform;
use ox86_mmu::{IoBus, PhysAddr, Port};

use crate::clock::Clock;

/// The platform and the clock, as one [`IoBus`].
pub struct MachineBus {
    /// The devices.
    pub platform: Platform,
    /// Guest time.
    pub clock: Clock,
}

impl MachineBus {
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
    fn stop_requested(&self) -> bool {
        self.platform.stop_requested()
    }
}
