//! String instructions: MOVS, CMPS, SCAS, LODS, STOS, INS, OUTS, with REP, REPE and
//! REPNE. A repeated instruction runs at most `CHUNK` iterations per execution and
//! then restarts itself, so interrupts and the instruction budget are honoured within
//! long repeats, as on hardware.

use iced_x86::{Instruction, Mnemonic, OpKind};

use crate::access::Word;
use crate::exception::Fault;
use crate::flags::{size_mask, Lazy};
use crate::state::{DF, ES, RAX, RCX, RDI, RDX, RSI};
use crate::Exec;
use ox86_mmu::PAGE_MASK;

use super::operand::seg_index;

/// Iterations of a repeated string instruction per execution.
pub const CHUNK: u64 = 4096;

/// Address-size mask of a string instruction, from its implicit memory operands.
fn str_addr_mask(i: &Instruction) -> u64 {
    for n in 0..i.op_count() {
        match i.op_kind(n) {
            OpKind::MemorySegSI | OpKind::MemorySegDI | OpKind::MemoryESDI => return 0xffff,
            OpKind::MemorySegESI | OpKind::MemorySegEDI | OpKind::MemoryESEDI => {
                return 0xffff_ffff
            }
            OpKind::MemorySegRSI | OpKind::MemorySegRDI | OpKind::MemoryESRDI => return u64::MAX,
            _ => {}
        }
    }
    0xffff_ffff
}

/// The string operation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Movs,
    Cmps,
    Scas,
    Lods,
    Stos,
    Ins,
    Outs,
}

/// All string instructions of width `W`.
pub fn exec_string<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let op = match i.mnemonic() {
        Mnemonic::Movsb | Mnemonic::Movsw | Mnemonic::Movsd => Op::Movs,
        Mnemonic::Cmpsb | Mnemonic::Cmpsw | Mnemonic::Cmpsd => Op::Cmps,
        Mnemonic::Scasb | Mnemonic::Scasw | Mnemonic::Scasd => Op::Scas,
        Mnemonic::Lodsb | Mnemonic::Lodsw | Mnemonic::Lodsd => Op::Lods,
        Mnemonic::Stosb | Mnemonic::Stosw | Mnemonic::Stosd => Op::Stos,
        Mnemonic::Insb | Mnemonic::Insw | Mnemonic::Insd => Op::Ins,
        _ => Op::Outs,
    };
    let am = str_addr_mask(i);
    let src_seg = if matches!(op, Op::Movs | Op::Cmps | Op::Lods | Op::Outs) {
        seg_index(i.memory_segment())
    } else {
        0
    };
    let rep = i.has_rep_prefix() || i.has_repne_prefix();
    // REPE/REPNE only terminate CMPS and SCAS; for the others both mean REP.
    let cond = matches!(op, Op::Cmps | Op::Scas);
    let repne = i.has_repne_prefix();
    let step = if e.s.flags & DF != 0 {
        (W::SIZE as u64).wrapping_neg()
    } else {
        W::SIZE as u64
    };
    if matches!(op, Op::Ins | Op::Outs) {
        let port = e.s.regs[RDX] as u16;
        e.check_io(port, W::SIZE)?;
    }
    let mut n = 0u64;
    // REP MOVS and REP STOS upwards go a page at a time where they can (see `bulk`).
    let fast = rep && step == W::SIZE as u64 && matches!(op, Op::Movs | Op::Stos);
    loop {
        if rep && e.s.regs[RCX] & am == 0 {
            return Ok(());
        }
        let si = e.s.regs[RSI] & am;
        let di = e.s.regs[RDI] & am;
        if fast {
            let left = (e.s.regs[RCX] & am).min(CHUNK - n);
            let k = bulk::<W>(e, op == Op::Movs, src_seg, si, di, left, am);
            if k > 0 {
                adv(e, RSI, if op == Op::Movs { k * step } else { 0 }, am);
                adv(e, RDI, k * step, am);
                let c = (e.s.regs[RCX] & am) - k;
                e.s.regs[RCX] = (e.s.regs[RCX] & !am) | c;
                n += k;
                if c == 0 {
                    return Ok(());
                }
                if n >= CHUNK {
                    e.s.rip = i.ip();
                    return Ok(());
                }
                continue;
            }
        }
        let mut done = false;
        match op {
            Op::Movs => {
                let v = e.read::<W>(src_seg, si)?;
                e.write::<W>(ES, di, v)?;
                adv(e, RSI, step, am);
                adv(e, RDI, step, am);
            }
            Op::Stos => {
                e.write::<W>(ES, di, W::from_u64(e.s.regs[RAX]))?;
                adv(e, RDI, step, am);
            }
            Op::Lods => {
                let v = e.read::<W>(src_seg, si)?.to_u64();
                set_acc::<W>(e, v);
                adv(e, RSI, step, am);
            }
            Op::Cmps | Op::Scas => {
                let (a, b) = if op == Op::Cmps {
                    (
                        e.read::<W>(src_seg, si)?.to_u64(),
                        e.read::<W>(ES, di)?.to_u64(),
                    )
                } else {
                    (
                        e.s.regs[RAX] & size_mask(W::SIZE),
                        e.read::<W>(ES, di)?.to_u64(),
                    )
                };
                e.s.set_lazy(Lazy::Sub, W::SIZE, a, b, a.wrapping_sub(b));
                if op == Op::Cmps {
                    adv(e, RSI, step, am);
                }
                adv(e, RDI, step, am);
                let equal = a == b;
                done = cond && rep && (equal == repne);
            }
            Op::Ins => {
                // The destination is checked before the port is read (no lost input).
                e.probe_write(ES, di, W::SIZE)?;
                let port = e.s.regs[RDX] as u16;
                let v = e.port_in(port, W::SIZE) as u64;
                e.write::<W>(ES, di, W::from_u64(v))?;
                adv(e, RDI, step, am);
            }
            Op::Outs => {
                let v = e.read::<W>(src_seg, si)?.to_u64();
                let port = e.s.regs[RDX] as u16;
                e.port_out(port, W::SIZE, v as u32);
                adv(e, RSI, step, am);
            }
        }
        if !rep {
            return Ok(());
        }
        let c = (e.s.regs[RCX] & am).wrapping_sub(1) & am;
        e.s.regs[RCX] = (e.s.regs[RCX] & !am) | c;
        if done || c == 0 {
            return Ok(());
        }
        n += 1;
        if n >= CHUNK || (matches!(op, Op::Ins | Op::Outs) && e.io.stop_requested()) {
            // Restart the instruction later: interrupts and the budget get a say.
            e.s.rip = i.ip();
            return Ok(());
        }
    }
}

/// Runs up to `max` iterations of REP MOVS (`movs`) or REP STOS upwards at once, as
/// many as lie on one page of the destination (and of the source) and in the
/// segments, when the TLB maps those pages to RAM for the access (no code, no
/// watchpoint, no MMIO): what the iterations one by one would do, without a TLB
/// look-up each. Returns the iterations run; 0 when the next one must go the usual way
/// (a TLB miss, a fault to raise, a segment limit, an alignment check, too few, or a
/// trace that records each access).
fn bulk<W: Word>(
    e: &mut Exec<'_>,
    movs: bool,
    src_seg: usize,
    si: u64,
    di: u64,
    max: u64,
    am: u64,
) -> u64 {
    if e.trace_mem {
        return 0;
    }
    let size = W::SIZE as u64;
    // Whole elements before the page end at a linear address, and before the address
    // size wraps at an offset.
    let on_page = |lin: u64| ((PAGE_MASK + 1) - (lin & PAGE_MASK)) / size;
    let no_wrap = |off: u64| (am - off) / size + 1;
    let user = e.user();
    let Ok(ld) = e.seg_linear(ES, di, W::SIZE, true) else {
        return 0;
    };
    let mut k = max.min(on_page(ld)).min(no_wrap(di));
    let mut ls = 0;
    if movs {
        let Ok(l) = e.seg_linear(src_seg, si, W::SIZE, false) else {
            return 0;
        };
        ls = l;
        k = k.min(on_page(ls)).min(no_wrap(si));
    }
    if k < 2 {
        return 0;
    }
    // The last element's checks cover those between (the offsets only grow).
    let last = (k - 1) * size;
    if e.seg_linear(ES, di + last, W::SIZE, true).is_err()
        || (movs && e.seg_linear(src_seg, si + last, W::SIZE, false).is_err())
    {
        return 0;
    }
    let Some(d) = e.tlb.lookup_write(user, ld, size) else {
        return 0;
    };
    let len = (k * size) as usize;
    if movs {
        let Some(s) = e.tlb.lookup_read(user, ls, size) else {
            return 0;
        };
        let (d, s) = (d as *mut u8, s as *const u8);
        if (d as usize) + len <= s as usize || (s as usize) + len <= d as usize {
            // SAFETY: both ranges lie on pages the TLB maps to RAM for these accesses
            // (checked for the first element; all `k` are on the same page), and they
            // do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(s, d, len) };
        } else {
            for j in 0..k as usize {
                let o = j * size as usize;
                // SAFETY: as above; element by element, as the iterations would copy
                // overlapping ranges.
                unsafe { W::store(d.add(o), W::load(s.add(o))) };
            }
        }
    } else {
        let v = W::from_u64(e.s.regs[RAX]);
        let d = d as *mut u8;
        for j in 0..k as usize {
            // SAFETY: the range lies on a page the TLB maps to RAM for writes (checked
            // for the first element; all `k` are on the same page).
            unsafe { W::store(d.add(j * size as usize), v) };
        }
    }
    k
}

#[inline(always)]
fn adv(e: &mut Exec<'_>, r: usize, step: u64, am: u64) {
    let v = (e.s.regs[r] & am).wrapping_add(step) & am;
    e.s.regs[r] = (e.s.regs[r] & !am) | v;
}

fn set_acc<W: Word>(e: &mut Exec<'_>, v: u64) {
    let m = size_mask(W::SIZE);
    e.s.regs[RAX] = if W::SIZE == 4 {
        v & m
    } else {
        (e.s.regs[RAX] & !m) | (v & m)
    };
}
