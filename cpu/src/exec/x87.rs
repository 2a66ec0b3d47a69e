//! Glue between the interpreter and the x87 FPU crate: CR0.EM/TS/MP checks (#NM),
//! pending unmasked exceptions (#MF), and memory operands through the CPU's MMU.

use iced_x86::{Code, Instruction, Mnemonic, OpKind};
use ox86_x87::{X87Context, X87Error, X87State};

use crate::exception::{Exception, Fault};
use crate::state::{AF, CF, CR0_EM, CR0_MP, CR0_NE, CR0_TS, CS, OF, PF, SF, ZF};
use crate::Exec;

/// Whether the instruction belongs to the FPU (WAIT/FWAIT included).
pub fn is_x87(i: &Instruction) -> bool {
    X87State::is_x87(i.code()) || i.mnemonic() == Mnemonic::Wait
}

/// The memory-operand context the FPU crate reads and writes through.
struct Ctx<'e, 'a> {
    e: &'e mut Exec<'a>,
    seg: usize,
    off: u64,
    mask: u64,
    insn: &'e Instruction,
}

impl X87Context for Ctx<'_, '_> {
    type Fault = Exception;

    fn read_mem(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Exception> {
        let off = self.off.wrapping_add(offset as u64) & self.mask;
        self.e.read_bytes(self.seg, off, buf)
    }

    fn write_mem(&mut self, offset: u32, data: &[u8]) -> Result<(), Exception> {
        let off = self.off.wrapping_add(offset as u64) & self.mask;
        self.e.write_bytes(self.seg, off, data)
    }

    fn eflags(&self) -> u32 {
        self.e.s.eflags() as u32
    }

    fn set_compare_flags(&mut self, zf: bool, pf: bool, cf: bool) {
        let v = (zf as u64 * ZF) | (pf as u64 * PF) | (cf as u64 * CF);
        self.e.s.set_arith_flags(ZF | PF | CF | OF | SF | AF, v);
    }

    fn set_ax(&mut self, value: u16) {
        self.e.s.set_r16(crate::state::RAX, value);
    }

    fn real_mode(&self) -> bool {
        !self.e.s.protected() || self.e.s.v86()
    }

    fn operand_size_16(&self) -> bool {
        matches!(
            self.insn.code(),
            Code::Fnstenv_m14byte
                | Code::Fstenv_m14byte
                | Code::Fldenv_m14byte
                | Code::Fnsave_m94byte
                | Code::Fsave_m94byte
                | Code::Frstor_m94byte
        )
    }

    fn instruction_pointer(&self) -> (u32, u16) {
        (self.insn.ip32(), self.e.s.seg[CS].selector)
    }

    fn data_pointer(&self) -> (u32, u16) {
        (self.off as u32, self.e.s.seg[self.seg].selector)
    }
}

/// Executes an x87 instruction.
pub fn exec_x87(e: &mut Exec<'_>, i: &Instruction) -> Fault {
    let cr0 = e.s.cr0;
    let wait = i.mnemonic() == Mnemonic::Wait;
    if wait {
        if cr0 & CR0_TS != 0 && cr0 & CR0_MP != 0 {
            return Err(Exception::NM);
        }
    } else if cr0 & (CR0_EM | CR0_TS) != 0 {
        return Err(Exception::NM);
    }
    if (wait || !X87State::is_nowait(i.code())) && e.s.fpu.exception_pending() {
        if cr0 & CR0_NE != 0 {
            return Err(Exception::MF);
        }
        // CR0.NE=0: the error goes out on FERR#, which a PC routes to IRQ13; the
        // instruction proceeds (IGNNE# is asserted by the chipset).
        e.io.fpu_error();
    }
    if wait {
        return Ok(());
    }
    let (seg, off, mask) =
        if i.op_count() > 0 && (0..i.op_count()).any(|n| i.op_kind(n) == OpKind::Memory) {
            let (s, o) = e.mem_operand(i);
            (s, o, super::operand::addr_mask(i))
        } else {
            (crate::state::DS, 0, 0xffff_ffff)
        };
    if matches!(i.code(), Code::Fxsave_m512byte | Code::Fxrstor_m512byte) && off & 15 != 0 {
        return Err(Exception::GP0);
    }
    let mut fpu = std::mem::take(&mut e.s.fpu);
    let r = fpu.execute(
        i,
        &mut Ctx {
            e,
            seg,
            off,
            mask,
            insn: i,
        },
    );
    e.s.fpu = fpu;
    match r {
        Ok(()) => Ok(()),
        Err(X87Error::Fault(x)) => Err(x),
        Err(X87Error::Unimplemented(code)) => {
            tracing::warn!(target: "ox86::cpu", "x87 instruction {code:?} not implemented: #UD");
            Err(Exception::UD)
        }
    }
}
