//! The MC146818 real-time clock and CMOS RAM (ports 0x70/0x71).
//!
//! Implemented from the Motorola MC146818A datasheet: 128 bytes, of which 0x00-0x09 are
//! the clock and alarm, 0x0a-0x0d registers A-D; the rest is battery-backed RAM holding the
//! PC's configuration (memory sizes, century at 0x32). The clock starts at a time given at
//! construction and advances with *virtual* time: the divider chain's phase is fixed at
//! construction (or when the guest releases the divider reset), each second boundary is an
//! update cycle, so everything the guest reads is a deterministic function of virtual time.
//!
//! Writing bit 7 of port 0x70 masks NMIs ([`Cmos::nmi_masked`]). The interrupt output is
//! IRQ 8: high while IRQF (register C bit 7) is set; reading register C clears it.
//!
//! Simplifications: the clock is kept as seconds, so invalid values the guest writes are
//! clamped to valid dates, and the day of week is derived from the date. Changing the
//! data mode or 12/24-hour bits re-encodes the time instead of leaving stale bytes.

use ox86_mmu::Port;

use crate::bus::{read_bytewise, write_bytewise, BusDevice};
use crate::irq::IrqLine;

/// Index port (bit 7: NMI mask).
pub const CMOS_PORT: Port = Port(0x70);
/// Number of ports (index and data).
pub const CMOS_PORTS_LEN: u16 = 2;
/// The RTC's ISA interrupt line.
pub const RTC_IRQ: u8 = 8;

/// Register indexes.
pub mod reg {
    /// Seconds.
    pub const SECONDS: u8 = 0x00;
    /// Seconds alarm.
    pub const SECONDS_ALARM: u8 = 0x01;
    /// Minutes.
    pub const MINUTES: u8 = 0x02;
    /// Minutes alarm.
    pub const MINUTES_ALARM: u8 = 0x03;
    /// Hours (bit 7 = PM in 12-hour mode).
    pub const HOURS: u8 = 0x04;
    /// Hours alarm.
    pub const HOURS_ALARM: u8 = 0x05;
    /// Day of week, 1 = Sunday.
    pub const DAY_OF_WEEK: u8 = 0x06;
    /// Day of month.
    pub const DAY_OF_MONTH: u8 = 0x07;
    /// Month.
    pub const MONTH: u8 = 0x08;
    /// Year within the century.
    pub const YEAR: u8 = 0x09;
    /// Register A: UIP, divider, rate select.
    pub const A: u8 = 0x0a;
    /// Register B: SET, PIE, AIE, UIE, SQWE, DM, 24/12, DSE.
    pub const B: u8 = 0x0b;
    /// Register C: IRQF, PF, AF, UF (read-only, cleared by reading).
    pub const C: u8 = 0x0c;
    /// Register D: VRT (read-only).
    pub const D: u8 = 0x0d;
    /// Century (IBM PC convention).
    pub const CENTURY: u8 = 0x32;
}

const A_UIP: u8 = 0x80;
const B_SET: u8 = 0x80;
const B_PIE: u8 = 0x40;
const B_AIE: u8 = 0x20;
const B_UIE: u8 = 0x10;
const B_SQWE: u8 = 0x08;
const B_DM_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
const C_IRQF: u8 = 0x80;
const C_PF: u8 = 0x40;
const C_AF: u8 = 0x20;
const C_UF: u8 = 0x10;
const D_VRT: u8 = 0x80;

const NS_PER_SEC: i64 = 1_000_000_000;
/// The update-in-progress bit is set this long before each update cycle (tBUC).
pub const UIP_LEAD_NS: i64 = 244_000;
const TIME_BASE_HZ: i128 = 32_768;
const SECS_PER_DAY: i64 = 86_400;

/// The time registers kept in seconds.
const TIME_REGS: [u8; 8] = [
    reg::SECONDS,
    reg::MINUTES,
    reg::HOURS,
    reg::DAY_OF_WEEK,
    reg::DAY_OF_MONTH,
    reg::MONTH,
    reg::YEAR,
    reg::CENTURY,
];

/// RAM sizes for the PC's CMOS memory-size bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryLayout {
    /// Bytes of RAM below 4 GiB (including the first MiB).
    pub below_4g: u64,
    /// Bytes of RAM mapped above 4 GiB.
    pub above_4g: u64,
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Proleptic Gregorian date of a day number (days since 1970-01-01).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days in month `m` (1-12) of year `y` (proleptic Gregorian).
pub fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        _ => 31,
    }
}

/// Broken-down calendar time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fields {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// 1 = Sunday.
    weekday: u32,
}

impl Fields {
    fn from_secs(secs: i64) -> Self {
        let days = secs.div_euclid(SECS_PER_DAY);
        let sod = secs.rem_euclid(SECS_PER_DAY) as u32;
        let (year, month, day) = civil_from_days(days);
        Fields {
            year,
            month,
            day,
            hour: sod / 3600,
            minute: sod / 60 % 60,
            second: sod % 60,
            // 1970-01-01 was a Thursday.
            weekday: ((days + 4).rem_euclid(7) + 1) as u32,
        }
    }

    fn to_secs(self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * SECS_PER_DAY
            + (self.hour * 3600 + self.minute * 60 + self.second) as i64
    }
}

/// The RTC and CMOS RAM.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Cmos {
    /// CMOS RAM; the time registers hold the guest's bytes only while SET is 1.
    #[serde(with = "crate::bytes")]
    ram: [u8; 128],
    index: u8,
    nmi_masked: bool,
    now_ns: u64,
    /// The clock, in seconds since 1970-01-01 00:00:00 of the RTC's (local) calendar.
    secs: i64,
    /// Phase origin of the divider chain: update cycles at `origin_ns + k s`.
    origin_ns: i64,
    /// Update cycles accounted since `origin_ns`.
    updates_seen: i64,
    /// Periodic-interrupt periods accounted since `origin_ns`.
    periods_seen: i64,
    /// PF, AF, UF.
    flags: u8,

    #[serde(skip)]
    pub(crate) irq: IrqLine,
}

impl Cmos {
    /// Takes the state of `saved` (a snapshot's), keeping this RTC's interrupt line.
    pub fn restore(&mut self, mut saved: Cmos) {
        saved.irq = std::mem::take(&mut self.irq);
        // As the index port writes it (a forged snapshot could hold more).
        saved.index &= 0x7f;
        *self = saved;
    }

    /// A clock reading `start_unix_secs` (seconds since 1970-01-01 UTC; the RTC keeps
    /// local time, which here is UTC) at virtual time 0, with the memory-size bytes set for
    /// `memory` and its interrupt output on `irq`.
    pub fn new(start_unix_secs: u64, memory: MemoryLayout, irq: IrqLine) -> Self {
        let mut c = Cmos {
            ram: [0; 128],
            index: 0,
            nmi_masked: false,
            now_ns: 0,
            secs: start_unix_secs.min(253_402_300_799) as i64, // 9999-12-31T23:59:59
            origin_ns: 0,
            updates_seen: 0,
            periods_seen: 0,
            flags: 0,
            irq,
        };
        // As a BIOS leaves it: 32.768 kHz time base, 1024 Hz periodic rate; BCD, 24 h.
        c.ram[reg::A as usize] = 0x26;
        c.ram[reg::B as usize] = B_24H;
        c.ram[reg::D as usize] = D_VRT;
        c.set_memory(memory);
        c
    }

    /// Whether the guest masked NMIs (bit 7 of the last write to port 0x70).
    pub fn nmi_masked(&self) -> bool {
        self.nmi_masked
    }

    /// A byte of CMOS RAM as the guest would read it (without side effects).
    pub fn peek(&self, index: u8) -> u8 {
        let index = index & 0x7f;
        match index {
            reg::A => self.reg_a(),
            reg::C => self.flags | self.irqf(),
            reg::D => D_VRT,
            i if TIME_REGS.contains(&i) && !self.set_mode() => self.encode_time_reg(i),
            i => self.ram[i as usize],
        }
    }

    /// Stores a RAM byte directly (for firmware setup); registers 0x00-0x0d and the
    /// century are not affected.
    pub fn poke(&mut self, index: u8, value: u8) {
        let index = index & 0x7f;
        if index > reg::D && index != reg::CENTURY {
            self.ram[index as usize] = value;
        }
    }

    /// The clock as seconds since 1970-01-01 00:00:00 (RTC calendar).
    pub fn time_secs(&self) -> i64 {
        self.secs
    }

    /// Resets as the RESET pin does: PIE, AIE, UIE, SQWE and the flags are cleared.
    pub fn reset(&mut self) {
        self.ram[reg::B as usize] &= !(B_PIE | B_AIE | B_UIE | B_SQWE);
        self.flags = 0;
        self.index = 0;
        self.update_irq();
    }

    fn set_memory(&mut self, m: MemoryLayout) {
        const KIB: u64 = 1024;
        const MIB: u64 = 1024 * KIB;
        let base_kb: u16 = 640;
        let ext_kb = (m.below_4g.saturating_sub(MIB) / KIB).min(0xffff) as u16;
        let above_16m = (m.below_4g.saturating_sub(16 * MIB) / (64 * KIB)).min(0xffff) as u16;
        let above_4g = (m.above_4g / (64 * KIB)).min(0xff_ffff) as u32;
        let [lo, hi] = base_kb.to_le_bytes();
        self.ram[0x15] = lo;
        self.ram[0x16] = hi;
        let [lo, hi] = ext_kb.to_le_bytes();
        self.ram[0x17] = lo;
        self.ram[0x18] = hi;
        self.ram[0x30] = lo;
        self.ram[0x31] = hi;
        let [lo, hi] = above_16m.to_le_bytes();
        self.ram[0x34] = lo;
        self.ram[0x35] = hi;
        let [b0, b1, b2, _] = above_4g.to_le_bytes();
        self.ram[0x5b] = b0;
        self.ram[0x5c] = b1;
        self.ram[0x5d] = b2;
        // Equipment byte: math coprocessor present, primary display EGA/VGA.
        self.ram[0x14] = 0x02;
        // Standard checksum over 0x10-0x2d, stored big-endian at 0x2e/0x2f.
        let sum: u16 = self.ram[0x10..=0x2d].iter().map(|&b| b as u16).sum();
        let [hi, lo] = sum.to_be_bytes();
        self.ram[0x2e] = hi;
        self.ram[0x2f] = lo;
    }

    fn set_mode(&self) -> bool {
        self.ram[reg::B as usize] & B_SET != 0
    }

    fn binary(&self) -> bool {
        self.ram[reg::B as usize] & B_DM_BINARY != 0
    }

    /// Whether the divider chain runs (DV2-DV1 = 11 holds it in reset).
    fn running(&self) -> bool {
        (self.ram[reg::A as usize] >> 5) & 3 != 3
    }

    /// Periodic interrupt period in 32.768 kHz clocks, for rate select RS3-RS0.
    fn period_clocks(&self) -> Option<i128> {
        match self.ram[reg::A as usize] & 0x0f {
            0 => None,
            // RS = 1, 2 behave as 8, 9 with the 32.768 kHz time base.
            rs @ (1 | 2) => Some(1 << (rs + 6)),
            rs => Some(1 << (rs - 1)),
        }
    }

    fn clocks_since_origin(&self, now: u64) -> i128 {
        (now as i128 - self.origin_ns as i128) * TIME_BASE_HZ / NS_PER_SEC as i128
    }

    fn updates_at(&self, now: u64) -> i64 {
        (now as i128 - self.origin_ns as i128).div_euclid(NS_PER_SEC as i128) as i64
    }

    fn periods_at(&self, now: u64) -> i64 {
        match self.period_clocks() {
            Some(p) => self.clocks_since_origin(now).div_euclid(p) as i64,
            None => 0,
        }
    }

    fn next_update_ns(&self) -> i128 {
        self.origin_ns as i128 + (self.updates_seen as i128 + 1) * NS_PER_SEC as i128
    }

    fn reg_a(&self) -> u8 {
        let a = self.ram[reg::A as usize] & !A_UIP;
        let uip = self.running()
            && !self.set_mode()
            && self.next_update_ns() - self.now_ns as i128 <= UIP_LEAD_NS as i128;
        a | if uip { A_UIP } else { 0 }
    }

    fn irqf(&self) -> u8 {
        let enabled = self.ram[reg::B as usize] & (B_PIE | B_AIE | B_UIE);
        // PIE, AIE, UIE sit at the bit positions of PF, AF, UF.
        if self.flags & enabled != 0 {
            C_IRQF
        } else {
            0
        }
    }

    fn update_irq(&mut self) {
        self.irq.set_level(self.irqf() != 0);
    }

    fn encode(&self, v: u32) -> u8 {
        if self.binary() {
            v as u8
        } else {
            (((v / 10 % 10) << 4) | (v % 10)) as u8
        }
    }

    fn decode(&self, b: u8) -> u32 {
        if self.binary() {
            b as u32
        } else {
            (b >> 4) as u32 * 10 + (b & 0x0f) as u32
        }
    }

    fn encode_hour(&self, hour: u32) -> u8 {
        if self.ram[reg::B as usize] & B_24H != 0 {
            self.encode(hour)
        } else {
            let h12 = if hour.is_multiple_of(12) {
                12
            } else {
                hour % 12
            };
            self.encode(h12) | if hour >= 12 { 0x80 } else { 0 }
        }
    }

    fn decode_hour(&self, b: u8) -> u32 {
        if self.ram[reg::B as usize] & B_24H != 0 {
            self.decode(b).min(23)
        } else {
            let h = self.decode(b & 0x7f).clamp(1, 12) % 12;
            h + if b & 0x80 != 0 { 12 } else { 0 }
        }
    }

    fn encode_time_reg(&self, index: u8) -> u8 {
        let f = Fields::from_secs(self.secs);
        match index {
            reg::SECONDS => self.encode(f.second),
            reg::MINUTES => self.encode(f.minute),
            reg::HOURS => self.encode_hour(f.hour),
            reg::DAY_OF_WEEK => self.encode(f.weekday),
            reg::DAY_OF_MONTH => self.encode(f.day),
            reg::MONTH => self.encode(f.month),
            reg::YEAR => self.encode(f.year.rem_euclid(100) as u32),
            reg::CENTURY => self.encode(f.year.div_euclid(100).clamp(0, 99) as u32),
            _ => 0,
        }
    }

    /// Copies the clock into the time registers (SET going to 1).
    fn snapshot_time(&mut self) {
        for i in TIME_REGS {
            self.ram[i as usize] = self.encode_time_reg(i);
        }
    }

    /// Reads the clock back from the time registers, clamping invalid values.
    fn parse_time(&mut self) {
        let r = |i: u8| self.ram[i as usize];
        let century = self.decode(r(reg::CENTURY)).min(99) as i64;
        let year = century * 100 + self.decode(r(reg::YEAR)).min(99) as i64;
        let month = self.decode(r(reg::MONTH)).clamp(1, 12);
        let day = self
            .decode(r(reg::DAY_OF_MONTH))
            .clamp(1, days_in_month(year, month));
        let f = Fields {
            year,
            month,
            day,
            hour: self.decode_hour(r(reg::HOURS)),
            minute: self.decode(r(reg::MINUTES)).min(59),
            second: self.decode(r(reg::SECONDS)).min(59),
            weekday: 0,
        };
        self.secs = f.to_secs();
    }

    /// Whether the alarm matches the clock at `secs` (a 0xc0-0xff alarm byte matches any
    /// value: "don't care").
    fn alarm_matches(&self, secs: i64) -> bool {
        let f = Fields::from_secs(secs);
        let check = |alarm: u8, cur: u8| alarm & 0xc0 == 0xc0 || alarm == cur;
        check(self.ram[reg::SECONDS_ALARM as usize], self.encode(f.second))
            && check(self.ram[reg::MINUTES_ALARM as usize], self.encode(f.minute))
            && check(
                self.ram[reg::HOURS_ALARM as usize],
                self.encode_hour(f.hour),
            )
    }

    fn read_reg(&mut self) -> u8 {
        let index = self.index;
        match index {
            reg::C => {
                // Reading register C clears all flags and IRQF, releasing IRQ 8.
                let v = self.flags | self.irqf();
                self.flags = 0;
                self.update_irq();
                v
            }
            _ => self.peek(index),
        }
    }

    fn write_reg(&mut self, v: u8) {
        let index = self.index;
        match index {
            reg::A => {
                let was_running = self.running();
                let old_rate = self.period_clocks();
                self.ram[reg::A as usize] = v & !A_UIP;
                let now = self.now_ns;
                if !was_running && self.running() {
                    // Datasheet: "the first update cycle begins one-half second later"
                    // after the divider reset is released.
                    self.origin_ns = now as i64 - NS_PER_SEC / 2;
                    self.updates_seen = self.updates_at(now);
                    self.periods_seen = self.periods_at(now);
                } else if old_rate != self.period_clocks() {
                    self.periods_seen = self.periods_at(now);
                }
            }
            reg::B => {
                let old = self.ram[reg::B as usize];
                let mut v = v;
                if v & B_SET != 0 {
                    // MC146818A, register B: "the RESET pin going low or the SET bit
                    // going high clears the UIE bit".
                    v &= !B_UIE;
                    if old & B_SET == 0 {
                        self.snapshot_time();
                    }
                }
                self.ram[reg::B as usize] = v;
                if old & B_SET != 0 && v & B_SET == 0 {
                    self.parse_time();
                }
                self.update_irq();
            }
            reg::C | reg::D => {
                tracing::debug!(index, value = v, "RTC: write to read-only register");
            }
            i if TIME_REGS.contains(&i) => {
                if !self.set_mode() {
                    self.snapshot_time();
                }
                self.ram[i as usize] = v;
                if !self.set_mode() {
                    self.parse_time();
                }
            }
            i => self.ram[i as usize] = v,
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_bytewise(offset, data, |o| match o {
            // The index register is write-only.
            0 => 0xff,
            1 => self.read_reg(),
            _ => 0xff,
        });
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        write_bytewise(offset, data, |o, v| match o {
            0 => {
                self.index = v & 0x7f;
                self.nmi_masked = v & 0x80 != 0;
            }
            1 => self.write_reg(v),
            _ => {}
        });
    }

    fn advance_to(&mut self, now_ns: u64) {
        if now_ns <= self.now_ns {
            return;
        }
        self.now_ns = now_ns;
        if !self.running() {
            return;
        }
        let updates = self.updates_at(now_ns);
        let n = updates - self.updates_seen;
        if n > 0 {
            self.updates_seen = updates;
            if !self.set_mode() {
                let old = self.secs;
                self.secs = old.saturating_add(n);
                self.flags |= C_UF;
                // The alarm is compared after every update; the alarm pattern repeats
                // daily, so at most a day of updates needs checking.
                let from = old + 1 + (n - n.min(SECS_PER_DAY));
                if (from..=self.secs).any(|s| self.alarm_matches(s)) {
                    self.flags |= C_AF;
                }
            }
        }
        if self.period_clocks().is_some() {
            let periods = self.periods_at(now_ns);
            if periods > self.periods_seen {
                self.flags |= C_PF;
            }
            self.periods_seen = periods;
        }
        self.update_irq();
    }

    fn next_event_ns(&self) -> Option<u64> {
        if !self.running() || self.irqf() != 0 {
            // IRQ 8 is already high until register C is read: nothing new to signal.
            return None;
        }
        let b = self.ram[reg::B as usize];
        let mut next: Option<i128> = None;
        if b & B_PIE != 0 {
            if let Some(p) = self.period_clocks() {
                let clocks = (self.periods_seen as i128 + 1) * p;
                let t = self.origin_ns as i128
                    + (clocks * NS_PER_SEC as i128 + TIME_BASE_HZ - 1).div_euclid(TIME_BASE_HZ);
                next = Some(t);
            }
        }
        if b & (B_UIE | B_AIE) != 0 && b & B_SET == 0 {
            let t = self.next_update_ns();
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        next.map(|t| u64::try_from(t.max(self.now_ns as i128 + 1)).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::IrqLines;

    /// 2024-02-28 23:59:58 UTC.
    const START: u64 = 1_709_164_798;
    const SEC: u64 = 1_000_000_000;

    fn cmos() -> (Cmos, IrqLines) {
        let lines = IrqLines::new();
        let mem = MemoryLayout {
            below_4g: 256 << 20,
            above_4g: 0,
        };
        (Cmos::new(START, mem, lines.line(8)), lines)
    }

    fn rd(c: &mut Cmos, i: u8) -> u8 {
        c.write(0, &[i]);
        let mut b = [0];
        c.read(1, &mut b);
        b[0]
    }

    fn wr(c: &mut Cmos, i: u8, v: u8) {
        c.write(0, &[i]);
        c.write(1, &[v]);
    }

    #[test]
    fn civil_round_trip() {
        for days in [-719_468i64, -1, 0, 10_957, 19_782, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        let f = Fields::from_secs(START as i64);
        assert_eq!(
            (f.year, f.month, f.day, f.hour, f.minute, f.second),
            (2024, 2, 28, 23, 59, 58)
        );
        assert_eq!(f.weekday, 4, "2024-02-28 was a Wednesday");
    }

    #[test]
    fn reads_start_time_in_bcd_and_advances() {
        let (mut c, _l) = cmos();
        assert_eq!(rd(&mut c, reg::SECONDS), 0x58);
        assert_eq!(rd(&mut c, reg::MINUTES), 0x59);
        assert_eq!(rd(&mut c, reg::HOURS), 0x23);
        assert_eq!(rd(&mut c, reg::DAY_OF_MONTH), 0x28);
        assert_eq!(rd(&mut c, reg::MONTH), 0x02);
        assert_eq!(rd(&mut c, reg::YEAR), 0x24);
        assert_eq!(rd(&mut c, reg::CENTURY), 0x20);
        c.advance_to(SEC - 1);
        assert_eq!(rd(&mut c, reg::SECONDS), 0x58);
        c.advance_to(2 * SEC);
        // Leap day, and the day of week advances.
        assert_eq!(rd(&mut c, reg::SECONDS), 0x00);
        assert_eq!(rd(&mut c, reg::DAY_OF_MONTH), 0x29);
        assert_eq!(rd(&mut c, reg::DAY_OF_WEEK), 0x05);
        c.advance_to(2 * SEC + 86_400 * SEC);
        assert_eq!(rd(&mut c, reg::MONTH), 0x03);
        assert_eq!(rd(&mut c, reg::DAY_OF_MONTH), 0x01);
    }

    #[test]
    fn binary_and_12_hour_modes() {
        // Register B: DM (bit 2) = 1 selects binary, 24/12 (bit 1) = 0 selects 12-hour
        // with bit 7 of the hours byte as PM.
        let (mut c, _l) = cmos();
        wr(&mut c, reg::B, B_DM_BINARY | B_24H);
        assert_eq!(rd(&mut c, reg::SECONDS), 58);
        assert_eq!(rd(&mut c, reg::YEAR), 24);
        wr(&mut c, reg::B, B_DM_BINARY);
        assert_eq!(rd(&mut c, reg::HOURS), 0x80 | 11);
        wr(&mut c, reg::B, 0);
        assert_eq!(rd(&mut c, reg::HOURS), 0x80 | 0x11);
        c.advance_to(2 * SEC);
        assert_eq!(rd(&mut c, reg::HOURS), 0x12, "midnight is 12 AM");
    }

    #[test]
    fn set_bit_freezes_and_loads_new_time() {
        let (mut c, _l) = cmos();
        // The sequence a BIOS/`hwclock` uses: SET, write fields, clear SET.
        wr(&mut c, reg::B, B_SET | B_24H | B_UIE);
        assert_eq!(rd(&mut c, reg::B) & B_UIE, 0, "SET clears UIE");
        wr(&mut c, reg::SECONDS, 0x30);
        wr(&mut c, reg::MINUTES, 0x15);
        wr(&mut c, reg::HOURS, 0x10);
        wr(&mut c, reg::DAY_OF_MONTH, 0x04);
        wr(&mut c, reg::MONTH, 0x07);
        wr(&mut c, reg::YEAR, 0x99);
        wr(&mut c, reg::CENTURY, 0x19);
        assert_eq!(rd(&mut c, reg::SECONDS), 0x30, "raw bytes while SET");
        c.advance_to(5 * SEC);
        assert_eq!(rd(&mut c, reg::SECONDS), 0x30, "no updates while SET");
        wr(&mut c, reg::B, B_24H);
        assert_eq!(rd(&mut c, reg::SECONDS), 0x30);
        assert_eq!(c.time_secs(), 931_083_330); // 1999-07-04 10:15:30
                                                // Updates keep the original phase: next at 6 s.
        c.advance_to(6 * SEC);
        assert_eq!(rd(&mut c, reg::SECONDS), 0x31);
        // Single-field write while running.
        wr(&mut c, reg::MINUTES, 0x45);
        assert_eq!(rd(&mut c, reg::MINUTES), 0x45);
        assert_eq!(rd(&mut c, reg::SECONDS), 0x31);
        // Invalid values are clamped.
        wr(&mut c, reg::MONTH, 0x13);
        assert_eq!(rd(&mut c, reg::MONTH), 0x12);
    }

    #[test]
    fn uip_set_244us_before_update() {
        // Datasheet: UIP goes high tBUC = 244 us before the update cycle.
        let (mut c, _l) = cmos();
        c.advance_to(SEC - 244_001);
        assert_eq!(rd(&mut c, reg::A), 0x26);
        c.advance_to(SEC - 244_000);
        assert_eq!(rd(&mut c, reg::A), 0xa6);
        c.advance_to(SEC - 1);
        assert_eq!(rd(&mut c, reg::A) & A_UIP, A_UIP);
        c.advance_to(SEC);
        assert_eq!(rd(&mut c, reg::A), 0x26);
        // Not while SET.
        c.advance_to(2 * SEC - 1000);
        wr(&mut c, reg::B, B_SET | B_24H);
        assert_eq!(rd(&mut c, reg::A) & A_UIP, 0);
    }

    #[test]
    fn periodic_interrupt_and_register_c() {
        // Rate select 6 with the 32.768 kHz base: 976.5625 us period.
        let (mut c, lines) = cmos();
        wr(&mut c, reg::B, B_24H | B_PIE);
        let first = c.next_event_ns().unwrap();
        assert_eq!(first, 976_563);
        c.advance_to(first - 1);
        assert_eq!(lines.levels() & (1 << 8), 0);
        c.advance_to(first);
        assert_ne!(lines.levels() & (1 << 8), 0);
        assert_eq!(c.next_event_ns(), None, "IRQ already high");
        // Reading C returns IRQF|PF, clears them and drops the line.
        assert_eq!(rd(&mut c, reg::C), C_IRQF | C_PF);
        assert_eq!(lines.levels() & (1 << 8), 0);
        assert_eq!(rd(&mut c, reg::C), 0);
        assert_eq!(c.next_event_ns(), Some(1_953_125));
        // Rate 15: 500 ms.
        wr(&mut c, reg::A, 0x2f);
        assert_eq!(c.next_event_ns(), Some(500_000_000));
    }

    #[test]
    fn flags_set_without_enables_but_no_irq() {
        let (mut c, lines) = cmos();
        c.advance_to(3 * SEC);
        assert_eq!(lines.levels(), 0);
        // The clock passed 00:00:00, which matches the all-zero alarm registers.
        assert_eq!(rd(&mut c, reg::C), C_PF | C_AF | C_UF);
        // Enabling UIE with UF pending raises IRQF at once.
        c.advance_to(4 * SEC);
        wr(&mut c, reg::B, B_24H | B_UIE);
        assert_ne!(lines.levels() & (1 << 8), 0);
        assert_eq!(rd(&mut c, reg::C), C_IRQF | C_PF | C_UF);
    }

    #[test]
    fn update_ended_and_alarm_interrupts() {
        let (mut c, lines) = cmos();
        wr(&mut c, reg::A, 0x20); // no periodic rate
        wr(&mut c, reg::B, B_24H | B_UIE);
        assert_eq!(c.next_event_ns(), Some(SEC));
        c.advance_to(SEC);
        assert_eq!(rd(&mut c, reg::C), C_IRQF | C_UF);
        // Alarm at 00:00:05 with hours "don't care".
        wr(&mut c, reg::B, B_24H | B_AIE);
        wr(&mut c, reg::SECONDS_ALARM, 0x05);
        wr(&mut c, reg::MINUTES_ALARM, 0x00);
        wr(&mut c, reg::HOURS_ALARM, 0xc0);
        c.advance_to(6 * SEC); // clock at 00:00:04
        assert_eq!(lines.levels(), 0);
        assert_eq!(rd(&mut c, reg::C), C_UF);
        c.advance_to(7 * SEC);
        assert_eq!(rd(&mut c, reg::C), C_IRQF | C_AF | C_UF);
        // Catching up over several days still finds the alarm.
        c.advance_to(7 * SEC + 3 * 86_400 * SEC);
        assert_eq!(rd(&mut c, reg::C), C_IRQF | C_AF | C_UF);
    }

    #[test]
    fn divider_reset_delays_first_update_half_second() {
        let (mut c, _l) = cmos();
        c.advance_to(SEC / 4);
        wr(&mut c, reg::A, 0x70); // DV = 111: divider held in reset
        c.advance_to(10 * SEC);
        assert_eq!(rd(&mut c, reg::SECONDS), 0x58, "stopped");
        wr(&mut c, reg::A, 0x26);
        c.advance_to(10 * SEC + SEC / 2 - 1);
        assert_eq!(rd(&mut c, reg::SECONDS), 0x58);
        c.advance_to(10 * SEC + SEC / 2);
        assert_eq!(rd(&mut c, reg::SECONDS), 0x59);
    }

    #[test]
    fn memory_bytes_nmi_and_registers() {
        let lines = IrqLines::new();
        let mem = MemoryLayout {
            below_4g: 3 << 30,
            above_4g: 1 << 30,
        };
        let mut c = Cmos::new(0, mem, lines.line(8));
        assert_eq!(
            (rd(&mut c, 0x15), rd(&mut c, 0x16)),
            (0x80, 0x02),
            "640 KiB"
        );
        assert_eq!((rd(&mut c, 0x17), rd(&mut c, 0x18)), (0xff, 0xff), "capped");
        assert_eq!((rd(&mut c, 0x30), rd(&mut c, 0x31)), (0xff, 0xff));
        // (3 GiB - 16 MiB) / 64 KiB = 0xbf00.
        assert_eq!((rd(&mut c, 0x34), rd(&mut c, 0x35)), (0x00, 0xbf));
        // 1 GiB / 64 KiB = 0x4000.
        assert_eq!(
            (rd(&mut c, 0x5b), rd(&mut c, 0x5c), rd(&mut c, 0x5d)),
            (0x00, 0x40, 0x00)
        );
        let sum: u16 = (0x10..=0x2d).map(|i| c.peek(i) as u16).sum();
        assert_eq!(
            ((rd(&mut c, 0x2e) as u16) << 8) | rd(&mut c, 0x2f) as u16,
            sum
        );
        assert_eq!(rd(&mut c, reg::D), 0x80);
        wr(&mut c, reg::D, 0);
        assert_eq!(rd(&mut c, reg::D), 0x80);
        assert_eq!(rd(&mut c, reg::CENTURY), 0x19);
        // NMI mask is bit 7 of the index write; the index ignores it.
        c.write(0, &[0x80 | 0x15]);
        assert!(c.nmi_masked());
        let mut b = [0];
        c.read(1, &mut b);
        assert_eq!(b[0], 0x80);
        c.write(0, &[0x0f]);
        assert!(!c.nmi_masked());
        // Word write to 0x70 writes index then data, like two byte writes.
        c.write(0, &[0x40, 0xab]);
        assert_eq!(c.peek(0x40), 0xab);
        // Small memory: extended KiB.
        let c = Cmos::new(
            0,
            MemoryLayout {
                below_4g: 32 << 20,
                above_4g: 0,
            },
            IrqLine::disconnected(),
        );
        assert_eq!(u16::from_le_bytes([c.peek(0x17), c.peek(0x18)]), 31 * 1024);
        assert_eq!(u16::from_le_bytes([c.peek(0x34), c.peek(0x35)]), 256);
    }

    #[test]
    fn any_access_is_safe() {
        let (mut c, _l) = cmos();
        let mut t = 0;
        for i in 0..=255u8 {
            for v in [0u8, 0x80, 0xff, 0x7f, 0x59, 0x13] {
                wr(&mut c, i, v);
                let _ = rd(&mut c, i);
                t += 123_456_789;
                c.advance_to(t);
                let _ = c.next_event_ns();
            }
        }
        c.advance_to(u64::MAX);
        let _ = c.next_event_ns();
        let mut b = [0; 8];
        c.read(0, &mut b);
        c.write(0, &b);
    }
}
