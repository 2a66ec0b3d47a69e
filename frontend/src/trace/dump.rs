//! `ox86 trace dump`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use iced_x86::{Formatter, IntelFormatter};
use ox86::trace::{MemAccess, Record, TraceReader};

use super::decode::Decoded;
use super::symbols::Symbols;
use super::walk::{mode_of, Ctx};

/// Options of `ox86 trace dump`.
#[derive(Args, Debug)]
pub struct DumpArgs {
    /// The trace file.
    file: PathBuf,
    /// The first instruction count to show.
    #[arg(long, value_name = "N")]
    from: Option<u64>,
    /// Show instructions before this instruction count.
    #[arg(long, value_name = "N")]
    to: Option<u64>,
    /// Only instructions run with this CR3 (an address space).
    #[arg(long, value_name = "X", value_parser = parse_number)]
    cr3: Option<u64>,
    /// Only instructions run at this privilege level (0: kernel, 3: user).
    #[arg(long, value_name = "0|3", value_parser = clap::value_parser!(u8).range(0..=3))]
    ring: Option<u8>,
    /// ELF files and Linux System.map files: each instruction is named
    /// `<function+offset>` after its disassembly.
    #[arg(long, num_args = 1.., value_name = "FILE")]
    symbols: Vec<PathBuf>,
}

/// A number in decimal or with 0x in hexadecimal (as the monitor reads them).
fn parse_number(s: &str) -> Result<u64, String> {
    ox86::monitor::parse_number(s).ok_or_else(|| format!("'{s}' is not a number"))
}

/// Prints the instructions of the window asked for.
pub fn run(a: &DumpArgs) -> Result<ExitCode> {
    let mut syms = Symbols::load(&a.symbols)?;
    let mut r = TraceReader::open(&a.file).map_err(|e| anyhow::anyhow!("{e}"))?;
    let from = a.from.unwrap_or(0);
    let to = a.to.unwrap_or(u64::MAX);
    let mut decoded = Decoded::default();
    let mut fmt = IntelFormatter::new();
    fmt.options_mut().set_first_operand_char_index(8);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut text = String::new();
    let (mut cr3, mut cpl) = (0u64, 0u8);
    let shown =
        |cr3: u64, cpl: u8| a.cr3.is_none_or(|x| x == cr3) && a.ring.is_none_or(|x| x == cpl);
    // Memory accesses come before their block: they wait for it, or for the event
    // that cut their instruction short.
    let mut mems: Vec<(u64, MemAccess)> = Vec::new();
    let fail = loop {
        let rec = match r.next_record() {
            Ok(Some(rec)) => rec,
            Ok(None) => break None,
            Err(e) => break Some(e),
        };
        if !matches!(rec, Record::Block { .. } | Record::Mem { .. }) && !mems.is_empty() {
            for (c, m) in mems.drain(..) {
                if let Some(l) = mem_line(c, &m, from, to) {
                    if shown(cr3, cpl) && writeln!(out, "{:>12}  {l}", "").is_err() {
                        return Ok(ExitCode::SUCCESS);
                    }
                }
            }
        }
        let line = match rec {
            Record::Mem { icount, access } => {
                if !access.delivery {
                    mems.push((icount, access));
                    continue;
                }
                match mem_line(icount, &access, from, to) {
                    Some(l) => l,
                    None => continue,
                }
            }
            Record::Block { id, icount } => {
                // This block's accesses lead the list; later blocks' stay.
                let end = icount + u64::from(r.def(id).insns);
                let mine = mems.iter().take_while(|(c, _)| *c < end).count();
                let pending: Vec<(u64, MemAccess)> = mems.drain(..mine).collect();
                let n = u64::from(r.def(id).insns);
                if icount + n <= from || icount >= to || !shown(cr3, cpl) {
                    if icount >= to {
                        break None;
                    }
                    continue;
                }
                let def = r.def(id);
                let insns = decoded.get(id, def);
                for (k, i) in insns.iter().enumerate() {
                    let c = icount + k as u64;
                    if c < from || c >= to {
                        continue;
                    }
                    text.clear();
                    fmt.format(i, &mut text);
                    let lin = def.cs_base.wrapping_add(i.ip()) & 0xffff_ffff;
                    if let Some(s) = syms.lookup(id, def, cpl, lin) {
                        text.push_str(&format!("  <{}+{:#x}>", syms.name(s), lin - syms.start(s)));
                    }
                    if writeln!(out, "{c:>12}  {lin:08x}  {text}").is_err() {
                        return Ok(ExitCode::SUCCESS); // The reader went away (a pipe).
                    }
                    for (mc, m) in &pending {
                        if *mc == c {
                            let l = mem_line(c, m, from, to).unwrap_or_default();
                            if writeln!(out, "{:>12}  {l}", "").is_err() {
                                return Ok(ExitCode::SUCCESS);
                            }
                        }
                    }
                }
                continue;
            }
            Record::Context {
                icount,
                cr0,
                cr3: c3,
                cr4,
                cpl: p,
                flags,
            } => {
                (cr3, cpl) = (c3, p);
                if icount < from || icount >= to {
                    continue;
                }
                let mode = Ctx {
                    cr3: c3,
                    cpl: p,
                    mode: mode_of(cr0, flags),
                }
                .mode_name();
                format!("-- {mode}, CPL {p}, CR0 {cr0:#x}, CR3 {c3:#x}, CR4 {cr4:#x}")
            }
            Record::Exception {
                icount,
                vector,
                error_code,
                lin,
                cr2,
            } => {
                if icount < from || icount >= to {
                    continue;
                }
                let code = error_code
                    .map(|c| format!(", error code {c:#x}"))
                    .unwrap_or_default();
                let cr2 = if vector == 14 {
                    format!(", CR2 {cr2:#x}")
                } else {
                    String::new()
                };
                format!(
                    "-- exception {} (vector {vector}){code} at {lin:08x}{cr2}",
                    name(vector)
                )
            }
            Record::Time { icount, ns } => {
                if icount < from || icount >= to {
                    continue;
                }
                format!(
                    "-- guest time {}.{:09} s",
                    ns / 1_000_000_000,
                    ns % 1_000_000_000
                )
            }
            Record::Interrupt { icount, vector } => {
                if icount < from || icount >= to {
                    continue;
                }
                format!("-- interrupt, vector {vector:#x}")
            }
            Record::Port {
                icount,
                write,
                port,
                size,
                value,
            } => {
                if icount < from || icount >= to {
                    continue;
                }
                let w = usize::from(size) * 2;
                if write {
                    format!("-- out port {port:#06x} <- {value:#0w$x}", w = w + 2)
                } else {
                    format!("-- in port {port:#06x} -> {value:#0w$x}", w = w + 2)
                }
            }
        };
        if shown(cr3, cpl) && writeln!(out, "{:>12}  {line}", "").is_err() {
            return Ok(ExitCode::SUCCESS);
        }
    };
    let _ = out.flush();
    if let Some(e) = fail {
        eprintln!("ox86: trace {}: {e}", a.file.display());
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// The line of a memory access in the window, e.g. `  write 4 [c1234560] = 0x0000abcd`
/// (`frame` for a push of an exception's or interrupt's delivery).
fn mem_line(icount: u64, m: &MemAccess, from: u64, to: u64) -> Option<String> {
    if icount < from || icount >= to {
        return None;
    }
    let MemAccess {
        lin,
        size,
        write,
        value,
        delivery,
    } = *m;
    let what = match (delivery, write) {
        (true, _) => "  frame",
        (false, true) => "  write",
        (false, false) => "  read ",
    };
    let w = usize::from(size) * 2 + 2;
    Some(format!("{what} {size} [{lin:08x}] = {value:#0w$x}"))
}

/// The mnemonic of exception vector `v`.
fn name(v: u8) -> &'static str {
    const NAMES: [&str; 21] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#MF9", "#TS", "#NP", "#SS",
        "#GP", "#PF", "#15", "#MF", "#AC", "#MC", "#XM", "#VE",
    ];
    NAMES.get(usize::from(v)).copied().unwrap_or("#?")
}
