//! ELF executables: validation and loading of `PT_LOAD` segments at their physical
//! addresses. Used by the Multiboot loader and for bare ELF test programs.

use goblin::container::{Container, Ctx, Endian};
use goblin::elf::header::{EM_386, EM_X86_64, ET_EXEC};
use goblin::elf::program_header::{ProgramHeader, PT_LOAD};
use goblin::elf::Elf;
use ox86_mmu::{Memory, PhysAddr};

use crate::entry::EntryState;
use crate::error::BootError;
use crate::layout::{check_range, zero_fill, FOUR_GIB};

/// The ELF magic number.
pub const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

/// Most program headers accepted (real kernels have a handful).
const MAX_PHNUM: u16 = 512;

/// What loading an ELF image produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoadedElf {
    /// Physical entry point.
    pub entry: u32,
    /// The physical ranges `[start, end)` of the loaded segments, bss included.
    pub segments: Vec<(u64, u64)>,
}

fn bad(msg: impl Into<String>) -> BootError {
    BootError::BadElf(msg.into())
}

/// Validates `image` as a little-endian x86 executable ELF (ELF64 only when
/// `allow_64`) and copies its `PT_LOAD` segments to their physical addresses,
/// zeroing the part of each segment beyond its file contents. Nothing is written
/// unless every segment is valid.
pub(crate) fn load_segments(
    mem: &mut Memory,
    image: &[u8],
    allow_64: bool,
) -> Result<LoadedElf, BootError> {
    if image.len() < 4 || &image[..4] != ELF_MAGIC {
        return Err(bad("no ELF magic"));
    }
    let header = Elf::parse_header(image).map_err(|e| bad(format!("header: {e}")))?;
    let container = header.container().map_err(|_| bad("invalid ELF class"))?;
    if header.endianness().ok() != Some(Endian::Little) {
        return Err(bad("not little-endian"));
    }
    let (machine, phentsize) = match container {
        Container::Little => (EM_386, 32),
        Container::Big => (EM_X86_64, 56),
    };
    if container == Container::Big && !allow_64 {
        return Err(BootError::Unsupported(
            "64-bit ELF without a Multiboot header",
        ));
    }
    if header.e_machine != machine {
        return Err(bad(format!("wrong machine {}", header.e_machine)));
    }
    if header.e_type != ET_EXEC {
        return Err(bad(format!("not an executable (e_type {})", header.e_type)));
    }
    if header.e_phentsize != phentsize {
        return Err(bad(format!("bad e_phentsize {}", header.e_phentsize)));
    }
    if header.e_phnum == 0 {
        return Err(bad("no program headers"));
    }
    if header.e_phnum > MAX_PHNUM {
        return Err(bad(format!(
            "too many program headers ({})",
            header.e_phnum
        )));
    }
    let table_len = u64::from(header.e_phnum) * u64::from(phentsize);
    if header
        .e_phoff
        .checked_add(table_len)
        .is_none_or(|end| end > image.len() as u64)
    {
        return Err(bad("program headers beyond the end of the file"));
    }
    let ctx = Ctx::new(container, Endian::Little);
    let phdrs = ProgramHeader::parse(
        image,
        header.e_phoff as usize,
        usize::from(header.e_phnum),
        ctx,
    )
    .map_err(|e| bad(format!("program headers: {e}")))?;

    let loads: Vec<&ProgramHeader> = phdrs
        .iter()
        .filter(|p| p.p_type == PT_LOAD && (p.p_memsz != 0 || p.p_filesz != 0))
        .collect();
    if loads.is_empty() {
        return Err(bad("no loadable segments"));
    }
    for p in &loads {
        if p.p_filesz > p.p_memsz {
            return Err(bad("segment file size exceeds its memory size"));
        }
        if p.p_offset
            .checked_add(p.p_filesz)
            .is_none_or(|end| end > image.len() as u64)
        {
            return Err(bad("segment data beyond the end of the file"));
        }
        check_range(mem, "ELF segment", p.p_paddr, p.p_memsz)?;
    }

    // The entry point is virtual; translate it when it lies in a segment whose
    // virtual and physical addresses differ (higher-half kernels), as GRUB does.
    let e = header.e_entry;
    let entry = loads
        .iter()
        .find(|p| e >= p.p_vaddr && e - p.p_vaddr < p.p_memsz)
        .map(|p| e - p.p_vaddr + p.p_paddr)
        .unwrap_or(e);
    if !loads
        .iter()
        .any(|p| entry >= p.p_paddr && entry - p.p_paddr < p.p_memsz)
    {
        return Err(bad(format!(
            "entry point {e:#x} is outside the loaded segments"
        )));
    }
    if entry >= FOUR_GIB {
        return Err(BootError::Overflow("entry point"));
    }

    let mut segments = Vec::with_capacity(loads.len());
    for p in &loads {
        let off = p.p_offset as usize;
        let data = &image[off..off + p.p_filesz as usize];
        mem.write_phys(PhysAddr(p.p_paddr), data);
        zero_fill(mem, p.p_paddr + p.p_filesz, p.p_memsz - p.p_filesz);
        segments.push((p.p_paddr, p.p_paddr + p.p_memsz));
        tracing::debug!(
            target: "ox86::bios",
            paddr = p.p_paddr,
            filesz = p.p_filesz,
            memsz = p.p_memsz,
            "loaded ELF segment"
        );
    }
    Ok(LoadedElf {
        entry: entry as u32,
        segments,
    })
}

/// Loads a bare (non-Multiboot) ELF32 i386 executable: its `PT_LOAD` segments go to
/// their physical addresses, bss zeroed, and the CPU enters at `e_entry` in flat
/// 32-bit protected mode with all general registers zero (ESP too: the program sets
/// up its own stack).
pub fn load_elf(mem: &mut Memory, image: &[u8]) -> Result<EntryState, BootError> {
    if image.is_empty() {
        return Err(BootError::Empty);
    }
    let loaded = load_segments(mem, image, false)?;
    Ok(EntryState::flat32(loaded.entry))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One program header for [`build_elf32`]: (type, offset, vaddr, paddr, filesz, memsz).
    pub type Phdr = (u32, u32, u32, u32, u32, u32);

    /// Builds a minimal ELF32 i386 executable with the given program headers and
    /// file body (the body starts at file offset 0x100; header offsets are absolute).
    pub fn build_elf32(entry: u32, phdrs: &[Phdr], body: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 0x100];
        f[..4].copy_from_slice(ELF_MAGIC);
        f[4] = 1; // ELFCLASS32
        f[5] = 1; // little-endian
        f[6] = 1; // version
        f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[18..20].copy_from_slice(&3u16.to_le_bytes()); // EM_386
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..28].copy_from_slice(&entry.to_le_bytes());
        f[28..32].copy_from_slice(&52u32.to_le_bytes()); // e_phoff
        f[40..42].copy_from_slice(&52u16.to_le_bytes()); // e_ehsize
        f[42..44].copy_from_slice(&32u16.to_le_bytes()); // e_phentsize
        f[44..46].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for (i, &(ty, off, va, pa, fsz, msz)) in phdrs.iter().enumerate() {
            let o = 52 + 32 * i;
            if f.len() < o + 32 {
                f.resize(o + 32, 0);
            }
            for (j, v) in [ty, off, va, pa, fsz, msz, 7, 0x1000].iter().enumerate() {
                f[o + 4 * j..o + 4 * j + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        assert!(
            f.len() <= 0x100,
            "too many program headers for the test builder"
        );
        f.extend_from_slice(body);
        f
    }

    /// Builds a minimal ELF64 x86-64 executable with one `PT_LOAD` of `body` (file
    /// offset 0x100) at physical `paddr`, virtual `vaddr`.
    pub fn build_elf64(entry: u64, vaddr: u64, paddr: u64, body: &[u8], memsz: u64) -> Vec<u8> {
        let mut f = vec![0u8; 0x100];
        f[..4].copy_from_slice(ELF_MAGIC);
        f[4] = 2; // ELFCLASS64
        f[5] = 1;
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes());
        f[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..32].copy_from_slice(&entry.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        f[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        f[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        f[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = [
            u64::from(PT_LOAD) | (7 << 32),
            0x100,
            vaddr,
            paddr,
            body.len() as u64,
            memsz,
            0x1000,
        ];
        for (j, v) in ph.iter().enumerate() {
            f[64 + 8 * j..72 + 8 * j].copy_from_slice(&v.to_le_bytes());
        }
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn elf64_needs_multiboot() {
        let mut mem = Memory::new(4 << 20).unwrap();
        let img = build_elf64(0x20_0000, 0x20_0000, 0x20_0000, &[0x90; 8], 0x10);
        assert!(matches!(
            load_elf(&mut mem, &img),
            Err(BootError::Unsupported(_))
        ));
        let l = load_segments(&mut mem, &img, true).unwrap();
        assert_eq!(l.entry, 0x20_0000);
        assert_eq!(l.segments, vec![(0x20_0000, 0x20_0010)]);
        assert_eq!(read(&mem, 0x20_0000, 8), vec![0x90; 8]);
        let img = build_elf64(0xffff_8000_0000_0000, 0, 0x20_0000, &[0x90; 8], 0x10);
        assert!(matches!(
            load_segments(&mut mem, &img, true),
            Err(BootError::BadElf(_))
        ));
    }

    fn read(mem: &Memory, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        mem.read_phys(PhysAddr(addr), &mut b);
        b
    }

    #[test]
    fn loads_segments_and_zeroes_bss() {
        let mut mem = Memory::new(4 << 20).unwrap();
        mem.write_phys(PhysAddr(0x20_0010), &[0xaa; 16]); // stale data in the bss
        let body: Vec<u8> = (0..0x20u8).collect();
        let img = build_elf32(
            0x20_0004,
            &[
                (PT_LOAD, 0x100, 0x20_0000, 0x20_0000, 0x10, 0x20),
                (PT_LOAD, 0x110, 0x30_0000, 0x30_0000, 0x10, 0x10),
            ],
            &body,
        );
        let st = load_elf(&mut mem, &img).unwrap();
        assert_eq!(st, EntryState::flat32(0x20_0004));
        assert_eq!(read(&mem, 0x20_0000, 0x10), body[..0x10]);
        assert_eq!(read(&mem, 0x20_0010, 0x10), vec![0; 0x10]);
        assert_eq!(read(&mem, 0x30_0000, 0x10), body[0x10..]);
    }

    #[test]
    fn translates_higher_half_entry() {
        let mut mem = Memory::new(4 << 20).unwrap();
        let img = build_elf32(
            0xc010_0008,
            &[(PT_LOAD, 0x100, 0xc010_0000, 0x10_0000, 0x10, 0x10)],
            &[0x90; 0x10],
        );
        let l = load_segments(&mut mem, &img, false).unwrap();
        assert_eq!(l.entry, 0x10_0008);
        assert_eq!(l.segments, vec![(0x10_0000, 0x10_0010)]);
    }

    #[test]
    fn rejects_bad_images() {
        let mut mem = Memory::new(2 << 20).unwrap();
        let ok = |phdrs: &[Phdr], entry| build_elf32(entry, phdrs, &[0x90; 0x10]);
        let seg = (PT_LOAD, 0x100, 0x10_0000, 0x10_0000, 0x10, 0x10);
        assert!(load_elf(&mut mem, &ok(&[seg], 0x10_0000)).is_ok());
        assert_eq!(load_elf(&mut mem, &[]), Err(BootError::Empty));
        assert!(matches!(
            load_elf(&mut mem, b"\x7fELF"),
            Err(BootError::BadElf(_))
        ));
        // Segment beyond the file.
        let mut s = seg;
        s.4 = 0x1000;
        s.5 = 0x1000;
        assert!(matches!(
            load_elf(&mut mem, &ok(&[s], 0x10_0000)),
            Err(BootError::BadElf(_))
        ));
        // filesz > memsz.
        let mut s = seg;
        s.5 = 8;
        assert!(matches!(
            load_elf(&mut mem, &ok(&[s], 0x10_0000)),
            Err(BootError::BadElf(_))
        ));
        // Outside RAM, in the hole, overflowing.
        let mut s = seg;
        s.3 = 0x30_0000;
        assert!(matches!(
            load_elf(&mut mem, &ok(&[s], 0x10_0000)),
            Err(BootError::OutsideRam { .. })
        ));
        s.3 = 0xb_8000;
        assert!(matches!(
            load_elf(&mut mem, &ok(&[s], 0x10_0000)),
            Err(BootError::Reserved { .. })
        ));
        s.3 = 0xffff_fff8;
        assert!(matches!(
            load_elf(&mut mem, &ok(&[s], 0x10_0000)),
            Err(BootError::Overflow(_))
        ));
        // Entry outside every segment; no PT_LOAD at all.
        assert!(matches!(
            load_elf(&mut mem, &ok(&[seg], 0x5000)),
            Err(BootError::BadElf(_))
        ));
        let mut s = seg;
        s.0 = 4;
        assert!(matches!(
            load_elf(&mut mem, &ok(&[s], 0x10_0000)),
            Err(BootError::BadElf(_))
        ));
        // Huge phnum.
        let mut img = ok(&[seg], 0x10_0000);
        img[44..46].copy_from_slice(&0xffffu16.to_le_bytes());
        assert!(matches!(
            load_elf(&mut mem, &img),
            Err(BootError::BadElf(_))
        ));
        // Wrong machine.
        let mut img = ok(&[seg], 0x10_0000);
        img[18] = 40;
        assert!(matches!(
            load_elf(&mut mem, &img),
            Err(BootError::BadElf(_))
        ));
    }
}
