//! The software TLB: per privilege class, a direct-mapped table of linear pages with
//! separate read, write and execute tags and a host addend, in the style of QEMU's
//! softmmu. A tag equals the page's linear address when the access may take the fast
//! path; any low bit set forces the slow path. The TLB lists the entries it fills, so
//! that flushes (a CR3 write each) cost what was filled, not the size of the tables.

use crate::addr::PAGE_MASK;

/// Number of entries in each table (a power of two).
pub const TLB_ENTRIES: usize = 1024;
/// Tag bit: the entry is empty.
pub const TLB_INVALID: u64 = 1;
/// Tag bit: the access must go through the slow path (MMIO, ROM writes, code pages).
pub const TLB_SLOW: u64 = 2;

/// One cached translation. 64 bytes (aligned), so that compiled code finds an entry
/// with a shift and a mask, and an entry fills one cache line.
#[repr(C, align(64))]
#[derive(Debug, Clone, Copy)]
pub struct TlbEntry {
    /// Tag for data reads.
    pub read: u64,
    /// Tag for data writes.
    pub write: u64,
    /// Tag for instruction fetches.
    pub exec: u64,
    /// Host pointer minus linear page address (wrapping): host = linear + addend.
    pub addend: u64,
    /// Physical frame of the page, with the A20 mask applied.
    pub frame: u64,
    /// Kept across CR3 writes (a global page under CR4.PGE).
    pub global: u64,
}

/// log2 of the size of a [`TlbEntry`].
pub const TLB_ENTRY_SHIFT: u32 = 6;
const _: () = assert!(std::mem::size_of::<TlbEntry>() == 1 << TLB_ENTRY_SHIFT);

impl TlbEntry {
    /// An entry that matches nothing.
    pub const EMPTY: TlbEntry = TlbEntry {
        read: TLB_INVALID,
        write: TLB_INVALID,
        exec: TLB_INVALID,
        addend: 0,
        frame: 0,
        global: 0,
    };
}

/// Most indices kept per table in [`Tlb`]'s list of filled entries; past it, the next
/// flush empties the whole table.
const FILLED_MAX: usize = 2 * TLB_ENTRIES;
// The list holds entry indices as u16.
const _: () = assert!(TLB_ENTRIES <= 1 << 16);

/// The TLB of one CPU: table 0 for supervisor accesses (CPL 0-2), table 1 for user.
#[repr(C)]
pub struct Tlb {
    /// The two direct-mapped tables. Entries are written only through [`Tlb::fill`]
    /// (and emptied by the flushes), which keeps the list of filled entries.
    pub tables: [[TlbEntry; TLB_ENTRIES]; 2],
    /// Per table: the entries filled since it was last emptied whole (an index may
    /// appear twice), so that a flush empties only those; None when there were too
    /// many to list.
    filled: [Option<Vec<u16>>; 2],
    /// Misses (slow-path fills), for statistics.
    pub misses: u64,
    /// Flushes of the whole TLB, for statistics.
    pub flushes: u64,
}

impl std::fmt::Debug for Tlb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tlb")
            .field("misses", &self.misses)
            .field("flushes", &self.flushes)
            .finish()
    }
}

impl Default for Tlb {
    fn default() -> Self {
        Tlb {
            tables: [[TlbEntry::EMPTY; TLB_ENTRIES]; 2],
            filled: [Some(Vec::new()), Some(Vec::new())],
            misses: 0,
            flushes: 0,
        }
    }
}

/// Index of the entry for linear address `lin`.
#[inline(always)]
pub fn tlb_index(lin: u64) -> usize {
    ((lin >> 12) as usize) & (TLB_ENTRIES - 1)
}

impl Tlb {
    /// The entry `lin` maps to in table `user`.
    #[inline(always)]
    pub fn entry(&self, user: bool, lin: u64) -> &TlbEntry {
        &self.tables[user as usize][tlb_index(lin)]
    }

    /// Caches `e` as the entry `lin` maps to in table `user`.
    #[inline]
    pub fn fill(&mut self, user: bool, lin: u64, e: TlbEntry) {
        let (t, k) = (user as usize, tlb_index(lin));
        let was_empty = self.tables[t][k].read & TLB_INVALID != 0;
        self.tables[t][k] = e;
        if was_empty {
            let full = self.filled[t]
                .as_ref()
                .is_some_and(|f| f.len() >= FILLED_MAX);
            if full {
                self.filled[t] = None;
            } else if let Some(f) = self.filled[t].as_mut() {
                f.push(k as u16);
            }
        }
    }

    /// Empties the entries of table `t` that `keep` rejects.
    fn flush_table(&mut self, t: usize, keep: impl Fn(&TlbEntry) -> bool) {
        let table = &mut self.tables[t];
        match self.filled[t].take() {
            Some(mut f) => {
                f.retain(|&k| {
                    let e = &mut table[usize::from(k)];
                    if e.read & TLB_INVALID != 0 {
                        false
                    } else if keep(e) {
                        true
                    } else {
                        *e = TlbEntry::EMPTY;
                        false
                    }
                });
                self.filled[t] = Some(f);
            }
            None => {
                let mut f = Vec::new();
                for (k, e) in table.iter_mut().enumerate() {
                    if e.read & TLB_INVALID != 0 {
                        continue;
                    }
                    if keep(e) {
                        f.push(k as u16);
                    } else {
                        *e = TlbEntry::EMPTY;
                    }
                }
                self.filled[t] = Some(f);
            }
        }
    }

    /// Host address for a read of `size` bytes at `lin`, or None to take the slow path
    /// (miss, MMIO, or an access crossing the page).
    #[inline(always)]
    pub fn lookup_read(&self, user: bool, lin: u64, size: u64) -> Option<u64> {
        let e = self.entry(user, lin);
        let ok = e.read == lin & !PAGE_MASK && (lin & PAGE_MASK) + size <= PAGE_MASK + 1;
        ok.then(|| lin.wrapping_add(e.addend))
    }

    /// Host address for a write, as [`Tlb::lookup_read`].
    #[inline(always)]
    pub fn lookup_write(&self, user: bool, lin: u64, size: u64) -> Option<u64> {
        let e = self.entry(user, lin);
        let ok = e.write == lin & !PAGE_MASK && (lin & PAGE_MASK) + size <= PAGE_MASK + 1;
        ok.then(|| lin.wrapping_add(e.addend))
    }

    /// Physical frame for an instruction fetch at `lin`, or None on a miss.
    #[inline(always)]
    pub fn lookup_exec(&self, user: bool, lin: u64) -> Option<u64> {
        let e = self.entry(user, lin);
        (e.exec == lin & !PAGE_MASK).then_some(e.frame)
    }

    /// Empties both tables.
    pub fn flush_all(&mut self) {
        for t in 0..2 {
            self.flush_table(t, |_| false);
        }
        self.flushes += 1;
    }

    /// Empties every entry that is not global (a CR3 write with CR4.PGE set).
    pub fn flush_nonglobal(&mut self) {
        for t in 0..2 {
            self.flush_table(t, |e| e.global != 0);
        }
        self.flushes += 1;
    }

    /// Empties the entries for the page holding `lin` (INVLPG). Large pages are cached
    /// as their 4 KiB pieces, so INVLPG of a large page flushes everything.
    pub fn flush_page(&mut self, lin: u64, large: bool) {
        if large {
            self.flush_all();
            return;
        }
        for user in [false, true] {
            let e = &mut self.tables[user as usize][tlb_index(lin)];
            let page = lin & !PAGE_MASK;
            if [e.read, e.write, e.exec]
                .iter()
                .any(|&t| t & !PAGE_MASK == page)
            {
                *e = TlbEntry::EMPTY;
            }
        }
    }

    /// Forces writes to physical frame `frame` through the slow path (it now holds code).
    pub fn protect_frame(&mut self, frame: u64) {
        let protect = |e: &mut TlbEntry| {
            if e.frame == frame && e.write & TLB_INVALID == 0 {
                e.write |= TLB_SLOW;
            }
        };
        for (t, filled) in self.tables.iter_mut().zip(&self.filled) {
            match filled {
                Some(f) => f.iter().for_each(|&k| protect(&mut t[usize::from(k)])),
                None => t.iter_mut().for_each(protect),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(lin: u64, host: u64) -> Tlb {
        let mut t = Tlb::default();
        t.fill(false, lin, entry(lin, host, 0x5000, false));
        t
    }

    fn entry(lin: u64, host: u64, frame: u64, global: bool) -> TlbEntry {
        let page = lin & !PAGE_MASK;
        TlbEntry {
            read: page,
            write: page,
            exec: page,
            addend: host.wrapping_sub(page),
            frame,
            global: global as u64,
        }
    }

    #[test]
    fn hit_miss_and_crossing() {
        let t = filled(0x1234_5000, 0x7000_0000);
        assert_eq!(t.lookup_read(false, 0x1234_5010, 4), Some(0x7000_0010));
        assert_eq!(t.lookup_write(false, 0x1234_5ffc, 4), Some(0x7000_0ffc));
        assert_eq!(
            t.lookup_read(false, 0x1234_5ffd, 4),
            None,
            "crossing access goes slow"
        );
        assert_eq!(
            t.lookup_read(true, 0x1234_5010, 4),
            None,
            "user table is separate"
        );
        assert_eq!(t.lookup_read(false, 0x2234_5010, 4), None, "tag mismatch");
        assert_eq!(t.lookup_exec(false, 0x1234_5000), Some(0x5000));
    }

    #[test]
    fn flushes() {
        let mut t = filled(0x1000, 0x9000);
        t.fill(false, 0x2000, entry(0x2000, 0xa000, 0x6000, true));
        t.flush_nonglobal();
        assert!(t.lookup_read(false, 0x1000, 1).is_none());
        assert!(t.lookup_read(false, 0x2000, 1).is_some());
        t.flush_page(0x2fff, false);
        assert!(t.lookup_read(false, 0x2000, 1).is_none());
    }

    /// Flushes empty every filled entry, whether the TLB listed them or, after too
    /// many fills, has to look at every entry; global entries survive CR3 writes.
    #[test]
    fn flushes_find_every_filled_entry() {
        for (fills, listed) in [(10usize, true), (3 * FILLED_MAX, false)] {
            let mut t = Tlb::default();
            for k in 0..fills {
                let lin = (k as u64 % (2 * TLB_ENTRIES as u64)) << 12;
                // Some pages global; INVLPG now and then, so that indices repeat.
                t.fill(k % 3 == 0, lin, entry(lin, 0x10_0000, lin, k % 5 < 2));
                if k % 2 == 0 {
                    t.flush_page(lin, false);
                }
            }
            assert_eq!(t.filled[0].is_some() && t.filled[1].is_some(), listed);
            let globals = |t: &Tlb| {
                t.tables
                    .iter()
                    .flat_map(|tab| tab.iter())
                    .filter(|e| e.read & TLB_INVALID == 0 && e.global != 0)
                    .count()
            };
            let before = globals(&t);
            assert!(before > 0);
            t.flush_nonglobal();
            assert_eq!(globals(&t), before, "{fills} fills: global entries lost");
            for tab in &t.tables {
                for e in tab.iter().filter(|e| e.read & TLB_INVALID == 0) {
                    assert_ne!(e.global, 0, "{fills} fills: a non-global entry survived");
                }
            }
            assert!(t.filled.iter().all(|f| f.is_some()), "the list is back");
            t.protect_frame(0);
            t.flush_all();
            for tab in &t.tables {
                assert!(
                    tab.iter().all(|e| e.read & TLB_INVALID != 0),
                    "{fills} fills: an entry survived a full flush"
                );
            }
        }
    }

    #[test]
    fn protected_frame_writes_go_slow() {
        let mut t = filled(0x1000, 0x9000);
        t.protect_frame(0x5000);
        assert!(t.lookup_write(false, 0x1000, 1).is_none());
        assert!(t.lookup_read(false, 0x1000, 1).is_some());
    }
}
