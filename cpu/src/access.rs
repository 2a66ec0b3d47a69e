//! Guest memory accesses: segmentation checks, the TLB fast path, and the slow path
//! (page walk, TLB fill, MMIO, page-crossing accesses, code-page invalidation).

use ox86_mmu::paging::{walk, Access, PagingRegs};
use ox86_mmu::tlb::{CodeEntry, TlbEntry, TLB_INVALID, TLB_SLOW};
use ox86_mmu::{PhysAddr, Region, PAGE_MASK};

use crate::exception::{vec, Exception, Fault};
use crate::state::{SEG_READ, SEG_WRITE, SS};
use crate::Exec;

/// A value that fits in a general-purpose register: u8, u16, u32 or u64.
pub trait Word: Copy + Eq + Default + std::fmt::Debug + 'static {
    /// Width in bytes.
    const SIZE: u32;
    /// Truncates a u64.
    fn from_u64(v: u64) -> Self;
    /// Zero-extends to u64.
    fn to_u64(self) -> u64;
    /// Reads from little-endian bytes at a host pointer.
    ///
    /// # Safety
    /// `p` must be valid for reads of `SIZE` bytes.
    unsafe fn load(p: *const u8) -> Self;
    /// Writes little-endian bytes to a host pointer.
    ///
    /// # Safety
    /// `p` must be valid for writes of `SIZE` bytes.
    unsafe fn store(p: *mut u8, v: Self);
}

macro_rules! word {
    ($t:ty) => {
        impl Word for $t {
            const SIZE: u32 = std::mem::size_of::<$t>() as u32;
            #[inline(always)]
            fn from_u64(v: u64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_u64(self) -> u64 {
                self as u64
            }
            #[inline(always)]
            unsafe fn load(p: *const u8) -> Self {
                // SAFETY: the caller guarantees SIZE readable bytes; unaligned is fine.
                <$t>::from_le(unsafe { std::ptr::read_unaligned(p as *const $t) })
            }
            #[inline(always)]
            unsafe fn store(p: *mut u8, v: Self) {
                // SAFETY: the caller guarantees SIZE writable bytes; unaligned is fine.
                unsafe { std::ptr::write_unaligned(p as *mut $t, v.to_le()) }
            }
        }
    };
}
word!(u8);
word!(u16);
word!(u32);
word!(u64);

/// The exception for a segment-limit or rights violation on segment `seg`.
#[inline]
fn seg_fault(seg: usize) -> Exception {
    if seg == SS {
        Exception::ss(0)
    } else {
        Exception::GP0
    }
}

impl Exec<'_> {
    /// Checks an access of `size` bytes at `off` in segment `seg` and returns its
    /// linear address.
    #[inline(always)]
    pub fn seg_linear(&self, seg: usize, off: u64, size: u32, write: bool) -> Fault<u64> {
        let s = &self.s.seg[seg];
        let need = if write { SEG_WRITE } else { SEG_READ };
        let off32 = off as u32;
        let last = off32.wrapping_add(size - 1);
        if s.rights & need == 0 || off32 < s.lo || last > s.hi || last < off32 {
            if !self.s.protected() || self.s.v86() {
                // Real and V86 mode: only the limit matters.
                if off32 >= s.lo && last <= s.hi && last >= off32 {
                    return Ok(s.base.wrapping_add(off) & 0xffff_ffff);
                }
                return Err(seg_fault(seg));
            }
            return Err(seg_fault(seg));
        }
        let lin = s.base.wrapping_add(off32 as u64) & 0xffff_ffff;
        if self.s.cpl == 3
            && lin & (size as u64 - 1) != 0
            && size.is_power_of_two()
            && size <= 8
            && self.alignment_checked()
        {
            return Err(Exception::with_code(vec::AC, 0));
        }
        Ok(lin)
    }

    /// Whether misaligned CPL-3 accesses raise #AC (CR0.AM and EFLAGS.AC).
    #[cold]
    fn alignment_checked(&self) -> bool {
        self.s.cr0 & crate::state::CR0_AM != 0 && self.s.flags & crate::state::AC != 0
    }

    /// Whether accesses are checked as user-mode accesses (CPL 3).
    #[inline(always)]
    pub fn user(&self) -> bool {
        self.s.cpl == 3
    }

    /// Reads a value at a segment offset.
    #[inline(always)]
    pub fn read<W: Word>(&mut self, seg: usize, off: u64) -> Fault<W> {
        let lin = self.seg_linear(seg, off, W::SIZE, false)?;
        self.read_lin(lin, self.user())
    }

    /// Writes a value at a segment offset.
    #[inline(always)]
    pub fn write<W: Word>(&mut self, seg: usize, off: u64, v: W) -> Fault {
        let lin = self.seg_linear(seg, off, W::SIZE, true)?;
        self.write_lin(lin, v, self.user())
    }

    /// Reads a value at a linear address with the given privilege.
    #[inline(always)]
    pub fn read_lin<W: Word>(&mut self, lin: u64, user: bool) -> Fault<W> {
        if let Some(h) = self.tlb.lookup_read(user, lin, W::SIZE as u64) {
            // SAFETY: a read tag matches only entries filled for RAM or ROM pages by
            // `fill`, whose addend maps this page to host memory that lives as long as
            // `Memory`; the access stays inside the page (checked by lookup_read).
            let v = unsafe { W::load(h as *const u8) };
            if self.trace_mem {
                self.trace_access(lin, W::SIZE, false, v.to_u64());
            }
            return Ok(v);
        }
        let mut buf = [0u8; 8];
        self.read_slow(lin, &mut buf[..W::SIZE as usize], user, Access::Read)?;
        let v = u64::from_le_bytes(buf);
        if self.trace_mem {
            self.trace_access(lin, W::SIZE, false, v);
        }
        Ok(W::from_u64(v))
    }

    /// Writes a value at a linear address with the given privilege.
    #[inline(always)]
    pub fn write_lin<W: Word>(&mut self, lin: u64, v: W, user: bool) -> Fault {
        if let Some(h) = self.tlb.lookup_write(user, lin, W::SIZE as u64) {
            // SAFETY: a write tag matches only entries filled for RAM pages that hold no
            // code; the access stays inside the page (checked by lookup_write).
            unsafe { W::store(h as *mut u8, v) };
            if self.trace_mem {
                self.trace_access(lin, W::SIZE, true, v.to_u64());
            }
            return Ok(());
        }
        let bytes = v.to_u64().to_le_bytes();
        self.write_slow(lin, &bytes[..W::SIZE as usize], user)?;
        if self.trace_mem {
            self.trace_access(lin, W::SIZE, true, v.to_u64());
        }
        Ok(())
    }

    /// Records a memory access in the trace (see `crate::trace::MEM`), at the
    /// current instruction.
    #[cold]
    #[inline(never)]
    pub fn trace_access(&mut self, lin: u64, size: u32, write: bool, value: u64) {
        if let Some(t) = self.trace.as_deref_mut() {
            t.mem(self.s.icount, lin, size, write, value);
        }
    }

    /// Records an access of any length in the trace: eight bytes to a record.
    #[cold]
    #[inline(never)]
    fn trace_bytes(&mut self, lin: u64, bytes: &[u8], write: bool) {
        for (k, c) in bytes.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            let at = lin.wrapping_add(8 * k as u64) & 0xffff_ffff;
            self.trace_access(at, c.len() as u32, write, u64::from_le_bytes(w));
        }
    }

    /// The paging registers.
    pub fn paging_regs(&self) -> PagingRegs {
        PagingRegs {
            cr0: self.s.cr0,
            cr3: self.s.cr3,
            cr4: self.s.cr4,
            efer: self.s.efer,
        }
    }

    /// Translates a linear address, filling the TLB. Returns the physical address.
    pub fn translate(&mut self, lin: u64, access: Access, user: bool) -> Fault<u64> {
        let regs = self.paging_regs();
        let t = walk(self.mem, &regs, lin, access, user).map_err(|pf| {
            self.s.cr2 = pf.addr;
            Exception::with_code(vec::PF, pf.error_code)
        })?;
        self.tlb.misses += 1;
        let page = lin & !PAGE_MASK;
        let frame = t.frame.0 & self.mem.a20_mask();
        let region = self.mem.region(PhysAddr(frame));
        let (host, ram, rom) = match region {
            Region::Ram(p) => (p as u64, true, false),
            Region::Rom(p) => (p as u64, false, true),
            Region::Mmio => (0, false, false),
        };
        let fast = ram || rom;
        let tag = |ok: bool, slow: bool| {
            if !ok {
                TLB_INVALID
            } else if slow {
                page | TLB_SLOW
            } else {
                page
            }
        };
        // A fetch fills the code table, a data access the data table (see `tlb`).
        if access == Access::Execute {
            let tag = tag(t.executable, false);
            self.tlb
                .fill_code(user, lin, CodeEntry::new(tag, frame, t.global));
            return Ok(frame | (lin & PAGE_MASK));
        }
        let code = ram && self.mem.is_code_page(PhysAddr(frame));
        let watched = self.page_has_data_breakpoint(page) || self.dbg.watches_page(page);
        // With the undo log kept, a page is mapped for writing only once its first
        // write is seen (see `ox86_mmu::undo`).
        if ram && access == Access::Write {
            self.mem.save_pre_image(frame);
        }
        let writable = t.writable && (!ram || self.mem.write_noted(PhysAddr(frame)));
        self.tlb.fill(
            user,
            lin,
            TlbEntry {
                read: tag(true, !fast || watched),
                write: tag(writable, !ram || code || watched),
                addend: host.wrapping_sub(page),
                frame,
                global: t.global as u64,
                stamp: 0,
            },
        );
        Ok(frame | (lin & PAGE_MASK))
    }

    /// Translates for an access, using the TLB when it holds the page with the right rights.
    #[inline]
    fn phys_for(&mut self, lin: u64, access: Access, user: bool) -> Fault<u64> {
        let page = lin & !PAGE_MASK;
        let frame = if access == Access::Execute {
            let e = self.tlb.code_entry(user, lin);
            (e.tag == page).then_some(e.frame)
        } else {
            self.tlb
                .entry(user, lin, access == Access::Write)
                .map(|e| e.frame)
        };
        if let Some(frame) = frame {
            return Ok(frame | (lin & PAGE_MASK));
        }
        self.translate(lin, access, user)
    }

    /// The slow read path: any size, page-crossing, MMIO.
    pub fn read_slow(&mut self, lin: u64, buf: &mut [u8], user: bool, access: Access) -> Fault {
        let len = buf.len() as u64;
        if access == Access::Read {
            self.note_data_access(lin, len, false);
            self.dbg.note_access(lin, len, false);
        }
        let first = (PAGE_MASK + 1 - (lin & PAGE_MASK)).min(len);
        let p0 = self.phys_for(lin, access, user)?;
        let p1 = if first < len {
            Some(self.phys_for((lin + first) & 0xffff_ffff, access, user)?)
        } else {
            None
        };
        self.read_phys_range(p0, &mut buf[..first as usize]);
        if let Some(p1) = p1 {
            self.read_phys_range(p1, &mut buf[first as usize..]);
        }
        Ok(())
    }

    fn read_phys_range(&mut self, pa: u64, buf: &mut [u8]) {
        match self.mem.region(PhysAddr(pa)) {
            Region::Mmio => {
                self.io.sync(self.s.icount);
                let n = buf.len();
                if matches!(n, 1 | 2 | 4 | 8) {
                    let v = self.io.mmio_read(PhysAddr(pa), n as u8);
                    buf.copy_from_slice(&v.to_le_bytes()[..n]);
                } else {
                    for (i, b) in buf.iter_mut().enumerate() {
                        *b = self.io.mmio_read(PhysAddr(pa + i as u64), 1) as u8;
                    }
                }
            }
            _ => self.mem.read_phys(PhysAddr(pa), buf),
        }
    }

    /// The slow write path: both pages are translated (and may fault) before any byte
    /// is written.
    pub fn write_slow(&mut self, lin: u64, data: &[u8], user: bool) -> Fault {
        let len = data.len() as u64;
        self.note_data_access(lin, len, true);
        self.dbg.note_access(lin, len, true);
        let first = (PAGE_MASK + 1 - (lin & PAGE_MASK)).min(len);
        let p0 = self.phys_for(lin, Access::Write, user)?;
        let p1 = if first < len {
            Some(self.phys_for((lin + first) & 0xffff_ffff, Access::Write, user)?)
        } else {
            None
        };
        self.write_phys_range(p0, &data[..first as usize]);
        if let Some(p1) = p1 {
            self.write_phys_range(p1, &data[first as usize..]);
        }
        Ok(())
    }

    fn write_phys_range(&mut self, pa: u64, data: &[u8]) {
        match self.mem.region(PhysAddr(pa)) {
            Region::Mmio => {
                self.io.sync(self.s.icount);
                let n = data.len();
                if matches!(n, 1 | 2 | 4 | 8) {
                    let mut b = [0u8; 8];
                    b[..n].copy_from_slice(data);
                    self.io
                        .mmio_write(PhysAddr(pa), n as u8, u64::from_le_bytes(b));
                } else {
                    for (i, &b) in data.iter().enumerate() {
                        self.io.mmio_write(PhysAddr(pa + i as u64), 1, b as u64);
                    }
                }
            }
            Region::Rom(_) => {}
            Region::Ram(_) => {
                // write_phys notes code-page writes for invalidation.
                self.mem.write_phys(PhysAddr(pa), data);
            }
        }
    }

    /// Reads `buf.len()` bytes at a segment offset (e.g. descriptors of a far pointer).
    pub fn read_bytes(&mut self, seg: usize, off: u64, buf: &mut [u8]) -> Fault {
        let lin = self.seg_linear(seg, off, buf.len() as u32, false)?;
        let user = self.user();
        self.read_slow(lin, buf, user, Access::Read)?;
        if self.trace_mem {
            self.trace_bytes(lin, buf, false);
        }
        Ok(())
    }

    /// Writes bytes at a segment offset.
    pub fn write_bytes(&mut self, seg: usize, off: u64, data: &[u8]) -> Fault {
        let lin = self.seg_linear(seg, off, data.len() as u32, true)?;
        let user = self.user();
        self.write_slow(lin, data, user)?;
        if self.trace_mem {
            self.trace_bytes(lin, data, true);
        }
        Ok(())
    }

    /// Checks that a write of `size` bytes at a segment offset would succeed, without
    /// writing (used before multi-part updates so that they are all-or-nothing).
    pub fn probe_write(&mut self, seg: usize, off: u64, size: u32) -> Fault {
        let lin = self.seg_linear(seg, off, size, true)?;
        let user = self.user();
        let first = (PAGE_MASK + 1 - (lin & PAGE_MASK)).min(size as u64);
        self.phys_for(lin, Access::Write, user)?;
        if first < size as u64 {
            self.phys_for((lin + first) & 0xffff_ffff, Access::Write, user)?;
        }
        Ok(())
    }

    /// Reads a system structure (descriptor tables, TSS) at a linear address with
    /// supervisor rights.
    pub fn read_sys<W: Word>(&mut self, lin: u64) -> Fault<W> {
        self.read_lin(lin & 0xffff_ffff, false)
    }

    /// Writes a system structure at a linear address with supervisor rights.
    pub fn write_sys<W: Word>(&mut self, lin: u64, v: W) -> Fault {
        self.write_lin(lin & 0xffff_ffff, v, false)
    }
}
