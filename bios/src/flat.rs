//! Flat binaries: raw bytes copied to a physical address, entered where the caller says.

use ox86_mmu::{Memory, PhysAddr};

use crate::entry::EntryState;
use crate::error::BootError;
use crate::layout::check_range;

/// Copies `image` to physical address `load_addr` and returns `entry` unchanged, so
/// the caller chooses the mode (e.g. [`EntryState::real`] for a boot sector at
/// 0000:7C00, or [`EntryState::flat32`]). The image must lie in RAM, below 4 GiB and
/// outside the reserved area 0x9fc00..0x100000.
pub fn load_flat(
    mem: &mut Memory,
    image: &[u8],
    load_addr: PhysAddr,
    entry: EntryState,
) -> Result<EntryState, BootError> {
    if image.is_empty() {
        return Err(BootError::Empty);
    }
    check_range(mem, "flat image", load_addr.0, image.len() as u64)?;
    mem.write_phys(load_addr, image);
    tracing::debug!(target: "ox86::bios", addr = load_addr.0, len = image.len(), "loaded flat binary");
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::EntryMode;

    #[test]
    fn loads_at_address_and_keeps_entry() {
        let mut mem = Memory::new(2 << 20).unwrap();
        let entry = EntryState::real(0, 0x7c00, 0x7c00);
        let st = load_flat(&mut mem, &[0xeb, 0xfe], PhysAddr(0x7c00), entry).unwrap();
        assert_eq!(st, entry);
        assert_eq!(st.mode, EntryMode::real(0));
        let mut b = [0u8; 2];
        mem.read_phys(PhysAddr(0x7c00), &mut b);
        assert_eq!(b, [0xeb, 0xfe]);
    }

    #[test]
    fn rejects_bad_placement() {
        let mut mem = Memory::new(2 << 20).unwrap();
        let e = EntryState::flat32(0);
        assert_eq!(
            load_flat(&mut mem, &[], PhysAddr(0x1000), e),
            Err(BootError::Empty)
        );
        assert!(matches!(
            load_flat(&mut mem, &[1; 16], PhysAddr(0x1f_fff8), e),
            Err(BootError::OutsideRam { .. })
        ));
        assert!(matches!(
            load_flat(&mut mem, &[1; 16], PhysAddr(0xf_fff8), e),
            Err(BootError::Reserved { .. })
        ));
        assert!(matches!(
            load_flat(&mut mem, &[1; 16], PhysAddr(u64::MAX - 4), e),
            Err(BootError::Overflow(_))
        ));
    }
}
