//! Instruction handlers, one file per family, and `select`, which picks the handler
//! (monomorphized for the operand width) for a decoded instruction once, at decode
//! time.

pub mod alu;
pub mod bcd;
pub mod bits;
pub mod control;
pub mod data;
pub mod far;
pub mod interrupt;
pub mod io;
pub mod muldiv;
pub mod operand;
pub mod segment;
pub mod shift;
pub mod stack;
pub mod string;
pub mod system;
pub mod task;
pub mod x87;

use iced_x86::{Code, Instruction, Mnemonic as M, OpKind};

use crate::block::Handler;
use crate::Exec;

use alu::op;
use operand::op_size;

/// Picks `f::<u8>`, `f::<u16>` or `f::<u32>` by a size in bytes.
macro_rules! by_size {
    ($size:expr, $f:ident $(, $c:expr)?) => {
        match $size {
            1 => $f::<u8 $(, $c)?> as Handler,
            2 => $f::<u16 $(, $c)?> as Handler,
            4 => $f::<u32 $(, $c)?> as Handler,
            _ => system::exec_ud as Handler,
        }
    };
}

/// Picks `f::<u16>` or `f::<u32>` for 16/32-bit-only forms.
macro_rules! by_size_wd {
    ($size:expr, $f:ident) => {
        match $size {
            2 => $f::<u16> as Handler,
            4 => $f::<u32> as Handler,
            _ => system::exec_ud as Handler,
        }
    };
}

use alu::{exec_alu, exec_alu_reg, exec_incdec, exec_neg, exec_not};
use bits::{exec_bsf_bsr, exec_bt};
use control::{exec_call_ind, exec_call_rel, exec_jcxz, exec_jmp_ind, exec_loop, exec_ret};
use data::{
    exec_cbw, exec_cmovcc, exec_cmpxchg, exec_cwd, exec_mov, exec_movsx, exec_movzx, exec_xadd,
    exec_xchg,
};
use far::{exec_call_far, exec_jmp_far, exec_retf};
use interrupt::{exec_bound, exec_iret};
use io::{exec_in, exec_out};
use muldiv::{exec_div, exec_idiv, exec_imul1, exec_imuln, exec_mul};
use segment::{exec_lxs, exec_pop_seg, exec_push_seg};
use shift::{exec_shift, exec_shxd};
use stack::{
    exec_enter, exec_leave, exec_pop, exec_popa, exec_popf, exec_push, exec_pusha, exec_pushf,
};
use string::exec_string;

/// Operand size in bytes of an instruction whose operands do not show it (RET,
/// RETF, PUSH imm, ENTER, LEAVE, PUSH/POP Sreg), from iced's opcode tables.
fn code_opsize(i: &Instruction) -> u32 {
    match i.code().op_code().operand_size() {
        16 => 2,
        64 => 8,
        _ => 4,
    }
}

/// Whether a LOCK prefix is allowed on this instruction (a memory destination of one
/// of the lockable instructions); otherwise LOCK raises #UD.
pub fn lock_ok(i: &Instruction) -> bool {
    i.op_count() > 0
        && i.op0_kind() == OpKind::Memory
        && matches!(
            i.mnemonic(),
            M::Add
                | M::Adc
                | M::And
                | M::Btc
                | M::Btr
                | M::Bts
                | M::Cmpxchg
                | M::Cmpxchg8b
                | M::Dec
                | M::Inc
                | M::Neg
                | M::Not
                | M::Or
                | M::Sbb
                | M::Sub
                | M::Xor
                | M::Xadd
                | M::Xchg
        )
}

/// Chooses the handler for a decoded instruction.
pub fn select(i: &Instruction) -> Handler {
    if i.is_invalid() || (i.has_lock_prefix() && !lock_ok(i)) {
        return system::exec_ud;
    }
    if x87::is_x87(i) {
        return x87::exec_x87;
    }
    let s0 = if i.op_count() > 0 { op_size(i, 0) } else { 0 };
    match i.mnemonic() {
        M::Add if i.op0_kind() == OpKind::Register => by_size!(s0, exec_alu_reg, { op::ADD }),
        M::Add => by_size!(s0, exec_alu, { op::ADD }),
        M::Or if i.op0_kind() == OpKind::Register => by_size!(s0, exec_alu_reg, { op::OR }),
        M::Or => by_size!(s0, exec_alu, { op::OR }),
        M::Adc if i.op0_kind() == OpKind::Register => by_size!(s0, exec_alu_reg, { op::ADC }),
        M::Adc => by_size!(s0, exec_alu, { op::ADC }),
        M::Sbb if i.op0_kind() == OpKind::Register => by_size!(s0, exec_alu_reg, { op::SBB }),
        M::Sbb => by_size!(s0, exec_alu, { op::SBB }),
        M::And if i.op0_kind() == OpKind::Register => by_size!(s0, exec_alu_reg, { op::AND }),
        M::And => by_size!(s0, exec_alu, { op::AND }),
        M::Sub if i.op0_kind() == OpKind::Register => by_size!(s0, exec_alu_reg, { op::SUB }),
        M::Sub => by_size!(s0, exec_alu, { op::SUB }),
        M::Xor if i.op0_kind() == OpKind::Register => by_size!(s0, exec_alu_reg, { op::XOR }),
        M::Xor => by_size!(s0, exec_alu, { op::XOR }),
        M::Cmp if i.op0_kind() == OpKind::Register => by_size!(s0, exec_alu_reg, { op::CMP }),
        M::Cmp => by_size!(s0, exec_alu, { op::CMP }),
        M::Test if i.op0_kind() == OpKind::Register => by_size!(s0, exec_alu_reg, { op::TEST }),
        M::Test => by_size!(s0, exec_alu, { op::TEST }),
        M::Inc => by_size!(s0, exec_incdec, false),
        M::Dec => by_size!(s0, exec_incdec, true),
        M::Neg => by_size!(s0, exec_neg),
        M::Not => by_size!(s0, exec_not),
        M::Mov => {
            let r0 = i.op0_register();
            let r1 = i.op1_register();
            if r0.is_segment_register() {
                segment::exec_mov_to_seg
            } else if r1.is_segment_register() {
                segment::exec_mov_from_seg
            } else if r0.is_cr() || r1.is_cr() {
                system::exec_mov_cr
            } else if r0.is_dr() || r1.is_dr() {
                system::exec_mov_dr
            } else if r0.is_tr() || r1.is_tr() {
                system::exec_ud
            } else if i.op0_kind() == OpKind::Register && i.op1_kind() == OpKind::Register {
                data::exec_mov_rr
            } else {
                by_size!(s0, exec_mov)
            }
        }
        M::Movzx => by_size!(op_size(i, 1), exec_movzx),
        M::Movsx => by_size!(op_size(i, 1), exec_movsx),
        M::Lea => {
            if i.op1_kind() == OpKind::Memory {
                data::exec_lea
            } else {
                system::exec_ud
            }
        }
        M::Xchg => by_size!(s0, exec_xchg),
        M::Xadd => by_size!(s0, exec_xadd),
        M::Cmpxchg => by_size!(s0, exec_cmpxchg),
        M::Cmpxchg8b => data::exec_cmpxchg8b,
        M::Bswap => data::exec_bswap,
        M::Cbw | M::Cwde => by_size_wd!(if i.mnemonic() == M::Cbw { 2 } else { 4 }, exec_cbw),
        M::Cwd | M::Cdq => by_size_wd!(if i.mnemonic() == M::Cwd { 2 } else { 4 }, exec_cwd),
        M::Seta
        | M::Setae
        | M::Setb
        | M::Setbe
        | M::Sete
        | M::Setg
        | M::Setge
        | M::Setl
        | M::Setle
        | M::Setne
        | M::Setno
        | M::Setnp
        | M::Setns
        | M::Seto
        | M::Setp
        | M::Sets => data::exec_setcc,
        M::Cmova
        | M::Cmovae
        | M::Cmovb
        | M::Cmovbe
        | M::Cmove
        | M::Cmovg
        | M::Cmovge
        | M::Cmovl
        | M::Cmovle
        | M::Cmovne
        | M::Cmovno
        | M::Cmovnp
        | M::Cmovns
        | M::Cmovo
        | M::Cmovp
        | M::Cmovs => by_size_wd!(s0, exec_cmovcc),
        M::Xlatb => data::exec_xlat,
        M::Salc => data::exec_salc,
        // Hint NOPs: multi-byte NOP, ENDBR (reserved NOP space on CPUs without CET),
        // PREFETCH hints (0F 18), PAUSE.
        M::Nop
        | M::Pause
        | M::Endbr32
        | M::Endbr64
        | M::Prefetchnta
        | M::Prefetcht0
        | M::Prefetcht1
        | M::Prefetcht2
        | M::Reservednop => data::exec_nop,
        M::Clc | M::Stc | M::Cmc | M::Cld | M::Std => alu::exec_flag_op,
        M::Lahf => alu::exec_lahf,
        M::Sahf => alu::exec_sahf,
        M::Rol | M::Ror | M::Rcl | M::Rcr | M::Shl | M::Sal | M::Shr | M::Sar => {
            by_size!(s0, exec_shift)
        }
        M::Shld | M::Shrd => by_size_wd!(s0, exec_shxd),
        M::Mul => by_size!(s0, exec_mul),
        M::Imul => match i.op_count() {
            1 => by_size!(s0, exec_imul1),
            _ => by_size_wd!(s0, exec_imuln),
        },
        M::Div => by_size!(s0, exec_div),
        M::Idiv => by_size!(s0, exec_idiv),
        M::Daa => bcd::exec_daa,
        M::Das => bcd::exec_das,
        M::Aaa | M::Aas => bcd::exec_aaa_aas,
        M::Aam => bcd::exec_aam,
        M::Aad => bcd::exec_aad,
        M::Bt | M::Bts | M::Btr | M::Btc => by_size_wd!(s0, exec_bt),
        // Without BMI1/LZCNT (not advertised) F3 0F BC/BD are REP BSF/BSR: the prefix is
        // ignored, as on the CPUs that predate them.
        M::Bsf | M::Bsr | M::Tzcnt | M::Lzcnt => by_size_wd!(s0, exec_bsf_bsr),
        M::Movsb | M::Cmpsb | M::Scasb | M::Lodsb | M::Stosb | M::Insb | M::Outsb => {
            exec_string::<u8>
        }
        M::Movsw | M::Cmpsw | M::Scasw | M::Lodsw | M::Stosw | M::Insw | M::Outsw => {
            exec_string::<u16>
        }
        M::Movsd | M::Cmpsd | M::Scasd | M::Lodsd | M::Stosd | M::Insd | M::Outsd => {
            exec_string::<u32>
        }
        M::Jmp => match i.op0_kind() {
            OpKind::NearBranch16 | OpKind::NearBranch32 => control::exec_jmp_rel,
            OpKind::FarBranch16 => exec_jmp_far::<u16>,
            OpKind::FarBranch32 => exec_jmp_far::<u32>,
            _ if matches!(i.code(), Code::Jmp_m1616 | Code::Jmp_m1632) => {
                if i.code() == Code::Jmp_m1616 {
                    exec_jmp_far::<u16>
                } else {
                    exec_jmp_far::<u32>
                }
            }
            _ => by_size_wd!(s0, exec_jmp_ind),
        },
        M::Ja
        | M::Jae
        | M::Jb
        | M::Jbe
        | M::Je
        | M::Jg
        | M::Jge
        | M::Jl
        | M::Jle
        | M::Jne
        | M::Jno
        | M::Jnp
        | M::Jns
        | M::Jo
        | M::Jp
        | M::Js => control::exec_jcc,
        M::Call => match i.op0_kind() {
            OpKind::NearBranch16 => exec_call_rel::<u16>,
            OpKind::NearBranch32 => exec_call_rel::<u32>,
            OpKind::FarBranch16 => exec_call_far::<u16>,
            OpKind::FarBranch32 => exec_call_far::<u32>,
            _ if matches!(i.code(), Code::Call_m1616 | Code::Call_m1632) => {
                if i.code() == Code::Call_m1616 {
                    exec_call_far::<u16>
                } else {
                    exec_call_far::<u32>
                }
            }
            _ => by_size_wd!(s0, exec_call_ind),
        },
        M::Ret => by_size_wd!(code_opsize(i), exec_ret),
        M::Retf => by_size_wd!(code_opsize(i), exec_retf),
        // The counter is CX or ECX by the address size.
        M::Loop | M::Loope | M::Loopne => match i.code().op_code().address_size() {
            16 => exec_loop::<u16>,
            _ => exec_loop::<u32>,
        },
        M::Jcxz => exec_jcxz::<u16>,
        M::Jecxz => exec_jcxz::<u32>,
        M::Push => {
            if i.op0_kind() == OpKind::Register && i.op0_register().is_segment_register() {
                by_size_wd!(code_opsize(i), exec_push_seg)
            } else if i.op0_kind() == OpKind::Register || i.op0_kind() == OpKind::Memory {
                by_size_wd!(s0, exec_push)
            } else {
                by_size_wd!(code_opsize(i), exec_push)
            }
        }
        M::Pop => {
            if i.op0_kind() == OpKind::Register && i.op0_register().is_segment_register() {
                if i.op0_register() == iced_x86::Register::CS {
                    system::exec_ud
                } else {
                    by_size_wd!(code_opsize(i), exec_pop_seg)
                }
            } else {
                by_size_wd!(s0, exec_pop)
            }
        }
        M::Pusha => exec_pusha::<u16>,
        M::Pushad => exec_pusha::<u32>,
        M::Popa => exec_popa::<u16>,
        M::Popad => exec_popa::<u32>,
        M::Pushf => exec_pushf::<u16>,
        M::Pushfd => exec_pushf::<u32>,
        M::Popf => exec_popf::<u16>,
        M::Popfd => exec_popf::<u32>,
        M::Enter => by_size_wd!(code_opsize(i), exec_enter),
        M::Leave => by_size_wd!(code_opsize(i), exec_leave),
        M::Lds | M::Les | M::Lfs | M::Lgs | M::Lss => by_size_wd!(s0, exec_lxs),
        M::Int | M::Int3 | M::Into | M::Int1 => interrupt::exec_int,
        M::Bound => by_size_wd!(s0, exec_bound),
        M::Iret => exec_iret::<u16>,
        M::Iretd => exec_iret::<u32>,
        M::In => by_size!(s0, exec_in),
        M::Out => by_size!(op_size(i, 1), exec_out),
        M::Lgdt | M::Lidt => system::exec_lgdt_lidt,
        M::Sgdt | M::Sidt => system::exec_sgdt_sidt,
        M::Sldt | M::Str | M::Smsw => system::exec_store_sys,
        M::Lldt => system::exec_lldt,
        M::Ltr => system::exec_ltr,
        M::Lmsw => system::exec_lmsw,
        M::Clts => system::exec_clts,
        M::Invlpg => system::exec_invlpg,
        M::Wbinvd | M::Invd => system::exec_wbinvd,
        M::Hlt => system::exec_hlt,
        M::Cli | M::Sti => system::exec_cli_sti,
        M::Cpuid => system::exec_cpuid,
        M::Rdtsc => system::exec_rdtsc,
        M::Rdmsr => system::exec_rdmsr,
        M::Rdpmc => system::exec_rdpmc,
        M::Wrmsr => system::exec_wrmsr,
        M::Arpl => system::exec_arpl,
        M::Lar | M::Lsl | M::Verr | M::Verw => system::exec_prot_query,
        _ => system::exec_ud,
    }
}

impl Exec<'_> {
    /// Runs one already-decoded instruction through its handler (tests, debuggers).
    pub fn execute(&mut self, i: &Instruction) -> crate::Fault {
        select(i)(self, i)
    }
}
