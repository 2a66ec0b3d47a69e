//! The integer ALU group: ADD, OR, ADC, SBB, AND, SUB, XOR, CMP, TEST, INC, DEC,
//! NEG, NOT, and the flag-only instructions (CLC, STC, CMC, CLD, STD, LAHF, SAHF).

use iced_x86::Instruction;

use crate::access::Word;
use crate::exception::Fault;
use crate::flags::Lazy;
use crate::state::{AF, CF, DF, PF, SF, ZF};
use crate::Exec;

use super::operand::{reg_read, reg_write};

/// ALU operation numbers (the /r field of opcodes 80-83).
pub mod op {
    /// ADD
    pub const ADD: u8 = 0;
    /// OR
    pub const OR: u8 = 1;
    /// ADC
    pub const ADC: u8 = 2;
    /// SBB
    pub const SBB: u8 = 3;
    /// AND
    pub const AND: u8 = 4;
    /// SUB
    pub const SUB: u8 = 5;
    /// XOR
    pub const XOR: u8 = 6;
    /// CMP
    pub const CMP: u8 = 7;
    /// TEST
    pub const TEST: u8 = 8;
}

/// The raw result of a binary ALU operation (before masking) and the lazy-flags
/// operation that describes it.
#[inline(always)]
pub fn alu_result<const OP: u8>(d: u64, s: u64, carry: u64) -> (Lazy, u64) {
    match OP {
        op::ADD => (Lazy::Add, d.wrapping_add(s)),
        op::ADC => (Lazy::Adc, d.wrapping_add(s).wrapping_add(carry)),
        op::SUB | op::CMP => (Lazy::Sub, d.wrapping_sub(s)),
        op::SBB => (Lazy::Sbb, d.wrapping_sub(s).wrapping_sub(carry)),
        op::AND | op::TEST => (Lazy::Logic, d & s),
        op::OR => (Lazy::Logic, d | s),
        _ => (Lazy::Logic, d ^ s),
    }
}

/// Two-operand ALU instructions: `op0 = op0 OP op1` (CMP and TEST write nothing).
/// Flags are recorded only once the write has succeeded.
pub fn exec_alu<W: Word, const OP: u8>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let src = e.rd::<W>(i, 1)?.to_u64();
    let carry = if OP == op::ADC || OP == op::SBB {
        e.s.cf() as u64
    } else {
        0
    };
    let writes = OP != op::CMP && OP != op::TEST;
    let (d, lazy, raw) = e.rmw::<W, _>(i, |_, d| {
        let d = d.to_u64();
        let (lazy, raw) = alu_result::<OP>(d, src, carry);
        (writes.then(|| W::from_u64(raw)), (d, lazy, raw))
    })?;
    e.s.set_lazy(lazy, W::SIZE, d, src, raw);
    Ok(())
}

/// The register-destination form of [`exec_alu`] (register or immediate source):
/// no operand-kind dispatch for the destination, the hottest ALU path.
pub fn exec_alu_reg<W: Word, const OP: u8>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let src = e.rd::<W>(i, 1)?.to_u64();
    let r = i.op0_register();
    let d = reg_read(e.s, r);
    let carry = if OP == op::ADC || OP == op::SBB {
        e.s.cf() as u64
    } else {
        0
    };
    let (lazy, raw) = alu_result::<OP>(d, src, carry);
    if OP != op::CMP && OP != op::TEST {
        reg_write(e.s, r, raw);
    }
    e.s.set_lazy(lazy, W::SIZE, d, src, raw);
    Ok(())
}

/// INC and DEC.
pub fn exec_incdec<W: Word, const DEC: bool>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let (d, r) = e.rmw::<W, (u64, u64)>(i, |_, d| {
        let d = d.to_u64();
        let r = if DEC {
            d.wrapping_sub(1)
        } else {
            d.wrapping_add(1)
        };
        (Some(W::from_u64(r)), (d, r))
    })?;
    e.s.set_lazy_incdec(if DEC { Lazy::Dec } else { Lazy::Inc }, W::SIZE, d, r);
    Ok(())
}

/// NEG.
pub fn exec_neg<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let (d, r) = e.rmw::<W, (u64, u64)>(i, |_, d| {
        let d = d.to_u64();
        let r = 0u64.wrapping_sub(d);
        (Some(W::from_u64(r)), (d, r))
    })?;
    e.s.set_lazy(Lazy::Neg, W::SIZE, 0, d, r);
    Ok(())
}

/// NOT (no flags).
pub fn exec_not<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    e.rmw::<W, ()>(i, |_, d| (Some(W::from_u64(!d.to_u64())), ()))
}

/// CLC, STC, CMC, CLD, STD.
pub fn exec_flag_op(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    use iced_x86::Mnemonic as M;
    match i.mnemonic() {
        M::Clc => e.s.set_arith_flags(CF, 0),
        M::Stc => e.s.set_arith_flags(CF, CF),
        M::Cmc => {
            let c = e.s.cf();
            e.s.set_arith_flags(CF, if c { 0 } else { CF });
        }
        M::Cld => e.s.flags &= !DF,
        _ => e.s.flags |= DF,
    }
    Ok(())
}

/// LAHF: AH = SF:ZF:0:AF:0:PF:1:CF.
pub fn exec_lahf(e: &mut Exec<'_>, _i: &Instruction) -> Fault {
    let f = (e.s.eflags() & (SF | ZF | AF | PF | CF)) | 2;
    e.s.regs[0] = (e.s.regs[0] & !0xff00) | (f << 8);
    Ok(())
}

/// SAHF: SF, ZF, AF, PF, CF from AH.
pub fn exec_sahf(e: &mut Exec<'_>, _i: &Instruction) -> Fault {
    let ah = (e.s.regs[0] >> 8) & 0xff;
    e.s.set_arith_flags(SF | ZF | AF | PF | CF, ah);
    Ok(())
}
