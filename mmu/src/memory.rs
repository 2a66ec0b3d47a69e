//! Guest physical memory: RAM in an anonymous mapping, ROM regions, MMIO holes,
//! the A20 gate, and the code-page marks used to detect self-modifying code.

use memmap2::{MmapMut, MmapOptions};

use crate::addr::{PhysAddr, PAGE_SIZE};
use crate::error::MemoryError;
use crate::undo::{PreImage, UndoLog};

/// Smallest RAM size accepted (1 MiB).
pub const MIN_RAM: u64 = 1 << 20;
/// Largest RAM size accepted: everything below the PCI hole at 3 GiB.
pub const MAX_RAM: u64 = 3 << 30;

/// A read-only region of physical memory (firmware).
struct Rom {
    base: u64,
    data: Box<[u8]>,
}

/// What lies at a physical address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    /// Guest RAM: a host pointer to the byte at the address, valid to the end of its page.
    Ram(*mut u8),
    /// Read-only memory: a host pointer valid for reads to the end of its page.
    Rom(*const u8),
    /// Memory-mapped I/O (or nothing): accesses go to the [`crate::IoBus`].
    Mmio,
}

/// Guest physical memory.
/// Bytes of a code-tracking chunk: a code page keeps one bit per chunk.
const CHUNK: u64 = 64;

/// The chunk bits of `len` (> 0) bytes at page offset `off` (within the page).
#[inline]
fn chunks(off: u64, len: u64) -> u64 {
    let first = off / CHUNK;
    let last = ((off + len.max(1) - 1) / CHUNK).min(PAGE_SIZE / CHUNK - 1);
    let upto = if last == 63 {
        u64::MAX
    } else {
        (1u64 << (last + 1)) - 1
    };
    upto & !((1u64 << first) - 1)
}

pub struct Memory {
    ram: MmapMut,
    ram_size: u64,
    roms: Vec<Rom>,
    mmio: Vec<(u64, u64)>,
    a20_enabled: bool,
    /// One byte per RAM page: non-zero when decoded or compiled code came from it.
    /// Per RAM page, one bit per 64-byte chunk that holds code.
    code_pages: Vec<u64>,
    /// Writes to code pages since the CPU last drained them: (address, length).
    dirty_code: Vec<(u64, u32)>,
    /// More code writes happened than `dirty_code` holds.
    dirty_overflow: bool,
    /// The undo log of RAM writes, while the debugger's history is kept.
    undo: Option<UndoLog>,
}

/// Most pending code-page writes listed before they are reported as "everything".
const MAX_DIRTY: usize = 1024;

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("ram_size", &self.ram_size)
            .field("roms", &self.roms.len())
            .field("mmio", &self.mmio)
            .field("a20_enabled", &self.a20_enabled)
            .finish()
    }
}

impl Memory {
    /// Creates `ram_size` bytes of zeroed guest RAM at physical address 0.
    ///
    /// The mapping is anonymous, so pages the guest never touches cost no host memory.
    pub fn new(ram_size: u64) -> Result<Memory, MemoryError> {
        if !(MIN_RAM..=MAX_RAM).contains(&ram_size) {
            return Err(MemoryError::BadRamSize(ram_size));
        }
        let ram_size = ram_size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let ram = MmapOptions::new()
            .len(ram_size as usize)
            .map_anon()
            .map_err(|e| MemoryError::Map(e.to_string()))?;
        Ok(Memory {
            ram,
            ram_size,
            roms: Vec::new(),
            mmio: Vec::new(),
            a20_enabled: true,
            code_pages: vec![0; (ram_size / PAGE_SIZE) as usize],
            dirty_code: Vec::new(),
            dirty_overflow: false,
            undo: None,
        })
    }

    /// Size of guest RAM in bytes.
    pub fn ram_size(&self) -> u64 {
        self.ram_size
    }

    /// Maps a ROM image at `base`. ROM overrides RAM where the two overlap.
    pub fn add_rom(&mut self, base: PhysAddr, data: &[u8]) -> Result<(), MemoryError> {
        let len = data.len().div_ceil(PAGE_SIZE as usize) * PAGE_SIZE as usize;
        if !base.0.is_multiple_of(PAGE_SIZE)
            || len == 0
            || base.0.checked_add(len as u64).is_none_or(|e| e > 1 << 32)
        {
            return Err(MemoryError::BadRegion(base.0, len as u64));
        }
        let mut buf = vec![0xffu8; len].into_boxed_slice();
        buf[..data.len()].copy_from_slice(data);
        self.roms.retain(|r| r.base != base.0);
        self.roms.push(Rom {
            base: base.0,
            data: buf,
        });
        Ok(())
    }

    /// Routes `[base, base+len)` to MMIO. MMIO overrides ROM and RAM.
    pub fn add_mmio(&mut self, base: PhysAddr, len: u64) -> Result<(), MemoryError> {
        if !base.0.is_multiple_of(PAGE_SIZE) || len == 0 || !len.is_multiple_of(PAGE_SIZE) {
            return Err(MemoryError::BadRegion(base.0, len));
        }
        self.mmio.push((base.0, len));
        Ok(())
    }

    /// Whether the A20 gate lets address bit 20 through.
    pub fn a20_enabled(&self) -> bool {
        self.a20_enabled
    }

    /// Opens or closes the A20 gate. The CPU must flush its TLB afterwards.
    pub fn set_a20(&mut self, enabled: bool) {
        self.a20_enabled = enabled;
    }

    /// The mask applied to every physical address (clears bit 20 with the gate closed).
    pub fn a20_mask(&self) -> u64 {
        if self.a20_enabled {
            u64::MAX
        } else {
            !(1u64 << 20)
        }
    }

    /// Classifies the page holding `addr` (the A20 mask already applied).
    pub fn region(&self, addr: PhysAddr) -> Region {
        let a = addr.0;
        for &(base, len) in &self.mmio {
            if a >= base && a - base < len {
                return Region::Mmio;
            }
        }
        for rom in &self.roms {
            if a >= rom.base && a - rom.base < rom.data.len() as u64 {
                // SAFETY: the offset is within the ROM's boxed slice, checked just above.
                return Region::Rom(unsafe { rom.data.as_ptr().add((a - rom.base) as usize) });
            }
        }
        if a < self.ram_size {
            // SAFETY: the offset is below ram_size, the length of the mapping.
            return Region::Ram(unsafe { self.ram.as_ptr().cast_mut().add(a as usize) });
        }
        Region::Mmio
    }

    /// Reads guest RAM or ROM bytes; MMIO and unmapped bytes read as 0xff.
    /// For loaders, debuggers and DMA: no device side effects.
    pub fn read_phys(&self, addr: PhysAddr, buf: &mut [u8]) {
        // Regions are page-aligned, so one lookup serves a whole page.
        let mut i = 0usize;
        while i < buf.len() {
            let a = addr.0.wrapping_add(i as u64);
            let n = ((PAGE_SIZE - (a % PAGE_SIZE)) as usize).min(buf.len() - i);
            let src = match self.region(PhysAddr(a)) {
                Region::Ram(p) => p as *const u8,
                Region::Rom(p) => p,
                Region::Mmio => {
                    buf[i..i + n].fill(0xff);
                    i += n;
                    continue;
                }
            };
            // SAFETY: region() returns a pointer valid to the end of its page, and the
            // n bytes stay within that page.
            unsafe { std::ptr::copy_nonoverlapping(src, buf[i..].as_mut_ptr(), n) };
            i += n;
        }
    }

    /// Writes guest RAM (ROM and MMIO bytes are left alone). For loaders and DMA:
    /// code pages written this way are invalidated like any other write.
    pub fn write_phys(&mut self, addr: PhysAddr, data: &[u8]) {
        let mut i = 0usize;
        while i < data.len() {
            let a = addr.0.wrapping_add(i as u64);
            let in_page = (PAGE_SIZE - (a % PAGE_SIZE)) as usize;
            let n = in_page.min(data.len() - i);
            if let Region::Ram(p) = self.region(PhysAddr(a)) {
                self.note_write(a, n as u32);
                self.save_pre_image(a);
                // SAFETY: p points into RAM and the n bytes stay within its page.
                unsafe { std::ptr::copy_nonoverlapping(data[i..].as_ptr(), p, n) };
            }
            i += n;
        }
    }

    /// Starts (or stops) keeping the undo log of RAM writes (see [`crate::undo`]).
    /// The CPU's TLB must be flushed after it starts, so that no page stays
    /// writable through it without a first write being seen.
    pub fn keep_undo_log(&mut self, on: bool) {
        self.undo = on.then(|| UndoLog::new(self.ram_size / PAGE_SIZE));
    }

    /// Whether the TLB may map the RAM page of `addr` for writing without seeing the
    /// write: true unless the undo log is kept and the page has not been written in
    /// this interval.
    #[inline]
    pub fn write_noted(&self, addr: PhysAddr) -> bool {
        self.undo
            .as_ref()
            .is_none_or(|u| u.written(addr.0 / PAGE_SIZE))
    }

    /// Saves the pre-image of the RAM page of `addr` if the undo log is kept and this
    /// is the page's first write of the interval (the CPU calls it as it translates a
    /// write; [`Memory::write_phys`] does on its own).
    #[inline]
    pub fn save_pre_image(&mut self, addr: u64) {
        let pfn = addr / PAGE_SIZE;
        let Some(undo) = self.undo.as_mut() else {
            return;
        };
        if undo.written(pfn) {
            return;
        }
        let start = (pfn * PAGE_SIZE) as usize;
        undo.save(pfn, &self.ram[start..start + PAGE_SIZE as usize]);
    }

    /// Takes the undo log's pre-images and starts a new interval (None when no log is
    /// kept). The CPU's TLB must be flushed after it.
    pub fn take_undo(&mut self) -> Option<Vec<PreImage>> {
        self.undo.as_mut().map(|u| u.take())
    }

    /// Bytes of pre-images the undo log holds now.
    pub fn undo_bytes(&self) -> u64 {
        self.undo.as_ref().map_or(0, |u| u.bytes())
    }

    /// Whether `[addr, addr+len)` lies entirely in RAM.
    pub fn is_ram(&self, addr: PhysAddr, len: u64) -> bool {
        let Some(end) = addr.0.checked_add(len) else {
            return false;
        };
        end <= self.ram_size
            && !self.mmio.iter().any(|&(b, l)| addr.0 < b + l && b < end)
            && !self
                .roms
                .iter()
                .any(|r| addr.0 < r.base + r.data.len() as u64 && r.base < end)
    }

    /// Reads a little-endian u32 from physical memory (page-table walks).
    pub fn read_u32(&self, addr: PhysAddr) -> u32 {
        let mut b = [0u8; 4];
        self.read_phys(addr, &mut b);
        u32::from_le_bytes(b)
    }

    /// Reads a little-endian u64 from physical memory (page-table walks).
    pub fn read_u64(&self, addr: PhysAddr) -> u64 {
        let mut b = [0u8; 8];
        self.read_phys(addr, &mut b);
        u64::from_le_bytes(b)
    }

    /// Writes a little-endian u32 to physical RAM (accessed/dirty bits).
    pub fn write_u32(&mut self, addr: PhysAddr, v: u32) {
        self.write_phys(addr, &v.to_le_bytes());
    }

    /// Writes a little-endian u64 to physical RAM (accessed/dirty bits).
    pub fn write_u64(&mut self, addr: PhysAddr, v: u64) {
        self.write_phys(addr, &v.to_le_bytes());
    }

    /// Marks `[addr, addr+len)` as holding code, in 64-byte chunks: its pages become
    /// code pages, and writes to the marked chunks are reported (see
    /// [`Memory::note_write`]). Returns false when the first byte is not RAM.
    pub fn mark_code(&mut self, addr: PhysAddr, len: u64) -> bool {
        let mut a = addr.0;
        let end = addr.0.saturating_add(len.max(1));
        let mut first = true;
        while a < end {
            let pfn = a / PAGE_SIZE;
            let n = (PAGE_SIZE - a % PAGE_SIZE).min(end - a);
            match self.code_pages.get_mut(pfn as usize) {
                Some(m) => *m |= chunks(a % PAGE_SIZE, n),
                None if first => return false,
                None => {}
            }
            first = false;
            a += n;
        }
        true
    }

    /// Whether the RAM page holding `addr` holds code.
    pub fn is_code_page(&self, addr: PhysAddr) -> bool {
        self.code_pages
            .get((addr.0 / PAGE_SIZE) as usize)
            .is_some_and(|&m| m != 0)
    }

    /// Records a write of `len` bytes at `addr` (within one page): if it touches a
    /// chunk that holds code, the written range is queued for the CPU, which
    /// invalidates the code it overlaps and unmarks the page when no code remains on
    /// it. Returns whether it touched code.
    #[inline]
    pub fn note_write(&mut self, addr: u64, len: u32) -> bool {
        let pfn = addr / PAGE_SIZE;
        let Some(&m) = self.code_pages.get(pfn as usize) else {
            return false;
        };
        if m == 0 || m & chunks(addr % PAGE_SIZE, u64::from(len)) == 0 {
            return false;
        }
        let end = addr + len as u64;
        if let Some(last) = self.dirty_code.last_mut() {
            if last.0 / PAGE_SIZE == pfn {
                let lo = last.0.min(addr);
                let hi = (last.0 + last.1 as u64).max(end);
                *last = (lo, (hi - lo) as u32);
                return true;
            }
        }
        if self.dirty_code.len() >= MAX_DIRTY {
            self.dirty_overflow = true;
        } else {
            self.dirty_code.push((addr, len));
        }
        true
    }

    /// Unmarks a page that no longer holds code.
    pub fn unmark_code_page(&mut self, addr: PhysAddr) {
        if let Some(m) = self.code_pages.get_mut((addr.0 / PAGE_SIZE) as usize) {
            *m = 0;
        }
    }

    /// Whether code pages were written since the last [`Memory::take_dirty_code`].
    #[inline]
    pub fn has_dirty_code(&self) -> bool {
        !self.dirty_code.is_empty() || self.dirty_overflow
    }

    /// Takes the list of writes to code pages: (physical address, length), or None
    /// when there were too many to list and all code must be considered written.
    pub fn take_dirty_code(&mut self) -> Option<Vec<(u64, u32)>> {
        let list = std::mem::take(&mut self.dirty_code);
        if std::mem::take(&mut self.dirty_overflow) {
            None
        } else {
            Some(list)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_sizes() {
        assert!(Memory::new(0).is_err());
        assert!(Memory::new(MIN_RAM - 1).is_err());
        assert!(Memory::new(MAX_RAM + 1).is_err());
        assert!(Memory::new(MIN_RAM).is_ok());
    }

    #[test]
    fn ram_rom_mmio_routing() {
        let mut m = Memory::new(2 << 20).unwrap();
        m.write_phys(PhysAddr(0x1000), &[1, 2, 3]);
        let mut b = [0u8; 3];
        m.read_phys(PhysAddr(0x1000), &mut b);
        assert_eq!(b, [1, 2, 3]);
        m.add_rom(PhysAddr(0xf0000), &[0xaa; 16]).unwrap();
        m.write_phys(PhysAddr(0xf0000), &[0]);
        m.read_phys(PhysAddr(0xf0000), &mut b);
        assert_eq!(b, [0xaa; 3]);
        m.add_mmio(PhysAddr(0xa0000), 0x20000).unwrap();
        assert_eq!(m.region(PhysAddr(0xb8000)), Region::Mmio);
        assert_eq!(m.region(PhysAddr(4 << 20)), Region::Mmio);
        assert!(!m.is_ram(PhysAddr(0xa0000), 1));
        assert!(m.is_ram(PhysAddr(0), 0xa0000));
    }

    #[test]
    fn page_crossing_write_and_a20() {
        let mut m = Memory::new(2 << 20).unwrap();
        m.write_phys(PhysAddr(0xffe), &[1, 2, 3, 4]);
        assert_eq!(m.read_u32(PhysAddr(0xffe)), 0x04030201);
        assert_eq!(m.a20_mask(), u64::MAX);
        m.set_a20(false);
        assert_eq!(0x100000 & m.a20_mask(), 0);
    }

    #[test]
    fn code_page_writes_are_reported_and_merged() {
        let mut m = Memory::new(2 << 20).unwrap();
        assert!(m.mark_code(PhysAddr(0x3000), 0x50));
        assert!(m.is_code_page(PhysAddr(0x3fff)));
        m.write_phys(PhysAddr(0x3010), &[0x90]);
        m.write_phys(PhysAddr(0x3020), &[0x90, 0x90]);
        assert!(m.has_dirty_code());
        assert_eq!(m.take_dirty_code(), Some(vec![(0x3010, 0x12)]));
        assert!(!m.has_dirty_code());
        // Data beside the code (past its last 64-byte chunk) is not code.
        m.write_phys(PhysAddr(0x3080), &[1, 2, 3, 4]);
        assert!(!m.has_dirty_code());
        // A write straddling into the code's chunk is.
        m.write_phys(PhysAddr(0x307e), &[1, 2, 3, 4]);
        assert_eq!(m.take_dirty_code(), Some(vec![(0x307e, 4)]));
        // Code across a page boundary marks both pages.
        assert!(m.mark_code(PhysAddr(0x4ffc), 8));
        assert!(m.is_code_page(PhysAddr(0x5000)));
        m.write_phys(PhysAddr(0x5002), &[0]);
        assert_eq!(m.take_dirty_code(), Some(vec![(0x5002, 1)]));
        m.unmark_code_page(PhysAddr(0x5000));
        m.unmark_code_page(PhysAddr(0x3000));
        m.write_phys(PhysAddr(0x3010), &[0x90]);
        assert!(!m.has_dirty_code());
        m.write_phys(PhysAddr(0x5010), &[0x90]);
        assert!(!m.has_dirty_code());
    }

    #[test]
    fn chunk_bits() {
        assert_eq!(chunks(0, 1), 1);
        assert_eq!(chunks(63, 2), 0b11);
        assert_eq!(chunks(64, 64), 0b10);
        assert_eq!(chunks(0, 4096), u64::MAX);
        assert_eq!(chunks(4095, 1), 1 << 63);
    }
}
