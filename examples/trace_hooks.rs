//! An analysis of one's own inside ox86: hooks that count what the guest does, called
//! for every block, instruction, memory access, exception, interrupt, context change
//! and port access, with the JIT on.
//!
//! `cargo run --release --example trace_hooks [--blocks | --memory] [KERNEL [INITRD
//! [CMDLINE]]]` runs the built-in demo guest, or the kernel given, under `--icount` and
//! prints the counts; `--blocks` leaves out the per-instruction hook (and the mnemonic
//! counts); `--memory` adds the memory-access hook (reads, writes, the pages written
//! most).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use iced_x86::{Instruction, Mnemonic};
use ox86::trace::{BlockDef, MemAccess, TraceHooks};
use ox86::{MachineBuilder, SerialOut};

/// What the hooks count.
#[derive(Default, Debug)]
struct Counts {
    instructions: u64,
    blocks: u64,
    mnemonics: HashMap<Mnemonic, u64>,
    exceptions: HashMap<u8, u64>,
    interrupts: u64,
    address_spaces: HashMap<u64, u64>,
    com1_bytes: u64,
    reads: u64,
    writes: u64,
    pages_written: HashMap<u64, u64>,
    end: u64,
}

/// The hooks: they run on ox86's hook thread, so the counts are shared with `main`.
/// The last fields: whether to look at every instruction, and at every memory access.
struct Counter(Arc<Mutex<Counts>>, Counts, bool, bool);

impl TraceHooks for Counter {
    fn on_block(&mut self, _icount: u64, def: &BlockDef) {
        self.1.blocks += 1;
        self.1.instructions += u64::from(def.insns);
    }
    fn wants_instructions(&self) -> bool {
        self.2
    }
    fn on_instruction(&mut self, _icount: u64, _lin: u64, insn: &Instruction) {
        *self.1.mnemonics.entry(insn.mnemonic()).or_default() += 1;
    }
    fn on_exception(&mut self, _icount: u64, vector: u8, _code: Option<u32>, _cr2: u64) {
        *self.1.exceptions.entry(vector).or_default() += 1;
    }
    fn on_interrupt(&mut self, _icount: u64, _vector: u8) {
        self.1.interrupts += 1;
    }
    fn on_context(&mut self, _icount: u64, _cr0: u64, cr3: u64, _cpl: u8) {
        *self.1.address_spaces.entry(cr3).or_default() += 1;
    }
    fn on_port(&mut self, _icount: u64, write: bool, port: u16, _size: u8, _value: u32) {
        if write && port == 0x3f8 {
            self.1.com1_bytes += 1;
        }
    }
    fn wants_memory(&self) -> bool {
        self.3
    }
    fn on_memory(&mut self, _icount: u64, a: MemAccess) {
        if a.write {
            self.1.writes += 1;
            *self.1.pages_written.entry(a.lin >> 12).or_default() += 1;
        } else {
            self.1.reads += 1;
        }
    }
    fn on_end(&mut self, icount: u64) {
        self.1.end = icount;
        if let Ok(mut g) = self.0.lock() {
            *g = std::mem::take(&mut self.1);
        }
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let blocks_only = args.first().is_some_and(|a| a == "--blocks");
    let memory = args.first().is_some_and(|a| a == "--memory");
    if blocks_only || memory {
        args.remove(0);
    }
    let shared = Arc::new(Mutex::new(Counts::default()));
    let hooks = Box::new(Counter(
        shared.clone(),
        Counts::default(),
        !blocks_only,
        memory,
    ));
    let b = MachineBuilder::new()
        .ram_size(256 << 20)
        .serial(SerialOut::None)
        .icount(0)
        .no_reboot(true)
        .hooks(hooks, 0, None);
    let b = match args.first() {
        None => b.demo(),
        Some(k) => {
            let image = std::fs::read(k).expect("a readable kernel");
            let initrd = args
                .get(1)
                .map(|p| std::fs::read(p).expect("a readable initrd"));
            b.kernel(image, args.get(2).cloned().unwrap_or_default(), initrd)
        }
    };
    let mut m = b.build().expect("a machine");
    let reason = m.run().expect("the run");
    let c = shared.lock().expect("counts");
    println!("run ended: {reason:?} at instruction {}", c.end);
    println!(
        "{} instructions in {} blocks; {} interrupts; {} bytes written to COM1",
        c.instructions, c.blocks, c.interrupts, c.com1_bytes
    );
    let mut ex: Vec<_> = c.exceptions.iter().collect();
    ex.sort();
    println!("exceptions by vector: {ex:?}");
    println!("address spaces (CR3) entered: {}", c.address_spaces.len());
    let mut top: Vec<_> = c.mnemonics.iter().collect();
    top.sort_by_key(|x| std::cmp::Reverse(*x.1));
    for (m, n) in top.iter().take(10) {
        println!("{n:>14}  {m:?}");
    }
    if memory {
        println!(
            "memory: {} reads, {} writes; pages written most:",
            c.reads, c.writes
        );
        let mut pages: Vec<_> = c.pages_written.iter().collect();
        pages.sort_by_key(|x| std::cmp::Reverse(*x.1));
        for (p, n) in pages.iter().take(5) {
            println!("{n:>14}  {:#010x}", *p << 12);
        }
    }
}
