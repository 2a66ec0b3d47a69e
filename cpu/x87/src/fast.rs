//! Fast paths for the commonest x87 operations, for compiled code: loads, stores and
//! the four basic operations on ordinary operands. Each does exactly what
//! [`X87State::execute_op`] does for the same instruction, but skips the operation
//! dispatch and the special-case screening; when its conditions do not hold it
//! changes nothing and returns `None` or `false`, and the caller runs `execute_op`.
//! The `x87_fast` tests check them against `execute` on random operands.

use crate::arith::{add_finite, div_finite, mul_finite, BinOp, Operand};
use crate::convert::{f80_to_f32, f80_to_f64, f80_to_int, mem_to_operand};
use crate::float::{Class, Unpacked, F80};
use crate::ops::{Mem, Op, Src};
use crate::state::X87State;
use crate::status::{Rounding, PE};

/// A memory operand of format `fmt` from its little-endian bits, widened; `None` for
/// the 80-bit formats.
#[inline]
pub fn mem_operand(fmt: Mem, bits: u64) -> Option<Operand> {
    let mut b = [0u8; 10];
    b[..8].copy_from_slice(&bits.to_le_bytes());
    (fmt.size() <= 8).then(|| mem_to_operand(fmt, b))
}

/// The unpacked value of a normal number.
#[inline]
fn normal(v: F80) -> Option<Unpacked> {
    if v.class() == Class::Normal {
        v.unpack()
    } else {
        None
    }
}

/// What [`X87State::execute_fast`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fast {
    /// Nothing: the caller runs `execute_op`.
    NotDone,
    /// The instruction completed.
    Done,
    /// The instruction completed; the caller stores these bits (the low bytes, at the
    /// operand's size) at the memory operand.
    Store(u64),
}

impl X87State {
    /// Runs operation `op` (of an instruction whose ST(i) operand is `sti`, and whose
    /// memory operand, if it loads one, has the little-endian `bits`) when a fast path
    /// applies, recording the instruction (`fop`, `ip`) and its operand (`data`).
    #[inline]
    pub fn execute_fast(
        &mut self,
        op: Op,
        sti: usize,
        bits: u64,
        fop: u16,
        ip: (u32, u16),
        data: Option<(u32, u16)>,
    ) -> Fast {
        let r = match op {
            Op::Arith {
                op,
                rev,
                src,
                dst_sti,
                pop,
            } => {
                let mem = match src {
                    Src::Mem(f) => match mem_operand(f, bits) {
                        Some(m) => Some(m),
                        None => return Fast::NotDone,
                    },
                    Src::Sti => None,
                    _ => return Fast::NotDone,
                };
                let (dst, other) = if dst_sti { (sti, 0) } else { (0, sti) };
                if !self.fast_arith(op, rev, dst, other, mem, pop) {
                    return Fast::NotDone;
                }
                Fast::Done
            }
            Op::LoadMem(f) => match mem_operand(f, bits) {
                Some(v) if self.fast_load(v) => Fast::Done,
                _ => return Fast::NotDone,
            },
            Op::StoreMem { fmt, pop, trunc } => match self.fast_store(fmt, pop, trunc) {
                Some(Some(b)) => Fast::Store(b),
                Some(None) => Fast::Done,
                None => return Fast::NotDone,
            },
            _ => return Fast::NotDone,
        };
        self.record(fop, ip, data);
        r
    }

    /// FADD, FSUB(R), FMUL, FDIV(R) and their popping forms: ST(dst) op ST(other), or
    /// ST(dst) op `mem` (reversed when `rev`). Done only when the registers are full
    /// and both operands are normal numbers (not from a denormal in memory), where no
    /// invalid, denormal or zero-divide exception can arise.
    #[inline]
    fn fast_arith(
        &mut self,
        op: BinOp,
        rev: bool,
        dst: usize,
        other: usize,
        mem: Option<Operand>,
        pop: bool,
    ) -> bool {
        if self.is_empty(dst) {
            return false;
        }
        let y = match mem {
            Some(m) if m.denormal => return false,
            Some(m) => m.v,
            None if self.is_empty(other) => return false,
            None => self.st(other),
        };
        let x = self.st(dst);
        let (a, b) = if rev { (y, x) } else { (x, y) };
        let (Some(a), Some(b)) = (normal(a), normal(b)) else {
            return false;
        };
        let ctl = self.control();
        let r = match op {
            BinOp::Add => add_finite(a, b, &ctl),
            BinOp::Sub => add_finite(a, Unpacked { sign: !b.sign, ..b }, &ctl),
            BinOp::Mul => mul_finite(a, b, &ctl),
            BinOp::Div => div_finite(a, b, &ctl),
        };
        self.set_c1(r.up && r.exc & PE != 0);
        self.raise(r.exc);
        self.set_st(dst, r.value);
        if pop {
            self.pop();
        }
        true
    }

    /// FLD/FILD of a memory operand: pushes it when the stack has room and it is
    /// neither a signalling NaN nor a denormal.
    #[inline]
    fn fast_load(&mut self, v: Operand) -> bool {
        if !self.is_empty(7) || v.denormal || v.v.class() == Class::SNaN {
            return false;
        }
        self.set_c1(false);
        self.raise(0);
        self.push(v.v);
        true
    }

    /// FST/FSTP/FIST/FISTP/FISTTP to memory from a full ST(0), in the 16-, 32- and
    /// 64-bit formats: `Some(bits)` to store (at the format's size), `Some(None)` when
    /// an unmasked exception blocks the store, `None` when not done here.
    #[inline]
    fn fast_store(&mut self, fmt: Mem, pop: bool, trunc: bool) -> Option<Option<u64>> {
        if self.is_empty(0) {
            return None;
        }
        let v = self.st(0);
        let ctl = self.control();
        let (bits, exc, up, store) = match fmt {
            Mem::F32 => {
                let n = f80_to_f32(v, &ctl);
                (u64::from(n.bits), n.exc, n.up, n.store)
            }
            Mem::F64 => {
                let n = f80_to_f64(v, &ctl);
                (n.bits, n.exc, n.up, n.store)
            }
            Mem::I16 | Mem::I32 | Mem::I64 => {
                let width = match fmt {
                    Mem::I16 => 16,
                    Mem::I32 => 32,
                    _ => 64,
                };
                let rc = if trunc { Rounding::Zero } else { ctl.rc };
                let n = f80_to_int(v, width, rc, &ctl);
                (n.bits as u64, n.exc, n.up, n.store)
            }
            Mem::F80 | Mem::Bcd => return None,
        };
        self.set_c1(up && exc & PE != 0);
        self.raise(exc);
        if store && pop {
            self.pop();
        }
        Some(store.then_some(bits))
    }

    /// Records the last instruction (FOP, FIP, FCS) and, if it had a memory operand,
    /// the operand (FDP, FDS), as every non-control instruction does.
    #[inline]
    fn record(&mut self, fop: u16, ip: (u32, u16), data: Option<(u32, u16)>) {
        self.fop = fop;
        self.fip = u64::from(ip.0);
        self.fcs = ip.1;
        if let Some((dp, ds)) = data {
            self.fdp = u64::from(dp);
            self.fds = ds;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::{X87Context, X87Error};
    use crate::exec::{fop_of, sti_of};
    use crate::ops::classify;
    use iced_x86::{Decoder, DecoderOptions, Instruction};
    use proptest::prelude::*;

    /// The memory and CPU of `execute`, with one operand at offset 0.
    struct Ctx {
        mem: [u8; 8],
        written: Vec<u8>,
    }

    const IP: (u32, u16) = (0x1234, 0x08);
    const DP: (u32, u16) = (0x5678, 0x10);

    impl X87Context for Ctx {
        type Fault = ();
        fn read_mem(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), ()> {
            assert!(offset == 0 && buf.len() <= 8);
            buf.copy_from_slice(&self.mem[..buf.len()]);
            Ok(())
        }
        fn write_mem(&mut self, offset: u32, data: &[u8]) -> Result<(), ()> {
            assert_eq!(offset, 0);
            self.written = data.to_vec();
            Ok(())
        }
        fn eflags(&self) -> u32 {
            0
        }
        fn set_compare_flags(&mut self, _: bool, _: bool, _: bool) {}
        fn set_ax(&mut self, _: u16) {}
        fn real_mode(&self) -> bool {
            false
        }
        fn operand_size_16(&self) -> bool {
            false
        }
        fn instruction_pointer(&self) -> (u32, u16) {
            IP
        }
        fn data_pointer(&self) -> (u32, u16) {
            DP
        }
    }

    /// Encodings of the instructions with fast paths (memory operand [EAX]).
    fn encodings() -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        for reg in 0..8u8 {
            // FADD/FMUL/FSUB/FSUBR/FDIV/FDIVR (reg 2, 3 are compares) with m32fp,
            // m64fp, m32int, m16int, ST(0),ST(i), ST(i),ST(0) and the popping forms.
            if reg == 2 || reg == 3 {
                continue;
            }
            for op in [0xD8u8, 0xDC, 0xDA, 0xDE] {
                v.push(vec![op, reg << 3]);
            }
            for i in 0..8u8 {
                for op in [0xD8u8, 0xDC, 0xDE] {
                    v.push(vec![op, 0xC0 | reg << 3 | i]);
                }
            }
        }
        // Loads: FLD m32fp/m64fp, FILD m32int/m16int/m64int.
        for (op, reg) in [(0xD9u8, 0u8), (0xDD, 0), (0xDB, 0), (0xDF, 0), (0xDF, 5)] {
            v.push(vec![op, reg << 3]);
        }
        // Stores: FST(P) m32fp/m64fp, FIST(P) m16/m32, FISTP m64, FISTTP m16/m32/m64.
        for (op, reg) in [
            (0xD9u8, 2u8),
            (0xD9, 3),
            (0xDD, 2),
            (0xDD, 3),
            (0xDB, 2),
            (0xDB, 3),
            (0xDF, 2),
            (0xDF, 3),
            (0xDF, 7),
            (0xDB, 1),
            (0xDD, 1),
            (0xDF, 1),
        ] {
            v.push(vec![op, reg << 3]);
        }
        v
    }

    fn decode(bytes: &[u8]) -> Instruction {
        let mut d = Decoder::with_ip(32, bytes, u64::from(IP.0), DecoderOptions::NONE);
        d.decode()
    }

    /// Register values: normal numbers mostly, and every special class now and then.
    fn value() -> impl Strategy<Value = F80> {
        prop_oneof![
            6 => (any::<f64>()).prop_map(|f| crate::convert::f64_to_f80(f.to_bits()).v),
            2 => (any::<bool>(), 1u16..0x7FFF, any::<u64>())
                .prop_map(|(s, e, m)| F80::new(s, e, m | 1 << 63)),
            1 => (any::<bool>(), any::<u16>(), any::<u64>())
                .prop_map(|(s, e, m)| F80::new(s, e & 0x7FFF, m)),
            1 => (any::<bool>(), 16370u16..16400, any::<u64>())
                .prop_map(|(s, e, m)| F80::new(s, e, m | 1 << 63)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20000, ..ProptestConfig::default() })]
        #[test]
        fn fast_paths_do_what_execute_does(
            k in 0usize..1000,
            regs in proptest::array::uniform8(value()),
            tags in any::<u8>(),
            top in 0u16..8,
            masks in prop_oneof![3 => Just(0x3Fu16), 1 => 0u16..0x40],
            pc in prop_oneof![Just(3u16), Just(2), Just(0)],
            rc in 0u16..4,
            bits in prop_oneof![
                any::<u64>(),
                any::<f64>().prop_map(f64::to_bits),
                any::<f32>().prop_map(|f| u64::from(f.to_bits())),
                any::<i32>().prop_map(|i| i as u32 as u64),
            ],
        ) {
            let enc = encodings();
            let insn = decode(&enc[k % enc.len()]);
            let op = classify(insn.code()).expect("an x87 instruction");
            let s = X87State {
                regs,
                tag_valid: tags,
                fsw: top << 11,
                fcw: 0x40 | masks | pc << 8 | rc << 10,
                ..X87State::default()
            };
            let mut a = s.clone();
            let data = insn.op_count() > 0
                && (0..insn.op_count()).any(|n| insn.op_kind(n) == iced_x86::OpKind::Memory);
            let r = a.execute_fast(op, sti_of(&insn), bits, fop_of(&insn), IP, data.then_some(DP));
            if r != Fast::NotDone {
                let mut b = s.clone();
                let mut ctx = Ctx { mem: bits.to_le_bytes(), written: Vec::new() };
                let e: Result<(), X87Error<()>> = b.execute(&insn, &mut ctx);
                prop_assert!(e.is_ok());
                prop_assert_eq!(&a, &b, "{}", insn);
                let size = insn.memory_size().size();
                let stored = match r {
                    Fast::Store(v) => v.to_le_bytes()[..size].to_vec(),
                    _ => Vec::new(),
                };
                prop_assert_eq!(stored, ctx.written, "{}", insn);
            } else {
                prop_assert_eq!(&a, &s, "nothing changed when not done: {}", insn);
            }
        }
    }

    #[test]
    fn fast_paths_apply_to_ordinary_operands() {
        let mut s = X87State::default();
        s.push(F80::ONE);
        s.push(F80::ONE);
        // FADD ST(0), ST(1); FADD m64fp 2.0; FSTP m64fp; FLD m64fp 2.0.
        for (bytes, bits, want) in [
            (&[0xD8u8, 0xC1][..], 0u64, Fast::Done),
            (&[0xDC, 0x00][..], 2.0f64.to_bits(), Fast::Done),
            (&[0xDD, 0x18][..], 0, Fast::Store(4.0f64.to_bits())),
            (&[0xDD, 0x00][..], 2.0f64.to_bits(), Fast::Done),
        ] {
            let insn = decode(bytes);
            let op = classify(insn.code()).unwrap();
            let r = s.execute_fast(op, sti_of(&insn), bits, fop_of(&insn), IP, None);
            assert_eq!(r, want, "{insn}");
        }
    }
}
