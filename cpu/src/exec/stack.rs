//! Stack instructions: PUSH, POP, PUSHA, POPA, PUSHF, POPF, ENTER, LEAVE.

use iced_x86::{Instruction, OpKind};

use crate::access::Word;
use crate::exception::{Exception, Fault};
use crate::state::{AC, ARITH_FLAGS, DF, ID, IF, IOPL, NT, RBP, RF, RSP, TF, VM};
use crate::Exec;

use super::operand::reg_write;

/// PUSH r/m/imm of width `W`.
pub fn exec_push<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    // PUSH ESP pushes the value before the decrement: read first.
    let v = e.rd::<W>(i, 0)?;
    e.push::<W>(v)
}

/// POP r/m of width `W`. A memory destination's address uses the incremented ESP.
pub fn exec_pop<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let old_sp = e.s.regs[RSP];
    let v = e.pop::<W>()?;
    if i.op_kind(0) == OpKind::Register {
        reg_write(e.s, i.op_register(0), v.to_u64());
        return Ok(());
    }
    if let Err(x) = e.wr::<W>(i, 0, v) {
        e.s.regs[RSP] = old_sp;
        return Err(x);
    }
    Ok(())
}

/// PUSHA/PUSHAD.
pub fn exec_pusha<W: Word>(e: &mut Exec<'_>, _i: &Instruction) -> Fault {
    let sp = e.sp();
    let n = W::SIZE as u64;
    // Check the whole area first so that a fault leaves everything unchanged.
    let low = sp.wrapping_sub(8 * n) & e.sp_mask();
    e.probe_write(crate::state::SS, low, 8 * W::SIZE)?;
    let vals: [u64; 8] = std::array::from_fn(|k| if k == RSP { sp } else { e.s.regs[k] });
    for v in vals {
        e.push::<W>(W::from_u64(v))?;
    }
    Ok(())
}

/// POPA/POPAD (the saved SP is skipped).
pub fn exec_popa<W: Word>(e: &mut Exec<'_>, _i: &Instruction) -> Fault {
    let n = W::SIZE as u64;
    let mut vals = [0u64; 8];
    for (k, v) in vals.iter_mut().enumerate() {
        *v = e.peek::<W>(k as u64 * n)?.to_u64();
    }
    for (k, &v) in vals.iter().enumerate() {
        let r = 7 - k;
        if r == RSP {
            continue;
        }
        if W::SIZE == 2 {
            e.s.set_r16(r, v as u16);
        } else {
            e.s.set_r32(r, v as u32);
        }
    }
    let sp = e.sp().wrapping_add(8 * n);
    e.set_sp(sp);
    Ok(())
}

/// PUSHF/PUSHFD. In V86 mode with IOPL < 3 it faults (no VME).
pub fn exec_pushf<W: Word>(e: &mut Exec<'_>, _i: &Instruction) -> Fault {
    if e.s.v86() && e.s.iopl() < 3 {
        return Err(Exception::GP0);
    }
    let f = e.s.eflags() & !(VM | RF);
    e.push::<W>(W::from_u64(f))
}

/// POPF/POPFD with the privilege rules for IF and IOPL.
pub fn exec_popf<W: Word>(e: &mut Exec<'_>, _i: &Instruction) -> Fault {
    if e.s.v86() && e.s.iopl() < 3 {
        return Err(Exception::GP0);
    }
    let v = e.peek::<W>(0)?.to_u64();
    let mut mask = ARITH_FLAGS | TF | DF | NT;
    if W::SIZE == 4 {
        mask |= AC | ID;
    }
    let cpl = e.s.cpl;
    if !e.s.protected() || cpl == 0 && !e.s.v86() {
        mask |= IOPL | IF;
    } else if cpl <= e.s.iopl() || e.s.v86() {
        mask |= IF;
    }
    e.s.materialize_flags();
    e.s.flags = (e.s.flags & !mask) | (v & mask);
    e.s.flags &= !RF;
    let sp = e.sp().wrapping_add(W::SIZE as u64);
    e.set_sp(sp);
    Ok(())
}

/// ENTER imm16, imm8.
pub fn exec_enter<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let size = i.immediate(0) & 0xffff;
    let level = i.immediate(1) & 0x1f;
    let n = W::SIZE as u64;
    let sm = e.sp_mask();
    let old_sp = e.s.regs[RSP];
    let old_bp = e.s.regs[RBP];
    let bp_mask = sm;
    let r = (|| -> Fault {
        e.push::<W>(W::from_u64(e.s.regs[RBP]))?;
        let frame = e.sp();
        if level > 0 {
            let mut bp = e.s.regs[RBP] & bp_mask;
            for _ in 1..level {
                bp = bp.wrapping_sub(n) & bp_mask;
                let v = e.read::<W>(crate::state::SS, bp)?;
                e.push::<W>(v)?;
            }
            e.push::<W>(W::from_u64(frame))?;
        }
        let new_sp = e.sp().wrapping_sub(size) & sm;
        // The final stack pointer must be writable.
        if size > 0 {
            e.probe_write(crate::state::SS, new_sp, 1)?;
        }
        if W::SIZE == 2 {
            e.s.set_r16(RBP, frame as u16);
        } else {
            e.s.regs[RBP] = (e.s.regs[RBP] & !sm) | (frame & sm);
        }
        e.set_sp(new_sp);
        Ok(())
    })();
    if r.is_err() {
        e.s.regs[RSP] = old_sp;
        e.s.regs[RBP] = old_bp;
    }
    r
}

/// LEAVE: ESP = EBP; pop EBP.
pub fn exec_leave<W: Word>(e: &mut Exec<'_>, _i: &Instruction) -> Fault {
    let sm = e.sp_mask();
    let bp = e.s.regs[RBP] & sm;
    let v = e.read::<W>(crate::state::SS, bp)?.to_u64();
    e.set_sp(bp.wrapping_add(W::SIZE as u64));
    if W::SIZE == 2 {
        e.s.set_r16(RBP, v as u16);
    } else {
        e.s.regs[RBP] = v & 0xffff_ffff;
    }
    Ok(())
}
