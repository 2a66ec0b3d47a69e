//! Near control transfers: JMP, Jcc, CALL, RET, LOOP/LOOPE/LOOPNE, JCXZ/JECXZ.

use iced_x86::Instruction;

use crate::access::Word;
use crate::exception::{Exception, Fault};
use crate::state::{CS, RCX};
use crate::Exec;

use super::data::cc_of;

impl Exec<'_> {
    /// Jumps to an EIP within CS, checking the limit.
    #[inline(always)]
    pub fn near_jump(&mut self, target: u64) -> Fault {
        if target > self.s.seg[CS].hi as u64 {
            return Err(Exception::GP0);
        }
        self.s.rip = target;
        Ok(())
    }
}

/// JMP rel.
pub fn exec_jmp_rel(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    e.near_jump(i.near_branch_target())
}

/// JMP r/m (near indirect) with operand size `W`.
pub fn exec_jmp_ind<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let t = e.rd::<W>(i, 0)?.to_u64();
    e.near_jump(t)
}

/// Jcc rel.
pub fn exec_jcc(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    if e.s.condition(cc_of(i)) {
        e.near_jump(i.near_branch_target())?;
    }
    Ok(())
}

/// CALL rel with operand size `W`.
pub fn exec_call_rel<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let target = i.near_branch_target();
    if target > e.s.seg[CS].hi as u64 {
        return Err(Exception::GP0);
    }
    e.push::<W>(W::from_u64(e.s.rip))?;
    e.s.rip = target;
    Ok(())
}

/// CALL r/m (near indirect).
pub fn exec_call_ind<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let target = e.rd::<W>(i, 0)?.to_u64();
    if target > e.s.seg[CS].hi as u64 {
        return Err(Exception::GP0);
    }
    e.push::<W>(W::from_u64(e.s.rip))?;
    e.s.rip = target;
    Ok(())
}

/// RET and RET imm16 (near).
pub fn exec_ret<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let target = e.peek::<W>(0)?.to_u64();
    if target > e.s.seg[CS].hi as u64 {
        return Err(Exception::GP0);
    }
    let imm = if i.op_count() > 0 { i.immediate(0) } else { 0 };
    let sp = e.sp().wrapping_add(W::SIZE as u64).wrapping_add(imm);
    e.set_sp(sp);
    e.s.rip = target;
    Ok(())
}

/// LOOP, LOOPE, LOOPNE with a counter of `C` (CX or ECX).
pub fn exec_loop<C: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let m = crate::flags::size_mask(C::SIZE);
    let c = (e.s.regs[RCX] & m).wrapping_sub(1) & m;
    let take = c != 0
        && match i.mnemonic() {
            iced_x86::Mnemonic::Loope => e.s.zf(),
            iced_x86::Mnemonic::Loopne => !e.s.zf(),
            _ => true,
        };
    if take {
        e.near_jump(i.near_branch_target())?;
    }
    e.s.regs[RCX] = (e.s.regs[RCX] & !m) | c;
    Ok(())
}

/// JCXZ, JECXZ with a counter of `C`.
pub fn exec_jcxz<C: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    if e.s.regs[RCX] & crate::flags::size_mask(C::SIZE) == 0 {
        e.near_jump(i.near_branch_target())?;
    }
    Ok(())
}
