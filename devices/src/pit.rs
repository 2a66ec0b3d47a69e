//! The 8254 programmable interval timer (ports 0x40-0x43) and the timer bits of System
//! Control Port B (port 0x61).
//!
//! Implemented from the Intel 82C54 datasheet (order number 231244). The counters run at
//! 1 193 182 Hz of *virtual* time: every count, output level and interrupt edge is an
//! exact function of the clock ticks since the count was loaded, so the device needs no
//! periodic callbacks. The platform tells it the time ([`BusDevice::advance_to`]) and asks
//! when channel 0's output next rises ([`BusDevice::next_event_ns`]); each rising edge of
//! OUT0 is an edge on IRQ 0.
//!
//! Port 0x61: bit 0 = channel 2 gate, bit 1 = speaker data enable, bits 2-3 = parity/IOCHK
//! enables (stored), bit 4 = refresh request toggle (flips every 15.085 us), bit 5 = OUT2.
//!
//! Known simplifications: a new count written in mode 3 takes effect at the end of the
//! current *period* (the datasheet says half-period); the odd-count mode 3 counting
//! sequence follows the datasheet's description, the exact internal values of real parts
//! differ slightly.

use ox86_mmu::Port;

use crate::bus::{read_bytewise, write_bytewise, BusDevice};
use crate::irq::IrqLine;

/// First PIT port (channel 0 data); 0x43 is the control word register.
pub const PIT_BASE: Port = Port(0x40);
/// Number of PIT ports.
pub const PIT_PORTS_LEN: u16 = 4;
/// System Control Port B.
pub const PORT_61: Port = Port(0x61);
/// Device offset at which port 0x61 is attached.
pub const OFFSET_PORT_61: u64 = 4;
/// The PIT input clock.
pub const PIT_FREQUENCY_HZ: u64 = 1_193_182;
/// The ISA interrupt line of channel 0.
pub const PIT_IRQ: u8 = 0;
/// Period of the DRAM refresh request toggle read at port 0x61 bit 4.
pub const REFRESH_TOGGLE_NS: u64 = 15_085;

const NS_PER_SEC: u128 = 1_000_000_000;

/// The PIT tick in progress at virtual time `ns`.
pub fn ns_to_ticks(ns: u64) -> u64 {
    (ns as u128 * PIT_FREQUENCY_HZ as u128 / NS_PER_SEC) as u64
}

/// The first virtual nanosecond at which tick `ticks` has begun.
pub fn ticks_to_ns(ticks: u64) -> u64 {
    let ns = (ticks as u128 * NS_PER_SEC).div_ceil(PIT_FREQUENCY_HZ as u128);
    u64::try_from(ns).unwrap_or(u64::MAX)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Access {
    Lsb,
    Msb,
    Word,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Run {
    /// No count loaded since the control word (or counting disabled by the first byte of
    /// a two-byte count in mode 0). OUT is `out`.
    Idle { out: bool },
    /// Modes 1 and 5: a count is written, waiting for a gate trigger.
    WaitTrigger,
    /// The counting element was loaded with `n` at tick `load`.
    Counting { load: u64 },
    /// Counting suspended by a low gate, `k` ticks after the load.
    Frozen { k: u64 },
}

/// A count written but not loaded yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Pending {
    n: u32,
    /// Tick of the load (modes 2 and 3: end of the current period); `None` in modes 1 and
    /// 5: at the next gate trigger.
    at: Option<u64>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Channel {
    /// Bits 5-0 of the last control word (RW1 RW0 M2 M1 M0 BCD), for the status byte.
    ctrl: u8,
    mode: u8,
    bcd: bool,
    access: Access,
    write_msb_next: bool,
    lsb_buf: u8,
    read_msb_next: bool,
    /// Effective count in the counting element (1..=65536, or 1..=10000 in BCD).
    n: u32,
    run: Run,
    /// Counter value while not counting.
    hold: u32,
    pending: Option<Pending>,
    latch: Option<u16>,
    status: Option<u8>,
    gate: bool,
    /// Tick up to which output edges have been accounted.
    last_tick: u64,
}

impl Channel {
    fn new(gate: bool) -> Self {
        Channel {
            ctrl: 0,
            mode: 0,
            bcd: false,
            access: Access::Lsb,
            write_msb_next: false,
            lsb_buf: 0,
            read_msb_next: false,
            n: 0x1_0000,
            // Power-on OUT is undefined; high avoids a spurious edge when firmware
            // programs the usual modes 2 and 3.
            run: Run::Idle { out: true },
            hold: 0,
            pending: None,
            latch: None,
            status: None,
            gate,
            last_tick: 0,
        }
    }

    fn modulus(&self) -> u64 {
        if self.bcd {
            10_000
        } else {
            0x1_0000
        }
    }

    /// Counter value `k` ticks after a load of `n` (binary domain, `0..modulus`).
    fn count_after(&self, k: u64) -> u32 {
        let n = self.n as u64;
        let m = self.modulus();
        let v = match self.mode {
            2 => n - k % n,
            3 => {
                let p = k % n;
                if n.is_multiple_of(2) {
                    // Even: loaded with N, decremented by two; OUT flips and N is
                    // reloaded every N/2 clocks.
                    n - 2 * (p % (n / 2))
                } else {
                    // Odd: high for (N+1)/2 clocks, low for (N-1)/2; N loaded, then
                    // decremented by 1 (high) or 3 (low), then by 2.
                    let h = n.div_ceil(2);
                    let (q, first) = if p < h { (p, 1) } else { (p - h, 3) };
                    if q == 0 {
                        n
                    } else {
                        n - first - 2 * (q - 1)
                    }
                }
            }
            _ => (n % m + m - k % m) % m,
        };
        (v % m) as u32
    }

    /// OUT `k` ticks after a load.
    fn out_after(&self, k: u64) -> bool {
        let n = self.n as u64;
        match self.mode {
            // Mode 0: low until terminal count. Mode 1: low from the trigger until
            // terminal count.
            0 | 1 => k >= n,
            // Rate generator: low for one clock when the count reaches 1.
            2 => n < 2 || k % n != n - 1,
            // Square wave: high for ceil(N/2) clocks, low for floor(N/2).
            3 => k % n < n.div_ceil(2),
            // Strobes: low for one clock at terminal count.
            _ => k != n,
        }
    }

    fn count_at(&self, t: u64) -> u32 {
        match self.run {
            Run::Counting { load } if t >= load => self.count_after(t - load),
            Run::Frozen { k } => self.count_after(k),
            _ => self.hold,
        }
    }

    fn out_at(&self, t: u64) -> bool {
        match self.run {
            Run::Idle { out } => out,
            Run::WaitTrigger => true,
            Run::Frozen { k } => matches!(self.mode, 2 | 3) || self.out_after(k),
            // Before the load only mode 0 has OUT low (written counts set it low).
            Run::Counting { load } if t < load => self.mode != 0,
            Run::Counting { load } => self.out_after(t - load),
        }
    }

    fn null_count(&self, t: u64) -> bool {
        self.pending.is_some()
            || match self.run {
                Run::Idle { .. } | Run::WaitTrigger => true,
                Run::Counting { load } => t < load,
                Run::Frozen { .. } => false,
            }
    }

    /// Whether OUT rises in the ticks `(a, b]`.
    fn rises_between(&self, a: u64, b: u64) -> bool {
        match self.next_rise_after(a) {
            Some(e) => e <= b,
            None => false,
        }
    }

    /// The first tick after `t` at which OUT rises, if the current state has one.
    fn next_rise_after(&self, t: u64) -> Option<u64> {
        let Run::Counting { load } = self.run else {
            return None;
        };
        let n = self.n as u64;
        let e = match self.mode {
            0 | 1 => load + n,
            2 | 3 if n < 2 => return None,
            2 | 3 => {
                if t < load {
                    load + n
                } else {
                    load + ((t - load) / n + 1) * n
                }
            }
            _ => load + n + 1,
        };
        (e > t).then_some(e)
    }

    /// Accounts ticks up to `t`; returns whether OUT rose in between.
    fn advance(&mut self, t: u64) -> bool {
        if t <= self.last_tick {
            return false;
        }
        let mut rose = false;
        if let Some(Pending { n, at: Some(at) }) = self.pending {
            if at <= t {
                if at > self.last_tick {
                    rose |= self.rises_between(self.last_tick, at);
                    self.last_tick = at;
                }
                self.n = n;
                self.run = Run::Counting { load: at };
                self.pending = None;
            }
        }
        rose |= self.rises_between(self.last_tick, t);
        self.last_tick = t;
        rose
    }

    fn effective(&self, raw: u16) -> u32 {
        if self.bcd {
            let v = bcd_to_bin(raw);
            if v == 0 {
                10_000
            } else {
                v
            }
        } else if raw == 0 {
            0x1_0000
        } else {
            raw as u32
        }
    }

    fn encode(&self, v: u32) -> u16 {
        if self.bcd {
            bin_to_bcd(v)
        } else {
            v as u16
        }
    }

    fn control(&mut self, v: u8, t: u64) {
        self.hold = self.count_at(t);
        self.ctrl = v & 0x3f;
        self.mode = match (v >> 1) & 7 {
            6 => 2,
            7 => 3,
            m => m,
        };
        self.bcd = v & 1 != 0;
        self.access = match (v >> 4) & 3 {
            1 => Access::Lsb,
            2 => Access::Msb,
            _ => Access::Word,
        };
        self.write_msb_next = false;
        self.read_msb_next = false;
        self.latch = None;
        self.status = None;
        self.pending = None;
        // Datasheet, "Mode definitions": after the control word OUT is low in mode 0 and
        // high in all other modes.
        self.run = Run::Idle {
            out: self.mode != 0,
        };
    }

    fn write_count(&mut self, v: u8, t: u64) {
        let raw = match self.access {
            Access::Lsb => v as u16,
            Access::Msb => (v as u16) << 8,
            Access::Word => {
                if !self.write_msb_next {
                    self.write_msb_next = true;
                    self.lsb_buf = v;
                    if self.mode == 0 {
                        // Mode 0: "writing the first byte disables counting; OUT is set
                        // low immediately".
                        self.hold = self.count_at(t);
                        self.run = Run::Idle { out: false };
                        self.pending = None;
                    }
                    return;
                }
                self.write_msb_next = false;
                u16::from_le_bytes([self.lsb_buf, v])
            }
        };
        self.load_count(self.effective(raw), t);
    }

    /// A complete count `n` was written at tick `t`.
    fn load_count(&mut self, n: u32, t: u64) {
        match self.mode {
            // Modes 0 and 4: loaded on the next CLK pulse; counting restarts from it.
            // Modes 2 and 3 when not yet counting: the same.
            0 | 4 => self.start(n, t),
            2 | 3 => match self.run {
                Run::Counting { load } if t >= load => {
                    // "Writing a new count while counting does not affect the current
                    // counting sequence": it is loaded at the end of the current period.
                    let cur = self.n as u64;
                    let at = load + ((t - load) / cur + 1) * cur;
                    self.pending = Some(Pending { n, at: Some(at) });
                }
                Run::Frozen { .. } => {
                    // Gate low: loaded when the gate rises.
                    self.n = n;
                }
                _ => self.start(n, t),
            },
            // Modes 1 and 5: loaded by the next gate trigger.
            _ => {
                self.pending = Some(Pending { n, at: None });
                if matches!(self.run, Run::Idle { .. }) {
                    self.run = Run::WaitTrigger;
                }
            }
        }
    }

    fn start(&mut self, n: u32, t: u64) {
        self.hold = self.count_at(t);
        self.n = n;
        self.pending = None;
        self.run = if self.gate || matches!(self.mode, 1 | 5) {
            Run::Counting { load: t + 1 }
        } else {
            Run::Frozen { k: 0 }
        };
    }

    fn latch_count(&mut self, t: u64) {
        // "If a Counter is latched and then, some time later, latched again before the
        // count is read, the second Counter Latch Command is ignored."
        if self.latch.is_none() {
            self.latch = Some(self.encode(self.count_at(t)));
        }
    }

    fn latch_status(&mut self, t: u64) {
        if self.status.is_none() {
            // Read-back status byte: OUT, NULL COUNT, RW1 RW0 M2 M1 M0 BCD.
            let out = (self.out_at(t) as u8) << 7;
            let null = (self.null_count(t) as u8) << 6;
            self.status = Some(out | null | self.ctrl);
        }
    }

    fn read(&mut self, t: u64) -> u8 {
        if let Some(s) = self.status.take() {
            return s;
        }
        let (value, latched) = match self.latch {
            Some(v) => (v, true),
            None => (self.encode(self.count_at(t)), false),
        };
        let [lsb, msb] = value.to_le_bytes();
        let (byte, done) = match self.access {
            Access::Lsb => (lsb, true),
            Access::Msb => (msb, true),
            Access::Word => {
                self.read_msb_next = !self.read_msb_next;
                if self.read_msb_next {
                    (lsb, false)
                } else {
                    (msb, true)
                }
            }
        };
        if latched && done {
            self.latch = None;
        }
        byte
    }

    fn set_gate(&mut self, gate: bool, t: u64) {
        if gate == self.gate {
            return;
        }
        self.gate = gate;
        match (self.mode, gate) {
            // Modes 1 and 5: a rising gate triggers (re)loading of the count.
            (1 | 5, true) => {
                if let Some(Pending { n, .. }) = self.pending.take() {
                    self.n = n;
                }
                if !matches!(self.run, Run::Idle { .. }) {
                    self.hold = self.count_at(t);
                    self.run = Run::Counting { load: t + 1 };
                }
            }
            // Modes 2 and 3: a low gate stops counting (OUT high); the rising gate
            // reloads the count.
            (2 | 3, true) => {
                if let Run::Frozen { .. } = self.run {
                    self.run = Run::Counting { load: t + 1 };
                }
            }
            // Modes 0 and 4: the gate suspends counting.
            (0 | 4, true) => {
                if let Run::Frozen { k } = self.run {
                    self.run = Run::Counting {
                        load: (t + 1).saturating_sub(k),
                    };
                }
            }
            (0 | 2 | 3 | 4, false) => {
                if let Run::Counting { load } = self.run {
                    if let Some(p) = self.pending.take() {
                        self.n = p.n;
                    }
                    self.hold = self.count_at(t);
                    self.run = Run::Frozen {
                        k: t.saturating_sub(load),
                    };
                }
            }
            _ => {}
        }
    }
}

/// Binary value of a 4-digit BCD number (invalid digits count at face value).
fn bcd_to_bin(v: u16) -> u32 {
    (0..4).fold(0u32, |acc, i| acc * 10 + ((v >> (12 - 4 * i)) & 0xf) as u32)
}

/// 4-digit BCD encoding of `v % 10000`.
fn bin_to_bcd(v: u32) -> u16 {
    let v = v % 10_000;
    ((v / 1000) << 12 | (v / 100 % 10) << 8 | (v / 10 % 10) << 4 | (v % 10)) as u16
}

/// The 8254 with its three channels and port 0x61.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Pit {
    channels: [Channel; 3],
    now_ns: u64,
    tick: u64,
    /// Port 0x61 bits 0-3 as written.
    port61: u8,

    #[serde(skip)]
    pub(crate) irq: IrqLine,
}

impl Pit {
    /// Takes the state of `saved` (a snapshot's), keeping this PIT's interrupt line.
    pub fn restore(&mut self, mut saved: Pit) {
        saved.irq = std::mem::take(&mut self.irq);
        *self = saved;
    }

    /// A PIT in the power-on state (no channel programmed), driving `irq0` from OUT0.
    pub fn new(irq0: IrqLine) -> Self {
        irq0.set_level(true);
        Pit {
            channels: [Channel::new(true), Channel::new(true), Channel::new(false)],
            now_ns: 0,
            tick: 0,
            port61: 0,
            irq: irq0,
        }
    }

    /// Back to the power-on state; the clock keeps its time.
    pub fn reset(&mut self) {
        let t = self.tick;
        self.channels = [Channel::new(true), Channel::new(true), Channel::new(false)];
        for c in &mut self.channels {
            c.last_tick = t;
        }
        self.port61 = 0;
        self.update_irq(false);
    }

    /// OUT of channel `ch` (0-2) at the current time.
    pub fn out(&self, ch: usize) -> bool {
        self.channels.get(ch).is_some_and(|c| c.out_at(self.tick))
    }

    /// The current virtual time.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    fn update_irq(&mut self, rose: bool) {
        if rose {
            self.irq.pulse();
        }
        self.irq.set_level(self.channels[0].out_at(self.tick));
    }

    fn read_reg(&mut self, offset: u64) -> u8 {
        let t = self.tick;
        match offset {
            0..=2 => self.channels[offset as usize].read(t),
            // The control word register cannot be read.
            3 => 0xff,
            OFFSET_PORT_61 => {
                let refresh = ((self.now_ns / REFRESH_TOGGLE_NS) & 1) as u8;
                let out2 = self.channels[2].out_at(t) as u8;
                (self.port61 & 0x0f) | refresh << 4 | out2 << 5
            }
            _ => 0xff,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u8) {
        let t = self.tick;
        match offset {
            0..=2 => self.channels[offset as usize].write_count(v, t),
            3 => {
                let sc = (v >> 6) as usize;
                if sc == 3 {
                    // Read-back command: bit 5 = 0 latches counts, bit 4 = 0 latches
                    // status, bits 3-1 select channels 2-0.
                    for (i, c) in self.channels.iter_mut().enumerate() {
                        if v & (2 << i) != 0 {
                            if v & 0x20 == 0 {
                                c.latch_count(t);
                            }
                            if v & 0x10 == 0 {
                                c.latch_status(t);
                            }
                        }
                    }
                } else if v & 0x30 == 0 {
                    self.channels[sc].latch_count(t);
                } else {
                    self.channels[sc].control(v, t);
                }
            }
            OFFSET_PORT_61 => {
                self.port61 = v & 0x0f;
                self.channels[2].set_gate(v & 1 != 0, t);
            }
            _ => {
                tracing::debug!(offset, value = v, "PIT: write to unknown offset");
                return;
            }
        }
        self.update_irq(false);
    }
}

impl BusDevice for Pit {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_bytewise(offset, data, |o| self.read_reg(o));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        write_bytewise(offset, data, |o, v| self.write_reg(o, v));
    }

    fn advance_to(&mut self, now_ns: u64) {
        if now_ns <= self.now_ns {
            return;
        }
        self.now_ns = now_ns;
        let t = ns_to_ticks(now_ns);
        if t == self.tick {
            return;
        }
        self.tick = t;
        let rose = self.channels[0].advance(t);
        self.channels[1].advance(t);
        self.channels[2].advance(t);
        self.update_irq(rose);
    }

    fn next_event_ns(&self) -> Option<u64> {
        let c = &self.channels[0];
        // A pending mode 2/3 reload happens at a rising edge of the current sequence, so
        // the next rise is always computed from the current parameters.
        let c = c.next_rise_after(self.tick)?;
        Some(ticks_to_ns(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::IrqLines;

    const CTRL: u64 = 3;

    fn pit() -> (Pit, IrqLines) {
        let lines = IrqLines::new();
        (Pit::new(lines.line(0)), lines)
    }

    fn out(p: &mut Pit, off: u64, v: u8) {
        p.write(off, &[v]);
    }

    fn inb(p: &mut Pit, off: u64) -> u8 {
        let mut b = [0];
        p.read(off, &mut b);
        b[0]
    }

    /// Advances to the start of tick `t`.
    fn at_tick(p: &mut Pit, t: u64) {
        p.advance_to(ticks_to_ns(t));
        assert_eq!(p.tick, t);
    }

    fn read_word(p: &mut Pit, ch: u64) -> u16 {
        u16::from_le_bytes([inb(p, ch), inb(p, ch)])
    }

    fn latched(p: &mut Pit, ch: u64) -> u16 {
        out(p, CTRL, (ch as u8) << 6);
        read_word(p, ch)
    }

    fn latched_lsb(p: &mut Pit, ch: u64) -> u8 {
        out(p, CTRL, (ch as u8) << 6);
        inb(p, ch)
    }

    #[test]
    fn tick_conversions_round_trip() {
        for t in [0u64, 1, 2, 1_193_181, 1_193_182, 1_193_183, 123_456_789_012] {
            let ns = ticks_to_ns(t);
            assert_eq!(ns_to_ticks(ns), t);
            if ns > 0 {
                assert_eq!(ns_to_ticks(ns - 1), t - 1);
            }
        }
        assert_eq!(ns_to_ticks(1_000_000_000), PIT_FREQUENCY_HZ);
    }

    #[test]
    fn mode2_rate_generator_linux_hz() {
        // Linux: outb 0x34 (ch0, lohi, mode 2), LATCH = 1193182/100 rounded = 11932.
        let (mut p, lines) = pit();
        at_tick(&mut p, 100);
        out(&mut p, CTRL, 0x34);
        out(&mut p, 0, (11932 & 0xff) as u8);
        out(&mut p, 0, (11932 >> 8) as u8);
        // Loaded on the next CLK pulse (tick 101); first rising edge when the counter
        // reloads, N clocks later.
        assert_eq!(p.next_event_ns(), Some(ticks_to_ns(101 + 11932)));
        lines.take_changes();
        at_tick(&mut p, 101 + 11931);
        assert!(!p.out(0), "OUT low for the one clock at count 1");
        assert_eq!(latched(&mut p, 0), 1);
        assert_eq!(lines.take_changes().map(|c| c.pulses), Some(0));
        at_tick(&mut p, 101 + 11932);
        assert!(p.out(0));
        assert_eq!(latched(&mut p, 0), 11932, "reloaded with N");
        assert_eq!(lines.take_changes().map(|c| c.pulses), Some(1));
        assert_eq!(p.next_event_ns(), Some(ticks_to_ns(101 + 2 * 11932)));
        // Counts are an exact function of time.
        at_tick(&mut p, 101 + 2 * 11932 + 500);
        assert_eq!(latched(&mut p, 0), 11932 - 500);
    }

    #[test]
    fn mode2_skipped_edges_still_pulse_once() {
        let (mut p, lines) = pit();
        out(&mut p, CTRL, 0x34);
        out(&mut p, 0, 100);
        out(&mut p, 0, 0);
        lines.take_changes();
        at_tick(&mut p, 10_000);
        assert_eq!(lines.take_changes().map(|c| c.pulses), Some(1));
    }

    #[test]
    fn mode0_interrupt_on_terminal_count() {
        // Datasheet mode 0: OUT goes low on the control word, stays low until the count
        // reaches zero (N + 1 CLK pulses after the count is written), then stays high.
        let (mut p, lines) = pit();
        at_tick(&mut p, 10);
        out(&mut p, CTRL, 0x30);
        assert!(!p.out(0));
        out(&mut p, 0, 5);
        out(&mut p, 0, 0);
        assert_eq!(p.next_event_ns(), Some(ticks_to_ns(10 + 5 + 1)));
        lines.take_changes();
        at_tick(&mut p, 15);
        assert!(!p.out(0));
        assert_eq!(latched(&mut p, 0), 1);
        at_tick(&mut p, 16);
        assert!(p.out(0));
        assert_eq!(latched(&mut p, 0), 0);
        assert_eq!(
            lines.take_changes().map(|c| (c.levels, c.pulses)),
            Some((1, 1))
        );
        // The counter wraps and keeps counting; OUT stays high, no further events.
        at_tick(&mut p, 18);
        assert_eq!(latched(&mut p, 0), 0xfffe);
        assert_eq!(p.next_event_ns(), None);
    }

    #[test]
    fn mode0_first_byte_stops_counting() {
        let (mut p, _l) = pit();
        out(&mut p, CTRL, 0x30);
        out(&mut p, 0, 0x00);
        out(&mut p, 0, 0x10);
        at_tick(&mut p, 0x100);
        out(&mut p, 0, 0x00);
        let held = latched(&mut p, 0);
        at_tick(&mut p, 0x200);
        assert_eq!(
            latched(&mut p, 0),
            held,
            "counting disabled after the first byte"
        );
        out(&mut p, 0, 0x01);
        at_tick(&mut p, 0x201 + 0x10);
        assert_eq!(latched(&mut p, 0), 0x100 - 0x10);
    }

    #[test]
    fn mode3_square_wave_even_and_odd() {
        let (mut p, lines) = pit();
        // Channel 0, LSB only, mode 3, N = 10: high 5 clocks, low 5.
        out(&mut p, CTRL, 0x16);
        out(&mut p, 0, 10);
        let load = 1;
        for k in 0..20u64 {
            at_tick(&mut p, load + k);
            assert_eq!(p.out(0), k % 10 < 5, "even k={k}");
        }
        at_tick(&mut p, load + 21);
        // Counts down by two: 10 8 6 4 2 | 10 8 ...
        assert_eq!(latched(&mut p, 0) & 0xff, 8);
        lines.take_changes();
        // Odd N = 7: high (N+1)/2 = 4 clocks, low (N-1)/2 = 3.
        let (mut p, _l) = pit();
        out(&mut p, CTRL, 0x16);
        out(&mut p, 0, 7);
        let expect = [true, true, true, true, false, false, false];
        for k in 0..14u64 {
            at_tick(&mut p, 1 + k);
            assert_eq!(p.out(0), expect[(k % 7) as usize], "odd k={k}");
        }
        assert_eq!(p.next_event_ns(), Some(ticks_to_ns(1 + 14)));
    }

    #[test]
    fn mode4_software_strobe() {
        // Datasheet mode 4: OUT high; after the count expires OUT goes low for one clock,
        // then high; N + 1 clocks after the write the strobe appears.
        let (mut p, lines) = pit();
        out(&mut p, CTRL, 0x18);
        out(&mut p, 0, 4);
        assert!(p.out(0));
        lines.take_changes();
        at_tick(&mut p, 4);
        assert!(p.out(0));
        at_tick(&mut p, 5);
        assert!(!p.out(0));
        assert_eq!(p.next_event_ns(), Some(ticks_to_ns(6)));
        at_tick(&mut p, 6);
        assert!(p.out(0));
        assert_eq!(lines.take_changes().map(|c| c.pulses), Some(1));
        assert_eq!(p.next_event_ns(), None, "one strobe per count written");
    }

    #[test]
    fn mode2_new_count_waits_for_period_end() {
        let (mut p, _l) = pit();
        out(&mut p, CTRL, 0x14); // ch0, LSB, mode 2
        out(&mut p, 0, 100);
        at_tick(&mut p, 51);
        out(&mut p, 0, 10);
        assert_eq!(latched_lsb(&mut p, 0), 50, "current period unaffected");
        out(&mut p, CTRL, 0xe2); // read-back status of ch0
        assert_eq!(inb(&mut p, 0) & 0x40, 0x40, "null count until loaded");
        assert_eq!(p.next_event_ns(), Some(ticks_to_ns(101)));
        at_tick(&mut p, 101);
        assert_eq!(latched_lsb(&mut p, 0), 10);
        at_tick(&mut p, 105);
        assert_eq!(latched_lsb(&mut p, 0), 6);
        assert_eq!(p.next_event_ns(), Some(ticks_to_ns(111)));
    }

    #[test]
    fn latch_holds_value_until_read() {
        let (mut p, _l) = pit();
        out(&mut p, CTRL, 0x34);
        out(&mut p, 0, 0);
        out(&mut p, 0, 0); // N = 65536
        at_tick(&mut p, 11);
        out(&mut p, CTRL, 0x00);
        at_tick(&mut p, 20);
        out(&mut p, CTRL, 0x00); // ignored: already latched
        assert_eq!(
            read_word(&mut p, 0),
            0xfff6,
            "value at the first latch: 65536 - 10"
        );
        assert_eq!(
            read_word(&mut p, 0),
            (0x10000 - 19) as u16,
            "latch consumed: live count"
        );
    }

    #[test]
    fn readback_status_and_count() {
        // Datasheet, "Read-Back Command": status byte first, then the count.
        let (mut p, _l) = pit();
        out(&mut p, OFFSET_PORT_61, 0x01);
        out(&mut p, CTRL, 0xb6); // ch2, lohi, mode 3, binary
        out(&mut p, 2, 0x00);
        out(&mut p, 2, 0x10);
        // Before the next clock the count is not loaded: null count set.
        out(&mut p, CTRL, 0xc8); // latch count and status of ch2
        let status = inb(&mut p, 2);
        assert_eq!(status & 0x3f, 0x36);
        assert_eq!(status & 0x40, 0x40);
        assert_eq!(status & 0x80, 0x80, "OUT high in mode 3");
        let _ = read_word(&mut p, 2);
        // After some clocks: status shows the count loaded, OUT high.
        at_tick(&mut p, 3);
        out(&mut p, CTRL, 0xe8); // status only, ch2
        let status = inb(&mut p, 2);
        assert_eq!(status & 0x40, 0);
        assert_eq!(status & 0x80, 0x80);
        // Count only.
        out(&mut p, CTRL, 0xd8);
        assert_eq!(read_word(&mut p, 2), 0x1000 - 2 * 2);
    }

    #[test]
    fn channel2_gate_and_port61_linux_calibration() {
        // Linux pit_calibrate_tsc(): port 0x61 = (x & ~2) | 1 (gate on, speaker off),
        // ch2 mode 0 lohi, count 0xffff... poll bit 5 until OUT2 goes high.
        let (mut p, _l) = pit();
        at_tick(&mut p, 1000);
        out(&mut p, OFFSET_PORT_61, 0x01);
        out(&mut p, CTRL, 0xb0);
        out(&mut p, 2, 0x2e);
        out(&mut p, 2, 0x9b); // 39726 = 1193182 / 30 (a CAL_MS = 33 ms-ish count)
        assert_eq!(inb(&mut p, OFFSET_PORT_61) & 0x20, 0);
        at_tick(&mut p, 1000 + 1 + 39726 - 1);
        assert_eq!(inb(&mut p, OFFSET_PORT_61) & 0x20, 0);
        at_tick(&mut p, 1000 + 1 + 39726);
        assert_eq!(inb(&mut p, OFFSET_PORT_61) & 0x21, 0x21);
        // Channel 2 does not interrupt.
        assert_eq!(p.next_event_ns(), None);
    }

    #[test]
    fn gate_low_suspends_mode0() {
        let (mut p, _l) = pit();
        out(&mut p, OFFSET_PORT_61, 0x01);
        out(&mut p, CTRL, 0x90); // ch2 LSB mode 0
        out(&mut p, 2, 100);
        at_tick(&mut p, 11);
        out(&mut p, OFFSET_PORT_61, 0x00);
        assert_eq!(inb(&mut p, 2), 90);
        at_tick(&mut p, 500);
        assert_eq!(inb(&mut p, 2), 90, "gate low: counting suspended");
        out(&mut p, OFFSET_PORT_61, 0x01);
        at_tick(&mut p, 511);
        assert_eq!(inb(&mut p, 2), 80);
    }

    #[test]
    fn gate_controls_mode2_reload_and_mode1_trigger() {
        let (mut p, _l) = pit();
        out(&mut p, OFFSET_PORT_61, 0x01);
        out(&mut p, CTRL, 0x94); // ch2 LSB mode 2
        out(&mut p, 2, 50);
        at_tick(&mut p, 21);
        out(&mut p, OFFSET_PORT_61, 0x00);
        assert!(p.out(2));
        out(&mut p, OFFSET_PORT_61, 0x01); // rising gate: reload on next clock
        at_tick(&mut p, 22);
        assert_eq!(inb(&mut p, 2), 50);
        // Mode 1: waits for a gate trigger, OUT low during the count.
        out(&mut p, OFFSET_PORT_61, 0x00);
        out(&mut p, CTRL, 0x92);
        out(&mut p, 2, 10);
        at_tick(&mut p, 40);
        assert!(p.out(2), "no trigger yet");
        out(&mut p, OFFSET_PORT_61, 0x01);
        at_tick(&mut p, 41);
        assert!(!p.out(2));
        at_tick(&mut p, 51);
        assert!(p.out(2));
    }

    #[test]
    fn bcd_counting() {
        let (mut p, _l) = pit();
        out(&mut p, CTRL, 0x31); // ch0 lohi mode 0 BCD
        out(&mut p, 0, 0x00);
        out(&mut p, 0, 0x10); // 1000 decimal
        at_tick(&mut p, 1 + 1);
        assert_eq!(latched(&mut p, 0), 0x0999);
        at_tick(&mut p, 1 + 1000);
        assert!(p.out(0));
        at_tick(&mut p, 1 + 1001);
        assert_eq!(latched(&mut p, 0), 0x9999, "BCD wraps to 9999");
        assert_eq!(bcd_to_bin(0x1234), 1234);
        assert_eq!(bin_to_bcd(9876), 0x9876);
    }

    #[test]
    fn access_modes_lsb_msb() {
        let (mut p, _l) = pit();
        out(&mut p, CTRL, 0x20); // ch0 MSB only mode 0
        out(&mut p, 0, 0x02); // N = 0x200
        at_tick(&mut p, 1 + 0x10);
        assert_eq!(inb(&mut p, 0), 0x01, "MSB of 0x1f0");
        out(&mut p, CTRL, 0x10); // LSB only
        out(&mut p, 0, 0x80);
        at_tick(&mut p, 0x11 + 1 + 0x10);
        assert_eq!(inb(&mut p, 0), 0x70);
    }

    #[test]
    fn refresh_toggle_follows_time() {
        let (mut p, _l) = pit();
        p.advance_to(REFRESH_TOGGLE_NS - 1);
        let a = inb(&mut p, OFFSET_PORT_61) & 0x10;
        p.advance_to(REFRESH_TOGGLE_NS);
        let b = inb(&mut p, OFFSET_PORT_61) & 0x10;
        assert_ne!(a, b);
        out(&mut p, OFFSET_PORT_61, 0xff);
        assert_eq!(inb(&mut p, OFFSET_PORT_61) & 0x0f, 0x0f);
    }

    #[test]
    fn any_access_is_safe() {
        let (mut p, _l) = pit();
        let mut t = 0;
        for ctrl in 0..=255u8 {
            out(&mut p, CTRL, ctrl);
            for v in [0u8, 1, 2, 0x99, 0xff] {
                out(&mut p, (ctrl % 3) as u64, v);
                t += 7919;
                p.advance_to(t);
                let _ = p.next_event_ns();
                let mut b = [0; 4];
                p.read(0, &mut b);
                p.read(3, &mut b);
                p.write(2, &b);
            }
        }
        p.advance_to(u64::MAX);
        let _ = p.next_event_ns();
    }
}
