//! Region selection: from a hot entry, the guest blocks reachable by direct branches
//! that stay inside the entry's page, decoded from a snapshot of that page, with the
//! flag liveness of every instruction.

use std::collections::HashMap;

use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind, RflagsBits};
use ox86_cpu::block::ends_block;
use ox86_cpu::DecodedInsn;

use crate::mode::Mode;
use crate::x87::X87Insn;

/// Page size.
pub const PAGE: usize = 4096;

/// The arithmetic flags (iced's bits), the only ones the JIT tracks.
pub const ARITH: u32 = RflagsBits::OF
    | RflagsBits::SF
    | RflagsBits::ZF
    | RflagsBits::AF
    | RflagsBits::CF
    | RflagsBits::PF;

/// How a guest block ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Falls through to `next` (block split by size, or the next instruction starts
    /// another block).
    Next(u64),
    /// The last instruction is a conditional branch: (taken, not taken).
    Cond(u64, u64),
    /// The last instruction jumps (or calls) to a fixed target.
    Jump(u64),
    /// The last instruction leaves to a RIP known only at run time (RET, indirect
    /// branches, interrupts, far transfers) or may change state the region depends on:
    /// the region exits with the RIP the instruction left.
    Dynamic,
    /// The block stops before an instruction that cannot be taken from this page (it
    /// crosses the page end or the CS limit): the region exits to it.
    Stop(u64),
}

/// One guest block of a region.
pub struct GuestBlock {
    /// EIP of its first instruction.
    pub eip: u64,
    /// Its instructions.
    pub insns: Vec<DecodedInsn>,
    /// Arithmetic flags live after each instruction (iced's bits).
    pub live_after: Vec<u32>,
    /// Flags live at entry.
    pub live_in: u32,
    /// How it ends.
    pub end: End,
}

/// A region: guest blocks and where each starts.
pub struct Region {
    /// The blocks; block 0 is the entry.
    pub blocks: Vec<GuestBlock>,
    /// Block index by EIP.
    pub index: HashMap<u64, usize>,
    /// Byte ranges of the page the region was decoded from: [start, end) offsets.
    pub ranges: Vec<(u32, u32)>,
    /// The lowered x87 instructions, pre-classified; compiled code points at them, so
    /// the vector is not changed after decoding.
    pub x87: Vec<X87Insn>,
    /// Bytes of the next page that instructions crossing the page end use (0: none);
    /// the region is valid only while the next page maps the frame they came from.
    pub next_len: u32,
}

/// What the region decoder needs to know of the entry.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// EIP of the entry.
    pub eip: u64,
    /// Offset of the entry in the page.
    pub page_off: usize,
    /// Highest valid EIP (CS limit).
    pub cs_hi: u64,
    /// The mode the code runs in.
    pub mode: Mode,
}

impl Entry {
    /// Page offset of EIP `t`, if `t` lies in the page and within the CS limit.
    fn offset(&self, t: u64) -> Option<usize> {
        if t > self.cs_hi {
            return None;
        }
        let off = (self.page_off as i64).checked_add(t.wrapping_sub(self.eip) as i64)?;
        (0..PAGE as i64).contains(&off).then_some(off as usize)
    }
}

/// Whether an instruction writes a segment register (the region's assumptions on
/// segments may change, so the region must exit after it).
fn writes_segment(i: &Instruction) -> bool {
    matches!(
        i.mnemonic(),
        Mnemonic::Lds | Mnemonic::Les | Mnemonic::Lfs | Mnemonic::Lgs | Mnemonic::Lss
    ) || (i.op_count() > 0
        && i.op_kind(0) == OpKind::Register
        && i.op0_register().is_segment_register()
        && matches!(i.mnemonic(), Mnemonic::Mov | Mnemonic::Pop))
}

/// Most instructions in one guest block.
const MAX_BLOCK_INSNS: usize = 64;

/// The instruction at page offset `off` that runs past the page end into `next` (the
/// first bytes of the next page), and how many bytes of `next` it uses.
fn decode_crossing(
    page: &[u8],
    next: &[u8],
    off: usize,
    ip: u64,
    bitness: u32,
) -> Option<(Instruction, usize)> {
    let mut bytes = page[off..].to_vec();
    bytes.extend_from_slice(next);
    let mut dec = Decoder::with_ip(bitness, &bytes, ip, DecoderOptions::NONE);
    let insn = dec.decode();
    let used = (off + insn.len()).checked_sub(page.len())?;
    (!insn.is_invalid() && used > 0).then_some((insn, used))
}

/// Decodes the block at `eip`; an instruction crossing into the next page (whose
/// first bytes are `next`) ends it. Returns the block and the bytes of the next page
/// it uses.
fn decode_block(
    page: &[u8],
    next: Option<&[u8]>,
    e: &Entry,
    eip: u64,
    max_insns: usize,
) -> (GuestBlock, usize) {
    let bitness = e.mode.bitness;
    let ip_mask = if bitness == 16 { 0xffff } else { 0xffff_ffff };
    let start = e.offset(eip).expect("block start inside the page");
    let mut dec = Decoder::with_ip(bitness, &page[start..], eip, DecoderOptions::NONE);
    let mut insns = Vec::new();
    let mut insn = Instruction::default();
    let select = ox86_cpu::exec::select;
    let mut crossed = 0;
    let end = loop {
        let here = dec.ip();
        if insns.len() >= max_insns {
            break End::Next(here);
        }
        let at_end = if dec.can_decode() {
            dec.decode_out(&mut insn);
            insn.is_invalid() && dec.last_error() == iced_x86::DecoderError::NoMoreBytes
        } else {
            true
        };
        if at_end {
            // The page ends inside the instruction (or right before it).
            let off = start + (here.wrapping_sub(eip) & ip_mask) as usize;
            let crossing = next
                .filter(|_| off < PAGE)
                .and_then(|n| decode_crossing(page, n, off, here, bitness));
            let Some((i, used)) = crossing else {
                break End::Stop(here);
            };
            let next_ip = i.next_ip() & ip_mask;
            let fits =
                here.wrapping_add(i.len() as u64 - 1) <= e.cs_hi && i.next_ip() <= ip_mask + 1;
            // Only instructions that go on to the next one: the block ends after it.
            if !fits
                || i.flow_control() != FlowControl::Next
                || ends_block(&i)
                || writes_segment(&i)
            {
                break End::Stop(here);
            }
            insns.push(DecodedInsn {
                insn: i,
                handler: select(&i),
                next_ip,
            });
            crossed = used;
            break End::Stop(next_ip);
        }
        // The last byte must be within the CS limit (else the interpreter raises #GP).
        if here.wrapping_add(insn.len() as u64 - 1) > e.cs_hi || insn.next_ip() > ip_mask + 1 {
            break End::Stop(here);
        }
        let next = insn.next_ip() & ip_mask;
        insns.push(DecodedInsn {
            insn,
            handler: select(&insn),
            next_ip: next,
        });
        if insn.is_invalid() {
            break End::Dynamic;
        }
        let direct = matches!(insn.op0_kind(), OpKind::NearBranch16 | OpKind::NearBranch32);
        match insn.flow_control() {
            FlowControl::ConditionalBranch if direct && !is_loop(&insn) => {
                break End::Cond(insn.near_branch_target() & ip_mask, next);
            }
            FlowControl::UnconditionalBranch if direct => {
                break End::Jump(insn.near_branch_target() & ip_mask);
            }
            FlowControl::Call if direct => {
                break End::Jump(insn.near_branch_target() & ip_mask);
            }
            FlowControl::Next if !ends_block(&insn) && !writes_segment(&insn) => {}
            _ => break End::Dynamic,
        }
        if next == 0 && bitness == 16 {
            // A 16-bit code segment wraps: leave it to the interpreter.
            break End::Stop(next);
        }
    };
    let b = GuestBlock {
        eip,
        insns,
        live_after: Vec::new(),
        live_in: ARITH,
        end,
    };
    (b, crossed)
}

/// LOOP, LOOPE, LOOPNE, JCXZ/JECXZ: conditional branches on (E)CX, run by the
/// interpreter's handler.
pub fn is_loop(i: &Instruction) -> bool {
    matches!(
        i.mnemonic(),
        Mnemonic::Loop | Mnemonic::Loope | Mnemonic::Loopne | Mnemonic::Jcxz | Mnemonic::Jecxz
    )
}

impl Region {
    /// Decodes the region entered at `e.eip` from `page`, with at most `max_blocks`
    /// blocks.
    ///
    /// A loop whose accesses would form access groups if the region were entered at
    /// its head, but do not because the code before it writes their base register (a
    /// function's prologue setting EBP up before the loop), is left out: the region
    /// leaves to the loop's head, which becomes the entry of a region of its own (see
    /// `group::loop_to_split`).
    pub fn decode(page: &[u8], next: Option<&[u8]>, e: &Entry, max_blocks: usize) -> Region {
        let mut stops = Vec::new();
        let mut r = Region::decode_stopping(page, next, e, max_blocks, &stops);
        // A few times at most: each split leaves out a loop.
        while stops.len() < 4 && e.mode.flat {
            let Some(head) = crate::group::loop_to_split(&r) else {
                break;
            };
            stops.push(head);
            r = Region::decode_stopping(page, next, e, max_blocks, &stops);
        }
        r
    }

    /// Decodes the region entered at `e.eip`, leaving out the blocks at `stops`
    /// (branches to them leave the region).
    fn decode_stopping(
        page: &[u8],
        next: Option<&[u8]>,
        e: &Entry,
        max_blocks: usize,
        stops: &[u64],
    ) -> Region {
        let mut blocks: Vec<GuestBlock> = Vec::new();
        let mut index = HashMap::new();
        let mut work = vec![e.eip];
        let mut next_len = 0u32;
        while let Some(eip) = work.pop() {
            if index.contains_key(&eip) || blocks.len() >= max_blocks {
                continue;
            }
            let (b, crossed) = decode_block(page, next, e, eip, MAX_BLOCK_INSNS);
            next_len = next_len.max(crossed as u32);
            if b.insns.is_empty() && !blocks.is_empty() {
                // Nothing decodable here (the instruction crosses the page end or
                // the CS limit): branches to it leave the region.
                continue;
            }
            let succ = match b.end {
                End::Next(n) => vec![n],
                End::Cond(t, n) => vec![n, t],
                End::Jump(t) => vec![t],
                End::Dynamic | End::Stop(_) => vec![],
            };
            index.insert(eip, blocks.len());
            blocks.push(b);
            for s in succ {
                if e.offset(s).is_some() && !index.contains_key(&s) && !stops.contains(&s) {
                    work.push(s);
                }
            }
        }
        let x87 = blocks
            .iter()
            .flat_map(|b| b.insns.iter())
            .filter_map(|d| X87Insn::new(&d.insn))
            .collect();
        let mut r = Region {
            blocks,
            index,
            ranges: Vec::new(),
            x87,
            next_len,
        };
        r.ranges = r.byte_ranges(e);
        r.liveness();
        r
    }

    /// The blocks of the region that block `b` may go on to (by a branch or by
    /// falling through; a block that stops goes on to its end's block if the region
    /// has one, as the translation does).
    pub fn successors(&self, b: &GuestBlock) -> Vec<usize> {
        let targets = match b.end {
            End::Next(n) | End::Stop(n) | End::Jump(n) => [Some(n), None],
            End::Cond(t, n) => [Some(n), Some(t)],
            End::Dynamic => [None, None],
        };
        targets
            .into_iter()
            .flatten()
            .filter_map(|t| self.index.get(&t).copied())
            .collect()
    }

    /// Flag liveness: a flag is live after an instruction if some path reads it before
    /// writing it. Anything that can leave the region reads every flag, since the state
    /// must be exact there: block ends (every edge checks the budget), instructions that
    /// can fault, and instructions run by interpreter helpers.
    fn liveness(&mut self) {
        for blk in &mut self.blocks {
            let mut live = ARITH;
            let mut after = vec![0u32; blk.insns.len()];
            for (k, d) in blk.insns.iter().enumerate().rev() {
                after[k] = live;
                live = live_before(&d.insn, live);
            }
            blk.live_after = after;
            blk.live_in = live;
        }
    }

    fn byte_ranges(&self, e: &Entry) -> Vec<(u32, u32)> {
        let mut r: Vec<(u32, u32)> = self
            .blocks
            .iter()
            .filter(|b| !b.insns.is_empty())
            .map(|b| {
                let s = e.offset(b.eip).unwrap_or(0) as u32;
                let len: usize = b.insns.iter().map(|d| d.insn.len()).sum();
                (s, (s + len as u32).min(PAGE as u32))
            })
            .collect();
        r.sort_unstable();
        let mut out: Vec<(u32, u32)> = Vec::new();
        for (s, t) in r {
            match out.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(t),
                _ => out.push((s, t)),
            }
        }
        out
    }
}

/// Flags live before `i`, given those live after it.
fn live_before(i: &Instruction, after: u32) -> u32 {
    if !crate::lower::is_lowered(i) || crate::lower::may_fault(i) {
        return ARITH;
    }
    let mut written = i.rflags_modified() & ARITH;
    let mut read = i.rflags_read() & ARITH;
    if may_keep_flags(i) {
        // A count of zero leaves the flags as they were.
        read |= written;
        written = 0;
    }
    (after & !written) | read
}

/// Shifts and rotates whose count may be zero (by CL, or an immediate that masks to
/// zero) write no flags then.
fn may_keep_flags(i: &Instruction) -> bool {
    use Mnemonic as M;
    if !matches!(
        i.mnemonic(),
        M::Shl | M::Sal | M::Shr | M::Sar | M::Rol | M::Ror | M::Rcl | M::Rcr | M::Shld | M::Shrd
    ) {
        return false;
    }
    let n = i.op_count() - 1;
    match i.op_kind(n) {
        OpKind::Register => true,
        _ => i.immediate(n) & 0x1f == 0,
    }
}
