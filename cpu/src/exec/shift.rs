//! Shifts and rotates: SHL/SAL, SHR, SAR, ROL, ROR, RCL, RCR, SHLD, SHRD.
//! Flags follow the Intel SDM; where it leaves a flag undefined (OF for counts above 1,
//! AF, CF for counts beyond the width) ox86 gives what a recent Intel core gives where
//! that is cheap, and the differential tests exclude those flags.

use iced_x86::{Instruction, Mnemonic};

use crate::access::Word;
use crate::exception::Fault;
use crate::flags::{sign_bit, size_mask};
use crate::state::{CF, OF};
use crate::Exec;

/// The shift count operand (CL or an immediate; 1 for the D0/D1 forms), masked to 5 bits.
#[inline(always)]
fn count(e: &mut Exec<'_>, i: &Instruction) -> Fault<u32> {
    let c = if i.op_count() < 2 {
        1
    } else {
        e.rd::<u8>(i, 1)? as u32
    };
    Ok(c & 0x1f)
}

/// SHL, SHR, SAR, ROL, ROR, RCL, RCR.
pub fn exec_shift<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let c = count(e, i)?;
    if c == 0 {
        // Operand still accessed (faults happen) but nothing changes.
        let _ = e.rd::<W>(i, 0)?;
        return Ok(());
    }
    let bits = W::SIZE * 8;
    let m = size_mask(W::SIZE);
    let sb = sign_bit(W::SIZE);
    let mn = i.mnemonic();
    let cf_in = e.s.cf();
    let (res, flags) = e.rmw::<W, (u64, ShiftFlags)>(i, |_, d| {
        let d = d.to_u64();
        let (r, f) = match mn {
            Mnemonic::Shl | Mnemonic::Sal => {
                let r = if c >= 64 { 0 } else { (d << c) & m };
                let cf = c <= bits && (d >> (bits - c)) & 1 != 0;
                (
                    r,
                    ShiftFlags::Szp {
                        cf,
                        of: ((r & sb) != 0) != cf,
                    },
                )
            }
            Mnemonic::Shr => {
                let r = d >> c;
                let cf = c <= bits && (d >> (c - 1)) & 1 != 0;
                (
                    r,
                    ShiftFlags::Szp {
                        cf,
                        of: d & sb != 0,
                    },
                )
            }
            Mnemonic::Sar => {
                let sx = ((d << (64 - bits)) as i64) >> (64 - bits);
                let r = (sx >> c.min(63)) as u64 & m;
                let cf = (sx >> (c - 1).min(63)) & 1 != 0;
                (r, ShiftFlags::Szp { cf, of: false })
            }
            Mnemonic::Rol => {
                let k = c % bits;
                let r = if k == 0 {
                    d
                } else {
                    ((d << k) | (d >> (bits - k))) & m
                };
                let cf = r & 1 != 0;
                (
                    r,
                    ShiftFlags::CfOf {
                        cf,
                        of: ((r & sb) != 0) != cf,
                    },
                )
            }
            Mnemonic::Ror => {
                let k = c % bits;
                let r = if k == 0 {
                    d
                } else {
                    ((d >> k) | (d << (bits - k))) & m
                };
                let msb = r & sb != 0;
                let msb1 = r & (sb >> 1) != 0;
                (
                    r,
                    ShiftFlags::CfOf {
                        cf: msb,
                        of: msb != msb1,
                    },
                )
            }
            Mnemonic::Rcl => {
                let k = c % (bits + 1);
                let mut r = d;
                let mut cf = cf_in;
                for _ in 0..k {
                    let out = r & sb != 0;
                    r = ((r << 1) | cf as u64) & m;
                    cf = out;
                }
                if k == 0 {
                    (r, ShiftFlags::None)
                } else {
                    (
                        r,
                        ShiftFlags::CfOf {
                            cf,
                            of: ((r & sb) != 0) != cf,
                        },
                    )
                }
            }
            _ => {
                // RCR
                let k = c % (bits + 1);
                let mut r = d;
                let mut cf = cf_in;
                let of = ((d & sb) != 0) != cf_in;
                for _ in 0..k {
                    let out = r & 1 != 0;
                    r = (r >> 1) | if cf { sb } else { 0 };
                    cf = out;
                }
                if k == 0 {
                    (r, ShiftFlags::None)
                } else {
                    (r, ShiftFlags::CfOf { cf, of })
                }
            }
        };
        (Some(W::from_u64(r)), (r, f))
    })?;
    apply(e, W::SIZE, res, flags);
    Ok(())
}

#[derive(Clone, Copy)]
enum ShiftFlags {
    None,
    Szp { cf: bool, of: bool },
    CfOf { cf: bool, of: bool },
}

fn apply(e: &mut Exec<'_>, size: u32, res: u64, f: ShiftFlags) {
    match f {
        ShiftFlags::None => {}
        ShiftFlags::Szp { cf, of } => e.s.set_szp_flags(size, res, cf, of, false),
        ShiftFlags::CfOf { cf, of } => {
            e.s.set_arith_flags(CF | OF, (cf as u64 * CF) | (of as u64 * OF))
        }
    }
}

/// SHLD and SHRD.
pub fn exec_shxd<W: Word>(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let src = e.rd::<W>(i, 1)?.to_u64();
    let c = e.rd::<u8>(i, 2)? as u32 & 0x1f;
    if c == 0 {
        let _ = e.rd::<W>(i, 0)?;
        return Ok(());
    }
    let bits = W::SIZE * 8;
    let m = size_mask(W::SIZE);
    let sb = sign_bit(W::SIZE);
    let left = i.mnemonic() == Mnemonic::Shld;
    let (r, cf, of) = e.rmw::<W, (u64, bool, bool)>(i, |_, d| {
        let d = d.to_u64();
        // Work in a 3*bits-wide window so that counts above the width (16-bit forms)
        // behave as on Intel cores: the source bits repeat.
        // A 3*bits-wide window, so that counts above the width (16-bit forms) bring
        // in the source bits again, as on Intel cores.
        let (r, cf) = if left {
            let wide: u128 = ((d as u128) << (2 * bits)) | ((src as u128) << bits) | d as u128;
            let r = ((wide << c) >> (2 * bits)) as u64 & m;
            (r, (wide >> (3 * bits - c)) & 1 != 0)
        } else {
            let wide: u128 = (d as u128) | ((src as u128) << bits) | ((d as u128) << (2 * bits));
            ((wide >> c) as u64 & m, (wide >> (c - 1)) & 1 != 0)
        };
        let of = ((r ^ d) & sb) != 0;
        (Some(W::from_u64(r)), (r, cf, of))
    })?;
    e.s.set_szp_flags(W::SIZE, r, cf, of, false);
    Ok(())
}
