//! Shared machinery of the differential tests: a native runner (the host CPU in 32-bit
//! compatibility mode is the oracle), a fixed-seed PRNG, instruction encoders and a
//! checker that runs each case natively and in ox86 and collects mismatches.

#![allow(dead_code)]

pub mod native;

use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
use ox86_cpu::testkit::{Regs32, Snippet, SnippetEnd, CODE_ADDR, DATA_ADDR};

pub use native::{Native, NativeEnd};

pub const CF: u32 = 0x001;
pub const PF: u32 = 0x004;
pub const AF: u32 = 0x010;
pub const ZF: u32 = 0x040;
pub const SF: u32 = 0x080;
pub const DF: u32 = 0x400;
pub const OF: u32 = 0x800;
/// The six arithmetic status flags.
pub const STATUS: u32 = CF | PF | AF | ZF | SF | OF;
/// Every flag the tests load and compare (status flags and DF).
pub const ALL: u32 = STATUS | DF;

pub const EAX: usize = 0;
pub const ECX: usize = 1;
pub const EDX: usize = 2;
pub const EBX: usize = 3;
pub const ESP: usize = 4;
pub const EBP: usize = 5;
pub const ESI: usize = 6;
pub const EDI: usize = 7;

/// Size of the data area used by the tests.
pub const DATA_LEN: usize = 0x400;
/// Default ESP: inside the data area, so pushes are compared with the data.
pub const DEFAULT_ESP: u32 = DATA_ADDR + 0x380;

/// xorshift64* PRNG with a fixed seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    pub fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * n as u64) >> 32) as u32
    }
    pub fn bool(&mut self) -> bool {
        self.next_u64() >> 63 != 0
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u32) as usize]
    }
    /// A value of `bits` bits (8, 16 or 32), often an edge value.
    pub fn val(&mut self, bits: u32) -> u32 {
        let mask = mask(bits);
        let top = 1u32 << (bits - 1);
        match self.below(16) {
            0 => 0,
            1 => 1,
            2 => top - 1,
            3 => top,
            4 => mask,
            5 => top + 1,
            6 => mask - 1,
            7 => self.below(16),
            8 => mask - self.below(16),
            9 => top.wrapping_add(self.below(16)).wrapping_sub(8) & mask,
            10 => 1u32 << self.below(bits),
            _ => self.u32() & mask,
        }
    }
    /// A 32-bit register value whose low `bits` are `val(bits)`, the rest random.
    pub fn reg(&mut self, bits: u32) -> u32 {
        let v = self.val(bits);
        if bits == 32 {
            v
        } else {
            (self.u32() & !mask(bits)) | v
        }
    }
    /// Random EFLAGS over the six status flags (DF clear).
    pub fn flags(&mut self) -> u32 {
        self.u32() & STATUS | 2
    }
}

pub fn mask(bits: u32) -> u32 {
    if bits == 32 {
        u32::MAX
    } else {
        (1u32 << bits) - 1
    }
}

/// ModRM byte for a register operand.
pub fn modrm_reg(reg: u8, rm: u8) -> u8 {
    0xc0 | (reg & 7) << 3 | (rm & 7)
}

/// ModRM + disp32 for an absolute memory operand `[addr]`.
pub fn modrm_abs(reg: u8, addr: u32) -> Vec<u8> {
    let mut v = vec![(reg & 7) << 3 | 5];
    v.extend_from_slice(&addr.to_le_bytes());
    v
}

/// Operand-size prefix for an operand size (16 gets 0x66).
pub fn osz(bits: u32) -> &'static [u8] {
    if bits == 16 {
        &[0x66]
    } else {
        &[]
    }
}

/// Little-endian immediate of `bits` bits.
pub fn imm(bits: u32, v: u32) -> Vec<u8> {
    v.to_le_bytes()[..(bits / 8) as usize].to_vec()
}

/// Reads `bits` from the data area at `off`.
pub fn rd(data: &[u8], off: usize, bits: u32) -> u32 {
    let mut b = [0u8; 4];
    b[..(bits / 8) as usize].copy_from_slice(&data[off..off + (bits / 8) as usize]);
    u32::from_le_bytes(b)
}

/// Writes `bits` of `v` to the data area at `off`.
pub fn wr(data: &mut [u8], off: usize, bits: u32, v: u32) {
    data[off..off + (bits / 8) as usize].copy_from_slice(&v.to_le_bytes()[..(bits / 8) as usize]);
}

/// Sets the `bits`-wide part of register number `r` (8-bit: AL..BH numbering).
pub fn set_reg(regs: &mut Regs32, r: u8, bits: u32, v: u32) {
    let r = r as usize & 7;
    match bits {
        8 if r >= 4 => {
            regs.gpr[r - 4] = (regs.gpr[r - 4] & !0xff00) | (v & 0xff) << 8;
        }
        8 => regs.gpr[r] = (regs.gpr[r] & !0xff) | (v & 0xff),
        16 => regs.gpr[r] = (regs.gpr[r] & !0xffff) | (v & 0xffff),
        _ => regs.gpr[r] = v,
    }
}

/// Reads the `bits`-wide part of register number `r`.
pub fn get_reg(regs: &Regs32, r: u8, bits: u32) -> u32 {
    let r = r as usize & 7;
    match bits {
        8 if r >= 4 => (regs.gpr[r - 4] >> 8) & 0xff,
        8 => regs.gpr[r] & 0xff,
        16 => regs.gpr[r] & 0xffff,
        _ => regs.gpr[r],
    }
}

/// One differential case.
#[derive(Clone)]
pub struct Case {
    pub code: Vec<u8>,
    pub regs: Regs32,
    pub data: Vec<u8>,
    /// Flags compared at the end (architecturally defined ones).
    pub flags: u32,
    /// Per-register masks of the compared bits.
    pub reg_mask: [u32; 8],
    /// Per-byte masks of the compared data bits (None: compare everything).
    pub data_mask: Option<Vec<u8>>,
    /// The native run would fault with this exception (not run natively); ox86 must
    /// report it and leave the registers and data unchanged.
    pub expect_exception: Option<u8>,
    /// Free-form note shown on mismatch.
    pub note: String,
}

impl Case {
    pub fn new(code: Vec<u8>, regs: Regs32, flags: u32) -> Case {
        Case {
            code,
            regs,
            data: vec![0; DATA_LEN],
            flags,
            reg_mask: [u32::MAX; 8],
            data_mask: None,
            expect_exception: None,
            note: String::new(),
        }
    }
}

/// Default registers: random values, ESP inside the data area, random status flags.
pub fn rand_regs(rng: &mut Rng) -> Regs32 {
    let mut r = Regs32::default();
    for g in r.gpr.iter_mut() {
        *g = rng.reg(32);
    }
    r.gpr[ESP] = DEFAULT_ESP;
    r.eflags = rng.flags();
    r
}

/// Intel-syntax disassembly of a snippet.
pub fn disasm(code: &[u8]) -> String {
    let mut dec = Decoder::with_ip(32, code, CODE_ADDR as u64, DecoderOptions::NONE);
    let mut fmt = IntelFormatter::new();
    let mut out = String::new();
    for ins in &mut dec {
        let mut s = String::new();
        fmt.format(&ins, &mut s);
        if !out.is_empty() {
            out.push_str(" ; ");
        }
        out.push_str(&s);
    }
    out
}

pub fn hex(code: &[u8]) -> String {
    code.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn flag_names(f: u32) -> String {
    let mut v = Vec::new();
    for (bit, n) in [
        (CF, "CF"),
        (PF, "PF"),
        (AF, "AF"),
        (ZF, "ZF"),
        (SF, "SF"),
        (DF, "DF"),
        (OF, "OF"),
    ] {
        if f & bit != 0 {
            v.push(n);
        }
    }
    v.join(",")
}

fn fmt_regs(r: &Regs32) -> String {
    const N: [&str; 8] = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"];
    let mut s = String::new();
    for (k, n) in N.iter().enumerate() {
        s.push_str(&format!("{n}={:08x} ", r.gpr[k]));
    }
    s.push_str(&format!(
        "fl={:03x}[{}]",
        r.eflags & ALL,
        flag_names(r.eflags & ALL)
    ));
    s
}

/// Runs cases natively and in ox86 and collects mismatches.
pub struct Checker {
    name: String,
    sn: Snippet,
    pub cases: usize,
    pub failures: usize,
    /// Mismatches that went away on a fresh Snippet (stale decoded code).
    pub stale: usize,
    reports: Vec<String>,
    groups: Vec<(String, usize)>,
}

impl Checker {
    pub fn new(name: &str) -> Checker {
        Checker {
            name: name.to_string(),
            sn: Snippet::new(),
            cases: 0,
            failures: 0,
            stale: 0,
            reports: Vec::new(),
            groups: Vec::new(),
        }
    }

    /// The ox86 snippet machine (for inspecting state after [`Checker::run_ox86`]).
    pub fn snippet(&mut self) -> &mut Snippet {
        &mut self.sn
    }

    /// Runs the case in ox86 only.
    pub fn run_ox86(&mut self, case: &Case) -> (SnippetEnd, Regs32, Vec<u8>) {
        let mut r = case.regs;
        let mut d = case.data.clone();
        let end = self.sn.run(&case.code, &mut r, &mut d, 10_000);
        (end, r, d)
    }

    /// Runs the case natively only.
    pub fn run_native(case: &Case) -> (NativeEnd, Regs32, Vec<u8>) {
        let mut r = case.regs;
        let mut d = case.data.clone();
        let end = Native::get().run(&case.code, &mut r, &mut d);
        (end, r, d)
    }

    fn report(&mut self, case: &Case, what: String) {
        self.failures += 1;
        // Group by instruction form (iced Code of the first instruction), so that one
        // frequent mismatch does not hide the others.
        let key = Decoder::with_ip(32, &case.code, CODE_ADDR as u64, DecoderOptions::NONE)
            .decode()
            .code();
        let key = format!("{key:?}");
        let n = self.groups.iter_mut().find(|g| g.0 == key).map(|g| {
            g.1 += 1;
            g.1
        });
        let n = n.unwrap_or_else(|| {
            self.groups.push((key, 1));
            1
        });
        if self.reports.len() < 20 && n <= 3 {
            self.reports.push(format!(
                "[{}] {}  |  {}\n    note: {}\n    in:     {}\n{}",
                hex(&case.code),
                disasm(&case.code),
                what.lines().next().unwrap_or(""),
                case.note,
                fmt_regs(&case.regs),
                what.lines()
                    .skip(1)
                    .map(|l| format!("    {l}\n"))
                    .collect::<String>()
            ));
        }
    }

    /// Checks one case.
    pub fn check(&mut self, case: &Case) {
        self.cases += 1;
        let (oend, mut oregs, odata) = self.run_ox86(case);
        if let Some(v) = case.expect_exception {
            // The host must fault too (this checks the generator's fault predicate).
            let (nend, _, _) = Self::run_native(case);
            let want_sig = match v {
                0 => libc::SIGFPE,
                6 => libc::SIGILL,
                _ => libc::SIGSEGV,
            };
            if !matches!(nend, NativeEnd::Signal(s, _) if s == want_sig) {
                panic!(
                    "{}: expected a native fault (signal {want_sig}) but got {nend:?} — test generator bug\n[{}] {}\n in: {}\n note: {}",
                    self.name,
                    hex(&case.code),
                    disasm(&case.code),
                    fmt_regs(&case.regs),
                    case.note
                );
            }
            let mut bad = Vec::new();
            if oend != SnippetEnd::Exception(v) {
                bad.push(format!("expected exception {v}, ox86 gave {oend:?}"));
            } else {
                if oregs.gpr != case.regs.gpr {
                    bad.push(format!(
                        "registers changed by faulting instruction: {}",
                        fmt_regs(&oregs)
                    ));
                }
                if odata != case.data {
                    bad.push("data changed by faulting instruction".to_string());
                }
            }
            if !bad.is_empty() {
                let msg = bad.join("; ");
                self.report(case, format!("{msg}\nox86:   {}", fmt_regs(&oregs)));
            }
            return;
        }
        let (nend, nregs, ndata) = Self::run_native(case);
        if let NativeEnd::Signal(sig, ip) = nend {
            panic!(
                "{}: native run faulted (signal {sig} at {ip:#x}) — test generator bug\n[{}] {}\n in: {}\n note: {}",
                self.name,
                hex(&case.code),
                disasm(&case.code),
                fmt_regs(&case.regs),
                case.note
            );
        }
        let mut diffs = Self::diff(case, oend, &oregs, &odata, &nregs, &ndata);
        if !diffs.is_empty() {
            // A reused Snippet may run a stale decoded block (see the test
            // `snippet_sees_rewritten_code`); judge the instruction by a fresh machine.
            let mut fresh = Snippet::new();
            let mut r = case.regs;
            let mut d = case.data.clone();
            let fend = fresh.run(&case.code, &mut r, &mut d, 10_000);
            let fdiffs = Self::diff(case, fend, &r, &d, &nregs, &ndata);
            if fdiffs.is_empty() {
                self.stale += 1;
                diffs.clear();
            } else {
                diffs = fdiffs;
                oregs = r;
            }
        }
        if !diffs.is_empty() {
            let head = diffs.join("; ");
            self.report(
                case,
                format!(
                    "{head}\nnative: {}\nox86:   {}",
                    fmt_regs(&nregs),
                    fmt_regs(&oregs)
                ),
            );
        }
    }

    fn diff(
        case: &Case,
        oend: SnippetEnd,
        oregs: &Regs32,
        odata: &[u8],
        nregs: &Regs32,
        ndata: &[u8],
    ) -> Vec<String> {
        let mut diffs = Vec::new();
        if oend != SnippetEnd::Done {
            diffs.push(format!("ox86 ended with {oend:?}"));
        } else {
            const N: [&str; 8] = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"];
            #[allow(clippy::needless_range_loop)]
            for k in 0..8 {
                let m = case.reg_mask[k];
                if (nregs.gpr[k] ^ oregs.gpr[k]) & m != 0 {
                    diffs.push(format!(
                        "{}: native {:08x} ox86 {:08x}{}",
                        N[k],
                        nregs.gpr[k],
                        oregs.gpr[k],
                        if m != u32::MAX {
                            format!(" (mask {m:08x})")
                        } else {
                            String::new()
                        }
                    ));
                }
            }
            let fd = (nregs.eflags ^ oregs.eflags) & case.flags;
            if fd != 0 {
                diffs.push(format!(
                    "flags differ: {} (compared: {})",
                    flag_names(fd),
                    flag_names(case.flags)
                ));
            }
            for i in 0..case.data.len() {
                let m = case.data_mask.as_ref().map_or(0xff, |dm| dm[i]);
                if (ndata[i] ^ odata[i]) & m != 0 {
                    let lo = i & !7;
                    let hi = (lo + 16).min(case.data.len());
                    diffs.push(format!(
                        "data[{i:#x}]: native {} ox86 {} (from {lo:#x})",
                        hex(&ndata[lo..hi]),
                        hex(&odata[lo..hi])
                    ));
                    break;
                }
            }
        }
        diffs
    }

    /// Panics with the collected mismatches, if any.
    pub fn finish(self) {
        assert!(self.cases > 0, "{}: no cases ran", self.name);
        if self.failures == 0 && self.stale > 0 {
            panic!(
                "{}: all {} cases agree with the host on a fresh ox86 Snippet, but {} of them \
                 gave different results on the reused Snippet (stale decoded code: see the \
                 test snippet_sees_rewritten_code)",
                self.name, self.cases, self.stale
            );
        }
        if self.failures > 0 {
            let groups: Vec<String> = self
                .groups
                .iter()
                .map(|g| format!("{} x{}", g.0, g.1))
                .collect();
            panic!(
                "{}: {} of {} cases mismatch (+{} only on the reused Snippet: stale code), by form: {}\n(showing {}):\n{}",
                self.name,
                self.failures,
                self.cases,
                self.stale,
                groups.join(", "),
                self.reports.len(),
                self.reports.join("\n")
            );
        }
    }
}

/// Runs a set of named sub-generators with one checker; the closure gets the checker
/// and the RNG.
pub fn run_test(name: &str, seed: u64, f: impl FnOnce(&mut Checker, &mut Rng)) {
    let mut c = Checker::new(name);
    let mut rng = Rng::new(seed);
    f(&mut c, &mut rng);
    c.finish();
}
