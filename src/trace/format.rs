//! The trace file format, version 1: a header, chunks, an end record.
//!
//! ```text
//! header  "OX86TRC\0" | version u32 | flags u32 | start icount u64 | machine u128 |
//!         xxh3-64 of the 40 bytes before it
//! chunk   "CHNK" | compressed length u32 | length u32 | 0 u32 | first icount u64 |
//!         instructions u64 | xxh3-64 of the 32 bytes before it and the data | data
//!         (LZ4 block of `length` bytes)
//! end     "END!" | flags u32 (bit 0: the recording stopped early) | end icount u64 |
//!         instructions u64 | xxh3-64 of the 24 bytes before it
//! ```
//!
//! All integers little-endian. A chunk's data is a sequence of records, each
//! starting with an unsigned LEB128 number `v`: an even `v` is a block, `v / 2` its id;
//! an odd `v` is a record of kind `v / 2` with LEB128 fields:
//!
//! | kind | record | fields |
//! |---|---|---|
//! | 1 | block definition (id: the next) | CS base, EIP, physical address, frame of the next page (0: none), code size in bits, instructions, bytes, then the bytes |
//! | 2 | exception | vector, error code + 1 (0: none), linear address, CR2 |
//! | 3 | external interrupt | vector |
//! | 4 | context | CR0, CR3, CR4, CPL, flags (bit 0 V86, bit 1 32-bit code) |
//! | 5 | port read during the next instruction | port, size, value |
//! | 6 | port write during the next instruction | port, size, value |
//! | 7 | the next memory access is the delivery's of the exception or interrupt recorded before it (the pushes of its frame) | |
//! | 8 + f | memory access | instruction (its count less the last access's in this chunk, or less the chunk's first count), linear address less the predicted one (zigzag), value unless predicted |
//! | 40 | guest time (at the start and at the end) | nanoseconds |
//!
//! A memory access's flags `f` (0 to 31): bits 0-2 the size less one (1 to 8 bytes;
//! longer accesses are recorded eight bytes a piece), bit 3 a write, bit 4 the value
//! is the predicted one. Accesses (header flag [`FLAG_MEMORY`]) come in the order the
//! CPU made them, before the block of their instruction, sometimes with other blocks
//! between (the instruction is named by its count). An instruction that an exception
//! or interrupt cut short has its accesses before that record, with its count.
//!
//! Predictions, which start afresh in each chunk: an access's address is predicted
//! to follow the last one (its address plus its size; 0 at first); its value to be
//! the last value accessed at the same address with the same size, as a table of
//! [`VALUE_SLOTS`] slots remembers it (the slot of address `a` is
//! `(a >> 2 ^ a >> 14) % VALUE_SLOTS`; each access replaces its slot's address, size
//! and value).
//!
//! A block is a run of instructions executed one after the other, each at the
//! address where the one before ended, on one page, ending at a control transfer, at
//! 64 instructions, or before an event: it depends only on what was executed, never
//! on how (the JIT and the interpreter write the same trace). A block is defined
//! before its first use, and defined again (a new id) when its code changed. Events
//! come between blocks; the instruction count of a block is the count after the
//! blocks before it.

/// The file's first 8 bytes.
pub const MAGIC: &[u8; 8] = b"OX86TRC\0";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Header size.
pub const HEADER_LEN: usize = 48;
/// Chunk header size.
pub const CHUNK_HEADER_LEN: usize = 40;
/// End record size.
pub const END_LEN: usize = 32;
/// A chunk's tag.
pub const CHUNK_TAG: &[u8; 4] = b"CHNK";
/// The end record's tag.
pub const END_TAG: &[u8; 4] = b"END!";
/// Most bytes a chunk's data holds uncompressed (the writer closes a chunk at
/// [`CHUNK_TARGET`]; a record never spans chunks).
pub const CHUNK_MAX: usize = 16 << 20;
/// Where the writer closes a chunk.
pub const CHUNK_TARGET: usize = 1 << 20;
/// End flag: the recording stopped before the run did (the disk filled, a write
/// failed).
pub const END_STOPPED_EARLY: u32 = 1;
/// Most instructions in a block.
pub const MAX_BLOCK_INSNS: usize = 64;

/// Record kinds (odd records).
pub mod kind {
    /// A block definition.
    pub const DEF: u64 = 1;
    /// An exception.
    pub const EXCEPTION: u64 = 2;
    /// An external interrupt.
    pub const INTERRUPT: u64 = 3;
    /// The context.
    pub const CONTEXT: u64 = 4;
    /// A port read.
    pub const PORT_IN: u64 = 5;
    /// A port write.
    pub const PORT_OUT: u64 = 6;
    /// The next memory access is a delivery's.
    pub const DELIVERY: u64 = 7;
    /// Guest time.
    pub const TIME: u64 = 40;
    /// A memory access: this plus its flags (see [`super::MEM_WRITE`]).
    pub const MEM: u64 = 8;
    /// The last memory-access kind.
    pub const MEM_LAST: u64 = MEM + 31;
}

/// Header flag: memory accesses are recorded.
pub const FLAG_MEMORY: u32 = 1;
/// Memory-access flag: a write.
pub const MEM_WRITE: u64 = 8;
/// Memory-access flag: the value is the predicted one.
pub const MEM_PREDICTED: u64 = 16;
/// Slots of the table that predicts memory values.
pub const VALUE_SLOTS: usize = 4096;

/// Predicts memory accesses' addresses and values, the same way in the writer and
/// the reader (see the module's text).
#[derive(Clone)]
pub struct MemPredictor {
    next: u64,
    /// The last access's instruction count.
    pub last: u64,
    slots: Box<[(u64, u64)]>,
}

impl MemPredictor {
    /// A predictor for a chunk that starts at instruction count `first`.
    pub fn new(first: u64) -> MemPredictor {
        MemPredictor {
            next: 0,
            last: first,
            slots: vec![(u64::MAX, 0); VALUE_SLOTS].into_boxed_slice(),
        }
    }

    /// Starts afresh, for a chunk that starts at instruction count `first`.
    pub fn reset(&mut self, first: u64) {
        self.next = 0;
        self.last = first;
        self.slots.fill((u64::MAX, 0));
    }

    /// The predicted address.
    #[inline]
    pub fn address(&self) -> u64 {
        self.next
    }

    /// Records an access; returns whether its value was the predicted one.
    #[inline]
    pub fn access(&mut self, addr: u64, size: u64, value: u64) -> bool {
        self.next = (addr + size) & 0xffff_ffff;
        let slot = &mut self.slots[((addr >> 2) ^ (addr >> 14)) as usize % VALUE_SLOTS];
        let key = addr | (size << 32);
        let hit = *slot == (key, value);
        *slot = (key, value);
        hit
    }

    /// The predicted value of an access of `size` bytes at `addr`, if the table has
    /// one.
    #[inline]
    pub fn value(&self, addr: u64, size: u64) -> Option<u64> {
        let slot = &self.slots[((addr >> 2) ^ (addr >> 14)) as usize % VALUE_SLOTS];
        (slot.0 == addr | (size << 32)).then_some(slot.1)
    }
}

/// A signed number as an unsigned one, small magnitudes small.
#[inline]
pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// The inverse of [`zigzag`].
#[inline]
pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Appends `v` as unsigned LEB128.
#[inline]
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads an unsigned LEB128 number at `*pos`, advancing it; None if the data ends
/// first or the number is longer than 64 bits.
#[inline]
pub fn get_varint(data: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = *data.get(*pos)?;
        *pos += 1;
        if shift == 63 && b > 1 {
            return None;
        }
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
}

/// The header's bytes.
pub fn header(flags: u32, start: u64, machine: u128) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&flags.to_le_bytes());
    h[16..24].copy_from_slice(&start.to_le_bytes());
    h[24..40].copy_from_slice(&machine.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&h[..40]);
    h[40..].copy_from_slice(&sum.to_le_bytes());
    h
}

/// A chunk's header for compressed data `data` of `len` bytes uncompressed.
pub fn chunk_header(data: &[u8], len: usize, first: u64, insns: u64) -> [u8; CHUNK_HEADER_LEN] {
    let mut h = [0u8; CHUNK_HEADER_LEN];
    h[..4].copy_from_slice(CHUNK_TAG);
    h[4..8].copy_from_slice(&(data.len() as u32).to_le_bytes());
    h[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    h[16..24].copy_from_slice(&first.to_le_bytes());
    h[24..32].copy_from_slice(&insns.to_le_bytes());
    let sum = chunk_sum(&h[..32], data);
    h[32..].copy_from_slice(&sum.to_le_bytes());
    h
}

/// The checksum of a chunk: its header's first 32 bytes and its data.
pub fn chunk_sum(head: &[u8], data: &[u8]) -> u64 {
    let mut x = xxhash_rust::xxh3::Xxh3::new();
    x.update(head);
    x.update(data);
    x.digest()
}

/// The end record's bytes.
pub fn end_record(flags: u32, end: u64, insns: u64) -> [u8; END_LEN] {
    let mut e = [0u8; END_LEN];
    e[..4].copy_from_slice(END_TAG);
    e[4..8].copy_from_slice(&flags.to_le_bytes());
    e[8..16].copy_from_slice(&end.to_le_bytes());
    e[16..24].copy_from_slice(&insns.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&e[..24]);
    e[24..].copy_from_slice(&sum.to_le_bytes());
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_junk_is_refused() {
        for v in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX - 1, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let mut p = 0;
            assert_eq!(get_varint(&b, &mut p), Some(v));
            assert_eq!(p, b.len());
            // Cut short.
            let mut p = 0;
            assert_eq!(get_varint(&b[..b.len() - 1], &mut p), None);
        }
        let mut p = 0;
        assert_eq!(get_varint(&[0xff; 11], &mut p), None);
        let mut p = 0;
        assert_eq!(
            get_varint(
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
                &mut p
            ),
            None
        );
    }
}
