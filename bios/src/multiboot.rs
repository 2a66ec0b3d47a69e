//! Multiboot (version 0.6.96, "Multiboot 1") kernels: the header search, the ELF
//! and a.out-kludge loaders, boot modules, and the information structure handed
//! to the kernel in EBX.
//!
//! Specification: <https://www.gnu.org/software/grub/manual/multiboot/multiboot.html>

use ox86_mmu::{Memory, PhysAddr, PAGE_SIZE};

use crate::elf::{load_segments, ELF_MAGIC};
use crate::entry::EntryState;
use crate::error::BootError;
use crate::layout::{
    align_up, check_range, zero_fill, Placer, BIOS_ROM_START, HIGH_MEM_START, LOW_MEM_END,
    VGA_START,
};

/// The magic number of the Multiboot header in the kernel image.
pub const HEADER_MAGIC: u32 = 0x1bad_b002;
/// The magic number the loader passes in EAX.
pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// The header must lie, 4-byte aligned, within this many bytes of the image start.
pub const SEARCH_LEN: usize = 8192;
/// The name written to the `boot_loader_name` field.
pub const BOOT_LOADER_NAME: &str = "ox86";

/// Header flag: align modules on 4 KiB pages (always done).
pub const HF_PAGE_ALIGN: u32 = 1 << 0;
/// Header flag: provide `mem_*` and the memory map (always done).
pub const HF_MEMORY_INFO: u32 = 1 << 1;
/// Header flag: the kernel would like a video mode. Only a preference per the
/// specification; ox86 leaves the VGA in text mode and passes no video information.
pub const HF_VIDEO_MODE: u32 = 1 << 2;
/// Header flag: the a.out kludge address fields are valid and override the ELF headers.
pub const HF_AOUT_KLUDGE: u32 = 1 << 16;
/// The required-feature bits (0-15) this loader can satisfy.
const SUPPORTED_REQUIRED: u32 = HF_PAGE_ALIGN | HF_MEMORY_INFO | HF_VIDEO_MODE;

/// Info flag: `mem_lower` and `mem_upper` are valid.
pub const INFO_MEMORY: u32 = 1 << 0;
/// Info flag: `cmdline` is valid.
pub const INFO_CMDLINE: u32 = 1 << 2;
/// Info flag: `mods_count` and `mods_addr` are valid.
pub const INFO_MODS: u32 = 1 << 3;
/// Info flag: `mmap_length` and `mmap_addr` are valid.
pub const INFO_MEM_MAP: u32 = 1 << 6;
/// Info flag: `boot_loader_name` is valid.
pub const INFO_BOOT_LOADER_NAME: u32 = 1 << 9;

/// Size of the information structure up to and including the framebuffer fields.
pub const INFO_SIZE: u64 = 116;
/// Size of one module descriptor.
pub const MODULE_ENTRY_SIZE: u64 = 16;
/// Size of one memory-map entry, its `size` field included.
pub const MMAP_ENTRY_SIZE: u64 = 24;
/// Memory-map type of usable RAM.
pub const MMAP_AVAILABLE: u32 = 1;
/// Memory-map type of reserved memory.
pub const MMAP_RESERVED: u32 = 2;
/// Where the search for room for the information structure starts.
const INFO_SEARCH_START: u64 = 0x9000;

/// A boot module: its contents and its command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Module<'a> {
    /// The module's bytes.
    pub data: &'a [u8],
    /// Its command line (the `string` field).
    pub cmdline: &'a str,
}

/// A Multiboot header found in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Offset of the header in the image.
    pub offset: usize,
    /// The header's `flags` word.
    pub flags: u32,
}

fn le32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Finds a Multiboot header (magic, flags, valid checksum) within the first
/// [`SEARCH_LEN`] bytes of `image`.
pub fn find_header(image: &[u8]) -> Option<Header> {
    let limit = image.len().min(SEARCH_LEN);
    (0..limit.saturating_sub(11)).step_by(4).find_map(|off| {
        let magic = le32(image, off)?;
        let flags = le32(image, off + 4)?;
        let sum = le32(image, off + 8)?;
        (magic == HEADER_MAGIC && magic.wrapping_add(flags).wrapping_add(sum) == 0)
            .then_some(Header { offset: off, flags })
    })
}

/// Loads the kernel through the a.out kludge fields of the header at `hdr`.
/// Returns the physical entry point and the loaded range.
fn load_aout(mem: &mut Memory, image: &[u8], hdr: Header) -> Result<(u32, (u64, u64)), BootError> {
    let field = |i: usize| {
        le32(image, hdr.offset + 12 + 4 * i)
            .map(u64::from)
            .ok_or(BootError::BadMultiboot("a.out kludge fields truncated"))
    };
    let (header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr) =
        (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
    if load_addr > header_addr {
        return Err(BootError::BadMultiboot("load_addr above header_addr"));
    }
    let file_off = (hdr.offset as u64)
        .checked_sub(header_addr - load_addr)
        .ok_or(BootError::BadMultiboot(
            "load_addr before the start of the file",
        ))?;
    let load_len = if load_end_addr == 0 {
        image.len() as u64 - file_off
    } else {
        load_end_addr
            .checked_sub(load_addr)
            .ok_or(BootError::BadMultiboot("load_end_addr below load_addr"))?
    };
    if file_off + load_len > image.len() as u64 {
        return Err(BootError::BadMultiboot(
            "load_end_addr beyond the end of the file",
        ));
    }
    let load_end = load_addr + load_len;
    let end = if bss_end_addr == 0 {
        load_end
    } else if bss_end_addr < load_end {
        return Err(BootError::BadMultiboot("bss_end_addr below load_end_addr"));
    } else {
        bss_end_addr
    };
    check_range(mem, "a.out kernel image", load_addr, end - load_addr)?;
    if entry_addr < load_addr || entry_addr >= end {
        return Err(BootError::BadMultiboot(
            "entry_addr outside the loaded image",
        ));
    }
    let data = &image[file_off as usize..(file_off + load_len) as usize];
    mem.write_phys(PhysAddr(load_addr), data);
    zero_fill(mem, load_end, end - load_end);
    Ok((entry_addr as u32, (load_addr, end)))
}

/// The Multiboot memory map for a PC with `ram_size` bytes of RAM at 0:
/// (base, length, type).
pub fn memory_map(ram_size: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, LOW_MEM_END, MMAP_AVAILABLE),
        (LOW_MEM_END, VGA_START - LOW_MEM_END, MMAP_RESERVED),
        (
            BIOS_ROM_START,
            HIGH_MEM_START - BIOS_ROM_START,
            MMAP_RESERVED,
        ),
    ];
    if ram_size > HIGH_MEM_START {
        map.push((HIGH_MEM_START, ram_size - HIGH_MEM_START, MMAP_AVAILABLE));
    }
    map
}

/// Appends `s` and a NUL to `blob`, returning its physical address given the blob's base.
fn push_str(blob: &mut Vec<u8>, base: u64, s: &str) -> u32 {
    let addr = base + blob.len() as u64;
    blob.extend_from_slice(s.as_bytes());
    blob.push(0);
    addr as u32
}

/// Loads a Multiboot kernel, its modules and the information structure into `mem`.
///
/// The kernel is loaded through the a.out kludge fields when header flag bit 16 is
/// set, else as an ELF (ELF32 i386, or ELF64 x86-64 with a 32-bit entry point).
/// Modules follow the kernel, each on a page boundary. The information structure
/// (memory sizes, memory map, command line, modules, boot loader name) goes in the
/// first free RAM from 0x9000 on. The CPU enters in flat 32-bit protected mode
/// with EAX = [`BOOTLOADER_MAGIC`] and EBX = the information structure's address.
pub fn load_multiboot(
    mem: &mut Memory,
    image: &[u8],
    cmdline: &str,
    modules: &[Module<'_>],
) -> Result<EntryState, BootError> {
    if image.is_empty() {
        return Err(BootError::Empty);
    }
    let hdr = find_header(image).ok_or(BootError::BadMultiboot("no header in the first 8 KiB"))?;
    if hdr.flags & 0xffff & !SUPPORTED_REQUIRED != 0 {
        return Err(BootError::MultibootFlags(hdr.flags));
    }
    if hdr.flags & HF_VIDEO_MODE != 0 {
        tracing::debug!(target: "ox86::bios", "Multiboot video mode request ignored (text mode)");
    }

    let mut placer = Placer::new();
    let entry = if hdr.flags & HF_AOUT_KLUDGE != 0 {
        let (entry, range) = load_aout(mem, image, hdr)?;
        placer.take(range.0, range.1);
        entry
    } else {
        if image.len() < 4 || &image[..4] != ELF_MAGIC {
            return Err(BootError::BadMultiboot(
                "kernel is not ELF and has no a.out kludge (flag bit 16)",
            ));
        }
        let loaded = load_segments(mem, image, true)?;
        for &(s, e) in &loaded.segments {
            placer.take(s, e);
        }
        loaded.entry
    };

    // Modules, page-aligned after the kernel.
    let kernel_end = align_up(placer.highest_end(), PAGE_SIZE).unwrap_or(u64::MAX);
    let mut mods = Vec::with_capacity(modules.len());
    for (index, m) in modules.iter().enumerate() {
        let len = m.data.len() as u64;
        let start = placer
            .place(mem, kernel_end, len, PAGE_SIZE)
            .ok_or(BootError::ModuleTooLarge { index, len })?;
        mem.write_phys(PhysAddr(start), m.data);
        mods.push((start, start + len));
        tracing::debug!(target: "ox86::bios", index, start, len, "loaded Multiboot module");
    }

    // The information structure and everything it points to, as one blob.
    let map = memory_map(mem.ram_size());
    let strings_len: u64 = cmdline.len() as u64
        + BOOT_LOADER_NAME.len() as u64
        + 2
        + modules
            .iter()
            .map(|m| m.cmdline.len() as u64 + 1)
            .sum::<u64>();
    let mods_off = align_up(INFO_SIZE, 8).unwrap_or(INFO_SIZE);
    let mmap_off = mods_off + MODULE_ENTRY_SIZE * modules.len() as u64;
    let strings_off = mmap_off + MMAP_ENTRY_SIZE * map.len() as u64;
    let total = strings_off + strings_len;
    let base = placer
        .place(mem, INFO_SEARCH_START, total, 16)
        .ok_or(BootError::NoRoomForInfo(total))?;

    let mut blob = vec![0u8; strings_off as usize];
    let put = |blob: &mut Vec<u8>, off: u64, v: u32| {
        blob[off as usize..off as usize + 4].copy_from_slice(&v.to_le_bytes());
    };
    let cmdline_addr = push_str(&mut blob, base, cmdline);
    let name_addr = push_str(&mut blob, base, BOOT_LOADER_NAME);
    for (i, (m, &(start, end))) in modules.iter().zip(&mods).enumerate() {
        let s = push_str(&mut blob, base, m.cmdline);
        let o = mods_off + MODULE_ENTRY_SIZE * i as u64;
        put(&mut blob, o, start as u32);
        put(&mut blob, o + 4, end as u32);
        put(&mut blob, o + 8, s);
    }
    for (i, &(b, l, ty)) in map.iter().enumerate() {
        let o = mmap_off + MMAP_ENTRY_SIZE * i as u64;
        put(&mut blob, o, (MMAP_ENTRY_SIZE - 4) as u32);
        blob[o as usize + 4..o as usize + 12].copy_from_slice(&b.to_le_bytes());
        blob[o as usize + 12..o as usize + 20].copy_from_slice(&l.to_le_bytes());
        put(&mut blob, o + 20, ty);
    }
    let flags = INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MEM_MAP | INFO_BOOT_LOADER_NAME;
    put(&mut blob, 0, flags);
    put(&mut blob, 4, (LOW_MEM_END / 1024) as u32);
    put(
        &mut blob,
        8,
        (mem.ram_size().saturating_sub(HIGH_MEM_START) / 1024) as u32,
    );
    put(&mut blob, 16, cmdline_addr);
    put(&mut blob, 20, modules.len() as u32);
    put(&mut blob, 24, (base + mods_off) as u32);
    put(&mut blob, 44, (MMAP_ENTRY_SIZE * map.len() as u64) as u32);
    put(&mut blob, 48, (base + mmap_off) as u32);
    put(&mut blob, 64, name_addr);
    debug_assert_eq!(blob.len() as u64, total);
    mem.write_phys(PhysAddr(base), &blob);
    tracing::debug!(target: "ox86::bios", entry, info = base, "Multiboot kernel loaded");

    Ok(EntryState {
        eax: BOOTLOADER_MAGIC,
        ebx: base as u32,
        ..EntryState::flat32(entry)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::elf::tests::build_elf32;
    use crate::entry::EntryMode;
    use goblin::elf::program_header::PT_LOAD;

    /// A Multiboot header with the given flags (and a.out fields when given).
    pub fn mb_header(flags: u32, aout: Option<[u32; 5]>) -> Vec<u8> {
        let mut h = Vec::new();
        for v in [
            HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(HEADER_MAGIC.wrapping_add(flags)),
        ] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        for v in aout.unwrap_or_default() {
            if aout.is_some() {
                h.extend_from_slice(&v.to_le_bytes());
            }
        }
        h
    }

    /// A Multiboot ELF kernel loaded at 1 MiB, entry at 1 MiB + 0x40.
    pub fn mb_elf_kernel(flags: u32) -> Vec<u8> {
        let mut body = mb_header(flags, None);
        body.resize(0x80, 0x90);
        build_elf32(
            0x10_0040,
            &[(PT_LOAD, 0x100, 0x10_0000, 0x10_0000, 0x80, 0x1800)],
            &body,
        )
    }

    fn r32(mem: &Memory, a: u64) -> u32 {
        mem.read_u32(PhysAddr(a))
    }

    fn cstr(mem: &Memory, a: u64) -> String {
        let mut out = Vec::new();
        let mut b = [0u8];
        for i in 0..4096 {
            mem.read_phys(PhysAddr(a + i), &mut b);
            if b[0] == 0 {
                break;
            }
            out.push(b[0]);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn finds_header_only_with_valid_checksum() {
        let mut img = vec![0u8; 64];
        img[32..44].copy_from_slice(&mb_header(3, None));
        assert_eq!(
            find_header(&img),
            Some(Header {
                offset: 32,
                flags: 3
            })
        );
        img[40] ^= 1;
        assert_eq!(find_header(&img), None);
        // Beyond the first 8 KiB, or misaligned: not found.
        let mut img = vec![0u8; 9000];
        img[8192..8204].copy_from_slice(&mb_header(3, None));
        assert_eq!(find_header(&img), None);
        let mut img = vec![0u8; 64];
        img[34..46].copy_from_slice(&mb_header(3, None));
        assert_eq!(find_header(&img), None);
    }

    #[test]
    fn loads_elf_kernel_with_modules_and_info() {
        let mut mem = Memory::new(16 << 20).unwrap();
        let img = mb_elf_kernel(HF_PAGE_ALIGN | HF_MEMORY_INFO);
        let m0 = vec![0x11u8; 5000];
        let m1 = b"second".to_vec();
        let mods = [
            Module {
                data: &m0,
                cmdline: "initrd.img",
            },
            Module {
                data: &m1,
                cmdline: "two args",
            },
        ];
        let st = load_multiboot(&mut mem, &img, "console=ttyS0 quiet", &mods).unwrap();
        assert_eq!(st.mode, EntryMode::Flat32);
        assert_eq!(st.eip, 0x10_0040);
        assert_eq!(st.eax, BOOTLOADER_MAGIC);
        // Kernel bytes and zeroed bss.
        assert_eq!(r32(&mem, 0x10_0000), HEADER_MAGIC);
        assert_eq!(r32(&mem, 0x10_0040), 0x9090_9090);
        assert_eq!(r32(&mem, 0x10_1000), 0);

        let info = u64::from(st.ebx);
        assert_eq!(info, 0x9000);
        assert_eq!(
            r32(&mem, info),
            INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MEM_MAP | INFO_BOOT_LOADER_NAME
        );
        assert_eq!(r32(&mem, info + 4), 639);
        assert_eq!(r32(&mem, info + 8), 15 * 1024);
        assert_eq!(
            cstr(&mem, r32(&mem, info + 16).into()),
            "console=ttyS0 quiet"
        );
        assert_eq!(cstr(&mem, r32(&mem, info + 64).into()), "ox86");

        // Modules: page-aligned, after the kernel's bss (which ends at 0x101800).
        assert_eq!(r32(&mem, info + 20), 2);
        let mods_addr = u64::from(r32(&mem, info + 24));
        let (s0, e0) = (r32(&mem, mods_addr), r32(&mem, mods_addr + 4));
        let (s1, e1) = (r32(&mem, mods_addr + 16), r32(&mem, mods_addr + 20));
        assert_eq!((s0, e0), (0x10_2000, 0x10_2000 + 5000));
        assert_eq!((s1, e1), (0x10_4000, 0x10_4006));
        assert_eq!(cstr(&mem, r32(&mem, mods_addr + 8).into()), "initrd.img");
        assert_eq!(cstr(&mem, r32(&mem, mods_addr + 24).into()), "two args");
        assert_eq!(r32(&mem, s0.into()), 0x1111_1111);
        assert_eq!(cstr(&mem, s1.into()), "second");

        // Memory map.
        let len = r32(&mem, info + 44);
        let addr = u64::from(r32(&mem, info + 48));
        assert_eq!(len, 4 * 24);
        let mut got = Vec::new();
        let mut p = addr;
        while p < addr + u64::from(len) {
            let size = r32(&mem, p);
            assert_eq!(size, 20);
            got.push((
                mem.read_u64(PhysAddr(p + 4)),
                mem.read_u64(PhysAddr(p + 12)),
                r32(&mem, p + 20),
            ));
            p += u64::from(size) + 4;
        }
        assert_eq!(
            got,
            vec![
                (0, 0x9fc00, 1),
                (0x9fc00, 0x400, 2),
                (0xf0000, 0x10000, 2),
                (0x10_0000, 15 << 20, 1)
            ]
        );
    }

    #[test]
    fn loads_aout_kludge_kernel() {
        let mut mem = Memory::new(4 << 20).unwrap();
        // File: 0x20 bytes of padding, header at 0x20 (phys 0x200020), code after it.
        let load = 0x20_0000u32;
        let mut img = vec![0xccu8; 0x20];
        img.extend(mb_header(
            HF_AOUT_KLUDGE | HF_MEMORY_INFO,
            Some([load + 0x20, load, load + 0x100, load + 0x3000, load + 0x80]),
        ));
        img.resize(0x100, 0xf4);
        img.resize(0x200, 0x55); // beyond load_end_addr: not loaded
        mem.write_phys(PhysAddr(0x20_0100), &[0x77; 16]);
        let st = load_multiboot(
            &mut mem,
            &img,
            "",
            &[Module {
                data: b"m",
                cmdline: "",
            }],
        )
        .unwrap();
        assert_eq!(st.eip, load + 0x80);
        assert_eq!(st.eax, BOOTLOADER_MAGIC);
        assert_eq!(r32(&mem, 0x20_0000), 0xcccc_cccc);
        assert_eq!(r32(&mem, 0x20_0020), HEADER_MAGIC);
        assert_eq!(r32(&mem, 0x20_00fc), 0xf4f4_f4f4);
        assert_eq!(r32(&mem, 0x20_0100), 0, "bss zeroed, file tail not loaded");
        let info = u64::from(st.ebx);
        let mods_addr = u64::from(r32(&mem, info + 24));
        assert_eq!(r32(&mem, mods_addr), 0x20_3000);
        assert_eq!(cstr(&mem, r32(&mem, info + 16).into()), "");
    }

    #[test]
    fn info_moves_when_the_kernel_covers_low_memory() {
        let mut mem = Memory::new(4 << 20).unwrap();
        let load = 0x1000u32;
        let mut img = mb_header(
            HF_AOUT_KLUDGE,
            Some([load, load, load + 0x40, 0x9_fc00, load + 0x20]),
        );
        img.resize(0x40, 0x90);
        let st = load_multiboot(&mut mem, &img, "x", &[]).unwrap();
        assert_eq!(st.ebx, 0x10_0000);
    }

    #[test]
    fn rejects_what_it_cannot_meet() {
        let mut mem = Memory::new(2 << 20).unwrap();
        // Required bit 3 is unknown.
        let img = mb_elf_kernel(HF_MEMORY_INFO | 1 << 3);
        assert_eq!(
            load_multiboot(&mut mem, &img, "", &[]),
            Err(BootError::MultibootFlags(HF_MEMORY_INFO | 1 << 3))
        );
        // Optional bits 17-31 and the video preference are fine.
        let img = mb_elf_kernel(HF_VIDEO_MODE | 1 << 20);
        assert!(load_multiboot(&mut mem, &img, "", &[]).is_ok());
        // A module larger than RAM.
        let img = mb_elf_kernel(0);
        let big = vec![0u8; 2 << 20];
        assert_eq!(
            load_multiboot(
                &mut mem,
                &img,
                "",
                &[Module {
                    data: &big,
                    cmdline: ""
                }]
            ),
            Err(BootError::ModuleTooLarge {
                index: 0,
                len: 2 << 20
            })
        );
        // Not ELF, no kludge.
        let mut img = vec![0u8; 16];
        img.extend(mb_header(0, None));
        assert!(matches!(
            load_multiboot(&mut mem, &img, "", &[]),
            Err(BootError::BadMultiboot(_))
        ));
        // No header at all.
        assert!(matches!(
            load_multiboot(&mut mem, &[0u8; 100], "", &[]),
            Err(BootError::BadMultiboot(_))
        ));
        // a.out kludge with inconsistent addresses.
        let l = 0x10_0000u32;
        for f in [
            [l, l + 4, 0, 0, l],           // load_addr above header_addr
            [l + 64, l, 0, 0, l],          // load_addr before the file start
            [l, l, l + 0x1000, 0, l],      // load_end beyond the file
            [l, l, l + 0x20, l + 0x10, l], // bss_end below load_end
            [l, l, 0, 0, l + 0x10_0000],   // entry outside the image
            [l, l, 0, 0xffff_ffff, l],     // bss beyond RAM
        ] {
            let mut img = mb_header(HF_AOUT_KLUDGE, Some(f));
            img.resize(0x40, 0);
            assert!(load_multiboot(&mut mem, &img, "", &[]).is_err(), "{f:x?}");
        }
        // Truncated kludge fields.
        let img = mb_header(HF_AOUT_KLUDGE, None);
        assert!(matches!(
            load_multiboot(&mut mem, &img, "", &[]),
            Err(BootError::BadMultiboot(_))
        ));
    }
}
