//! Decimal arithmetic: DAA, DAS, AAA, AAS, AAM, AAD.

use iced_x86::Instruction;

use crate::exception::{Exception, Fault};
use crate::state::{AF, CF, RAX};
use crate::Exec;

fn al(e: &Exec<'_>) -> u8 {
    e.s.regs[RAX] as u8
}

fn set_al(e: &mut Exec<'_>, v: u8) {
    e.s.regs[RAX] = (e.s.regs[RAX] & !0xff) | v as u64;
}

/// DAA: decimal adjust after addition (Intel SDM pseudocode).
pub fn exec_daa(e: &mut Exec<'_>, _i: &Instruction) -> Fault {
    let old_al = al(e);
    let old_cf = e.s.cf();
    let mut a = old_al;
    let mut cf = false;
    let mut af = false;
    if old_al & 0x0f > 9 || e.s.af() {
        a = a.wrapping_add(6);
        cf = old_cf || old_al > 0xf9;
        af = true;
    }
    if old_al > 0x99 || old_cf {
        a = a.wrapping_add(0x60);
        cf = true;
    }
    set_al(e, a);
    // OF is undefined; give what Intel cores give: the signed overflow of the adds.
    let of = (old_al & 0x80 == 0) && (a & 0x80 != 0);
    e.s.set_szp_flags(1, a as u64, cf, of, af);
    Ok(())
}

/// DAS: decimal adjust after subtraction.
pub fn exec_das(e: &mut Exec<'_>, _i: &Instruction) -> Fault {
    let old_al = al(e);
    let old_cf = e.s.cf();
    let mut a = old_al;
    let mut cf = false;
    let mut af = false;
    if old_al & 0x0f > 9 || e.s.af() {
        a = a.wrapping_sub(6);
        cf = old_cf || old_al < 6;
        af = true;
    }
    if old_al > 0x99 || old_cf {
        a = a.wrapping_sub(0x60);
        cf = true;
    }
    set_al(e, a);
    let of = (old_al & 0x80 != 0) && (a & 0x80 == 0);
    e.s.set_szp_flags(1, a as u64, cf, of, af);
    Ok(())
}

/// AAA and AAS.
pub fn exec_aaa_aas(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let sub = i.mnemonic() == iced_x86::Mnemonic::Aas;
    let ax = e.s.regs[RAX] as u16;
    let adjust = (ax & 0x0f) > 9 || e.s.af();
    let mut new_ax = ax;
    if adjust {
        if sub {
            // SDM: AX = AX - 6 (AL's borrow reaches AH), then AH = AH - 1.
            new_ax = new_ax.wrapping_sub(6).wrapping_sub(0x100);
        } else {
            new_ax = new_ax.wrapping_add(0x106);
        }
    }
    new_ax &= 0xff0f;
    e.s.set_r16(RAX, new_ax);
    e.s.materialize_flags();
    // CF and AF are defined; OF, SF, ZF, PF are undefined (excluded by the tests).
    let f = if adjust { CF | AF } else { 0 };
    e.s.set_szp_flags(1, new_ax as u64 & 0xff, f & CF != 0, false, f & AF != 0);
    Ok(())
}

/// AAM imm8: AH = AL / imm, AL = AL % imm; #DE when imm is 0.
pub fn exec_aam(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let base = i.immediate8();
    if base == 0 {
        return Err(Exception::DE);
    }
    let a = al(e);
    let (q, r) = (a / base, a % base);
    e.s.set_r16(RAX, ((q as u16) << 8) | r as u16);
    e.s.set_szp_flags(1, r as u64, false, false, false);
    Ok(())
}

/// AAD imm8: AL = AL + AH * imm, AH = 0.
pub fn exec_aad(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let base = i.immediate8();
    let ax = e.s.regs[RAX] as u16;
    let (ah, a) = ((ax >> 8) as u8, ax as u8);
    let prod = ah.wrapping_mul(base);
    let r = a.wrapping_add(prod);
    e.s.set_r16(RAX, r as u16);
    // Flags as for the 8-bit ADD of AL and AH*imm (CF, OF, AF undefined but Intel-like).
    let cf = (a as u16 + prod as u16) > 0xff;
    let of = ((a ^ r) & (prod ^ r) & 0x80) != 0;
    let af = ((a ^ prod ^ r) & 0x10) != 0;
    e.s.set_szp_flags(1, r as u64, cf, of, af);
    Ok(())
}
