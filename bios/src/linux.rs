//! The Linux/x86 boot protocol, 32-bit entry, version 2.10 and later: parsing a
//! bzImage's setup header, loading the protected-mode kernel and the initrd, and
//! building the zero page (`struct boot_params`) with the command line and an
//! e820 memory map.
//!
//! Specification: `Documentation/arch/x86/boot.rst` ("32-bit boot protocol") and
//! `arch/x86/include/uapi/asm/bootparam.h` in the Linux sources.
//!
//! Low-memory layout (all of it RAM in the e820 map; Linux copies the zero page
//! and the command line out early and keeps the first 64 KiB reserved anyway):
//!
//! | address | what |
//! |---|---|
//! | below [`BOOT_STACK_TOP`] (0x6000) | a stack for the entry (ESP = 0x6000) |
//! | [`GDT_ADDR`] (0x6000..0x6020) | GDT: null, null, flat code (0x10), flat data (0x18) |
//! | [`BOOT_PARAMS_ADDR`] (0x7000) | the zero page, 4 KiB (ESI at entry) |
//! | [`CMDLINE_ADDR`] (0x20000) | the command line, NUL-terminated, < 64 KiB |
//! | 0x100000 or `pref_address` | the protected-mode kernel |
//! | highest page below min(`initrd_addr_max`, RAM end) | the initrd |
//!
//! The real-mode setup code is not run (nor loaded): the kernel is entered at its
//! 32-bit entry point `code32_start` with the zero page filled in as the setup
//! code would have done on a machine without video.

use ox86_mmu::{Memory, PhysAddr, PAGE_SIZE};

use crate::entry::{EntryState, Gdtr};
use crate::error::BootError;
use crate::layout::{align_up, check_range, FOUR_GIB, HIGH_MEM_START};
use crate::multiboot::memory_map;

/// Offset of the setup header in the image and in the zero page.
pub const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// The zero page's setup header area ends here (`_pad7` follows).
const SETUP_HEADER_AREA_END: usize = 0x290;
/// Offset of the last setup-header field this loader reads (`init_size`) plus its size.
const SETUP_HEADER_MIN_END: usize = 0x264;
/// The `boot_flag` value.
pub const BOOT_FLAG: u16 = 0xaa55;
/// The `header` magic.
pub const HDRS_MAGIC: &[u8; 4] = b"HdrS";
/// The oldest boot protocol accepted: 2.10 has `pref_address` and `init_size`.
pub const MIN_PROTOCOL: u16 = 0x020a;

/// `loadflags` bit: the protected-mode code is loaded at 0x100000 (bzImage).
pub const LOADED_HIGH: u8 = 1 << 0;
/// `loadflags` bit: obsolete, asks the kernel not to reload segment registers.
pub const KEEP_SEGMENTS: u8 = 1 << 6;
/// `loadflags` bit: `heap_end_ptr` is valid.
pub const CAN_USE_HEAP: u8 = 1 << 7;
/// `type_of_loader` for a boot loader without an assigned ID.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `heap_end_ptr`: the end of the setup heap as a real-mode setup at 0x90000
/// would have it (meaningful only to the setup code, which the 32-bit entry skips).
pub const HEAP_END_PTR: u16 = 0xfe00;

/// Where the GDT goes.
pub const GDT_ADDR: u64 = 0x6000;
/// The GDT: null, null, flat 4 GiB ring-0 code (0x10), flat 4 GiB data (0x18),
/// accessed bits set so the CPU never writes it.
pub const GDT: [u64; 4] = [0, 0, 0x00cf_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
/// `__BOOT_CS`.
pub const BOOT_CS: u16 = 0x10;
/// `__BOOT_DS`.
pub const BOOT_DS: u16 = 0x18;
/// ESP at entry (the protocol leaves it undefined; the decompressor sets its own).
pub const BOOT_STACK_TOP: u32 = 0x6000;
/// Where the zero page goes.
pub const BOOT_PARAMS_ADDR: u64 = 0x7000;
/// Size of the zero page.
pub const BOOT_PARAMS_SIZE: usize = 4096;
/// Where the command line goes.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Room for the command line, its NUL included.
pub const CMDLINE_AREA: u64 = 0x1_0000;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;
/// Most e820 entries the zero page holds.
pub const E820_MAX_ENTRIES: usize = 128;

// Zero-page offsets (`struct boot_params`).
const BP_EXT_MEM_K: usize = 0x002;
const BP_ALT_MEM_K: usize = 0x1e0;
const BP_E820_ENTRIES: usize = 0x1e8;
const BP_E820_TABLE: usize = 0x2d0;
const E820_ENTRY_SIZE: usize = 20;
// Setup-header offsets (the same in the image and in the zero page).
const HDR_SETUP_SECTS: usize = 0x1f1;
const HDR_SYSSIZE: usize = 0x1f4;
const HDR_BOOT_FLAG: usize = 0x1fe;
const HDR_JUMP: usize = 0x200;
const HDR_HEADER: usize = 0x202;
const HDR_VERSION: usize = 0x206;
const HDR_KERNEL_VERSION: usize = 0x20e;
const HDR_TYPE_OF_LOADER: usize = 0x210;
const HDR_LOADFLAGS: usize = 0x211;
const HDR_CODE32_START: usize = 0x214;
const HDR_RAMDISK_IMAGE: usize = 0x218;
const HDR_RAMDISK_SIZE: usize = 0x21c;
const HDR_HEAP_END_PTR: usize = 0x224;
const HDR_EXT_LOADER_VER: usize = 0x226;
const HDR_CMD_LINE_PTR: usize = 0x228;
const HDR_INITRD_ADDR_MAX: usize = 0x22c;
const HDR_KERNEL_ALIGNMENT: usize = 0x230;
const HDR_RELOCATABLE: usize = 0x234;
const HDR_XLOADFLAGS: usize = 0x236;
const HDR_CMDLINE_SIZE: usize = 0x238;
const HDR_HARDWARE_SUBARCH: usize = 0x23c;
const HDR_SETUP_DATA: usize = 0x250;
const HDR_PREF_ADDRESS: usize = 0x258;
const HDR_INIT_SIZE: usize = 0x260;

const MIB: u64 = 1 << 20;

fn bad(msg: impl Into<String>) -> BootError {
    BootError::BadBzImage(msg.into())
}

fn rd<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[off..off + N]);
    a
}

fn put(b: &mut [u8], off: usize, v: &[u8]) {
    b[off..off + v.len()].copy_from_slice(v);
}

/// The parts of a bzImage's setup header the loader uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupHeader {
    /// Size of the real-mode setup code in 512-byte sectors (0 already mapped to 4).
    pub setup_sects: u8,
    /// Boot protocol version, e.g. 0x020f.
    pub version: u16,
    /// `loadflags`.
    pub loadflags: u8,
    /// `xloadflags` (64-bit entry, loading above 4 GiB, EFI handover).
    pub xloadflags: u16,
    /// Default 32-bit entry point (0x100000 for a bzImage).
    pub code32_start: u32,
    /// Highest address the initrd may occupy.
    pub initrd_addr_max: u32,
    /// Alignment a relocatable kernel wants.
    pub kernel_alignment: u32,
    /// Whether the kernel may be loaded at any `kernel_alignment`-aligned address.
    pub relocatable: bool,
    /// Longest command line the kernel accepts, NUL excluded.
    pub cmdline_size: u32,
    /// Where the kernel prefers to run (its `LOAD_PHYSICAL_ADDR`).
    pub pref_address: u64,
    /// Bytes of memory from the run address the kernel needs to decompress and start.
    pub init_size: u32,
    /// The kernel's version string (`kernel_version`), when present.
    pub kernel_version: Option<String>,
    /// End offset of the setup header in the image (`0x202` + the jump's byte).
    header_end: usize,
    /// Offset of the protected-mode kernel in the image.
    kernel_offset: usize,
    /// Length of the protected-mode kernel.
    kernel_len: usize,
}

impl SetupHeader {
    /// Parses and checks the setup header of `image`.
    pub fn parse(image: &[u8]) -> Result<SetupHeader, BootError> {
        if image.is_empty() {
            return Err(BootError::Empty);
        }
        if image.len() < SETUP_HEADER_AREA_END {
            return Err(bad(format!(
                "file of {} bytes is shorter than a setup header",
                image.len()
            )));
        }
        if &image[HDR_HEADER..HDR_HEADER + 4] != HDRS_MAGIC {
            return Err(bad("no \"HdrS\" magic at 0x202"));
        }
        let boot_flag = u16::from_le_bytes(rd(image, HDR_BOOT_FLAG));
        if boot_flag != BOOT_FLAG {
            return Err(bad(format!("boot_flag is {boot_flag:#06x}, not 0xaa55")));
        }
        let version = u16::from_le_bytes(rd(image, HDR_VERSION));
        if version < MIN_PROTOCOL {
            return Err(BootError::OldBootProtocol(version));
        }
        let loadflags = image[HDR_LOADFLAGS];
        if loadflags & LOADED_HIGH == 0 {
            return Err(bad("zImage (loadflags.LOADED_HIGH clear) is not supported"));
        }
        let setup_sects = match image[HDR_SETUP_SECTS] {
            0 => 4,
            n => n,
        };
        let kernel_offset = (usize::from(setup_sects) + 1) * 512;
        let header_end = HDR_HEADER + usize::from(image[HDR_JUMP + 1]);
        if !(SETUP_HEADER_MIN_END..=kernel_offset).contains(&header_end) {
            return Err(bad(format!(
                "setup header ends at {header_end:#x} (jump at 0x200), outside \
                 {SETUP_HEADER_MIN_END:#x}..={kernel_offset:#x}"
            )));
        }
        if image.len() <= kernel_offset {
            return Err(bad(format!(
                "truncated: {} bytes, but the setup code alone takes {kernel_offset} \
                 ({setup_sects} sectors + 1)",
                image.len()
            )));
        }
        let avail = image.len() - kernel_offset;
        let syssize = u64::from(u32::from_le_bytes(rd(image, HDR_SYSSIZE))) * 16;
        let kernel_len = if syssize == 0 {
            avail
        } else if syssize > avail as u64 + 15 {
            return Err(bad(format!(
                "truncated: syssize says {syssize} bytes of kernel, the file has {avail}"
            )));
        } else {
            avail.min(syssize as usize)
        };
        let relocatable = image[HDR_RELOCATABLE] != 0;
        let kernel_alignment = u32::from_le_bytes(rd(image, HDR_KERNEL_ALIGNMENT));
        if relocatable && !kernel_alignment.is_power_of_two() {
            return Err(bad(format!(
                "kernel_alignment {kernel_alignment:#x} is not a power of two"
            )));
        }
        let kernel_version = match u16::from_le_bytes(rd(image, HDR_KERNEL_VERSION)) {
            0 => None,
            off => image
                .get(usize::from(off) + 0x200..kernel_offset)
                .and_then(|s| s.split(|&b| b == 0).next())
                .map(|s| String::from_utf8_lossy(&s[..s.len().min(128)]).into_owned()),
        };
        Ok(SetupHeader {
            setup_sects,
            version,
            loadflags,
            xloadflags: u16::from_le_bytes(rd(image, HDR_XLOADFLAGS)),
            code32_start: u32::from_le_bytes(rd(image, HDR_CODE32_START)),
            initrd_addr_max: u32::from_le_bytes(rd(image, HDR_INITRD_ADDR_MAX)),
            kernel_alignment,
            relocatable,
            cmdline_size: u32::from_le_bytes(rd(image, HDR_CMDLINE_SIZE)),
            pref_address: u64::from_le_bytes(rd(image, HDR_PREF_ADDRESS)),
            init_size: u32::from_le_bytes(rd(image, HDR_INIT_SIZE)),
            kernel_version,
            header_end,
            kernel_offset,
            kernel_len,
        })
    }

    /// The protected-mode kernel: the bytes after the setup code.
    pub fn kernel<'a>(&self, image: &'a [u8]) -> &'a [u8] {
        &image[self.kernel_offset..self.kernel_offset + self.kernel_len]
    }

    /// Chooses the load address in RAM of `ram_end` bytes and returns it with the
    /// end of everything the kernel occupies until it runs: the loaded image, and
    /// `init_size` bytes from where the decompressor puts the kernel, which is
    /// `max(load aligned up to kernel_alignment, pref_address)` (it never goes
    /// below its link-time `LOAD_PHYSICAL_ADDR`, which `pref_address` is).
    fn placement(&self, ram_end: u64) -> Result<(u64, u64), BootError> {
        let len = self.kernel_len as u64;
        let init = u64::from(self.init_size);
        let align = if self.relocatable {
            u64::from(self.kernel_alignment)
        } else {
            1
        };
        let pref = self.pref_address;
        let fits = |start: u64, len: u64| start.checked_add(len).is_some_and(|e| e <= ram_end);
        let load = if self.relocatable
            && pref >= HIGH_MEM_START
            && pref.is_multiple_of(align)
            && fits(pref, len.max(init))
        {
            pref
        } else {
            HIGH_MEM_START
        };
        let run = align_up(load, align)
            .ok_or(BootError::Overflow("kernel run address"))?
            .max(pref);
        let end = run
            .checked_add(init)
            .ok_or(BootError::Overflow("kernel init_size"))?
            .max(load + len);
        if end > ram_end {
            return Err(BootError::RamTooSmall {
                needs_mib: end.div_ceil(MIB),
            });
        }
        Ok((load, end))
    }
}

/// Where [`load_linux`] put things.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinuxLayout {
    /// Physical load address of the protected-mode kernel (`code32_start`).
    pub kernel: u64,
    /// End of the kernel's load area and decompression buffer.
    pub kernel_end: u64,
    /// Start and size of the initrd, when one was given.
    pub initrd: Option<(u64, u64)>,
}

/// Finds the initrd's place: page-aligned, as high as possible below
/// `min(initrd_addr_max + 1, ram_end)`, and at or above `floor`.
fn place_initrd(hdr: &SetupHeader, ram_end: u64, floor: u64, len: u64) -> Result<u64, BootError> {
    let too_large = BootError::InitrdTooLarge {
        mib: len.div_ceil(MIB),
    };
    let limit = (u64::from(hdr.initrd_addr_max) + 1).min(ram_end);
    let start = limit.checked_sub(len).ok_or(too_large.clone())? & !(PAGE_SIZE - 1);
    if start < floor.max(HIGH_MEM_START) {
        return Err(too_large);
    }
    Ok(start)
}

/// Builds the zero page for `image` (whose header is `hdr`).
fn boot_params(
    mem: &Memory,
    image: &[u8],
    hdr: &SetupHeader,
    layout: &LinuxLayout,
) -> [u8; BOOT_PARAMS_SIZE] {
    let mut bp = [0u8; BOOT_PARAMS_SIZE];
    let end = hdr.header_end.min(SETUP_HEADER_AREA_END);
    bp[SETUP_HEADER_OFFSET..end].copy_from_slice(&image[SETUP_HEADER_OFFSET..end]);

    // screen_info stays zero apart from ext_mem_k: orig_video_mode, _cols and
    // _lines all 0 make vgacon give up ("no VGA"), orig_video_isVGA 0 is no VESA/EFI fb.
    let ext_k = mem.ram_size().saturating_sub(HIGH_MEM_START) / 1024;
    put(
        &mut bp,
        BP_EXT_MEM_K,
        &(ext_k.min(0xffff) as u16).to_le_bytes(),
    );
    put(
        &mut bp,
        BP_ALT_MEM_K,
        &(ext_k.min(u64::from(u32::MAX)) as u32).to_le_bytes(),
    );

    // The same map as Multiboot's: RAM 0..0x9fc00, reserved EBDA and BIOS ROM,
    // RAM from 1 MiB to the end; types 1 and 2 mean the same in both.
    let map = memory_map(mem.ram_size());
    bp[BP_E820_ENTRIES] = map.len().min(E820_MAX_ENTRIES) as u8;
    for (i, &(base, len, ty)) in map.iter().take(E820_MAX_ENTRIES).enumerate() {
        let o = BP_E820_TABLE + i * E820_ENTRY_SIZE;
        put(&mut bp, o, &base.to_le_bytes());
        put(&mut bp, o + 8, &len.to_le_bytes());
        put(&mut bp, o + 16, &ty.to_le_bytes());
    }

    bp[HDR_TYPE_OF_LOADER] = LOADER_TYPE_UNDEFINED;
    bp[HDR_LOADFLAGS] = (hdr.loadflags & !KEEP_SEGMENTS) | CAN_USE_HEAP;
    put(
        &mut bp,
        HDR_CODE32_START,
        &(layout.kernel as u32).to_le_bytes(),
    );
    let (rd_start, rd_len) = layout.initrd.unwrap_or((0, 0));
    put(&mut bp, HDR_RAMDISK_IMAGE, &(rd_start as u32).to_le_bytes());
    put(&mut bp, HDR_RAMDISK_SIZE, &(rd_len as u32).to_le_bytes());
    put(&mut bp, HDR_HEAP_END_PTR, &HEAP_END_PTR.to_le_bytes());
    put(&mut bp, HDR_EXT_LOADER_VER, &[0, 0]);
    put(
        &mut bp,
        HDR_CMD_LINE_PTR,
        &(CMDLINE_ADDR as u32).to_le_bytes(),
    );
    put(&mut bp, HDR_HARDWARE_SUBARCH, &[0; 12]);
    put(&mut bp, HDR_SETUP_DATA, &[0; 8]);
    bp
}

/// Loads a Linux bzImage with its command line and optional initrd into `mem`
/// and returns the 32-bit entry state: flat protected mode at the kernel's load
/// address, ESI = the zero page, EBX = EBP = EDI = 0, interrupts off, and a GDT
/// with `__BOOT_CS` (0x10) and `__BOOT_DS` (0x18) loaded. See the module
/// documentation for the memory layout.
pub fn load_linux(
    mem: &mut Memory,
    image: &[u8],
    cmdline: &str,
    initrd: Option<&[u8]>,
) -> Result<EntryState, BootError> {
    let (entry, _) = load_linux_layout(mem, image, cmdline, initrd)?;
    Ok(entry)
}

/// [`load_linux`], also returning where the kernel and the initrd went.
pub fn load_linux_layout(
    mem: &mut Memory,
    image: &[u8],
    cmdline: &str,
    initrd: Option<&[u8]>,
) -> Result<(EntryState, LinuxLayout), BootError> {
    let hdr = SetupHeader::parse(image)?;
    let max = (hdr.cmdline_size as usize).min(CMDLINE_AREA as usize - 1);
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    if cmdline.contains('\0') {
        return Err(BootError::CmdlineNul);
    }
    let ram_end = mem.ram_size().min(FOUR_GIB);
    let (load, kernel_end) = hdr.placement(ram_end)?;
    let kernel = hdr.kernel(image);
    check_range(mem, "Linux kernel", load, kernel.len() as u64)?;
    let initrd = match initrd {
        Some(d) if !d.is_empty() => {
            let len = d.len() as u64;
            let start = place_initrd(&hdr, ram_end, kernel_end, len)?;
            check_range(mem, "initrd", start, len)?;
            Some((start, len, d))
        }
        _ => None,
    };
    check_range(mem, "GDT", GDT_ADDR, 8 * GDT.len() as u64)?;
    check_range(
        mem,
        "boot_params",
        BOOT_PARAMS_ADDR,
        BOOT_PARAMS_SIZE as u64,
    )?;
    check_range(mem, "command line", CMDLINE_ADDR, cmdline.len() as u64 + 1)?;

    let layout = LinuxLayout {
        kernel: load,
        kernel_end,
        initrd: initrd.map(|(s, l, _)| (s, l)),
    };
    mem.write_phys(PhysAddr(load), kernel);
    if let Some((start, _, data)) = initrd {
        mem.write_phys(PhysAddr(start), data);
    }
    for (i, d) in GDT.iter().enumerate() {
        mem.write_u64(PhysAddr(GDT_ADDR + 8 * i as u64), *d);
    }
    let mut line = Vec::with_capacity(cmdline.len() + 1);
    line.extend_from_slice(cmdline.as_bytes());
    line.push(0);
    mem.write_phys(PhysAddr(CMDLINE_ADDR), &line);
    let bp = boot_params(mem, image, &hdr, &layout);
    mem.write_phys(PhysAddr(BOOT_PARAMS_ADDR), &bp);

    tracing::info!(
        target: "ox86::bios",
        version = hdr.kernel_version.as_deref().unwrap_or("?"),
        protocol = format_args!("{}.{:02}", hdr.version >> 8, hdr.version & 0xff),
        load = format_args!("{load:#x}"),
        kernel_end = format_args!("{kernel_end:#x}"),
        initrd = ?layout.initrd,
        xloadflags = hdr.xloadflags,
        "Linux bzImage loaded"
    );
    let entry = EntryState {
        esi: BOOT_PARAMS_ADDR as u32,
        esp: BOOT_STACK_TOP,
        gdtr: Some(Gdtr {
            base: GDT_ADDR as u32,
            limit: (8 * GDT.len() - 1) as u16,
        }),
        ..EntryState::flat32(load as u32)
    };
    Ok((entry, layout))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::entry::EntryMode;

    /// The fields of a synthetic bzImage.
    #[derive(Clone)]
    pub struct Bz {
        pub setup_sects: u8,
        pub version: u16,
        pub loadflags: u8,
        pub relocatable: bool,
        pub kernel_alignment: u32,
        pub pref_address: u64,
        pub init_size: u32,
        pub initrd_addr_max: u32,
        pub cmdline_size: u32,
        pub kernel_len: usize,
    }

    impl Default for Bz {
        /// Like Debian 12's 686 kernel, scaled down: relocatable, runs at 1 MiB.
        fn default() -> Bz {
            Bz {
                setup_sects: 4,
                version: 0x020f,
                loadflags: LOADED_HIGH,
                relocatable: true,
                kernel_alignment: 0x20_0000,
                pref_address: 0x100_0000,
                init_size: 0x40_0000,
                initrd_addr_max: 0x37ff_ffff,
                cmdline_size: 2047,
                kernel_len: 0x3000,
            }
        }
    }

    /// Builds a bzImage: setup sectors with the header, then `kernel_len` bytes of
    /// kernel whose every 32-bit word is its offset XOR 0x4b455221.
    pub fn build_bzimage(b: &Bz) -> Vec<u8> {
        let setup = (usize::from(b.setup_sects.max(1)) + 1) * 512;
        let mut img = vec![0u8; setup];
        img[HDR_SETUP_SECTS] = b.setup_sects;
        put(&mut img, 0x1f2, &1u16.to_le_bytes()); // root_flags
        let syssize = b.kernel_len.div_ceil(16) as u32;
        put(&mut img, HDR_SYSSIZE, &syssize.to_le_bytes());
        put(&mut img, 0x1fa, &0xffffu16.to_le_bytes()); // vid_mode
        put(&mut img, HDR_BOOT_FLAG, &BOOT_FLAG.to_le_bytes());
        put(&mut img, HDR_JUMP, &[0xeb, 0x6a]); // header ends at 0x26c
        put(&mut img, HDR_HEADER, HDRS_MAGIC);
        put(&mut img, HDR_VERSION, &b.version.to_le_bytes());
        put(&mut img, HDR_KERNEL_VERSION, &0x100u16.to_le_bytes());
        put(&mut img, 0x300, b"6.1.0-test-686 (ox86@test) #1 SMP\0");
        img[HDR_LOADFLAGS] = b.loadflags;
        put(&mut img, HDR_CODE32_START, &0x10_0000u32.to_le_bytes());
        put(&mut img, HDR_RAMDISK_IMAGE, &0xdead_beefu32.to_le_bytes());
        put(&mut img, HDR_CMD_LINE_PTR, &0xdead_beefu32.to_le_bytes());
        put(
            &mut img,
            HDR_INITRD_ADDR_MAX,
            &b.initrd_addr_max.to_le_bytes(),
        );
        put(
            &mut img,
            HDR_KERNEL_ALIGNMENT,
            &b.kernel_alignment.to_le_bytes(),
        );
        img[HDR_RELOCATABLE] = u8::from(b.relocatable);
        img[0x235] = 12; // min_alignment
        put(&mut img, HDR_XLOADFLAGS, &0u16.to_le_bytes());
        put(&mut img, HDR_CMDLINE_SIZE, &b.cmdline_size.to_le_bytes());
        put(&mut img, 0x248, &0x3b5u32.to_le_bytes()); // payload_offset
        put(&mut img, HDR_PREF_ADDRESS, &b.pref_address.to_le_bytes());
        put(&mut img, HDR_INIT_SIZE, &b.init_size.to_le_bytes());
        put(&mut img, 0x264, &0x44u32.to_le_bytes()); // handover_offset
        put(&mut img, 0x268, &0x1234u32.to_le_bytes()); // kernel_info_offset
        img.extend(
            (0..b.kernel_len / 4).flat_map(|i| ((i as u32 * 4) ^ 0x4b45_5221).to_le_bytes()),
        );
        img.resize(setup + b.kernel_len, 0xcc);
        img
    }

    fn r8(mem: &Memory, a: u64) -> u8 {
        let mut b = [0u8];
        mem.read_phys(PhysAddr(a), &mut b);
        b[0]
    }
    fn r16(mem: &Memory, a: u64) -> u16 {
        u16::from(r8(mem, a)) | u16::from(r8(mem, a + 1)) << 8
    }
    fn r32(mem: &Memory, a: u64) -> u32 {
        mem.read_u32(PhysAddr(a))
    }
    fn bp(off: usize) -> u64 {
        BOOT_PARAMS_ADDR + off as u64
    }
    fn read(mem: &Memory, a: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_phys(PhysAddr(a), &mut v);
        v
    }

    #[test]
    fn loads_kernel_initrd_cmdline_and_zero_page() {
        let mut mem = Memory::new(64 << 20).unwrap();
        let b = Bz::default();
        let img = build_bzimage(&b);
        let initrd: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let cmdline = "console=ttyS0 ox86test=smoke";
        let (st, layout) = load_linux_layout(&mut mem, &img, cmdline, Some(&initrd)).unwrap();

        // Entry: 32-bit protocol registers and the GDT.
        assert_eq!(st.mode, EntryMode::Flat32);
        assert_eq!(st.eip, 0x100_0000, "relocatable: loaded at pref_address");
        assert_eq!(st.esi, 0x7000);
        assert_eq!((st.ebx, st.ebp, st.edi, st.eax), (0, 0, 0, 0));
        assert_eq!(st.esp, BOOT_STACK_TOP);
        assert_eq!(
            st.gdtr,
            Some(Gdtr {
                base: 0x6000,
                limit: 31
            })
        );
        let gdt2 = mem.read_u64(PhysAddr(0x6000 + u64::from(BOOT_CS)));
        let gdt3 = mem.read_u64(PhysAddr(0x6000 + u64::from(BOOT_DS)));
        // Base 0, limit 0xfffff pages, present ring-0 code exec/read and data r/w, 32-bit.
        assert_eq!(gdt2, 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt3, 0x00cf_9300_0000_ffff);
        assert_eq!(mem.read_u64(PhysAddr(0x6000)), 0);

        // Kernel bytes at the load address, nothing at 1 MiB.
        let k = &img[(4 + 1) * 512..];
        assert_eq!(read(&mem, 0x100_0000, k.len()), k);
        assert_eq!(r32(&mem, 0x100_0000), 0x4b45_5221);
        assert_eq!(r32(&mem, 0x10_0000), 0);
        assert_eq!(layout.kernel, 0x100_0000);
        assert_eq!(layout.kernel_end, 0x100_0000 + 0x40_0000);

        // Initrd: page-aligned, as high as possible.
        let rd_start = ((64 << 20) - 100_000u64) & !0xfff;
        assert_eq!(layout.initrd, Some((rd_start, 100_000)));
        assert_eq!(read(&mem, rd_start, initrd.len()), initrd);
        assert_eq!(u64::from(r32(&mem, bp(0x218))), rd_start);
        assert_eq!(r32(&mem, bp(0x21c)), 100_000);

        // Command line.
        assert_eq!(r32(&mem, bp(0x228)), 0x2_0000);
        let mut want = cmdline.as_bytes().to_vec();
        want.push(0);
        assert_eq!(read(&mem, 0x2_0000, want.len()), want);

        // The setup header is copied, with the loader's fields filled in.
        let hdr = read(&mem, bp(0x1f1), 0x26c - 0x1f1);
        for (i, (&got, &orig)) in hdr.iter().zip(&img[0x1f1..0x26c]).enumerate() {
            let off = 0x1f1 + i;
            let written =
                matches!(off, 0x210..=0x21f | 0x224..=0x22b | 0x23c..=0x247 | 0x250..=0x257);
            if !written {
                assert_eq!(got, orig, "header byte {off:#x}");
            }
        }
        assert_eq!(r16(&mem, bp(0x1fe)), 0xaa55);
        assert_eq!(&read(&mem, bp(0x202), 4), b"HdrS");
        assert_eq!(r16(&mem, bp(0x206)), 0x020f);
        assert_eq!(r8(&mem, bp(0x210)), 0xff, "type_of_loader");
        assert_eq!(r8(&mem, bp(0x211)), LOADED_HIGH | CAN_USE_HEAP, "loadflags");
        assert_eq!(r32(&mem, bp(0x214)), 0x100_0000, "code32_start");
        assert_eq!(r16(&mem, bp(0x224)), 0xfe00, "heap_end_ptr");
        assert_eq!(r16(&mem, bp(0x226)), 0, "ext_loader_ver/type");
        assert_eq!(r32(&mem, bp(0x23c)), 0, "hardware_subarch = PC");
        assert_eq!(mem.read_u64(PhysAddr(bp(0x250))), 0, "setup_data");
        assert_eq!(r32(&mem, bp(0x268)), 0x1234, "kernel_info_offset copied");
        assert_eq!(read(&mem, bp(0x26c), 0x290 - 0x26c), vec![0; 0x24]);

        // Zero page proper: no video, memory sizes, sentinel clear.
        assert_eq!(read(&mem, bp(0), 2), [0, 0], "orig_x/y");
        assert_eq!(r16(&mem, bp(0x02)), 63 * 1024, "ext_mem_k");
        assert_eq!(r8(&mem, bp(0x06)), 0, "orig_video_mode");
        assert_eq!(r8(&mem, bp(0x07)), 0, "orig_video_cols");
        assert_eq!(r8(&mem, bp(0x0e)), 0, "orig_video_lines");
        assert_eq!(r8(&mem, bp(0x0f)), 0, "orig_video_isVGA");
        assert_eq!(r32(&mem, bp(0x1e0)), 63 * 1024, "alt_mem_k");
        assert_eq!(r8(&mem, bp(0x1ef)), 0, "sentinel");
        assert_eq!(read(&mem, bp(0xc0), 12), vec![0; 12], "ext_* high halves");

        // e820.
        assert_eq!(r8(&mem, bp(0x1e8)), 4);
        let e: Vec<(u64, u64, u32)> = (0..4)
            .map(|i| {
                let o = bp(0x2d0 + 20 * i);
                (
                    mem.read_u64(PhysAddr(o)),
                    mem.read_u64(PhysAddr(o + 8)),
                    r32(&mem, o + 16),
                )
            })
            .collect();
        assert_eq!(
            e,
            vec![
                (0, 0x9_fc00, E820_RAM),
                (0x9_fc00, 0x400, E820_RESERVED),
                (0xf_0000, 0x1_0000, E820_RESERVED),
                (0x10_0000, 63 << 20, E820_RAM),
            ]
        );
        assert_eq!(mem.read_u64(PhysAddr(bp(0x2d0 + 80))), 0);
        // boot_params, GDT and command line lie in RAM of the map.
        for a in [GDT_ADDR, BOOT_PARAMS_ADDR, CMDLINE_ADDR] {
            assert!(e
                .iter()
                .any(|&(s, l, t)| t == E820_RAM && s <= a && a + 0x1000 <= s + l));
        }
    }

    #[test]
    fn parses_the_header() {
        let h = SetupHeader::parse(&build_bzimage(&Bz::default())).unwrap();
        assert_eq!(h.setup_sects, 4);
        assert_eq!(h.version, 0x020f);
        assert_eq!(
            h.kernel_version.as_deref(),
            Some("6.1.0-test-686 (ox86@test) #1 SMP")
        );
        assert_eq!(
            (h.kernel_offset, h.kernel_len, h.header_end),
            (0xa00, 0x3000, 0x26c)
        );
        assert_eq!(h.cmdline_size, 2047);
        assert_eq!(h.pref_address, 0x100_0000);
        // setup_sects 0 means 4.
        let mut img = build_bzimage(&Bz::default());
        img[0x1f1] = 0;
        assert_eq!(SetupHeader::parse(&img).unwrap().kernel_offset, 0xa00);
        // Trailing bytes beyond syssize are not kernel.
        img.extend([0x55; 100]);
        assert_eq!(SetupHeader::parse(&img).unwrap().kernel_len, 0x3000);
    }

    #[test]
    fn non_relocatable_kernel_loads_at_1mib() {
        let mut mem = Memory::new(32 << 20).unwrap();
        let img = build_bzimage(&Bz {
            relocatable: false,
            pref_address: 0x10_0000,
            kernel_alignment: 3, // ignored when not relocatable
            ..Bz::default()
        });
        let (st, l) = load_linux_layout(&mut mem, &img, "", None).unwrap();
        assert_eq!(st.eip, 0x10_0000);
        assert_eq!(l.kernel_end, 0x50_0000);
        assert_eq!(l.initrd, None);
        assert_eq!(r32(&mem, 0x10_0000), 0x4b45_5221);
        assert_eq!(r32(&mem, bp(0x214)), 0x10_0000);
        assert_eq!((r32(&mem, bp(0x218)), r32(&mem, bp(0x21c))), (0, 0));
        assert_eq!(r8(&mem, 0x2_0000), 0, "empty command line");
        assert_eq!(r16(&mem, bp(0x02)), 31 * 1024);
    }

    #[test]
    fn unaligned_pref_address_falls_back_to_1mib_and_keeps_run_area() {
        let mut mem = Memory::new(32 << 20).unwrap();
        let img = build_bzimage(&Bz {
            pref_address: 0x100_1000, // not 2 MiB aligned
            ..Bz::default()
        });
        let rd = [7u8; 5000];
        let (st, l) = load_linux_layout(&mut mem, &img, "x", Some(&rd)).unwrap();
        assert_eq!(st.eip, 0x10_0000);
        // Decompression happens at max(align_up(1 MiB, 2 MiB), pref) = pref.
        assert_eq!(l.kernel_end, 0x100_1000 + 0x40_0000);
        assert_eq!(l.initrd, Some(((32 << 20) - 0x2000, 5000)));
    }

    #[test]
    fn initrd_respects_initrd_addr_max() {
        let mut mem = Memory::new(128 << 20).unwrap();
        let img = build_bzimage(&Bz {
            initrd_addr_max: 0x1ff_ffff,
            ..Bz::default()
        });
        let rd = vec![1u8; 3 << 20];
        let (_, l) = load_linux_layout(&mut mem, &img, "", Some(&rd)).unwrap();
        assert_eq!(l.initrd, Some((0x200_0000 - (3 << 20), 3 << 20)));
        // An empty initrd is no initrd.
        let (_, l) = load_linux_layout(&mut mem, &img, "", Some(&[])).unwrap();
        assert_eq!(l.initrd, None);
    }

    #[test]
    fn reports_what_does_not_fit() {
        let img = build_bzimage(&Bz::default());
        // 16 MiB: the kernel runs at 16 MiB and needs 4 MiB more.
        let mut small = Memory::new(16 << 20).unwrap();
        let e = load_linux(&mut small, &img, "", None).unwrap_err();
        assert_eq!(e, BootError::RamTooSmall { needs_mib: 20 });
        assert_eq!(e.to_string(), "RAM too small for the kernel: needs 20 MiB");
        // Initrd between kernel end (20 MiB) and RAM end (24 MiB): 4 MiB fit, 5 do not.
        let mut mem = Memory::new(24 << 20).unwrap();
        let rd = vec![0u8; 4 << 20];
        assert!(load_linux(&mut mem, &img, "", Some(&rd)).is_ok());
        let rd = vec![0u8; (4 << 20) + 1];
        let e = load_linux(&mut mem, &img, "", Some(&rd)).unwrap_err();
        assert_eq!(e.to_string(), "initrd of 5 MiB does not fit in RAM");
        // initrd_addr_max below the kernel.
        let low = build_bzimage(&Bz {
            initrd_addr_max: 0xff_ffff,
            ..Bz::default()
        });
        assert_eq!(
            load_linux(&mut mem, &low, "", Some(&[1])),
            Err(BootError::InitrdTooLarge { mib: 1 })
        );
        // A kernel image larger than RAM.
        let big = build_bzimage(&Bz {
            relocatable: false,
            pref_address: 0x10_0000,
            init_size: 0x1000,
            kernel_len: 3 << 20,
            ..Bz::default()
        });
        let mut two = Memory::new(2 << 20).unwrap();
        assert_eq!(
            load_linux(&mut two, &big, "", None),
            Err(BootError::RamTooSmall { needs_mib: 4 })
        );
        // Absurd init_size and pref_address.
        let huge = build_bzimage(&Bz {
            init_size: u32::MAX,
            pref_address: u64::MAX - 5,
            ..Bz::default()
        });
        assert!(matches!(
            load_linux(&mut mem, &huge, "", None),
            Err(BootError::Overflow(_))
        ));
    }

    #[test]
    fn command_line_limits() {
        let mut mem = Memory::new(32 << 20).unwrap();
        let img = build_bzimage(&Bz {
            cmdline_size: 10,
            ..Bz::default()
        });
        assert!(load_linux(&mut mem, &img, "0123456789", None).is_ok());
        assert_eq!(read(&mem, 0x2_0000, 11), b"0123456789\0");
        let e = load_linux(&mut mem, &img, "0123456789a", None).unwrap_err();
        assert_eq!(e, BootError::CmdlineTooLong { len: 11, max: 10 });
        assert_eq!(
            e.to_string(),
            "kernel command line is 11 bytes; this kernel accepts at most 10"
        );
        assert_eq!(
            load_linux(&mut mem, &img, "a\0b", None),
            Err(BootError::CmdlineNul)
        );
        // cmdline_size beyond the command-line area is capped to it.
        let img = build_bzimage(&Bz {
            cmdline_size: u32::MAX,
            ..Bz::default()
        });
        let long = "x".repeat(0x1_0000);
        assert_eq!(
            load_linux(&mut mem, &img, &long, None),
            Err(BootError::CmdlineTooLong {
                len: 0x1_0000,
                max: 0xffff
            })
        );
    }

    #[test]
    fn rejects_malformed_images() {
        let mut mem = Memory::new(32 << 20).unwrap();
        let good = build_bzimage(&Bz::default());
        let mut cases: Vec<(Vec<u8>, &str)> = Vec::new();
        let mut v = good.clone();
        v[0x1fe] = 0;
        cases.push((v, "boot_flag is 0xaa00, not 0xaa55"));
        let mut v = good.clone();
        v[0x205] = b'X';
        cases.push((v, "no \"HdrS\" magic"));
        let mut v = good.clone();
        v[0x211] = 0;
        cases.push((v, "zImage"));
        let mut v = good.clone();
        v[0x201] = 0x10;
        cases.push((v, "setup header ends at 0x212"));
        let v = good[..0x280].to_vec();
        cases.push((v, "shorter than a setup header"));
        let v = good[..0xa00].to_vec();
        cases.push((
            v,
            "truncated: 2560 bytes, but the setup code alone takes 2560",
        ));
        let v = good[..0xa00 + 0x1000].to_vec();
        cases.push((
            v,
            "truncated: syssize says 12288 bytes of kernel, the file has 4096",
        ));
        let mut v = good.clone();
        v[0x1f1] = 0xff; // 128 KiB of setup in a 14 KiB file
        v.truncate(0x3a00);
        cases.push((v, "the setup code alone takes 131072"));
        let mut v = good.clone();
        put(&mut v, 0x230, &0x30_0000u32.to_le_bytes());
        cases.push((v, "kernel_alignment 0x300000 is not a power of two"));
        for (img, want) in cases {
            let e = load_linux(&mut mem, &img, "", None).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, BootError::BadBzImage(_)), "{msg}");
            assert!(msg.contains(want), "{msg:?} lacks {want:?}");
            assert!(!msg.contains('\n'));
        }
        let mut v = good.clone();
        put(&mut v, 0x206, &0x0209u16.to_le_bytes());
        let e = load_linux(&mut mem, &v, "", None).unwrap_err();
        assert_eq!(e, BootError::OldBootProtocol(0x0209));
        assert_eq!(
            e.to_string(),
            "Linux boot protocol 2.09 is too old: ox86 needs 2.10 or later (Linux 2.6.31+)"
        );
        assert_eq!(load_linux(&mut mem, &[], "", None), Err(BootError::Empty));
    }

    /// Checks a real kernel when `scripts/fetch-guests` has been run
    /// (target/linux/vmlinuz, or the file named by OX86_VMLINUZ).
    #[test]
    #[ignore = "needs the Debian kernel from scripts/fetch-guests (scripts/test runs it)"]
    fn real_debian_kernel() {
        let path = std::env::var("OX86_VMLINUZ").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../target/linux/vmlinuz").to_string()
        });
        let img = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{path}: {e} (run scripts/fetch-guests)"));
        let h = SetupHeader::parse(&img).unwrap();
        eprintln!("{path}: {h:x?}");
        assert!(h.version >= 0x020a);
        assert!(h.relocatable);
        assert!(h.kernel_version.as_deref().unwrap().starts_with("6.1.0-"));
        assert_eq!(h.kernel_offset + h.kernel_len, img.len());
        let mut mem = Memory::new(256 << 20).unwrap();
        let rd = vec![0u8; 1 << 20];
        let (st, l) = load_linux_layout(&mut mem, &img, "console=ttyS0", Some(&rd)).unwrap();
        assert_eq!(u64::from(st.eip), h.pref_address);
        assert_eq!(l.initrd, Some(((255 << 20), 1 << 20)));
        let mut small = Memory::new(16 << 20).unwrap();
        assert!(matches!(
            load_linux(&mut small, &img, "", None),
            Err(BootError::RamTooSmall { .. })
        ));
    }
}
