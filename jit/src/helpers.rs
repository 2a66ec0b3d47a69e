//! The helpers compiled code calls, and the context it passes them. Helpers report
//! faults by return value (and the exception in the context), never by unwinding.

use std::ffi::c_void;

use ox86_cpu::exception::Exception;
use ox86_cpu::exec::x87 as fpu;
use ox86_cpu::state::CS;
use ox86_cpu::{CpuState, DecodedInsn, Exec};
use ox86_mmu::tlb::{CodeEntry, TlbEntry};
use ox86_x87::fast::Fast;
use ox86_x87::ops::MemUse;

use crate::x87::X87Insn;

/// Helper status: carry on.
pub const OK: u32 = 0;
/// Helper status (and region exit status): a fault; the exception is in the context,
/// RIP and the registers are at the faulting instruction.
pub const FAULT: u32 = 1;
/// Helper status (and region exit status): the instruction completed but the region
/// must be left (its RIP is not the next one, or code was written); the state is
/// complete.
pub const LEAVE: u32 = 2;
/// Region exit status: left by a branch; the state is complete.
pub const JUMP: u32 = 3;
/// Region exit status: the instruction budget is used up, or an instruction that may
/// change what the dispatcher checks (interrupt flag, mode) completed.
pub const CHECK: u32 = 4;
/// Region exit status: an access group's check failed at the region's entry (see
/// `group`); nothing ran.
pub const SPLIT: u32 = 5;
/// Region exit status: a quick region's heat counter ran out (see `heat`; its number
/// is in the context), at the region's entry (nothing ran) or at a backward edge (the
/// state is complete).
pub const HOT: u32 = 6;

/// What compiled code gets beside the CPU state. `#[repr(C)]`: compiled code reads
/// its fields at their `offset_of!` offsets.
#[repr(C)]
pub struct JitCtx {
    /// The TLB's data table for the region's privilege level.
    pub tlb: *const TlbEntry,
    /// The TLB's code table for the region's privilege level.
    pub code_tlb: *const CodeEntry,
    /// Instruction count the region must not run past.
    pub end: u64,
    /// The execution context (`*mut Exec<'_>`), for helpers.
    pub exec: *mut c_void,
    /// The exception of a FAULT status.
    pub fault: Option<Exception>,
    /// What the FPU helper hands back: the bytes to store, the EFLAGS bits of a
    /// compare, or the new AX.
    pub x87_out: u64,
    /// The chain table (compiled code reads it to chain regions).
    pub chain: *const crate::chain::ChainSlot,
    /// Entries into regions by chaining, counted by compiled code.
    pub chained: u64,
    /// The heat counter of a HOT status.
    pub hot: u64,
    /// Where traced code writes its next record (see `ox86_cpu::trace`).
    pub trace: *mut u64,
}

/// Runs `f` on the execution context behind `ctx`.
///
/// # Safety
/// `ctx` must point to a live `JitCtx` whose `exec` points to the `Exec` the
/// dispatcher is running compiled code for, not otherwise borrowed during the call.
#[inline(always)]
unsafe fn with_exec<R>(ctx: *mut JitCtx, f: impl FnOnce(&mut Exec<'_>, &mut JitCtx) -> R) -> R {
    // SAFETY: guaranteed by the caller; compiled code passes the dispatcher's context,
    // and nothing else uses the Exec while compiled code runs.
    let ctx = unsafe { &mut *ctx };
    // SAFETY: as above: `exec` was made from a `&mut Exec` that outlives the call.
    let ex = unsafe { &mut *(ctx.exec as *mut Exec<'static>) };
    f(ex, ctx)
}

/// Runs one instruction with its interpreter handler. The caller has written the
/// whole state back (RIP = the instruction's). Returns OK (the state is at the next
/// instruction), LEAVE (it completed but the region must be left), or FAULT (RIP and
/// the registers are at the faulting instruction).
///
/// # Safety
/// Called only by compiled code, with the context the dispatcher passed it and an
/// instruction the region keeps alive.
pub unsafe extern "C" fn interp(ctx: *mut JitCtx, d: *const DecodedInsn) -> u32 {
    // SAFETY: the region owns its instructions for as long as its code can run.
    let d = unsafe { &*d };
    // SAFETY: compiled code passes its context through.
    unsafe {
        with_exec(ctx, |ex, ctx| {
            let ip = ex.s.rip;
            ex.s.rip = d.next_ip;
            // Traced code: the handler may write an event (port I/O) after the
            // records compiled code wrote so far.
            let traced = ex.trace.as_deref_mut().map(|t| {
                t.jit_done(ctx.trace);
                t.len()
            });
            let r = (d.handler)(ex, &d.insn);
            if let (Some(t), Some(before)) = (ex.trace.as_deref_mut(), traced) {
                if t.len() != before {
                    // Room again for what the region may still write.
                    t.reserve(ox86_cpu::trace::JIT_ROOM);
                }
                ctx.trace = t.jit_ptr();
            }
            match r {
                Ok(()) => {
                    ex.s.icount += 1;
                    // A watchpoint of the host debugger stops after the instruction.
                    if ex.s.rip != d.next_ip || ex.mem.has_dirty_code() || ex.dbg.stopped() {
                        LEAVE
                    } else {
                        OK
                    }
                }
                Err(e) => {
                    ex.s.rip = ip;
                    ex.dbg.cancel_watch_hit();
                    ctx.fault = Some(e);
                    FAULT
                }
            }
        })
    }
}

/// FPU helper status: the instruction completed; for a compare into EFLAGS or
/// FNSTSW AX, `x87_out` holds the flags or AX.
pub const X87_DONE: u32 = 0;
/// FPU helper status: nothing was done; the interpreter must run the instruction
/// (it raises #NM or #MF, or the staging failed).
pub const X87_DECLINED: u32 = 1;
/// FPU helper status: the instruction completed and compiled code must store
/// `x87_out` at the operand.
pub const X87_STORE: u32 = 2;

/// Runs an x87 instruction whose memory operand compiled code accesses: `ea` is the
/// operand's offset, `loaded` the bytes it loaded. Touches no GPR and no flag.
///
/// # Safety
/// Called only by compiled code, with the context the dispatcher passed it and an
/// instruction the region keeps alive.
pub unsafe extern "C" fn x87(ctx: *mut JitCtx, xi: *const X87Insn, ea: u64, loaded: u64) -> u32 {
    // SAFETY: the region owns its x87 instructions for as long as its code can run.
    let xi = unsafe { &*xi };
    // SAFETY: compiled code passes its context through.
    unsafe {
        with_exec(ctx, |ex, ctx| {
            if !fpu::ready(ex.s) {
                return X87_DECLINED;
            }
            let ip = (xi.insn.ip32(), ex.s.seg[CS].selector);
            let data =
                (xi.op.mem_use() != MemUse::None).then(|| (ea as u32, ex.s.seg[xi.seg].selector));
            match ex
                .s
                .fpu
                .execute_fast(xi.op, xi.sti, loaded, xi.fop, ip, data)
            {
                Fast::Done => return X87_DONE,
                Fast::Store(b) => {
                    ctx.x87_out = b;
                    return X87_STORE;
                }
                Fast::NotDone => {}
            }
            let mut st = fpu::Staged::new(ex.s, &xi.insn, xi.seg, ea);
            if let MemUse::Load(n) = xi.op.mem_use() {
                st.load(loaded, usize::from(n));
            }
            if fpu::run_staged(ex.s, xi.op, &xi.insn, xi.fop, &mut st).is_err() {
                return X87_DECLINED;
            }
            if st.stored > 0 {
                ctx.x87_out = st.bits();
                return X87_STORE;
            }
            if let Some(v) = st.compare {
                ctx.x87_out = u64::from(v);
            } else if let Some(ax) = st.ax {
                ctx.x87_out = u64::from(ax);
            }
            X87_DONE
        })
    }
}

/// The arithmetic flags of the lazy state, as EFLAGS bits.
///
/// # Safety
/// `s` must point to the live CPU state.
pub unsafe extern "C" fn eflags(s: *const CpuState) -> u64 {
    // SAFETY: compiled code passes the state it was given.
    unsafe { (*s).eflags() }
}
