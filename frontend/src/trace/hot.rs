//! `ox86 trace hot`: the functions and blocks that ran the most instructions, named
//! from symbol files; user code by address space (CR3).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use iced_x86::{Formatter, IntelFormatter};

use super::decode::Decoded;
use super::stats::count;
use super::symbols::{SymRef, Symbols};
use super::walk;

/// What instructions are attributed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Func {
    /// A symbol; user code keeps its address space.
    Sym(SymRef, Option<u64>),
    /// No symbol: the page, in its address space (None: kernel).
    Page(u64, Option<u64>),
}

/// Prints the hot functions and blocks.
pub fn run(path: &Path, symbols: &[PathBuf], top: usize) -> Result<ExitCode> {
    let mut syms = Symbols::load(symbols)?;
    let mut w = walk::open(path)?;
    let counts = match count(&mut w) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let mut decoded = Decoded::default();
    let mut funcs: HashMap<Func, u64> = HashMap::new();
    let mut spaces: HashMap<Option<u64>, u64> = HashMap::new();
    // (instructions, executions, block, address space, CPL)
    let mut blocks: Vec<(u64, u64, u32, Option<u64>, u8)> = Vec::new();
    let mut total = 0u64;
    for (ctx, v) in &counts.by_ctx {
        let space = (ctx.cpl == 3).then_some(ctx.cr3);
        for (id, &c) in v.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let id = id as u32;
            let def = w.r.def(id);
            let insns = decoded.get(id, def);
            let n = c * insns.len() as u64;
            total += n;
            *spaces.entry(space).or_default() += n;
            blocks.push((n, c, id, space, ctx.cpl));
            for i in insns.iter() {
                let lin = def.cs_base.wrapping_add(i.ip()) & 0xffff_ffff;
                let f = match syms.lookup(id, def, ctx.cpl, lin) {
                    Some(s) => Func::Sym(s, space),
                    None => Func::Page(lin >> 12 << 12, space),
                };
                *funcs.entry(f).or_default() += c;
            }
        }
    }
    let pct = |n: u64| 100.0 * n as f64 / total.max(1) as f64;
    let space_name = |s: Option<u64>| match s {
        None => "kernel".to_string(),
        Some(cr3) => format!("user CR3 {cr3:#x}"),
    };
    println!("{total} instructions");
    println!("\naddress spaces:");
    let mut sp: Vec<_> = spaces.into_iter().collect();
    sp.sort_by_key(|a| (std::cmp::Reverse(a.1), a.0));
    for (s, n) in sp.iter().take(top) {
        println!("  {n:>14}  {:>6.2}%  {}", pct(*n), space_name(*s));
    }
    println!("\nhot functions:");
    let mut fs: Vec<_> = funcs.into_iter().collect();
    fs.sort_by_key(|a| (std::cmp::Reverse(a.1), a.0));
    for (f, n) in fs.iter().take(top) {
        let name = match *f {
            Func::Sym(s, space) => {
                let line = syms
                    .line(s, syms.start(s))
                    .map(|l| format!(" ({l})"))
                    .unwrap_or_default();
                let at = match space {
                    Some(_) => format!(" [{}, {}]", syms.file_name(s), space_name(space)),
                    None => format!(" [{}]", syms.file_name(s)),
                };
                format!("{}{line}{at}", syms.name(s))
            }
            Func::Page(p, space) => format!("?? (code at {p:#010x}) [{}]", space_name(space)),
        };
        println!("  {n:>14}  {:>6.2}%  {name}", pct(*n));
    }
    println!("\nhot blocks:");
    blocks.sort_by_key(|b| (std::cmp::Reverse(b.0), b.2, b.3));
    let mut fmt = IntelFormatter::new();
    for &(n, c, id, space, cpl) in blocks.iter().take(top) {
        let def = w.r.def(id);
        let lin = def.lin();
        let at = match syms.lookup(id, def, cpl, lin) {
            Some(s) => format!("{}+{:#x}", syms.name(s), lin - syms.start(s)),
            None => String::new(),
        };
        let insns = decoded.get(id, def);
        let mut first = String::new();
        if let Some(i) = insns.first() {
            fmt.format(i, &mut first);
        }
        println!(
            "  {n:>14}  {:>6.2}%  {c:>12} runs  {lin:08x} {at} ({} instructions: {first} ...) [{}]",
            pct(n),
            def.insns,
            space_name(space)
        );
    }
    Ok(ExitCode::SUCCESS)
}
