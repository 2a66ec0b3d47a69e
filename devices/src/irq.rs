//! Interrupt lines from devices to the interrupt controller.
//!
//! A device holds an [`IrqLine`] and drives it with [`IrqLine::set_level`] (a level that
//! stays until changed, like the RTC's IRQ output) or [`IrqLine::pulse`] (a low-high-low
//! edge, like a PIT rate-generator tick or a vm-superio UART trigger). Lines are wired-OR:
//! a line is high while any of its sources asserts it.
//!
//! The state is a handful of atomics shared between the lines and the platform, so a device
//! can raise a line from any thread without a lock; the platform moves the changes into the
//! PIC ([`IrqLines::take_changes`]) after each device access and each time step.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

/// Number of interrupt lines (ISA IRQ 0-15, and room for IO-APIC inputs 16-23).
pub const IRQ_LINES: usize = 24;

#[derive(Debug, Default)]
struct LineState {
    /// Per line, how many sources assert it.
    asserted: [AtomicU32; IRQ_LINES],
    /// Lines that saw a pulse since the last [`IrqLines::take_changes`].
    pulses: AtomicU32,
    /// Set after any change; cleared by [`IrqLines::take_changes`].
    dirty: AtomicBool,
}

/// The set of interrupt lines of a machine; hands out [`IrqLine`]s.
#[derive(Clone, Debug, Default)]
pub struct IrqLines {
    state: Arc<LineState>,
}

/// Changes of the interrupt lines since the previous [`IrqLines::take_changes`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqChanges {
    /// Bit n: line n is currently high.
    pub levels: u32,
    /// Bit n: line n was pulsed (went low-high) since the last call.
    pub pulses: u32,
}

impl IrqLines {
    /// A set of lines, all low.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new source driving line `irq`. Lines past [`IRQ_LINES`] are not connected: the
    /// returned line does nothing.
    pub fn line(&self, irq: u8) -> IrqLine {
        IrqLine {
            state: Arc::clone(&self.state),
            irq: ((irq as usize) < IRQ_LINES).then_some(irq),
            asserted: AtomicBool::new(false),
        }
    }

    /// Whether any line changed since the last [`IrqLines::take_changes`].
    #[inline]
    pub fn has_changes(&self) -> bool {
        self.state.dirty.load(Ordering::Acquire)
    }

    /// The current levels and the pulses since the last call, or `None` when nothing
    /// changed.
    #[inline]
    pub fn take_changes(&self) -> Option<IrqChanges> {
        if !self.state.dirty.load(Ordering::Acquire)
            || !self.state.dirty.swap(false, Ordering::AcqRel)
        {
            return None;
        }
        let pulses = self.state.pulses.swap(0, Ordering::AcqRel);
        let levels = self
            .state
            .asserted
            .iter()
            .enumerate()
            .filter(|(_, n)| n.load(Ordering::Acquire) > 0)
            .fold(0u32, |acc, (i, _)| acc | 1 << i);
        Some(IrqChanges { levels, pulses })
    }

    /// Current levels of all lines (bit n = line n), without consuming changes.
    pub fn levels(&self) -> u32 {
        self.state
            .asserted
            .iter()
            .enumerate()
            .filter(|(_, n)| n.load(Ordering::Acquire) > 0)
            .fold(0u32, |acc, (i, _)| acc | 1 << i)
    }
}

/// One source driving one interrupt line. Dropping it deasserts its level.
#[derive(Debug)]
pub struct IrqLine {
    state: Arc<LineState>,
    irq: Option<u8>,
    asserted: AtomicBool,
}

impl Default for IrqLine {
    /// A line connected to nothing (what a device restored from a snapshot holds until
    /// the platform moves its wired line back in).
    fn default() -> Self {
        IrqLine::disconnected()
    }
}

impl IrqLine {
    /// A line connected to nothing (for devices used alone, e.g. in tests).
    pub fn disconnected() -> Self {
        IrqLines::new().line(u8::MAX)
    }

    /// The line number, or `None` when disconnected.
    pub fn irq(&self) -> Option<u8> {
        self.irq
    }

    /// Whether this source currently asserts the line.
    pub fn is_asserted(&self) -> bool {
        self.asserted.load(Ordering::Acquire)
    }

    /// Asserts (`true`) or deasserts (`false`) this source's level on the line.
    pub fn set_level(&self, high: bool) {
        let Some(irq) = self.irq else { return };
        if self.asserted.swap(high, Ordering::AcqRel) == high {
            return;
        }
        let counter = &self.state.asserted[irq as usize];
        if high {
            counter.fetch_add(1, Ordering::AcqRel);
        } else {
            counter.fetch_sub(1, Ordering::AcqRel);
        }
        self.state.dirty.store(true, Ordering::Release);
    }

    /// Signals a low-to-high edge on the line; afterwards the line returns to its level.
    pub fn pulse(&self) {
        let Some(irq) = self.irq else { return };
        self.state.pulses.fetch_or(1 << irq, Ordering::AcqRel);
        self.state.dirty.store(true, Ordering::Release);
    }
}

impl Drop for IrqLine {
    fn drop(&mut self) {
        self.set_level(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_wired_or() {
        let lines = IrqLines::new();
        let a = lines.line(4);
        let b = lines.line(4);
        assert_eq!(lines.take_changes(), None);
        a.set_level(true);
        b.set_level(true);
        assert_eq!(lines.take_changes().map(|c| c.levels), Some(1 << 4));
        a.set_level(false);
        assert_eq!(lines.take_changes().map(|c| c.levels), Some(1 << 4));
        b.set_level(false);
        assert_eq!(lines.take_changes().map(|c| c.levels), Some(0));
        // Repeated identical levels count once per source.
        a.set_level(true);
        a.set_level(true);
        a.set_level(false);
        assert_eq!(lines.levels(), 0);
    }

    #[test]
    fn pulses_are_reported_once() {
        let lines = IrqLines::new();
        let l = lines.line(0);
        l.pulse();
        l.pulse();
        assert_eq!(
            lines.take_changes(),
            Some(IrqChanges {
                levels: 0,
                pulses: 1
            })
        );
        assert_eq!(lines.take_changes(), None);
    }

    #[test]
    fn drop_deasserts_and_out_of_range_is_inert() {
        let lines = IrqLines::new();
        let l = lines.line(8);
        l.set_level(true);
        assert_eq!(lines.levels(), 1 << 8);
        drop(l);
        assert_eq!(lines.levels(), 0);
        let bogus = lines.line(200);
        assert_eq!(bogus.irq(), None);
        bogus.set_level(true);
        bogus.pulse();
        assert_eq!(lines.take_changes().map(|c| c.pulses), Some(0));
        IrqLine::disconnected().pulse();
    }
}
