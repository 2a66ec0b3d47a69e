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
    loop {
        if rep && e.s.regs[RCX] & am == 0 {
            return Ok(());
        }
        let si = e.s.regs[RSI] & am;
        let di = e.s.regs[RDI] & am;
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
