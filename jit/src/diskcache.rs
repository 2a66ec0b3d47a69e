//! The translation cache on disk: compiled regions kept between runs, so that the
//! second boot of an image compiles almost nothing.
//!
//! - An entry is the host code of one region with its fixups (`symbols`), stored in a
//!   file named by the region's entry (EIP, CS base, mode), its tier and a 128-bit
//!   hash of everything the code was made from: the page of guest code and the start
//!   of the next page, the entry, the CS limit, the mode, the tier and whether the
//!   region counts heat and chains. A different translator (any change to the JIT,
//!   the CPU, the MMU or the FPU sources, Cranelift, the compiler, the host's ISA
//!   features) uses a directory of its own.
//! - Nothing read is trusted: an entry is used only if its header, its length, its
//!   translator version, its key and a checksum over all of it agree, its fixups name
//!   symbols the region has at offsets inside the code, and the region decoded again
//!   from the current page has the shape the entry was compiled from. A bad entry is
//!   deleted (and the region compiled again).
//! - Several processes may share a cache: an entry is written to a temporary file
//!   and renamed into place, so that readers see a whole entry or none; deleting a
//!   file another process reads does not disturb it.
//! - The cache is bounded: when the bytes stored pass the limit, the least recently
//!   used entries (by modification time, refreshed when an entry is used) of every
//!   translator version are deleted until it is three quarters full.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::SystemTime;

use crossbeam::channel::{unbounded, Sender};

use xxhash_rust::xxh3::{xxh3_128, Xxh3};

use crate::compiler::Request;
use crate::region::Region;
use crate::symbols::{Fixup, Sym};

const MAGIC: &[u8; 8] = b"OX86JIT\0";
const FORMAT: u32 = 1;
/// Largest entry read (a region's code is far smaller).
const MAX_ENTRY: u64 = 16 << 20;
/// Bytes of the header: magic, format, version, key, alignment, shape, lengths.
const HEADER: usize = 8 + 4 + 16 + 16 + 4 + 12 + 4 + 4;
const FIXUP: usize = 16;
const CHECK: usize = 16;

/// The translator's version, made at build time (see `build.rs`).
const TRANSLATOR: &str = env!("OX86_TRANSLATOR_VERSION");

/// The cache's default size limit.
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;

/// The region's shape, checked when an entry is used: decoding the same bytes must
/// give the same region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Guest blocks.
    pub blocks: u32,
    /// Guest instructions.
    pub insns: u32,
    /// Bytes of the next page used.
    pub next_len: u32,
}

/// The code of a region as stored: bytes without fixups applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Host code.
    pub code: Vec<u8>,
    /// Its alignment.
    pub align: u32,
    /// Where symbols' values go.
    pub fixups: Vec<Fixup>,
    /// The region it was compiled from.
    pub shape: Shape,
}

/// What the dispatcher can look for in the cache before asking: the entries it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Entry {
    /// EIP of the region's entry.
    pub eip: u32,
    /// Its CS base.
    pub cs_base: u32,
    /// Its mode (`Mode::bits`).
    pub mode: u8,
}

/// The name of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Name {
    /// The region's entry.
    pub entry: Entry,
    /// Its tier.
    pub tier: u8,
    /// The hash of what it was compiled from.
    pub key: u128,
}

impl Name {
    /// The name of the entry compiled at `tier` (with a heat counter or not) for
    /// region `region` that `req` asks for: its hash covers the bytes the region was
    /// decoded from, not the rest of the page.
    pub fn of(req: &Request, region: &Region, tier: u8, heat: bool, max_blocks: usize) -> Name {
        let mut h = Xxh3::new();
        h.update(b"ox86 region");
        h.update(&[tier, u8::from(heat), u8::from(req.chain.is_some())]);
        h.update(&[req.entry.mode.bits()]);
        for v in [
            req.entry.eip,
            req.entry.page_off as u64,
            req.entry.cs_hi,
            req.cs_base,
            max_blocks as u64,
        ] {
            h.update(&v.to_le_bytes());
        }
        for &(s, e) in &region.ranges {
            h.update(&s.to_le_bytes());
            h.update(&e.to_le_bytes());
            h.update(req.page.get(s as usize..e as usize).unwrap_or_default());
        }
        let n = region.next_len as usize;
        h.update(&region.next_len.to_le_bytes());
        if let Some((_, b)) = req.next.as_ref().filter(|_| n > 0) {
            h.update(b.get(..n).unwrap_or_default());
        }
        Name {
            entry: Entry {
                eip: req.entry.eip as u32,
                cs_base: req.cs_base as u32,
                mode: req.entry.mode.bits(),
            },
            tier,
            key: h.digest128(),
        }
    }

    fn file_name(&self) -> String {
        format!(
            "{:08x}-{:08x}-{:02x}-t{}-{:032x}",
            self.entry.eip, self.entry.cs_base, self.entry.mode, self.tier, self.key
        )
    }

    fn parse(s: &str) -> Option<Name> {
        let mut it = s.split('-');
        let eip = u32::from_str_radix(it.next()?, 16).ok()?;
        let cs_base = u32::from_str_radix(it.next()?, 16).ok()?;
        let mode = u8::from_str_radix(it.next()?, 16).ok()?;
        let tier = it.next()?.strip_prefix('t')?.parse().ok()?;
        let key = u128::from_str_radix(it.next()?, 16).ok()?;
        it.next().is_none().then_some(Name {
            entry: Entry { eip, cs_base, mode },
            tier,
            key,
        })
    }
}

/// Which tiers the cache holds for each entry (bit `t` for tier `t`).
pub type Index = HashMap<Entry, u8>;

/// What happened to a look-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// No such entry.
    Absent,
    /// The entry was bad (and is deleted): why.
    Bad(String),
    /// The entry.
    Found(Image),
}

/// A translation cache directory.
#[derive(Debug, Clone)]
pub struct DiskCache {
    root: PathBuf,
    /// This translator's entries.
    dir: PathBuf,
    /// The translator's version with the host ISA's settings.
    version: u128,
    max_bytes: u64,
    /// Bytes stored under `root`, once counted.
    bytes: Option<u64>,
    serial: u64,
}

impl DiskCache {
    /// The cache under `root` for the translator whose code generators are described
    /// by `isa` (their settings: host features the code may use), at most `max_bytes`.
    pub fn open(root: &Path, isa: &str, max_bytes: u64) -> std::io::Result<DiskCache> {
        let version = xxh3_128(format!("{TRANSLATOR}\n{isa}").as_bytes());
        let dir = root.join(format!("{version:032x}"));
        fs::create_dir_all(&dir)?;
        Ok(DiskCache {
            root: root.to_path_buf(),
            dir,
            version,
            max_bytes,
            bytes: None,
            serial: 0,
        })
    }

    /// The entries there are now.
    pub fn index(&self) -> Index {
        let mut index = Index::new();
        if let Ok(rd) = fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if let Some(n) = e.file_name().to_str().and_then(Name::parse) {
                    if n.tier < 8 {
                        *index.entry(n.entry).or_default() |= 1 << n.tier;
                    }
                }
            }
        }
        index
    }

    /// Reads entry `name`, checking all of it.
    pub fn load(&self, name: &Name) -> Loaded {
        let path = self.dir.join(name.file_name());
        let bytes = match fs::File::open(&path) {
            Ok(f) => {
                let len = f.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
                if len > MAX_ENTRY {
                    return self.bad(&path, "too large".into());
                }
                let mut v = Vec::with_capacity(len as usize);
                if let Err(e) = std::io::Read::read_to_end(&mut &f, &mut v) {
                    return self.bad(&path, e.to_string());
                }
                // Used now: the last to be evicted.
                let _ = f.set_modified(SystemTime::now());
                v
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Absent,
            Err(e) => return Loaded::Bad(e.to_string()),
        };
        match decode(&bytes, self.version, name.key) {
            Ok(img) => Loaded::Found(img),
            Err(why) => self.bad(&path, why),
        }
    }

    fn bad(&self, path: &Path, why: String) -> Loaded {
        let _ = fs::remove_file(path);
        Loaded::Bad(format!("{}: {why}", path.display()))
    }

    /// Stores entry `name` (errors are ignored: the cache is an optimisation).
    pub fn store(&mut self, name: &Name, img: &Image) {
        let bytes = encode(img, self.version, name.key);
        self.serial += 1;
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}-{}",
            std::process::id(),
            self.serial,
            name.file_name()
        ));
        let written = fs::File::create(&tmp).and_then(|mut f| f.write_all(&bytes));
        if written.is_err() || fs::rename(&tmp, self.dir.join(name.file_name())).is_err() {
            let _ = fs::remove_file(&tmp);
            return;
        }
        let total = match self.bytes {
            Some(b) => b + bytes.len() as u64,
            None => self.scan(false),
        };
        self.bytes = Some(total);
        if total > self.max_bytes {
            self.bytes = Some(self.scan(true));
        }
    }

    /// Counts the bytes stored under the root; with `evict`, first deletes the least
    /// recently used entries until they fit in three quarters of the limit.
    fn scan(&self, evict: bool) -> u64 {
        let mut files: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
        if let Ok(rd) = fs::read_dir(&self.root) {
            for d in rd.flatten() {
                let Ok(inner) = fs::read_dir(d.path()) else {
                    continue;
                };
                for e in inner.flatten() {
                    if let Ok(m) = e.metadata() {
                        let t = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                        files.push((t, m.len(), e.path()));
                    }
                }
            }
        }
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        if evict {
            files.sort();
            let goal = self.max_bytes / 4 * 3;
            for (_, len, path) in files {
                if total <= goal {
                    break;
                }
                if fs::remove_file(&path).is_ok() {
                    total -= len;
                }
            }
            // Old translators' directories, once empty.
            if let Ok(rd) = fs::read_dir(&self.root) {
                for d in rd.flatten() {
                    if d.path() != self.dir {
                        let _ = fs::remove_dir(d.path());
                    }
                }
            }
        }
        total
    }
}

/// Stores entries on a thread of its own, so that the compiler never waits for the
/// file system (file creation and renames can block for milliseconds, which on one
/// CPU delays compiled code by seconds over a boot). Entries still queued when the
/// writer is dropped are written first.
#[derive(Debug)]
pub struct Writer {
    tx: Option<Sender<(Name, Image)>>,
    handle: Option<JoinHandle<()>>,
}

impl Writer {
    /// A writer storing into `cache`.
    pub fn spawn(mut cache: DiskCache) -> Writer {
        let (tx, rx) = unbounded::<(Name, Image)>();
        let handle = std::thread::Builder::new()
            .name("ox86-jit-cache".into())
            .spawn(move || {
                for (name, img) in rx {
                    cache.store(&name, &img);
                }
            })
            .ok();
        Writer {
            tx: handle.as_ref().map(|_| tx),
            handle,
        }
    }

    /// Queues entry `name` for storing.
    pub fn store(&self, name: Name, img: Image) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((name, img));
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn encode(img: &Image, version: u128, key: u128) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + img.code.len() + img.fixups.len() * FIXUP + CHECK);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&FORMAT.to_le_bytes());
    v.extend_from_slice(&version.to_le_bytes());
    v.extend_from_slice(&key.to_le_bytes());
    v.extend_from_slice(&img.align.to_le_bytes());
    for x in [img.shape.blocks, img.shape.insns, img.shape.next_len] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.extend_from_slice(&(img.code.len() as u32).to_le_bytes());
    v.extend_from_slice(&(img.fixups.len() as u32).to_le_bytes());
    v.extend_from_slice(&img.code);
    for f in &img.fixups {
        v.extend_from_slice(&f.offset.to_le_bytes());
        v.extend_from_slice(&f.sym.encode().to_le_bytes());
        v.extend_from_slice(&f.addend.to_le_bytes());
    }
    let check = xxh3_128(&v);
    v.extend_from_slice(&check.to_le_bytes());
    v
}

/// Reads little-endian fields off the front of a byte slice.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn u128(&mut self) -> Result<u128, String> {
        Ok(u128::from_le_bytes(
            self.take(16)?.try_into().expect("16 bytes"),
        ))
    }
}

fn decode(bytes: &[u8], version: u128, key: u128) -> Result<Image, String> {
    if bytes.len() < HEADER + CHECK {
        return Err("truncated".into());
    }
    let (body, check) = bytes.split_at(bytes.len() - CHECK);
    if xxh3_128(body).to_le_bytes() != check {
        return Err("checksum mismatch".into());
    }
    let mut f = Fields(body);
    if f.take(8)? != MAGIC {
        return Err("not an ox86 translation".into());
    }
    if f.u32()? != FORMAT {
        return Err("another format".into());
    }
    if f.u128()? != version {
        return Err("another translator".into());
    }
    if f.u128()? != key {
        return Err("another region".into());
    }
    let align = f.u32()?;
    if !align.is_power_of_two() || align > 4096 {
        return Err(format!("bad alignment {align}"));
    }
    let shape = Shape {
        blocks: f.u32()?,
        insns: f.u32()?,
        next_len: f.u32()?,
    };
    let code_len = f.u32()? as usize;
    let nfix = f.u32()? as usize;
    if f.0.len() != code_len.saturating_add(nfix.saturating_mul(FIXUP)) {
        return Err("bad lengths".into());
    }
    let code = f.take(code_len)?.to_vec();
    let mut fixups = Vec::with_capacity(nfix);
    for _ in 0..nfix {
        let offset = f.u32()?;
        let sym = f.u32()?;
        let sym = Sym::decode(sym).ok_or_else(|| format!("bad symbol {sym:#x}"))?;
        let addend = f.i64()?;
        if offset as usize + 8 > code_len {
            return Err(format!("fixup at {offset:#x} outside the code"));
        }
        fixups.push(Fixup {
            offset,
            sym,
            addend,
        });
    }
    Ok(Image {
        code,
        align,
        fixups,
        shape,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Image {
        Image {
            code: (0..200u8).collect(),
            align: 16,
            fixups: vec![
                Fixup {
                    offset: 3,
                    sym: Sym::Ctx,
                    addend: 0,
                },
                Fixup {
                    offset: 40,
                    sym: Sym::Insn { b: 1, k: 2 },
                    addend: -8,
                },
            ],
            shape: Shape {
                blocks: 2,
                insns: 9,
                next_len: 0,
            },
        }
    }

    fn name(key: u128) -> Name {
        Name {
            entry: Entry {
                eip: 0xc010_0000,
                cs_base: 0,
                mode: 0x19,
            },
            tier: 1,
            key,
        }
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ox86-diskcache-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn names_round_trip() {
        let n = name(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(Name::parse(&n.file_name()), Some(n));
        assert_eq!(Name::parse("junk"), None);
        assert_eq!(Name::parse(&(n.file_name() + "-x")), None);
    }

    #[test]
    fn stored_entries_load_and_are_indexed() {
        let d = tempdir("store");
        let mut c = DiskCache::open(&d, "isa", DEFAULT_MAX_BYTES).unwrap();
        let n = name(7);
        assert_eq!(c.load(&n), Loaded::Absent);
        c.store(&n, &image());
        assert_eq!(c.load(&n), Loaded::Found(image()));
        assert_eq!(c.index().get(&n.entry), Some(&0b10));
        // Another translator does not see it.
        let other = DiskCache::open(&d, "other isa", DEFAULT_MAX_BYTES).unwrap();
        assert_eq!(other.load(&n), Loaded::Absent);
        assert!(other.index().is_empty());
        fs::remove_dir_all(&d).unwrap();
    }

    /// Every single byte flipped, in every bit, is detected and the entry deleted.
    #[test]
    fn every_flipped_byte_is_detected() {
        let d = tempdir("flip");
        let mut c = DiskCache::open(&d, "isa", DEFAULT_MAX_BYTES).unwrap();
        let n = name(9);
        c.store(&n, &image());
        let path = c.dir.join(n.file_name());
        let good = fs::read(&path).unwrap();
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[i] ^= 1 << bit;
                fs::write(&path, &bad).unwrap();
                assert!(
                    matches!(c.load(&n), Loaded::Bad(_)),
                    "byte {i} bit {bit} not detected"
                );
                assert!(!path.exists(), "bad entry kept");
            }
        }
        // Truncated, extended, and another key's entry under this name.
        for bad in [
            &good[..good.len() - 1],
            &[good.clone(), vec![0]].concat()[..],
        ] {
            fs::write(&path, bad).unwrap();
            assert!(matches!(c.load(&n), Loaded::Bad(_)));
        }
        c.store(&name(10), &image());
        fs::rename(c.dir.join(name(10).file_name()), &path).unwrap();
        assert!(matches!(c.load(&n), Loaded::Bad(_)));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_cache_stays_bounded_least_recently_used_first() {
        let d = tempdir("bound");
        let size = encode(&image(), 0, 0).len() as u64;
        let mut c = DiskCache::open(&d, "isa", size * 10).unwrap();
        for k in 0..30u128 {
            c.store(&name(k), &image());
            // Entry 0 is used all along.
            assert!(matches!(c.load(&name(0)), Loaded::Found(_)), "{k}");
            let total: u64 = fs::read_dir(&c.dir)
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum();
            assert!(total <= size * 10, "{total} bytes after {k}");
        }
        assert!(matches!(c.load(&name(29)), Loaded::Found(_)));
        assert_eq!(c.load(&name(1)), Loaded::Absent);
        fs::remove_dir_all(&d).unwrap();
    }
}
