//! Bit instructions: BT, BTS, BTR, BTC, BSF, BSR.

use iced_x86::{Instruction, Mnemonic, OpKind};

use crate::access::Word;
use crate::exception::Fault;
use crate::state::{CF, ZF};
use crate::Exec;

use super::operand::reg_write;

/// BT, BTS, BTR, BTC. With a register bit offset and a memory operand the offset is
/// signed and addresses memory beyond the operand.
pub fn exec_bt<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let bits = W::SIZE as i64 * 8;
    let (off, imm) = match i.op_kind(1) {
        OpKind::Register => (e.rd::<W>(i, 1)?.to_u64(), false),
        _ => (i.immediate(1), true),
    };
    let mn = i.mnemonic();
    let apply = |v: u64, bit: u64| -> (Option<u64>, bool) {
        let mask = 1u64 << bit;
        let old = v & mask != 0;
        let new = match mn {
            Mnemonic::Bts => Some(v | mask),
            Mnemonic::Btr => Some(v & !mask),
            Mnemonic::Btc => Some(v ^ mask),
            _ => None,
        };
        (new, old)
    };
    let cf = if i.op_kind(0) == OpKind::Register || imm {
        let bit = off % bits as u64;
        e.rmw_or_read::<W>(i, mn == Mnemonic::Bt, |v| apply(v, bit))?
    } else {
        // Memory operand with register offset: signed displacement in operand units.
        let soff = {
            let sh = 64 - bits as u32;
            ((off << sh) as i64) >> sh
        };
        let (seg, base) = e.mem_operand(i);
        let unit = soff.div_euclid(bits);
        let bit = soff.rem_euclid(bits) as u64;
        let addr = (base as i64).wrapping_add(unit * W::SIZE as i64) as u64;
        let addr = addr & super::operand::addr_mask(i);
        let v = e.read::<W>(seg, addr)?.to_u64();
        let (new, old) = apply(v, bit);
        if let Some(n) = new {
            e.write::<W>(seg, addr, W::from_u64(n))?;
        }
        old
    };
    e.s.set_arith_flags(CF, if cf { CF } else { 0 });
    Ok(())
}

impl Exec<'_> {
    /// Reads operand 0, and writes it back when `f` returns a new value (skipping the
    /// write check entirely for read-only uses such as BT).
    fn rmw_or_read<W: Word>(
        &mut self,
        i: &Instruction,
        read_only: bool,
        f: impl FnOnce(u64) -> (Option<u64>, bool),
    ) -> Fault<bool> {
        if read_only {
            let v = self.rd::<W>(i, 0)?.to_u64();
            return Ok(f(v).1);
        }
        self.rmw::<W, bool>(i, |_, v| {
            let (n, old) = f(v.to_u64());
            (n.map(W::from_u64), old)
        })
    }
}

/// BSF and BSR: ZF=1 and the destination unchanged when the source is 0.
pub fn exec_bsf_bsr<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let v = e.rd::<W>(i, 1)?.to_u64();
    if v == 0 {
        e.s.set_arith_flags(ZF, ZF);
        return Ok(());
    }
    let r = if matches!(i.mnemonic(), Mnemonic::Bsf | Mnemonic::Tzcnt) {
        v.trailing_zeros() as u64
    } else {
        63 - v.leading_zeros() as u64
    };
    reg_write(e.s, i.op0_register(), r);
    // CF, OF, SF, AF, PF are undefined; ZF = 0.
    e.s.set_szp_flags(W::SIZE, 1, false, false, false);
    Ok(())
}
