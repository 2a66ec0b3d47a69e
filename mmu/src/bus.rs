//! The interface between the CPU and the machine's devices.
//!
//! The CPU crate does not know about devices; it talks to an [`IoBus`] for port I/O,
//! for memory-mapped I/O that the physical map routes away from RAM, and for the
//! maskable-interrupt line. The devices crate implements it.

use crate::addr::{PhysAddr, Port};

/// Port I/O, MMIO and the INTR line, as seen from the CPU.
pub trait IoBus {
    /// Reads `size` (1, 2 or 4) bytes from an I/O port. Unclaimed ports read as all ones.
    fn port_read(&mut self, port: Port, size: u8) -> u32;
    /// Writes `size` (1, 2 or 4) bytes to an I/O port. Unclaimed ports ignore writes.
    fn port_write(&mut self, port: Port, size: u8, value: u32);
    /// Reads `size` (1, 2, 4 or 8) bytes of MMIO space. Unclaimed addresses read as all ones.
    fn mmio_read(&mut self, addr: PhysAddr, size: u8) -> u64;
    /// Writes `size` (1, 2, 4 or 8) bytes of MMIO space.
    fn mmio_write(&mut self, addr: PhysAddr, size: u8, value: u64);
    /// Tells the bus how many instructions have retired, before every port or MMIO
    /// access, so that device time can follow the guest exactly.
    fn sync(&mut self, _icount: u64) {}
    /// The time-stamp counter at this instruction count (RDTSC), before the guest's
    /// IA32_TSC adjustment. Without a clock, one tick per instruction.
    fn tsc(&mut self, icount: u64) -> u64 {
        icount
    }
    /// Whether a maskable interrupt is being requested (the INTR pin).
    fn intr_pending(&self) -> bool {
        false
    }
    /// Acknowledges the pending maskable interrupt and returns its vector.
    fn intr_ack(&mut self) -> u8 {
        0x0f
    }
    /// The x87 signals an unmasked exception on FERR# (CR0.NE=0): on a PC this raises
    /// IRQ13 through the interrupt controller.
    fn fpu_error(&mut self) {}
    /// Whether a device asks the CPU to stop running (exit port, reset, host request).
    /// The CPU checks this after every I/O instruction and at block boundaries.
    fn stop_requested(&self) -> bool {
        false
    }
}

/// An [`IoBus`] with nothing attached: ports read all ones, writes are ignored.
#[derive(Debug, Default)]
pub struct NullBus;

impl IoBus for NullBus {
    fn port_read(&mut self, _port: Port, size: u8) -> u32 {
        ones(size) as u32
    }
    fn port_write(&mut self, _port: Port, _size: u8, _value: u32) {}
    fn mmio_read(&mut self, _addr: PhysAddr, size: u8) -> u64 {
        ones(size)
    }
    fn mmio_write(&mut self, _addr: PhysAddr, _size: u8, _value: u64) {}
}

/// All ones in `size` bytes.
pub fn ones(size: u8) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size as u32 * 8)) - 1
    }
}
