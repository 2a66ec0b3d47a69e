//! `ox86 trace flame`: call stacks rebuilt from the trace's own calls, returns,
//! interrupts and returns from them, one stack per address space (no frame pointers
//! needed in the guest), as folded stacks or a flame graph drawn by inferno.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use iced_x86::{FlowControl, Mnemonic};
use ox86::trace::Record;

use super::decode::Decoded;
use super::symbols::Symbols;
use super::walk;

/// Most frames a stack keeps (a deeper one, likely unmatched calls, starts again).
const MAX_DEPTH: usize = 128;
/// How far down a return looks for its call's frame; a return that matches none of
/// them (a stack switch, a longjmp) leaves the stack unknown: it starts again.
const RETURN_SEARCH: usize = 32;
/// Most nodes of the tree of stacks; past it, new stacks are cut at their parent.
const MAX_NODES: usize = 4 << 20;

/// A frame: its node in the tree of stacks, the address its caller resumes at
/// (None: an interrupt, left by IRET), and the CPL it was entered at.
#[derive(Clone, Copy)]
struct Frame {
    node: u32,
    ret: Option<u64>,
    cpl: u8,
}

/// Stacks as a tree: node = (parent, name).
#[derive(Default)]
struct Tree {
    nodes: Vec<(u32, u32)>,
    index: HashMap<(u32, u32), u32>,
    names: Vec<String>,
    name_ids: HashMap<String, u32>,
}

const ROOT: u32 = u32::MAX;

impl Tree {
    fn name(&mut self, s: &str) -> u32 {
        if let Some(&n) = self.name_ids.get(s) {
            return n;
        }
        let n = self.names.len() as u32;
        self.names.push(s.to_string());
        self.name_ids.insert(s.to_string(), n);
        n
    }

    fn child(&mut self, parent: u32, name: u32) -> u32 {
        if let Some(&n) = self.index.get(&(parent, name)) {
            return n;
        }
        if self.nodes.len() >= MAX_NODES && parent != ROOT {
            return parent;
        }
        self.nodes.push((parent, name));
        let n = (self.nodes.len() - 1) as u32;
        self.index.insert((parent, name), n);
        n
    }

    fn path(&self, mut node: u32) -> Vec<&str> {
        let mut v = Vec::new();
        while node != ROOT {
            let (p, n) = self.nodes[node as usize];
            v.push(self.names[n as usize].as_str());
            node = p;
        }
        v.reverse();
        v
    }
}

/// Writes the folded stacks (or, without `folded`, a flame graph) of trace `path`.
pub fn run(path: &Path, symbols: &[PathBuf], out: &Path, folded: bool) -> Result<ExitCode> {
    let mut syms = Symbols::load(symbols)?;
    let mut w = walk::open(path)?;
    let mut decoded = Decoded::default();
    let mut tree = Tree::default();
    let mut stacks: HashMap<u64, Vec<Frame>> = HashMap::new();
    // Instructions by (stack node, leaf name).
    let mut weights: HashMap<(u32, u32), u64> = HashMap::new();
    // The leaf name of each block, by CPL (names depend on the privilege level).
    let mut leaf_of: HashMap<(u32, u8), u32> = HashMap::new();
    let mut cr3 = w.ctx.cr3;
    let mut root = ROOT;
    let mut stack: Vec<Frame> = Vec::new();
    // What the last block's last instruction did: a call (return address), a return,
    // or an interrupt instruction.
    let mut pending_ret = false;
    let mut pending_iret = false;
    loop {
        let rec = match w.next() {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => return Ok(w.fail(&e)),
        };
        match rec {
            Record::Block { id, .. } => {
                let cpl = w.ctx.cpl;
                let def = w.r.def(id);
                let lin = def.lin();
                if root == ROOT {
                    let n = tree.name(&format!("CR3 {cr3:#x}"));
                    root = tree.child(ROOT, n);
                }
                if std::mem::take(&mut pending_ret) {
                    let low = stack.len().saturating_sub(RETURN_SEARCH);
                    match stack[low..].iter().rposition(|f| f.ret == Some(lin)) {
                        Some(k) => stack.truncate(low + k),
                        None => stack.clear(),
                    }
                }
                if std::mem::take(&mut pending_iret) {
                    if let Some(k) = stack.iter().rposition(|f| f.ret.is_none()) {
                        stack.truncate(k);
                    }
                }
                let leaf = match leaf_of.get(&(id, cpl)) {
                    Some(&l) => l,
                    None => {
                        let name = match syms.lookup(id, def, cpl, lin) {
                            Some(s) => syms.name(s).to_string(),
                            None => format!("?? {:#010x}", lin >> 12 << 12),
                        };
                        let l = tree.name(&name);
                        leaf_of.insert((id, cpl), l);
                        l
                    }
                };
                let top = stack.last().map_or(root, |f| f.node);
                *weights.entry((top, leaf)).or_default() += u64::from(def.insns);
                let insns = decoded.get(id, def);
                let Some(last) = insns.last() else {
                    continue;
                };
                match last.flow_control() {
                    FlowControl::Call | FlowControl::IndirectCall => {
                        let node = tree.child(top, leaf);
                        let ret = def.cs_base.wrapping_add(last.next_ip()) & 0xffff_ffff;
                        if stack.len() >= MAX_DEPTH {
                            stack.clear();
                        }
                        stack.push(Frame {
                            node,
                            ret: Some(ret),
                            cpl,
                        });
                    }
                    FlowControl::Return => {
                        if matches!(last.mnemonic(), Mnemonic::Iret | Mnemonic::Iretd) {
                            pending_iret = true;
                        } else {
                            pending_ret = true;
                        }
                    }
                    FlowControl::Interrupt => {
                        let what = match last.mnemonic() {
                            Mnemonic::Sysenter | Mnemonic::Syscall => "[system call]".to_string(),
                            _ => format!("[{:?}]", last.mnemonic()).to_lowercase(),
                        };
                        push_interrupt(&mut tree, &mut stack, top, leaf, &what, cpl);
                    }
                    _ => {}
                }
                if matches!(last.mnemonic(), Mnemonic::Sysexit | Mnemonic::Sysret) {
                    pending_iret = true;
                }
            }
            Record::Exception { vector, .. } | Record::Interrupt { vector, .. } => {
                let what = match rec {
                    Record::Exception { .. } => format!("[exception {vector}]"),
                    _ => format!("[interrupt {vector:#x}]"),
                };
                let top = stack.last().map_or(root, |f| f.node);
                let here = tree.name("(interrupted)");
                push_interrupt(&mut tree, &mut stack, top, here, &what, w.ctx.cpl);
            }
            Record::Context { .. } => {
                if w.ctx.cr3 != cr3 {
                    stacks.insert(cr3, std::mem::take(&mut stack));
                    cr3 = w.ctx.cr3;
                    stack = stacks.remove(&cr3).unwrap_or_default();
                    let n = tree.name(&format!("CR3 {cr3:#x}"));
                    root = tree.child(ROOT, n);
                }
                if w.ctx.cpl == 3 {
                    // Back in user mode: the kernel's frames are over.
                    let keep = stack.iter().position(|f| f.cpl != 3).unwrap_or(stack.len());
                    stack.truncate(keep);
                }
            }
            Record::Port { .. } | Record::Mem { .. } | Record::Time { .. } => {}
        }
    }
    let mut lines: Vec<String> = weights
        .into_iter()
        .map(|((node, leaf), n)| {
            let mut p = if node == ROOT {
                Vec::new()
            } else {
                tree.path(node)
            };
            p.push(tree.names[leaf as usize].as_str());
            format!("{} {n}", p.join(";"))
        })
        .collect();
    lines.sort();
    let file =
        std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut file = std::io::BufWriter::new(file);
    if folded {
        for l in &lines {
            writeln!(file, "{l}").with_context(|| format!("cannot write {}", out.display()))?;
        }
    } else {
        let mut opts = inferno::flamegraph::Options::default();
        opts.title = format!("ox86 trace {}", path.display());
        opts.count_name = "instructions".to_string();
        inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), &mut file)
            .map_err(|e| anyhow::anyhow!("cannot draw the flame graph: {e}"))?;
    }
    file.flush()
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// Pushes the frame of an interrupt (`what`) taken in function `leaf` under `top`.
fn push_interrupt(
    tree: &mut Tree,
    stack: &mut Vec<Frame>,
    top: u32,
    leaf: u32,
    what: &str,
    cpl: u8,
) {
    let at = tree.child(top, leaf);
    let n = tree.name(what);
    let node = tree.child(at, n);
    if stack.len() >= MAX_DEPTH {
        stack.clear();
    }
    stack.push(Frame {
        node,
        ret: None,
        cpl,
    });
}
