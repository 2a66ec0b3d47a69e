//! The JIT as the interpreter's accelerator: hot blocks become compile requests for
//! the compiler thread; finished regions are checked against the current code bytes
//! and installed; the dispatcher finds a region for the current RIP through a jump
//! cache and runs it; writes to code invalidate regions; generations of code memory
//! are freed whole.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam::channel::{unbounded, Receiver, Sender};
use ox86_cpu::state::CS;
use ox86_cpu::trace::{BlockDef, TraceSink};
use ox86_cpu::{trace_len, Accel, AccelHint, AccelRun, AccelStats, CpuState, Exec};
use ox86_mmu::paging::Access;
use ox86_mmu::{PhysAddr, Region as MemRegion, PAGE_MASK};

use crate::background::Background;
use crate::chain::{ChainTable, Trampoline};
use crate::compiler::{new_isa, CompileError, Compiled, Compiler, Request};
use crate::diskcache::{self, Index};
use crate::heat::HeatCounters;
use crate::helpers::{JitCtx, CHECK, FAULT, HOT, JUMP, LEAVE, SPLIT};
use crate::mode::Mode;
use crate::queue::CompileQueue;
use crate::region::{Entry, Region, PAGE};
use crate::JitConfig;

/// Identifies a region: entry physical address, EIP, CS base and mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    phys: u64,
    eip: u64,
    cs_base: u64,
    mode: Mode,
}

struct Installed {
    key: Key,
    cs_hi: u64,
    /// The code (region signature: [`crate::chain::region_signature`]).
    func: usize,
    /// Its chain context, if it chains.
    chain: Option<u32>,
    gen: u32,
    first_len: u64,
    ranges: Vec<(u32, u32)>,
    /// The frame of the next page and the bytes of it that instructions crossing the
    /// page end use: the region runs only while the next page maps this frame.
    next: Option<(u64, u32)>,
    code_bytes: usize,
    /// Its tier (0: compiled fast, 1: optimised).
    tier: u8,
    /// Its heat counter (quick regions, see `heat`); without one, the dispatcher
    /// counts its instructions in `insns`.
    heat: Option<u32>,
    /// Instructions it has run (counted by the dispatcher).
    insns: u64,
    /// Its optimised compilation was asked for.
    optimizing: bool,
    /// Entries refused because an access group's check failed (see `group`).
    splits: u32,
    // The code points at the region's instructions (for helper calls).
    _region: Region,
}

/// A slot of the jump cache. It holds while the TLB maps the linear page of CS:EIP to
/// `frame` (checked at every hit), so that paging changes need no flush. 32 bytes:
/// EIP and CS base are 32-bit, the frame a page number, the mode `Mode::bits`.
#[derive(Clone, Copy)]
struct Slot {
    /// The jump cache's stamp when the slot was filled: a flush bumps the stamp.
    stamp: u64,
    eip: u32,
    cs_base: u32,
    /// The page number of the frame the code was found in.
    frame: u32,
    region: u32,
    mode: u8,
    /// The region runs instructions across the page end (its next page is checked at
    /// every hit too).
    next: bool,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 32);

const EMPTY: Slot = Slot {
    stamp: 0,
    eip: 0,
    cs_base: 0,
    frame: 0,
    mode: 0,
    region: NONE,
    next: false,
};
const NONE: u32 = u32::MAX;
/// Slots of the jump cache (the interpreter's has as many: in a shell session the
/// code run, compiled or not, far outnumbers 4096 entries, and a miss costs a hash
/// table look-up).
const JUMP_CACHE: usize = 1 << 16;
/// Compile times kept for the median.
const TIMES: usize = 1 << 16;
/// Most compilations queued at once; beyond, hot blocks ask again later. The hottest
/// queued go first, so a long queue still compiles the code running now first; what
/// waits is compiled when the compiler has time (idle guest), and so reaches the
/// translation cache. (With 32, code that became hot while the compiler was busy
/// was never compiled in the first run, and a second run compiled 14% of the
/// first's regions again, where it now compiles 3%.)
const MAX_PENDING: usize = 512;
/// Most requests only for the translation cache queued at once (they are cheap: a
/// file read and a copy).
const MAX_PENDING_CACHED: usize = 1024;
/// The heat of a request only for the translation cache: before any compilation.
const CACHED_HEAT: u64 = u64::MAX / 4;
/// An optimised compilation saves about this fraction of what a first compilation
/// saves per instruction run (weighs the heat of their requests, see `queue`).
const TIER1_HEAT_DIVISOR: u64 = 8;
/// A region waiting for its optimised compilation adds to its request's heat every
/// this many instructions it runs.
const TIER1_HEAT_EVERY: u64 = 1 << 16;
/// Entries an optimised region refuses because an access group's check failed before
/// it is compiled again without access groups.
const SPLIT_LIMIT: u32 = 8;

enum Msg {
    /// The queue has one more request.
    Compile,
    Free(u32),
}

type Done = (Key, u8, Result<Compiled, CompileError>);

enum Worker {
    Thread {
        tx: Option<Sender<Msg>>,
        rx: Receiver<Done>,
        queue: Arc<CompileQueue>,
        handle: Option<JoinHandle<()>>,
    },
    Inline(Box<Compiler>),
}

/// A compilation asked for.
#[derive(Clone, Copy)]
struct Pending {
    /// Its heat counter (a quick region that chains).
    cell: Option<u32>,
    /// Only from the translation cache (no compilation if it is not there).
    cache_only: bool,
    /// The CS limit of the request (to ask again).
    cs_hi: u64,
    /// An optimisation asked for by an idle compiler (see `background`).
    background: bool,
}

/// The JIT of one CPU.
pub struct Jit {
    config: JitConfig,
    worker: Worker,
    regions: Vec<Option<Installed>>,
    free: Vec<u32>,
    by_phys: HashMap<(u64, u32), Vec<u32>>,
    by_frame: HashMap<u64, Vec<u32>>,
    jump: Box<[Slot]>,
    stamp: u64,
    epoch: u64,
    /// The host debugger's breakpoint epoch the chain table was filled in.
    stops_epoch: u64,
    /// Compilations asked for.
    pending: HashMap<(Key, u8), Pending>,
    /// How many of them are only for the translation cache.
    pending_cached: usize,
    /// The entries of the translation cache when the JIT started.
    cache_index: Index,
    /// Bad entries the compiler found in the translation cache.
    cache_rejected: Arc<AtomicU64>,
    heat: HeatCounters,
    max_gen: Option<u32>,
    freed_below: u32,
    live: usize,
    stats: AccelStats,
    /// The most recent compile times (a ring of [`TIMES`]), for the median.
    compile_times: Vec<u64>,
    /// Where compiled code finds the targets it chains to.
    chain: ChainTable,
    /// The way into compiled code (None: Cranelift cannot generate code here).
    enter: Option<Trampoline>,
    ctx: Box<JitCtx>,
    /// Optimisation while the compiler is idle: with a compiler thread, a translation
    /// cache, and a core for each thread.
    background: Option<Background>,
}

impl std::fmt::Debug for Jit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jit")
            .field("live", &self.live)
            .field("pending", &self.pending.len())
            .finish()
    }
}

#[inline(always)]
fn jump_index(lin: u64) -> usize {
    ((lin ^ (lin >> 12)) as usize) & (JUMP_CACHE - 1)
}

fn key_of(key: &Key) -> (u64, u32) {
    (key.phys, key.mode.bitness)
}

impl Jit {
    /// A JIT with its compiler thread (or an inline compiler, per `config`).
    pub fn new(config: JitConfig) -> Jit {
        let gen_limit = config.arena_bytes / 2;
        let rejected = Arc::new(AtomicU64::new(0));
        let new_compiler = {
            let (cache, max_blocks) = (config.cache.clone(), config.max_region_blocks);
            let delay = config.compile_delay;
            let rejected = Arc::clone(&rejected);
            move || {
                let mut c = Compiler::new(
                    gen_limit,
                    max_blocks,
                    cache.as_ref().map(|(d, n)| (d.as_path(), *n)),
                );
                c.cache_rejected = rejected;
                c.delay = delay;
                c
            }
        };
        let mut cache_index = Index::new();
        let mut background = None;
        let worker = if config.inline_compile {
            let c = new_compiler();
            cache_index = c.cache_index();
            Worker::Inline(Box::new(c))
        } else {
            let (tx, in_rx) = unbounded::<Msg>();
            let (out_tx, rx) = unbounded::<Done>();
            let (index_tx, index_rx) = unbounded::<Index>();
            let queue = Arc::new(CompileQueue::default());
            let q = Arc::clone(&queue);
            let handle = std::thread::Builder::new()
                .name("ox86-jit".into())
                .spawn(move || {
                    let c = new_compiler();
                    let _ = index_tx.send(c.cache_index());
                    compiler_thread(c, in_rx, &q, out_tx)
                })
                .ok();
            if handle.is_some() {
                cache_index = index_rx.recv().unwrap_or_default();
            }
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            if handle.is_some()
                && config.cache.is_some()
                && cores >= 2
                && config.optimize_after != u64::MAX
            {
                background = Some(Background::default());
            }
            Worker::Thread {
                tx: Some(tx),
                rx,
                queue,
                handle,
            }
        };
        let chain = ChainTable::new();
        let enter = match new_isa(1, false).and_then(Trampoline::new) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(target: "ox86::jit", "no trampoline: {e}");
                None
            }
        };
        Jit {
            config,
            worker,
            regions: Vec::new(),
            free: Vec::new(),
            by_phys: HashMap::new(),
            by_frame: HashMap::new(),
            jump: vec![EMPTY; JUMP_CACHE].into_boxed_slice(),
            stamp: 1,
            epoch: u64::MAX,
            stops_epoch: 0,
            pending: HashMap::new(),
            pending_cached: 0,
            cache_index,
            cache_rejected: rejected,
            heat: HeatCounters::default(),
            max_gen: None,
            freed_below: 0,
            live: 0,
            stats: AccelStats::default(),
            ctx: Box::new(JitCtx {
                tlb: std::ptr::null(),
                code_tlb: std::ptr::null(),
                end: 0,
                exec: std::ptr::null_mut(),
                fault: None,
                x87_out: 0,
                chain: chain.as_ptr(),
                chained: 0,
                hot: 0,
                trace: std::ptr::null_mut(),
            }),
            chain,
            enter,
            background,
            compile_times: Vec::new(),
        }
    }

    /// Empties the jump cache (in O(1): slots of older stamps are empty) and the
    /// chain table.
    fn flush_jump(&mut self) {
        self.stamp += 1;
        self.chain.flush();
    }

    /// Waits until every requested compilation is installed or dropped (for tests
    /// and benchmarks that want compiled code from the first run).
    pub fn wait_idle(&mut self, ex: &mut Exec<'_>) {
        while !self.pending.is_empty() {
            let done = match &self.worker {
                Worker::Thread { rx, .. } => match rx.recv() {
                    Ok(d) => d,
                    Err(_) => return,
                },
                Worker::Inline(_) => return,
            };
            self.finish(ex, done);
        }
    }

    fn poll(&mut self, ex: &mut Exec<'_>) {
        loop {
            let done = match &self.worker {
                Worker::Thread { rx, .. } if rx.is_empty() => return,
                Worker::Thread { rx, .. } => match rx.try_recv() {
                    Ok(d) => d,
                    Err(_) => return,
                },
                Worker::Inline(_) => return,
            };
            self.finish(ex, done);
        }
    }

    fn finish(&mut self, ex: &mut Exec<'_>, (key, tier, r): Done) {
        let Some(p) = self.pending.remove(&(key, tier)) else {
            return;
        };
        if p.cache_only {
            self.pending_cached -= 1;
        }
        let installed = match r {
            Ok(c) => {
                // Code the compiler thread wrote: fetch nothing prefetched before.
                crate::codemem::sync_fetch();
                let compiled = !c.loaded;
                let id = self.install(ex, key, c);
                if p.background && compiled && id.is_some() {
                    self.stats.regions_background += 1;
                }
                id
            }
            Err(e) if e.not_cached => {
                if p.cache_only
                    && tier > 0
                    && self.cached_tiers(key.eip, key.cs_base, key.mode) & 1 != 0
                {
                    // The optimised code of another region at this entry (another
                    // program's code at the same address): the quick code, if this
                    // region's is there.
                    self.ask(ex, key, p.cs_hi, 0, CACHED_HEAT, true);
                    return;
                }
                if !p.cache_only {
                    // Wanted compiled meanwhile (see `ask`).
                    if let Some(c) = p.cell {
                        self.heat.give_back(c);
                    }
                    self.request(ex, key, p.cs_hi, tier, 0);
                    return;
                }
                None
            }
            Err(e) => {
                tracing::warn!(target: "ox86::jit", "{e}");
                self.stats.compile_failures += 1;
                None
            }
        };
        // The cell goes to the region if its code counts heat (code loaded optimised
        // for a quick request does not).
        let holder = installed.filter(|&id| {
            self.regions[id as usize]
                .as_ref()
                .is_some_and(|r| r.heat.is_some())
        });
        match (p.cell, holder) {
            (Some(c), Some(id)) => self.heat.set_owner(c, id),
            (Some(c), None) => self.heat.give_back(c),
            _ => {}
        }
    }

    /// Frees the generations below `gen` (none of their regions is installed).
    fn free_below(&mut self, gen: u32) {
        while self.freed_below < gen {
            let g = self.freed_below;
            self.freed_below += 1;
            self.stats.generations_freed += 1;
            match &mut self.worker {
                Worker::Thread { tx: Some(tx), .. } => {
                    let _ = tx.send(Msg::Free(g));
                }
                Worker::Thread { .. } => {}
                Worker::Inline(c) => c.free(g),
            }
        }
    }

    /// Installs a compiled region; returns its id, or None if it was dropped.
    fn install(&mut self, ex: &mut Exec<'_>, key: Key, c: Compiled) -> Option<u32> {
        if c.loaded {
            self.stats.regions_loaded += 1;
            self.stats.load_ns += c.nanos;
        } else {
            self.stats.regions_compiled += 1;
            self.stats.compile_ns += c.nanos;
            if self.compile_times.len() < TIMES {
                self.compile_times.push(c.nanos);
            } else {
                let k = (self.stats.regions_compiled as usize) % TIMES;
                self.compile_times[k] = c.nanos;
            }
        }
        // A newer generation retires the one before the previous.
        if self.max_gen.is_none_or(|m| c.gen > m) {
            self.max_gen = Some(c.gen);
            if c.gen >= 2 {
                self.retire_below(c.gen - 1);
            }
        }
        if c.gen < self.freed_below {
            return None; // Its generation is already gone.
        }
        // The code bytes must still be what was compiled.
        let frame = key.phys & !PAGE_MASK;
        let mut now = vec![0u8; PAGE];
        ex.mem.read_phys(PhysAddr(frame), &mut now);
        let same = c
            .region
            .ranges
            .iter()
            .all(|&(s, e)| now[s as usize..e as usize] == c.req.page[s as usize..e as usize]);
        let next = c
            .req
            .next
            .as_ref()
            .filter(|_| c.region.next_len > 0)
            .map(|(f, bytes)| (*f, bytes, c.region.next_len));
        let same_next = next.is_none_or(|(f, bytes, n)| {
            let mut now = vec![0u8; n as usize];
            ex.mem.read_phys(PhysAddr(f), &mut now);
            now[..] == bytes[..n as usize]
        });
        if !same || !same_next {
            self.stats.stale += 1;
            return None;
        }
        // Traced code writes the raw ids of this trace's sink, defined here.
        if key.mode.traced {
            let t = ex.trace.as_deref_mut()?;
            let (base, epoch) = c.req.trace?;
            if epoch != t.epoch() {
                return None;
            }
            define_blocks(t, base, &key, &c, ex.s.icount);
        }
        if let Some((f, _, n)) = next {
            if ex.mem.mark_code(PhysAddr(f), u64::from(n)) {
                ex.tlb.protect_frame(f);
            }
        }
        let mut marked = false;
        for &(s, e) in &c.region.ranges {
            marked |= ex
                .mem
                .mark_code(PhysAddr(frame + u64::from(s)), u64::from(e - s));
        }
        if marked {
            ex.tlb.protect_frame(frame);
        }
        let tier = c.req.tier;
        let same: Vec<u32> = self
            .by_phys
            .get(&key_of(&key))
            .map(|ids| {
                ids.iter()
                    .copied()
                    .filter(|&i| {
                        self.regions[i as usize]
                            .as_ref()
                            .is_some_and(|r| r.key == key)
                    })
                    .collect()
            })
            .unwrap_or_default();
        if tier == 0 && !same.is_empty() {
            // Asked for again after an invalidation, but a region for the same code
            // (its optimised compilation, asked for earlier) was installed meanwhile.
            return None;
        }
        if tier > 0 {
            // The optimised code replaces the quick one.
            if !c.loaded {
                self.stats.regions_optimized += 1;
            }
            for id in same {
                self.replace_out(id);
            }
        }
        let first_len = c.region.blocks[0].insns.len() as u64;
        let inst = Installed {
            key,
            cs_hi: c.req.entry.cs_hi,
            func: c.func,
            chain: c.req.chain,
            gen: c.gen,
            first_len,
            ranges: c.region.ranges.clone(),
            next: next.map(|(f, _, n)| (f, n)),
            code_bytes: c.code_bytes,
            tier,
            heat: c.req.heat.map(|h| h.0),
            insns: 0,
            optimizing: false,
            splits: 0,
            _region: c.region,
        };
        self.stats.code_bytes += inst.code_bytes as u64;
        let id = match self.free.pop() {
            Some(id) => {
                self.regions[id as usize] = Some(inst);
                id
            }
            None => {
                self.regions.push(Some(inst));
                (self.regions.len() - 1) as u32
            }
        };
        self.by_phys.entry(key_of(&key)).or_default().push(id);
        self.by_frame.entry(frame >> 12).or_default().push(id);
        if let Some((f, _, _)) = next.filter(|n| n.0 != frame) {
            self.by_frame.entry(f >> 12).or_default().push(id);
        }
        self.live += 1;
        // A miss the interpreter's block at this entry holds is stale now.
        if let Some(b) = ex.blocks.id_at(key.phys, key.mode.bitness) {
            ex.blocks.get_mut(b).accel = AccelHint::default();
        }
        // So is a cached miss for this entry (it can only be in the slot of the
        // entry's linear address); cached hits stay good.
        let j = jump_index(key.cs_base.wrapping_add(key.eip) & 0xffff_ffff);
        let slot = &mut self.jump[j];
        if slot.region == NONE
            && u64::from(slot.eip) == key.eip
            && u64::from(slot.cs_base) == key.cs_base
        {
            *slot = EMPTY;
        }
        Some(id)
    }

    /// Asks for region `key` to be compiled at `tier`, with `heat` (see `queue`); when
    /// it is already queued, adds `heat` to its request. False if no new request was
    /// made (already queued, the queue is full, or the page is not memory).
    fn request(&mut self, ex: &mut Exec<'_>, key: Key, cs_hi: u64, tier: u8, heat: u64) -> bool {
        self.ask(ex, key, cs_hi, tier, heat, false)
    }

    /// As [`Jit::request`]; `cache_only`: only if the translation cache has the code.
    fn ask(
        &mut self,
        ex: &mut Exec<'_>,
        key: Key,
        cs_hi: u64,
        tier: u8,
        heat: u64,
        cache_only: bool,
    ) -> bool {
        if let Some(p) = self.pending.get_mut(&(key, tier)) {
            if p.cache_only && !cache_only {
                // Wanted now whether cached or not: compiled if the cache has nothing
                // (the queued request says so, or, once taken, `finish` asks again).
                p.cache_only = false;
                self.pending_cached -= 1;
                if let Worker::Thread { queue, .. } = &self.worker {
                    queue.update(|r| {
                        if r.tier == tier && req_key(r) == key {
                            r.cache_only = false;
                        }
                    });
                }
            }
            self.warm(key, tier, heat);
            return false;
        }
        let full = if cache_only {
            self.pending_cached >= MAX_PENDING_CACHED
        } else {
            self.pending.len() - self.pending_cached >= MAX_PENDING
        };
        if full {
            return false;
        }
        let frame = key.phys & !PAGE_MASK;
        if matches!(ex.mem.region(PhysAddr(frame)), MemRegion::Mmio) {
            return false;
        }
        let mut page = vec![0u8; PAGE].into_boxed_slice();
        ex.mem.read_phys(PhysAddr(frame), &mut page);
        // The start of the next page, as it is mapped now, for instructions crossing
        // the page end (the region then runs only while that mapping holds).
        let next = next_page(ex, &key).map(|f| {
            let mut b = vec![0u8; MAX_INSN_LEN].into_boxed_slice();
            ex.mem.read_phys(PhysAddr(f), &mut b);
            (f, b)
        });
        let req = Request {
            phys: key.phys,
            entry: Entry {
                eip: key.eip,
                page_off: (key.phys & PAGE_MASK) as usize,
                cs_hi,
                mode: key.mode,
            },
            cs_base: key.cs_base,
            page,
            next,
            tier,
            chain: self.chain.context(key.cs_base, cs_hi, key.mode),
            heat: None,
            ctx: &*self.ctx as *const JitCtx as usize,
            cache_only,
            trace: None,
        };
        let mut req = req;
        if key.mode.traced {
            let Some(t) = ex.trace.as_deref_mut() else {
                return false;
            };
            if t.ids_exhausted() {
                return false;
            }
            let n = self.config.max_region_blocks.min(u32::MAX as usize) as u32;
            req.trace = Some((t.new_ids(n), t.epoch()));
        }
        // A quick region that chains counts its own runs.
        if tier == 0 && req.chain.is_some() && self.config.optimize_after != u64::MAX {
            let start = self.config.optimize_after.min(i64::MAX as u64) as i64;
            req.heat = self.heat.take(start);
        }
        let cell = req.heat.map(|h| h.0);
        self.pending.insert(
            (key, tier),
            Pending {
                cell,
                cache_only,
                cs_hi,
                background: false,
            },
        );
        if cache_only {
            self.pending_cached += 1;
        }
        match &mut self.worker {
            Worker::Thread {
                tx: Some(tx),
                queue,
                ..
            } => {
                queue.push(heat, req);
                if tx.send(Msg::Compile).is_err() {
                    self.drop_pending(key, tier);
                    return false;
                }
            }
            Worker::Thread { .. } => {
                self.drop_pending(key, tier);
                return false;
            }
            Worker::Inline(c) => {
                let r = c.compile(req);
                self.finish(ex, (key, tier, r));
            }
        }
        true
    }

    /// The heat counter `cell` of a quick region ran out: asks for the region's
    /// optimised compilation, or, while that waits, makes its request hotter.
    fn heated(&mut self, ex: &mut Exec<'_>, cell: u32) {
        self.heat.set(cell, TIER1_HEAT_EVERY as i64);
        let Some(r) = self
            .heat
            .owner(cell)
            .and_then(|id| self.regions[id as usize].as_mut())
        else {
            return;
        };
        let (key, cs_hi) = (r.key, r.cs_hi);
        if r.optimizing {
            self.warm(key, 1, TIER1_HEAT_EVERY / TIER1_HEAT_DIVISOR);
        } else if self.request(ex, key, cs_hi, 1, 0) {
            if let Some(r) = self
                .heat
                .owner(cell)
                .and_then(|id| self.regions[id as usize].as_mut())
            {
                r.optimizing = true;
            }
        }
    }

    /// Forgets a request that was not sent, giving back its heat counter.
    fn drop_pending(&mut self, key: Key, tier: u8) {
        if let Some(p) = self.pending.remove(&(key, tier)) {
            if p.cache_only {
                self.pending_cached -= 1;
            }
            if let Some(c) = p.cell {
                self.heat.give_back(c);
            }
        }
    }

    /// While the compiler has nothing to do: asks for the optimised compilation of the
    /// quick region that has run most (see `background`).
    fn optimize_idle(&mut self, ex: &mut Exec<'_>) {
        let Some(mut bg) = self.background.take() else {
            return;
        };
        let start = self.config.optimize_after.min(i64::MAX as u64) as i64;
        while let Some(id) = bg.next(ex.s.icount, || self.candidates(start)) {
            let Some(r) = self.regions[id as usize].as_ref() else {
                continue;
            };
            if r.tier != 0 || r.optimizing {
                continue;
            }
            // A region with instructions across its page end is compiled with the
            // next page as it is mapped now, maybe in another process: only where that
            // is the page it was compiled with (else the optimised code could not run
            // where the quick code did, and would keep it from being compiled again).
            if r.next
                .is_some_and(|(f, _)| next_page(ex, &r.key) != Some(f))
            {
                continue;
            }
            let (key, cs_hi) = (r.key, r.cs_hi);
            if self.request(ex, key, cs_hi, 1, 0) {
                if let Some(r) = self.regions[id as usize].as_mut() {
                    r.optimizing = true;
                }
                if let Some(p) = self.pending.get_mut(&(key, 1)) {
                    p.background = true;
                }
            }
            break;
        }
        self.background = Some(bg);
    }

    /// The quick regions not yet asked for optimised, with the instructions each has
    /// run (counted by its heat counter, or by the dispatcher for one without).
    fn candidates(&self, start: i64) -> Vec<(u64, u32)> {
        self.regions
            .iter()
            .enumerate()
            .filter_map(|(id, r)| {
                let r = r.as_ref()?;
                if r.tier != 0 || r.optimizing {
                    return None;
                }
                let ran = match r.heat {
                    Some(c) => start.saturating_sub(self.heat.get(c)).max(0) as u64,
                    None => r.insns,
                };
                Some((ran, id as u32))
            })
            .collect()
    }

    /// The tiers the translation cache had for the entry at `eip`, CS base `cs_base`
    /// and `mode` when the JIT started (bit `t` for tier `t`; 0: none).
    fn cached_tiers(&self, eip: u64, cs_base: u64, mode: Mode) -> u8 {
        let entry = diskcache::Entry {
            eip: eip as u32,
            cs_base: cs_base as u32,
            mode: mode.bits(),
        };
        self.cache_index.get(&entry).copied().unwrap_or(0)
    }

    /// Adds `heat` to the queued request of region `key` at `tier`, if there is one.
    fn warm(&self, key: Key, tier: u8, heat: u64) {
        if let Worker::Thread { queue, .. } = &self.worker {
            if self.pending.contains_key(&(key, tier)) {
                queue.bump(heat, |r| r.tier == tier && req_key(r) == key);
            }
        }
    }

    fn remove(&mut self, id: u32) {
        let Some(r) = self.regions[id as usize].take() else {
            return;
        };
        if let Some(c) = r.heat {
            self.heat.give_back(c);
        }
        self.stats.code_bytes -= r.code_bytes as u64;
        if let Some(v) = self.by_phys.get_mut(&key_of(&r.key)) {
            v.retain(|&x| x != id);
            if v.is_empty() {
                self.by_phys.remove(&key_of(&r.key));
            }
        }
        for frame in std::iter::once(r.key.phys >> 12).chain(r.next.map(|n| n.0 >> 12)) {
            if let Some(v) = self.by_frame.get_mut(&frame) {
                v.retain(|&x| x != id);
                if v.is_empty() {
                    self.by_frame.remove(&frame);
                }
            }
        }
        self.free.push(id);
        self.live -= 1;
    }

    /// Removes region `id`, which a region for the same entry replaces. Only the chain
    /// table's slot and the jump cache's slot of that entry can lead to it (they are
    /// filled for the entry's EIP and linear address): they are emptied, and nothing
    /// else needs to be flushed.
    fn replace_out(&mut self, id: u32) {
        if let Some(r) = self.regions[id as usize].as_ref() {
            if let Some(c) = r.chain {
                self.chain.remove(c, r.key.eip);
            }
            let j = jump_index(r.key.cs_base.wrapping_add(r.key.eip) & 0xffff_ffff);
            if self.jump[j].region == id {
                self.jump[j] = EMPTY;
            }
        }
        self.remove(id);
    }

    fn retire_below(&mut self, gen: u32) {
        let ids: Vec<u32> = self
            .regions
            .iter()
            .enumerate()
            .filter(|(_, r)| r.as_ref().is_some_and(|r| r.gen < gen))
            .map(|(i, _)| i as u32)
            .collect();
        for id in ids {
            self.remove(id);
        }
        self.flush_jump();
        self.free_below(gen);
    }

    /// The region to compile for interpreter block `id`, entered now (the current
    /// state is at its start), with its CS limit; None if it cannot be compiled or is
    /// installed.
    fn wanted(&self, ex: &Exec<'_>, id: u32) -> Option<(Key, u64)> {
        let b = ex.blocks.get(id);
        if b.ranges[1].1 > b.ranges[1].0 {
            return None; // An instruction across two pages: left to the interpreter.
        }
        let (phys, eip, cs_base, bitness) = (b.phys, b.eip, b.cs_base, b.bitness);
        let mode = Mode::of_exec(ex)?;
        if mode.bitness != bitness || ex.s.rip != eip || ex.s.seg[CS].base != cs_base {
            return None;
        }
        let key = Key {
            phys,
            eip,
            cs_base,
            mode,
        };
        let installed = self.by_phys.get(&key_of(&key)).is_some_and(|ids| {
            ids.iter().any(|&i| {
                self.regions[i as usize]
                    .as_ref()
                    .is_some_and(|r| r.key == key)
            })
        });
        (!installed).then_some((key, ex.s.seg[CS].hi as u64))
    }

    /// The region for the current state, interpreter block `block` (at the current
    /// state), through the block's hint (see [`AccelHint`]), else the jump cache.
    #[inline]
    fn lookup_block(&mut self, ex: &mut Exec<'_>, mode: Mode, block: u32) -> u32 {
        let b = ex.blocks.get(block);
        let h = b.accel;
        if h.valid && h.mode == mode.bits() {
            if h.region == NONE {
                return NONE;
            }
            // The block matches the current EIP, CS base and code size, and the TLB
            // maps its page to `b.phys`'s frame (checked by the interpreter's
            // look-up): a region of the same physical entry, EIP, CS base and mode is
            // the current state's, if its next page maps where it did.
            let same = self.regions[h.region as usize].as_ref().is_some_and(|r| {
                r.key.phys == b.phys
                    && r.key.eip == b.eip
                    && r.key.cs_base == b.cs_base
                    && r.key.mode == mode
            });
            if same {
                let lin = b.cs_base.wrapping_add(b.eip) & 0xffff_ffff;
                if self.next_mapped(ex, h.region, lin) {
                    return h.region;
                }
            }
        }
        let (id, lasting) = self.lookup_slot(ex, mode);
        if lasting {
            ex.blocks.get_mut(block).accel = AccelHint {
                valid: true,
                mode: mode.bits(),
                region: id,
            };
        }
        id
    }

    /// The region for the current state, through the jump cache.
    #[inline]
    fn lookup(&mut self, ex: &mut Exec<'_>, mode: Mode) -> u32 {
        self.lookup_slot(ex, mode).0
    }

    /// The region for the current state, through the jump cache, and whether the
    /// answer holds until a region is installed at this entry or the TLB maps the
    /// page elsewhere (not when it depends on what the TLB holds now).
    #[inline]
    fn lookup_slot(&mut self, ex: &mut Exec<'_>, mode: Mode) -> (u32, bool) {
        let eip = ex.s.rip;
        let cs_base = ex.s.seg[CS].base;
        let lin = cs_base.wrapping_add(eip) & 0xffff_ffff;
        let frame = match ex.tlb.lookup_exec(mode.user(), lin) {
            Some(f) => f,
            // A TLB miss: walk the page tables as the fetch would (it fills the TLB).
            // On a fault the interpreter fetches and raises it.
            None => match ex.translate(lin, Access::Execute, mode.user()) {
                Ok(phys) => phys & !PAGE_MASK,
                Err(_) => return (NONE, false),
            },
        };
        let j = jump_index(lin);
        let slot = self.jump[j];
        if slot.stamp == self.stamp
            && u64::from(slot.eip) == eip
            && u64::from(slot.cs_base) == cs_base
            && u64::from(slot.frame) == frame >> 12
            && slot.mode == mode.bits()
            && (!slot.next || self.next_mapped(ex, slot.region, lin))
        {
            return (slot.region, true);
        }
        let phys = frame | (lin & PAGE_MASK);
        let mut found = NONE;
        if let Some(ids) = self.by_phys.get(&(phys, mode.bitness)) {
            for &id in ids {
                let r = self.regions[id as usize].as_ref().expect("indexed region");
                if r.key.eip == eip && r.key.cs_base == cs_base && r.key.mode == mode {
                    if !self.next_mapped(ex, id, lin) {
                        // Not mapped so now, or not yet in the TLB.
                        return (NONE, false);
                    }
                    found = id;
                    break;
                }
            }
        }
        // (Values beyond the slot's fields, never seen in 32-bit modes, are not
        // cached.)
        if let (Ok(eip), Ok(cs_base), Ok(frame)) = (
            u32::try_from(eip),
            u32::try_from(cs_base),
            u32::try_from(frame >> 12),
        ) {
            self.jump[j] = Slot {
                stamp: self.stamp,
                eip,
                cs_base,
                frame,
                mode: mode.bits(),
                region: found,
                next: found != NONE
                    && self.regions[found as usize]
                        .as_ref()
                        .is_some_and(|r| r.next.is_some()),
            };
        }
        (found, true)
    }

    /// Whether region `id`, entered at linear address `lin`, has its instructions
    /// across the page end in the frame the next page maps to now (true for a region
    /// without such instructions).
    fn next_mapped(&self, ex: &Exec<'_>, id: u32, lin: u64) -> bool {
        let Some(r) = self.regions[id as usize].as_ref() else {
            return false;
        };
        match r.next {
            None => true,
            Some((f, _)) => {
                let lin2 = ((lin & !PAGE_MASK) + PAGE as u64) & 0xffff_ffff;
                ex.tlb.lookup_exec(r.key.mode.user(), lin2) == Some(f)
            }
        }
    }
}

/// Longest x86 instruction.
const MAX_INSN_LEN: usize = 15;

/// The frame the page after region `key`'s page maps to now (for code, in the TLB),
/// if it is RAM.
fn next_page(ex: &Exec<'_>, key: &Key) -> Option<u64> {
    let lin = (key.cs_base.wrapping_add(key.eip) & 0xffff_ffff & !PAGE_MASK) + PAGE as u64;
    let f = ex.tlb.lookup_exec(key.mode.user(), lin & 0xffff_ffff)?;
    matches!(ex.mem.region(PhysAddr(f)), MemRegion::Ram(_)).then_some(f)
}

/// The compiler thread: compiles the hottest request of the queue for each request
/// the dispatcher queued, and frees generations when told.
fn compiler_thread(mut c: Compiler, rx: Receiver<Msg>, queue: &CompileQueue, tx: Sender<Done>) {
    for msg in rx {
        match msg {
            Msg::Compile => {
                let Some(req) = queue.pop() else {
                    continue;
                };
                let (key, tier) = (req_key(&req), req.tier);
                if tx.send((key, tier, c.compile(req))).is_err() {
                    return;
                }
            }
            Msg::Free(g) => c.free(g),
        }
    }
}

fn req_key(req: &Request) -> Key {
    Key {
        phys: req.phys,
        eip: req.entry.eip,
        cs_base: req.cs_base,
        mode: req.entry.mode,
    }
}

impl Accel for Jit {
    fn run(&mut self, ex: &mut Exec<'_>, end: u64, block: u32) -> AccelRun {
        if !self.pending.is_empty() {
            self.poll(ex);
        }
        if self.pending.is_empty() && self.background.is_some() {
            self.optimize_idle(ex);
        }
        if self.live == 0 {
            return AccelRun::NotRun;
        }
        let Some(mode) = Mode::of_exec(ex) else {
            return AccelRun::NotRun;
        };
        let Some(enter) = self.enter.as_ref().map(|t| t.enter) else {
            return AccelRun::NotRun;
        };
        let mut ran = false;
        // The last region left by a branch that did not chain (for the statistics).
        let mut after_jump = false;
        // The first region through the interpreter's block, the next ones through the
        // jump cache.
        let mut block = Some(block);
        // Region after region while they leave by plain branches and nothing needs
        // the interpreter loop's attention; anything else goes back to it.
        loop {
            if ex.blocks.epoch != self.epoch {
                self.flush_jump();
                self.epoch = ex.blocks.epoch;
            }
            if ex.dbg.epoch != self.stops_epoch {
                // Compiled code may have chained to a page that has a breakpoint now.
                self.chain.flush();
                self.stops_epoch = ex.dbg.epoch;
            }
            let id = match block.take() {
                Some(b) => self.lookup_block(ex, mode, b),
                None => self.lookup(ex, mode),
            };
            if id == NONE {
                break;
            }
            if std::mem::take(&mut after_jump) {
                self.stats.exits.jump_compiled += 1;
            }
            // Traced code writes a record per guest block it runs (at most one per
            // instruction) and one per memory access when those are traced: its budget
            // ends before the buffer would be full.
            let mut end = end;
            if mode.traced {
                let Some(t) = ex.trace.as_deref_mut() else {
                    break;
                };
                t.context(ex.s);
                self.ctx.trace = t.jit_window();
                end = end.min(ex.s.icount + t.jit_insns());
            }
            let r = self.regions[id as usize].as_ref().expect("live region");
            if r.cs_hi != ex.s.seg[CS].hi as u64 || ex.s.icount + r.first_len > end {
                break;
            }
            // Code on a page with a breakpoint of the host debugger runs in the
            // interpreter, which checks each instruction (see `ox86_cpu::stops`).
            let bp_page = ex.dbg.has_breakpoints()
                && ex
                    .dbg
                    .page_has_breakpoint(r.key.cs_base.wrapping_add(r.key.eip));
            if bp_page {
                break;
            }
            let func = r.func;
            // Compiled code may chain here from now on, unless the dispatcher must
            // still count this region's instructions for its optimised compilation
            // (a quick region without a heat counter).
            if let Some(c) = r
                .chain
                .filter(|_| r.tier > 0 || r.optimizing || r.heat.is_some())
            {
                self.chain
                    .insert(c, r.key.eip, func, r.key.phys & !PAGE_MASK);
            }
            self.ctx.end = end;
            self.ctx.tlb = ex.tlb.tables[mode.user() as usize].entries.as_ptr();
            self.ctx.code_tlb = ex.tlb.code[mode.user() as usize].entries.as_ptr();
            self.ctx.fault = None;
            let before = ex.s.icount;
            let state: *mut CpuState = &mut *ex.s;
            self.ctx.exec = ex as *mut Exec<'_> as *mut c_void;
            let ctx: *mut JitCtx = &mut *self.ctx;
            // SAFETY: the region's code was compiled for this mode, CS base and limit
            // (all checked above) from bytes still in memory (checked at install;
            // writes since invalidate it), and its generation is alive. It reads and
            // writes the state through `state`, guest RAM only through TLB entries
            // filled for RAM, and calls helpers with `ctx`, whose `exec` is this `ex`,
            // unused meanwhile. It chains only to regions of the chain table, which
            // holds only regions the dispatcher found valid in the same mode, CS base
            // and limit, and is emptied whenever a region is removed; compiled code
            // checks that the TLB still maps the target's page to the frame it was
            // compiled from (see `crate::chain`). Traced code writes one word per guest
            // block it enters, and with memory accesses traced three per access (at
            // most JIT_MEM_PER_INSN an instruction, checked when it is translated), at
            // `ctx.trace`, which points into the trace sink's buffer with JIT_ROOM
            // words free; the budget above (`jit_insns`) keeps what it writes within
            // that, and helpers that write to the sink meanwhile hand the pointer over
            // and back (see `helpers::interp`). `enter` calls `func` with the region
            // signature.
            let status = unsafe { enter(state, ctx as *mut u8, func) };
            self.ctx.exec = std::ptr::null_mut();
            if let Some(t) = ex.trace.as_deref_mut().filter(|_| mode.traced) {
                if !t.jit_done(self.ctx.trace) {
                    tracing::error!(target: "ox86::jit", "compiled code wrote outside the trace buffer");
                }
            }
            let n = ex.s.icount - before;
            self.stats.entries += 1;
            self.stats.compiled_insns += n;
            // CHECK with nothing run: the budget is too short for the region (see
            // `Tx::new`); the interpreter runs the last instructions before its end.
            // SPLIT: an access group's check failed (see `group`); nothing ran either.
            // HOT: a heat counter ran out, at a region's entry (nothing ran) or at a
            // backward edge.
            ran |= n > 0 || !matches!(status, CHECK | SPLIT | HOT);
            // With nothing run, the region entered here split; else one it chained to
            // did, and is counted when the dispatcher enters it next.
            if status == SPLIT && n == 0 {
                let again = self.regions[id as usize].as_mut().and_then(|r| {
                    r.splits += 1;
                    (r.splits == SPLIT_LIMIT).then_some((r.key, r.cs_hi))
                });
                if let Some((key, cs_hi)) = again {
                    if !self.request(ex, key, cs_hi, 2, u64::MAX / 2) {
                        // Asked again at the next refusals.
                        if let Some(r) = self.regions[id as usize].as_mut() {
                            r.splits = 0;
                        }
                    }
                }
            }
            // Quick code that has run long enough asks for its optimised compilation;
            // while that waits, each run makes the request hotter.
            let optimize = self.regions[id as usize].as_mut().and_then(|r| {
                let old = r.insns;
                r.insns += n;
                if r.tier != 0 || r.heat.is_some() {
                    None
                } else if !r.optimizing {
                    (r.insns >= self.config.optimize_after).then_some((r.key, r.cs_hi, 0))
                } else {
                    let crossed = r.insns / TIER1_HEAT_EVERY - old / TIER1_HEAT_EVERY;
                    let heat = crossed * TIER1_HEAT_EVERY / TIER1_HEAT_DIVISOR;
                    (crossed > 0).then_some((r.key, r.cs_hi, heat))
                }
            });
            if let Some((key, cs_hi, heat)) = optimize {
                if heat > 0 {
                    self.warm(key, 1, heat);
                } else if self.request(ex, key, cs_hi, 1, 0) {
                    if let Some(r) = self.regions[id as usize].as_mut() {
                        r.optimizing = true;
                    }
                }
            }
            let exits = &mut self.stats.exits;
            match status {
                FAULT => exits.fault += 1,
                LEAVE => exits.leave += 1,
                JUMP => {
                    exits.jump += 1;
                    after_jump = true;
                }
                CHECK => exits.check += 1,
                _ => exits.other += 1,
            }
            match status {
                FAULT => {
                    if let Some(e) = self.ctx.fault.take() {
                        return AccelRun::Fault(e);
                    }
                    break;
                }
                // A lowered branch: nothing but RIP and registers changed. Lowered
                // code does no I/O, so no interrupt or device request can have become
                // due, and it cannot set IF: the interpreter loop has nothing to check.
                JUMP => {}
                // Likewise, with the state complete.
                HOT => {
                    let cell = self.ctx.hot as u32;
                    self.heated(ex, cell);
                }
                _ => break,
            }
        }
        if ran {
            AccelRun::Ran
        } else {
            AccelRun::NotRun
        }
    }

    fn hot_threshold(&self) -> u64 {
        self.config.hot_threshold.max(1)
    }

    fn seen(&mut self, ex: &mut Exec<'_>, id: u32) {
        if self.cache_index.is_empty() {
            return;
        }
        let b = ex.blocks.get(id);
        let Some(mode) = Mode::of_exec(ex) else {
            return;
        };
        // The optimised code if the cache has it for this entry (without access groups
        // if it was compiled so: see `SPLIT_LIMIT`), else the quick code.
        let tier = match self.cached_tiers(b.eip, b.cs_base, mode) {
            0 => return,
            t if t & 4 != 0 => 2,
            t if t & 2 != 0 => 1,
            _ => 0,
        };
        if let Some((key, cs_hi)) = self.wanted(ex, id) {
            self.ask(ex, key, cs_hi, tier, CACHED_HEAT, true);
        }
    }

    fn hot(&mut self, ex: &mut Exec<'_>, id: u32) {
        let Some((key, cs_hi)) = self.wanted(ex, id) else {
            return;
        };
        let tier = u8::from(self.config.optimize_after == 0);
        let loading = |t: u8| self.pending.get(&(key, t)).is_some_and(|p| p.cache_only);
        if tier == 0 && (loading(1) || loading(2)) {
            // Its optimised code is on its way from the translation cache (see `seen`;
            // those requests go first).
            return;
        }
        // The instructions run in the interpreter since the last call.
        let heat = ex.blocks.get(id).insns.len() as u64 * self.hot_threshold();
        self.request(ex, key, cs_hi, tier, heat);
    }

    fn invalidate(&mut self, addr: u64, len: u64) -> bool {
        let frame = addr >> 12;
        let off = (addr & PAGE_MASK) as u32;
        let end = off.saturating_add(len as u32);
        let ids: Vec<u32> = self.by_frame.get(&frame).cloned().unwrap_or_default();
        let mut any = false;
        for id in ids {
            let hit = self.regions[id as usize].as_ref().is_some_and(|r| {
                let first =
                    r.key.phys >> 12 == frame && r.ranges.iter().any(|&(s, e)| s < end && off < e);
                let next = r.next.is_some_and(|(f, n)| f >> 12 == frame && off < n);
                first || next
            });
            if hit {
                self.remove(id);
                self.stats.invalidations += 1;
                any = true;
            }
        }
        if any {
            self.flush_jump();
        }
        self.by_frame.contains_key(&frame)
    }

    fn clear(&mut self) {
        let ids: Vec<u32> = (0..self.regions.len() as u32).collect();
        for id in ids {
            self.remove(id);
        }
        self.flush_jump();
        if let Some(m) = self.max_gen {
            self.free_below(m);
        }
    }

    fn code_frames(&self) -> Vec<u64> {
        self.by_frame.keys().copied().collect()
    }

    fn stats(&self) -> AccelStats {
        let mut s = self.stats.clone();
        let mut t = self.compile_times.clone();
        t.sort_unstable();
        s.compile_ns_median = t.get(t.len() / 2).copied().unwrap_or(0);
        s.live_regions = self.live as u64;
        s.cache_rejected = self.cache_rejected.load(Ordering::Relaxed);
        s.chained = self.ctx.chained;
        s
    }
}

impl Drop for Jit {
    fn drop(&mut self) {
        if let Worker::Thread {
            tx, handle, queue, ..
        } = &mut self.worker
        {
            // The requests still queued are dropped: compiling them would keep the
            // process from ending (up to MAX_PENDING compilations) for code that will
            // not run again. The compilation under way finishes, and what the
            // compiler has handed the cache's writer is written.
            queue.clear();
            tx.take();
            if let Some(h) = handle.take() {
                let _ = h.join();
            }
        }
    }
}

/// Defines the raw trace ids `base`.. of the guest blocks of region `c` (installed as
/// `key`) in sink `t`, at instruction `icount`: their code as it was compiled (the
/// same as in memory, checked by the caller).
fn define_blocks(t: &mut TraceSink, base: u32, key: &Key, c: &Compiled, icount: u64) {
    let frame = key.phys & !PAGE_MASK;
    let next = c.req.next.as_ref();
    for (bi, gb) in c.region.blocks.iter().enumerate() {
        let lin = key.cs_base.wrapping_add(gb.eip) & 0xffff_ffff;
        let off = (lin & PAGE_MASK) as usize;
        let lens: Vec<u8> = gb.insns.iter().map(|d| trace_len(&d.insn)).collect();
        let len: usize = gb.insns.iter().map(|d| d.insn.len()).sum();
        let mut bytes = c.req.page[off..(off + len).min(PAGE)].to_vec();
        let over = (off + len).saturating_sub(PAGE);
        let mut phys2 = 0;
        if over > 0 {
            let Some((f, b)) = next else {
                continue; // Not compiled so (the region would not have it).
            };
            bytes.extend_from_slice(&b[..over.min(b.len())]);
            phys2 = *f;
        }
        let def = BlockDef {
            eip: gb.eip,
            cs_base: key.cs_base,
            phys: frame | off as u64,
            phys2,
            bitness: key.mode.bitness,
            lens: &lens,
            bytes: &bytes,
        };
        t.define(base + bi as u32, icount, &def);
    }
}
