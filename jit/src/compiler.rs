//! The compiler: decodes a region from a page snapshot, translates it with Cranelift,
//! and keeps the code in generations. cranelift-jit cannot free single functions, so a
//! generation (one `JITModule`) is freed whole once the dispatcher has dropped every
//! region in it. Runs on the compiler thread, or inline for deterministic tests.
//!
//! Two tiers: a region is first compiled quickly (no optimisation), so that new code
//! leaves the interpreter soon; one that then runs many instructions is compiled again
//! with optimisations, which take about 1.4 times as long.
//!
//! The quick tier's register allocator depends on the code and on the cores the
//! process may use. The single-pass allocator compiles in two thirds of the time of the
//! backtracking one, but its code is 2.6 times as large (240 bytes of host code per
//! guest instruction against 94).
//! - Supervisor code, with two or more cores: the backtracking allocator. The compiler
//!   thread has a core of its own, and a shell session spends most of its time in the
//!   kernel's quick-tier code (with the backtracking allocator for all code, a second
//!   run's session took 1.27-1.32 s against 1.56-1.65 s).
//! - User code: the single-pass allocator. Short-lived programs keep the compiler
//!   busy; compiled more slowly, 367 requests were still queued when a first run
//!   ended, and its second run compiled 9.8% of the regions the first did (1.5-1.8%
//!   so).
//! - Everything on one core, where each compilation delays the guest: with the
//!   backtracking allocator a first run on one core took 9.0 s to boot instead of
//!   7.6 s.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use cranelift_codegen::control::ControlPlane;
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};

use crate::codemem::CodeArena;
use crate::diskcache::{DiskCache, Image, Index, Loaded, Name, Shape, Writer};
use crate::region::{Entry, Region, PAGE};
use crate::symbols;
use crate::translate::Tx;

/// A region to compile.
pub struct Request {
    /// Physical address of the entry.
    pub phys: u64,
    /// The entry, its mode and CS limit.
    pub entry: Entry,
    /// CS base the region runs with.
    pub cs_base: u64,
    /// The page's bytes when the region became hot.
    pub page: Box<[u8]>,
    /// The physical frame the next page mapped to then, and its first bytes (for
    /// instructions that cross the page end).
    pub next: Option<(u64, Box<[u8]>)>,
    /// Which tier: 0 compiles fast, 1 compiles for speed, 2 for speed without access
    /// groups (for code whose groups fail their checks, see `group`).
    pub tier: u8,
    /// The chain context of the region's CS and mode (None: it does not chain).
    pub chain: Option<u32>,
    /// The heat counter of a quick region (see `heat`): its number and its address.
    pub heat: Option<(u32, usize)>,
    /// Address of the dispatcher's `JitCtx` (a symbol of the code).
    pub ctx: usize,
    /// Only from the translation cache on disk: asked before the region is hot,
    /// because the cache has code for its entry.
    pub cache_only: bool,
    /// For a traced mode: the raw trace id of the region's first guest block (the
    /// others follow it), and the trace sink's epoch (see `ox86_cpu::trace`).
    pub trace: Option<(u32, u32)>,
}

/// A compiled region.
pub struct Compiled {
    /// What was asked.
    pub req: Request,
    /// The region (its instructions stay alive with the code, which points at them).
    pub region: Region,
    /// Address of the code.
    pub func: usize,
    /// Generation the code lives in.
    pub gen: u32,
    /// Bytes of host code.
    pub code_bytes: usize,
    /// Time the compilation (or the load) took.
    pub nanos: u64,
    /// The code came from the translation cache on disk.
    pub loaded: bool,
}

struct Gen {
    id: u32,
    module: JITModule,
    bytes: usize,
}

/// The code generator of each tier.
struct Isas {
    /// The quick tier for supervisor code.
    fast: OwnedTargetIsa,
    /// The quick tier for user code (the single-pass allocator, see the module's
    /// documentation).
    fast_user: OwnedTargetIsa,
    optimized: OwnedTargetIsa,
}

/// Compiles regions into generations of code memory.
pub struct Compiler {
    gens: VecDeque<Gen>,
    gen_limit: usize,
    next_id: u32,
    max_blocks: usize,
    fctx: FunctionBuilderContext,
    /// The code generators (an error when Cranelift cannot generate code here: every
    /// compilation then fails, and the interpreter runs everything).
    isas: Result<Isas, String>,
    /// `OX86_JIT_DUMP`: print the IR and the host code of every region (`1`), or of
    /// the regions entered at one EIP (a hex address).
    dump: Option<Option<u64>>,
    /// Functions compiled so far (makes their names unique).
    serial: u64,
    /// The translation cache on disk, if used: read here, written by `writer`.
    cache: Option<DiskCache>,
    writer: Option<Writer>,
    /// Bad entries found in the cache (counted for the dispatcher's statistics).
    pub cache_rejected: Arc<AtomicU64>,
    /// Each compilation waits this long first (see `JitConfig::compile_delay`).
    pub delay: std::time::Duration,
}

/// Compilation failed (an internal error: the region runs in the interpreter), or a
/// request only for the translation cache found nothing there.
#[derive(Debug, thiserror::Error)]
#[error("region at {phys:#x}: {msg}")]
pub struct CompileError {
    /// Entry of the region.
    pub phys: u64,
    /// What Cranelift said.
    pub msg: String,
    /// A request only for the cache, which has no code for it (not a failure).
    pub not_cached: bool,
}

/// Whether this process may run on one core only (the quick tier then uses the
/// single-pass register allocator for all code, see the module's documentation).
fn one_core() -> bool {
    std::thread::available_parallelism().map_or(true, |n| n.get() < 2)
}

/// The code generator of `tier` (0: fast compilation, 1: fast code); the quick tier
/// uses the single-pass register allocator if `single_pass`, else the backtracking one.
pub fn new_isa(tier: u8, single_pass: bool) -> Result<OwnedTargetIsa, String> {
    let mut flags = settings::builder();
    let (opt, regalloc) = match tier {
        0 if single_pass => ("none", "single_pass"),
        0 => ("none", "backtracking"),
        _ => ("speed", "backtracking"),
    };
    for (k, v) in [
        ("opt_level", opt),
        ("regalloc_algorithm", regalloc),
        ("is_pic", "false"),
        ("use_colocated_libcalls", "false"),
        // Cranelift's tail calls (region chaining) need frame pointers.
        ("preserve_frame_pointers", "true"),
        (
            "enable_verifier",
            if cfg!(debug_assertions) {
                "true"
            } else {
                "false"
            },
        ),
    ] {
        flags.set(k, v).map_err(|e| e.to_string())?;
    }
    cranelift_native::builder()
        .map_err(|e| e.to_string())?
        .finish(settings::Flags::new(flags))
        .map_err(|e| e.to_string())
}

/// A module for a generation of about `gen_limit` bytes of code.
fn new_module(gen_limit: usize) -> Result<JITModule, String> {
    let mut b = JITBuilder::with_isa(new_isa(1, false)?, default_libcall_names());
    // Room for the function that crosses the limit (a region's code is far smaller).
    if let Some(arena) = CodeArena::new(gen_limit + (8 << 20)) {
        b.memory_provider(Box::new(arena));
    }
    Ok(JITModule::new(b))
}

/// What the code generators of `isas` may use of the host: part of the translation
/// cache's version.
fn describe(isas: &Isas) -> String {
    let mut s = String::new();
    for isa in [&isas.fast, &isas.fast_user, &isas.optimized] {
        s += &format!("{} {}", isa.triple(), isa.flags());
        for v in isa.isa_flags() {
            s += &format!(" {v}");
        }
        s.push('\n');
    }
    s
}

impl Compiler {
    /// A compiler whose generations hold about `gen_limit` bytes of code each, with
    /// the translation cache under `cache` (its directory and most bytes), if any.
    pub fn new(gen_limit: usize, max_blocks: usize, cache: Option<(&Path, u64)>) -> Compiler {
        let isas = new_isa(0, one_core()).and_then(|fast| {
            Ok(Isas {
                fast,
                fast_user: new_isa(0, true)?,
                optimized: new_isa(1, false)?,
            })
        });
        let opened = match (cache, &isas) {
            (Some((dir, max)), Ok(isas)) => match DiskCache::open(dir, &describe(isas), max) {
                Ok(c) => Some((c.clone(), Writer::spawn(c))),
                Err(e) => {
                    tracing::warn!(target: "ox86::jit", "no translation cache in {}: {e}", dir.display());
                    None
                }
            },
            _ => None,
        };
        let (cache, writer) = opened.unzip();
        Compiler {
            cache,
            writer,
            cache_rejected: Arc::default(),
            delay: std::time::Duration::ZERO,
            isas,
            gens: VecDeque::new(),
            gen_limit: gen_limit.max(1 << 16),
            next_id: 0,
            max_blocks,
            fctx: FunctionBuilderContext::new(),
            dump: std::env::var("OX86_JIT_DUMP").ok().map(|v| {
                u64::from_str_radix(v.trim_start_matches("0x"), 16)
                    .ok()
                    .filter(|_| v != "1")
            }),
            serial: 0,
        }
    }

    /// Makes sure the last generation has room, starting a new one when it is full.
    fn current(&mut self) -> Result<(), String> {
        let full = self.gens.back().is_none_or(|g| g.bytes >= self.gen_limit);
        if full {
            let module = new_module(self.gen_limit)?;
            self.gens.push_back(Gen {
                id: self.next_id,
                module,
                bytes: 0,
            });
            self.next_id += 1;
        }
        Ok(())
    }

    /// Frees generation `id` (the dispatcher no longer runs any of its code).
    pub fn free(&mut self, id: u32) {
        if let Some(pos) = self.gens.iter().position(|g| g.id == id) {
            if pos + 1 == self.gens.len() {
                // The current generation: new code goes to a fresh one.
                self.gens[pos].bytes = usize::MAX;
            }
            let g = self.gens.remove(pos).expect("present");
            // SAFETY: the dispatcher sends Free only after dropping every region of
            // this generation, and no compiled code runs during the call (code runs
            // only inside the dispatcher, on the CPU thread, which waits for nothing
            // here), so nothing can reach this memory again.
            unsafe { g.module.free_memory() };
        }
    }

    /// The entries of the translation cache (empty without one).
    pub fn cache_index(&self) -> Index {
        self.cache.as_ref().map(|c| c.index()).unwrap_or_default()
    }

    /// Compiles a region, or loads its code from the translation cache.
    pub fn compile(&mut self, mut req: Request) -> Result<Compiled, CompileError> {
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        let t0 = Instant::now();
        let phys = req.phys;
        let err = |msg: String| CompileError {
            phys,
            msg,
            not_cached: false,
        };
        debug_assert_eq!(req.page.len(), PAGE);
        let next = req.next.as_ref().map(|n| &n.1[..]);
        let region = Region::decode(&req.page, next, &req.entry, self.max_blocks);
        if region.blocks.is_empty() || region.blocks[0].insns.is_empty() {
            return Err(err("nothing to compile".into()));
        }
        if let Some((tier, image)) = self.cached(&req, &region) {
            // Optimised code counts no heat: its cell goes back to the dispatcher.
            let (asked, cell) = (req.tier, req.heat);
            req.tier = tier;
            if tier > 0 {
                req.heat = None;
            }
            let mut code = image.code;
            match symbols::apply(&mut code, &image.fixups, &region, &req) {
                Ok(()) => {
                    return self
                        .place(req, region, code, image.align, t0, true)
                        .map_err(err);
                }
                Err(why) => {
                    // A symbol the region lacks: not usable here.
                    self.reject(&why);
                    (req.tier, req.heat) = (asked, cell);
                }
            }
        }
        if req.cache_only {
            return Err(CompileError {
                phys,
                msg: "not in the translation cache".into(),
                not_cached: true,
            });
        }
        let mut image = self.translate(&req, &region).map_err(err)?;
        // The cache keeps the unpatched code; without a cache it is patched in place.
        let mut code = if self.writer.is_some() {
            image.code.clone()
        } else {
            std::mem::take(&mut image.code)
        };
        symbols::apply(&mut code, &image.fixups, &region, &req).map_err(err)?;
        let align = image.align;
        if let Some(w) = &self.writer {
            let name = Name::of(&req, &region, req.tier, req.heat.is_some(), self.max_blocks);
            w.store(name, image);
        }
        self.place(req, region, code, align, t0, false).map_err(err)
    }

    /// The code of `region` (asked for by `req`) in the translation cache, best tier
    /// first (at least the tier asked for), and its tier.
    fn cached(&self, req: &Request, region: &Region) -> Option<(u8, Image)> {
        let cache = self.cache.as_ref()?;
        let tiers: &[u8] = match req.tier {
            0 => &[2, 1, 0],
            1 => &[2, 1],
            _ => &[2],
        };
        for &tier in tiers {
            let heat = tier == 0 && req.heat.is_some();
            let name = Name::of(req, region, tier, heat, self.max_blocks);
            match cache.load(&name) {
                Loaded::Absent => {}
                Loaded::Bad(why) => self.reject(&why),
                Loaded::Found(image) if image.shape != shape(region) => {
                    self.reject("another region's shape");
                }
                Loaded::Found(image) => return Some((tier, image)),
            }
        }
        None
    }

    /// Counts a bad entry of the translation cache.
    fn reject(&self, why: &str) {
        self.cache_rejected.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(target: "ox86::jit", "translation cache: dropped {why}");
    }

    /// Translates `region` for `req` with Cranelift: the code without its fixups.
    fn translate(&mut self, req: &Request, region: &Region) -> Result<Image, String> {
        self.current()?;
        let fctx = &mut self.fctx;
        let g = self.gens.back_mut().expect("a generation");
        let module = &mut g.module;
        let mut ctx = module.make_context();
        // Helpers use the host's C convention; region code the tail one (chaining).
        let cc = ctx.func.signature.call_conv;
        ctx.func.signature = crate::chain::region_signature();
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, fctx);
            let tx = Tx::new(&mut b, region, req, cc);
            tx.translate();
            b.finalize(module.target_config());
        }
        let dump = self
            .dump
            .is_some_and(|only| only.is_none_or(|eip| eip == req.entry.eip));
        if dump {
            ctx.set_disasm(true);
            eprintln!(
                "region {:#x} ({} blocks):\n{}{}",
                req.phys,
                region.blocks.len(),
                guest_listing(region),
                ctx.func.display()
            );
        }
        let isas = self.isas.as_ref().map_err(|e| e.clone())?;
        let isa = match req.tier {
            0 if req.entry.mode.user() => &isas.fast_user,
            0 => &isas.fast,
            _ => &isas.optimized,
        };
        ctx.compile(&**isa, &mut ControlPlane::default())
            .map_err(|e| format!("{:?}", e.inner))?;
        let code = ctx.compiled_code().ok_or("no code")?;
        if let Some(text) = code.vcode.as_ref().filter(|_| dump) {
            eprintln!(
                "host code of region {:#x} (tier {}):\n{text}",
                req.phys, req.tier
            );
        }
        let image = Image {
            code: code.code_buffer().to_vec(),
            align: code.buffer.alignment,
            fixups: symbols::fixups(&ctx.func, code.buffer.relocs())?,
            shape: shape(region),
        };
        module.clear_context(&mut ctx);
        Ok(image)
    }

    /// Puts `code`, the code of `region` for `req` with its fixups applied, into code
    /// memory.
    fn place(
        &mut self,
        req: Request,
        region: Region,
        code: Vec<u8>,
        align: u32,
        t0: Instant,
        loaded: bool,
    ) -> Result<Compiled, String> {
        self.current()?;
        let g = self.gens.back_mut().expect("a generation");
        let module = &mut g.module;
        // Named by guest address and tier, for profilers (perf's map of JIT code).
        self.serial += 1;
        let name = format!(
            "ox86_{:x}_p{:x}_t{}_{}",
            req.entry.eip, req.phys, req.tier, self.serial
        );
        let sig = crate::chain::region_signature();
        let id = module
            .declare_function(&name, Linkage::Local, &sig)
            .map_err(|e| e.to_string())?;
        module
            .define_function_bytes(id, u64::from(align), &code, &[])
            .map_err(|e| format!("{e:?}"))?;
        module.finalize_definitions().map_err(|e| e.to_string())?;
        let func = module.get_finalized_function(id) as usize;
        let code_bytes = code.len();
        // Finalizing makes whole pages executable: count code by the page.
        g.bytes = g
            .bytes
            .saturating_add(code_bytes.div_ceil(PAGE).max(1) * PAGE);
        Ok(Compiled {
            req,
            region,
            func,
            gen: g.id,
            code_bytes,
            nanos: t0.elapsed().as_nanos() as u64,
            loaded,
        })
    }
}

/// The guest instructions of `region`, block by block (for `OX86_JIT_DUMP`).
fn guest_listing(region: &Region) -> String {
    use iced_x86::Formatter;
    let mut f = iced_x86::IntelFormatter::new();
    let mut s = String::new();
    for (k, b) in region.blocks.iter().enumerate() {
        s += &format!("guest block {k} ({:?}):\n", b.end);
        for d in &b.insns {
            let mut text = String::new();
            f.format(&d.insn, &mut text);
            s += &format!("    {:08x}  {text}\n", d.insn.ip());
        }
    }
    s
}

/// The shape of `region`, as the translation cache checks it.
fn shape(region: &Region) -> Shape {
    Shape {
        blocks: region.blocks.len() as u32,
        insns: region.blocks.iter().map(|b| b.insns.len() as u32).sum(),
        next_len: region.next_len,
    }
}
