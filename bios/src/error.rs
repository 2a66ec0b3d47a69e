//! Host-side errors of the firmware loaders.

use thiserror::Error;

/// Why a kernel or boot image could not be loaded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BootError {
    /// The image is empty.
    #[error("kernel image is empty")]
    Empty,
    /// No loader recognises the image.
    #[error("file is not a known kernel format")]
    UnknownFormat,
    /// The format is recognised but loading it is not implemented.
    #[error("unsupported kernel: {0}")]
    Unsupported(&'static str),
    /// The ELF file is truncated or inconsistent.
    #[error("corrupt ELF: {0}")]
    BadElf(String),
    /// The Multiboot header is truncated or inconsistent.
    #[error("bad Multiboot header: {0}")]
    BadMultiboot(&'static str),
    /// The Multiboot header requires features this loader cannot provide.
    #[error("Multiboot header requires unsupported features (flags {0:#x})")]
    MultibootFlags(u32),
    /// A part of the image would land outside guest RAM (the kernel is too large or
    /// linked at an address the RAM does not reach).
    #[error("{what} at {start:#x}..{end:#x} does not fit in RAM ({ram_size:#x} bytes)")]
    OutsideRam {
        /// What was being placed.
        what: &'static str,
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
        /// Size of guest RAM.
        ram_size: u64,
    },
    /// A part of the image would overlap the EBDA, video memory or the BIOS ROM area.
    #[error("{what} at {start:#x}..{end:#x} overlaps the reserved area 0x9fc00..0x100000")]
    Reserved {
        /// What was being placed.
        what: &'static str,
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// An address or size overflows the 32-bit physical address space.
    #[error("{0} overflows the 32-bit address space")]
    Overflow(&'static str),
    /// A boot module does not fit in the RAM left after the kernel.
    #[error("module {index} ({len} bytes) does not fit in RAM")]
    ModuleTooLarge {
        /// Index of the module in the list given to the loader.
        index: usize,
        /// Its size in bytes.
        len: u64,
    },
    /// The boot information structure does not fit anywhere in free RAM.
    #[error("no room in RAM for the boot information ({0} bytes)")]
    NoRoomForInfo(u64),
    /// The Linux bzImage is truncated or its setup header is inconsistent.
    #[error("bad Linux bzImage: {0}")]
    BadBzImage(String),
    /// The bzImage speaks a boot protocol older than 2.10.
    #[error(
        "Linux boot protocol {}.{:02} is too old: ox86 needs 2.10 or later (Linux 2.6.31+)",
        .0 >> 8,
        .0 & 0xff
    )]
    OldBootProtocol(u16),
    /// The kernel's load area and decompression buffer (`init_size`) end beyond RAM.
    #[error("RAM too small for the kernel: needs {needs_mib} MiB")]
    RamTooSmall {
        /// RAM the kernel needs, in MiB, rounded up.
        needs_mib: u64,
    },
    /// No page-aligned room for the initrd between the kernel and the limit
    /// `min(initrd_addr_max, RAM end)`.
    #[error("initrd of {mib} MiB does not fit in RAM")]
    InitrdTooLarge {
        /// Size of the initrd in MiB, rounded up.
        mib: u64,
    },
    /// The command line is longer than the kernel accepts (`cmdline_size`).
    #[error("kernel command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Its length in bytes, without the terminating NUL.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The command line contains a NUL byte, which would cut it short.
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    /// More than one module was given to a Linux kernel.
    #[error("a Linux kernel takes one initrd, {0} were given")]
    TooManyInitrds(usize),
}
