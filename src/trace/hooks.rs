//! Hooks for embedders: a user's own analysis, called for each event the tracer sees
//! (block, instruction, memory access, exception, interrupt, context change, port
//! I/O), with the JIT on as off.
//!
//! The hooks observe; they do not stop or change the guest. They are fed from the
//! trace's own pipeline: the engines record raw blocks (one store per block in
//! compiled code), the writer thread makes the canonical stream, and a hook thread
//! reads it back and calls the hooks, in execution order, a chunk (about a million
//! records) behind the guest and completely by the end of the run. Costs, measured on
//! the Debian boot (`ox86test=procs`, 6.9 G instructions, warm translation cache,
//! 5.1 s without hooks): see the README's "Traces" section. With no hook set nothing
//! is recorded and the guest runs at full speed.

use std::io::{Read, Write};

use crossbeam::channel::{bounded, Receiver, Sender};
use iced_x86::Instruction;

use super::{BlockDef, MemAccess, Record, TraceReader};

/// What a hook gets for each event. Every method has an empty default: implement the
/// ones you need. `wants_instructions` says whether [`TraceHooks::on_instruction`] is
/// called (decoding every instruction costs more than looking at blocks).
pub trait TraceHooks: Send {
    /// A block ran whole: `def.insns` instructions from instruction count `icount`.
    fn on_block(&mut self, _icount: u64, _def: &BlockDef) {}
    /// Whether to decode and hand over every instruction.
    fn wants_instructions(&self) -> bool {
        false
    }
    /// Instruction `insn` (decoded, with its EIP as IP) ran as instruction `icount`,
    /// at linear address `lin`.
    fn on_instruction(&mut self, _icount: u64, _lin: u64, _insn: &Instruction) {}
    /// An exception was delivered before instruction `icount`.
    fn on_exception(&mut self, _icount: u64, _vector: u8, _error_code: Option<u32>, _cr2: u64) {}
    /// An external interrupt was delivered before instruction `icount`.
    fn on_interrupt(&mut self, _icount: u64, _vector: u8) {}
    /// The mode, privilege level or paging changed before instruction `icount` (also
    /// once at the start).
    fn on_context(&mut self, _icount: u64, _cr0: u64, _cr3: u64, _cpl: u8) {}
    /// Instruction `icount` read (`write` false) or wrote a port.
    fn on_port(&mut self, _icount: u64, _write: bool, _port: u16, _size: u8, _value: u32) {}
    /// Whether to record every memory access and call [`TraceHooks::on_memory`] (the
    /// guest runs several times slower, see the README).
    fn wants_memory(&self) -> bool {
        false
    }
    /// Instruction `icount` read or wrote `size` bytes (1 to 8; longer accesses come
    /// eight bytes a piece) at linear address `lin`; called after `on_instruction` for
    /// it (after `on_block` for its block when instructions are not wanted). `delivery`: not an instruction's access but the delivery's of the exception
    /// or interrupt just reported (before instruction `icount`).
    fn on_memory(&mut self, _icount: u64, _access: MemAccess) {}
    /// The run (or the window traced) ended; every event was handed over.
    fn on_end(&mut self, _icount: u64) {}
}

/// The writing end of the in-memory pipe from the trace writer to the hook thread.
pub(crate) struct PipeWriter(Sender<Vec<u8>>);

impl Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .send(buf.to_vec())
            .map_err(|_| std::io::Error::other("the hook thread stopped"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The reading end.
struct PipeReader {
    rx: Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(v) => {
                    self.cur = v;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Starts the thread that reads the trace from a pipe and calls `hooks`; returns the
/// pipe's writing end and the thread, which ends with the trace (Err: what went
/// wrong).
pub(crate) fn spawn(
    mut hooks: Box<dyn TraceHooks>,
) -> Result<(PipeWriter, std::thread::JoinHandle<Result<(), String>>), String> {
    let (tx, rx) = bounded::<Vec<u8>>(64);
    let t = std::thread::Builder::new()
        .name("ox86-hooks".into())
        .spawn(move || {
            let pipe = PipeReader {
                rx,
                cur: Vec::new(),
                pos: 0,
            };
            let mut r = TraceReader::new(Box::new(pipe)).map_err(|e| e.to_string())?;
            let decode = hooks.wants_instructions();
            let mut decoded: Vec<Option<Box<[Instruction]>>> = Vec::new();
            // Memory accesses come before their block in the file, in order: they
            // wait for it (or for the event that cut their instruction short).
            let mut mems: Vec<(u64, MemAccess)> = Vec::new();
            loop {
                let rec = r.next_record().map_err(|e| e.to_string())?;
                if !matches!(rec, Some(Record::Block { .. } | Record::Mem { .. })) {
                    for (icount, m) in mems.drain(..) {
                        hooks.on_memory(icount, m);
                    }
                }
                match rec {
                    None => {
                        hooks.on_end(r.icount());
                        return Ok(());
                    }
                    Some(Record::Block { id, icount }) => {
                        let def = r.def(id);
                        hooks.on_block(icount, def);
                        // This block's accesses lead the list (it may hold later
                        // blocks' too: they stay).
                        let end = icount + u64::from(def.insns);
                        let mine = mems.iter().take_while(|(c, _)| *c < end).count();
                        let mut next = mems[..mine].iter().peekable();
                        if decode {
                            // Each block decoded once, its instructions kept.
                            let i = id as usize;
                            if i >= decoded.len() {
                                decoded.resize(i + 1, None);
                            }
                            let insns = decoded[i].get_or_insert_with(|| def.decode());
                            for (k, insn) in insns.iter().enumerate() {
                                let at = icount + k as u64;
                                let lin = def.cs_base.wrapping_add(insn.ip()) & 0xffff_ffff;
                                hooks.on_instruction(at, lin, insn);
                                while let Some((c, m)) = next.next_if(|(c, _)| *c <= at) {
                                    hooks.on_memory(*c, *m);
                                }
                            }
                        }
                        for (c, m) in next {
                            hooks.on_memory(*c, *m);
                        }
                        mems.drain(..mine);
                    }
                    Some(Record::Time { .. }) => {}
                    Some(Record::Mem { icount, access: m }) => {
                        if m.delivery {
                            hooks.on_memory(icount, m);
                        } else {
                            mems.push((icount, m));
                        }
                    }
                    Some(Record::Exception {
                        icount,
                        vector,
                        error_code,
                        cr2,
                        ..
                    }) => hooks.on_exception(icount, vector, error_code, cr2),
                    Some(Record::Interrupt { icount, vector }) => {
                        hooks.on_interrupt(icount, vector)
                    }
                    Some(Record::Context {
                        icount,
                        cr0,
                        cr3,
                        cpl,
                        ..
                    }) => hooks.on_context(icount, cr0, cr3, cpl),
                    Some(Record::Port {
                        icount,
                        write,
                        port,
                        size,
                        value,
                    }) => hooks.on_port(icount, write, port, size, value),
                }
            }
        })
        .map_err(|e| e.to_string())?;
    Ok((PipeWriter(tx), t))
}

impl std::fmt::Debug for dyn TraceHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TraceHooks")
    }
}
