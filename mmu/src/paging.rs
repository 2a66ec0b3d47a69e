//! The page walker: linear to physical translation for every x86 paging mode
//! (32-bit with PSE, PAE, 4-level), with permission checks, accessed/dirty bits and
//! #PF error codes.

use crate::addr::PhysAddr;
use crate::memory::Memory;

/// CR0.PG: paging enabled.
pub const CR0_PG: u64 = 1 << 31;
/// CR0.WP: supervisor writes honour read-only pages.
pub const CR0_WP: u64 = 1 << 16;
/// CR4.PSE: 4 MiB pages in 32-bit paging.
pub const CR4_PSE: u64 = 1 << 4;
/// CR4.PAE: physical address extension.
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.PGE: global pages.
pub const CR4_PGE: u64 = 1 << 7;
/// EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// EFER.NXE: execute-disable bit enable.
pub const EFER_NXE: u64 = 1 << 11;

/// #PF error code: the page was present (a protection violation).
pub const PF_PRESENT: u32 = 1;
/// #PF error code: the access was a write.
pub const PF_WRITE: u32 = 2;
/// #PF error code: the access came from CPL 3.
pub const PF_USER: u32 = 4;
/// #PF error code: a reserved bit was set in a paging-structure entry.
pub const PF_RSVD: u32 = 8;
/// #PF error code: the access was an instruction fetch (with NXE).
pub const PF_FETCH: u32 = 16;

/// Physical address width the walker assumes (reserved bits above it).
pub const MAX_PHYS_BITS: u32 = 36;

const P: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const G: u64 = 1 << 8;
const XD: u64 = 1 << 63;

/// The registers that control paging.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PagingRegs {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// IA32_EFER.
    pub efer: u64,
}

/// The paging mode selected by CR0, CR4 and EFER.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagingMode {
    /// Paging off: linear = physical.
    None,
    /// 32-bit paging (optionally with 4 MiB pages under CR4.PSE).
    Legacy,
    /// PAE paging.
    Pae,
    /// 4-level paging (long mode).
    Level4,
}

impl PagingRegs {
    /// Which paging mode these registers select.
    pub fn mode(&self) -> PagingMode {
        if self.cr0 & CR0_PG == 0 {
            PagingMode::None
        } else if self.cr4 & CR4_PAE == 0 {
            PagingMode::Legacy
        } else if self.efer & EFER_LMA != 0 {
            PagingMode::Level4
        } else {
            PagingMode::Pae
        }
    }
}

/// The kind of access being translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A data read.
    Read,
    /// A data write.
    Write,
    /// An instruction fetch.
    Execute,
}

/// A page fault: CR2 and the error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageFault {
    /// The faulting linear address (CR2).
    pub addr: u64,
    /// The #PF error code.
    pub error_code: u32,
}

/// A successful translation of one 4 KiB linear page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// Physical address of the 4 KiB frame holding the linear address.
    pub frame: PhysAddr,
    /// Writes are allowed at the privilege the walk was made for (and D is set, or
    /// the walk was a write and set it).
    pub writable: bool,
    /// Instruction fetches are allowed.
    pub executable: bool,
    /// The mapping is global (CR4.PGE and G set): kept across CR3 writes.
    pub global: bool,
    /// Size of the page that maps it (4 KiB, 2 MiB, 4 MiB or 1 GiB).
    pub page_size: u64,
}

/// Translates `lin` for an access of kind `access`, made from user mode when `user`
/// (CPL 3, or an implicit supervisor access when false). Sets accessed bits on the
/// entries used and the dirty bit on a write.
pub fn walk(
    mem: &mut Memory,
    regs: &PagingRegs,
    lin: u64,
    access: Access,
    user: bool,
) -> Result<Translation, PageFault> {
    let (t, entries, n) = resolve(mem, regs, lin, access, user)?;
    // Accessed bits on every entry used, dirty on the leaf for writes.
    for (i, &(addr, e, wide)) in entries[..n].iter().enumerate() {
        let mut new = e | A;
        if i == n - 1 && access == Access::Write {
            new |= D;
        }
        if new != e {
            if wide {
                mem.write_u64(PhysAddr(addr), new);
            } else {
                mem.write_u32(PhysAddr(addr), new as u32);
            }
        }
    }
    Ok(t)
}

/// Translates `lin` as [`walk`] does, without setting accessed or dirty bits: what a
/// debugger or a monitor reads through the guest's paging, leaving no trace.
pub fn peek(
    mem: &Memory,
    regs: &PagingRegs,
    lin: u64,
    access: Access,
    user: bool,
) -> Result<Translation, PageFault> {
    resolve(mem, regs, lin, access, user).map(|(t, _, _)| t)
}

/// A translation and the entries of its walk: (physical address, value, 64-bit), and
/// how many.
type Walked = (Translation, [(u64, u64, bool); 4], usize);

/// [`walk`] up to the accessed and dirty bits: the translation and the entries used.
fn resolve(
    mem: &Memory,
    regs: &PagingRegs,
    lin: u64,
    access: Access,
    user: bool,
) -> Result<Walked, PageFault> {
    let mode = regs.mode();
    if mode == PagingMode::None {
        let t = Translation {
            frame: PhysAddr(lin & !0xfff & 0xffff_ffff),
            writable: true,
            executable: true,
            global: false,
            page_size: 4096,
        };
        return Ok((t, [(0, 0, false); 4], 0));
    }
    let nxe = regs.efer & EFER_NXE != 0 && mode != PagingMode::Legacy;
    let a20 = mem.a20_mask();
    let base_err = (if access == Access::Write { PF_WRITE } else { 0 })
        | (if user { PF_USER } else { 0 })
        | (if access == Access::Execute && nxe {
            PF_FETCH
        } else {
            0
        });
    let not_present = PageFault {
        addr: lin,
        error_code: base_err,
    };
    let reserved = PageFault {
        addr: lin,
        error_code: base_err | PF_PRESENT | PF_RSVD,
    };
    let phys_mask: u64 = ((1u64 << MAX_PHYS_BITS) - 1) & !0xfff;
    // Reserved bits of 64-bit entries: above MAXPHYADDR (and XD without NXE).
    let rsvd64: u64 =
        !((1u64 << MAX_PHYS_BITS) - 1) & !XD & !(0x7ffu64 << 52) | if nxe { 0 } else { XD };

    // Collect the entries of the walk: (physical address of the entry, value, is 64-bit).
    let mut entries: [(u64, u64, bool); 4] = [(0, 0, false); 4];
    let mut n = 0usize;
    let (leaf, frame, page_size);
    match mode {
        PagingMode::None => unreachable!("handled above"),
        PagingMode::Legacy => {
            let lin = lin & 0xffff_ffff;
            let pde_addr = ((regs.cr3 & 0xffff_f000) | ((lin >> 22) << 2)) & a20;
            let pde = mem.read_u32(PhysAddr(pde_addr)) as u64;
            if pde & P == 0 {
                return Err(not_present);
            }
            entries[n] = (pde_addr, pde, false);
            n += 1;
            if pde & PS != 0 && regs.cr4 & CR4_PSE != 0 {
                leaf = pde;
                page_size = 4 << 20;
                frame = (pde & 0xffc0_0000) | (lin & 0x003f_f000);
            } else {
                let pte_addr = ((pde & 0xffff_f000) | (((lin >> 12) & 0x3ff) << 2)) & a20;
                let pte = mem.read_u32(PhysAddr(pte_addr)) as u64;
                if pte & P == 0 {
                    return Err(not_present);
                }
                entries[n] = (pte_addr, pte, false);
                n += 1;
                leaf = pte;
                page_size = 4096;
                frame = pte & 0xffff_f000;
            }
        }
        PagingMode::Pae | PagingMode::Level4 => {
            let mut table;
            let mut level;
            if mode == PagingMode::Pae {
                let lin32 = lin & 0xffff_ffff;
                let pdpte_addr = ((regs.cr3 & 0xffff_ffe0) | ((lin32 >> 30) << 3)) & a20;
                let pdpte = mem.read_u64(PhysAddr(pdpte_addr));
                if pdpte & P == 0 {
                    return Err(not_present);
                }
                // PAE PDPTEs have no R/W, U/S or XD bits; 1-2 and 5-8 are reserved.
                if pdpte & (rsvd64 | XD | 0x1e6) != 0 {
                    return Err(reserved);
                }
                table = pdpte & phys_mask;
                level = 2; // next: page directory
            } else {
                table = regs.cr3 & phys_mask;
                level = 4;
            }
            let mut lvl_leaf = None;
            while level >= 1 {
                let shift = 12 + 9 * (level - 1);
                let idx = (lin >> shift) & 0x1ff;
                let e_addr = (table | (idx << 3)) & a20;
                let e = mem.read_u64(PhysAddr(e_addr));
                if e & P == 0 {
                    return Err(not_present);
                }
                let large = (2..=3).contains(&level) && e & PS != 0;
                let mut rsvd = rsvd64;
                if level == 4 {
                    rsvd |= PS;
                }
                if large {
                    // Bits between 12 and the page size's alignment (bit 12 is PAT).
                    rsvd |= ((1u64 << shift) - 1) & !0x1fff;
                }
                if e & rsvd != 0 {
                    return Err(reserved);
                }
                entries[n] = (e_addr, e, true);
                n += 1;
                if large || level == 1 {
                    let size = 1u64 << shift;
                    lvl_leaf = Some((
                        e,
                        size,
                        ((e & phys_mask) & !(size - 1)) | (lin & (size - 1) & !0xfff),
                    ));
                    break;
                }
                table = e & phys_mask;
                level -= 1;
            }
            let Some((e, size, f)) = lvl_leaf else {
                return Err(not_present);
            };
            leaf = e;
            page_size = size;
            frame = f;
        }
    }

    // Effective permissions: the AND of R/W and U/S over all levels, the OR of XD.
    let mut rw = true;
    let mut us = true;
    let mut xd = false;
    for &(_, e, _) in &entries[..n] {
        rw &= e & RW != 0;
        us &= e & US != 0;
        xd |= nxe && e & XD != 0;
    }
    let wp = regs.cr0 & CR0_WP != 0;
    let may_write = if user { rw && us } else { rw || !wp };
    let protection = PageFault {
        addr: lin,
        error_code: base_err | PF_PRESENT,
    };
    if user && !us {
        return Err(protection);
    }
    match access {
        Access::Write if !may_write => return Err(protection),
        Access::Execute if xd => return Err(protection),
        _ => {}
    }

    let dirty = leaf & D != 0 || access == Access::Write;
    let t = Translation {
        frame: PhysAddr(frame & a20),
        writable: may_write && dirty,
        executable: !xd,
        global: leaf & G != 0 && regs.cr4 & CR4_PGE != 0,
        page_size,
    };
    Ok((t, entries, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PD: u64 = 0x10000;
    const PT: u64 = 0x11000;

    fn legacy(mem: &mut Memory, pte_flags: u64, pde_flags: u64) -> PagingRegs {
        mem.write_u32(PhysAddr(PD + 4), (PT | pde_flags) as u32);
        mem.write_u32(PhysAddr(PT + 4 * 5), (0x0020_0000 | pte_flags) as u32);
        PagingRegs {
            cr0: CR0_PG | 1,
            cr3: PD,
            cr4: 0,
            efer: 0,
        }
    }

    // Linear address of page table index 5 in directory slot 1.
    const LIN: u64 = (1 << 22) | (5 << 12) | 0x123;

    #[test]
    fn peek_translates_as_walk_does_and_leaves_no_trace() {
        let mut mem = Memory::new(4 << 20).unwrap();
        let regs = legacy(&mut mem, P | RW, P | RW);
        let before = (
            mem.read_u32(PhysAddr(PD + 4)),
            mem.read_u32(PhysAddr(PT + 20)),
        );
        for access in [Access::Read, Access::Write, Access::Execute] {
            let t = peek(&mem, &regs, LIN, access, false).unwrap();
            assert_eq!(t.frame, PhysAddr(0x0020_0000));
        }
        assert_eq!(
            (
                mem.read_u32(PhysAddr(PD + 4)),
                mem.read_u32(PhysAddr(PT + 20))
            ),
            before,
            "peek set accessed or dirty bits"
        );
        assert_eq!(
            peek(&mem, &regs, LIN, Access::Read, true)
                .unwrap_err()
                .error_code,
            walk(&mut mem, &regs, LIN, Access::Read, true)
                .unwrap_err()
                .error_code
        );
        let t = walk(&mut mem, &regs, LIN, Access::Write, false).unwrap();
        assert_eq!(Ok(t), peek(&mem, &regs, LIN, Access::Write, false));
        assert_ne!(
            mem.read_u32(PhysAddr(PT + 20)),
            before.1,
            "walk sets A and D"
        );
    }

    #[test]
    fn paging_off_is_identity() {
        let mut m = Memory::new(4 << 20).unwrap();
        let t = walk(&mut m, &PagingRegs::default(), 0x12345, Access::Write, true).unwrap();
        assert_eq!(t.frame, PhysAddr(0x12000));
        assert!(t.writable && t.executable);
    }

    #[test]
    fn legacy_4k_translation_sets_accessed_and_dirty() {
        let mut m = Memory::new(4 << 20).unwrap();
        let regs = legacy(&mut m, P | RW | US, P | RW | US);
        let t = walk(&mut m, &regs, LIN, Access::Read, true).unwrap();
        assert_eq!(t.frame, PhysAddr(0x20_0000));
        assert!(!t.writable, "clean page must not be cached writable");
        assert_eq!(m.read_u32(PhysAddr(PT + 20)) as u64 & (A | D), A);
        assert_eq!(m.read_u32(PhysAddr(PD + 4)) as u64 & A, A);
        let t = walk(&mut m, &regs, LIN, Access::Write, true).unwrap();
        assert!(t.writable);
        assert_eq!(m.read_u32(PhysAddr(PT + 20)) as u64 & (A | D), A | D);
        // The directory entry gets no dirty bit.
        assert_eq!(m.read_u32(PhysAddr(PD + 4)) as u64 & D, 0);
    }

    #[test]
    fn legacy_not_present_error_codes() {
        let mut m = Memory::new(4 << 20).unwrap();
        let regs = legacy(&mut m, 0, P | RW | US);
        let e = walk(&mut m, &regs, LIN, Access::Write, true).unwrap_err();
        assert_eq!(
            e,
            PageFault {
                addr: LIN,
                error_code: PF_WRITE | PF_USER
            }
        );
        let e = walk(&mut m, &regs, LIN + (1 << 22), Access::Read, false).unwrap_err();
        assert_eq!(e.error_code, 0);
    }

    #[test]
    fn legacy_protection_and_wp() {
        let mut m = Memory::new(4 << 20).unwrap();
        // Read-only supervisor page.
        let mut regs = legacy(&mut m, P, P | RW);
        let e = walk(&mut m, &regs, LIN, Access::Read, true).unwrap_err();
        assert_eq!(e.error_code, PF_PRESENT | PF_USER);
        // Supervisor write to read-only page: allowed without WP, faults with WP.
        assert!(walk(&mut m, &regs, LIN, Access::Write, false).is_ok());
        regs.cr0 |= CR0_WP;
        let e = walk(&mut m, &regs, LIN, Access::Write, false).unwrap_err();
        assert_eq!(e.error_code, PF_PRESENT | PF_WRITE);
        // User write where the PDE is read-only but the PTE is writable.
        let regs = legacy(&mut m, P | RW | US, P | US);
        let e = walk(&mut m, &regs, LIN, Access::Write, true).unwrap_err();
        assert_eq!(e.error_code, PF_PRESENT | PF_WRITE | PF_USER);
    }

    #[test]
    fn legacy_pse_4m_pages_and_global() {
        let mut m = Memory::new(8 << 20).unwrap();
        m.write_u32(PhysAddr(PD + 4 * 3), (0x0040_0000 | P | RW | PS | G) as u32);
        let mut regs = PagingRegs {
            cr0: CR0_PG | 1,
            cr3: PD,
            cr4: CR4_PSE,
            efer: 0,
        };
        let lin = (3 << 22) | 0x12_3456;
        let t = walk(&mut m, &regs, lin, Access::Read, false).unwrap();
        assert_eq!(t.frame, PhysAddr(0x0040_0000 | 0x12_3000));
        assert_eq!(t.page_size, 4 << 20);
        assert!(!t.global);
        regs.cr4 |= CR4_PGE;
        assert!(
            walk(&mut m, &regs, lin, Access::Read, false)
                .unwrap()
                .global
        );
        // Without CR4.PSE the PS bit is ignored and the entry points to a page table.
        regs.cr4 = 0;
        m.write_u32(PhysAddr(0x0040_0000 + 4 * 0x123), (0x5000 | P) as u32);
        let t = walk(&mut m, &regs, lin, Access::Read, false).unwrap();
        assert_eq!(t.frame, PhysAddr(0x5000));
        assert_eq!(t.page_size, 4096);
    }

    #[test]
    fn pae_translation_nx_and_reserved_bits() {
        let mut m = Memory::new(4 << 20).unwrap();
        let pdpt = 0x1000u64;
        let pd = 0x2000u64;
        let pt = 0x3000u64;
        m.write_u64(PhysAddr(pdpt + 8), pd | P);
        m.write_u64(PhysAddr(pd + 8 * 2), pt | P | RW | US);
        m.write_u64(PhysAddr(pt + 8 * 7), 0x5000 | P | RW | US | XD);
        // A 2 MiB page at PD index 3.
        m.write_u64(PhysAddr(pd + 8 * 3), 0x20_0000 | P | RW | PS);
        let mut regs = PagingRegs {
            cr0: CR0_PG | 1,
            cr3: pdpt,
            cr4: CR4_PAE,
            efer: 0,
        };
        let lin = (1 << 30) | (2 << 21) | (7 << 12) | 0x10;
        // Without NXE, bit 63 is reserved.
        let e = walk(&mut m, &regs, lin, Access::Read, true).unwrap_err();
        assert_eq!(e.error_code, PF_PRESENT | PF_USER | PF_RSVD);
        regs.efer = EFER_NXE;
        let t = walk(&mut m, &regs, lin, Access::Read, true).unwrap();
        assert_eq!(t.frame, PhysAddr(0x5000));
        assert!(!t.executable);
        let e = walk(&mut m, &regs, lin, Access::Execute, true).unwrap_err();
        assert_eq!(e.error_code, PF_PRESENT | PF_USER | PF_FETCH);
        let lin2 = (1 << 30) | (3 << 21) | 0x1_2345;
        let t = walk(&mut m, &regs, lin2, Access::Write, false).unwrap();
        assert_eq!(t.frame, PhysAddr(0x21_2000));
        assert_eq!(t.page_size, 2 << 20);
        let e = walk(&mut m, &regs, lin2, Access::Read, true).unwrap_err();
        assert_eq!(e.error_code, PF_PRESENT | PF_USER);
        // A misaligned 2 MiB frame is a reserved-bit fault.
        m.write_u64(PhysAddr(pd + 8 * 4), 0x20_2000 | P | PS); // bit 13: reserved (bit 12 is PAT)
        let e = walk(&mut m, &regs, (1 << 30) | (4 << 21), Access::Read, false).unwrap_err();
        assert_eq!(e.error_code, PF_PRESENT | PF_RSVD);
    }

    #[test]
    fn four_level_translation() {
        let mut m = Memory::new(4 << 20).unwrap();
        let (pml4, pdpt, pd, pt) = (0x1000u64, 0x2000u64, 0x3000u64, 0x4000u64);
        let lin: u64 = (0x1ffu64 << 39) | (1 << 30) | (2 << 21) | (3 << 12) | 0xabc;
        let lin = lin | 0xffff_0000_0000_0000;
        m.write_u64(PhysAddr(pml4 + 8 * 0x1ff), pdpt | P | RW);
        m.write_u64(PhysAddr(pdpt + 8), pd | P | RW);
        m.write_u64(PhysAddr(pd + 16), pt | P | RW);
        m.write_u64(PhysAddr(pt + 24), 0x7000 | P | RW);
        let regs = PagingRegs {
            cr0: CR0_PG | 1,
            cr3: pml4,
            cr4: CR4_PAE,
            efer: EFER_LME | EFER_LMA,
        };
        assert_eq!(regs.mode(), PagingMode::Level4);
        let t = walk(&mut m, &regs, lin, Access::Write, false).unwrap();
        assert_eq!(t.frame, PhysAddr(0x7000));
        assert!(m.read_u64(PhysAddr(pt + 24)) & D != 0);
        // PS in a PML4E is reserved.
        m.write_u64(PhysAddr(pml4 + 8 * 0x1ff), pdpt | P | RW | PS);
        let e = walk(&mut m, &regs, lin, Access::Read, false).unwrap_err();
        assert_eq!(e.error_code, PF_PRESENT | PF_RSVD);
    }
}
