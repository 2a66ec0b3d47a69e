//! Address and port newtypes used across crate APIs.

use std::fmt;

/// A guest physical address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PhysAddr(pub u64);

/// A guest linear address (after segmentation, before paging).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LinAddr(pub u64);

/// A port in the x86 I/O address space.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Port(pub u16);

impl fmt::Debug for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhysAddr({:#x})", self.0)
    }
}

impl fmt::Debug for LinAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LinAddr({:#x})", self.0)
    }
}

impl fmt::Debug for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Port({:#x})", self.0)
    }
}

/// The size of the 4 KiB page used throughout the MMU.
pub const PAGE_SIZE: u64 = 4096;
/// Mask of the offset within a 4 KiB page.
pub const PAGE_MASK: u64 = PAGE_SIZE - 1;
