//! The PC's low physical memory layout as the loaders see it, range checks for
//! everything a loader writes, and a first-fit placer for modules and boot data.

use ox86_mmu::{Memory, PhysAddr, PAGE_SIZE};

use crate::error::BootError;

/// End of usable conventional memory; the EBDA follows.
pub const LOW_MEM_END: u64 = 0x9_fc00;
/// Start of the extended memory above the legacy video and BIOS area.
pub const HIGH_MEM_START: u64 = 0x10_0000;
/// Start of the legacy video memory window.
pub const VGA_START: u64 = 0xa_0000;
/// Start of the system BIOS ROM.
pub const BIOS_ROM_START: u64 = 0xf_0000;
/// The 32-bit physical address space limit.
pub const FOUR_GIB: u64 = 1 << 32;

/// Checks that `[start, start + len)` may be written by a loader: it lies in RAM,
/// below 4 GiB, and away from the reserved area `0x9fc00..0x100000`.
pub fn check_range(
    mem: &Memory,
    what: &'static str,
    start: u64,
    len: u64,
) -> Result<(), BootError> {
    let end = start
        .checked_add(len)
        .filter(|&e| e <= FOUR_GIB)
        .ok_or(BootError::Overflow(what))?;
    if len == 0 {
        return Ok(());
    }
    if start < HIGH_MEM_START && end > LOW_MEM_END {
        return Err(BootError::Reserved { what, start, end });
    }
    if !mem.is_ram(PhysAddr(start), len) {
        return Err(BootError::OutsideRam {
            what,
            start,
            end,
            ram_size: mem.ram_size(),
        });
    }
    Ok(())
}

/// Writes `len` zero bytes at `start` without allocating more than a page.
pub fn zero_fill(mem: &mut Memory, start: u64, len: u64) {
    let zeros = [0u8; PAGE_SIZE as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(PAGE_SIZE);
        mem.write_phys(PhysAddr(start + done), &zeros[..n as usize]);
        done += n;
    }
}

/// Rounds `v` up to a multiple of `align` (a power of two); `None` on overflow.
pub fn align_up(v: u64, align: u64) -> Option<u64> {
    Some(v.checked_add(align - 1)? & !(align - 1))
}

/// Tracks the physical ranges already taken and finds free ones.
#[derive(Debug, Default)]
pub struct Placer {
    used: Vec<(u64, u64)>,
}

impl Placer {
    /// An empty placer.
    pub fn new() -> Placer {
        Placer::default()
    }

    /// Marks `[start, end)` as taken.
    pub fn take(&mut self, start: u64, end: u64) {
        if end > start {
            self.used.push((start, end));
        }
    }

    /// The end of the highest taken range (0 when none).
    pub fn highest_end(&self) -> u64 {
        self.used.iter().map(|r| r.1).max().unwrap_or(0)
    }

    /// Finds the lowest `align`-aligned free range of `len` bytes at or above `from`
    /// that lies in usable RAM (conventional memory or RAM from 1 MiB on), marks it
    /// taken and returns its start.
    pub fn place(&mut self, mem: &Memory, from: u64, len: u64, align: u64) -> Option<u64> {
        self.used.sort_unstable();
        let ram_end = mem.ram_size().min(FOUR_GIB);
        for (lo, hi) in [(0x1000, LOW_MEM_END), (HIGH_MEM_START, ram_end)] {
            let mut cand = align_up(from.max(lo), align)?;
            for &(s, e) in &self.used {
                if e <= cand {
                    continue;
                }
                if s >= cand.checked_add(len)? {
                    break;
                }
                cand = align_up(e, align)?;
            }
            let end = cand.checked_add(len)?;
            if end <= hi && mem.is_ram(PhysAddr(cand), len) {
                self.take(cand, end.max(cand + 1));
                return Some(cand);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_range_rules() {
        let mem = Memory::new(2 << 20).unwrap();
        assert!(check_range(&mem, "x", 0x1000, 0x1000).is_ok());
        assert!(check_range(&mem, "x", 0x10_0000, 0x10_0000).is_ok());
        assert!(matches!(
            check_range(&mem, "x", 0x9f000, 0x1000),
            Err(BootError::Reserved { .. })
        ));
        assert!(matches!(
            check_range(&mem, "x", 0x1f_f000, 0x2000),
            Err(BootError::OutsideRam { .. })
        ));
        assert!(matches!(
            check_range(&mem, "x", u64::MAX, 2),
            Err(BootError::Overflow(_))
        ));
        assert!(matches!(
            check_range(&mem, "x", 0xffff_f000, 0x2000),
            Err(BootError::Overflow(_))
        ));
    }

    #[test]
    fn placer_skips_taken_ranges_and_the_hole() {
        let mem = Memory::new(4 << 20).unwrap();
        let mut p = Placer::new();
        p.take(0x10_0000, 0x10_5001);
        assert_eq!(p.place(&mem, 0x10_0000, 0x1000, 0x1000), Some(0x10_6000));
        assert_eq!(p.place(&mem, 0x10_0000, 0x1000, 0x1000), Some(0x10_7000));
        p.take(0x1000, 0x9_0000);
        // Too big for what is left below 640 KiB: goes above 1 MiB.
        assert_eq!(p.place(&mem, 0x1000, 0x1_0000, 0x1000), Some(0x10_8000));
        assert_eq!(p.place(&mem, 0x1000, 0x100, 4), Some(0x9_0000));
        assert_eq!(p.place(&mem, 0, 8 << 20, 0x1000), None);
    }
}
