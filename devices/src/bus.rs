//! Port and MMIO buses: address ranges mapped to devices.
//!
//! A device never knows its own base address: the bus maps a range of addresses to a
//! *target* (normally an index into a device table owned by the platform) and hands the
//! device an offset relative to the start of the range. A range may begin at a non-zero
//! device offset, so one device can answer several disjoint windows (the PIT answers
//! 0x40-0x43 at offsets 0-3 and port 0x61 at offset 4).
//!
//! Lookups are a binary search over a sorted vector; no locks are taken on the hot path.

use ox86_mmu::{PhysAddr, Port};
use thiserror::Error;

/// A device attached to a port or MMIO bus.
///
/// `read` and `write` receive the offset of the first byte within the device and the bytes
/// of the access (little-endian, 1 to 8 bytes). An access never extends past the end of the
/// range the device was attached at; the platform splits accesses that cross ranges.
/// Devices must accept any offset and length without panicking.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes starting at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` starting at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
    /// Runs the device's timers up to the virtual time `now_ns` (monotonic; calls with an
    /// earlier time are ignored). Register accesses that follow observe this time.
    fn advance_to(&mut self, _now_ns: u64) {}
    /// The virtual time at which the device next needs [`BusDevice::advance_to`] to raise an
    /// interrupt, if any. Always later than the last time passed to `advance_to`.
    fn next_event_ns(&self) -> Option<u64> {
        None
    }
    /// The device's state as bytes, for the machine's digest (none by default: such a
    /// device is left out of it).
    fn state(&self) -> Vec<u8> {
        Vec::new()
    }
    /// Puts the device back in a state [`BusDevice::state`] gave (by default only the
    /// empty state of a device without one).
    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        if state.is_empty() {
            Ok(())
        } else {
            Err("a device cannot take back its saved state".into())
        }
    }
}

/// Index of a device in a device table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub usize);

/// Errors from building a bus.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps a range that is already mapped.
    #[error("range {base:#x}+{len:#x} overlaps the mapped range {other_base:#x}+{other_len:#x}")]
    Overlap {
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
        /// Start of the existing range.
        other_base: u64,
        /// Length of the existing range.
        other_len: u64,
    },
    /// The range is empty or extends past the end of the address space.
    #[error("range {base:#x}+{len:#x} is empty or past the end of the address space")]
    InvalidRange {
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// No range starts at this address.
    #[error("no range starts at {0:#x}")]
    NotMapped(u64),
}

/// The result of a bus lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusMatch<T> {
    /// The device the address belongs to.
    pub target: T,
    /// Offset of the address within the device.
    pub offset: u64,
    /// Number of bytes from the address to the end of the range (at least 1).
    pub remaining: u64,
}

#[derive(Clone, Debug)]
struct Entry<T> {
    base: u64,
    len: u64,
    first_offset: u64,
    target: T,
}

/// Non-overlapping ranges of a `limit`-sized address space mapped to targets.
#[derive(Clone, Debug)]
struct RangeMap<T> {
    entries: Vec<Entry<T>>,
    limit: u128,
}

impl<T: Copy> RangeMap<T> {
    fn new(limit: u128) -> Self {
        RangeMap {
            entries: Vec::new(),
            limit,
        }
    }

    fn insert(
        &mut self,
        base: u64,
        len: u64,
        first_offset: u64,
        target: T,
    ) -> Result<(), BusError> {
        if len == 0 || base as u128 + len as u128 > self.limit {
            return Err(BusError::InvalidRange { base, len });
        }
        let end = base as u128 + len as u128;
        let idx = self.entries.partition_point(|e| e.base < base);
        let neighbours = idx.checked_sub(1).into_iter().chain(Some(idx));
        for i in neighbours {
            if let Some(e) = self.entries.get(i) {
                let e_end = e.base as u128 + e.len as u128;
                if (base as u128) < e_end && (e.base as u128) < end {
                    return Err(BusError::Overlap {
                        base,
                        len,
                        other_base: e.base,
                        other_len: e.len,
                    });
                }
            }
        }
        self.entries.insert(
            idx,
            Entry {
                base,
                len,
                first_offset,
                target,
            },
        );
        Ok(())
    }

    fn remove(&mut self, base: u64) -> Result<T, BusError> {
        match self.entries.binary_search_by_key(&base, |e| e.base) {
            Ok(i) => Ok(self.entries.remove(i).target),
            Err(_) => Err(BusError::NotMapped(base)),
        }
    }

    #[inline]
    fn lookup(&self, addr: u64) -> Option<BusMatch<T>> {
        let idx = self.entries.partition_point(|e| e.base <= addr);
        let e = self.entries.get(idx.checked_sub(1)?)?;
        let rel = addr - e.base;
        (rel < e.len).then(|| BusMatch {
            target: e.target,
            offset: e.first_offset.wrapping_add(rel),
            remaining: e.len - rel,
        })
    }

    fn iter(&self) -> impl Iterator<Item = (u64, u64, T)> + '_ {
        self.entries.iter().map(|e| (e.base, e.len, e.target))
    }
}

/// The x86 I/O port space (64 KiB) mapped to targets of type `T`.
#[derive(Clone, Debug)]
pub struct PortBus<T = DeviceId> {
    map: RangeMap<T>,
}

impl<T: Copy> Default for PortBus<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy> PortBus<T> {
    /// An empty port bus.
    pub fn new() -> Self {
        PortBus {
            map: RangeMap::new(0x1_0000),
        }
    }

    /// Maps `len` ports starting at `base` to `target`, at device offsets 0..len.
    pub fn insert(&mut self, base: Port, len: u16, target: T) -> Result<(), BusError> {
        self.insert_at_offset(base, len, target, 0)
    }

    /// Maps `len` ports starting at `base` to `target`, at device offsets
    /// `first_offset..first_offset + len`.
    pub fn insert_at_offset(
        &mut self,
        base: Port,
        len: u16,
        target: T,
        first_offset: u64,
    ) -> Result<(), BusError> {
        self.map
            .insert(base.0 as u64, len as u64, first_offset, target)
    }

    /// Unmaps the range that starts at `base`, returning its target.
    pub fn remove(&mut self, base: Port) -> Result<T, BusError> {
        self.map.remove(base.0 as u64)
    }

    /// The device behind `port`, if any. `port` is a `u64` so callers can look up the
    /// bytes of an access that runs past port 0xffff (they are never mapped).
    #[inline]
    pub fn lookup(&self, port: u64) -> Option<BusMatch<T>> {
        self.map.lookup(port)
    }

    /// The mapped ranges as `(base, len, target)`, in address order.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64, T)> + '_ {
        self.map.iter()
    }
}

/// The physical MMIO space mapped to targets of type `T`.
#[derive(Clone, Debug)]
pub struct MmioBus<T = DeviceId> {
    map: RangeMap<T>,
}

impl<T: Copy> Default for MmioBus<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy> MmioBus<T> {
    /// An empty MMIO bus.
    pub fn new() -> Self {
        MmioBus {
            map: RangeMap::new(1u128 << 64),
        }
    }

    /// Maps `len` bytes starting at `base` to `target`, at device offsets 0..len.
    pub fn insert(&mut self, base: PhysAddr, len: u64, target: T) -> Result<(), BusError> {
        self.map.insert(base.0, len, 0, target)
    }

    /// Unmaps the range that starts at `base`, returning its target.
    pub fn remove(&mut self, base: PhysAddr) -> Result<T, BusError> {
        self.map.remove(base.0)
    }

    /// The device behind `addr`, if any.
    #[inline]
    pub fn lookup(&self, addr: PhysAddr) -> Option<BusMatch<T>> {
        self.map.lookup(addr.0)
    }

    /// The mapped ranges as `(base, len, target)`, in address order.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64, T)> + '_ {
        self.map.iter()
    }
}

/// Little-endian value of up to 8 bytes (extra bytes are ignored).
pub fn le_value(data: &[u8]) -> u64 {
    data.iter()
        .take(8)
        .enumerate()
        .fold(0, |v, (i, &b)| v | (b as u64) << (8 * i))
}

/// Reads an 8-bit-register device byte by byte: byte `i` of `data` comes from `reg(offset + i)`.
pub(crate) fn read_bytewise(offset: u64, data: &mut [u8], mut reg: impl FnMut(u64) -> u8) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = reg(offset.wrapping_add(i as u64));
    }
}

/// Writes an 8-bit-register device byte by byte: byte `i` of `data` goes to `offset + i`.
pub(crate) fn write_bytewise(offset: u64, data: &[u8], mut reg: impl FnMut(u64, u8)) {
    for (i, &b) in data.iter().enumerate() {
        reg(offset.wrapping_add(i as u64), b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_gives_offset_and_remaining() {
        let mut bus = PortBus::new();
        bus.insert(Port(0x3f8), 8, DeviceId(1)).unwrap();
        bus.insert(Port(0x40), 4, DeviceId(2)).unwrap();
        bus.insert_at_offset(Port(0x61), 1, DeviceId(2), 4).unwrap();
        assert_eq!(bus.lookup(0x3f7), None);
        assert_eq!(
            bus.lookup(0x3fa),
            Some(BusMatch {
                target: DeviceId(1),
                offset: 2,
                remaining: 6
            })
        );
        assert_eq!(bus.lookup(0x400), None);
        assert_eq!(
            bus.lookup(0x61).map(|m| (m.target, m.offset)),
            Some((DeviceId(2), 4))
        );
        assert_eq!(bus.lookup(0x43).map(|m| m.remaining), Some(1));
        assert_eq!(bus.lookup(0x1_0000), None);
        assert_eq!(bus.lookup(u64::MAX), None);
    }

    #[test]
    fn overlaps_are_rejected() {
        let mut bus = PortBus::new();
        bus.insert(Port(0x20), 2, DeviceId(0)).unwrap();
        bus.insert(Port(0x22), 2, DeviceId(1)).unwrap(); // adjacent is fine
        bus.insert(Port(0x1e), 2, DeviceId(1)).unwrap();
        for (base, len) in [(0x21, 1), (0x1f, 2), (0x10, 0x20), (0x23, 4), (0x20, 2)] {
            assert!(
                matches!(
                    bus.insert(Port(base), len, DeviceId(9)),
                    Err(BusError::Overlap { .. })
                ),
                "{base:#x}+{len}"
            );
        }
        assert_eq!(bus.ranges().count(), 3);
    }

    #[test]
    fn invalid_ranges_are_rejected() {
        let mut bus = PortBus::new();
        assert!(matches!(
            bus.insert(Port(0x10), 0, DeviceId(0)),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(Port(0xfffe), 4, DeviceId(0)),
            Err(BusError::InvalidRange { .. })
        ));
        bus.insert(Port(0xfffe), 2, DeviceId(0)).unwrap();
        let mut mmio = MmioBus::new();
        assert!(matches!(
            mmio.insert(PhysAddr(u64::MAX), 2, DeviceId(0)),
            Err(BusError::InvalidRange { .. })
        ));
        mmio.insert(PhysAddr(u64::MAX), 1, DeviceId(0)).unwrap();
        assert_eq!(
            mmio.lookup(PhysAddr(u64::MAX)).map(|m| m.remaining),
            Some(1)
        );
    }

    #[test]
    fn remove_unmaps() {
        let mut mmio = MmioBus::new();
        mmio.insert(PhysAddr(0xfee0_0000), 0x1000, DeviceId(3))
            .unwrap();
        assert_eq!(
            mmio.lookup(PhysAddr(0xfee0_0fff)).map(|m| m.offset),
            Some(0xfff)
        );
        assert_eq!(
            mmio.remove(PhysAddr(0xfee0_0001)),
            Err(BusError::NotMapped(0xfee0_0001))
        );
        assert_eq!(mmio.remove(PhysAddr(0xfee0_0000)), Ok(DeviceId(3)));
        assert_eq!(mmio.lookup(PhysAddr(0xfee0_0000)), None);
    }

    #[test]
    fn le_value_assembles_bytes() {
        assert_eq!(le_value(&[0x34, 0x12]), 0x1234);
        assert_eq!(le_value(&[]), 0);
        assert_eq!(
            le_value(&[1, 2, 3, 4, 5, 6, 7, 8, 9]),
            0x0807_0605_0403_0201
        );
    }
}
