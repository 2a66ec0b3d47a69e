//! The trace writer: a thread that takes the CPU's raw buffers (see
//! [`ox86_cpu::trace`]), turns the engines' blocks into the file's canonical blocks
//! (see [`super::format`]), and writes compressed chunks.
//!
//! The engines' blocks differ (an interpreter block, a guest block of a compiled
//! region, cut wherever a budget ended); the writer walks their instructions and cuts
//! where the format says, so that the same execution gives the same file. Walking is
//! paid once per engine block: a block run whole that makes one canonical block
//! remembers which, and the next run of it costs an array look-up.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam::channel::{bounded, unbounded, Receiver, Sender};
use ox86_cpu::trace::{self as raw, TraceOut, BUFFER_WORDS, EVENT, FLOW};

use super::format::{self, kind, put_varint, CHUNK_TARGET, MAX_BLOCK_INSNS};

/// Buffers in flight between the CPU and the writer, at most.
const BUFFERS: usize = 12;
const NONE: u32 = u32::MAX;

/// What a finished trace holds.
#[derive(Debug, Clone, Default)]
pub struct TraceSummary {
    /// Instructions traced.
    pub instructions: u64,
    /// Instruction count at the start and at the end.
    pub start: u64,
    /// Instruction count at the end.
    pub end: u64,
    /// Blocks written.
    pub blocks: u64,
    /// Distinct blocks defined.
    pub defs: u64,
    /// Memory accesses recorded.
    pub accesses: u64,
    /// Bytes of the file.
    pub bytes: u64,
}

enum Msg {
    Full(Box<[u64]>, usize),
    Finish,
}

/// The CPU's side: hands full buffers to the writer thread.
struct Handoff {
    tx: Sender<Msg>,
    free: Receiver<Box<[u64]>>,
    made: usize,
}

impl TraceOut for Handoff {
    fn hand_off(&mut self, buf: Box<[u64]>, len: usize) -> Box<[u64]> {
        // A writer that stopped drops what it is sent; the machine ends the run.
        let _ = self.tx.send(Msg::Full(buf, len));
        if let Ok(b) = self.free.try_recv() {
            return b;
        }
        if self.made < BUFFERS {
            self.made += 1;
            return vec![0u64; BUFFER_WORDS].into_boxed_slice();
        }
        self.free
            .recv()
            .unwrap_or_else(|_| vec![0u64; BUFFER_WORDS].into_boxed_slice())
    }
}

/// A trace being written: the writer thread and what the CPU's sink needs.
pub struct TraceWriter {
    tx: Sender<Msg>,
    thread: Option<JoinHandle<Result<TraceSummary, String>>>,
    error: Arc<Mutex<Option<String>>>,
    path: PathBuf,
}

impl std::fmt::Debug for TraceWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceWriter")
            .field("path", &self.path)
            .finish()
    }
}

impl TraceWriter {
    /// Creates trace file `path` for a trace starting at instruction `start` of
    /// machine `machine` (header flags `flags`, see [`format::FLAG_MEMORY`]), and
    /// starts its writer thread. Returns the writer and the
    /// sink's output.
    pub fn create(
        path: &Path,
        start: u64,
        machine: u128,
        flags: u32,
    ) -> Result<(TraceWriter, Box<dyn TraceOut>), String> {
        let file = File::create(path).map_err(|e| e.to_string())?;
        TraceWriter::start(Dest::File(file), path, start, machine, flags)
    }

    /// As [`TraceWriter::create`], writing the trace to `out` (a stream: a failed
    /// write ends it where it is).
    pub fn to_stream(
        out: Box<dyn Write + Send>,
        start: u64,
        machine: u128,
        flags: u32,
    ) -> Result<(TraceWriter, Box<dyn TraceOut>), String> {
        TraceWriter::start(
            Dest::Stream(out),
            Path::new("(hooks)"),
            start,
            machine,
            flags,
        )
    }

    fn start(
        mut dest: Dest,
        path: &Path,
        start: u64,
        machine: u128,
        flags: u32,
    ) -> Result<(TraceWriter, Box<dyn TraceOut>), String> {
        dest.write_all(&format::header(flags, start, machine))
            .map_err(|e| e.to_string())?;
        let (tx, rx) = unbounded::<Msg>();
        let (free_tx, free_rx) = bounded::<Box<[u64]>>(BUFFERS);
        let error = Arc::new(Mutex::new(None));
        let err2 = error.clone();
        let output = Output::new(dest, start)?;
        let thread = std::thread::Builder::new()
            .name("ox86-trace".into())
            .spawn(move || {
                let mut c = Canon::new(output);
                let mut failed = false;
                for m in rx {
                    match m {
                        Msg::Full(buf, len) => {
                            if !failed {
                                if let Err(e) = c.feed(&buf[..len]) {
                                    failed = true;
                                    c.out.stop_early();
                                    if let Ok(mut g) = err2.lock() {
                                        *g = Some(e);
                                    }
                                }
                            }
                            let _ = free_tx.try_send(buf);
                        }
                        Msg::Finish => break,
                    }
                }
                if failed {
                    c.out.abandon();
                    let e = err2.lock().ok().and_then(|g| g.clone());
                    return Err(e.unwrap_or_else(|| "the trace writer failed".into()));
                }
                c.finish()
            })
            .map_err(|e| e.to_string())?;
        let out = Handoff {
            tx: tx.clone(),
            free: free_rx,
            made: 0,
        };
        Ok((
            TraceWriter {
                tx,
                thread: Some(thread),
                error,
                path: path.to_path_buf(),
            },
            Box::new(out),
        ))
    }

    /// The trace file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why writing failed, once it has (the run should end: what follows is lost).
    pub fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|g| g.clone())
    }

    /// Waits for the writer to write everything it was handed (the sink must have
    /// been finished) and the end record.
    pub fn finish(mut self) -> Result<TraceSummary, String> {
        let _ = self.tx.send(Msg::Finish);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            _ => Err("the trace writer stopped".into()),
        }
    }
}

/// An engine block, as its definition gave it.
struct Raw {
    eip: u64,
    cs_base: u64,
    phys: u64,
    phys2: u64,
    bitness: u32,
    /// Length and flow byte of each instruction.
    lens: Vec<u8>,
    /// Offset of each instruction in `bytes`.
    offs: Vec<u16>,
    bytes: Vec<u8>,
    /// What running the whole of it did before, from each prefix state it started in.
    trans: Vec<(u32, Trans)>,
}

/// What running a whole engine block from a prefix state does: the canonical blocks
/// it completes, and the prefix state it leaves.
#[derive(Clone, Copy)]
struct Trans {
    emit: [u32; 3],
    n_emit: u8,
    next: u32,
}

/// A canonical block's identity (also of a prefix state: a block not complete yet).
#[derive(Hash, PartialEq, Eq, Clone)]
struct Key {
    cs_base: u64,
    eip: u64,
    phys: u64,
    phys2: u64,
    bitness: u32,
    bytes: Box<[u8]>,
}

/// The canonical block being put together.
#[derive(Default, Clone)]
struct Cur {
    n: u32,
    cs_base: u64,
    eip: u64,
    phys: u64,
    phys2: u64,
    bitness: u32,
    bytes: Vec<u8>,
    next_eip: u64,
    next_phys: u64,
    page: u64,
}

impl Cur {
    /// The identity of the block put together so far.
    fn key(&self) -> Key {
        Key {
            cs_base: self.cs_base,
            eip: self.eip,
            phys: self.phys,
            phys2: self.phys2,
            bitness: self.bitness,
            bytes: self.bytes.as_slice().into(),
        }
    }
}

/// The engine block running: its raw id, the count it started at, and how many of
/// its instructions are accounted for.
#[derive(Clone, Copy)]
struct Pending {
    raw: u32,
    start: u64,
    done: u64,
}

/// The canonicaliser.
struct Canon {
    raws: Vec<Option<Raw>>,
    /// Each raw block's instruction count (0: not defined), and the canonical block
    /// the whole of it makes from an empty start when that is all it does (NONE: not
    /// known): the hot path's look-ups, kept dense.
    raw_n: Vec<u8>,
    raw_memo: Vec<u32>,
    keys: HashMap<Key, u32>,
    /// Instructions of each canonical block.
    lens: Vec<u32>,
    icount: u64,
    pending: Option<Pending>,
    /// The canonical block being put together, when `live`; else it is prefix state
    /// `state` (NONE: empty).
    cur: Cur,
    live: bool,
    state: u32,
    /// Prefix states: canonical blocks put together up to the end of an engine block.
    states: Vec<Cur>,
    state_ids: HashMap<Key, u32>,
    /// Canonical blocks completed by the walk under way.
    emitted: Vec<u32>,
    out: Output,
    stopped: bool,
    /// An exception or interrupt is being delivered: its memory accesses come before
    /// the next block.
    delivering: bool,
}

fn mask_ip(v: u64, bitness: u32) -> u64 {
    if bitness == 16 {
        v & 0xffff
    } else {
        v & 0xffff_ffff
    }
}

impl Canon {
    fn new(out: Output) -> Canon {
        Canon {
            raws: Vec::new(),
            raw_n: Vec::new(),
            raw_memo: Vec::new(),
            keys: HashMap::new(),
            lens: Vec::new(),
            icount: out.first,
            pending: None,
            cur: Cur::default(),
            live: false,
            state: NONE,
            states: Vec::new(),
            state_ids: HashMap::new(),
            emitted: Vec::new(),
            out,
            stopped: false,
            delivering: false,
        }
    }

    /// Takes a buffer of raw words.
    fn feed(&mut self, words: &[u64]) -> Result<(), String> {
        let mut i = 0;
        while i < words.len() {
            let w = words[i];
            i += 1;
            let lo = w as u32;
            // The full count: records never go back, nor more than 2^32 forward.
            let at = self.icount.wrapping_add(u64::from(
                ((w >> 32) as u32).wrapping_sub(self.icount as u32),
            ));
            if lo & raw::MEM_MASK == raw::MEM {
                // A memory access (the commonest record when they are traced).
                let v = *words.get(i).ok_or("a raw event runs past its buffer")?;
                i += 1;
                if !self.stopped {
                    self.mem(w, v)?;
                }
                continue;
            }
            if lo < EVENT {
                self.delivering = false;
                // The hot path: the block before ran whole from an empty start and
                // makes one canonical block it made before.
                if let Some(p) = self.pending.as_mut() {
                    let raw = p.raw as usize;
                    let n = u64::from(self.raw_n[raw]);
                    let memo = self.raw_memo[raw];
                    if p.done == 0
                        && at == self.icount + n
                        && memo != NONE
                        && !self.live
                        && self.state == NONE
                        && !self.stopped
                        && self.raw_n.get(lo as usize).is_some_and(|&n| n > 0)
                    {
                        self.out.block(memo, n);
                        self.icount = at;
                        *p = Pending {
                            raw: lo,
                            start: at,
                            done: 0,
                        };
                        continue;
                    }
                }
                self.block(lo, at)?;
                continue;
            }
            let k = (lo >> 16) & 0xfff;
            let n = (lo & 0xffff) as usize;
            let p = words
                .get(i..i + n)
                .ok_or("a raw event runs past its buffer")?;
            i += n;
            self.event(k, at, p)?;
        }
        match self.out.failed() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Block `raw` starts at `at`.
    fn block(&mut self, raw: u32, at: u64) -> Result<(), String> {
        if self.stopped {
            return Ok(());
        }
        self.advance(at)?;
        if self.raw_n.get(raw as usize).is_none_or(|&n| n == 0) {
            return Err(format!("raw block {raw} used before its definition"));
        }
        self.pending = Some(Pending {
            raw,
            start: at,
            done: 0,
        });
        Ok(())
    }

    /// Accounts for the instructions of the pending block up to count `at`.
    fn advance(&mut self, at: u64) -> Result<(), String> {
        if at < self.icount {
            return Err(format!(
                "raw record at {at} after instruction {}",
                self.icount
            ));
        }
        let Some(mut p) = self.pending else {
            if at != self.icount {
                return Err(format!(
                    "{} instructions ran outside any block at {}",
                    at - self.icount,
                    self.icount
                ));
            }
            return Ok(());
        };
        let count = at - self.icount;
        if count == 0 {
            return Ok(());
        }
        let raw = p.raw as usize;
        let r = self.raws[raw].as_ref().expect("checked when it started");
        let n = r.lens.len() as u64;
        if p.done + count > n {
            return Err(format!(
                "the block of {n} instructions at {:#x} (raw {}) ran {} from instruction {}",
                r.cs_base.wrapping_add(r.eip),
                p.raw,
                p.done + count,
                p.start
            ));
        }
        if p.done == 0 && count == n {
            self.whole(raw);
        } else {
            self.materialize();
            for k in p.done..p.done + count {
                self.insn(raw, k as usize);
            }
        }
        p.done += count;
        self.icount = at;
        self.pending = Some(p);
        Ok(())
    }

    /// The whole of raw block `raw` runs: what it did from the same prefix state
    /// before, else a walk of its instructions (remembered).
    fn whole(&mut self, raw: usize) {
        if !self.live {
            let memo = self.raw_memo[raw];
            if self.state == NONE && memo != NONE {
                let n = u64::from(self.lens[memo as usize]);
                self.out.block(memo, n);
                return;
            }
            let r = self.raws[raw].as_ref().expect("defined");
            let state = self.state;
            if let Some(&(_, t)) = r.trans.iter().find(|(s, _)| *s == state) {
                for &id in &t.emit[..usize::from(t.n_emit)] {
                    let n = u64::from(self.lens[id as usize]);
                    self.out.block(id, n);
                }
                self.state = t.next;
                return;
            }
        }
        self.materialize();
        let from = self.state_of_cur();
        self.emitted.clear();
        let n = self.raws[raw].as_ref().expect("defined").lens.len();
        for k in 0..n {
            self.insn(raw, k);
        }
        let next = self.state_of_cur();
        if self.emitted.len() <= 3 {
            let mut emit = [NONE; 3];
            emit[..self.emitted.len()].copy_from_slice(&self.emitted);
            let t = Trans {
                emit,
                n_emit: self.emitted.len() as u8,
                next,
            };
            let r = self.raws[raw].as_mut().expect("defined");
            if from == NONE && next == NONE && t.n_emit == 1 {
                self.raw_memo[raw] = emit[0];
            } else if r.trans.len() < 8 {
                r.trans.push((from, t));
            }
        }
        self.live = false;
        self.state = next;
    }

    /// Makes the prefix state the canonical block being put together.
    fn materialize(&mut self) {
        if !self.live {
            self.cur = match self.state {
                NONE => Cur::default(),
                s => self.states[s as usize].clone(),
            };
            self.live = true;
        }
    }

    /// The prefix state of the canonical block being put together (interned).
    fn state_of_cur(&mut self) -> u32 {
        let c = &self.cur;
        if c.n == 0 {
            return NONE;
        }
        let key = c.key();
        if let Some(&s) = self.state_ids.get(&key) {
            return s;
        }
        let s = self.states.len() as u32;
        self.states.push(c.clone());
        self.state_ids.insert(key, s);
        s
    }

    /// Instruction `k` of raw block `raw` runs (the canonical block being put
    /// together is live); returns the canonical block it completed, if it did.
    fn insn(&mut self, raw: usize, k: usize) -> Option<u32> {
        let r = self.raws[raw].as_ref()?;
        let off = u64::from(r.offs[k]);
        let lb = r.lens[k];
        let len = u64::from(lb & 0x0f);
        let eip = mask_ip(r.eip + off, r.bitness);
        let lin = r.cs_base.wrapping_add(eip) & 0xffff_ffff;
        let phys = r.phys + off;
        let c = &self.cur;
        let mut done = None;
        if c.n > 0
            && !(c.cs_base == r.cs_base
                && c.bitness == r.bitness
                && c.next_eip == eip
                && c.next_phys == phys
                && c.page == lin >> 12
                && (c.n as usize) < MAX_BLOCK_INSNS)
        {
            done = self.flush();
        }
        let r = self.raws[raw].as_ref()?;
        let c = &mut self.cur;
        if c.n == 0 {
            c.cs_base = r.cs_base;
            c.eip = eip;
            c.phys = phys;
            c.phys2 = 0;
            c.bitness = r.bitness;
            c.bytes.clear();
            c.page = lin >> 12;
        }
        let start = off as usize;
        c.bytes
            .extend_from_slice(&r.bytes[start..start + len as usize]);
        c.n += 1;
        c.next_eip = mask_ip(eip + len, r.bitness);
        c.next_phys = phys + len;
        if (phys & 0xfff) + len > 0x1000 {
            c.phys2 = r.phys2;
        }
        if lb & FLOW != 0 {
            done = self.flush();
        }
        done
    }

    /// Writes the canonical block put together, if any; returns its id.
    fn flush(&mut self) -> Option<u32> {
        self.materialize();
        if self.cur.n == 0 {
            return None;
        }
        let c = &mut self.cur;
        let key = c.key();
        let n = c.n;
        c.n = 0;
        let id = match self.keys.get(&key) {
            Some(&id) => id,
            None => {
                let id = self.lens.len() as u32;
                self.out.def(&key, n);
                self.lens.push(n);
                self.keys.insert(key, id);
                id
            }
        };
        self.out.block(id, u64::from(n));
        self.emitted.push(id);
        Some(id)
    }

    /// Ends the canonical block being put together (an event comes next).
    fn end_block(&mut self) {
        if self.live || self.state != NONE {
            self.flush();
        }
        self.live = false;
        self.state = NONE;
    }

    /// A raw event of kind `k` at count `at` with payload `p`.
    fn event(&mut self, k: u32, at: u64, p: &[u64]) -> Result<(), String> {
        let field = |i: usize| p.get(i).copied().ok_or("a raw event is too short");
        match k {
            raw::kind::START => {
                self.icount = field(0)?;
                self.out.first = self.icount;
                Ok(())
            }
            raw::kind::DEF => self.define(p),
            _ if self.stopped => Ok(()),
            raw::kind::STOP => {
                self.advance(at)?;
                self.end_block();
                self.pending = None;
                self.stopped = true;
                Ok(())
            }
            raw::kind::EXCEPTION
            | raw::kind::INTERRUPT
            | raw::kind::CONTEXT
            | raw::kind::PORT_IN
            | raw::kind::PORT_OUT
            | raw::kind::TIME => {
                self.advance(at)?;
                self.end_block();
                let (fk, nf) = match k {
                    raw::kind::EXCEPTION => (kind::EXCEPTION, 4),
                    raw::kind::INTERRUPT => (kind::INTERRUPT, 1),
                    raw::kind::CONTEXT => (kind::CONTEXT, 5),
                    raw::kind::PORT_IN => (kind::PORT_IN, 3),
                    raw::kind::TIME => (kind::TIME, 1),
                    _ => (kind::PORT_OUT, 3),
                };
                if p.len() < nf {
                    return Err("a raw event is too short".into());
                }
                self.out.event(fk, &p[..nf]);
                if matches!(k, raw::kind::EXCEPTION | raw::kind::INTERRUPT) {
                    self.delivering = true;
                }
                Ok(())
            }
            _ => Err(format!("unknown raw event kind {k}")),
        }
    }

    /// A memory access (raw record `w`, value `v`, see `ox86_cpu::trace::MEM`):
    /// written at once (see `format`).
    #[inline]
    fn mem(&mut self, w: u64, v: u64) -> Result<(), String> {
        // The instruction is at most 2^16 - 1 after the next block to be written.
        let base = self.out.next_count();
        let at = base + u64::from((w as u16).wrapping_sub(base as u16));
        if at < self.icount {
            return Err(format!(
                "a memory access at {at} after instruction {}",
                self.icount
            ));
        }
        let lo = w as u32;
        let mut flags = u64::from((lo >> 20) & 7);
        if lo & raw::MEM_WRITE != 0 {
            flags |= format::MEM_WRITE;
        }
        self.out.mem(at, flags, w >> 32, v, self.delivering);
        Ok(())
    }

    fn define(&mut self, p: &[u64]) -> Result<(), String> {
        if p.len() < 6 {
            return Err("a raw definition is too short".into());
        }
        let id = p[0] as usize;
        let meta = p[5];
        let bitness = (meta & 0xff) as u32;
        let n = ((meta >> 8) & 0xffff) as usize;
        let nbytes = ((meta >> 24) & 0xffff) as usize;
        let lw = n.div_ceil(8);
        let bw = nbytes.div_ceil(8);
        if p.len() < 6 + lw + bw || n == 0 || n > 255 {
            return Err("a raw definition is malformed".into());
        }
        let lens = raw::unpack(&p[6..6 + lw], n);
        let bytes = raw::unpack(&p[6 + lw..6 + lw + bw], nbytes);
        let mut offs = Vec::with_capacity(n);
        let mut o = 0usize;
        for &l in &lens {
            offs.push(o as u16);
            o += usize::from(l & 0x0f);
        }
        if o != nbytes || lens.iter().any(|&l| l & 0x0f == 0) {
            return Err("a raw definition's lengths do not add up".into());
        }
        if id >= self.raws.len() {
            if id > self.raws.len() + (1 << 24) {
                return Err(format!("raw id {id} out of range"));
            }
            self.raws.resize_with(id + 1, || None);
            self.raw_n.resize(id + 1, 0);
            self.raw_memo.resize(id + 1, NONE);
        }
        self.raw_n[id] = n as u8;
        self.raw_memo[id] = NONE;
        self.raws[id] = Some(Raw {
            eip: p[1],
            cs_base: p[2],
            phys: p[3],
            phys2: p[4],
            bitness,
            lens,
            offs,
            bytes,
            trans: Vec::new(),
        });
        Ok(())
    }

    fn finish(mut self) -> Result<TraceSummary, String> {
        self.end_block();
        let end = self.icount;
        self.out.finish(end)
    }
}

/// Where the trace goes.
enum Dest {
    File(File),
    Stream(Box<dyn Write + Send>),
}

impl Write for Dest {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Dest::File(f) => f.write(buf),
            Dest::Stream(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Dest::File(f) => f.flush(),
            Dest::Stream(s) => s.flush(),
        }
    }
}

/// The file being written: the chunk being filled, and what was written. Whole chunks
/// go to the packer thread, which compresses and writes them while the next fills.
struct Output {
    /// Predicts memory accesses (afresh at each chunk).
    pred: format::MemPredictor,
    /// Memory accesses written.
    accesses: u64,
    data: Vec<u8>,
    /// Instruction count at the start of the chunk being filled.
    first: u64,
    insns: u64,
    blocks: u64,
    defs: u64,
    start: u64,
    packer: Packer,
    early: bool,
    error: Option<String>,
}

impl Output {
    fn new(file: Dest, start: u64) -> Result<Output, String> {
        Ok(Output {
            pred: format::MemPredictor::new(start),
            accesses: 0,
            data: Vec::with_capacity(CHUNK_TARGET + 4096),
            first: start,
            insns: 0,
            blocks: 0,
            defs: 0,
            start,
            packer: Packer::start(file, start)?,
            early: false,
            error: None,
        })
    }
    #[inline]
    fn block(&mut self, id: u32, n: u64) {
        put_varint(&mut self.data, u64::from(id) << 1);
        self.insns += n;
        self.blocks += 1;
        if self.data.len() >= CHUNK_TARGET {
            self.chunk();
        }
    }

    fn def(&mut self, k: &Key, n: u32) {
        self.defs += 1;
        let d = &mut self.data;
        put_varint(d, (kind::DEF << 1) | 1);
        for v in [
            k.cs_base,
            k.eip,
            k.phys,
            k.phys2,
            u64::from(k.bitness),
            u64::from(n),
        ] {
            put_varint(d, v);
        }
        put_varint(d, k.bytes.len() as u64);
        d.extend_from_slice(&k.bytes);
    }

    /// The instruction count at the next block written.
    #[inline]
    fn next_count(&self) -> u64 {
        self.first + self.insns
    }

    /// Writes a memory access of instruction `at` (see `format`).
    #[inline]
    fn mem(&mut self, at: u64, mut flags: u64, addr: u64, value: u64, delivery: bool) {
        if delivery {
            put_varint(&mut self.data, (kind::DELIVERY << 1) | 1);
        }
        let pred = self.pred.address();
        let hit = self.pred.access(addr, (flags & 7) + 1, value);
        if hit {
            flags |= format::MEM_PREDICTED;
        }
        let d = &mut self.data;
        put_varint(d, ((kind::MEM + flags) << 1) | 1);
        put_varint(d, at - self.pred.last);
        self.pred.last = at;
        put_varint(d, format::zigzag(addr.wrapping_sub(pred) as i64));
        if !hit {
            put_varint(d, value);
        }
        self.accesses += 1;
    }

    fn event(&mut self, k: u64, fields: &[u64]) {
        put_varint(&mut self.data, (k << 1) | 1);
        for &f in fields {
            put_varint(&mut self.data, f);
        }
        if self.data.len() >= CHUNK_TARGET {
            self.chunk();
        }
    }

    /// Hands the chunk being filled to the packer.
    fn chunk(&mut self) {
        if self.data.is_empty() || self.early {
            self.data.clear();
            return;
        }
        if let Some(e) = self.packer.error() {
            self.error = Some(e);
            self.early = true;
            self.data.clear();
            return;
        }
        let next = self
            .packer
            .back
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK_TARGET + 4096));
        let data = std::mem::replace(&mut self.data, next);
        self.packer.send(Job::Chunk {
            data,
            first: self.first,
            insns: self.insns,
        });
        self.first += self.insns;
        self.insns = 0;
        self.pred.reset(self.first);
    }

    /// Why writing failed, once the packer says it did.
    fn failed(&mut self) -> Option<&String> {
        if self.error.is_none() {
            self.error = self.packer.error();
        }
        self.error.as_ref()
    }

    /// The recording stops here (the writer failed): the file ends after its last
    /// whole chunk, marked as stopped early.
    fn stop_early(&mut self) {
        if !self.early {
            self.early = true;
            self.data.clear();
            self.packer.send(Job::StopEarly);
        }
    }

    /// The recording failed: waits for the packer to end the file as stopped early.
    fn abandon(&mut self) {
        self.stop_early();
        self.packer.send(Job::Finish { end: self.first });
        let _ = self.packer.join();
    }

    fn finish(mut self, end: u64) -> Result<TraceSummary, String> {
        self.chunk();
        if let Some(e) = self.error.take() {
            self.abandon();
            return Err(e);
        }
        self.packer.send(Job::Finish { end });
        let (total, bytes) = self.packer.join()?;
        Ok(TraceSummary {
            instructions: total,
            start: self.start,
            end,
            blocks: self.blocks,
            defs: self.defs,
            accesses: self.accesses,
            bytes,
        })
    }
}

/// Work for the packer thread.
enum Job {
    /// A chunk's data, its first instruction count and its instructions.
    Chunk {
        data: Vec<u8>,
        first: u64,
        insns: u64,
    },
    /// End the file after the last whole chunk, as stopped early.
    StopEarly,
    /// End the file at instruction count `end`.
    Finish { end: u64 },
}

/// The packer thread: compresses chunks and writes them.
struct Packer {
    tx: Sender<Job>,
    back: Receiver<Vec<u8>>,
    error: Arc<Mutex<Option<String>>>,
    thread: Option<JoinHandle<Result<(u64, u64), String>>>,
}

impl Packer {
    /// Chunks in flight to the packer, at most.
    const QUEUE: usize = 4;

    fn start(file: Dest, start: u64) -> Result<Packer, String> {
        let (tx, rx) = bounded::<Job>(Packer::QUEUE);
        let (back_tx, back) = bounded::<Vec<u8>>(Packer::QUEUE + 1);
        let error = Arc::new(Mutex::new(None));
        let err = error.clone();
        let thread = std::thread::Builder::new()
            .name("ox86-trace-pack".into())
            .spawn(move || {
                let mut w = Packed {
                    file,
                    comp: Vec::new(),
                    good: format::HEADER_LEN as u64,
                    total: 0,
                    next: start,
                    early: false,
                    error: err,
                };
                for job in rx {
                    match job {
                        Job::Chunk { data, first, insns } => {
                            w.chunk(&data, first, insns);
                            let mut data = data;
                            data.clear();
                            let _ = back_tx.try_send(data);
                        }
                        Job::StopEarly => w.stop_early(),
                        Job::Finish { end } => return w.finish(end),
                    }
                }
                Err("the trace writer stopped".into())
            })
            .map_err(|e| e.to_string())?;
        Ok(Packer {
            tx,
            back,
            error,
            thread: Some(thread),
        })
    }

    fn send(&self, job: Job) {
        // A packer that stopped has said why (see `error`).
        let _ = self.tx.send(job);
    }

    fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|g| g.clone())
    }

    /// Waits for the packer: the instructions and bytes written.
    fn join(&mut self) -> Result<(u64, u64), String> {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            _ => Err("the trace packer stopped".into()),
        }
    }
}

/// The packer's side of the file.
struct Packed {
    file: Dest,
    comp: Vec<u8>,
    /// Bytes of the file that are complete (header and whole chunks).
    good: u64,
    /// Instructions in whole chunks.
    total: u64,
    /// Instruction count after the last whole chunk.
    next: u64,
    early: bool,
    error: Arc<Mutex<Option<String>>>,
}

impl Packed {
    fn chunk(&mut self, data: &[u8], first: u64, insns: u64) {
        if self.early {
            return;
        }
        let max = lz4_flex::block::get_maximum_output_size(data.len());
        if self.comp.len() < max {
            self.comp.resize(max, 0);
        }
        let n = match lz4_flex::block::compress_into(data, &mut self.comp) {
            Ok(n) => n,
            Err(e) => return self.fail(e.to_string()),
        };
        let h = format::chunk_header(&self.comp[..n], data.len(), first, insns);
        let r = self
            .file
            .write_all(&h)
            .and_then(|_| self.file.write_all(&self.comp[..n]));
        match r {
            Ok(()) => {
                self.good += (h.len() + n) as u64;
                self.total += insns;
                self.next = first + insns;
            }
            Err(e) => self.fail(e.to_string()),
        }
    }

    /// A write failed: the file is cut back to its last whole chunk and ended there,
    /// marked as stopped early.
    fn fail(&mut self, e: String) {
        if let Ok(mut g) = self.error.lock() {
            g.get_or_insert(e);
        }
        self.stop_early();
    }

    fn stop_early(&mut self) {
        if self.early {
            return;
        }
        self.early = true;
        if let Dest::File(f) = &mut self.file {
            let _ = f.set_len(self.good);
            let _ = f.seek(SeekFrom::Start(self.good));
        }
        let e = format::end_record(format::END_STOPPED_EARLY, self.next, self.total);
        if self.file.write_all(&e).is_ok() {
            let _ = self.file.flush();
        }
    }

    fn finish(mut self, end: u64) -> Result<(u64, u64), String> {
        if self.early {
            let e = self.error.lock().ok().and_then(|g| g.clone());
            return Err(e.unwrap_or_else(|| "the recording stopped early".into()));
        }
        let e = format::end_record(0, end, self.total);
        self.file.write_all(&e).map_err(|e| e.to_string())?;
        self.file.flush().map_err(|e| e.to_string())?;
        Ok((self.total, self.good + format::END_LEN as u64))
    }
}
