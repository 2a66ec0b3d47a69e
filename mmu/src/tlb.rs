//! The software TLB: per privilege class, a direct-mapped table of linear pages with
//! separate read, write and execute tags and a host addend, in the style of QEMU's
//! softmmu. A tag equals the page's linear address when the access may take the fast
//! path; any low bit set forces the slow path.

use crate::addr::PAGE_MASK;

/// Number of entries in each table (a power of two).
pub const TLB_ENTRIES: usize = 256;
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

/// The TLB of one CPU: table 0 for supervisor accesses (CPL 0-2), table 1 for user.
#[repr(C)]
pub struct Tlb {
    /// The two direct-mapped tables.
    pub tables: [[TlbEntry; TLB_ENTRIES]; 2],
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

    /// Mutable access to the entry `lin` maps to.
    #[inline(always)]
    pub fn entry_mut(&mut self, user: bool, lin: u64) -> &mut TlbEntry {
        &mut self.tables[user as usize][tlb_index(lin)]
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
        for t in &mut self.tables {
            t.fill(TlbEntry::EMPTY);
        }
        self.flushes += 1;
    }

    /// Empties every entry that is not global (a CR3 write with CR4.PGE set).
    pub fn flush_nonglobal(&mut self) {
        for t in &mut self.tables {
            for e in t.iter_mut().filter(|e| e.global == 0) {
                *e = TlbEntry::EMPTY;
            }
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
            let e = self.entry_mut(user, lin);
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
        for t in &mut self.tables {
            for e in t
                .iter_mut()
                .filter(|e| e.frame == frame && e.write & TLB_INVALID == 0)
            {
                e.write |= TLB_SLOW;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(lin: u64, host: u64) -> Tlb {
        let mut t = Tlb::default();
        let page = lin & !PAGE_MASK;
        *t.entry_mut(false, lin) = TlbEntry {
            read: page,
            write: page,
            exec: page,
            addend: host.wrapping_sub(page),
            frame: 0x5000,
            global: 0,
        };
        t
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
        t.entry_mut(false, 0x2000).read = 0x2000;
        t.entry_mut(false, 0x2000).global = 1;
        t.flush_nonglobal();
        assert!(t.lookup_read(false, 0x1000, 1).is_none());
        assert!(t.lookup_read(false, 0x2000, 1).is_some());
        t.flush_page(0x2fff, false);
        assert!(t.lookup_read(false, 0x2000, 1).is_none());
    }

    #[test]
    fn protected_frame_writes_go_slow() {
        let mut t = filled(0x1000, 0x9000);
        t.protect_frame(0x5000);
        assert!(t.lookup_write(false, 0x1000, 1).is_none());
        assert!(t.lookup_read(false, 0x1000, 1).is_some());
    }
}
