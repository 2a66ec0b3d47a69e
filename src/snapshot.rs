//! Snapshots of the whole machine: CPU and FPU state, every device, the clock and RAM,
//! in a versioned file that [`Machine::restore`](crate::Machine::restore) takes back.
//!
//! The file is `OX86SNAP`, the format version (u32, little-endian), an XXH3-128
//! checksum of the body, then the body (postcard). RAM goes in 64 KiB chunks,
//! compressed with LZ4; chunks of zeros (RAM the guest never touched, mostly) are left
//! out. The body names the machine it came from (a hash of the kernel image, initrd,
//! command line and RAM size): a snapshot restores only into the same machine.
//! Nothing is trusted: the magic, version, checksum, machine, RAM size and every
//! chunk are checked before anything is changed.

use ox86_cpu::CpuState;
use ox86_mmu::{Memory, PhysAddr};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use xxhash_rust::xxh3::xxh3_128;

/// The file's first bytes.
pub const MAGIC: &[u8; 8] = b"OX86SNAP";
/// The format's version: a snapshot of another version is refused.
pub const VERSION: u32 = 1;
/// Bytes of RAM per chunk.
const CHUNK: usize = 64 << 10;
/// Magic, version and checksum.
const HEADER: usize = 8 + 4 + 16;

/// A snapshot that cannot be restored.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// Not a snapshot at all.
    #[error("not an ox86 snapshot")]
    NotASnapshot,
    /// A snapshot of another format version.
    #[error("snapshot format version {found}, this ox86 reads version {VERSION}")]
    Version {
        /// The file's version.
        found: u32,
    },
    /// Truncated or corrupt.
    #[error("the snapshot is truncated or corrupt ({0})")]
    Corrupt(String),
    /// Taken of another machine (kernel, initrd, command line or RAM size).
    #[error("the snapshot is of another machine (kernel, initrd, command line or RAM size)")]
    OtherMachine,
}

/// What the file holds after its header.
#[derive(Serialize, Deserialize)]
pub(crate) struct Body {
    /// The machine it was taken of (see the module's comment).
    pub machine: u128,
    pub ram_size: u64,
    pub cpu: CpuState,
    /// The A20 gate.
    pub a20: bool,
    /// The clock (see `Clock::save`).
    pub clock: (u64, u64),
    /// The devices (see `Platform::state_bytes`).
    pub devices: Vec<u8>,
    /// Non-zero RAM chunks: (index, LZ4 block with its size prepended).
    pub chunks: Vec<(u32, Vec<u8>)>,
}

/// The chunks of RAM that are not all zeros, compressed.
pub(crate) fn save_ram(mem: &Memory) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    crate::ram::for_each_chunk(mem, CHUNK, |at, bytes| {
        if bytes.iter().any(|&b| b != 0) {
            let k = (at / CHUNK as u64) as u32;
            out.push((k, lz4_flex::block::compress_prepend_size(bytes)));
        }
    });
    out
}

/// The file bytes of `body`.
pub(crate) fn encode(body: &Body) -> Vec<u8> {
    let payload = postcard::to_stdvec(body).expect("a snapshot serialises to memory");
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&xxh3_128(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// The body of file bytes `bytes`, checked against the header.
pub(crate) fn decode(bytes: &[u8]) -> Result<Body, SnapshotError> {
    if bytes.len() < 8 || &bytes[..8] != MAGIC {
        return Err(SnapshotError::NotASnapshot);
    }
    if bytes.len() < HEADER {
        return Err(SnapshotError::Corrupt("shorter than its header".into()));
    }
    let found = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if found != VERSION {
        return Err(SnapshotError::Version { found });
    }
    let sum = u128::from_le_bytes(bytes[12..28].try_into().expect("16 bytes"));
    let payload = &bytes[HEADER..];
    if xxh3_128(payload) != sum {
        return Err(SnapshotError::Corrupt("checksum mismatch".into()));
    }
    postcard::from_bytes(payload).map_err(|e| SnapshotError::Corrupt(e.to_string()))
}

/// RAM as the chunks `chunks` of a snapshot of `ram_size` bytes give it: every chunk,
/// decompressed and checked (index in range, each once, the right length), in order.
pub(crate) fn load_ram(
    chunks: &[(u32, Vec<u8>)],
    ram_size: u64,
) -> Result<Vec<(u64, Vec<u8>)>, SnapshotError> {
    let count = ram_size.div_ceil(CHUNK as u64);
    let mut out = Vec::with_capacity(chunks.len());
    let mut last: Option<u32> = None;
    for (k, data) in chunks {
        if u64::from(*k) >= count || last.is_some_and(|l| l >= *k) {
            return Err(SnapshotError::Corrupt(format!(
                "RAM chunk {k} out of place"
            )));
        }
        last = Some(*k);
        let at = u64::from(*k) * CHUNK as u64;
        let want = CHUNK.min((ram_size - at) as usize);
        // The prepended size is checked before anything is allocated for it.
        let claimed = data
            .get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize);
        if claimed != Some(want) {
            return Err(SnapshotError::Corrupt(format!(
                "RAM chunk {k} has a bad length"
            )));
        }
        let bytes = lz4_flex::block::decompress_size_prepended(data)
            .map_err(|e| SnapshotError::Corrupt(format!("RAM chunk {k}: {e}")))?;
        if bytes.len() != want {
            return Err(SnapshotError::Corrupt(format!(
                "RAM chunk {k} has a bad length"
            )));
        }
        out.push((at, bytes));
    }
    Ok(out)
}

/// Writes `chunks` (from [`load_ram`]) to `mem`, zeros elsewhere (only where RAM is
/// not zero already, so that RAM untouched in both costs no host memory).
pub(crate) fn write_ram(mem: &mut Memory, chunks: &[(u64, Vec<u8>)]) {
    let size = mem.ram_size();
    let zeros = vec![0u8; CHUNK];
    let mut now = vec![0u8; CHUNK];
    let mut next = chunks.iter().peekable();
    let mut at = 0u64;
    while at < size {
        let n = CHUNK.min((size - at) as usize);
        match next.peek() {
            Some((a, data)) if *a == at => {
                mem.write_phys(PhysAddr(at), data);
                next.next();
            }
            _ => {
                mem.read_phys(PhysAddr(at), &mut now[..n]);
                if now[..n] != zeros[..n] {
                    mem.write_phys(PhysAddr(at), &zeros[..n]);
                }
            }
        }
        at += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> Body {
        let mut mem = Memory::new(1 << 20).unwrap();
        mem.write_phys(PhysAddr(0x12345), b"hello");
        mem.write_phys(PhysAddr(0xfffff), &[9]);
        Body {
            machine: 7,
            ram_size: 1 << 20,
            cpu: CpuState::default(),
            a20: true,
            clock: (1, 2),
            devices: vec![1, 2, 3],
            chunks: save_ram(&mem),
        }
    }

    #[test]
    fn round_trips_ram_and_skips_zeros() {
        let b = body();
        assert_eq!(b.chunks.len(), 2, "two chunks of the sixteen hold data");
        let back = decode(&encode(&b)).unwrap();
        let ram = load_ram(&back.chunks, back.ram_size).unwrap();
        let mut mem = Memory::new(1 << 20).unwrap();
        mem.write_phys(PhysAddr(0x40000), b"stale");
        write_ram(&mut mem, &ram);
        let mut got = [0u8; 5];
        mem.read_phys(PhysAddr(0x12345), &mut got);
        assert_eq!(&got, b"hello");
        mem.read_phys(PhysAddr(0x40000), &mut got);
        assert_eq!(got, [0; 5], "RAM not in the snapshot is zeros");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]
        /// A body damaged behind a checksum made to match (a forged file) gives a
        /// snapshot or an error, never a panic, and so do its RAM chunks.
        #[test]
        fn forged_bodies_never_panic(
            flips in proptest::collection::vec((0usize..100_000, proptest::prelude::any::<u8>()), 1..6),
            cut in 0usize..100_000,
        ) {
            let good = encode(&body());
            let mut payload = good[HEADER..].to_vec();
            for (at, x) in flips {
                let n = payload.len();
                payload[at % n] ^= x;
            }
            payload.truncate(cut.max(1).min(payload.len()));
            let mut v = good[..12].to_vec();
            v.extend_from_slice(&xxh3_128(&payload).to_le_bytes());
            v.extend_from_slice(&payload);
            if let Ok(b) = decode(&v) {
                if b.ram_size <= 1 << 20 {
                    let _ = load_ram(&b.chunks, b.ram_size);
                }
            }
        }
    }

    #[test]
    fn every_damage_is_refused() {
        let good = encode(&body());
        assert_eq!(decode(b"ELF\x7f").err(), Some(SnapshotError::NotASnapshot));
        assert_eq!(decode(&[]).err(), Some(SnapshotError::NotASnapshot));
        let mut v = good.clone();
        v[8] = 2;
        assert_eq!(decode(&v).err(), Some(SnapshotError::Version { found: 2 }));
        for cut in [9, HEADER, good.len() - 1] {
            assert!(
                matches!(decode(&good[..cut]), Err(SnapshotError::Corrupt(_))),
                "{cut}"
            );
        }
        for i in HEADER..good.len() {
            let mut v = good.clone();
            v[i] ^= 0x10;
            assert!(
                matches!(decode(&v), Err(SnapshotError::Corrupt(_))),
                "byte {i}"
            );
        }
        // A well-formed body with bad chunks (as if the checksum had been forged).
        let mut b = body();
        b.chunks[1].0 = 99;
        assert!(load_ram(&b.chunks, b.ram_size).is_err());
        let mut b = body();
        b.chunks.swap(0, 1);
        assert!(load_ram(&b.chunks, b.ram_size).is_err());
        let mut b = body();
        b.chunks[0].1[0] ^= 1;
        assert!(load_ram(&b.chunks, b.ram_size).is_err());
        let mut b = body();
        b.chunks[0].1.truncate(6);
        assert!(load_ram(&b.chunks, b.ram_size).is_err());
    }
}
