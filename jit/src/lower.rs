//! Which instructions the JIT lowers to host code, and in what form. Everything else
//! runs through the interpreter's handler (a helper call), so coverage is a matter of
//! speed, never of correctness.

use iced_x86::{Code, Instruction, Mnemonic as M, OpKind, Register};
use ox86_cpu::exec::operand::op_size;

/// The form an instruction is lowered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Run by the interpreter's handler.
    Helper,
    /// MOV between registers, memory and immediates.
    Mov,
    /// ADD, OR, ADC, SBB, AND, SUB, XOR, CMP, TEST.
    Alu,
    /// INC, DEC.
    IncDec,
    /// NEG.
    Neg,
    /// NOT.
    Not,
    /// LEA.
    Lea,
    /// MOVZX, MOVSX.
    Extend,
    /// CBW, CWDE.
    Cbw,
    /// CWD, CDQ.
    Cwd,
    /// SHL, SHR, SAR by an immediate or CL.
    Shift,
    /// ROL, ROR by an immediate.
    Rotate,
    /// Two- and three-operand IMUL.
    Imul,
    /// MUL r/m32 (EDX:EAX = EAX × operand).
    Mul,
    /// One-operand IMUL r/m32 (EDX:EAX = EAX × operand, signed).
    Imul1,
    /// SHLD, SHRD r/m32 by a non-zero immediate or CL (a zero CL goes to the
    /// interpreter: nothing changes, not even the flags).
    Shxd,
    /// DIV r/m32 (EDX:EAX ÷ operand); #DE goes to the interpreter.
    Div,
    /// SETcc.
    Setcc,
    /// CMOVcc.
    Cmovcc,
    /// XCHG.
    Xchg,
    /// XADD.
    Xadd,
    /// CMPXCHG (the destination is written whether or not it matched, as the
    /// interpreter and the hardware do).
    Cmpxchg,
    /// PUSH of a register, immediate or memory operand.
    Push,
    /// POP to a register.
    Pop,
    /// LEAVE.
    Leave,
    /// NOP.
    Nop,
    /// Jcc rel.
    Jcc,
    /// JMP rel.
    Jmp,
    /// CALL rel.
    Call,
    /// RET, RET imm16 (near).
    Ret,
    /// JMP r/m (near).
    JmpInd,
    /// CALL r/m (near).
    CallInd,
    /// An x87 instruction run by a direct FPU helper, its memory operand accessed by
    /// compiled code (see `x87.rs`).
    X87,
}

/// Index and size of a general-purpose register EAX..EDI (any width), and whether it
/// is a high byte register (AH..BH).
pub fn gpr(r: Register) -> Option<(usize, u32, bool)> {
    let n = r as usize;
    match n {
        1..=4 => Some((n - 1, 1, false)),
        5..=8 => Some((n - 5, 1, true)),
        21..=28 => Some((n - 21, 2, false)),
        37..=44 => Some((n - 37, 4, false)),
        _ => None,
    }
}

/// Whether the memory operand's base and index are 16- or 32-bit GPRs (or absent).
pub fn simple_address(i: &Instruction) -> bool {
    [i.memory_base(), i.memory_index()]
        .iter()
        .all(|&r| r == Register::None || gpr(r).is_some_and(|g| g.1 >= 2 && !g.2))
}

/// Whether every operand is a low-eight GPR, memory or an immediate of size 1, 2 or 4.
fn simple_operands(i: &Instruction) -> bool {
    (0..i.op_count()).all(|n| match i.op_kind(n) {
        OpKind::Register => gpr(i.op_register(n)).is_some(),
        OpKind::Memory => {
            (matches!(i.memory_size().size(), 1 | 2 | 4) || i.mnemonic() == M::Lea)
                && simple_address(i)
        }
        OpKind::Immediate8
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32 => true,
        _ => false,
    })
}

/// The lowering of an instruction.
pub fn kind(i: &Instruction) -> Kind {
    // A LOCK prefix changes nothing on one CPU, where it is allowed (elsewhere it
    // raises #UD, in the interpreter).
    if i.is_invalid() || (i.has_lock_prefix() && !ox86_cpu::exec::lock_ok(i)) {
        return Kind::Helper;
    }
    if let Some(fpu) = crate::x87::lowerable(i) {
        return if fpu { Kind::X87 } else { Kind::Helper };
    }
    let k = match i.mnemonic() {
        M::Mov => Kind::Mov,
        M::Add | M::Or | M::Adc | M::Sbb | M::And | M::Sub | M::Xor | M::Cmp | M::Test => Kind::Alu,
        M::Inc | M::Dec => Kind::IncDec,
        M::Neg => Kind::Neg,
        M::Not => Kind::Not,
        M::Lea => Kind::Lea,
        M::Movzx | M::Movsx => Kind::Extend,
        M::Cbw | M::Cwde => Kind::Cbw,
        M::Cwd | M::Cdq => Kind::Cwd,
        M::Shl | M::Sal | M::Shr | M::Sar => Kind::Shift,
        M::Rol | M::Ror if i.op1_kind() != OpKind::Register => Kind::Rotate,
        M::Imul if i.op_count() >= 2 => Kind::Imul,
        M::Mul if op_size(i, 0) == 4 => Kind::Mul,
        M::Imul if i.op_count() == 1 && op_size(i, 0) == 4 => Kind::Imul1,
        M::Shld | M::Shrd
            if op_size(i, 0) == 4
                && (i.op2_kind() == OpKind::Register || i.immediate8() & 31 != 0) =>
        {
            Kind::Shxd
        }
        M::Div if op_size(i, 0) == 4 => Kind::Div,
        M::Seto | M::Setno | M::Setb | M::Setae | M::Sete | M::Setne | M::Setbe | M::Seta => {
            Kind::Setcc
        }
        M::Sets | M::Setns | M::Setp | M::Setnp | M::Setl | M::Setge | M::Setle | M::Setg => {
            Kind::Setcc
        }
        M::Cmovo | M::Cmovno | M::Cmovb | M::Cmovae | M::Cmove | M::Cmovne | M::Cmovbe => {
            Kind::Cmovcc
        }
        M::Cmova | M::Cmovs | M::Cmovns | M::Cmovp | M::Cmovnp | M::Cmovl | M::Cmovge => {
            Kind::Cmovcc
        }
        M::Cmovle | M::Cmovg => Kind::Cmovcc,
        M::Xchg => Kind::Xchg,
        M::Xadd => Kind::Xadd,
        M::Cmpxchg => Kind::Cmpxchg,
        M::Push if i.op_count() == 1 => Kind::Push,
        M::Pop if i.op_count() == 1 && i.op0_kind() == OpKind::Register => Kind::Pop,
        M::Leave => Kind::Leave,
        // ENDBR32/ENDBR64 do nothing without CET, which the CPU does not offer; PAUSE
        // is a hint (the interpreter runs all three as NOPs).
        M::Nop | M::Endbr32 | M::Endbr64 | M::Pause => Kind::Nop,
        M::Jo | M::Jno | M::Jb | M::Jae | M::Je | M::Jne | M::Jbe | M::Ja => Kind::Jcc,
        M::Js | M::Jns | M::Jp | M::Jnp | M::Jl | M::Jge | M::Jle | M::Jg => Kind::Jcc,
        M::Jmp if is_near_rel(i) => Kind::Jmp,
        M::Call if is_near_rel(i) => Kind::Call,
        M::Ret => Kind::Ret,
        M::Jmp if i.op0_kind() == OpKind::Register || i.op0_kind() == OpKind::Memory => {
            if i.is_jmp_far_indirect() {
                Kind::Helper
            } else {
                Kind::JmpInd
            }
        }
        M::Call if i.op0_kind() == OpKind::Register || i.op0_kind() == OpKind::Memory => {
            if i.is_call_far_indirect() {
                Kind::Helper
            } else {
                Kind::CallInd
            }
        }
        _ => Kind::Helper,
    };
    if k == Kind::Nop {
        return k;
    }
    if matches!(k, Kind::Jcc | Kind::Jmp | Kind::Call | Kind::Ret) {
        return k;
    }
    if !simple_operands(i) {
        return Kind::Helper;
    }
    if k == Kind::Push
        && i.op0_kind() == OpKind::Register
        && gpr(i.op0_register()).is_some_and(|g| g.1 == 1)
    {
        return Kind::Helper;
    }
    k
}

fn is_near_rel(i: &Instruction) -> bool {
    matches!(i.op0_kind(), OpKind::NearBranch16 | OpKind::NearBranch32)
}

/// Whether the instruction is lowered to host code.
pub fn is_lowered(i: &Instruction) -> bool {
    kind(i) != Kind::Helper
}

/// Whether a lowered instruction can leave the region by a fault (it touches memory,
/// or checks a branch target against the CS limit).
pub fn may_fault(i: &Instruction) -> bool {
    match kind(i) {
        Kind::Lea | Kind::Nop => false,
        Kind::Push | Kind::Pop | Kind::Leave | Kind::Call | Kind::Ret => true,
        Kind::JmpInd | Kind::CallInd => true,
        // A zero divisor or a quotient too large leaves for the interpreter (#DE).
        Kind::Div => true,
        // A zero count in CL leaves for the interpreter.
        Kind::Shxd => true,
        // The FPU helper declines when CR0 or a pending exception needs the
        // interpreter, which may then fault.
        Kind::X87 => true,
        _ => (0..i.op_count()).any(|n| i.op_kind(n) == OpKind::Memory),
    }
}

/// Operand size in bytes of a stack instruction (PUSH, POP, CALL, RET, LEAVE).
pub fn stack_size(i: &Instruction) -> u32 {
    match i.code() {
        Code::Pushw_imm8 | Code::Push_imm16 => 2,
        Code::Pushd_imm8 | Code::Pushd_imm32 => 4,
        _ => match i.code().op_code().operand_size() {
            16 => 2,
            _ => 4,
        },
    }
}
