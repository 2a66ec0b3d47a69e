//! The 8259A programmable interrupt controller pair of the PC/AT.
//!
//! Master at 0x20/0x21, slave at 0xa0/0xa1, the slave's INT output on the master's IR2,
//! and the PIIX/ICH edge/level control registers (ELCR) at 0x4d0/0x4d1. Implemented from
//! the Intel 8259A datasheet (order number 231468): ICW1-ICW4, OCW1-OCW3, the IRR/ISR/IMR,
//! rotating priorities, specific and non-specific EOI, automatic EOI, special mask mode,
//! special fully nested mode, poll mode and spurious IRQ 7/15.
//!
//! Deviations, chosen like other PC emulators: an edge-triggered request stays latched in
//! the IRR until acknowledged even if the line falls again (devices here signal edges as
//! short pulses); ICW3 is stored but the cascade is hard-wired on IR2 as on every PC; a
//! device raising IRQ 2 is routed to IRQ 9, as the AT bus does.

use ox86_mmu::Port;

use crate::bus::{read_bytewise, write_bytewise, BusDevice};

/// Master command/status port (A0 = 0).
pub const PIC_MASTER: Port = Port(0x20);
/// Slave command/status port (A0 = 0).
pub const PIC_SLAVE: Port = Port(0xa0);
/// ELCR for IRQ 0-7 (0x4d0) and IRQ 8-15 (0x4d1).
pub const PIC_ELCR: Port = Port(0x4d0);
/// Device offset of the master's two ports.
pub const OFFSET_MASTER: u64 = 0;
/// Device offset of the slave's two ports.
pub const OFFSET_SLAVE: u64 = 2;
/// Device offset of the two ELCR ports.
pub const OFFSET_ELCR: u64 = 4;
/// Number of device offsets.
pub const PIC_OFFSETS: u64 = 6;

/// The master input the slave is wired to.
const CASCADE_IRQ: u8 = 2;
/// ELCR bits that exist: IRQ 0, 1, 2 (master) and 8, 13 (slave) are always edge.
const ELCR_MASK: [u8; 2] = [0xf8, 0xde];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
enum Init {
    /// Not initializing: writes to A0=1 are OCW1.
    #[default]
    Ready,
    /// ICW1 seen: the next A0=1 write is ICW2.
    Icw2,
    /// The next A0=1 write is ICW3.
    Icw3,
    /// The next A0=1 write is ICW4.
    Icw4,
}

/// One 8259A.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Chip {
    irr: u8,
    isr: u8,
    imr: u8,
    /// Current levels of the IR inputs (for edge detection).
    lines: u8,
    /// ELCR: 1 = level-triggered.
    elcr: u8,
    /// ICW1 LTIM: all inputs level-triggered.
    ltim: bool,
    vector_base: u8,
    /// The IR with the lowest priority; IR (lowest + 1) & 7 has the highest.
    lowest: u8,
    init: Init,
    need_icw4: bool,
    single: bool,
    icw3: u8,
    auto_eoi: bool,
    rotate_on_aeoi: bool,
    sfnm: bool,
    special_mask: bool,
    read_isr: bool,
    poll: bool,
    master: bool,
}

impl Chip {
    fn new(master: bool) -> Self {
        Chip {
            lowest: 7,
            master,
            ..Default::default()
        }
    }

    /// Inputs that are level-triggered.
    fn level_mask(&self) -> u8 {
        if self.ltim {
            0xff
        } else {
            self.elcr
        }
    }

    /// Priority rank of `irq`: 0 is the highest.
    fn rank(&self, irq: u8) -> u8 {
        irq.wrapping_sub(self.lowest.wrapping_add(1)) & 7
    }

    /// The highest-priority IR among `bits`.
    fn highest(&self, bits: u8) -> Option<u8> {
        (0..8)
            .map(|i| (self.lowest + 1 + i) & 7)
            .find(|&irq| bits & (1 << irq) != 0)
    }

    /// Drives input `irq`.
    fn set_line(&mut self, irq: u8, level: bool) {
        let m = 1u8 << irq;
        if self.level_mask() & m != 0 {
            // Level-triggered: the request follows the line.
            if level {
                self.irr |= m;
            } else {
                self.irr &= !m;
            }
        } else if level && self.lines & m == 0 {
            // Edge-triggered: a low-to-high transition latches a request.
            self.irr |= m;
        }
        if level {
            self.lines |= m;
        } else {
            self.lines &= !m;
        }
    }

    /// The request this chip would present on INT, if any (datasheet "Priority
    /// Resolver"): the highest-priority unmasked request that outranks everything in
    /// service.
    fn pending(&self) -> Option<u8> {
        let req = self.irr & !self.imr;
        let irq = self.highest(req)?;
        if self.special_mask {
            // Special mask mode: "enables interrupts from all other levels (lower as well
            // as higher) that are not masked"; only a level's own ISR bit blocks it.
            return self.highest(req & !self.isr);
        }
        let mut isr = self.isr;
        if self.master && self.sfnm && irq == CASCADE_IRQ {
            // Special fully nested mode: a slave in service does not lock out further
            // (higher-priority) requests from the same slave.
            isr &= !(1 << CASCADE_IRQ);
        }
        match self.highest(isr) {
            Some(s) if self.rank(s) <= self.rank(irq) => None,
            _ => Some(irq),
        }
    }

    /// INTA for `irq` on this chip: IRR to ISR (or automatic EOI).
    fn accept(&mut self, irq: u8) {
        let m = 1u8 << irq;
        if self.level_mask() & m == 0 {
            self.irr &= !m;
        }
        if self.auto_eoi {
            if self.rotate_on_aeoi {
                self.lowest = irq;
            }
        } else {
            self.isr |= m;
        }
    }

    fn write_command(&mut self, v: u8) {
        if v & 0x10 != 0 {
            self.icw1(v);
        } else if v & 0x08 != 0 {
            self.ocw3(v);
        } else {
            self.ocw2(v);
        }
    }

    fn icw1(&mut self, v: u8) {
        // Datasheet, "Initialization Command Words": ICW1 resets the edge sense circuit,
        // clears the IMR, assigns IR7 the lowest priority, clears special mask mode, selects
        // IRR for status reads, and when IC4 = 0 clears the ICW4 functions.
        if v & 0x01 == 0 {
            tracing::warn!(
                icw1 = v,
                "8259A ICW1 without ICW4 (8080 mode) is not supported"
            );
        }
        self.need_icw4 = v & 0x01 != 0;
        self.single = v & 0x02 != 0;
        self.ltim = v & 0x08 != 0;
        self.init = Init::Icw2;
        self.imr = 0;
        // Not in the datasheet's list, but PC emulators (and firmware expectations)
        // clear the in-service register on re-initialization too.
        self.isr = 0;
        self.irr = self.lines & self.level_mask();
        self.lowest = 7;
        self.special_mask = false;
        self.read_isr = false;
        self.poll = false;
        self.rotate_on_aeoi = false;
        if !self.need_icw4 {
            self.auto_eoi = false;
            self.sfnm = false;
        }
    }

    fn write_data(&mut self, v: u8) {
        match self.init {
            Init::Ready => self.imr = v,
            Init::Icw2 => {
                self.vector_base = v & 0xf8;
                self.init = if !self.single {
                    Init::Icw3
                } else if self.need_icw4 {
                    Init::Icw4
                } else {
                    Init::Ready
                };
            }
            Init::Icw3 => {
                self.icw3 = v;
                self.init = if self.need_icw4 {
                    Init::Icw4
                } else {
                    Init::Ready
                };
            }
            Init::Icw4 => {
                if v & 0x01 == 0 {
                    tracing::warn!(icw4 = v, "8259A ICW4 selects 8080 mode; using 8086 mode");
                }
                self.auto_eoi = v & 0x02 != 0;
                self.sfnm = v & 0x10 != 0;
                self.init = Init::Ready;
            }
        }
    }

    fn ocw2(&mut self, v: u8) {
        let level = v & 7;
        match v >> 5 {
            // Rotate in automatic EOI mode (clear / set).
            0b000 => self.rotate_on_aeoi = false,
            0b100 => self.rotate_on_aeoi = true,
            // Non-specific EOI: reset the highest-priority ISR bit; rotate: that level
            // becomes the lowest priority.
            cmd @ (0b001 | 0b101) => {
                if let Some(irq) = self.highest(self.isr) {
                    self.isr &= !(1 << irq);
                    if cmd == 0b101 {
                        self.lowest = irq;
                    }
                }
            }
            // Specific EOI (with rotation for 0b111).
            cmd @ (0b011 | 0b111) => {
                self.isr &= !(1 << level);
                if cmd == 0b111 {
                    self.lowest = level;
                }
            }
            // Set priority: `level` becomes the lowest priority.
            0b110 => self.lowest = level,
            // 0b010: no operation.
            _ => {}
        }
    }

    fn ocw3(&mut self, v: u8) {
        if v & 0x80 != 0 {
            tracing::debug!(ocw3 = v, "8259A OCW3 with D7 set");
        }
        if v & 0x04 != 0 {
            self.poll = true;
        }
        if v & 0x02 != 0 {
            self.read_isr = v & 0x01 != 0;
        }
        if v & 0x40 != 0 {
            self.special_mask = v & 0x20 != 0;
        }
    }

    /// A0=0 read: poll word, or IRR/ISR as selected by OCW3.
    fn read_status(&mut self) -> u8 {
        if self.poll {
            // Poll command: the read acts as an interrupt acknowledge; bit 7 = request
            // present, bits 2-0 = highest-priority level.
            self.poll = false;
            return match self.pending() {
                Some(irq) => {
                    self.accept(irq);
                    0x80 | irq
                }
                None => 0,
            };
        }
        if self.read_isr {
            self.isr
        } else {
            self.irr
        }
    }

    fn reset(&mut self) {
        let lines = self.lines;
        let elcr = self.elcr;
        *self = Chip::new(self.master);
        self.lines = lines;
        self.elcr = elcr;
    }
}

/// The master/slave 8259A pair with its ELCR.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Pic {
    chips: [Chip; 2],
    /// Cached INT output of the master.
    output: bool,
}

impl Default for Pic {
    fn default() -> Self {
        Self::new()
    }
}

impl Pic {
    /// A pair in the power-on state: nothing masked, vector base 0, all lines edge
    /// triggered and low. Firmware or the OS programs it with ICW1-ICW4.
    pub fn new() -> Self {
        Pic {
            chips: [Chip::new(true), Chip::new(false)],
            output: false,
        }
    }

    /// Back to the power-on state (line levels and ELCR are kept: they are not part of
    /// the 8259A).
    pub fn reset(&mut self) {
        self.chips[0].reset();
        self.chips[1].reset();
        self.update();
    }

    /// Drives ISA interrupt line `irq` (0-15) to `level`. IRQ 2 is routed to IRQ 9.
    pub fn set_irq(&mut self, irq: u8, level: bool) {
        let irq = if irq == CASCADE_IRQ { 9 } else { irq };
        match irq {
            0..=7 => self.chips[0].set_line(irq, level),
            8..=15 => self.chips[1].set_line(irq - 8, level),
            _ => {
                tracing::warn!(irq, "PIC: no such IRQ line");
                return;
            }
        }
        self.update();
    }

    /// Sets the level of line `irq` without treating it as an edge (initial wiring).
    pub fn init_line(&mut self, irq: u8, level: bool) {
        let (chip, bit) = match irq {
            0..=7 => (&mut self.chips[0], 1u8 << irq),
            8..=15 => (&mut self.chips[1], 1u8 << (irq - 8)),
            _ => return,
        };
        if level {
            chip.lines |= bit;
        } else {
            chip.lines &= !bit;
        }
        let level_mask = chip.level_mask();
        chip.irr = (chip.irr & !level_mask) | (chip.lines & level_mask);
        self.update();
    }

    /// Whether the master asserts INT: an interrupt is waiting for the CPU.
    #[inline]
    pub fn intr_pending(&self) -> bool {
        self.output
    }

    /// The CPU's interrupt acknowledge cycle: returns the vector and moves the request
    /// into service. Without a request (it went away) the 8259A answers with IR7's vector
    /// without setting ISR bit 7 (spurious interrupt); likewise the slave with IR15's.
    pub fn ack(&mut self) -> u8 {
        let vector = match self.chips[0].pending() {
            None => {
                tracing::debug!("PIC: spurious IRQ 7");
                self.chips[0].vector_base | 7
            }
            Some(CASCADE_IRQ) => {
                self.chips[0].accept(CASCADE_IRQ);
                match self.chips[1].pending() {
                    Some(irq) => {
                        self.chips[1].accept(irq);
                        self.chips[1].vector_base | irq
                    }
                    None => {
                        tracing::debug!("PIC: spurious IRQ 15");
                        self.chips[1].vector_base | 7
                    }
                }
            }
            Some(irq) => {
                self.chips[0].accept(irq);
                self.chips[0].vector_base | irq
            }
        };
        self.update();
        vector
    }

    /// Whether `irq` (0-15) is masked, counting the cascade mask for slave lines.
    pub fn is_masked(&self, irq: u8) -> bool {
        match irq {
            0..=7 => self.chips[0].imr & (1 << irq) != 0,
            8..=15 => {
                self.chips[1].imr & (1 << (irq - 8)) != 0
                    || self.chips[0].imr & (1 << CASCADE_IRQ) != 0
            }
            _ => true,
        }
    }

    /// IMR of both chips (slave in the high byte).
    pub fn imr(&self) -> u16 {
        u16::from_le_bytes([self.chips[0].imr, self.chips[1].imr])
    }

    /// IRR of both chips (slave in the high byte).
    pub fn irr(&self) -> u16 {
        u16::from_le_bytes([self.chips[0].irr, self.chips[1].irr])
    }

    /// ISR of both chips (slave in the high byte).
    pub fn isr(&self) -> u16 {
        u16::from_le_bytes([self.chips[0].isr, self.chips[1].isr])
    }

    /// Vector bases programmed by ICW2 (master, slave).
    pub fn vector_bases(&self) -> (u8, u8) {
        (self.chips[0].vector_base, self.chips[1].vector_base)
    }

    /// Recomputes the cascade input and the INT output.
    fn update(&mut self) {
        let slave_int = self.chips[1].pending().is_some();
        // The slave's INT is the master's IR2 input; it is a level.
        if slave_int {
            self.chips[0].irr |= 1 << CASCADE_IRQ;
        } else {
            self.chips[0].irr &= !(1 << CASCADE_IRQ);
        }
        self.output = self.chips[0].pending().is_some();
    }

    fn read_reg(&mut self, offset: u64) -> u8 {
        let v = match offset {
            0 | 2 => self.chips[(offset / 2) as usize].read_status(),
            1 | 3 => self.chips[(offset / 2) as usize].imr,
            4 | 5 => self.chips[(offset - 4) as usize].elcr,
            _ => 0xff,
        };
        if offset == 0 || offset == 2 {
            // A poll read is an acknowledge.
            self.update();
        }
        v
    }

    fn write_reg(&mut self, offset: u64, v: u8) {
        match offset {
            0 | 2 => self.chips[(offset / 2) as usize].write_command(v),
            1 | 3 => self.chips[(offset / 2) as usize].write_data(v),
            4 | 5 => {
                let i = (offset - 4) as usize;
                let chip = &mut self.chips[i];
                chip.elcr = v & ELCR_MASK[i];
                // Lines that became level-triggered request while high.
                let level = chip.level_mask();
                chip.irr = (chip.irr & !level) | (chip.lines & level);
            }
            _ => {
                tracing::debug!(offset, value = v, "PIC: write to unknown offset");
                return;
            }
        }
        self.update();
    }
}

impl BusDevice for Pic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_bytewise(offset, data, |o| self.read_reg(o));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        write_bytewise(offset, data, |o, v| self.write_reg(o, v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(p: &mut Pic, off: u64, v: u8) {
        p.write(off, &[v]);
    }

    fn inb(p: &mut Pic, off: u64) -> u8 {
        let mut b = [0];
        p.read(off, &mut b);
        b[0]
    }

    /// Linux `init_8259A()` (arch/x86/kernel/i8259.c): mask all, ICW1 0x11, ICW2 0x30/0x38,
    /// ICW3 0x04/0x02, ICW4 0x01 (normal EOI), then restore masks.
    fn linux_init(p: &mut Pic, auto_eoi: bool) {
        out(p, 1, 0xff);
        out(p, 3, 0xff);
        out(p, 0, 0x11);
        out(p, 1, 0x30);
        out(p, 1, 1 << 2);
        out(p, 1, if auto_eoi { 0x03 } else { 0x01 });
        out(p, 2, 0x11);
        out(p, 3, 0x38);
        out(p, 3, 2);
        out(p, 3, 0x01);
        out(p, 1, 0xfb); // everything masked except the cascade
        out(p, 3, 0xff);
    }

    fn edge(p: &mut Pic, irq: u8) {
        p.set_irq(irq, true);
        p.set_irq(irq, false);
    }

    #[test]
    fn linux_init_then_timer_interrupt() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        assert_eq!(p.vector_bases(), (0x30, 0x38));
        edge(&mut p, 0);
        // IMR bit 0 set: the request is in the IRR but INT stays low.
        assert!(!p.intr_pending());
        assert_eq!(p.irr() & 1, 1);
        out(&mut p, 1, 0xfa);
        assert!(p.intr_pending());
        assert_eq!(p.ack(), 0x30);
        assert_eq!(p.isr(), 1);
        assert_eq!(p.irr() & 1, 0);
        assert!(!p.intr_pending());
        // Non-specific EOI (OCW2 0x20) clears the in-service bit.
        out(&mut p, 0, 0x20);
        assert_eq!(p.isr(), 0);
    }

    #[test]
    fn slave_interrupt_goes_through_cascade() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        out(&mut p, 3, !(1 << 0)); // unmask IRQ 8
        p.set_irq(8, true);
        assert!(p.intr_pending());
        // Master IRR bit 2 reflects the slave's INT.
        assert_eq!(inb(&mut p, 0) & 4, 4);
        assert_eq!(p.ack(), 0x38);
        assert_eq!(p.isr(), 0x0104);
        // EOI to the slave then the master, as Linux does for IRQ 8-15.
        out(&mut p, 2, 0x60); // specific EOI level 0
        out(&mut p, 0, 0x62); // specific EOI level 2
        assert_eq!(p.isr(), 0);
        // The line is still high but edge-triggered: no new request.
        assert!(!p.intr_pending());
        // IRQ 2 from a device is IRQ 9 on the AT bus.
        p.set_irq(2, true);
        out(&mut p, 3, 0xfc);
        assert!(p.intr_pending());
        assert_eq!(p.ack(), 0x39);
    }

    #[test]
    fn fully_nested_priorities() {
        // Datasheet, "Fully Nested Mode": while IR n is in service, only higher-priority
        // requests (lower numbers) interrupt; lower ones wait for the EOI.
        let mut p = Pic::new();
        linux_init(&mut p, false);
        out(&mut p, 1, 0x00);
        edge(&mut p, 3);
        assert_eq!(p.ack(), 0x33);
        edge(&mut p, 5);
        assert!(!p.intr_pending(), "lower priority must wait");
        edge(&mut p, 1);
        assert!(p.intr_pending(), "higher priority nests");
        assert_eq!(p.ack(), 0x31);
        assert_eq!(p.isr(), 0b1010);
        // Non-specific EOI resets the highest-priority in-service bit (IR1).
        out(&mut p, 0, 0x20);
        assert_eq!(p.isr(), 0b1000);
        assert!(!p.intr_pending());
        out(&mut p, 0, 0x20);
        assert!(p.intr_pending());
        assert_eq!(p.ack(), 0x35);
        // Same-level requests also wait (the datasheet's "equal or lower").
        edge(&mut p, 5);
        assert!(!p.intr_pending());
    }

    #[test]
    fn slave_priorities_sit_at_ir2() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        out(&mut p, 1, 0);
        out(&mut p, 3, 0);
        edge(&mut p, 4);
        edge(&mut p, 12);
        // IRQ 12 comes in through IR2, which outranks IR4.
        assert_eq!(p.ack(), 0x3c);
        assert!(
            !p.intr_pending(),
            "IR4 waits while IR2 (the slave) is in service"
        );
        out(&mut p, 2, 0x20);
        out(&mut p, 0, 0x20);
        assert_eq!(p.ack(), 0x34);
    }

    #[test]
    fn auto_eoi_leaves_isr_clear() {
        let mut p = Pic::new();
        linux_init(&mut p, true);
        out(&mut p, 1, 0);
        edge(&mut p, 1);
        assert_eq!(p.ack(), 0x31);
        assert_eq!(p.isr(), 0);
        edge(&mut p, 1);
        assert!(p.intr_pending());
    }

    #[test]
    fn rotate_on_aeoi_rotates_priorities() {
        let mut p = Pic::new();
        linux_init(&mut p, true);
        out(&mut p, 1, 0);
        out(&mut p, 0, 0x80); // OCW2: rotate in AEOI mode (set)
        edge(&mut p, 0);
        assert_eq!(p.ack(), 0x30);
        // IR0 is now the lowest priority: IR7 outranks it.
        edge(&mut p, 0);
        edge(&mut p, 7);
        assert_eq!(p.ack(), 0x37);
        assert_eq!(p.ack(), 0x30);
    }

    #[test]
    fn specific_rotate_and_set_priority() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        out(&mut p, 1, 0);
        // Set priority (OCW2 0xc0 | L): IR4 lowest, IR5 highest.
        out(&mut p, 0, 0xc4);
        edge(&mut p, 0);
        edge(&mut p, 6);
        assert_eq!(p.ack(), 0x36);
        // Rotate on specific EOI (0xe0 | L): clear IR6, make IR6 lowest; IR7 highest.
        out(&mut p, 0, 0xe6);
        assert_eq!(p.isr(), 0);
        edge(&mut p, 7);
        assert_eq!(p.ack(), 0x37);
        // Rotate on non-specific EOI (0xa0): clears IR7 and makes it lowest.
        out(&mut p, 0, 0xa0);
        edge(&mut p, 7);
        assert_eq!(p.ack(), 0x30);
        assert_eq!(p.ack(), 0x37);
    }

    #[test]
    fn read_irr_isr_and_imr() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        out(&mut p, 1, 0xf0);
        edge(&mut p, 1);
        edge(&mut p, 6);
        assert_eq!(inb(&mut p, 0), 0x42, "IRR is read after init");
        assert_eq!(p.ack(), 0x31);
        out(&mut p, 0, 0x0b); // OCW3: read ISR
        assert_eq!(inb(&mut p, 0), 0x02);
        assert_eq!(inb(&mut p, 0), 0x02, "selection persists");
        out(&mut p, 0, 0x0a); // OCW3: read IRR
        assert_eq!(inb(&mut p, 0), 0x40);
        assert_eq!(inb(&mut p, 1), 0xf0);
        // OCW3 with RR = 0 does not change the selection.
        out(&mut p, 0, 0x08);
        assert_eq!(inb(&mut p, 0), 0x40);
    }

    #[test]
    fn poll_mode_acts_as_acknowledge() {
        // Datasheet, "The Poll Command": the read after OCW3 P=1 returns I (bit 7) and
        // W2-W0 of the highest-priority request, and is treated as an INTA.
        let mut p = Pic::new();
        linux_init(&mut p, false);
        out(&mut p, 1, 0);
        edge(&mut p, 5);
        out(&mut p, 0, 0x0c);
        assert_eq!(inb(&mut p, 0), 0x85);
        assert_eq!(p.isr(), 0x20);
        // Next read is a normal IRR read again.
        assert_eq!(inb(&mut p, 0), 0x00);
        out(&mut p, 0, 0x0c);
        assert_eq!(inb(&mut p, 0), 0x00, "no request: I = 0");
    }

    #[test]
    fn special_mask_mode_enables_lower_levels() {
        // Datasheet, "Special Mask Mode": with SMM set, masking the level in service
        // enables interrupts from all other unmasked levels, lower ones included.
        let mut p = Pic::new();
        linux_init(&mut p, false);
        out(&mut p, 1, 0);
        edge(&mut p, 2 + 1);
        assert_eq!(p.ack(), 0x33);
        edge(&mut p, 6);
        assert!(!p.intr_pending());
        out(&mut p, 0, 0x68); // OCW3: set special mask mode
        out(&mut p, 1, 0x08); // mask IR3 (in service)
        assert!(p.intr_pending());
        assert_eq!(p.ack(), 0x36);
        assert_eq!(p.isr(), 0x48);
        out(&mut p, 0, 0x48); // OCW3: reset special mask mode
        out(&mut p, 1, 0x00);
        out(&mut p, 0, 0x66); // specific EOI IR6
        out(&mut p, 0, 0x63); // specific EOI IR3
        assert_eq!(p.isr(), 0);
    }

    #[test]
    fn special_fully_nested_mode_lets_slave_nest() {
        // Datasheet, "Special Fully Nested Mode": when a slave is in service, higher
        // priority requests from that slave are still recognized by the master.
        let mut p = Pic::new();
        out(&mut p, 0, 0x11);
        out(&mut p, 1, 0x08);
        out(&mut p, 1, 0x04);
        out(&mut p, 1, 0x11); // ICW4: SFNM, 8086
        out(&mut p, 2, 0x11);
        out(&mut p, 3, 0x70);
        out(&mut p, 3, 0x02);
        out(&mut p, 3, 0x01);
        edge(&mut p, 12);
        assert_eq!(p.ack(), 0x74);
        edge(&mut p, 9);
        assert!(
            p.intr_pending(),
            "IR1 of the slave outranks its IR4 in service"
        );
        assert_eq!(p.ack(), 0x71);
        edge(&mut p, 14);
        assert!(!p.intr_pending(), "lower-priority slave request waits");
    }

    #[test]
    fn level_triggered_via_elcr() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        out(&mut p, 1, 0);
        out(&mut p, 3, 0);
        // ELCR: IRQ 0-2 and 8, 13 cannot be level (reserved bits read 0).
        out(&mut p, 4, 0xff);
        out(&mut p, 5, 0xff);
        assert_eq!(inb(&mut p, 4), 0xf8);
        assert_eq!(inb(&mut p, 5), 0xde);
        p.set_irq(11, true);
        assert_eq!(p.ack(), 0x3b);
        out(&mut p, 2, 0x20);
        out(&mut p, 0, 0x20);
        // Still high after EOI: requests again.
        assert!(p.intr_pending());
        p.set_irq(11, false);
        assert!(!p.intr_pending());
        // A level request that goes away before INTA yields spurious IRQ 7/15.
        p.set_irq(5, true);
        assert!(p.intr_pending());
        p.set_irq(5, false);
        assert_eq!(p.ack(), 0x37);
        assert_eq!(p.isr(), 0, "spurious IRQ 7 sets no ISR bit");
        p.set_irq(10, true);
        assert!(p.intr_pending());
        // The slave's request vanishes between the master's and the slave's INTA: the
        // master puts IR2 in service, the slave answers with IR7's vector (IRQ 15).
        p.chips[1].irr = 0;
        assert_eq!(p.ack(), 0x3f);
        assert_eq!(
            p.isr(),
            0x0004,
            "master sets ISR 2, slave does not set ISR 7"
        );
    }

    #[test]
    fn icw1_resets_state() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        out(&mut p, 1, 0);
        edge(&mut p, 4);
        p.ack();
        out(&mut p, 0, 0x0b);
        out(&mut p, 0, 0x11);
        out(&mut p, 1, 0x08);
        out(&mut p, 1, 0x04);
        out(&mut p, 1, 0x01);
        assert_eq!(p.imr(), 0xff00, "master IMR cleared");
        assert_eq!(inb(&mut p, 0), 0, "status read selects IRR again");
        // The edge sense latch is reset: a line already high needs a new edge.
        p.set_irq(6, true);
        out(&mut p, 0, 0x11);
        out(&mut p, 1, 0x08);
        out(&mut p, 1, 0x04);
        out(&mut p, 1, 0x01);
        assert!(!p.intr_pending());
        p.set_irq(6, false);
        p.set_irq(6, true);
        assert_eq!(p.ack(), 0x0e);
    }

    #[test]
    fn single_mode_and_no_icw4_sequences() {
        let mut p = Pic::new();
        // ICW1 with SNGL=1, IC4=1: ICW2 then ICW4, no ICW3.
        out(&mut p, 0, 0x13);
        out(&mut p, 1, 0x20);
        out(&mut p, 1, 0x03);
        out(&mut p, 1, 0xfe); // now OCW1
        assert_eq!(p.imr() & 0xff, 0xfe);
        edge(&mut p, 0);
        assert_eq!(p.ack(), 0x20);
        assert_eq!(p.isr(), 0, "AEOI from ICW4");
        // IC4 = 0: ICW2, ICW3 and done; AEOI cleared.
        out(&mut p, 0, 0x10);
        out(&mut p, 1, 0x40);
        out(&mut p, 1, 0x04);
        out(&mut p, 1, 0xfe);
        assert_eq!(p.imr() & 0xff, 0xfe);
        edge(&mut p, 0);
        assert_eq!(p.ack(), 0x40);
        assert_eq!(p.isr(), 1);
    }

    #[test]
    fn spurious_when_nothing_pending() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        assert_eq!(p.ack(), 0x37);
        assert_eq!(p.isr(), 0);
    }

    #[test]
    fn masked_reports_cascade() {
        let mut p = Pic::new();
        linux_init(&mut p, false);
        assert!(p.is_masked(0));
        assert!(!p.is_masked(2));
        out(&mut p, 3, 0x00);
        assert!(!p.is_masked(8));
        out(&mut p, 1, 0xff);
        assert!(p.is_masked(8));
        assert!(p.is_masked(16));
    }

    #[test]
    fn any_access_is_safe() {
        let mut p = Pic::new();
        for off in 0..8u64 {
            for v in [0u8, 0x10, 0x1f, 0xff, 0x0c, 0x08, 0xe7] {
                p.write(off, &[v, v, v, v]);
                let mut b = [0; 4];
                p.read(off, &mut b);
                p.ack();
            }
        }
        for irq in 0..=255 {
            p.set_irq(irq, true);
        }
    }
}
