//! Record and replay: under `--record FILE` every input from the host enters the
//! machine at a slice boundary, and the log keeps it with the instruction count at
//! which it did, with checks of the machine state at regular intervals; `--replay FILE`
//! runs the same machine with no host input, feeding the logged input at the same
//! counts, and stops at the first check whose state differs, naming what differs.
//!
//! The file is `OX86RPLY`, the format version (u32, little-endian), then frames: a
//! length (u32, little-endian) and an [`Event`] (postcard). The first frame is the
//! [`Header`]; the last is [`Event::End`] (a log without one was cut short).

use std::io::Write;

use ox86_cpu::CpuState;
use ox86_mmu::Memory;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

/// The file's first bytes.
pub const MAGIC: &[u8; 8] = b"OX86RPLY";
/// The format's version.
pub const VERSION: u32 = 1;
/// Instructions between two checks of the state (a check hashes all of RAM: about
/// 20 ms for 256 MiB, 2% of the time a billion instructions take).
pub const CHECK_EVERY: u64 = 1_000_000_000;
/// A check also follows each console input by this many instructions, so that input
/// that differs is found near where it entered.
pub const CHECK_AFTER_INPUT: u64 = 10_000_000;
/// Bytes of RAM per hash in a check (a difference is named to the MiB).
const RAM_PART: usize = 1 << 20;
/// The largest frame a log may hold (a check of 4 GiB of RAM is 32 KiB).
const MAX_FRAME: usize = 1 << 20;

/// What a log starts with: the machine it was recorded on and what it took from the
/// host besides input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The machine (see `Machine::identity`).
    pub machine: u128,
    /// The RTC's start (seconds since 1970 as the RTC shows it).
    pub rtc_start: u64,
    /// The icount shift.
    pub shift: u32,
}

/// One entry of a log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The log's header (first frame only).
    Header(Header),
    /// Bytes typed on the console, queued for COM1 at this instruction count and guest
    /// time (a halted guest's time moves on without instructions).
    Console {
        /// The instruction count.
        icount: u64,
        /// Guest time, ns.
        ns: u64,
        /// The bytes COM1's input queue took.
        bytes: Vec<u8>,
    },
    /// The state at this instruction count.
    Check(Check),
    /// The recording ended here.
    End {
        /// The instruction count.
        icount: u64,
    },
}

/// A check of the machine state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// The instruction count.
    pub icount: u64,
    /// EAX..EDI, EIP and EFLAGS, to name a register that differs.
    pub regs: [u64; 10],
    /// The whole CPU and FPU (see [`crate::digest`]).
    pub cpu: u128,
    /// The devices.
    pub devices: u128,
    /// RAM, one hash per MiB.
    pub ram: Vec<u64>,
}

impl Check {
    /// The check of CPU state `s`, device state `devices` and RAM `mem`.
    pub fn of(s: &CpuState, devices: &[u8], mem: &Memory) -> Check {
        let mut regs = [0u64; 10];
        regs[..8].copy_from_slice(&s.regs[..8]);
        regs[8] = s.rip;
        regs[9] = s.eflags();
        let d = crate::digest::Digest::of_cpu(s);
        let mut ram = Vec::new();
        crate::ram::for_each_chunk(mem, RAM_PART, |_, bytes| ram.push(xxh3_64(bytes)));
        Check {
            icount: s.icount,
            regs,
            cpu: d,
            devices: xxh3_128(devices),
            ram,
        }
    }

    /// What differs from `want` (the logged check), if anything.
    pub fn differs(&self, want: &Check) -> Option<String> {
        const NAMES: [&str; 10] = [
            "EAX", "ECX", "EDX", "EBX", "ESP", "EBP", "ESI", "EDI", "EIP", "EFLAGS",
        ];
        for (k, name) in NAMES.iter().enumerate() {
            if self.regs[k] != want.regs[k] {
                return Some(format!(
                    "{name} is {:#x}, the recording had {:#x}",
                    self.regs[k], want.regs[k]
                ));
            }
        }
        if self.cpu != want.cpu {
            return Some("the CPU state (segments, control registers, x87) differs".into());
        }
        if self.devices != want.devices {
            return Some("the devices' state differs".into());
        }
        if self.ram.len() != want.ram.len() {
            return Some("the RAM size differs".into());
        }
        if let Some(k) = (0..self.ram.len()).find(|&k| self.ram[k] != want.ram[k]) {
            let at = k as u64 * RAM_PART as u64;
            return Some(format!(
                "RAM differs in {at:#010x}-{:#010x}",
                at + RAM_PART as u64 - 1
            ));
        }
        None
    }
}

/// A log that cannot be replayed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LogError {
    /// Not a replay log at all.
    #[error("not an ox86 replay log")]
    NotALog,
    /// A log of another format version.
    #[error("replay log format version {found}, this ox86 reads version {VERSION}")]
    Version {
        /// The file's version.
        found: u32,
    },
    /// Truncated or corrupt.
    #[error("the replay log is truncated or corrupt ({0})")]
    Corrupt(String),
    /// Recorded on another machine.
    #[error("the replay log is of another machine (kernel, initrd, command line or RAM size)")]
    OtherMachine,
}

/// The log of file bytes `bytes`: its header and its events, checked (frames whole,
/// counts never going back, one header first and one end last).
pub fn parse(bytes: &[u8]) -> Result<(Header, Vec<Event>), LogError> {
    if bytes.len() < 8 || &bytes[..8] != MAGIC {
        return Err(LogError::NotALog);
    }
    let corrupt = |m: &str| LogError::Corrupt(m.to_string());
    let v = bytes.get(8..12).ok_or_else(|| corrupt("no version"))?;
    let found = u32::from_le_bytes(v.try_into().expect("4 bytes"));
    if found != VERSION {
        return Err(LogError::Version { found });
    }
    let mut at = 12;
    let mut events = Vec::new();
    while at < bytes.len() {
        let len = bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| corrupt("a frame's length is cut"))?;
        if len > MAX_FRAME {
            return Err(corrupt("a frame is too long"));
        }
        let frame = bytes
            .get(at + 4..at + 4 + len)
            .ok_or_else(|| corrupt("a frame is cut"))?;
        let e: Event = postcard::from_bytes(frame).map_err(|e| LogError::Corrupt(e.to_string()))?;
        events.push(e);
        at += 4 + len;
    }
    let header = match events.first() {
        Some(Event::Header(h)) => h.clone(),
        _ => return Err(corrupt("no header")),
    };
    if !matches!(events.last(), Some(Event::End { .. })) || events.len() < 2 {
        return Err(corrupt("no end: the recording was cut short"));
    }
    let mut last = 0;
    for (k, e) in events.iter().enumerate().skip(1) {
        let icount = match e {
            Event::Header(_) => return Err(corrupt("a second header")),
            Event::Console { icount, .. } | Event::End { icount } => *icount,
            Event::Check(c) => c.icount,
        };
        if icount < last || (matches!(e, Event::End { .. }) && k + 1 != events.len()) {
            return Err(corrupt("events out of order"));
        }
        last = icount;
    }
    events.remove(0);
    Ok((header, events))
}

/// Writes a log as the run goes.
pub struct Recorder {
    out: std::io::BufWriter<std::fs::File>,
    path: String,
    /// The instruction count of the next check.
    pub next_check: u64,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("path", &self.path)
            .finish()
    }
}

impl Recorder {
    /// Creates the log at `path` and writes its header.
    pub fn create(path: &std::path::Path, header: Header) -> Result<Recorder, String> {
        let f = std::fs::File::create(path).map_err(|e| e.to_string())?;
        let mut r = Recorder {
            out: std::io::BufWriter::new(f),
            path: path.display().to_string(),
            next_check: CHECK_EVERY,
        };
        r.out.write_all(MAGIC).map_err(|e| e.to_string())?;
        r.out
            .write_all(&VERSION.to_le_bytes())
            .map_err(|e| e.to_string())?;
        r.write(&Event::Header(header))?;
        Ok(r)
    }

    /// Appends `e`.
    pub fn write(&mut self, e: &Event) -> Result<(), String> {
        let b = postcard::to_stdvec(e).expect("an event serialises to memory");
        self.out
            .write_all(&(b.len() as u32).to_le_bytes())
            .and_then(|_| self.out.write_all(&b))
            .map_err(|e| e.to_string())
    }

    /// Writes the end and flushes.
    pub fn finish(&mut self, icount: u64) -> Result<(), String> {
        self.write(&Event::End { icount })?;
        self.out.flush().map_err(|e| e.to_string())
    }

    /// Where the log goes.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// Feeds a log back.
#[derive(Debug)]
pub struct Replayer {
    events: std::collections::VecDeque<Event>,
}

impl Replayer {
    /// The replay of `events` (from [`parse`]).
    pub fn new(events: Vec<Event>) -> Replayer {
        Replayer {
            events: events.into(),
        }
    }

    /// The instruction count of the next event.
    pub fn next_icount(&self) -> Option<u64> {
        self.events.front().map(|e| match e {
            Event::Header(_) => 0,
            Event::Console { icount, .. } | Event::End { icount } => *icount,
            Event::Check(c) => c.icount,
        })
    }

    /// The next event.
    pub fn peek(&self) -> Option<&Event> {
        self.events.front()
    }

    /// The next event, if it is due at `icount`.
    pub fn take_due(&mut self, icount: u64) -> Option<Event> {
        (self.next_icount() == Some(icount))
            .then(|| self.events.pop_front())
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ox86_mmu::PhysAddr;

    fn log(events: &[Event]) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&VERSION.to_le_bytes());
        for e in events {
            let b = postcard::to_stdvec(e).unwrap();
            v.extend_from_slice(&(b.len() as u32).to_le_bytes());
            v.extend_from_slice(&b);
        }
        v
    }

    fn header() -> Event {
        Event::Header(Header {
            machine: 1,
            rtc_start: 2,
            shift: 0,
        })
    }

    #[test]
    fn parses_a_log_and_refuses_damage() {
        let typed = Event::Console {
            icount: 5,
            ns: 5,
            bytes: b"ls\r".to_vec(),
        };
        let good = log(&[header(), typed.clone(), Event::End { icount: 9 }]);
        let (h, ev) = parse(&good).unwrap();
        assert_eq!(h.rtc_start, 2);
        assert_eq!(ev, vec![typed.clone(), Event::End { icount: 9 }]);
        assert_eq!(parse(b"junk").err(), Some(LogError::NotALog));
        let mut v = good.clone();
        v[8] = 3;
        assert_eq!(parse(&v).err(), Some(LogError::Version { found: 3 }));
        for cut in 9..good.len() {
            assert!(parse(&good[..cut]).is_err(), "cut at {cut}");
        }
        for bad in [
            log(&[typed.clone(), Event::End { icount: 9 }]),
            log(&[header(), Event::End { icount: 9 }, typed.clone()]),
            log(&[header(), Event::End { icount: 1 }, Event::End { icount: 2 }]),
            log(&[header(), typed, Event::End { icount: 4 }]),
            log(&[header(), header(), Event::End { icount: 4 }]),
        ] {
            assert!(matches!(parse(&bad), Err(LogError::Corrupt(_))));
        }
        let mut huge = log(&[header()]);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse(&huge), Err(LogError::Corrupt(_))));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Any bytes after the magic and version, and any damage to a good log, give
        /// a log or an error, never a panic.
        #[test]
        fn parsing_never_panics(
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            flips in proptest::collection::vec((0usize..400, proptest::prelude::any::<u8>()), 0..8),
        ) {
            let mut v = MAGIC.to_vec();
            v.extend_from_slice(&VERSION.to_le_bytes());
            v.extend_from_slice(&tail);
            let _ = parse(&v);
            let mut good = log(&[
                header(),
                Event::Console { icount: 5, ns: 7, bytes: b"ls\r".to_vec() },
                Event::Check(Check {
                    icount: 6,
                    regs: [1; 10],
                    cpu: 2,
                    devices: 3,
                    ram: vec![4, 5],
                }),
                Event::End { icount: 9 },
            ]);
            for (at, x) in flips {
                let n = good.len();
                good[at % n] ^= x;
            }
            let _ = parse(&good);
        }
    }

    #[test]
    fn a_check_names_what_differs() {
        let mut s = CpuState::default();
        let mem = Memory::new(4 << 20).unwrap();
        let a = Check::of(&s, b"dev", &mem);
        assert_eq!(a.differs(&a), None);
        s.regs[3] = 0x1234;
        let b = Check::of(&s, b"dev", &mem);
        assert!(b.differs(&a).unwrap().starts_with("EBX is 0x1234"));
        s.regs[3] = 0;
        s.cr3 = 0x5000;
        assert!(Check::of(&s, b"dev", &mem)
            .differs(&a)
            .unwrap()
            .contains("CPU state"));
        s.cr3 = 0;
        assert!(Check::of(&s, b"deV", &mem)
            .differs(&a)
            .unwrap()
            .contains("devices"));
        let mut mem2 = Memory::new(4 << 20).unwrap();
        mem2.write_phys(PhysAddr(0x0023_4567), &[1]);
        let m = Check::of(&s, b"dev", &mem2).differs(&a).unwrap();
        assert_eq!(m, "RAM differs in 0x00200000-0x002fffff");
    }
}
