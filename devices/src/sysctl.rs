//! System Control Port A (port 0x92) and the Reset Control Register (port 0xcf9).
//!
//! Port 0x92 (PS/2 "System Control Port A", Intel ICH "Port 92h"): bit 1 drives the A20
//! gate ("ALT_A20_GATE"), bit 0 ("INIT_NOW", fast reset) resets the CPU on a 0-to-1
//! transition. Port 0xcf9 (PIIX/ICH "RST_CNT"): bit 2 (RST_CPU) starts a reset, bit 1
//! (SYS_RST) selects a hard (whole-system) reset rather than a CPU-only one, bit 3
//! (FULL_RST) a power cycle, which we treat as hard.

use ox86_mmu::Port;

use crate::bus::{read_bytewise, write_bytewise, BusDevice};
use crate::requests::{Requests, ResetKind};

/// System Control Port A.
pub const SYSCTL_PORT_A: Port = Port(0x92);
/// The Reset Control Register.
pub const RESET_CONTROL_PORT: Port = Port(0xcf9);

const PORT_A_FAST_RESET: u8 = 1 << 0;
const PORT_A_A20: u8 = 1 << 1;
const RST_SYS: u8 = 1 << 1;
const RST_CPU: u8 = 1 << 2;
const RST_FULL: u8 = 1 << 3;

/// System Control Port A (0x92).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct SystemControlA {
    /// The last value written, except bit 1 which always reflects the A20 gate.
    value: u8,

    #[serde(skip)]
    requests: Requests,
}

impl SystemControlA {
    /// Takes the register of `saved` (a snapshot's; the A20 state is the platform's).
    pub fn restore(&mut self, saved: SystemControlA) {
        self.value = saved.value;
    }

    /// The port, sharing the A20 state and reset requests of `requests`.
    pub fn new(requests: Requests) -> Self {
        SystemControlA { value: 0, requests }
    }

    /// Back to the power-on state (bit 0 clear; the A20 state lives in [`Requests`]).
    pub fn reset(&mut self) {
        self.value = 0;
    }

    fn read_reg(&self) -> u8 {
        let a20 = if self.requests.a20() { PORT_A_A20 } else { 0 };
        (self.value & !PORT_A_A20) | a20
    }

    fn write_reg(&mut self, v: u8) {
        self.requests.set_a20(v & PORT_A_A20 != 0);
        if v & PORT_A_FAST_RESET != 0 && self.value & PORT_A_FAST_RESET == 0 {
            tracing::debug!("port 0x92 fast reset");
            self.requests.request_reset(ResetKind::Soft);
        }
        self.value = v;
    }
}

impl BusDevice for SystemControlA {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_bytewise(
            offset,
            data,
            |o| if o == 0 { self.read_reg() } else { 0xff },
        );
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        write_bytewise(offset, data, |o, v| {
            if o == 0 {
                self.write_reg(v)
            }
        });
    }
}

/// The Reset Control Register (0xcf9).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ResetControl {
    /// SYS_RST and FULL_RST as last written; RST_CPU reads as 0.
    value: u8,
    #[serde(skip)]
    requests: Requests,
}

impl ResetControl {
    /// Takes the register of `saved` (a snapshot's).
    pub fn restore(&mut self, saved: ResetControl) {
        self.value = saved.value;
    }

    /// The register, posting resets to `requests`.
    pub fn new(requests: Requests) -> Self {
        ResetControl { value: 0, requests }
    }

    /// Back to the power-on state.
    pub fn reset(&mut self) {
        self.value = 0;
    }

    /// Reads the register.
    pub fn read_reg(&self) -> u8 {
        self.value
    }

    /// Writes the register.
    pub fn write_reg(&mut self, v: u8) {
        self.value = v & (RST_SYS | RST_FULL);
        if v & RST_CPU != 0 {
            let kind = if v & (RST_SYS | RST_FULL) != 0 {
                ResetKind::Hard
            } else {
                ResetKind::Soft
            };
            tracing::debug!(?kind, "reset via 0xcf9");
            self.requests.request_reset(kind);
        }
    }
}

impl BusDevice for ResetControl {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_bytewise(
            offset,
            data,
            |o| if o == 0 { self.read_reg() } else { 0xff },
        );
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        write_bytewise(offset, data, |o, v| {
            if o == 0 {
                self.write_reg(v)
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rd(d: &mut impl BusDevice) -> u8 {
        let mut b = [0];
        d.read(0, &mut b);
        b[0]
    }

    #[test]
    fn port_a_a20_reads_back_and_reports_changes() {
        let r = Requests::new(false);
        let mut p = SystemControlA::new(r.clone());
        assert_eq!(rd(&mut p), 0);
        p.write(0, &[PORT_A_A20]);
        assert_eq!(rd(&mut p), PORT_A_A20);
        assert_eq!(r.take().a20, Some(true));
        // Another device (the i8042) turning A20 off is reflected in bit 1.
        r.set_a20(false);
        assert_eq!(rd(&mut p) & PORT_A_A20, 0);
        // Other bits are kept.
        p.write(0, &[0xc2]);
        assert_eq!(rd(&mut p), 0xc2);
    }

    #[test]
    fn port_a_fast_reset_on_rising_bit0() {
        // ICH datasheet, Port 92h bit 0 INIT_NOW: a 0-to-1 transition causes INIT; it must
        // be written 0 before another INIT can be generated.
        let r = Requests::new(true);
        let mut p = SystemControlA::new(r.clone());
        p.write(0, &[PORT_A_A20 | PORT_A_FAST_RESET]);
        assert_eq!(r.take().reset, Some(ResetKind::Soft));
        p.write(0, &[PORT_A_A20 | PORT_A_FAST_RESET]);
        assert_eq!(r.take().reset, None);
        p.write(0, &[PORT_A_A20]);
        p.write(0, &[PORT_A_A20 | PORT_A_FAST_RESET]);
        assert_eq!(r.take().reset, Some(ResetKind::Soft));
        p.reset();
        assert_eq!(rd(&mut p) & PORT_A_FAST_RESET, 0);
        p.write(1, &[0xff]);
        assert!(!r.is_pending());
    }

    #[test]
    fn cf9_soft_and_hard_reset() {
        let r = Requests::new(true);
        let mut c = ResetControl::new(r.clone());
        c.write(0, &[RST_SYS]);
        assert!(!r.is_pending());
        assert_eq!(rd(&mut c), RST_SYS);
        // Linux reboot=pci writes 0x02 then 0x06: hard reset.
        c.write(0, &[RST_SYS | RST_CPU]);
        assert_eq!(r.take().reset, Some(ResetKind::Hard));
        assert_eq!(rd(&mut c), RST_SYS);
        c.write(0, &[RST_CPU]);
        assert_eq!(r.take().reset, Some(ResetKind::Soft));
        c.write(0, &[RST_FULL | RST_CPU]);
        assert_eq!(r.take().reset, Some(ResetKind::Hard));
    }
}
