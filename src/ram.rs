//! Guest RAM read in chunks, for digests, checks and snapshots.

use ox86_mmu::{Memory, PhysAddr};

/// Calls `f` with each `chunk`-byte piece of RAM in order (the last may be shorter)
/// and its physical address.
pub(crate) fn for_each_chunk(mem: &Memory, chunk: usize, mut f: impl FnMut(u64, &[u8])) {
    let size = mem.ram_size();
    let mut buf = vec![0u8; chunk];
    let mut at = 0u64;
    while at < size {
        let n = chunk.min((size - at) as usize);
        mem.read_phys(PhysAddr(at), &mut buf[..n]);
        f(at, &buf[..n]);
        at += n as u64;
    }
}
