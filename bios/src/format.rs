//! Recognising kernel image formats and dispatching to their loaders.

use ox86_mmu::Memory;

use crate::elf::{load_elf, ELF_MAGIC};
use crate::entry::EntryState;
use crate::error::BootError;
use crate::linux::load_linux;
use crate::multiboot::{find_header, load_multiboot, Module};

/// Offset of the Linux setup header signature.
const LINUX_HDRS_OFFSET: usize = 0x202;

/// The kind of a kernel image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// A Multiboot v1 kernel (ELF or a.out kludge).
    Multiboot,
    /// A Linux bzImage ("HdrS" at offset 0x202).
    LinuxBzImage,
    /// An ELF file without a Multiboot header.
    Elf,
    /// Nothing ox86 can boot.
    Unknown,
}

/// Recognises the format of `image`. A Multiboot header wins over the ELF magic.
pub fn detect(image: &[u8]) -> KernelFormat {
    if find_header(image).is_some() {
        KernelFormat::Multiboot
    } else if image.starts_with(ELF_MAGIC) {
        KernelFormat::Elf
    } else if image.get(LINUX_HDRS_OFFSET..LINUX_HDRS_OFFSET + 4) == Some(b"HdrS") {
        KernelFormat::LinuxBzImage
    } else {
        KernelFormat::Unknown
    }
}

/// Detects the format of `image` and loads it with its command line and modules.
/// A Linux bzImage takes at most one module, its initrd (the module's command line
/// is ignored). A bare ELF takes neither a command line nor modules; they are
/// ignored with a warning.
pub fn load_kernel(
    mem: &mut Memory,
    image: &[u8],
    cmdline: &str,
    modules: &[Module<'_>],
) -> Result<EntryState, BootError> {
    if image.is_empty() {
        return Err(BootError::Empty);
    }
    match detect(image) {
        KernelFormat::Multiboot => load_multiboot(mem, image, cmdline, modules),
        KernelFormat::Elf => {
            if !cmdline.is_empty() || !modules.is_empty() {
                tracing::warn!(target: "ox86::bios", "bare ELF kernel: command line and modules ignored");
            }
            load_elf(mem, image)
        }
        KernelFormat::LinuxBzImage => match modules {
            [] => load_linux(mem, image, cmdline, None),
            [initrd] => load_linux(mem, image, cmdline, Some(initrd.data)),
            _ => Err(BootError::TooManyInitrds(modules.len())),
        },
        KernelFormat::Unknown => Err(BootError::UnknownFormat),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::build_elf32;
    use crate::linux::tests::{build_bzimage, Bz};
    use crate::multiboot::tests::mb_elf_kernel;
    use goblin::elf::program_header::PT_LOAD;
    use ox86_mmu::PhysAddr;

    #[test]
    fn detects_formats() {
        assert_eq!(detect(&mb_elf_kernel(0)), KernelFormat::Multiboot);
        let elf = build_elf32(
            0x10_0000,
            &[(PT_LOAD, 0x100, 0x10_0000, 0x10_0000, 4, 4)],
            &[0; 4],
        );
        assert_eq!(detect(&elf), KernelFormat::Elf);
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect(&bz), KernelFormat::LinuxBzImage);
        assert_eq!(detect(&bz[..0x204]), KernelFormat::Unknown);
        assert_eq!(detect(&[]), KernelFormat::Unknown);
        assert_eq!(detect(b"MZ"), KernelFormat::Unknown);
    }

    #[test]
    fn dispatches() {
        let mut mem = Memory::new(2 << 20).unwrap();
        let st = load_kernel(&mut mem, &mb_elf_kernel(0), "", &[]).unwrap();
        assert_eq!(st.eax, crate::multiboot::BOOTLOADER_MAGIC);
        let elf = build_elf32(
            0x10_0000,
            &[(PT_LOAD, 0x100, 0x10_0000, 0x10_0000, 4, 4)],
            &[0; 4],
        );
        assert_eq!(
            load_kernel(&mut mem, &elf, "", &[]),
            Ok(EntryState::flat32(0x10_0000))
        );
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert!(matches!(
            load_kernel(&mut mem, &bz, "", &[]),
            Err(BootError::BadBzImage(_))
        ));
        let bz = build_bzimage(&Bz {
            relocatable: false,
            pref_address: 0x10_0000,
            init_size: 0x8000,
            ..Bz::default()
        });
        let m = Module {
            data: b"initrd!",
            cmdline: "ignored",
        };
        let st = load_kernel(&mut mem, &bz, "quiet", &[m]).unwrap();
        assert_eq!((st.eip, st.esi), (0x10_0000, 0x7000));
        assert_eq!(mem.read_u32(PhysAddr(0x7000 + 0x21c)), 7, "initrd size");
        assert_eq!(
            load_kernel(&mut mem, &bz, "", &[m, m]),
            Err(BootError::TooManyInitrds(2))
        );
        assert_eq!(
            load_kernel(&mut mem, b"junk", "", &[]),
            Err(BootError::UnknownFormat)
        );
        assert_eq!(load_kernel(&mut mem, &[], "", &[]), Err(BootError::Empty));
    }
}
