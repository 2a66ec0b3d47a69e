//! The software TLB: per privilege class, a table of linear pages with separate read
//! and write tags and a host addend, in the style of QEMU's softmmu (but with two
//! ways), and a direct-mapped table of its own for instruction fetches. A tag equals the page's
//! linear address when the access may take the fast path; any low bit set forces the
//! slow path. The TLB lists the entries it fills, so that flushes (a CR3 write each)
//! cost what was filled, not the size of the tables.
//!
//! Each data table has a second way. A fill goes to the first way and the second keeps
//! the more recently filled of the two entries there before; look-ups try both, and
//! compiled code swaps the two when the second hits, so that the page in use is found
//! in the first way next time. Two pages of data at the same
//! index (buffers a multiple of 4 MiB apart; the kernel decompressor's input, output
//! and heap) no longer evict each other on every access: with one way each such miss
//! left compiled code, and a loop alternating between two such pages ran five times
//! slower than under QEMU.
//!
//! Code has its own table because compiled code checks the mapping of a region's page
//! each time it chains to it: with one table, a page of code and a page of data at the
//! same index evicted each other on every pass of a loop (seen in a kernel boot, where
//! inflate's code and its window lay 24 MiB apart, and each eviction left compiled
//! code), and the boot took twice as long whenever the allocator put them so.

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
    /// Host pointer minus linear page address (wrapping): host = linear + addend.
    pub addend: u64,
    /// Physical frame of the page, with the A20 mask applied.
    pub frame: u64,
    /// Kept across CR3 writes (a global page under CR4.PGE).
    pub global: u64,
    /// The TLB's count of data fills when this entry was filled (set by
    /// [`Tlb::fill`]): which of a table's two ways to keep is decided by it, not by
    /// where the entries are. The last field (see [`TLB_ENTRY_FIELDS`]).
    pub stamp: u64,
}

/// Bytes of a [`TlbEntry`] its fields take (the rest is padding): what compiled code
/// swaps between a table's two ways. A field added after `stamp` must move this.
pub const TLB_ENTRY_FIELDS: usize = std::mem::offset_of!(TlbEntry, stamp) + 8;
const _: () = assert!(TLB_ENTRY_FIELDS == 6 * 8);

/// log2 of the size of a [`TlbEntry`].
pub const TLB_ENTRY_SHIFT: u32 = 6;
const _: () = assert!(std::mem::size_of::<TlbEntry>() == 1 << TLB_ENTRY_SHIFT);

impl TlbEntry {
    /// The linear page the entry holds (the read tag is valid in every filled entry),
    /// or a value no page has.
    #[inline(always)]
    pub fn page(&self) -> u64 {
        if self.read & TLB_INVALID != 0 {
            u64::MAX
        } else {
            self.read & !PAGE_MASK
        }
    }

    /// An entry that matches nothing.
    pub const EMPTY: TlbEntry = TlbEntry {
        read: TLB_INVALID,
        write: TLB_INVALID,
        addend: 0,
        frame: 0,
        global: 0,
        stamp: 0,
    };
}

/// One cached translation for instruction fetches. 32 bytes (aligned), found by compiled
/// code as a [`TlbEntry`] is.
#[repr(C, align(32))]
#[derive(Debug, Clone, Copy)]
pub struct CodeEntry {
    /// The page's linear address when it may be executed, else [`TLB_INVALID`].
    pub tag: u64,
    /// Physical frame of the page, with the A20 mask applied.
    pub frame: u64,
    /// Kept across CR3 writes (a global page under CR4.PGE).
    pub global: u64,
    _pad: u64,
}

/// log2 of the size of a [`CodeEntry`].
pub const CODE_ENTRY_SHIFT: u32 = 5;
const _: () = assert!(std::mem::size_of::<CodeEntry>() == 1 << CODE_ENTRY_SHIFT);

impl CodeEntry {
    /// An entry that matches nothing.
    pub const EMPTY: CodeEntry = CodeEntry::new(TLB_INVALID, 0, false);

    /// An entry with tag `tag` for `frame`.
    pub const fn new(tag: u64, frame: u64, global: bool) -> CodeEntry {
        CodeEntry {
            tag,
            frame,
            global: global as u64,
            _pad: 0,
        }
    }
}

/// An entry of either kind of table: what flushes need to know of it.
pub trait Slot: Copy {
    /// An entry that matches nothing.
    const EMPTY: Self;
    /// Whether it matches nothing.
    fn is_empty(&self) -> bool;
    /// Whether it is kept across CR3 writes.
    fn is_global(&self) -> bool;
}

impl Slot for TlbEntry {
    const EMPTY: Self = TlbEntry::EMPTY;
    fn is_empty(&self) -> bool {
        self.read & TLB_INVALID != 0 && self.write & TLB_INVALID != 0
    }
    fn is_global(&self) -> bool {
        self.global != 0
    }
}

impl Slot for CodeEntry {
    const EMPTY: Self = CodeEntry::EMPTY;
    fn is_empty(&self) -> bool {
        self.tag & TLB_INVALID != 0
    }
    fn is_global(&self) -> bool {
        self.global != 0
    }
}

/// One direct-mapped table and the entries filled since it was last emptied whole (an
/// index may appear twice), so that a flush empties only those; None when there were
/// too many to list.
#[repr(C)]
pub struct Table<E> {
    /// The entries, written only through [`Tlb`]'s fills and flushes, and by compiled
    /// code, which swaps the entries of a data table's two ways (both filled).
    pub entries: [E; TLB_ENTRIES],
    filled: Option<Vec<u16>>,
}

impl<E: Slot> Table<E> {
    fn new() -> Self {
        Table {
            entries: [E::EMPTY; TLB_ENTRIES],
            filled: Some(Vec::new()),
        }
    }

    /// Caches `e` at index `k`.
    #[inline]
    fn fill(&mut self, k: usize, e: E) {
        let was_empty = self.entries[k].is_empty();
        self.entries[k] = e;
        if was_empty {
            let full = self.filled.as_ref().is_some_and(|f| f.len() >= FILLED_MAX);
            if full {
                self.filled = None;
            } else if let Some(f) = self.filled.as_mut() {
                f.push(k as u16);
            }
        }
    }

    /// Empties the entries that `keep` rejects.
    fn flush(&mut self, keep: impl Fn(&E) -> bool) {
        let table = &mut self.entries;
        match self.filled.take() {
            Some(mut f) => {
                f.retain(|&k| {
                    let e = &mut table[usize::from(k)];
                    if e.is_empty() {
                        false
                    } else if keep(e) {
                        true
                    } else {
                        *e = E::EMPTY;
                        false
                    }
                });
                self.filled = Some(f);
            }
            None => {
                let mut f = Vec::new();
                for (k, e) in table.iter_mut().enumerate() {
                    if e.is_empty() {
                        continue;
                    }
                    if keep(e) {
                        f.push(k as u16);
                    } else {
                        *e = E::EMPTY;
                    }
                }
                self.filled = Some(f);
            }
        }
    }

    /// The filled entries (all of them, when not listed).
    fn each_filled(&mut self, mut f: impl FnMut(&mut E)) {
        match &self.filled {
            Some(list) => list
                .iter()
                .for_each(|&k| f(&mut self.entries[usize::from(k)])),
            None => self.entries.iter_mut().for_each(f),
        }
    }
}

/// Most indices kept per table in [`Tlb`]'s list of filled entries; past it, the next
/// flush empties the whole table.
const FILLED_MAX: usize = 2 * TLB_ENTRIES;
// The list holds entry indices as u16.
const _: () = assert!(TLB_ENTRIES <= 1 << 16);

/// The TLB of one CPU: of each kind, table 0 for supervisor accesses (CPL 0-2), table 1
/// for user.
#[repr(C)]
pub struct Tlb {
    /// Data accesses.
    pub tables: [Table<TlbEntry>; 2],
    /// The second way of each data table: the entries `tables` last replaced.
    pub victims: [Table<TlbEntry>; 2],
    /// Instruction fetches.
    pub code: [Table<CodeEntry>; 2],
    /// Data fills so far (the stamp of the last).
    fills: u64,
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
            tables: [Table::new(), Table::new()],
            victims: [Table::new(), Table::new()],
            code: [Table::new(), Table::new()],
            fills: 0,
            misses: 0,
            flushes: 0,
        }
    }
}

/// Moves the entry at index `k` of a second way into its empty first way, so that the
/// second way holds an entry only where the first does: compiled code swaps the two
/// ways' entries when the second hits (see `ox86_jit`), which keeps the first way's
/// list of filled entries true only if both are filled.
fn promote(main: &mut Table<TlbEntry>, second: &mut [TlbEntry; TLB_ENTRIES], k: usize) {
    let e = second[k];
    if main.entries[k].is_empty() && !e.is_empty() {
        main.fill(k, e);
        second[k] = TlbEntry::EMPTY;
    }
}

/// Bytes from an entry of a data table to the entry of the same index in its second
/// way (compiled code looks there on a miss).
pub const VICTIM_OFFSET: usize =
    std::mem::offset_of!(Tlb, victims) - std::mem::offset_of!(Tlb, tables);

/// Index of the entry for linear address `lin`.
#[inline(always)]
pub fn tlb_index(lin: u64) -> usize {
    ((lin >> 12) as usize) & (TLB_ENTRIES - 1)
}

impl Tlb {
    /// The entry of data table `user` (either way) that holds the page of `lin` for a
    /// write (`write`) or read, also for the slow path only.
    #[inline(always)]
    pub fn entry(&self, user: bool, lin: u64, write: bool) -> Option<&TlbEntry> {
        let (u, k, page) = (user as usize, tlb_index(lin), lin & !PAGE_MASK);
        let holds = |e: &TlbEntry| (if write { e.write } else { e.read }) & !TLB_SLOW == page;
        [&self.tables[u].entries[k], &self.victims[u].entries[k]]
            .into_iter()
            .find(|e| holds(e))
    }

    /// The entry `lin` maps to in code table `user`.
    #[inline(always)]
    pub fn code_entry(&self, user: bool, lin: u64) -> &CodeEntry {
        &self.code[user as usize].entries[tlb_index(lin)]
    }

    /// Caches `e` as the data entry `lin` maps to in table `user`, in the first way.
    /// The second way keeps the more recently filled of the two entries there before
    /// (the other one, if one was for the same page). Compiled code swaps the two ways'
    /// entries and the interpreter does not, so the choice goes by the entries' fill
    /// stamps, not by their ways: the pages the TLB holds, which a guest that changes
    /// its page tables without invalidating can see, are the same with the JIT on or
    /// off.
    #[inline]
    pub fn fill(&mut self, user: bool, lin: u64, mut e: TlbEntry) {
        let (u, k, page) = (user as usize, tlb_index(lin), lin & !PAGE_MASK);
        self.fills += 1;
        e.stamp = self.fills;
        let (w0, w1) = (self.tables[u].entries[k], self.victims[u].entries[k]);
        let keep = if w0.page() == page {
            w1
        } else if w1.page() == page || w0.stamp > w1.stamp {
            w0
        } else {
            w1
        };
        if keep.is_empty() {
            self.victims[u].entries[k] = TlbEntry::EMPTY;
        } else {
            self.victims[u].fill(k, keep);
        }
        self.tables[u].fill(k, e);
    }

    /// Caches `e` as the code entry `lin` maps to in table `user`.
    #[inline]
    pub fn fill_code(&mut self, user: bool, lin: u64, e: CodeEntry) {
        self.code[user as usize].fill(tlb_index(lin), e);
    }

    /// Empties every table, but for global entries when `global`.
    fn flush_tables(&mut self, global: bool) {
        for t in self.tables.iter_mut().chain(&mut self.victims) {
            t.flush(|e| global && e.is_global());
        }
        for t in &mut self.code {
            t.flush(|e| global && e.is_global());
        }
        for (main, second) in self.tables.iter_mut().zip(&mut self.victims) {
            let Table { entries, filled } = second;
            match filled {
                Some(list) => list.iter().for_each(|&k| promote(main, entries, k.into())),
                None => (0..TLB_ENTRIES).for_each(|k| promote(main, entries, k)),
            }
        }
    }

    /// Host address for a read of `size` bytes at `lin`, or None to take the slow path
    /// (miss, MMIO, or an access crossing the page).
    #[inline(always)]
    pub fn lookup_read(&self, user: bool, lin: u64, size: u64) -> Option<u64> {
        self.lookup_data(user, lin, size, false)
    }

    /// Host address for a write, as [`Tlb::lookup_read`].
    #[inline(always)]
    pub fn lookup_write(&self, user: bool, lin: u64, size: u64) -> Option<u64> {
        self.lookup_data(user, lin, size, true)
    }

    #[inline(always)]
    fn lookup_data(&self, user: bool, lin: u64, size: u64, write: bool) -> Option<u64> {
        if (lin & PAGE_MASK) + size > PAGE_MASK + 1 {
            return None;
        }
        let (u, k, page) = (user as usize, tlb_index(lin), lin & !PAGE_MASK);
        let tag = |e: &TlbEntry| if write { e.write } else { e.read };
        let e = &self.tables[u].entries[k];
        if tag(e) == page {
            return Some(lin.wrapping_add(e.addend));
        }
        let e = &self.victims[u].entries[k];
        (tag(e) == page).then(|| lin.wrapping_add(e.addend))
    }

    /// Physical frame for an instruction fetch at `lin`, or None on a miss.
    #[inline(always)]
    pub fn lookup_exec(&self, user: bool, lin: u64) -> Option<u64> {
        let e = self.code_entry(user, lin);
        (e.tag == lin & !PAGE_MASK).then_some(e.frame)
    }

    /// Empties every table.
    pub fn flush_all(&mut self) {
        self.flush_tables(false);
        self.flushes += 1;
    }

    /// Empties every entry that is not global (a CR3 write with CR4.PGE set).
    pub fn flush_nonglobal(&mut self) {
        self.flush_tables(true);
        self.flushes += 1;
    }

    /// Empties the entries for the page holding `lin` (INVLPG). Large pages are cached
    /// as their 4 KiB pieces, so INVLPG of a large page flushes everything.
    pub fn flush_page(&mut self, lin: u64, large: bool) {
        if large {
            self.flush_all();
            return;
        }
        let (k, page) = (tlb_index(lin), lin & !PAGE_MASK);
        for t in self.tables.iter_mut().chain(&mut self.victims) {
            let e = &mut t.entries[k];
            if [e.read, e.write].iter().any(|&t| t & !PAGE_MASK == page) {
                *e = TlbEntry::EMPTY;
            }
        }
        for (main, second) in self.tables.iter_mut().zip(&mut self.victims) {
            promote(main, &mut second.entries, k);
        }
        for t in &mut self.code {
            let e = &mut t.entries[k];
            if e.tag & !PAGE_MASK == page {
                *e = CodeEntry::EMPTY;
            }
        }
    }

    /// Forces writes to physical frame `frame` through the slow path (it now holds code).
    pub fn protect_frame(&mut self, frame: u64) {
        for t in self.tables.iter_mut().chain(&mut self.victims) {
            t.each_filled(|e| {
                if e.frame == frame && e.write & TLB_INVALID == 0 {
                    e.write |= TLB_SLOW;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(lin: u64, host: u64) -> Tlb {
        let mut t = Tlb::default();
        t.fill(false, lin, entry(lin, host, 0x5000, false));
        t.fill_code(false, lin, CodeEntry::new(lin & !PAGE_MASK, 0x5000, false));
        t
    }

    fn entry(lin: u64, host: u64, frame: u64, global: bool) -> TlbEntry {
        let page = lin & !PAGE_MASK;
        TlbEntry {
            read: page,
            write: page,
            addend: host.wrapping_sub(page),
            frame,
            global: global as u64,
            stamp: 0,
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
        assert_eq!(t.lookup_exec(true, 0x1234_5000), None);
    }

    /// A page of code and pages of data at the same index: the code's entry stays
    /// however many data pages come and go.
    #[test]
    fn code_and_data_do_not_evict_each_other() {
        let code = 0xc14a_f000;
        let data = code + (TLB_ENTRIES as u64) * 6 * 0x1000;
        let data2 = data + (TLB_ENTRIES as u64) * 0x1000;
        assert_eq!(tlb_index(code), tlb_index(data));
        assert_eq!(tlb_index(code), tlb_index(data2));
        let mut t = filled(code, 0x7000_0000);
        t.fill(false, data, entry(data, 0x8000_0000, 0x6000, false));
        t.fill(false, data2, entry(data2, 0x9000_0000, 0x7000, false));
        assert_eq!(t.lookup_exec(false, code), Some(0x5000));
        assert_eq!(t.lookup_read(false, data + 8, 4), Some(0x8000_0008));
        assert_eq!(t.lookup_read(false, data2 + 8, 4), Some(0x9000_0008));
        assert_eq!(
            t.lookup_read(false, code, 4),
            None,
            "evicted by the data pages"
        );
    }

    /// Two pages of data at the same index are both kept (the second way); a third
    /// evicts the older; one page never has two entries.
    #[test]
    fn data_pages_at_one_index_share_two_ways() {
        let (a, b, c) = (0x0100_6000, 0x0140_6000, 0x0180_6000);
        assert!(tlb_index(a) == tlb_index(b) && tlb_index(b) == tlb_index(c));
        let mut t = Tlb::default();
        t.fill(false, a, entry(a, 0x10_0000, 0xa000, false));
        t.fill(false, b, entry(b, 0x20_0000, 0xb000, false));
        assert_eq!(t.lookup_read(false, a + 4, 4), Some(0x10_0004));
        assert_eq!(t.lookup_write(false, b + 8, 4), Some(0x20_0008));
        assert_eq!(t.entry(false, a, true).map(|e| e.frame), Some(0xa000));
        // Filled again (new rights, say): still one entry for the page.
        t.fill(false, a, entry(a, 0x30_0000, 0xa000, false));
        assert_eq!(t.lookup_read(false, a, 4), Some(0x30_0000));
        assert_eq!(t.lookup_read(false, b, 4), Some(0x20_0000));
        t.fill(false, c, entry(c, 0x40_0000, 0xc000, false));
        assert_eq!(t.lookup_read(false, c, 4), Some(0x40_0000));
        assert_eq!(t.lookup_read(false, a, 4), Some(0x30_0000));
        assert_eq!(t.lookup_read(false, b, 4), None, "the oldest was evicted");
        t.flush_page(a, false);
        assert_eq!(t.lookup_read(false, a, 4), None);
        assert_eq!(t.lookup_read(false, c, 4), Some(0x40_0000));
    }

    /// Which entries a fill keeps does not depend on which way they are in (compiled
    /// code swaps them, the interpreter does not).
    #[test]
    fn what_a_fill_keeps_does_not_depend_on_swaps() {
        let (a, b, c) = (0x0100_6000, 0x0140_6000, 0x0180_6000);
        let k = tlb_index(a);
        for swap in [false, true] {
            let mut t = Tlb::default();
            t.fill(false, a, entry(a, 0x10_0000, 0xa000, false));
            t.fill(false, b, entry(b, 0x20_0000, 0xb000, false));
            if swap {
                let (w0, w1) = (t.tables[0].entries[k], t.victims[0].entries[k]);
                t.tables[0].entries[k] = w1;
                t.victims[0].entries[k] = w0;
            }
            t.fill(false, c, entry(c, 0x30_0000, 0xc000, false));
            assert_eq!(t.lookup_read(false, a, 4), None, "swap {swap}: A was older");
            assert_eq!(t.lookup_read(false, b, 4), Some(0x20_0000), "swap {swap}");
            assert_eq!(t.lookup_read(false, c, 4), Some(0x30_0000), "swap {swap}");
        }
    }

    /// The second way holds an entry only where the first does (compiled code swaps
    /// the two, which keeps the lists of filled entries true only then): flushes
    /// that empty the first way move the second's entry there.
    #[test]
    fn second_way_is_filled_only_where_the_first_is() {
        let (a, b) = (0x0100_6000, 0x0140_6000);
        let invariant = |t: &Tlb| {
            for (main, second) in t.tables.iter().zip(&t.victims) {
                for k in 0..TLB_ENTRIES {
                    assert!(second.entries[k].is_empty() || !main.entries[k].is_empty());
                }
            }
        };
        let mut t = Tlb::default();
        // A global page in the second way, a non-global one in the first.
        t.fill(false, a, entry(a, 0x10_0000, 0xa000, true));
        t.fill(false, b, entry(b, 0x20_0000, 0xb000, false));
        t.flush_nonglobal();
        invariant(&t);
        assert_eq!(t.tables[0].entries[tlb_index(a)].page(), a);
        assert_eq!(t.lookup_read(false, b, 4), None);
        // INVLPG of the first way's page.
        t.fill(false, b, entry(b, 0x20_0000, 0xb000, false));
        assert_eq!(t.tables[0].entries[tlb_index(b)].page(), b);
        t.flush_page(b, false);
        invariant(&t);
        assert_eq!(t.lookup_read(false, a, 4), Some(0x10_0000));
        assert!(t.victims[0].entries[tlb_index(a)].is_empty());
        // Every fill, flush and INVLPG keeps it, listed or not.
        for k in 0..3 * FILLED_MAX as u64 {
            let lin = ((k * 7919) % 4096) << 12;
            t.fill(k % 2 == 0, lin, entry(lin, 0, lin, k % 3 == 0));
            match k % 97 {
                0 => t.flush_nonglobal(),
                1 => t.flush_page(lin, false),
                2 => t.flush_all(),
                _ => {}
            }
            invariant(&t);
        }
    }

    #[test]
    fn flushes() {
        let mut t = filled(0x1000, 0x9000);
        t.fill(false, 0x2000, entry(0x2000, 0xa000, 0x6000, true));
        t.fill_code(false, 0x2000, CodeEntry::new(0x2000, 0x6000, true));
        t.flush_nonglobal();
        assert!(t.lookup_read(false, 0x1000, 1).is_none());
        assert!(t.lookup_exec(false, 0x1000).is_none());
        assert!(t.lookup_read(false, 0x2000, 1).is_some());
        assert!(t.lookup_exec(false, 0x2000).is_some());
        t.flush_page(0x2fff, false);
        assert!(t.lookup_read(false, 0x2000, 1).is_none());
        assert!(t.lookup_exec(false, 0x2000).is_none());
    }

    /// Flushes empty every filled entry of both kinds, whether the TLB listed them or,
    /// after too many fills, has to look at every entry; global entries survive CR3
    /// writes.
    #[test]
    fn flushes_find_every_filled_entry() {
        for (fills, listed) in [(10usize, true), (3 * FILLED_MAX, false)] {
            let mut t = Tlb::default();
            for k in 0..fills {
                let lin = (k as u64 % (2 * TLB_ENTRIES as u64)) << 12;
                // Some pages global; INVLPG now and then, so that indices repeat.
                let (user, global) = (k % 3 == 0, k % 5 < 2);
                t.fill(user, lin, entry(lin, 0x10_0000, lin, global));
                t.fill_code(user, lin, CodeEntry::new(lin, lin, global));
                if k % 2 == 0 {
                    t.flush_page(lin, false);
                }
            }
            let lists = |t: &Tlb| {
                t.tables.iter().all(|x| x.filled.is_some())
                    && t.victims.iter().all(|x| x.filled.is_some())
                    && t.code.iter().all(|x| x.filled.is_some())
            };
            assert_eq!(lists(&t), listed);
            // (valid, global) entries of both kinds.
            let count = |t: &Tlb, global: bool| {
                let data = t
                    .tables
                    .iter()
                    .chain(&t.victims)
                    .flat_map(|x| x.entries.iter())
                    .filter(|e| !e.is_empty() && (!global || e.is_global()))
                    .count();
                let code = t
                    .code
                    .iter()
                    .flat_map(|x| x.entries.iter())
                    .filter(|e| !e.is_empty() && (!global || e.is_global()))
                    .count();
                (data, code)
            };
            let before = count(&t, true);
            assert!(before.0 > 0 && before.1 > 0);
            t.flush_nonglobal();
            assert_eq!(
                count(&t, true),
                before,
                "{fills} fills: global entries lost"
            );
            assert_eq!(
                count(&t, false),
                before,
                "{fills} fills: a non-global entry survived"
            );
            assert!(lists(&t), "the lists are back");
            t.protect_frame(0);
            t.flush_all();
            assert_eq!(
                count(&t, false),
                (0, 0),
                "{fills} fills: an entry survived a full flush"
            );
        }
    }

    #[test]
    fn protected_frame_writes_go_slow() {
        let mut t = filled(0x1000, 0x9000);
        t.protect_frame(0x5000);
        assert!(t.lookup_write(false, 0x1000, 1).is_none());
        assert!(t.lookup_read(false, 0x1000, 1).is_some());
        assert_eq!(t.lookup_exec(false, 0x1000), Some(0x5000));
    }
}
