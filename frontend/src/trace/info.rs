//! `ox86 trace info`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use ox86::trace::{Record, TraceReader};

/// Prints what trace `path` holds; an unreadable trace gets one line and exit code 1.
pub fn run(path: &Path) -> Result<ExitCode> {
    let mut r = TraceReader::open(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let h = *r.header();
    let (mut blocks, mut exc, mut int, mut ctx, mut ports) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut cr3s = std::collections::BTreeSet::new();
    let mut mems = [0u64; 2];
    let mut times: (Option<u64>, Option<u64>) = (None, None);
    let fail = loop {
        match r.next_record() {
            Ok(Some(Record::Block { .. })) => blocks += 1,
            Ok(Some(Record::Exception { .. })) => exc += 1,
            Ok(Some(Record::Interrupt { .. })) => int += 1,
            Ok(Some(Record::Context { cr3, .. })) => {
                ctx += 1;
                cr3s.insert(cr3);
            }
            Ok(Some(Record::Port { .. })) => ports += 1,
            Ok(Some(Record::Time { ns, .. })) => {
                times.0.get_or_insert(ns);
                times.1 = Some(ns);
            }
            Ok(Some(Record::Mem { access, .. })) => mems[usize::from(access.write)] += 1,
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    let insns = r.icount() - h.start;
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    println!("trace: {}", path.display());
    println!("format: version {}, machine {:032x}", h.version, h.machine);
    println!(
        "instructions: {insns} (instruction counts {} to {})",
        h.start,
        r.icount()
    );
    let secs = |ns: u64| ns as f64 / 1e9;
    match times {
        (Some(a), Some(b)) if b > a => println!(
            "time span: {:.6} s of guest time ({:.6} s to {:.6} s since the machine started)",
            secs(b - a),
            secs(a),
            secs(b)
        ),
        _ => println!("time span: not recorded"),
    }
    println!(
        "blocks: {blocks} run, {} distinct; {:.2} instructions per block",
        r.defs().len(),
        insns as f64 / blocks.max(1) as f64
    );
    println!(
        "events: {exc} exceptions, {int} interrupts, {ctx} context changes ({} address spaces), {ports} port accesses",
        cr3s.len()
    );
    if r.has_memory() {
        println!(
            "memory accesses: {} reads, {} writes; {:.2} per instruction",
            mems[0],
            mems[1],
            (mems[0] + mems[1]) as f64 / insns.max(1) as f64
        );
    } else {
        println!("memory accesses: not recorded");
    }
    println!(
        "size: {size} bytes, {:.3} bytes per instruction",
        size as f64 / insns.max(1) as f64
    );
    if let Some(e) = fail {
        eprintln!("ox86: trace {}: {e}", path.display());
        return Ok(ExitCode::from(1));
    }
    match r.end() {
        Some(end) if end.stopped_early => {
            println!("end: the recording stopped early (the run went on untraced)")
        }
        _ => println!("end: complete"),
    }
    Ok(ExitCode::SUCCESS)
}
