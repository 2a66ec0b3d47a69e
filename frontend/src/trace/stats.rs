//! `ox86 trace stats`: the instruction mix, by mnemonic and by class, per ring, per
//! mode and per address space.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use iced_x86::{CpuidFeature, FlowControl, Instruction, OpKind};
use ox86::trace::Record;

use super::decode::Decoded;
use super::walk::{self, Ctx};

/// Executions of each block in each context.
pub struct Counts {
    /// By context: executions by block id.
    pub by_ctx: HashMap<Ctx, Vec<u64>>,
    /// Memory accesses: reads and writes by instructions, those of deliveries, those
    /// of instructions cut short.
    pub mem: [u64; 4],
}

/// Reads the whole trace, counting block executions per context. Err: the exit code
/// after a one-line report.
pub fn count(w: &mut walk::Walk) -> Result<Counts, ExitCode> {
    let mut by_ctx: HashMap<Ctx, Vec<u64>> = HashMap::new();
    let mut ctx = w.ctx;
    let mut cur: Vec<u64> = Vec::new();
    let mut mem = [0u64; 4];
    // Accesses wait for their instruction's block (see `ox86::trace::format`).
    let mut pending: std::collections::VecDeque<(u64, bool)> = Default::default();
    loop {
        let rec = w.next();
        if !matches!(rec, Ok(Some(Record::Block { .. } | Record::Mem { .. }))) {
            mem[3] += pending.len() as u64;
            pending.clear();
        }
        match rec {
            Ok(Some(Record::Mem { icount, access })) => {
                if access.delivery {
                    mem[2] += 1;
                } else {
                    pending.push_back((icount, access.write));
                }
            }
            Ok(Some(Record::Block { id, icount })) => {
                let end = icount + u64::from(w.r.def(id).insns);
                while let Some(&(c, write)) = pending.front() {
                    if c >= end {
                        break;
                    }
                    mem[usize::from(write)] += 1;
                    pending.pop_front();
                }
                let i = id as usize;
                if i >= cur.len() {
                    cur.resize(i + 1 + i / 2, 0);
                }
                cur[i] += 1;
            }
            Ok(Some(Record::Context { .. })) => {
                if w.ctx != ctx {
                    // Each context's counts are out of the map while it is the current one.
                    let old =
                        std::mem::replace(&mut cur, by_ctx.remove(&w.ctx).unwrap_or_default());
                    by_ctx.insert(ctx, old);
                    ctx = w.ctx;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => return Err(w.fail(&e)),
        }
    }
    by_ctx.insert(ctx, cur);
    Ok(Counts { by_ctx, mem })
}

/// The class of an instruction.
pub fn class(i: &Instruction) -> &'static str {
    let f = i.cpuid_features();
    if f.iter().any(|f| {
        matches!(
            f,
            CpuidFeature::FPU
                | CpuidFeature::FPU287
                | CpuidFeature::FPU387
                | CpuidFeature::FPU387SL_ONLY
        )
    }) {
        return "x87";
    }
    if f.iter().any(|f| {
        let n = format!("{f:?}");
        n.starts_with("MMX") || n.starts_with("SSE") || n.starts_with("AVX")
    }) {
        return "SIMD";
    }
    if i.is_string_instruction() {
        return "string";
    }
    match i.flow_control() {
        FlowControl::Call | FlowControl::IndirectCall | FlowControl::Return => {
            return "call/return"
        }
        FlowControl::ConditionalBranch => return "conditional branch",
        FlowControl::UnconditionalBranch | FlowControl::IndirectBranch => return "jump",
        FlowControl::Interrupt | FlowControl::Exception => return "interrupt/trap",
        _ => {}
    }
    if i.is_privileged() {
        return "system";
    }
    if i.is_stack_instruction() {
        return "stack";
    }
    if (0..i.op_count()).any(|k| i.op_kind(k) == OpKind::Memory) {
        return "memory operand";
    }
    "register"
}

/// Prints the mix.
pub fn run(path: &Path, top: usize) -> Result<ExitCode> {
    let mut w = walk::open(path)?;
    let counts = match count(&mut w) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let mut decoded = Decoded::default();
    let mut mnem: HashMap<String, u64> = HashMap::new();
    let mut classes: HashMap<&'static str, u64> = HashMap::new();
    let mut ring: HashMap<u8, u64> = HashMap::new();
    let mut mode: HashMap<&'static str, u64> = HashMap::new();
    let mut space: HashMap<(u64, bool), u64> = HashMap::new();
    let mut total = 0u64;
    for (ctx, v) in &counts.by_ctx {
        for (id, &c) in v.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let def = w.r.def(id as u32);
            let insns = decoded.get(id as u32, def);
            let n = c * insns.len() as u64;
            total += n;
            *ring.entry(ctx.cpl).or_default() += n;
            *mode.entry(ctx.mode_name()).or_default() += n;
            *space.entry((ctx.cr3, ctx.cpl == 3)).or_default() += n;
            for i in insns.iter() {
                *mnem
                    .entry(format!("{:?}", i.mnemonic()).to_lowercase())
                    .or_default() += c;
                *classes.entry(class(i)).or_default() += c;
            }
        }
    }
    println!("{total} instructions");
    if w.r.has_memory() {
        let [r, wr, d, c] = counts.mem;
        println!("\nmemory accesses:");
        println!("  {r:>14}  reads by instructions");
        println!("  {wr:>14}  writes by instructions");
        println!("  {d:>14}  by deliveries of exceptions and interrupts");
        println!("  {c:>14}  by instructions an exception or interrupt cut short");
    }
    let pct = |n: u64| 100.0 * n as f64 / total.max(1) as f64;
    let table = |title: &str, rows: Vec<(String, u64)>, top: usize| {
        println!("\n{title}");
        let mut rows = rows;
        rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for (k, n) in rows.iter().take(top) {
            println!("  {n:>14}  {:>6.2}%  {k}", pct(*n));
        }
        if rows.len() > top {
            let rest: u64 = rows[top..].iter().map(|r| r.1).sum();
            println!(
                "  {rest:>14}  {:>6.2}%  ({} more)",
                pct(rest),
                rows.len() - top
            );
        }
    };
    table(
        "by ring:",
        ring.into_iter()
            .map(|(k, n)| (format!("ring {k}"), n))
            .collect(),
        usize::MAX,
    );
    table(
        "by mode:",
        mode.into_iter().map(|(k, n)| (k.to_string(), n)).collect(),
        usize::MAX,
    );
    table(
        "by address space (CR3):",
        space
            .into_iter()
            .map(|((cr3, user), n)| {
                (
                    format!("CR3 {cr3:#010x} {}", if user { "user" } else { "kernel" }),
                    n,
                )
            })
            .collect(),
        top,
    );
    table(
        "by class:",
        classes
            .into_iter()
            .map(|(k, n)| (k.to_string(), n))
            .collect(),
        usize::MAX,
    );
    table("by mnemonic:", mnem.into_iter().collect(), top);
    Ok(ExitCode::SUCCESS)
}
