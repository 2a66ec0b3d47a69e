//! Trace capture in the engines: the per-CPU buffer that the interpreter and compiled
//! code append raw records to, and the sideband the CPU adds (block definitions,
//! exceptions, interrupts, mode changes, port I/O).
//!
//! A raw record is one 64-bit word, the instruction count's low half above a block's
//! raw id: "the block with this id starts at this count" (compiled code writes it
//! with one store at the start of each guest block it runs). An event is a word with
//! [`EVENT`] in place of the id, its kind and length, and payload words after it. Raw
//! ids name the blocks of one engine (an interpreter block, or a guest block of a
//! compiled region); the writer (`ox86::trace`) turns the raw stream into the trace
//! file's canonical blocks, which depend only on the instructions executed, so that
//! the JIT and the interpreter write the same trace.
//!
//! Only instruction counts are exact here: a block record says where a block started,
//! the next record says where it stopped (a fault, an interrupt, the end of a budget
//! can stop a block anywhere).

use crate::state::{CpuState, CS};

/// Raw ids are below this; a word with it in its low half is an event.
pub const EVENT: u32 = 0xf000_0000;
/// Words in a buffer.
pub const BUFFER_WORDS: usize = 1 << 15;
/// Compiled code is entered only with this many words free, and runs at most this
/// many instructions less one per entry (it writes at most one word per instruction
/// it runs, plus one).
pub const JIT_ROOM: usize = 8192;
/// Memory accesses compiled code makes in one instruction, at most (an instruction
/// that would make more runs in the interpreter).
pub const JIT_MEM_PER_INSN: usize = 2;
/// A memory-access record is two words, the first with this in the top byte of its
/// low half (an event has [`EVENT`] there), the size less one in bits 20-22 and bit
/// 23 set for a write, the instruction count's low 16 bits in bits 0-15, and the
/// linear address in its high half; the second is the value. (The writer knows the
/// instruction count to within 2^16.)
pub const MEM: u32 = 0xff00_0000;
/// The bits of a record's low half that tell a memory access.
pub const MEM_MASK: u32 = 0xff00_0000;
/// Bit of a memory-access record: a write.
pub const MEM_WRITE: u32 = 1 << 23;
/// Words one memory-access record takes.
pub const MEM_WORDS: usize = 2;

/// Kinds of events in the raw stream (bits 16-27 of an event word's low half).
pub mod kind {
    /// The trace starts: payload the whole instruction count.
    pub const START: u32 = 0;
    /// A block definition: raw id, EIP, CS base, physical address of its first byte,
    /// frame of the next page (for an instruction across the page end), code size,
    /// then one byte per instruction (its length, bit 7 set for a control transfer)
    /// and the code bytes.
    pub const DEF: u32 = 1;
    /// An exception is delivered: vector, error code (+1; 0 for none), linear address
    /// of the faulting instruction, CR2.
    pub const EXCEPTION: u32 = 2;
    /// An external interrupt is delivered: vector.
    pub const INTERRUPT: u32 = 3;
    /// The paging and privilege context changed: CR0, CR3, CR4, CPL, flags (bit 0 V86
    /// mode, bit 1 a 32-bit code segment).
    pub const CONTEXT: u32 = 4;
    /// An IN during the current instruction: port, size in bytes, value.
    pub const PORT_IN: u32 = 5;
    /// An OUT during the current instruction: port, size in bytes, value.
    pub const PORT_OUT: u32 = 6;
    /// The trace ends: payload the whole instruction count.
    pub const STOP: u32 = 7;
    /// Guest time: payload nanoseconds (at the start and at the end of a trace).
    pub const TIME: u32 = 9;
}

/// Bit 7 of an instruction's length byte in a definition: the instruction transfers
/// control (iced's flow control is not "next").
pub const FLOW: u8 = 0x80;

/// Where full buffers go (the writer thread, in `ox86::trace`).
pub trait TraceOut: Send {
    /// Takes `len` words of a full buffer and gives back an empty buffer of
    /// [`BUFFER_WORDS`] words (blocking while the writer is behind).
    fn hand_off(&mut self, buf: Box<[u64]>, len: usize) -> Box<[u64]>;
}

/// The paging and privilege context instructions run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Context {
    cr0: u64,
    cr3: u64,
    cr4: u64,
    cpl: u32,
    flags: u32,
}

impl Context {
    fn of(s: &CpuState) -> Context {
        Context {
            cr0: s.cr0,
            cr3: s.cr3,
            cr4: s.cr4,
            cpl: s.cpl,
            flags: u32::from(s.v86()) | (u32::from(s.seg[CS].big()) << 1),
        }
    }
}

/// A block as the writer needs it: where it is, and its code.
#[derive(Debug, Clone, Copy)]
pub struct BlockDef<'a> {
    /// EIP of its first instruction.
    pub eip: u64,
    /// CS base.
    pub cs_base: u64,
    /// Physical address of its first byte.
    pub phys: u64,
    /// Frame of the next page, when its last instruction crosses the page end.
    pub phys2: u64,
    /// Code size in bits.
    pub bitness: u32,
    /// One byte per instruction: its length, with [`FLOW`] for a control transfer.
    pub lens: &'a [u8],
    /// The code bytes.
    pub bytes: &'a [u8],
}

/// The per-CPU trace buffer.
pub struct TraceSink {
    buf: Box<[u64]>,
    len: usize,
    out: Box<dyn TraceOut>,
    next_id: u32,
    /// Which sink this is (see [`TraceSink::epoch`]).
    epoch: u32,
    context: Option<Context>,
    /// Whether memory accesses are recorded.
    mem: bool,
}

impl std::fmt::Debug for TraceSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceSink")
            .field("len", &self.len)
            .field("next_id", &self.next_id)
            .finish()
    }
}

impl TraceSink {
    /// A sink that starts at instruction `icount` and hands its buffers to `out`;
    /// `epoch` tells the ids it gives apart from an earlier sink's (blocks keep
    /// theirs with the epoch).
    pub fn new(out: Box<dyn TraceOut>, icount: u64, epoch: u32) -> TraceSink {
        let mut t = TraceSink {
            buf: vec![0u64; BUFFER_WORDS].into_boxed_slice(),
            len: 0,
            out,
            next_id: 0,
            epoch,
            context: None,
            mem: false,
        };
        t.event(icount, kind::START, &[icount]);
        t
    }

    /// Records every memory access too (set before the first run).
    pub fn with_memory(mut self) -> TraceSink {
        self.mem = true;
        self
    }

    /// Whether memory accesses are recorded.
    #[inline(always)]
    pub fn memory(&self) -> bool {
        self.mem
    }

    /// Instructions compiled code may run per entry: each writes at most one block
    /// record and, with memory accesses recorded, [`JIT_MEM_PER_INSN`] of those.
    pub fn jit_insns(&self) -> u64 {
        let per = if self.mem {
            1 + JIT_MEM_PER_INSN * MEM_WORDS
        } else {
            1
        };
        (JIT_ROOM / per) as u64 - 1
    }

    /// Records a memory access of `size` bytes (1 to 8) at linear address `lin`
    /// during instruction `icount` (see [`MEM`]).
    #[inline]
    pub fn mem(&mut self, icount: u64, lin: u64, size: u32, write: bool, value: u64) {
        self.reserve(MEM_WORDS);
        let at = self.len;
        let lo = MEM
            | ((size.clamp(1, 8) - 1) << 20)
            | if write { MEM_WRITE } else { 0 }
            | (icount as u32 & 0xffff);
        self.buf[at] = (lin << 32) | u64::from(lo);
        self.buf[at + 1] = value;
        self.len += MEM_WORDS;
    }

    /// The sink's epoch: a raw id kept from another epoch is not this sink's.
    #[inline(always)]
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Words free in the buffer.
    #[inline(always)]
    pub fn room(&self) -> usize {
        self.buf.len() - self.len
    }

    /// Hands the buffer to the writer if fewer than `words` are free.
    #[inline(always)]
    pub fn reserve(&mut self, words: usize) {
        if self.room() < words {
            self.flush();
        }
    }

    /// Hands what the buffer holds to the writer.
    pub fn flush(&mut self) {
        if self.len == 0 {
            return;
        }
        let full = std::mem::replace(&mut self.buf, Box::new([]));
        self.buf = self.out.hand_off(full, self.len);
        self.len = 0;
    }

    /// Records that block `id` starts at instruction `icount`.
    #[inline(always)]
    pub fn block(&mut self, id: u32, icount: u64) {
        self.reserve(1);
        self.buf[self.len] = (icount << 32) | u64::from(id);
        self.len += 1;
    }

    /// `n` new raw ids, the first returned.
    pub fn new_ids(&mut self, n: u32) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.saturating_add(n).min(EVENT);
        id
    }

    /// Whether raw ids are used up (tracing must stop).
    pub fn ids_exhausted(&self) -> bool {
        self.next_id >= EVENT - 1
    }

    /// Defines raw id `id` (at instruction `icount`).
    pub fn define(&mut self, id: u32, icount: u64, d: &BlockDef<'_>) {
        let mut words = Vec::with_capacity(8 + d.lens.len() / 8 + d.bytes.len() / 8);
        words.extend_from_slice(&[
            u64::from(id),
            d.eip,
            d.cs_base,
            d.phys,
            d.phys2,
            u64::from(d.bitness) | ((d.lens.len() as u64) << 8) | ((d.bytes.len() as u64) << 24),
        ]);
        pack(&mut words, d.lens);
        pack(&mut words, d.bytes);
        self.event(icount, kind::DEF, &words);
    }

    /// Records an event of kind `k` with its payload, at instruction `icount`.
    pub fn event(&mut self, icount: u64, k: u32, payload: &[u64]) {
        let n = payload.len().min(0xffff);
        self.reserve(n + 1);
        self.buf[self.len] = (icount << 32) | u64::from(EVENT | (k << 16) | n as u32);
        self.buf[self.len + 1..self.len + 1 + n].copy_from_slice(&payload[..n]);
        self.len += n + 1;
    }

    /// Records the context of `s` if it is not the last one recorded.
    #[inline]
    pub fn context(&mut self, s: &CpuState) {
        let c = Context::of(s);
        if self.context != Some(c) {
            self.context = Some(c);
            let w = [c.cr0, c.cr3, c.cr4, u64::from(c.cpl), u64::from(c.flags)];
            self.event(s.icount, kind::CONTEXT, &w);
        }
    }

    /// Records a port access during the current instruction.
    pub fn port(&mut self, icount: u64, write: bool, port: u16, size: u32, value: u32) {
        let k = if write { kind::PORT_OUT } else { kind::PORT_IN };
        self.event(
            icount,
            k,
            &[u64::from(port), u64::from(size), u64::from(value)],
        );
    }

    /// Words in the buffer.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where compiled code writes its next record, with at least [`JIT_ROOM`] words
    /// free from there (the buffer is handed over first if fewer are). Compiled code
    /// runs at most [`TraceSink::jit_insns`] instructions per entry, so it writes at
    /// most `JIT_ROOM` words; a helper that writes an event while it runs hands the
    /// pointer back first ([`TraceSink::jit_done`]) and takes a new one after.
    pub fn jit_window(&mut self) -> *mut u64 {
        self.reserve(JIT_ROOM);
        // The pointer stays inside the buffer: len <= buf.len().
        self.buf[self.len..].as_mut_ptr()
    }

    /// Where compiled code writes its next record, after a helper (see
    /// [`TraceSink::jit_window`]; the room it needs is still there).
    pub fn jit_ptr(&mut self) -> *mut u64 {
        self.buf[self.len..].as_mut_ptr()
    }

    /// Takes back the buffer after compiled code wrote up to `end` (a pointer into the
    /// window [`TraceSink::jit_window`] gave). Returns false if `end` is outside it (a
    /// bug of the compiled code: the words written are dropped).
    pub fn jit_done(&mut self, end: *const u64) -> bool {
        let base = self.buf.as_ptr() as usize;
        let at = (end as usize).wrapping_sub(base) / 8;
        if (end as usize) < base || at < self.len || at > self.buf.len() {
            return false;
        }
        self.len = at;
        true
    }

    /// Ends the trace at instruction `icount` and hands over everything recorded.
    pub fn finish(&mut self, icount: u64) {
        self.event(icount, kind::STOP, &[icount]);
        self.flush();
    }
}

/// Appends `bytes` to `words`, eight to a word (little-endian, the last one padded
/// with zeros).
fn pack(words: &mut Vec<u64>, bytes: &[u8]) {
    for c in bytes.chunks(8) {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        words.push(u64::from_le_bytes(w));
    }
}

/// The bytes [`pack`] packed: `n` of them from `words`.
pub fn unpack(words: &[u64], n: usize) -> Vec<u8> {
    let mut v: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    v.truncate(n);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Keep(std::sync::Arc<std::sync::Mutex<Vec<u64>>>);
    impl TraceOut for Keep {
        fn hand_off(&mut self, buf: Box<[u64]>, len: usize) -> Box<[u64]> {
            self.0.lock().unwrap().extend_from_slice(&buf[..len]);
            buf
        }
    }

    #[test]
    fn records_survive_hand_offs_in_order() {
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut t = TraceSink::new(Box::new(Keep(got.clone())), 5, 1);
        for i in 0..(BUFFER_WORDS as u64 * 3) {
            t.block((i % 1000) as u32, 5 + i);
        }
        t.define(
            7,
            99,
            &BlockDef {
                eip: 0x1234,
                cs_base: 0,
                phys: 0x5234,
                phys2: 0,
                bitness: 32,
                lens: &[1, 2 | FLOW],
                bytes: &[0x90, 0xeb, 0xfe],
            },
        );
        t.finish(1);
        let w = got.lock().unwrap();
        assert_eq!(w[0] as u32, EVENT | (kind::START << 16) | 1);
        assert_eq!(w[1], 5);
        for i in 0..(BUFFER_WORDS * 3) {
            let r = w[2 + i];
            assert_eq!(r as u32, (i % 1000) as u32);
            assert_eq!(r >> 32, 5 + i as u64);
        }
        let d = &w[2 + BUFFER_WORDS * 3..w.len() - 2];
        assert_eq!(d[0] as u32 & 0xffff, (d.len() - 1) as u32);
        assert_eq!(w[w.len() - 2] as u32, EVENT | (kind::STOP << 16) | 1);
        assert_eq!(d[1], 7);
        assert_eq!(unpack(&d[7..8], 2), vec![1, 2 | FLOW]);
        assert_eq!(unpack(&d[8..9], 3), vec![0x90, 0xeb, 0xfe]);
    }

    #[test]
    fn a_pointer_outside_the_window_is_refused() {
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut t = TraceSink::new(Box::new(Keep(got)), 0, 1);
        let p = t.jit_window();
        let room = t.room();
        assert!(room >= JIT_ROOM);
        assert!(!t.jit_done(p.wrapping_sub(1)));
        assert!(!t.jit_done(p.wrapping_add(room + 1)));
        assert!(t.jit_done(p.wrapping_add(3)));
        assert_eq!(t.room(), room - 3);
    }
}
