//! Classification of iced `Code`s into x87 operations.

use crate::arith::BinOp;
use iced_x86::Code;

/// A memory operand format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mem {
    /// m32fp
    F32,
    /// m64fp
    F64,
    /// m80fp
    F80,
    /// m16int
    I16,
    /// m32int
    I32,
    /// m64int
    I64,
    /// m80bcd
    Bcd,
}

/// The second operand of an arithmetic or compare instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Src {
    /// A memory operand.
    Mem(Mem),
    /// ST(i) from the instruction's ST(i) operand.
    Sti,
    /// ST(1) (FCOMPP, FUCOMPP).
    St1,
    /// +0.0 (FTST).
    Zero,
}

/// Which load constant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Const {
    /// +1.0
    One,
    /// log2(10)
    L2T,
    /// log2(e)
    L2E,
    /// π
    Pi,
    /// log10(2)
    LG2,
    /// ln(2)
    LN2,
    /// +0.0
    Zero,
}

/// FCMOVcc conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    /// CF=1
    B,
    /// ZF=1
    E,
    /// CF=1 or ZF=1
    BE,
    /// PF=1
    U,
    /// CF=0
    NB,
    /// ZF=0
    NE,
    /// CF=0 and ZF=0
    NBE,
    /// PF=0
    NU,
}

/// Unary operations on ST(0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unary {
    /// FCHS
    Chs,
    /// FABS
    Abs,
    /// FSQRT
    Sqrt,
    /// FRNDINT
    Rndint,
    /// F2XM1
    F2xm1,
    /// FSIN
    Sin,
    /// FCOS
    Cos,
}

/// Operations on ST(0) and ST(1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary01 {
    /// FYL2X: ST1 = ST1·log2(ST0), pop
    Yl2x,
    /// FYL2XP1: ST1 = ST1·log2(ST0+1), pop
    Yl2xp1,
    /// FPATAN: ST1 = atan(ST1/ST0), pop
    Patan,
    /// FSCALE: ST0 = ST0·2^trunc(ST1)
    Scale,
    /// FPREM
    Prem,
    /// FPREM1
    Prem1,
}

/// One x87 operation, decoded from an iced `Code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// FADD & co.: `dst_sti` selects ST(i) as destination instead of ST(0).
    Arith {
        op: BinOp,
        rev: bool,
        src: Src,
        dst_sti: bool,
        pop: bool,
    },
    /// FCOM & co.
    Compare {
        src: Src,
        quiet: bool,
        pops: u8,
        eflags: bool,
    },
    /// FLD m / FILD / FBLD.
    LoadMem(Mem),
    /// FLD ST(i).
    LoadSti,
    /// Constants.
    LoadConst(Const),
    /// FST/FSTP/FIST/FISTP/FBSTP to memory; `trunc` for FISTTP.
    StoreMem { fmt: Mem, pop: bool, trunc: bool },
    /// FST/FSTP ST(i).
    StoreSti {
        /// Pop afterwards.
        pop: bool,
        /// FSTPNCE (D9 D8+i): no stack-underflow check.
        nce: bool,
    },
    /// FXCH.
    Xch,
    /// FCMOVcc.
    Cmov(Cond),
    /// Unary on ST(0).
    Unary(Unary),
    /// On ST(0), ST(1).
    Binary01(Binary01),
    /// FPTAN.
    Ptan,
    /// FSINCOS.
    Sincos,
    /// FXTRACT.
    Xtract,
    /// FXAM.
    Xam,
    /// FINCSTP.
    Incstp,
    /// FDECSTP.
    Decstp,
    /// FFREE/FFREEP.
    Free { pop: bool },
    /// FNOP and 8087/80287 leftovers that are no-ops on the 80387 and later.
    Nop,
    /// FNINIT.
    Init,
    /// FNCLEX.
    Clex,
    /// FLDCW.
    Ldcw,
    /// FNSTCW.
    Stcw,
    /// FNSTSW m16.
    StswMem,
    /// FNSTSW AX.
    StswAx,
    /// FNSTENV (the `Code` gives the 14/28-byte size).
    Stenv { size16: bool },
    /// FLDENV.
    Ldenv { size16: bool },
    /// FNSAVE.
    Save { size16: bool },
    /// FRSTOR.
    Rstor { size16: bool },
    /// FXSAVE.
    Fxsave { rex_w: bool },
    /// FXRSTOR.
    Fxrstor { rex_w: bool },
    /// FWAIT: the CPU does the waiting.
    Wait,
}

/// How an operation uses its memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemUse {
    /// No memory operand.
    None,
    /// Reads this many bytes at the operand, before anything else happens.
    Load(u8),
    /// Writes at most this many bytes at the operand (perhaps none, when an
    /// unmasked exception blocks the store).
    Store(u8),
    /// Reads or writes a state image (FLDENV, FNSAVE, FXSAVE and the like).
    Image,
}

impl Mem {
    /// The operand's size in bytes.
    #[inline]
    pub fn size(self) -> u8 {
        match self {
            Mem::I16 => 2,
            Mem::F32 | Mem::I32 => 4,
            Mem::F64 | Mem::I64 => 8,
            Mem::F80 | Mem::Bcd => 10,
        }
    }
}

impl Op {
    /// How the operation uses its memory operand. Every `Load` reads its bytes
    /// before the operation changes anything, so a CPU may read them first and hand
    /// them over (see [`crate::X87State::execute_op`]).
    #[inline]
    pub fn mem_use(self) -> MemUse {
        match self {
            Op::Arith {
                src: Src::Mem(m), ..
            }
            | Op::Compare {
                src: Src::Mem(m), ..
            }
            | Op::LoadMem(m) => MemUse::Load(m.size()),
            Op::Ldcw => MemUse::Load(2),
            Op::StoreMem { fmt, .. } => MemUse::Store(fmt.size()),
            Op::Stcw | Op::StswMem => MemUse::Store(2),
            Op::Stenv { .. }
            | Op::Ldenv { .. }
            | Op::Save { .. }
            | Op::Rstor { .. }
            | Op::Fxsave { .. }
            | Op::Fxrstor { .. } => MemUse::Image,
            _ => MemUse::None,
        }
    }

    /// Control instructions do not update FOP/FIP/FDP.
    #[inline]
    pub fn is_control(self) -> bool {
        matches!(
            self,
            Op::Init
                | Op::Clex
                | Op::Ldcw
                | Op::Stcw
                | Op::StswMem
                | Op::StswAx
                | Op::Stenv { .. }
                | Op::Ldenv { .. }
                | Op::Save { .. }
                | Op::Rstor { .. }
                | Op::Fxsave { .. }
                | Op::Fxrstor { .. }
                | Op::Wait
        )
    }
}

fn ar(op: BinOp, rev: bool, src: Src, dst_sti: bool, pop: bool) -> Op {
    Op::Arith {
        op,
        rev,
        src,
        dst_sti,
        pop,
    }
}

fn cmp(src: Src, quiet: bool, pops: u8) -> Op {
    Op::Compare {
        src,
        quiet,
        pops,
        eflags: false,
    }
}

/// Maps a `Code` to its x87 operation; `None` for non-x87 codes.
pub fn classify(code: Code) -> Option<Op> {
    use BinOp::*;
    use Code::*;
    use Mem::*;
    let m = Src::Mem;
    Some(match code {
        Fadd_m32fp => ar(Add, false, m(F32), false, false),
        Fadd_m64fp => ar(Add, false, m(F64), false, false),
        Fiadd_m16int => ar(Add, false, m(I16), false, false),
        Fiadd_m32int => ar(Add, false, m(I32), false, false),
        Fadd_st0_sti => ar(Add, false, Src::Sti, false, false),
        Fadd_sti_st0 => ar(Add, false, Src::Sti, true, false),
        Faddp_sti_st0 => ar(Add, false, Src::Sti, true, true),
        Fmul_m32fp => ar(Mul, false, m(F32), false, false),
        Fmul_m64fp => ar(Mul, false, m(F64), false, false),
        Fimul_m16int => ar(Mul, false, m(I16), false, false),
        Fimul_m32int => ar(Mul, false, m(I32), false, false),
        Fmul_st0_sti => ar(Mul, false, Src::Sti, false, false),
        Fmul_sti_st0 => ar(Mul, false, Src::Sti, true, false),
        Fmulp_sti_st0 => ar(Mul, false, Src::Sti, true, true),
        Fsub_m32fp => ar(Sub, false, m(F32), false, false),
        Fsub_m64fp => ar(Sub, false, m(F64), false, false),
        Fisub_m16int => ar(Sub, false, m(I16), false, false),
        Fisub_m32int => ar(Sub, false, m(I32), false, false),
        Fsub_st0_sti => ar(Sub, false, Src::Sti, false, false),
        Fsub_sti_st0 => ar(Sub, false, Src::Sti, true, false),
        Fsubp_sti_st0 => ar(Sub, false, Src::Sti, true, true),
        Fsubr_m32fp => ar(Sub, true, m(F32), false, false),
        Fsubr_m64fp => ar(Sub, true, m(F64), false, false),
        Fisubr_m16int => ar(Sub, true, m(I16), false, false),
        Fisubr_m32int => ar(Sub, true, m(I32), false, false),
        Fsubr_st0_sti => ar(Sub, true, Src::Sti, false, false),
        Fsubr_sti_st0 => ar(Sub, true, Src::Sti, true, false),
        Fsubrp_sti_st0 => ar(Sub, true, Src::Sti, true, true),
        Fdiv_m32fp => ar(Div, false, m(F32), false, false),
        Fdiv_m64fp => ar(Div, false, m(F64), false, false),
        Fidiv_m16int => ar(Div, false, m(I16), false, false),
        Fidiv_m32int => ar(Div, false, m(I32), false, false),
        Fdiv_st0_sti => ar(Div, false, Src::Sti, false, false),
        Fdiv_sti_st0 => ar(Div, false, Src::Sti, true, false),
        Fdivp_sti_st0 => ar(Div, false, Src::Sti, true, true),
        Fdivr_m32fp => ar(Div, true, m(F32), false, false),
        Fdivr_m64fp => ar(Div, true, m(F64), false, false),
        Fidivr_m16int => ar(Div, true, m(I16), false, false),
        Fidivr_m32int => ar(Div, true, m(I32), false, false),
        Fdivr_st0_sti => ar(Div, true, Src::Sti, false, false),
        Fdivr_sti_st0 => ar(Div, true, Src::Sti, true, false),
        Fdivrp_sti_st0 => ar(Div, true, Src::Sti, true, true),

        Fcom_m32fp => cmp(m(F32), false, 0),
        Fcom_m64fp => cmp(m(F64), false, 0),
        Fcom_st0_sti | Fcom_st0_sti_DCD0 => cmp(Src::Sti, false, 0),
        Fcomp_m32fp => cmp(m(F32), false, 1),
        Fcomp_m64fp => cmp(m(F64), false, 1),
        Fcomp_st0_sti | Fcomp_st0_sti_DCD8 | Fcomp_st0_sti_DED0 => cmp(Src::Sti, false, 1),
        Fcompp => cmp(Src::St1, false, 2),
        Fucom_st0_sti => cmp(Src::Sti, true, 0),
        Fucomp_st0_sti => cmp(Src::Sti, true, 1),
        Fucompp => cmp(Src::St1, true, 2),
        Ficom_m16int => cmp(m(I16), false, 0),
        Ficom_m32int => cmp(m(I32), false, 0),
        Ficomp_m16int => cmp(m(I16), false, 1),
        Ficomp_m32int => cmp(m(I32), false, 1),
        Ftst => cmp(Src::Zero, false, 0),
        Ftstp => cmp(Src::Zero, false, 1),
        Fcomi_st0_sti => Op::Compare {
            src: Src::Sti,
            quiet: false,
            pops: 0,
            eflags: true,
        },
        Fcomip_st0_sti => Op::Compare {
            src: Src::Sti,
            quiet: false,
            pops: 1,
            eflags: true,
        },
        Fucomi_st0_sti => Op::Compare {
            src: Src::Sti,
            quiet: true,
            pops: 0,
            eflags: true,
        },
        Fucomip_st0_sti => Op::Compare {
            src: Src::Sti,
            quiet: true,
            pops: 1,
            eflags: true,
        },

        Fld_m32fp => Op::LoadMem(F32),
        Fld_m64fp => Op::LoadMem(F64),
        Fld_m80fp => Op::LoadMem(F80),
        Fild_m16int => Op::LoadMem(I16),
        Fild_m32int => Op::LoadMem(I32),
        Fild_m64int => Op::LoadMem(I64),
        Fbld_m80bcd => Op::LoadMem(Bcd),
        Fld_sti => Op::LoadSti,
        Fld1 => Op::LoadConst(Const::One),
        Fldl2t => Op::LoadConst(Const::L2T),
        Fldl2e => Op::LoadConst(Const::L2E),
        Fldpi => Op::LoadConst(Const::Pi),
        Fldlg2 => Op::LoadConst(Const::LG2),
        Fldln2 => Op::LoadConst(Const::LN2),
        Fldz => Op::LoadConst(Const::Zero),

        Fst_m32fp => Op::StoreMem {
            fmt: F32,
            pop: false,
            trunc: false,
        },
        Fstp_m32fp => Op::StoreMem {
            fmt: F32,
            pop: true,
            trunc: false,
        },
        Fst_m64fp => Op::StoreMem {
            fmt: F64,
            pop: false,
            trunc: false,
        },
        Fstp_m64fp => Op::StoreMem {
            fmt: F64,
            pop: true,
            trunc: false,
        },
        Fstp_m80fp => Op::StoreMem {
            fmt: F80,
            pop: true,
            trunc: false,
        },
        Fist_m16int => Op::StoreMem {
            fmt: I16,
            pop: false,
            trunc: false,
        },
        Fist_m32int => Op::StoreMem {
            fmt: I32,
            pop: false,
            trunc: false,
        },
        Fistp_m16int => Op::StoreMem {
            fmt: I16,
            pop: true,
            trunc: false,
        },
        Fistp_m32int => Op::StoreMem {
            fmt: I32,
            pop: true,
            trunc: false,
        },
        Fistp_m64int => Op::StoreMem {
            fmt: I64,
            pop: true,
            trunc: false,
        },
        Fisttp_m16int => Op::StoreMem {
            fmt: I16,
            pop: true,
            trunc: true,
        },
        Fisttp_m32int => Op::StoreMem {
            fmt: I32,
            pop: true,
            trunc: true,
        },
        Fisttp_m64int => Op::StoreMem {
            fmt: I64,
            pop: true,
            trunc: true,
        },
        Fbstp_m80bcd => Op::StoreMem {
            fmt: Bcd,
            pop: true,
            trunc: false,
        },
        Fst_sti => Op::StoreSti {
            pop: false,
            nce: false,
        },
        Fstp_sti | Fstp_sti_DFD0 | Fstp_sti_DFD8 => Op::StoreSti {
            pop: true,
            nce: false,
        },
        Fstpnce_sti => Op::StoreSti {
            pop: true,
            nce: true,
        },

        Fxch_st0_sti | Fxch_st0_sti_DDC8 | Fxch_st0_sti_DFC8 => Op::Xch,
        Fcmovb_st0_sti => Op::Cmov(Cond::B),
        Fcmove_st0_sti => Op::Cmov(Cond::E),
        Fcmovbe_st0_sti => Op::Cmov(Cond::BE),
        Fcmovu_st0_sti => Op::Cmov(Cond::U),
        Fcmovnb_st0_sti => Op::Cmov(Cond::NB),
        Fcmovne_st0_sti => Op::Cmov(Cond::NE),
        Fcmovnbe_st0_sti => Op::Cmov(Cond::NBE),
        Fcmovnu_st0_sti => Op::Cmov(Cond::NU),

        Fchs => Op::Unary(Unary::Chs),
        Fabs => Op::Unary(Unary::Abs),
        Fsqrt => Op::Unary(Unary::Sqrt),
        Frndint | Frint2 | Frichop | Frinear => Op::Unary(Unary::Rndint),
        F2xm1 => Op::Unary(Unary::F2xm1),
        Fsin => Op::Unary(Unary::Sin),
        Fcos => Op::Unary(Unary::Cos),
        Fyl2x => Op::Binary01(Binary01::Yl2x),
        Fyl2xp1 => Op::Binary01(Binary01::Yl2xp1),
        Fpatan => Op::Binary01(Binary01::Patan),
        Fscale => Op::Binary01(Binary01::Scale),
        Fprem => Op::Binary01(Binary01::Prem),
        Fprem1 => Op::Binary01(Binary01::Prem1),
        Fptan => Op::Ptan,
        Fsincos => Op::Sincos,
        Fxtract => Op::Xtract,
        Fxam => Op::Xam,
        Fincstp => Op::Incstp,
        Fdecstp => Op::Decstp,
        Ffree_sti => Op::Free { pop: false },
        Ffreep_sti => Op::Free { pop: true },
        Fnop | Fneni | Feni | Fndisi | Fdisi | Fnsetpm | Fsetpm | Frstpm => Op::Nop,

        Fninit | Finit => Op::Init,
        Fnclex | Fclex => Op::Clex,
        Fldcw_m2byte => Op::Ldcw,
        Fnstcw_m2byte | Fstcw_m2byte => Op::Stcw,
        Fnstsw_m2byte | Fstsw_m2byte => Op::StswMem,
        Fnstsw_AX | Fstsw_AX | Fnstdw_AX | Fstdw_AX | Fnstsg_AX | Fstsg_AX => Op::StswAx,
        Fnstenv_m14byte | Fstenv_m14byte => Op::Stenv { size16: true },
        Fnstenv_m28byte | Fstenv_m28byte => Op::Stenv { size16: false },
        Fldenv_m14byte => Op::Ldenv { size16: true },
        Fldenv_m28byte => Op::Ldenv { size16: false },
        Fnsave_m94byte | Fsave_m94byte => Op::Save { size16: true },
        Fnsave_m108byte | Fsave_m108byte => Op::Save { size16: false },
        Frstor_m94byte => Op::Rstor { size16: true },
        Frstor_m108byte => Op::Rstor { size16: false },
        Fxsave_m512byte => Op::Fxsave { rex_w: false },
        Fxsave64_m512byte => Op::Fxsave { rex_w: true },
        Fxrstor_m512byte => Op::Fxrstor { rex_w: false },
        Fxrstor64_m512byte => Op::Fxrstor { rex_w: true },
        Wait => Op::Wait,
        _ => return None,
    })
}

/// True for the no-wait control instructions (FNINIT, FNCLEX, FNSTSW, FNSTCW,
/// FNSTENV, FNSAVE, and FXSAVE/FXRSTOR which never raise #MF): the CPU does not check for a pending exception first.
pub fn is_nowait(code: Code) -> bool {
    use Code::*;
    matches!(
        code,
        Fninit
            | Fnclex
            | Fnstsw_m2byte
            | Fnstsw_AX
            | Fnstcw_m2byte
            | Fnstenv_m14byte
            | Fnstenv_m28byte
            | Fnsave_m94byte
            | Fnsave_m108byte
            | Fneni
            | Fndisi
            | Fnsetpm
            | Fnstdw_AX
            | Fnstsg_AX
            | Fxsave_m512byte
            | Fxsave64_m512byte
            | Fxrstor_m512byte
            | Fxrstor64_m512byte
    )
}
