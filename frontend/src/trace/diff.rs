//! `ox86 trace diff A B`: the first instruction (or event) where two traces part,
//! with both sides' context.

use std::collections::VecDeque;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use iced_x86::{Formatter, IntelFormatter};
use ox86::trace::{BlockDef, Record};

use super::decode::Decoded;
use super::walk::{self, Walk};

/// Lines of context shown before and after the point where the traces part.
const CONTEXT: usize = 6;

/// One step of a trace: an instruction or an event, as text, with its identity.
#[derive(Clone, PartialEq, Eq)]
struct Step {
    icount: u64,
    /// What must be equal: the instruction's address and bytes, or the event.
    key: Vec<u8>,
    text: String,
}

/// A trace read step by step.
struct Side {
    w: Walk,
    decoded: Decoded,
    queue: VecDeque<Step>,
    fmt: IntelFormatter,
    done: bool,
}

impl Side {
    fn new(path: &Path) -> Result<Side> {
        Ok(Side {
            w: walk::open(path)?,
            decoded: Decoded::default(),
            queue: VecDeque::new(),
            fmt: IntelFormatter::new(),
            done: false,
        })
    }

    /// The next step; None at the end; Err(exit code) for an unreadable trace.
    fn next(&mut self) -> Result<Option<Step>, ExitCode> {
        while self.queue.is_empty() && !self.done {
            let rec = match self.w.next() {
                Ok(Some(r)) => r,
                Ok(None) => {
                    self.done = true;
                    break;
                }
                Err(e) => return Err(self.w.fail(&e)),
            };
            match rec {
                Record::Block { id, icount } => {
                    let def: BlockDef = self.w.r.def(id).clone();
                    let insns = self.decoded.get(id, &def);
                    let mut off = 0usize;
                    for (k, i) in insns.iter().enumerate() {
                        let lin = def.cs_base.wrapping_add(i.ip()) & 0xffff_ffff;
                        let bytes = &def.bytes[off..off + i.len()];
                        off += i.len();
                        let mut t = String::new();
                        self.fmt.format(i, &mut t);
                        let mut key = lin.to_le_bytes().to_vec();
                        key.extend_from_slice(bytes);
                        self.queue.push_back(Step {
                            icount: icount + k as u64,
                            key,
                            text: format!("{:>12}  {lin:08x}  {t}", icount + k as u64),
                        });
                    }
                }
                other => {
                    let text = format!("{:>12}  -- {other:?}", "");
                    self.queue.push_back(Step {
                        icount: self.w.r.icount(),
                        key: format!("{other:?}").into_bytes(),
                        text,
                    });
                }
            }
        }
        Ok(self.queue.pop_front())
    }
}

/// Compares traces `a` and `b`: exit 0 if they hold the same execution, 1 if they
/// part (printing where), 2 if one cannot be read.
pub fn run(a: &Path, b: &Path) -> Result<ExitCode> {
    let mut sa = Side::new(a)?;
    let mut sb = Side::new(b)?;
    if sa.w.r.header().start != sb.w.r.header().start {
        println!(
            "the traces start at different instructions: {} and {}",
            sa.w.r.header().start,
            sb.w.r.header().start
        );
        return Ok(ExitCode::from(1));
    }
    let mut before: VecDeque<String> = VecDeque::new();
    let mut n = 0u64;
    loop {
        let x = match sa.next() {
            Ok(x) => x,
            Err(_) => return Ok(ExitCode::from(2)),
        };
        let y = match sb.next() {
            Ok(y) => y,
            Err(_) => return Ok(ExitCode::from(2)),
        };
        match (&x, &y) {
            (None, None) => {
                println!("the traces are the same: {n} instructions and events");
                return Ok(ExitCode::SUCCESS);
            }
            (Some(p), Some(q)) if p.key == q.key && p.icount == q.icount => {
                if before.len() == CONTEXT {
                    before.pop_front();
                }
                before.push_back(p.text.clone());
                n += 1;
                continue;
            }
            _ => {}
        }
        let at = x.as_ref().or(y.as_ref()).map_or(0, |s| s.icount);
        println!("the traces part at instruction {at}:");
        for l in &before {
            println!("  {l}");
        }
        for (name, first, side) in [(a, x, &mut sa), (b, y, &mut sb)] {
            println!("{}:", name.display());
            let mut shown = 0;
            let mut s = first;
            while let Some(step) = s {
                println!("> {}", step.text);
                shown += 1;
                if shown == CONTEXT {
                    break;
                }
                s = side.next().unwrap_or(None);
            }
            if shown == 0 {
                println!("> (the trace ends here)");
            }
        }
        return Ok(ExitCode::from(1));
    }
}
