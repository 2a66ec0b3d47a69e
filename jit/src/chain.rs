//! Direct chaining: a region that leaves by a branch looks its target up in the chain
//! table and tail-calls the target's code, without returning to the dispatcher.
//!
//! - A *chain context* is what compiled code takes as fixed besides EIP (CS base, CS
//!   limit and [`Mode`]); each gets a small number, compiled into the region's code.
//! - The chain table maps (context, EIP) to code and the frame that code was compiled
//!   from. The dispatcher fills it with the regions it finds through its jump cache,
//!   and empties it whenever regions are removed. Compiled code chains only when the
//!   TLB maps the target's linear page to that frame, so paging changes (a context
//!   switch) need no flush and compiled code only ever finds code that the dispatcher
//!   would have run from the same state. A region with instructions across the page
//!   end checks the next page's mapping at its own entry.
//!   Only a branch exit chains, and nothing before it in compiled code changes the
//!   mode, CS or paging: instructions that can end their region with another status.
//! - Region functions use Cranelift's tail calling convention, so that a chain of any
//!   length runs in one stack frame. The dispatcher enters them through a trampoline
//!   in the host's C convention.

use std::collections::HashMap;

use cranelift_codegen::ir::types::{I32, I64};
use cranelift_codegen::ir::{AbiParam, InstBuilder, Signature};
use cranelift_codegen::isa::CallConv;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};

use crate::mode::Mode;

/// Slots in the chain table (a power of two).
pub const CHAIN_SLOTS: usize = 4096;
/// Most chain contexts; code for further contexts does not chain.
const MAX_CONTEXTS: usize = 1 << 16;
/// Tag of an empty slot: no (context, EIP) pair has it.
const EMPTY_TAG: u64 = u64::MAX;
/// Tag of a slot emptied by `remove`, still in `filled` (no pair has it either:
/// contexts are below `MAX_CONTEXTS`).
const REMOVED_TAG: u64 = u64::MAX - 1;

/// One slot: compiled code compares `tag`, checks that the TLB maps the target's page
/// to `frame`, and tail-calls `func`. `#[repr(C)]`: compiled code reads the fields at
/// fixed offsets.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ChainSlot {
    /// [`tag`] of the region's context and entry EIP.
    pub tag: u64,
    /// The region's code.
    pub func: usize,
    /// The physical frame of the region's entry.
    pub frame: u64,
    _pad: u64,
}

/// Bytes of a slot, as compiled code indexes the table.
pub const SLOT_SHIFT: u32 = 5;
const _: () = assert!(std::mem::size_of::<ChainSlot>() == 1 << SLOT_SHIFT);

/// The slot of `eip`.
#[inline(always)]
pub fn slot_index(eip: u64) -> usize {
    ((eip ^ (eip >> 12)) as usize) & (CHAIN_SLOTS - 1)
}

/// The tag of entry `eip` in chain context `id`.
#[inline(always)]
pub fn tag(id: u32, eip: u64) -> u64 {
    (u64::from(id) << 32) | (eip & 0xffff_ffff)
}

/// The chain table and the chain contexts.
pub struct ChainTable {
    slots: Box<[ChainSlot]>,
    /// Slots filled since the last flush (emptied one by one: usually few).
    filled: Vec<u32>,
    contexts: HashMap<(u64, u64, Mode), u32>,
}

impl ChainTable {
    /// An empty table.
    pub fn new() -> ChainTable {
        ChainTable {
            slots: vec![
                ChainSlot {
                    tag: EMPTY_TAG,
                    func: 0,
                    frame: 0,
                    _pad: 0,
                };
                CHAIN_SLOTS
            ]
            .into_boxed_slice(),
            filled: Vec::new(),
            contexts: HashMap::new(),
        }
    }

    /// The table, as compiled code reads it.
    pub fn as_ptr(&self) -> *const ChainSlot {
        self.slots.as_ptr()
    }

    /// The chain context of code with CS base `cs_base`, CS limit `cs_hi` and mode
    /// `mode`; None when there are too many contexts (that code does not chain).
    pub fn context(&mut self, cs_base: u64, cs_hi: u64, mode: Mode) -> Option<u32> {
        let n = self.contexts.len();
        if let Some(&id) = self.contexts.get(&(cs_base, cs_hi, mode)) {
            return Some(id);
        }
        if n >= MAX_CONTEXTS {
            return None;
        }
        self.contexts.insert((cs_base, cs_hi, mode), n as u32);
        Some(n as u32)
    }

    /// Makes entry `eip` in context `id` chain to `func`, compiled from code in
    /// physical frame `frame`.
    pub fn insert(&mut self, id: u32, eip: u64, func: usize, frame: u64) {
        let k = slot_index(eip);
        let t = tag(id, eip);
        let slot = &mut self.slots[k];
        if slot.tag == t && slot.func == func && slot.frame == frame {
            return;
        }
        if slot.tag == EMPTY_TAG {
            self.filled.push(k as u32);
        }
        *slot = ChainSlot {
            tag: t,
            func,
            frame,
            _pad: 0,
        };
    }

    /// Makes entry `eip` in context `id` chain nowhere (its region is gone).
    pub fn remove(&mut self, id: u32, eip: u64) {
        let slot = &mut self.slots[slot_index(eip)];
        if slot.tag == tag(id, eip) {
            // Still in `filled`, so not EMPTY_TAG (which `insert` would add again).
            slot.tag = REMOVED_TAG;
        }
    }

    /// Empties the table.
    pub fn flush(&mut self) {
        for k in self.filled.drain(..) {
            self.slots[k as usize].tag = EMPTY_TAG;
        }
    }
}

/// The signature of region code: (state, ctx) -> status, tail calling convention.
pub fn region_signature() -> Signature {
    let mut s = Signature::new(CallConv::Tail);
    s.params.push(AbiParam::new(I64));
    s.params.push(AbiParam::new(I64));
    s.returns.push(AbiParam::new(I32));
    s
}

/// How the dispatcher calls region code: `enter(state, ctx, func) -> status`.
pub type EnterFn =
    unsafe extern "C" fn(state: *mut ox86_cpu::CpuState, ctx: *mut u8, func: usize) -> u32;

/// The trampoline from the host's C convention into region code.
pub struct Trampoline {
    module: Option<JITModule>,
    /// The entry point.
    pub enter: EnterFn,
}

impl Trampoline {
    /// Compiles the trampoline for `isa`.
    pub fn new(isa: cranelift_codegen::isa::OwnedTargetIsa) -> Result<Trampoline, String> {
        let mut module = JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()));
        let mut ctx = module.make_context();
        for _ in 0..3 {
            ctx.func.signature.params.push(AbiParam::new(I64));
        }
        ctx.func.signature.returns.push(AbiParam::new(I32));
        let mut fctx = FunctionBuilderContext::new();
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            let sig = b.import_signature(region_signature());
            let entry = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            let p = b.block_params(entry).to_vec();
            let call = b.ins().call_indirect(sig, p[2], &[p[0], p[1]]);
            let r = b.inst_results(call)[0];
            b.ins().return_(&[r]);
            b.seal_all_blocks();
            b.finalize(module.target_config());
        }
        let id = module
            .declare_function("ox86_enter", Linkage::Local, &ctx.func.signature)
            .map_err(|e| e.to_string())?;
        module
            .define_function(id, &mut ctx)
            .map_err(|e| e.to_string())?;
        module.clear_context(&mut ctx);
        module.finalize_definitions().map_err(|e| e.to_string())?;
        let ptr = module.get_finalized_function(id);
        // SAFETY: the function was just compiled with the signature
        // (i64, i64, i64) -> i32 in the host's default (C) calling convention, and
        // stays alive as long as the module, which `self` owns.
        let enter = unsafe { std::mem::transmute::<*const u8, EnterFn>(ptr) };
        Ok(Trampoline {
            module: Some(module),
            enter,
        })
    }
}

impl Drop for Trampoline {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: the trampoline is dropped with the JIT, after which nothing
            // calls it.
            unsafe { m.free_memory() };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_empties_every_filled_slot() {
        let mut t = ChainTable::new();
        let m = Mode::FLAT32;
        let a = t.context(0, 0xffff_ffff, m).unwrap();
        let b = t.context(0x1000, 0xffff, m).unwrap();
        assert_ne!(a, b);
        assert_eq!(t.context(0, 0xffff_ffff, m), Some(a));
        t.insert(a, 0x1234, 1, 0x5000);
        t.insert(b, 0x1234, 2, 0x5000); // same slot, other context: replaces
        t.insert(a, 0xc000_0000, 3, 0x6000);
        assert_eq!(t.slots[slot_index(0x1234)].tag, tag(b, 0x1234));
        t.remove(a, 0x1234); // not there: the slot holds b's entry
        assert_eq!(t.slots[slot_index(0x1234)].tag, tag(b, 0x1234));
        t.remove(b, 0x1234);
        assert_eq!(t.slots[slot_index(0x1234)].tag, REMOVED_TAG);
        t.insert(b, 0x1234, 2, 0x5000);
        assert_eq!(t.filled.len(), 2);
        t.flush();
        assert!(t.slots.iter().all(|s| s.tag == EMPTY_TAG));
        assert!(t.filled.is_empty());
    }
}
