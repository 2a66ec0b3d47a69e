//! Reading a trace file as a stream of records (see [`super::format`]): one chunk in
//! memory at a time, and the block definitions met so far.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use super::format::{self, get_varint, kind};

/// A trace that cannot be read (further): what is wrong, and how far it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceError {
    /// What is wrong.
    pub what: String,
    /// Instructions read before it (0: none).
    pub read: u64,
}

impl std::fmt::Display for TraceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.read > 0 {
            write!(f, "{} (read up to {} instructions)", self.what, self.read)
        } else {
            f.write_str(&self.what)
        }
    }
}

impl std::error::Error for TraceError {}

/// The file's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Format version.
    pub version: u32,
    /// Flags (none defined yet).
    pub flags: u32,
    /// Instruction count of the first instruction traced.
    pub start: u64,
    /// Identity of the machine traced (guest and RAM size, as snapshots name it).
    pub machine: u128,
}

/// The end record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    /// The recording stopped before the run (a write failed, the disk filled): the
    /// trace is whole up to `end`.
    pub stopped_early: bool,
    /// Instruction count after the last instruction traced.
    pub end: u64,
    /// Instructions traced.
    pub instructions: u64,
}

/// A block's definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDef {
    /// CS base.
    pub cs_base: u64,
    /// EIP of the first instruction.
    pub eip: u64,
    /// Physical address of the first byte.
    pub phys: u64,
    /// Frame of the next page, when the last instruction crosses the page end (else 0).
    pub phys2: u64,
    /// Code size in bits (16 or 32).
    pub bitness: u32,
    /// Instructions.
    pub insns: u32,
    /// The code bytes.
    pub bytes: Vec<u8>,
}

impl BlockDef {
    /// Linear address of the first instruction.
    pub fn lin(&self) -> u64 {
        self.cs_base.wrapping_add(self.eip) & 0xffff_ffff
    }

    /// The block's instructions (iced-x86), each with its EIP as IP.
    pub fn decode(&self) -> Box<[iced_x86::Instruction]> {
        let mask = if self.bitness == 16 {
            0xffff
        } else {
            0xffff_ffff
        };
        let mut d = iced_x86::Decoder::with_ip(
            self.bitness,
            &self.bytes,
            self.eip,
            iced_x86::DecoderOptions::NONE,
        );
        let mut v = Vec::with_capacity(self.insns as usize);
        let mut ip = self.eip;
        while v.len() < self.insns as usize && d.can_decode() {
            d.set_ip(ip);
            let mut i = d.decode();
            i.set_ip(ip);
            ip = (ip + i.len() as u64) & mask;
            v.push(i);
        }
        v.into_boxed_slice()
    }
}

/// A record, with the instruction count it comes at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// Block `id` ran whole, starting at instruction `icount`.
    Block {
        /// The block (see [`TraceReader::def`]).
        id: u32,
        /// Instruction count of its first instruction.
        icount: u64,
    },
    /// An exception was delivered.
    Exception {
        /// Instruction count (of the instruction that faulted, or the next one).
        icount: u64,
        /// Vector.
        vector: u8,
        /// Error code, if the vector has one.
        error_code: Option<u32>,
        /// Linear address of the instruction that faulted (or the next one).
        lin: u64,
        /// CR2 (the faulting address of a page fault).
        cr2: u64,
    },
    /// An external interrupt was delivered.
    Interrupt {
        /// Instruction count of the next instruction.
        icount: u64,
        /// Vector.
        vector: u8,
    },
    /// The paging and privilege context (at the start, and after each change).
    Context {
        /// Instruction count of the next instruction.
        icount: u64,
        /// CR0.
        cr0: u64,
        /// CR3.
        cr3: u64,
        /// CR4.
        cr4: u64,
        /// CPL.
        cpl: u8,
        /// Bit 0: V86 mode; bit 1: 32-bit code.
        flags: u8,
    },
    /// A port was read or written during the next instruction.
    Port {
        /// Instruction count of the instruction.
        icount: u64,
        /// Written (OUT) rather than read (IN).
        write: bool,
        /// Port.
        port: u16,
        /// Size in bytes.
        size: u8,
        /// Value.
        value: u32,
    },
    /// Guest time (at the start and at the end of the trace).
    Time {
        /// Instruction count.
        icount: u64,
        /// Guest nanoseconds (since the machine started).
        ns: u64,
    },
    /// A memory access (traces recorded with memory accesses).
    Mem {
        /// The instruction that made it (or that an exception or interrupt came
        /// before, when `access.delivery`).
        icount: u64,
        /// The access.
        access: MemAccess,
    },
}

/// A memory access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemAccess {
    /// Linear address.
    pub lin: u64,
    /// Size in bytes (1 to 8; longer accesses are recorded eight bytes a piece).
    pub size: u8,
    /// A write, else a read.
    pub write: bool,
    /// The value read or written.
    pub value: u64,
    /// Made by the delivery of the exception or interrupt recorded before it (the
    /// pushes of its frame), not by an instruction.
    pub delivery: bool,
}

/// Reads a trace file record by record.
pub struct TraceReader {
    file: BufReader<Box<dyn Read>>,
    header: Header,
    defs: Vec<BlockDef>,
    data: Vec<u8>,
    comp: Vec<u8>,
    pos: usize,
    chunk: u64,
    /// Instructions in the current chunk, as its header says.
    chunk_insns: u64,
    chunk_first: u64,
    icount: u64,
    /// Predicts memory accesses (afresh at each chunk).
    pred: format::MemPredictor,
    /// The next memory access is a delivery's.
    delivery: bool,
    end: Option<End>,
    /// Bytes of the file read so far.
    offset: u64,
}

impl std::fmt::Debug for TraceReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceReader")
            .field("header", &self.header)
            .field("icount", &self.icount)
            .finish()
    }
}

impl TraceReader {
    /// Opens trace file `path` and reads its header.
    pub fn open(path: &Path) -> Result<TraceReader, TraceError> {
        let f = File::open(path).map_err(|e| TraceError {
            what: format!("cannot open {}: {e}", path.display()),
            read: 0,
        })?;
        TraceReader::new(Box::new(f))
    }

    /// Reads a trace from `r` (its header first).
    pub fn new(r: Box<dyn Read>) -> Result<TraceReader, TraceError> {
        let mut file = BufReader::with_capacity(1 << 16, r);
        let mut h = [0u8; format::HEADER_LEN];
        let err = |what: &str| TraceError {
            what: what.to_string(),
            read: 0,
        };
        read_full(&mut file, &mut h)
            .map_err(|_| err("not an ox86 trace: too short for its header"))?;
        if &h[..8] != format::MAGIC {
            return Err(err("not an ox86 trace (no OX86TRC header)"));
        }
        let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
        if version != format::VERSION {
            return Err(err(&format!(
                "trace format version {version}; this ox86 reads version {}",
                format::VERSION
            )));
        }
        let sum = u64::from_le_bytes(h[40..48].try_into().expect("8 bytes"));
        if xxhash_rust::xxh3::xxh3_64(&h[..40]) != sum {
            return Err(err("the trace's header is corrupt (checksum)"));
        }
        let header = Header {
            version,
            flags: u32::from_le_bytes(h[12..16].try_into().expect("4 bytes")),
            start: u64::from_le_bytes(h[16..24].try_into().expect("8 bytes")),
            machine: u128::from_le_bytes(h[24..40].try_into().expect("16 bytes")),
        };
        Ok(TraceReader {
            file,
            header,
            defs: Vec::new(),
            data: Vec::new(),
            comp: Vec::new(),
            pos: 0,
            chunk: 0,
            chunk_insns: 0,
            chunk_first: header.start,
            icount: header.start,
            pred: format::MemPredictor::new(header.start),
            delivery: false,
            end: None,
            offset: format::HEADER_LEN as u64,
        })
    }

    /// Whether the trace records memory accesses.
    pub fn has_memory(&self) -> bool {
        self.header.flags & format::FLAG_MEMORY != 0
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The end record, once [`TraceReader::next_record`] returned None.
    pub fn end(&self) -> Option<&End> {
        self.end.as_ref()
    }

    /// Block `id`'s definition (it comes before the block's first record).
    pub fn def(&self, id: u32) -> &BlockDef {
        &self.defs[id as usize]
    }

    /// Blocks defined so far.
    pub fn defs(&self) -> &[BlockDef] {
        &self.defs
    }

    /// The instruction count after what was read.
    pub fn icount(&self) -> u64 {
        self.icount
    }

    /// Bytes of the file read so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn error(&self, what: String) -> TraceError {
        TraceError {
            what,
            read: self.icount - self.header.start,
        }
    }

    /// The next record; None at the end record.
    pub fn next_record(&mut self) -> Result<Option<Record>, TraceError> {
        loop {
            if self.end.is_some() {
                return Ok(None);
            }
            if self.pos >= self.data.len() {
                if !self.next_chunk()? {
                    return Ok(None);
                }
                continue;
            }
            let bad = |r: &TraceReader, what: &str| {
                r.error(format!("chunk {} is malformed: {what}", r.chunk))
            };
            let v = get_varint(&self.data, &mut self.pos).ok_or_else(|| bad(self, "a record"))?;
            if v & 1 == 0 {
                let id = v >> 1;
                let Some(d) = self.defs.get(id as usize) else {
                    return Err(bad(self, &format!("block {id} is not defined")));
                };
                let icount = self.icount;
                self.icount += u64::from(d.insns);
                return Ok(Some(Record::Block {
                    id: id as u32,
                    icount,
                }));
            }
            let k = v >> 1;
            let f = |r: &mut TraceReader| {
                get_varint(&r.data, &mut r.pos).ok_or_else(|| bad(r, "a record's fields"))
            };
            let icount = self.icount;
            match k {
                kind::DEF => {
                    let cs_base = f(self)?;
                    let eip = f(self)?;
                    let phys = f(self)?;
                    let phys2 = f(self)?;
                    let bitness = f(self)?;
                    let insns = f(self)?;
                    let n = f(self)? as usize;
                    if !matches!(bitness, 16 | 32 | 64)
                        || insns == 0
                        || insns > format::MAX_BLOCK_INSNS as u64
                        || n > insns as usize * 15
                    {
                        return Err(bad(self, "a block definition"));
                    }
                    let Some(bytes) = self.data.get(self.pos..self.pos + n) else {
                        return Err(bad(self, "a block definition's bytes"));
                    };
                    let bytes = bytes.to_vec();
                    self.pos += n;
                    self.defs.push(BlockDef {
                        cs_base,
                        eip,
                        phys,
                        phys2,
                        bitness: bitness as u32,
                        insns: insns as u32,
                        bytes,
                    });
                }
                kind::EXCEPTION => {
                    let vector = f(self)? as u8;
                    let code = f(self)?;
                    let lin = f(self)?;
                    let cr2 = f(self)?;
                    return Ok(Some(Record::Exception {
                        icount,
                        vector,
                        error_code: code.checked_sub(1).map(|c| c as u32),
                        lin,
                        cr2,
                    }));
                }
                kind::INTERRUPT => {
                    let vector = f(self)? as u8;
                    return Ok(Some(Record::Interrupt { icount, vector }));
                }
                kind::CONTEXT => {
                    let (cr0, cr3, cr4) = (f(self)?, f(self)?, f(self)?);
                    let (cpl, flags) = (f(self)? as u8, f(self)? as u8);
                    return Ok(Some(Record::Context {
                        icount,
                        cr0,
                        cr3,
                        cr4,
                        cpl,
                        flags,
                    }));
                }
                kind::PORT_IN | kind::PORT_OUT => {
                    let (port, size, value) = (f(self)?, f(self)?, f(self)?);
                    return Ok(Some(Record::Port {
                        icount,
                        write: k == kind::PORT_OUT,
                        port: port as u16,
                        size: size as u8,
                        value: value as u32,
                    }));
                }
                kind::TIME => {
                    let ns = f(self)?;
                    return Ok(Some(Record::Time { icount, ns }));
                }
                kind::DELIVERY => {
                    self.delivery = true;
                }
                kind::MEM..=kind::MEM_LAST => {
                    let flags = k - kind::MEM;
                    let size = (flags & 7) + 1;
                    let (delta, addr) = (f(self)?, f(self)?);
                    if delta > u64::from(u32::MAX) {
                        return Err(bad(self, "a memory access"));
                    }
                    let lin = self
                        .pred
                        .address()
                        .wrapping_add(format::unzigzag(addr) as u64)
                        & 0xffff_ffff;
                    let value = if flags & format::MEM_PREDICTED != 0 {
                        self.pred
                            .value(lin, size)
                            .ok_or_else(|| bad(self, "a memory access with no predicted value"))?
                    } else {
                        f(self)?
                    };
                    self.pred.access(lin, size, value);
                    let at = self.pred.last.saturating_add(delta);
                    if at < icount {
                        return Err(bad(self, "a memory access of an instruction before"));
                    }
                    self.pred.last = at;
                    return Ok(Some(Record::Mem {
                        icount: at,
                        access: MemAccess {
                            lin,
                            size: size as u8,
                            write: flags & format::MEM_WRITE != 0,
                            value,
                            delivery: std::mem::take(&mut self.delivery),
                        },
                    }));
                }
                _ => return Err(bad(self, &format!("unknown record kind {k}"))),
            }
        }
    }

    /// Reads the next chunk, or the end record (then false).
    fn next_chunk(&mut self) -> Result<bool, TraceError> {
        if self.chunk > 0 && self.icount != self.chunk_first + self.chunk_insns {
            return Err(self.error(format!(
                "chunk {} holds {} instructions, its header says {}",
                self.chunk,
                self.icount - self.chunk_first,
                self.chunk_insns
            )));
        }
        let mut tag = [0u8; 4];
        let truncated = |r: &TraceReader| {
            r.error(format!(
                "the trace is truncated after chunk {} (no end record: the run that wrote it did not finish)",
                r.chunk
            ))
        };
        read_full(&mut self.file, &mut tag).map_err(|_| truncated(self))?;
        if &tag == format::END_TAG {
            let mut e = [0u8; format::END_LEN];
            e[..4].copy_from_slice(&tag);
            read_full(&mut self.file, &mut e[4..]).map_err(|_| truncated(self))?;
            let sum = u64::from_le_bytes(e[24..32].try_into().expect("8 bytes"));
            if xxhash_rust::xxh3::xxh3_64(&e[..24]) != sum {
                return Err(self.error("the end record is corrupt (checksum)".into()));
            }
            let end = End {
                stopped_early: u32::from_le_bytes(e[4..8].try_into().expect("4 bytes"))
                    & format::END_STOPPED_EARLY
                    != 0,
                end: u64::from_le_bytes(e[8..16].try_into().expect("8 bytes")),
                instructions: u64::from_le_bytes(e[16..24].try_into().expect("8 bytes")),
            };
            if end.end != self.icount || end.instructions != self.icount - self.header.start {
                return Err(self.error(format!(
                    "the end record says instruction {}, the chunks end at {}",
                    end.end, self.icount
                )));
            }
            self.offset += format::END_LEN as u64;
            self.end = Some(end);
            return Ok(false);
        }
        if &tag != format::CHUNK_TAG {
            return Err(self.error(format!(
                "chunk {} is corrupt (no chunk tag)",
                self.chunk + 1
            )));
        }
        let mut h = [0u8; format::CHUNK_HEADER_LEN];
        h[..4].copy_from_slice(&tag);
        read_full(&mut self.file, &mut h[4..]).map_err(|_| truncated(self))?;
        let clen = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")) as usize;
        let len = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes")) as usize;
        let first = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
        let insns = u64::from_le_bytes(h[24..32].try_into().expect("8 bytes"));
        let sum = u64::from_le_bytes(h[32..40].try_into().expect("8 bytes"));
        self.chunk += 1;
        if len > format::CHUNK_MAX || clen > lz4_flex::block::get_maximum_output_size(len) {
            return Err(self.error(format!("chunk {} is corrupt (its sizes)", self.chunk)));
        }
        self.comp.resize(clen, 0);
        read_full(&mut self.file, &mut self.comp).map_err(|_| {
            self.error(format!(
                "the trace is truncated in chunk {} (no end record: the run that wrote it did not finish)",
                self.chunk
            ))
        })?;
        if format::chunk_sum(&h[..32], &self.comp) != sum {
            return Err(self.error(format!("chunk {} is corrupt (checksum)", self.chunk)));
        }
        if first != self.icount {
            return Err(self.error(format!(
                "chunk {} starts at instruction {first}, the one before ends at {}",
                self.chunk, self.icount
            )));
        }
        self.data.resize(len, 0);
        match lz4_flex::block::decompress_into(&self.comp, &mut self.data) {
            Ok(n) if n == len => {}
            _ => {
                return Err(self.error(format!("chunk {} is corrupt (its data)", self.chunk)));
            }
        }
        self.offset += (format::CHUNK_HEADER_LEN + clen) as u64;
        self.pos = 0;
        self.pred.reset(first);
        self.chunk_first = first;
        self.chunk_insns = insns;
        Ok(true)
    }
}

/// Reads exactly `buf.len()` bytes.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<()> {
    r.read_exact(buf)
}
