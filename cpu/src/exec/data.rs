//! Data movement: MOV, MOVZX, MOVSX, LEA, XCHG, XADD, CMPXCHG, CMPXCHG8B, BSWAP,
//! CBW/CWDE/CWD/CDQ, SETcc, CMOVcc, XLAT.

use iced_x86::{Instruction, OpKind};

use crate::access::Word;
use crate::exception::Fault;
use crate::flags::Lazy;
use crate::state::{CF, RAX, RBX, RCX, RDX, ZF};
use crate::Exec;

use super::operand::{reg_read, reg_write};

/// MOV between registers, memory and immediates.
pub fn exec_mov<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let v = e.rd::<W>(i, 1)?;
    e.wr::<W>(i, 0, v)
}

/// MOV r32, r32: the hottest form, without operand-kind dispatch.
pub fn exec_mov_rr(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let v = reg_read(e.s, i.op1_register());
    reg_write(e.s, i.op0_register(), v);
    Ok(())
}

/// MOVZX: zero-extends a `S`-sized source into the destination register.
pub fn exec_movzx<S: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let v = e.rd::<S>(i, 1)?.to_u64();
    reg_write(e.s, i.op0_register(), v);
    Ok(())
}

/// MOVSX: sign-extends a `S`-sized source into the destination register.
pub fn exec_movsx<S: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let v = e.rd::<S>(i, 1)?.to_u64();
    let sh = 64 - S::SIZE * 8;
    reg_write(e.s, i.op0_register(), (((v << sh) as i64) >> sh) as u64);
    Ok(())
}

/// LEA: the effective address, truncated to the operand size.
pub fn exec_lea(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let a = e.ea(i);
    reg_write(e.s, i.op0_register(), a);
    Ok(())
}

/// XCHG.
pub fn exec_xchg<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    // Operand 1 is always a register when operand 0 is memory (iced puts memory first).
    if i.op_kind(1) == OpKind::Register {
        let r1 = i.op_register(1);
        let b = W::from_u64(reg_read(e.s, r1));
        let a = e.rmw::<W, W>(i, |_, a| (Some(b), a))?;
        reg_write(e.s, r1, a.to_u64());
    } else {
        let r0 = i.op_register(0);
        let a = W::from_u64(reg_read(e.s, r0));
        let (seg, off) = e.mem_operand(i);
        let b = e.read::<W>(seg, off)?;
        e.write::<W>(seg, off, a)?;
        reg_write(e.s, r0, b.to_u64());
    }
    Ok(())
}

/// XADD: temp = dst + src; src = dst; dst = temp (the destination is written last,
/// so `xadd eax, eax` leaves the sum).
pub fn exec_xadd<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let r1 = i.op_register(1);
    let src = reg_read(e.s, r1) & crate::flags::size_mask(W::SIZE);
    let (d, sum) = if i.op_kind(0) == OpKind::Register {
        let r0 = i.op_register(0);
        let d = reg_read(e.s, r0);
        let sum = d.wrapping_add(src);
        reg_write(e.s, r1, d);
        reg_write(e.s, r0, sum);
        (d, sum)
    } else {
        let (d, sum) = e.rmw::<W, _>(i, |_, d| {
            let d = d.to_u64();
            let sum = d.wrapping_add(src);
            (Some(W::from_u64(sum)), (d, sum))
        })?;
        reg_write(e.s, r1, d);
        (d, sum)
    };
    e.s.set_lazy(Lazy::Add, W::SIZE, d, src, sum);
    Ok(())
}

/// CMPXCHG: compares the accumulator with the destination; equal: dst = src, else
/// accumulator = dst. The destination is written in both cases, as on hardware.
pub fn exec_cmpxchg<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let m = crate::flags::size_mask(W::SIZE);
    let acc = e.s.regs[RAX] & m;
    let src = reg_read(e.s, i.op_register(1)) & m;
    let d = e.rmw::<W, _>(i, |_, d| {
        let d = d.to_u64();
        let new = if d == acc { src } else { d };
        (Some(W::from_u64(new)), d)
    })?;
    e.s.set_lazy(Lazy::Sub, W::SIZE, acc, d, acc.wrapping_sub(d));
    if d != acc {
        let r = match W::SIZE {
            1 => iced_x86::Register::AL,
            2 => iced_x86::Register::AX,
            _ => iced_x86::Register::EAX,
        };
        reg_write(e.s, r, d);
    }
    Ok(())
}

/// CMPXCHG8B m64.
pub fn exec_cmpxchg8b(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    if i.op_kind(0) != OpKind::Memory {
        return Err(crate::Exception::UD);
    }
    let (seg, off) = e.mem_operand(i);
    let lin = e.seg_linear(seg, off, 8, true)?;
    let user = e.user();
    let v: u64 = e.read_lin(lin, user)?;
    let edx_eax = (e.s.regs[RDX] & 0xffff_ffff) << 32 | (e.s.regs[RAX] & 0xffff_ffff);
    if v == edx_eax {
        let ecx_ebx = (e.s.regs[RCX] & 0xffff_ffff) << 32 | (e.s.regs[RBX] & 0xffff_ffff);
        e.write_lin(lin, ecx_ebx, user)?;
        e.s.set_arith_flags(ZF, ZF);
    } else {
        e.write_lin(lin, v, user)?;
        e.s.regs[RAX] = v & 0xffff_ffff;
        e.s.regs[RDX] = v >> 32;
        e.s.set_arith_flags(ZF, 0);
    }
    Ok(())
}

/// BSWAP r32 (BSWAP r16 is undefined; hardware gives 0 in the low word).
pub fn exec_bswap(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let r = i.op0_register();
    let v = reg_read(e.s, r);
    let out = if r.size() == 2 {
        0
    } else {
        (v as u32).swap_bytes() as u64
    };
    reg_write(e.s, r, out);
    Ok(())
}

/// CBW, CWDE (sign-extend the accumulator's lower half into itself).
pub fn exec_cbw<W: Word>(e: &mut Exec<'_>, _i: &Instruction) -> Fault {
    let half = W::SIZE * 4;
    let v = e.s.regs[RAX];
    let ext = ((v << (64 - half)) as i64 >> (64 - half)) as u64;
    match W::SIZE {
        2 => e.s.set_r16(RAX, ext as u16),
        _ => e.s.set_r32(RAX, ext as u32),
    }
    Ok(())
}

/// CWD, CDQ (sign of the accumulator into DX/EDX).
pub fn exec_cwd<W: Word>(e: &mut Exec<'_>, _i: &Instruction) -> Fault {
    let bits = W::SIZE * 8;
    let neg = (e.s.regs[RAX] >> (bits - 1)) & 1 != 0;
    let v = if neg { u64::MAX } else { 0 };
    match W::SIZE {
        2 => e.s.set_r16(RDX, v as u16),
        _ => e.s.set_r32(RDX, v as u32),
    }
    Ok(())
}

/// SETcc.
pub fn exec_setcc(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let c = e.s.condition(cc_of(i));
    e.wr::<u8>(i, 0, c as u8)
}

/// CMOVcc: the source is read even when the condition is false (faults happen).
pub fn exec_cmovcc<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let v = e.rd::<W>(i, 1)?;
    if e.s.condition(cc_of(i)) {
        reg_write(e.s, i.op0_register(), v.to_u64());
    }
    Ok(())
}

/// The condition-code nibble of a Jcc/SETcc/CMOVcc/LOOPcc instruction.
#[inline(always)]
pub fn cc_of(i: &Instruction) -> u8 {
    use iced_x86::ConditionCode as C;
    match i.condition_code() {
        C::o => 0,
        C::no => 1,
        C::b => 2,
        C::ae => 3,
        C::e => 4,
        C::ne => 5,
        C::be => 6,
        C::a => 7,
        C::s => 8,
        C::ns => 9,
        C::p => 10,
        C::np => 11,
        C::l => 12,
        C::ge => 13,
        C::le => 14,
        C::g => 15,
        C::None => 16,
    }
}

/// XLAT: AL = [seg:(E)BX + AL].
pub fn exec_xlat(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let (seg, off) = e.mem_operand(i);
    let v = e.read::<u8>(seg, off)?;
    e.s.regs[RAX] = (e.s.regs[RAX] & !0xff) | v as u64;
    Ok(())
}

/// SALC (undocumented): AL = CF ? 0xff : 0.
pub fn exec_salc(e: &mut Exec<'_>, _i: &Instruction) -> Fault {
    let v = if e.s.eflags() & CF != 0 { 0xff } else { 0 };
    e.s.regs[RAX] = (e.s.regs[RAX] & !0xff) | v;
    Ok(())
}

/// NOP and hint instructions that do nothing here.
pub fn exec_nop(_e: &mut Exec<'_>, _i: &Instruction) -> Fault {
    Ok(())
}
