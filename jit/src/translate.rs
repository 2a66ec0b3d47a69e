//! Translation of a region into one Cranelift function: guest registers in variables,
//! guest blocks as Cranelift blocks, the budget checked on every edge, memory through
//! the inline TLB fast path, and every slow path, fault or unlowered instruction
//! through the interpreter's handler with the state written back exactly.

use std::mem::{offset_of, size_of};

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{I16, I32, I64, I64X2, I8};
use cranelift_codegen::ir::{
    AbiParam, Block, InstBuilder, MemFlagsData, SigRef, Signature, Type, Value,
};
use cranelift_codegen::isa::CallConv;
use cranelift_frontend::{FunctionBuilder, Variable};
use iced_x86::{Instruction, OpKind, Register};
use ox86_cpu::exec::operand::{addr_mask, seg_index};
use ox86_cpu::state::{DS, ES, SS};
use ox86_cpu::{CpuState, DecodedInsn, Segment};
use ox86_mmu::tlb::{
    tlb_index, CodeEntry, TlbEntry, CODE_ENTRY_SHIFT, TLB_ENTRIES, TLB_ENTRY_FIELDS,
    TLB_ENTRY_SHIFT, VICTIM_OFFSET,
};

use crate::chain::{self, ChainSlot};
use crate::compiler::Request;
use crate::flagsrc::FlagSrc;
use crate::group::{self, Plan};
use crate::helpers::{JitCtx, CHECK, HOT, JUMP, OK, SPLIT};
use crate::lower::{gpr, kind, Kind};
use crate::mode::Mode;
use crate::region::{End, Region, ARITH};
use crate::symbols::{symbol, Sym};
use ox86_cpu::trace::{JIT_MEM_PER_INSN, MEM, MEM_WORDS, MEM_WRITE};

/// Cranelift type of a value of `size` bytes.
pub fn ty(size: u32) -> Type {
    match size {
        1 => I8,
        2 => I16,
        4 => I32,
        _ => I64,
    }
}

/// Signatures of the helpers, imported into the function.
pub struct Sigs {
    /// `interp(ctx, insn) -> u32`.
    pub interp: SigRef,
    /// `eflags(state) -> u64`.
    pub eflags: SigRef,
    /// `x87(ctx, insn, ea, loaded) -> u32`.
    pub x87: SigRef,
    /// Region code, for chaining: `(state, ctx) -> u32`, tail calling convention.
    pub region: SigRef,
}

/// Builds the helper signatures.
pub fn import_sigs(b: &mut FunctionBuilder<'_>, cc: CallConv) -> Sigs {
    let mut s = Signature::new(cc);
    s.params.push(AbiParam::new(I64));
    s.params.push(AbiParam::new(I64));
    s.returns.push(AbiParam::new(I32));
    let interp = b.import_signature(s);
    let mut s = Signature::new(cc);
    s.params.push(AbiParam::new(I64));
    s.returns.push(AbiParam::new(I64));
    let eflags = b.import_signature(s);
    let mut s = Signature::new(cc);
    s.params.extend([AbiParam::new(I64); 4]);
    s.returns.push(AbiParam::new(I32));
    let x87 = b.import_signature(s);
    let region = b.import_signature(crate::chain::region_signature());
    Sigs {
        interp,
        eflags,
        x87,
        region,
    }
}

/// State of the translation of one region.
pub struct Tx<'a, 'b> {
    /// The function builder.
    pub b: &'a mut FunctionBuilder<'b>,
    /// Helper signatures.
    pub sigs: Sigs,
    /// `*mut CpuState`.
    pub state: Value,
    /// Guest registers EAX..EDI.
    pub regs: [Variable; 8],
    /// Instruction count at the start of the current guest block.
    pub icount: Variable,
    /// The TLB table of the region's privilege level (read from the context once).
    pub tlb: Value,
    /// The mode compiled for.
    pub mode: Mode,
    /// The CS base compiled for.
    pub cs_base: u64,
    /// Highest valid EIP.
    pub cs_hi: u64,
    /// The flags, as far as compile time knows.
    pub flags: FlagSrc,
    /// The common exit block: (rip, icount, status).
    pub exit: Block,
    /// The common exit by a branch: (rip, icount); chains to the target's code when
    /// the chain table has it.
    pub chain: Block,
    /// The region chains (its chain context is the symbol `ChainTag`).
    pub chains: bool,
    /// The region is a quick one with a heat counter (see `heat`).
    heat: bool,
    /// The common slow path: (instruction pointer, EIP, icount) of an instruction to
    /// run in the interpreter before leaving the region.
    pub slow: Block,
    /// Cranelift block of each guest block.
    pub blocks: Vec<Block>,
    /// The region.
    pub region: &'a Region,
    /// The slow path of the current instruction, once one is needed.
    bail: Option<Block>,
    /// Index of the current instruction in its guest block.
    k: usize,
    /// Traced with memory accesses: where the current instruction writes its next
    /// access record (past the records compiled code has committed, see
    /// [`Tx::record_access`]), and how many it wrote.
    tptr: Variable,
    accesses: usize,
    /// Index of the current guest block.
    bi: usize,
    /// Instructions in all the region's blocks: an upper bound of what runs between
    /// two budget checks (see [`Tx::edge`]).
    total: u64,
    /// Edges into each block from the region's blocks.
    preds: Vec<u32>,
    /// The flags a block starts with, when its only predecessor (numbered lower: it is
    /// translated first) hands them over as they are instead of storing them.
    incoming: Vec<Option<FlagSrc>>,
    /// Registers lowered instructions use (loaded at entry, reloaded after helpers).
    used: u8,
    /// Registers lowered instructions write (stored at exits and before helpers).
    written: u8,
    /// The region's access groups (see `group`; none at tier 2 or outside flat mode).
    plan: Plan,
    /// Each group's TLB addend (the region's entry, and every helper call's return,
    /// checked that each group's span is on one page with a valid TLB entry).
    addends: Vec<Variable>,
    /// The group of the current instruction's memory operand.
    group_now: Option<usize>,
    /// The offset of the current instruction's memory operand, when it is in a group.
    access: Option<(Value, usize)>,
}

/// Edges into each block of `region` from its blocks (the entry has one more, from
/// outside).
fn region_preds(region: &Region) -> Vec<u32> {
    let mut n = vec![0u32; region.blocks.len()];
    n[0] = 1;
    for b in &region.blocks {
        for k in region.successors(b) {
            n[k] += 1;
        }
    }
    n
}

/// The GPRs (EAX..EDI, as a mask) that the region's lowered instructions use, and
/// those they write.
fn region_registers(region: &Region) -> (u8, u8) {
    let mut f = iced_x86::InstructionInfoFactory::new();
    let (mut used, mut written) = (0u8, 0u8);
    for d in region.blocks.iter().flat_map(|b| b.insns.iter()) {
        if kind(&d.insn) == Kind::Helper {
            continue;
        }
        for u in f.info(&d.insn).used_registers() {
            let Some((idx, ..)) = gpr(u.register().full_register32()) else {
                continue;
            };
            used |= 1 << idx;
            if !matches!(
                u.access(),
                iced_x86::OpAccess::Read | iced_x86::OpAccess::CondRead
            ) {
                written |= 1 << idx;
            }
        }
    }
    (used, written)
}

/// Checks the access groups of `plan` with the registers' current values, setting
/// their addends, except the groups of the registers in `written` (which have no
/// accesses left); when a check fails, returns `status` (the state must be complete).
fn check_groups(
    b: &mut FunctionBuilder<'_>,
    tlb: Value,
    regs: &[Variable; 8],
    plan: &Plan,
    addends: &[Variable],
    written: u8,
    status: u32,
) {
    let mut all = None;
    for (g, &var) in plan.groups.iter().zip(addends) {
        if written & (1 << g.reg) != 0 {
            continue;
        }
        let base = b.use_var(regs[g.reg]);
        let (ok, addend) = check_group(b, tlb, base, g);
        b.def_var(var, addend);
        all = Some(all.map_or(ok, |a| b.ins().band(a, ok)));
    }
    if let Some(ok) = all {
        let go = b.create_block();
        let fail = b.create_block();
        b.ins().brif(ok, go, &[], fail, &[]);
        b.switch_to_block(fail);
        let st = b.ins().iconst(I32, status as i64);
        b.ins().return_(&[st]);
        b.switch_to_block(go);
    }
}

/// Address of the TLB entry (in the table at `tlb`) for linear address `lin`:
/// `tlb + ((lin >> 12) % TLB_ENTRIES) * size_of::<TlbEntry>()`, in two operations.
fn tlb_entry(b: &mut FunctionBuilder<'_>, tlb: Value, lin: Value) -> Value {
    table_entry(b, tlb, lin, TLB_ENTRY_SHIFT)
}

/// Address of the entry for linear address `lin` in the table at `table`, of entries of
/// `1 << shift` bytes.
fn table_entry(b: &mut FunctionBuilder<'_>, table: Value, lin: Value, shift: u32) -> Value {
    let off = b.ins().ushr_imm_s(lin, 12 - shift as i64);
    let off = b.ins().band_imm_s(off, ((TLB_ENTRIES - 1) << shift) as i64);
    b.ins().iadd(table, off)
}

/// The TLB's code table (from the context).
fn code_tlb(b: &mut FunctionBuilder<'_>) -> Value {
    let ctx = symbol(b, Sym::Ctx);
    b.ins()
        .load(I64, MF, ctx, offset_of!(JitCtx, code_tlb) as i32)
}

/// Whether code TLB entry `entry` maps linear page `page` for execution to frame
/// `frame` (how compiled code checks that code it enters without the dispatcher is
/// still the code it was compiled from).
fn maps_exec(b: &mut FunctionBuilder<'_>, entry: Value, page: Value, frame: Value) -> Value {
    let exec = b
        .ins()
        .load(I64, MF, entry, offset_of!(CodeEntry, tag) as i32);
    let f = b
        .ins()
        .load(I64, MF, entry, offset_of!(CodeEntry, frame) as i32);
    let mapped = b.ins().icmp(IntCC::Equal, exec, page);
    let same = b.ins().icmp(IntCC::Equal, f, frame);
    b.ins().band(mapped, same)
}

/// Offset in a TLB entry of the tag for writes or reads.
fn tag_offset(write: bool) -> i32 {
    let off = if write {
        offset_of!(TlbEntry, write)
    } else {
        offset_of!(TlbEntry, read)
    };
    off as i32
}

/// The check of access group `g` (see `group`) whose base register holds `base`:
/// (its span is on one page whose TLB entry is valid for the group's accesses, that
/// entry's addend).
fn check_group(
    b: &mut FunctionBuilder<'_>,
    tlb: Value,
    base: Value,
    g: &group::Group,
) -> (Value, Value) {
    let span = |b: &mut FunctionBuilder<'_>, d: i64| {
        let v = b.ins().iadd_imm_s(base, d);
        let v = b.ins().ireduce(I32, v);
        b.ins().uextend(I64, v)
    };
    let lo = span(b, g.lo);
    let hi = span(b, g.end - 1);
    let entry = tlb_entry(b, tlb, lo);
    let plo = b.ins().band_imm_s(lo, !0xfff);
    let phi = b.ins().band_imm_s(hi, !0xfff);
    // Either way of the table (see `ox86_mmu::tlb`). A valid write tag implies a valid
    // read tag, with the same addend.
    let way = |b: &mut FunctionBuilder<'_>, off: i32| {
        let tag = b.ins().load(I64, MF, entry, off + tag_offset(g.write));
        let add = off + offset_of!(TlbEntry, addend) as i32;
        let addend = b.ins().load(I64, MF, entry, add);
        (b.ins().icmp(IntCC::Equal, tag, plo), addend)
    };
    let (hit0, addend0) = way(b, 0);
    let (hit1, addend1) = way(b, VICTIM_OFFSET as i32);
    let addend = b.ins().select(hit0, addend0, addend1);
    let hit = b.ins().bor(hit0, hit1);
    let one = b.ins().icmp(IntCC::Equal, plo, phi);
    let ok = b.ins().band(hit, one);
    (ok, addend)
}

/// Subtracts `n` from the heat counter at `addr` (see `heat`): whether it ran out.
fn count_heat(b: &mut FunctionBuilder<'_>, n: u64) -> Value {
    let a = symbol(b, Sym::HeatCell);
    let v = b.ins().load(I64, MF, a, 0);
    let v = b.ins().iadd_imm_s(v, -(n as i64));
    b.ins().store(MF, v, a, 0);
    b.ins().icmp_imm_s(IntCC::SignedLessThanOrEqual, v, 0)
}

pub(crate) const MF: MemFlagsData = MemFlagsData::trusted();
/// Guest memory: never traps (the TLB vouches for it), may be unaligned.
pub(crate) const GUEST: MemFlagsData = MemFlagsData::new().with_notrap();

fn reg_off(i: usize) -> i32 {
    (offset_of!(CpuState, regs) + 8 * i) as i32
}

fn seg_off(seg: usize, field: usize) -> i32 {
    (offset_of!(CpuState, seg) + seg * size_of::<Segment>() + field) as i32
}

impl<'a, 'b> Tx<'a, 'b> {
    /// Sets up the entry block and the exit block of the translation of `region` for
    /// request `req`, calling helpers with convention `cc`.
    pub fn new(
        b: &'a mut FunctionBuilder<'b>,
        region: &'a Region,
        req: &Request,
        cc: CallConv,
    ) -> Tx<'a, 'b> {
        let (mode, cs_hi, chains) = (req.entry.mode, req.entry.cs_hi, req.chain.is_some());
        // Tier 2 is the optimised code of a region whose groups split.
        let grouping = req.tier != 2;
        let sigs = import_sigs(b, cc);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let state = b.block_params(entry)[0];
        let regs: [Variable; 8] = std::array::from_fn(|_| b.declare_var(I64));
        let (used, written) = region_registers(region);
        for (k, &r) in regs.iter().enumerate() {
            if used & (1 << k) != 0 {
                let v = b.ins().load(I64, MF, state, reg_off(k));
                b.def_var(r, v);
            }
        }
        let icount = b.declare_var(I64);
        let tptr = b.declare_var(I64);
        let v = b
            .ins()
            .load(I64, MF, state, offset_of!(CpuState, icount) as i32);
        b.def_var(icount, v);
        let ctx = symbol(b, Sym::Ctx);
        let tlb = b.ins().load(I64, MF, ctx, offset_of!(JitCtx, tlb) as i32);
        let plan = if grouping && mode.flat {
            group::plan(region)
        } else {
            Plan::default()
        };
        // Every group's check must pass, else the region splits (see `group`).
        let addends: Vec<Variable> = plan.groups.iter().map(|_| b.declare_var(I64)).collect();
        check_groups(b, tlb, &regs, &plan, &addends, 0, SPLIT);
        let exit = b.create_block();
        b.append_block_param(exit, I64);
        b.append_block_param(exit, I64);
        b.append_block_param(exit, I32);
        let chain = b.create_block();
        b.append_block_param(chain, I64);
        b.append_block_param(chain, I64);
        let slow = b.create_block();
        b.append_block_param(slow, I64);
        b.append_block_param(slow, I64);
        b.append_block_param(slow, I64);
        let blocks: Vec<Block> = region.blocks.iter().map(|_| b.create_block()).collect();
        // The budget must allow the longest run up to the first backward edge (where
        // it is checked again): else nothing runs here, and the dispatcher leaves the
        // last instructions before the end of the budget to the interpreter.
        let total: u64 = region.blocks.iter().map(|g| g.insns.len() as u64).sum();
        let end = b.ins().load(I64, MF, ctx, offset_of!(JitCtx, end) as i32);
        let after = b.ins().iadd_imm_s(v, total as i64);
        let over = b.ins().icmp(IntCC::UnsignedGreaterThan, after, end);
        let none = b.create_block();
        let start = b.create_block();
        b.ins().brif(over, none, &[], start, &[]);
        b.switch_to_block(none);
        let st = b.ins().iconst(I32, CHECK as i64);
        b.ins().return_(&[st]);
        b.switch_to_block(start);
        // Instructions across the page end were compiled from the frame the next page
        // mapped to: entered by chaining, the region checks that it still does (the
        // dispatcher checks before it enters); if not, nothing runs here either.
        let run = b.create_block();
        match req.next.as_ref().filter(|_| region.next_len > 0) {
            Some(_) => {
                let lin = req.cs_base.wrapping_add(req.entry.eip) & 0xffff_ffff;
                let next = ((lin & !0xfff) + 0x1000) & 0xffff_ffff;
                let off = (tlb_index(next) << CODE_ENTRY_SHIFT) as i64;
                let table = code_tlb(b);
                let entry = b.ins().iadd_imm_s(table, off);
                let page = b.ins().iconst(I64, next as i64);
                let frame = symbol(b, Sym::NextFrame);
                let ok = maps_exec(b, entry, page, frame);
                b.ins().brif(ok, run, &[], none, &[]);
            }
            None => {
                b.ins().jump(run, &[]);
            }
        }
        b.switch_to_block(run);
        // A quick region counts its runs (see `heat`); when its counter runs out it
        // leaves before running anything, for the dispatcher to ask for its optimised
        // compilation.
        if req.heat.is_some() {
            let out = count_heat(b, total);
            let hot = b.create_block();
            b.ins().brif(out, hot, &[], blocks[0], &[]);
            b.switch_to_block(hot);
            let c = symbol(b, Sym::HeatId);
            let ctx = symbol(b, Sym::Ctx);
            b.ins().store(MF, c, ctx, offset_of!(JitCtx, hot) as i32);
            let st = b.ins().iconst(I32, HOT as i64);
            b.ins().return_(&[st]);
        } else {
            b.ins().jump(blocks[0], &[]);
        }
        Tx {
            b,
            sigs,
            state,
            regs,
            icount,
            tlb,
            mode,
            cs_base: req.cs_base,
            cs_hi,
            flags: FlagSrc::State,
            exit,
            chain,
            chains,
            heat: req.heat.is_some(),
            slow,
            blocks,
            region,
            bail: None,
            k: 0,
            tptr,
            accesses: 0,
            bi: 0,
            total,
            preds: region_preds(region),
            incoming: vec![None; region.blocks.len()],
            used,
            written,
            plan,
            addends,
            group_now: None,
            access: None,
        }
    }

    /// Translates every guest block and finishes the function.
    pub fn translate(mut self) {
        for bi in 0..self.region.blocks.len() {
            let blk = self.blocks[bi];
            self.b.switch_to_block(blk);
            self.flags = self.incoming[bi].take().unwrap_or(FlagSrc::State);
            self.bi = bi;
            self.guest_block(bi);
        }
        // The exit block writes the registers back and returns the status.
        self.b.switch_to_block(self.exit);
        let p = self.b.block_params(self.exit).to_vec();
        self.store_state(p[0], p[1]);
        self.b.ins().return_(&[p[2]]);
        self.chain_exit();
        // The common slow path runs one instruction in the interpreter (the flags are
        // already in the state) and leaves.
        self.b.switch_to_block(self.slow);
        let p = self.b.block_params(self.slow).to_vec();
        self.store_state(p[1], p[2]);
        let r = self.call_interp(p[0]);
        let is_ok = self.b.ins().icmp_imm_s(IntCC::Equal, r, OK as i64);
        let chk = self.b.ins().iconst(I32, CHECK as i64);
        let st = self.b.ins().select(is_ok, chk, r);
        self.b.ins().return_(&[st]);
        self.b.seal_all_blocks();
    }

    fn guest_block(&mut self, bi: usize) {
        let region = self.region;
        let gb = &region.blocks[bi];
        let n = gb.insns.len();
        if self.mode.traced {
            self.trace_record(bi);
        }
        for (k, d) in gb.insns.iter().enumerate() {
            self.k = k;
            self.group_now = self.plan.of_insn.get(bi).and_then(|v| v[k]);
            self.access = None;
            let last = k + 1 == n;
            let lowered_end = last && !matches!(gb.end, End::Next(_) | End::Stop(_));
            self.begin_accesses();
            if lowered_end {
                self.terminator(d, gb.end);
                return;
            }
            self.instruction(d, gb.live_after[k]);
            self.commit_accesses();
        }
        // Fell off the end of the block.
        let next = match gb.end {
            End::Next(n) | End::Stop(n) => n,
            _ => unreachable!("terminators return above"),
        };
        let cnt = self.icount_at(n);
        self.edge(next, cnt, &self.flags.clone());
    }

    /// Appends the record "guest block `bi` starts at the current instruction count" to
    /// the trace buffer (see `ox86_cpu::trace`): the dispatcher leaves room for one
    /// record per instruction the region may run, plus one.
    fn trace_record(&mut self, bi: usize) {
        let ctx = self.ctx();
        let p = self
            .b
            .ins()
            .load(I64, MF, ctx, offset_of!(JitCtx, trace) as i32);
        let base = symbol(self.b, Sym::TraceBase);
        let id = self.b.ins().iadd_imm_s(base, bi as i64);
        let c = self.b.use_var(self.icount);
        let hi = self.b.ins().ishl_imm_s(c, 32);
        let rec = self.b.ins().bor(hi, id);
        self.b.ins().store(MF, rec, p, 0);
        let next = self.b.ins().iadd_imm_s(p, 8);
        self.b
            .ins()
            .store(MF, next, ctx, offset_of!(JitCtx, trace) as i32);
    }

    /// Traced with memory accesses: the current instruction writes its access records
    /// from where the committed ones end.
    fn begin_accesses(&mut self) {
        self.accesses = 0;
        if self.mode.traced_mem {
            let ctx = self.ctx();
            let p = self
                .b
                .ins()
                .load(I64, MF, ctx, offset_of!(JitCtx, trace) as i32);
            self.b.def_var(self.tptr, p);
        }
    }

    /// Appends the record of a memory access of the current instruction to the trace
    /// buffer (see `ox86_cpu::trace::MEM`), after the instruction's others. The
    /// records count once the instruction completes ([`Tx::commit_accesses`]): on its
    /// slow path the interpreter runs it again, and records what it does.
    fn record_access(&mut self, lin: Value, size: u32, write: bool, v: Value) {
        if !self.mode.traced_mem {
            return;
        }
        self.accesses += 1;
        assert!(
            self.accesses <= JIT_MEM_PER_INSN,
            "an instruction lowered with more than {JIT_MEM_PER_INSN} memory accesses"
        );
        let p = self.b.use_var(self.tptr);
        let c = self.icount_at(self.k);
        let c = self.b.ins().band_imm_s(c, 0xffff);
        let head = MEM | ((size - 1) << 20) | if write { MEM_WRITE } else { 0 };
        let lo = self.b.ins().bor_imm_s(c, i64::from(head));
        let hi = self.b.ins().ishl_imm_s(lin, 32);
        let w0 = self.b.ins().bor(hi, lo);
        self.b.ins().store(MF, w0, p, 0);
        let w1 = if size < 8 {
            self.b.ins().uextend(I64, v)
        } else {
            v
        };
        self.b.ins().store(MF, w1, p, 8);
        let next = self.b.ins().iadd_imm_s(p, (MEM_WORDS * 8) as i64);
        self.b.def_var(self.tptr, next);
    }

    /// The current instruction completed: its access records count.
    fn commit_accesses(&mut self) {
        if self.mode.traced_mem && self.accesses > 0 {
            let p = self.b.use_var(self.tptr);
            let ctx = self.ctx();
            self.b
                .ins()
                .store(MF, p, ctx, offset_of!(JitCtx, trace) as i32);
        }
        self.accesses = 0;
    }

    /// The instruction count before instruction `k` of the current block.
    fn icount_at(&mut self, k: usize) -> Value {
        let c = self.b.use_var(self.icount);
        self.b.ins().iadd_imm_s(c, k as i64)
    }

    /// Leaves to `rip` (a constant) or continues in the region's block there, checking
    /// the budget on backward edges.
    fn edge(&mut self, rip: u64, icount: Value, flags: &FlagSrc) {
        let Some(&target) = self.region.index.get(&rip) else {
            self.materialize(flags);
            let r = self.b.ins().iconst(I64, rip as i64);
            self.b.ins().jump(self.chain, &[r.into(), icount.into()]);
            return;
        };
        let tb = &self.region.blocks[target];
        if target > self.bi && self.preds[target] == 1 {
            // The only way into the target, which comes later: its code sees this
            // block's values, so the flags pass as they are (its slow paths store
            // them where the state must be exact).
            self.incoming[target] = Some(flags.clone());
            self.b.def_var(self.icount, icount);
            self.b.ins().jump(self.blocks[target], &[]);
            return;
        }
        let mut flags = flags;
        if tb.live_in & ARITH != 0 {
            self.materialize(flags);
            flags = &FlagSrc::State;
        }
        if target > self.bi {
            // A forward edge: no cycle runs without a backward edge (blocks are
            // numbered, so every cycle has an edge to a block numbered no higher), and
            // the budget allowed everything up to the next backward edge.
            self.b.def_var(self.icount, icount);
            self.b.ins().jump(self.blocks[target], &[]);
            return;
        }
        // Enough budget for everything up to the next backward edge?
        let end = self.end();
        let after = self.b.ins().iadd_imm_s(icount, self.total as i64);
        let over = self.b.ins().icmp(IntCC::UnsignedGreaterThan, after, end);
        let stop = self.b.create_block();
        let go = self.b.create_block();
        self.b.ins().brif(over, stop, &[], go, &[]);
        self.b.switch_to_block(stop);
        self.materialize(flags);
        let r = self.b.ins().iconst(I64, rip as i64);
        let st = self.b.ins().iconst(I32, CHECK as i64);
        self.b
            .ins()
            .jump(self.exit, &[r.into(), icount.into(), st.into()]);
        self.b.switch_to_block(go);
        if self.heat {
            let out = count_heat(self.b, self.total);
            let hot = self.b.create_block();
            let on = self.b.create_block();
            self.b.ins().brif(out, hot, &[], on, &[]);
            self.b.switch_to_block(hot);
            self.materialize(flags);
            let c = symbol(self.b, Sym::HeatId);
            let ctx = self.ctx();
            self.b
                .ins()
                .store(MF, c, ctx, offset_of!(JitCtx, hot) as i32);
            let r = self.b.ins().iconst(I64, rip as i64);
            let st = self.b.ins().iconst(I32, HOT as i64);
            self.b
                .ins()
                .jump(self.exit, &[r.into(), icount.into(), st.into()]);
            self.b.switch_to_block(on);
        }
        self.b.def_var(self.icount, icount);
        self.b.ins().jump(self.blocks[target], &[]);
    }

    /// Leaves by a branch to a RIP computed at run time.
    fn exit_dynamic(&mut self, rip: Value, icount: Value) {
        let flags = self.flags.clone();
        self.materialize(&flags);
        self.b.ins().jump(self.chain, &[rip.into(), icount.into()]);
    }

    /// The exit by a branch: the state written back, then a tail call of the target's
    /// code if the chain table has it (the target checks the budget at its entry), else
    /// a JUMP status for the dispatcher.
    fn chain_exit(&mut self) {
        self.b.switch_to_block(self.chain);
        let p = self.b.block_params(self.chain).to_vec();
        let (rip, icount) = (p[0], p[1]);
        self.store_state(rip, icount);
        let leave = self.b.create_block();
        if self.chains {
            let hi = self.b.ins().ushr_imm_s(rip, 12);
            let h = self.b.ins().bxor(rip, hi);
            let h = self.b.ins().band_imm_s(h, (chain::CHAIN_SLOTS - 1) as i64);
            let off = self.b.ins().ishl_imm_s(h, chain::SLOT_SHIFT as i64);
            let ctx = self.ctx();
            let table = self
                .b
                .ins()
                .load(I64, MF, ctx, offset_of!(JitCtx, chain) as i32);
            let slot = self.b.ins().iadd(table, off);
            let tag = self
                .b
                .ins()
                .load(I64, MF, slot, offset_of!(ChainSlot, tag) as i32);
            let id = symbol(self.b, Sym::ChainTag);
            let want = self.b.ins().bor(rip, id);
            let miss = self.b.ins().icmp(IntCC::NotEqual, tag, want);
            let hit = self.b.create_block();
            self.b.ins().brif(miss, leave, &[], hit, &[]);
            self.b.switch_to_block(hit);
            // The TLB must map the target's page to the frame it was compiled from.
            let lin = self.b.ins().iadd_imm_s(rip, self.cs_base as i64);
            let lin = self.b.ins().ireduce(I32, lin);
            let lin = self.b.ins().uextend(I64, lin);
            let table = code_tlb(self.b);
            let entry = table_entry(self.b, table, lin, CODE_ENTRY_SHIFT);
            let page = self.b.ins().band_imm_s(lin, !0xfff);
            let want = self
                .b
                .ins()
                .load(I64, MF, slot, offset_of!(ChainSlot, frame) as i32);
            let ok = maps_exec(self.b, entry, page, want);
            let go = self.b.create_block();
            self.b.ins().brif(ok, go, &[], leave, &[]);
            self.b.switch_to_block(go);
            let f = self
                .b
                .ins()
                .load(I64, MF, slot, offset_of!(ChainSlot, func) as i32);
            let n = self
                .b
                .ins()
                .load(I64, MF, ctx, offset_of!(JitCtx, chained) as i32);
            let n = self.b.ins().iadd_imm_s(n, 1);
            self.b
                .ins()
                .store(MF, n, ctx, offset_of!(JitCtx, chained) as i32);
            self.b
                .ins()
                .return_call_indirect(self.sigs.region, f, &[self.state, ctx]);
        } else {
            self.b.ins().jump(leave, &[]);
        }
        self.b.switch_to_block(leave);
        let st = self.b.ins().iconst(I32, JUMP as i64);
        self.b.ins().return_(&[st]);
    }

    /// The dispatcher's `JitCtx`, as an i64 pointer.
    pub fn ctx(&mut self) -> Value {
        symbol(self.b, Sym::Ctx)
    }

    /// The instruction count the region must not run past (read from the context
    /// where needed, so that no register holds it).
    fn end(&mut self) -> Value {
        let ctx = self.ctx();
        self.b
            .ins()
            .load(I64, MF, ctx, offset_of!(JitCtx, end) as i32)
    }

    // ---- registers ----

    /// Reads a GPR at its width.
    pub fn get(&mut self, r: Register) -> Value {
        let (idx, size, high) = gpr(r).expect("lowered instructions use EAX..EDI");
        debug_assert!(self.used & (1 << idx) != 0, "{r:?} not in the used set");
        let v = self.b.use_var(self.regs[idx]);
        let v = if high {
            self.b.ins().ushr_imm_s(v, 8)
        } else {
            v
        };
        self.narrow(v, size)
    }

    /// Writes a GPR at its width (8- and 16-bit writes keep the other bits; 32-bit
    /// writes zero the upper half).
    pub fn set(&mut self, r: Register, v: Value) {
        let (idx, size, high) = gpr(r).expect("lowered instructions use EAX..EDI");
        debug_assert!(
            self.written & (1 << idx) != 0,
            "{r:?} not in the written set"
        );
        let wide = self.widen(v);
        let new = match (size, high) {
            (4, _) => wide,
            (2, _) => {
                let old = self.b.use_var(self.regs[idx]);
                let old = self.b.ins().band_imm_s(old, !0xffff);
                self.b.ins().bor(old, wide)
            }
            (_, false) => {
                let old = self.b.use_var(self.regs[idx]);
                let old = self.b.ins().band_imm_s(old, !0xff);
                self.b.ins().bor(old, wide)
            }
            (_, true) => {
                let old = self.b.use_var(self.regs[idx]);
                let old = self.b.ins().band_imm_s(old, !0xff00);
                let sh = self.b.ins().ishl_imm_s(wide, 8);
                self.b.ins().bor(old, sh)
            }
        };
        self.b.def_var(self.regs[idx], new);
    }

    /// Truncates an i64 to `size` bytes.
    pub fn narrow(&mut self, v: Value, size: u32) -> Value {
        if size >= 8 {
            v
        } else {
            self.b.ins().ireduce(ty(size), v)
        }
    }

    /// Zero-extends a value to i64.
    pub fn widen(&mut self, v: Value) -> Value {
        if self.b.func.dfg.value_type(v) == I64 {
            v
        } else {
            self.b.ins().uextend(I64, v)
        }
    }

    /// Sign-extends a value to i64.
    pub fn widen_signed(&mut self, v: Value) -> Value {
        if self.b.func.dfg.value_type(v) == I64 {
            v
        } else {
            self.b.ins().sextend(I64, v)
        }
    }

    fn writeback_regs(&mut self) {
        for k in (0..8).filter(|k| self.written & (1 << k) != 0) {
            let v = self.b.use_var(self.regs[k]);
            self.b.ins().store(MF, v, self.state, reg_off(k));
        }
    }

    fn reload_regs(&mut self) {
        for k in (0..8).filter(|k| self.used & (1 << k) != 0) {
            let v = self.b.ins().load(I64, MF, self.state, reg_off(k));
            self.b.def_var(self.regs[k], v);
        }
    }

    // ---- memory ----

    /// The effective address (offset) of the memory operand, as an i64.
    pub fn ea(&mut self, i: &Instruction) -> Value {
        let base = i.memory_base();
        let index = i.memory_index();
        let mut a: Option<Value> = None;
        if base != Register::None {
            let (idx, ..) = gpr(base).expect("checked by kind");
            a = Some(self.b.use_var(self.regs[idx]));
        }
        if index != Register::None {
            let (idx, ..) = gpr(index).expect("checked by kind");
            let v = self.b.use_var(self.regs[idx]);
            let v = match i.memory_index_scale() {
                1 => v,
                s => self.b.ins().ishl_imm_s(v, i64::from(s.trailing_zeros())),
            };
            a = Some(match a {
                Some(x) => self.b.ins().iadd(x, v),
                None => v,
            });
        }
        // No instruction for a zero displacement (quick code is compiled as written).
        let disp = i.memory_displacement64() as i64;
        let a = match a {
            None => self.b.ins().iconst(I64, disp),
            Some(x) if disp != 0 => self.b.ins().iadd_imm_s(x, disp),
            Some(x) => x,
        };
        self.mask(a, addr_mask(i) as i64)
    }

    /// `v & m`; a 32-bit mask is a zero extension of the low half (one move, where an
    /// AND would need the constant from memory).
    pub fn mask(&mut self, v: Value, m: i64) -> Value {
        if m == 0xffff_ffff {
            let lo = self.b.ins().ireduce(I32, v);
            self.b.ins().uextend(I64, lo)
        } else {
            self.b.ins().band_imm_s(v, m)
        }
    }

    /// The slow path of the current instruction.
    pub(crate) fn bail_block(&mut self) -> Block {
        match self.bail {
            Some(b) => b,
            None => {
                let b = self.b.create_block();
                self.bail = Some(b);
                b
            }
        }
    }

    /// Linear address of `size` bytes at `seg:off`, branching to the slow path when
    /// segmentation needs the interpreter's checks.
    pub(crate) fn linear(&mut self, seg: usize, off: Value, size: u32, write: bool) -> Value {
        if self.mode.flat && matches!(seg, DS | ES | SS) {
            return off;
        }
        let bail = self.bail_block();
        let base = self
            .b
            .ins()
            .load(I64, MF, self.state, seg_off(seg, offset_of!(Segment, base)));
        let lo = self
            .b
            .ins()
            .load(I32, MF, self.state, seg_off(seg, offset_of!(Segment, lo)));
        let hi = self
            .b
            .ins()
            .load(I32, MF, self.state, seg_off(seg, offset_of!(Segment, hi)));
        let rights = self.b.ins().load(
            I32,
            MF,
            self.state,
            seg_off(seg, offset_of!(Segment, rights)),
        );
        let need = if write {
            ox86_cpu::state::SEG_WRITE
        } else {
            ox86_cpu::state::SEG_READ
        };
        let off32 = self.b.ins().ireduce(I32, off);
        let last = self.b.ins().iadd_imm_s(off32, size as i64 - 1);
        let r = self.b.ins().band_imm_s(rights, need as i64);
        let no_right = self.b.ins().icmp_imm_s(IntCC::Equal, r, 0);
        let below = self.b.ins().icmp(IntCC::UnsignedLessThan, off32, lo);
        let above = self.b.ins().icmp(IntCC::UnsignedGreaterThan, last, hi);
        let wraps = self.b.ins().icmp(IntCC::UnsignedLessThan, last, off32);
        let bad = self.b.ins().bor(no_right, below);
        let bad = self.b.ins().bor(bad, above);
        let bad = self.b.ins().bor(bad, wraps);
        let ok = self.b.create_block();
        self.b.ins().brif(bad, bail, &[], ok, &[]);
        self.b.switch_to_block(ok);
        let off64 = self.b.ins().uextend(I64, off32);
        let lin = self.b.ins().iadd(base, off64);
        self.mask(lin, 0xffff_ffff)
    }

    /// Host address for `size` bytes at linear `lin` through the TLB, branching to the
    /// slow path on a miss, a slow page or a page-crossing access.
    pub(crate) fn host(&mut self, lin: Value, size: u32, write: bool) -> Value {
        let bail = self.bail_block();
        let entry = tlb_entry(self.b, self.tlb, lin);
        let tag = self.b.ins().load(I64, MF, entry, tag_offset(write));
        let lastb = if size > 1 {
            self.b.ins().iadd_imm_s(lin, size as i64 - 1)
        } else {
            lin
        };
        let page = self.b.ins().band_imm_s(lastb, !0xfff);
        let miss = self.b.ins().icmp(IntCC::NotEqual, tag, page);
        let hit = self.b.create_block();
        // On a miss, the table's second way; on a hit there, the two ways' entries
        // are swapped (see `ox86_mmu::tlb`).
        let second = self.b.create_block();
        let swap = self.b.create_block();
        self.b.set_cold_block(second);
        self.b.set_cold_block(swap);
        self.b.ins().brif(miss, second, &[], hit, &[]);
        self.b.switch_to_block(second);
        let entry2 = self.b.ins().iadd_imm_s(entry, VICTIM_OFFSET as i64);
        let tag = self.b.ins().load(I64, MF, entry2, tag_offset(write));
        let miss = self.b.ins().icmp(IntCC::NotEqual, tag, page);
        self.b.ins().brif(miss, bail, &[], swap, &[]);
        self.b.switch_to_block(swap);
        // The fields (the rest of the 64 bytes is padding), in 16-byte pieces: half
        // the instructions to compile of 8-byte ones, and no call (a second-way hit
        // is common where two pages alternate).
        const _: () = assert!(TLB_ENTRY_FIELDS.is_multiple_of(16));
        let unaligned = MemFlagsData::new().with_notrap();
        for off in (0..TLB_ENTRY_FIELDS as i32).step_by(16) {
            let a = self.b.ins().load(I64X2, unaligned, entry, off);
            let b = self.b.ins().load(I64X2, unaligned, entry2, off);
            self.b.ins().store(unaligned, b, entry, off);
            self.b.ins().store(unaligned, a, entry2, off);
        }
        self.b.ins().jump(hit, &[]);
        self.b.switch_to_block(hit);
        let addend = self
            .b
            .ins()
            .load(I64, MF, entry, offset_of!(TlbEntry, addend) as i32);
        self.b.ins().iadd(lin, addend)
    }

    /// Loads `size` bytes at `seg:off`.
    pub fn load(&mut self, seg: usize, off: Value, size: u32) -> Value {
        let (lin, h) = self.access_host(seg, off, size, false);
        let v = self.b.ins().load(ty(size), GUEST, h, 0);
        self.record_access(lin, size, false, v);
        v
    }

    /// Stores a value of `size` bytes at `seg:off`. Must be the instruction's last
    /// memory access (its slow path redoes the whole instruction).
    pub fn store(&mut self, seg: usize, off: Value, size: u32, v: Value) {
        let (lin, h) = self.access_host(seg, off, size, true);
        self.b.ins().store(GUEST, v, h, 0);
        self.record_access(lin, size, true, v);
    }

    /// Stores `v` (of `size` bytes) at host address `h`, for linear address `lin`
    /// (both from [`Tx::linear`] and [`Tx::host`]).
    pub(crate) fn store_at(&mut self, lin: Value, h: Value, size: u32, v: Value) {
        self.b.ins().store(GUEST, v, h, 0);
        self.record_access(lin, size, true, v);
    }

    /// Segment and offset of the memory operand.
    pub fn mem(&mut self, i: &Instruction) -> (usize, Value) {
        let off = self.ea(i);
        if let Some(g) = self.group_now {
            self.access = Some((off, g));
        }
        (seg_index(i.memory_segment()), off)
    }

    /// The linear and host addresses of an access to `seg:off`: for the memory operand
    /// of a group (in a flat segment), its offset plus the group's addend; else through
    /// the TLB.
    fn access_host(&mut self, seg: usize, off: Value, size: u32, write: bool) -> (Value, Value) {
        if let Some((v, g)) = self.access {
            if v == off && self.mode.flat && matches!(seg, DS | ES | SS) {
                let addend = self.b.use_var(self.addends[g]);
                return (off, self.b.ins().iadd(off, addend));
            }
        }
        let lin = self.linear(seg, off, size, write);
        (lin, self.host(lin, size, write))
    }

    /// Reads operand `n` (register, memory or immediate) at `size` bytes.
    pub fn read_op(&mut self, i: &Instruction, n: u32, size: u32) -> Value {
        match i.op_kind(n) {
            OpKind::Register => self.get(i.op_register(n)),
            OpKind::Memory => {
                let (seg, off) = self.mem(i);
                self.load(seg, off, size)
            }
            _ => self.imm(size, i.immediate(n)),
        }
    }

    // ---- stack ----

    pub(crate) fn sp_mask(&self) -> i64 {
        if self.mode.ss32 {
            0xffff_ffff
        } else {
            0xffff
        }
    }

    /// The stack pointer (ESP or SP) as an i64.
    pub fn sp(&mut self) -> Value {
        let v = self.b.use_var(self.regs[4]);
        let m = self.sp_mask();
        self.mask(v, m)
    }

    /// The new ESP for a stack pointer value (keeping the upper half for a 16-bit
    /// stack).
    pub fn new_esp(&mut self, sp: Value) -> Value {
        let m = self.sp_mask();
        let sp = self.mask(sp, m);
        if self.mode.ss32 {
            return sp;
        }
        let old = self.b.use_var(self.regs[4]);
        let old = self.b.ins().band_imm_s(old, !m);
        self.b.ins().bor(old, sp)
    }

    /// Pushes `v` (of `size` bytes): stores below the stack pointer and returns the new
    /// ESP, which the caller sets after its last memory access.
    pub fn push(&mut self, v: Value, size: u32) -> Value {
        let sp = self.sp();
        let sp = self.b.ins().iadd_imm_s(sp, -(size as i64));
        let m = self.sp_mask();
        let sp = self.mask(sp, m);
        self.store(SS, sp, size, v);
        self.new_esp(sp)
    }

    /// Pops `size` bytes: returns (value, new ESP).
    pub fn pop(&mut self, size: u32) -> (Value, Value) {
        let sp = self.sp();
        let v = self.load(SS, sp, size);
        let sp = self.b.ins().iadd_imm_s(sp, size as i64);
        let esp = self.new_esp(sp);
        (v, esp)
    }

    // ---- instructions ----

    fn instruction(&mut self, d: &DecodedInsn, live_after: u32) {
        let before = self.flags.clone();
        self.bail = None;
        if !crate::emit::emit(self, &d.insn, live_after) {
            // Not lowered: the interpreter runs it and the region goes on.
            let cont = self.b.create_block();
            self.helper(d, &before, cont);
            self.b.switch_to_block(cont);
            self.flags = FlagSrc::State;
            return;
        }
        self.finish_slow(d, &before, true);
    }

    /// Emits the current instruction's slow path, if it has one: the flags as they
    /// were before it, then the common slow path, which redoes the instruction in the
    /// interpreter and leaves the region.
    fn finish_slow(&mut self, d: &DecodedInsn, before: &FlagSrc, resume: bool) {
        let Some(bail) = self.bail.take() else {
            return;
        };
        let cont = resume.then(|| {
            let c = self.b.create_block();
            self.b.ins().jump(c, &[]);
            c
        });
        self.b.switch_to_block(bail);
        self.leave_slow(d, before);
        if let Some(c) = cont {
            self.b.switch_to_block(c);
        }
    }

    fn terminator(&mut self, d: &DecodedInsn, end: End) {
        let before = self.flags.clone();
        self.bail = None;
        let k = self.k;
        let next_count = self.icount_at(k + 1);
        let i = &d.insn;
        match (kind(i), end) {
            (Kind::Jcc, End::Cond(t, n)) => {
                let c = self.cond(i.condition_code());
                let taken = self.b.create_block();
                let fall = self.b.create_block();
                self.b.ins().brif(c, taken, &[], fall, &[]);
                let flags = self.flags.clone();
                self.b.switch_to_block(taken);
                self.edge(t, next_count, &flags);
                self.b.switch_to_block(fall);
                self.edge(n, next_count, &flags);
            }
            (Kind::Jmp, End::Jump(t)) => {
                let flags = self.flags.clone();
                self.edge(t, next_count, &flags);
            }
            (Kind::Call, End::Jump(t)) => {
                let size = crate::lower::stack_size(i);
                let ret = self.b.ins().iconst(ty(size), d.next_ip as i64);
                let esp = self.push(ret, size);
                self.b.def_var(self.regs[4], esp);
                self.commit_accesses();
                let flags = self.flags.clone();
                self.edge(t, next_count, &flags);
            }
            (Kind::Ret | Kind::JmpInd | Kind::CallInd, End::Dynamic) => {
                let target = crate::emit::indirect(self, i, d.next_ip);
                self.commit_accesses();
                self.exit_dynamic(target, next_count);
            }
            _ => {
                // Run by the interpreter; the region ends after it.
                self.leave_slow(d, &before);
                return;
            }
        }
        self.finish_slow(d, &before, false);
    }

    /// Leaves through the common slow path: the flags `flags` into the state, then
    /// instruction `d` run by the interpreter.
    fn leave_slow(&mut self, d: &DecodedInsn, flags: &FlagSrc) {
        self.materialize(flags);
        let p = self.insn_addr(d);
        let ip = self.b.ins().iconst(I64, d.insn.ip() as i64);
        let cnt = self.icount_at(self.k);
        self.b
            .ins()
            .jump(self.slow, &[p.into(), ip.into(), cnt.into()]);
    }

    /// Writes the registers the region changed, RIP and the instruction count back to
    /// the state.
    fn store_state(&mut self, rip: Value, icount: Value) {
        self.writeback_regs();
        self.b
            .ins()
            .store(MF, rip, self.state, offset_of!(CpuState, rip) as i32);
        self.b
            .ins()
            .store(MF, icount, self.state, offset_of!(CpuState, icount) as i32);
    }

    /// Calls the interpreter helper on the instruction at `insn` (an i64 pointer).
    fn call_interp(&mut self, insn: Value) -> Value {
        let f = symbol(self.b, Sym::Interp);
        let ctx = self.ctx();
        let call = self
            .b
            .ins()
            .call_indirect(self.sigs.interp, f, &[ctx, insn]);
        self.b.inst_results(call)[0]
    }

    /// The address of instruction `d` of the current guest block (a symbol).
    fn insn_addr(&mut self, d: &DecodedInsn) -> Value {
        let insns = &self.region.blocks[self.bi].insns;
        let k = insns
            .iter()
            .position(|x| std::ptr::eq(x, d))
            .expect("an instruction of the current block");
        let sym = Sym::Insn {
            b: self.bi as u16,
            k: k as u8,
        };
        symbol(self.b, sym)
    }

    /// Runs instruction `d` (not lowered) in the interpreter and goes on at `cont`
    /// with the registers reloaded; leaves the region if it faulted or must leave.
    fn helper(&mut self, d: &DecodedInsn, flags: &FlagSrc, cont: Block) {
        self.materialize(flags);
        let ip = self.b.ins().iconst(I64, d.insn.ip() as i64);
        let cnt = self.icount_at(self.k);
        self.store_state(ip, cnt);
        let p = self.insn_addr(d);
        let r = self.call_interp(p);
        let ok = self.b.create_block();
        let leave = self.b.create_block();
        let is_ok = self.b.ins().icmp_imm_s(IntCC::Equal, r, OK as i64);
        self.b.ins().brif(is_ok, ok, &[], leave, &[]);
        self.b.switch_to_block(leave);
        self.b.ins().return_(&[r]);
        self.b.switch_to_block(ok);
        self.reload_regs();
        // The helper may have changed the TLB: the groups are checked again, and the
        // region is left (its state is complete) if one fails.
        let written = self
            .plan
            .written_after
            .get(self.bi)
            .and_then(|w| w.get(self.k).copied())
            .unwrap_or(0);
        check_groups(
            self.b,
            self.tlb,
            &self.regs,
            &self.plan,
            &self.addends,
            written,
            CHECK,
        );
        self.b.ins().jump(cont, &[]);
    }
}
