//! Decoded blocks: straight-line runs of iced-x86 instructions, each with its
//! interpreter handler chosen once at decode time, cached by physical address and
//! code size, with a jump cache by linear address in front and per-page indexes for
//! invalidation when code is written.
//!
//! The jump cache is never flushed when paging changes (CR3 writes, INVLPG, CR0/CR4):
//! a hit counts only while the TLB still maps the block's linear page to the frame it
//! was decoded from, so a context switch keeps the kernel's blocks (global pages)
//! and finds every other block again through the TLB and the physical index.

use std::collections::HashMap;

use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic};

use ox86_mmu::tlb::Tlb;
use ox86_mmu::PAGE_MASK;

use crate::exception::Fault;
use crate::Exec;

/// An interpreter handler: executes one instruction.
pub type Handler = fn(&mut Exec<'_>, &Instruction) -> Fault;

/// One decoded instruction with its handler.
#[derive(Clone)]
pub struct DecodedInsn {
    /// The decoded instruction (its IP is the EIP it was decoded at).
    pub insn: Instruction,
    /// The handler that executes it.
    pub handler: Handler,
    /// EIP of the next instruction, wrapped to the code size.
    pub next_ip: u64,
}

/// A decoded block.
pub struct Block {
    /// EIP of its first instruction.
    pub eip: u64,
    /// CS base it was decoded for.
    pub cs_base: u64,
    /// Code size in bits (16 or 32).
    pub bitness: u32,
    /// Physical address of the first byte.
    pub phys: u64,
    /// The instructions.
    pub insns: std::rc::Rc<[DecodedInsn]>,
    /// Physical byte ranges the block was decoded from: [start, end).
    pub ranges: [(u64, u64); 2],
    /// Times the block was entered.
    pub execs: u64,
    /// The next run count at which the interpreter tells the accelerator that the
    /// block is hot (0: not computed yet).
    pub next_hot: u64,
    /// What the accelerator found at the block's entry (see [`AccelHint`]).
    pub accel: AccelHint,
    /// The blocks that ran after this one: most blocks end in a direct branch, so the
    /// next block is one of two, found here without a look-up in the jump cache (see
    /// [`BlockCache::lookup_succ`]).
    pub succ: [Succ; 2],
    /// The block's raw id in the trace being recorded: the sink's epoch in the high
    /// half, the id in the low half (0: none; see [`crate::trace`]).
    pub trace: u64,
}

/// Where code is fetched from: what a block must match to be the one to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pc {
    /// The linear address of CS:EIP.
    pub lin: u64,
    /// EIP.
    pub eip: u64,
    /// CS base.
    pub cs_base: u64,
    /// Code size in bits (16 or 32).
    pub bitness: u32,
    /// Fetched at CPL 3 (the TLB's user table).
    pub user: bool,
}

/// A block that ran after another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Succ {
    /// Its EIP.
    eip: u32,
    /// Its id (`u32::MAX`: none).
    id: u32,
    /// Where its instructions were when it was recorded: only prefetched, never read
    /// through, so that they load while the block itself is read and checked.
    insns: usize,
}

/// What an accelerator found at a block's entry the last time it looked, kept with
/// the block so that the next run of the block finds it without a look-up of the
/// accelerator's own: for interpreted code (most blocks, run few times) that is a
/// cache miss saved per block. The interpreter only stores it; the accelerator sets
/// it, checks a region it names before running it, and resets it when it installs
/// code at the block's entry. A stale "nothing" only leaves code interpreted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccelHint {
    /// Whether the accelerator has looked.
    pub valid: bool,
    /// The accelerator's mode bits when it looked.
    pub mode: u8,
    /// The accelerator's code for the entry in that mode (`u32::MAX`: none).
    pub region: u32,
}

impl Block {
    /// Whether the TLB table `user` maps the block's bytes, fetched from linear
    /// address `lin`, to the frames it was decoded from (false on a TLB miss).
    #[inline(always)]
    pub fn mapped(&self, lin: u64, tlb: &Tlb, user: bool) -> bool {
        if tlb.lookup_exec(user, lin) != Some(self.phys & !PAGE_MASK) {
            return false;
        }
        let (start, end) = self.ranges[1];
        // An instruction across the page end: the next page too.
        end == start || {
            let next = (lin & !PAGE_MASK).wrapping_add(PAGE_MASK + 1) & 0xffff_ffff;
            tlb.lookup_exec(user, next) == Some(start & !PAGE_MASK)
        }
    }
}

/// Most instructions in one block.
pub const MAX_BLOCK_INSNS: usize = 64;
const JUMP_CACHE: usize = 1 << 16;
const NO_BLOCK: u32 = u32::MAX;
/// A new block's successors: none.
pub const NO_SUCC: [Succ; 2] = [Succ {
    eip: 0,
    id: NO_BLOCK,
    insns: 0,
}; 2];

/// The decoded-block cache of one CPU.
pub struct BlockCache {
    slab: Vec<Option<Block>>,
    free: Vec<u32>,
    by_phys: HashMap<(u64, u32), u32>,
    by_frame: HashMap<u64, Vec<u32>>,
    jump: Box<[u32]>,
    /// Blocks decoded since reset.
    pub decoded: u64,
    /// Blocks invalidated by writes to their code.
    pub invalidated: u64,
    /// Counts times the cache was emptied whole, so that other caches that hold
    /// blocks' code (the JIT's) know to empty theirs too.
    pub epoch: u64,
}

impl Default for BlockCache {
    fn default() -> Self {
        BlockCache {
            slab: Vec::new(),
            free: Vec::new(),
            by_phys: HashMap::new(),
            by_frame: HashMap::new(),
            jump: vec![NO_BLOCK; JUMP_CACHE].into_boxed_slice(),
            decoded: 0,
            invalidated: 0,
            epoch: 0,
        }
    }
}

#[inline(always)]
fn jump_index(lin: u64) -> usize {
    ((lin ^ (lin >> 12)) as usize) & (JUMP_CACHE - 1)
}

impl BlockCache {
    /// The block for a linear PC from the jump cache, if it matches and the TLB table
    /// `user` still maps its code where it was decoded from.
    #[inline(always)]
    pub fn lookup_jump(
        &self,
        lin: u64,
        eip: u64,
        cs_base: u64,
        bitness: u32,
        tlb: &Tlb,
        user: bool,
    ) -> Option<u32> {
        let pc = Pc {
            lin,
            eip,
            cs_base,
            bitness,
            user,
        };
        self.found(self.jump[jump_index(lin)], &pc, tlb)
    }

    /// Block `id`, if it is still in the cache and is the block at `pc`: the same EIP,
    /// CS base and code size, and the TLB still maps its code where it was decoded
    /// from.
    #[inline(always)]
    fn found(&self, id: u32, pc: &Pc, tlb: &Tlb) -> Option<u32> {
        let b = self.slab.get(id as usize)?.as_ref()?;
        let same = b.eip == pc.eip && b.cs_base == pc.cs_base && b.bitness == pc.bitness;
        (same && b.mapped(pc.lin, tlb, pc.user)).then_some(id)
    }

    /// The block that ran after block `prev` the last time the next EIP was this one,
    /// if it is the block at `pc` (checked as a jump-cache slot is: a stale successor
    /// fails the check).
    #[inline(always)]
    pub fn lookup_succ(&self, prev: u32, pc: &Pc, tlb: &Tlb) -> Option<u32> {
        let p = self.slab.get(prev as usize)?.as_ref()?;
        let s = p
            .succ
            .iter()
            .find(|s| s.id != NO_BLOCK && u64::from(s.eip) == pc.eip)?;
        // The reference counts just before the instructions (the interpreter's clone
        // touches them first) and the line after.
        crate::prefetch::prefetch(s.insns.wrapping_sub(16));
        crate::prefetch::prefetch(s.insns.wrapping_add(48));
        self.found(s.id, pc, tlb)
    }

    /// Records that block `id`, at `eip`, ran after block `prev` (in the successor
    /// of the same EIP, else the first free one, else the second).
    pub fn set_succ(&mut self, prev: u32, eip: u64, id: u32) {
        let Ok(eip) = u32::try_from(eip) else {
            return;
        };
        let Some(Some(b)) = self.slab.get(id as usize) else {
            return;
        };
        let insns = b.insns.as_ptr() as usize;
        let Some(Some(p)) = self.slab.get_mut(prev as usize) else {
            return;
        };
        let k = usize::from(p.succ[0].id != NO_BLOCK && p.succ[0].eip != eip);
        p.succ[k] = Succ { eip, id, insns };
    }

    /// The block at a physical address, if decoded for the same EIP and CS base (and,
    /// for an instruction across the page end, the next page still maps where it did).
    #[allow(clippy::too_many_arguments)]
    pub fn lookup_phys(
        &mut self,
        lin: u64,
        phys: u64,
        eip: u64,
        cs_base: u64,
        bitness: u32,
        tlb: &Tlb,
        user: bool,
    ) -> Option<u32> {
        let id = *self.by_phys.get(&(phys, bitness))?;
        let b = self.slab[id as usize].as_ref()?;
        if b.eip == eip && b.cs_base == cs_base && b.mapped(lin, tlb, user) {
            self.jump[jump_index(lin)] = id;
            Some(id)
        } else {
            None
        }
    }

    /// The id of the block decoded at physical address `phys` for code size
    /// `bitness`, if any.
    pub fn id_at(&self, phys: u64, bitness: u32) -> Option<u32> {
        self.by_phys.get(&(phys, bitness)).copied()
    }

    /// The block with this id.
    #[inline(always)]
    pub fn get(&self, id: u32) -> &Block {
        self.slab[id as usize].as_ref().expect("live block id")
    }

    /// Mutable access to the block with this id.
    #[inline(always)]
    pub fn get_mut(&mut self, id: u32) -> &mut Block {
        self.slab[id as usize].as_mut().expect("live block id")
    }

    /// Inserts a block, replacing any at the same physical address and code size.
    pub fn insert(&mut self, lin: u64, block: Block) -> u32 {
        if let Some(old) = self.by_phys.get(&(block.phys, block.bitness)).copied() {
            self.remove(old);
        }
        let key = (block.phys, block.bitness);
        let frames: Vec<u64> = block
            .ranges
            .iter()
            .filter(|r| r.1 > r.0)
            .map(|r| r.0 >> 12)
            .collect();
        let id = match self.free.pop() {
            Some(id) => {
                self.slab[id as usize] = Some(block);
                id
            }
            None => {
                self.slab.push(Some(block));
                (self.slab.len() - 1) as u32
            }
        };
        self.by_phys.insert(key, id);
        for f in frames {
            self.by_frame.entry(f).or_default().push(id);
        }
        self.jump[jump_index(lin)] = id;
        self.decoded += 1;
        id
    }

    fn remove(&mut self, id: u32) {
        let Some(b) = self.slab[id as usize].take() else {
            return;
        };
        self.by_phys.remove(&(b.phys, b.bitness));
        for r in b.ranges.iter().filter(|r| r.1 > r.0) {
            if let Some(v) = self.by_frame.get_mut(&(r.0 >> 12)) {
                v.retain(|&x| x != id);
                if v.is_empty() {
                    self.by_frame.remove(&(r.0 >> 12));
                }
            }
        }
        self.free.push(id);
    }

    /// Invalidates the blocks decoded from bytes in `[addr, addr+len)`. Returns whether
    /// the page still holds code afterwards.
    pub fn invalidate_range(&mut self, addr: u64, len: u64) -> bool {
        let frame = addr >> 12;
        let end = addr + len;
        let ids: Vec<u32> = self.by_frame.get(&frame).cloned().unwrap_or_default();
        for id in ids {
            let hit = self.slab[id as usize]
                .as_ref()
                .is_some_and(|b| b.ranges.iter().any(|r| r.0 < end && addr < r.1));
            if hit {
                // Its jump-cache slots stay: a slot whose id holds another block (or
                // none) no longer matches.
                self.remove(id);
                self.invalidated += 1;
            }
        }
        self.by_frame.contains_key(&frame)
    }

    /// Drops every block.
    pub fn clear(&mut self) {
        let n = self.by_phys.len() as u64;
        *self = BlockCache {
            decoded: self.decoded,
            invalidated: self.invalidated + n,
            epoch: self.epoch + 1,
            ..Default::default()
        };
    }

    /// Frames that hold decoded code.
    pub fn code_frames(&self) -> impl Iterator<Item = u64> + '_ {
        self.by_frame.keys().copied()
    }

    /// Number of live blocks.
    pub fn len(&self) -> usize {
        self.by_phys.len()
    }

    /// Whether no blocks are cached.
    pub fn is_empty(&self) -> bool {
        self.by_phys.is_empty()
    }
}

/// Whether an instruction must end its block: it transfers control, or it may change
/// how later instructions decode or whether interrupts are due.
pub fn ends_block(insn: &Instruction) -> bool {
    if insn.flow_control() != FlowControl::Next {
        return true;
    }
    matches!(
        insn.mnemonic(),
        Mnemonic::Hlt
            | Mnemonic::Sti
            | Mnemonic::Popf
            | Mnemonic::Popfd
            | Mnemonic::Lmsw
            | Mnemonic::Clts
            | Mnemonic::Invlpg
            | Mnemonic::Wrmsr
            | Mnemonic::In
            | Mnemonic::Out
            | Mnemonic::Insb
            | Mnemonic::Insw
            | Mnemonic::Insd
            | Mnemonic::Outsb
            | Mnemonic::Outsw
            | Mnemonic::Outsd
            | Mnemonic::Lgdt
            | Mnemonic::Lidt
            | Mnemonic::Lldt
            | Mnemonic::Ltr
            | Mnemonic::Wbinvd
            | Mnemonic::Invd
            | Mnemonic::Cpuid
    ) || (insn.mnemonic() == Mnemonic::Mov
        && (is_cr_or_dr(insn.op0_register()) || insn.op0_register() == iced_x86::Register::SS))
        || (insn.mnemonic() == Mnemonic::Pop && insn.op0_register() == iced_x86::Register::SS)
}

fn is_cr_or_dr(r: iced_x86::Register) -> bool {
    r.is_cr() || r.is_dr()
}

/// Decodes instructions from `bytes` (starting at EIP `eip`) until a block ends.
/// Returns the instructions and how many bytes they cover. `complete` tells whether
/// `bytes` extends past the end of what may be fetched (so a truncated last
/// instruction means the next page is needed).
pub fn decode_block(
    bytes: &[u8],
    eip: u64,
    bitness: u32,
    select: fn(&Instruction) -> Handler,
) -> (Vec<DecodedInsn>, usize, bool) {
    let ip_mask = if bitness == 16 { 0xffff } else { 0xffff_ffff };
    let mut dec = Decoder::with_ip(bitness, bytes, eip, DecoderOptions::NONE);
    let mut out = Vec::new();
    let mut used = 0usize;
    let mut truncated = false;
    let mut insn = Instruction::default();
    while dec.can_decode() && out.len() < MAX_BLOCK_INSNS {
        let pos = dec.position();
        dec.decode_out(&mut insn);
        if insn.is_invalid() && dec.last_error() == iced_x86::DecoderError::NoMoreBytes {
            truncated = true;
            break;
        }
        used = pos + insn.len();
        let end = ends_block(&insn);
        out.push(DecodedInsn {
            insn,
            handler: select(&insn),
            next_ip: insn.next_ip() & ip_mask,
        });
        if end || insn.is_invalid() {
            break;
        }
        // Blocks do not wrap around the end of a 16-bit code segment.
        if insn.next_ip() > ip_mask {
            break;
        }
    }
    if !dec.can_decode() && out.is_empty() {
        truncated = true;
    }
    (out, used, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ox86_mmu::tlb::CodeEntry;

    fn map(tlb: &mut Tlb, lin: u64, frame: u64, global: bool) {
        let page = lin & !PAGE_MASK;
        tlb.fill_code(false, lin, CodeEntry::new(page, frame, global));
    }

    fn nothing(_: &mut Exec<'_>, _: &Instruction) -> Fault {
        Ok(())
    }

    fn select(_: &Instruction) -> Handler {
        nothing
    }

    fn pc(lin: u64, eip: u64, cs_base: u64, bitness: u32, user: bool) -> Pc {
        Pc {
            lin,
            eip,
            cs_base,
            bitness,
            user,
        }
    }

    fn block(eip: u64, phys: u64, ranges: [(u64, u64); 2]) -> Block {
        let (insns, _, _) = decode_block(&[0x90, 0xc3], eip, 32, select);
        Block {
            eip,
            cs_base: 0,
            bitness: 32,
            phys,
            insns: insns.into(),
            ranges,
            execs: 0,
            next_hot: 0,
            accel: AccelHint::default(),
            succ: NO_SUCC,
            trace: 0,
        }
    }

    /// A block's successors are found only while they match as a jump-cache hit does:
    /// same EIP, CS base and code size, mapped by the TLB to the frame they were
    /// decoded from, and still in the cache.
    #[test]
    fn successors_follow_the_tlb_and_the_cache() {
        let mut tlb = Tlb::default();
        let mut c = BlockCache::default();
        let (a, b, t) = (0x0804_8010, 0x0804_8020, 0x0804_9000);
        map(&mut tlb, a, 0x5000, false);
        map(&mut tlb, t, 0x6000, false);
        let pa = c.insert(a, block(a, 0x5010, [(0x5010, 0x5012), (0, 0)]));
        let fall = c.insert(b, block(b, 0x5020, [(0x5020, 0x5022), (0, 0)]));
        let taken = c.insert(t, block(t, 0x6000, [(0x6000, 0x6002), (0, 0)]));
        assert_eq!(c.lookup_succ(pa, &pc(b, b, 0, 32, false), &tlb), None);
        c.set_succ(pa, b, fall);
        c.set_succ(pa, t, taken);
        assert_eq!(c.lookup_succ(pa, &pc(b, b, 0, 32, false), &tlb), Some(fall));
        assert_eq!(
            c.lookup_succ(pa, &pc(t, t, 0, 32, false), &tlb),
            Some(taken)
        );
        // Another EIP, bitness, CS base or table: no hit.
        assert_eq!(c.lookup_succ(pa, &pc(a, a, 0, 32, false), &tlb), None);
        assert_eq!(c.lookup_succ(pa, &pc(t, t, 0, 16, false), &tlb), None);
        assert_eq!(c.lookup_succ(pa, &pc(t + 4, t, 4, 32, false), &tlb), None);
        assert_eq!(c.lookup_succ(pa, &pc(t, t, 0, 32, true), &tlb), None);
        // The target's page maps another frame now: no hit.
        map(&mut tlb, t, 0x9000, false);
        assert_eq!(c.lookup_succ(pa, &pc(t, t, 0, 32, false), &tlb), None);
        map(&mut tlb, t, 0x6000, false);
        assert_eq!(
            c.lookup_succ(pa, &pc(t, t, 0, 32, false), &tlb),
            Some(taken)
        );
        // An invalidated successor is not found, even once its id holds another block.
        assert!(!c.invalidate_range(0x6000, 1));
        assert_eq!(c.lookup_succ(pa, &pc(t, t, 0, 32, false), &tlb), None);
        let other = c.insert(
            a + 0x40,
            block(a + 0x40, 0x5050, [(0x5050, 0x5052), (0, 0)]),
        );
        assert_eq!(other, taken, "the slab reuses the id");
        assert_eq!(c.lookup_succ(pa, &pc(t, t, 0, 32, false), &tlb), None);
        // A third successor replaces the second; the first stays.
        c.set_succ(pa, a + 0x40, other);
        assert_eq!(
            c.lookup_succ(pa, &pc(a + 0x40, a + 0x40, 0, 32, false), &tlb),
            Some(other)
        );
        assert_eq!(c.lookup_succ(pa, &pc(b, b, 0, 32, false), &tlb), Some(fall));
        // A removed predecessor has no successors.
        assert!(
            c.invalidate_range(0x5010, 1),
            "other blocks stay on the page"
        );
        assert_eq!(c.lookup_succ(pa, &pc(b, b, 0, 32, false), &tlb), None);
    }

    /// The jump cache is never flushed: its hits are checked against the TLB, so a
    /// remapped page, a flushed TLB or a replaced block is never found through it.
    #[test]
    fn jump_cache_hits_follow_the_tlb() {
        let mut tlb = Tlb::default();
        let mut c = BlockCache::default();
        let lin = 0x0804_8010;
        map(&mut tlb, lin, 0x5000, false);
        let id = c.insert(lin, block(lin, 0x5010, [(0x5010, 0x5012), (0, 0)]));
        assert_eq!(c.lookup_jump(lin, lin, 0, 32, &tlb, false), Some(id));
        // Other bitness, CS base or table: no hit.
        assert_eq!(c.lookup_jump(lin, lin, 0, 16, &tlb, false), None);
        assert_eq!(c.lookup_jump(lin, lin, 0, 32, &tlb, true), None);
        // A context switch: the page now maps another frame (another process's code).
        tlb.flush_nonglobal();
        assert_eq!(c.lookup_jump(lin, lin, 0, 32, &tlb, false), None);
        map(&mut tlb, lin, 0x9000, false);
        assert_eq!(c.lookup_jump(lin, lin, 0, 32, &tlb, false), None);
        assert_eq!(c.lookup_phys(lin, 0x9010, lin, 0, 32, &tlb, false), None);
        // Back to the first mapping: found again without decoding.
        map(&mut tlb, lin, 0x5000, false);
        assert_eq!(c.lookup_jump(lin, lin, 0, 32, &tlb, false), Some(id));
        // A global page survives the context switch.
        map(&mut tlb, lin, 0x5000, true);
        tlb.flush_nonglobal();
        assert_eq!(c.lookup_jump(lin, lin, 0, 32, &tlb, false), Some(id));
        // An invalidated block leaves its slot, which no longer matches.
        assert!(!c.invalidate_range(0x5011, 1));
        assert_eq!(c.lookup_jump(lin, lin, 0, 32, &tlb, false), None);
    }

    /// A block holding an instruction across the page end needs both pages mapped
    /// where they were.
    #[test]
    fn a_block_across_the_page_end_checks_both_pages() {
        let mut tlb = Tlb::default();
        let mut c = BlockCache::default();
        let lin = 0x0804_8fff;
        map(&mut tlb, lin, 0x5000, false);
        map(&mut tlb, lin + 1, 0x7000, false);
        let b = block(lin, 0x5fff, [(0x5fff, 0x6000), (0x7000, 0x7001)]);
        let id = c.insert(lin, b);
        assert_eq!(c.lookup_jump(lin, lin, 0, 32, &tlb, false), Some(id));
        assert_eq!(
            c.lookup_phys(lin, 0x5fff, lin, 0, 32, &tlb, false),
            Some(id)
        );
        map(&mut tlb, lin + 1, 0x8000, false);
        assert_eq!(c.lookup_jump(lin, lin, 0, 32, &tlb, false), None);
        assert_eq!(c.lookup_phys(lin, 0x5fff, lin, 0, 32, &tlb, false), None);
    }
}
