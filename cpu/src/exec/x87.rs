//! Glue between the interpreter and the x87 FPU crate: CR0.EM/TS/MP checks (#NM),
//! pending unmasked exceptions (#MF), and memory operands through the CPU's MMU.

use iced_x86::{Code, Instruction, Mnemonic};
use ox86_x87::fast::Fast;
use ox86_x87::ops::{classify, MemUse, Op};
use ox86_x87::{fop_of, sti_of, X87Context, X87Error, X87State};

use crate::exception::{Exception, Fault};
use crate::state::{AF, CF, CR0_EM, CR0_MP, CR0_NE, CR0_TS, CS, OF, PF, SF, ZF};
use crate::{CpuState, Exec};

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

/// The context of an instruction whose memory operand is staged: a load's bytes are
/// read before the FPU runs and a store's bytes are written after it, to a destination
/// already known to be writable. The FPU state is then borrowed alone, with no copy of
/// it, and the compiled code of the JIT can do the memory accesses itself.
pub struct Staged {
    /// Loaded bytes (little-endian), or the bytes the FPU stored.
    pub mem: [u8; 10],
    /// How many bytes of `mem` were loaded.
    pub loaded: usize,
    /// How many bytes the FPU stored (0: none, e.g. blocked by an unmasked exception).
    pub stored: usize,
    /// EFLAGS, for FCMOVcc.
    pub eflags: u32,
    /// ZF, PF and CF as FCOMI & co. set them (OF, SF and AF clear).
    pub compare: Option<u32>,
    /// AX as FNSTSW AX sets it.
    pub ax: Option<u16>,
    ip: (u32, u16),
    dp: (u32, u16),
}

impl Staged {
    /// The context of instruction `i` whose memory operand (if any) is at `seg:off`.
    pub fn new(s: &CpuState, i: &Instruction, seg: usize, off: u64) -> Staged {
        Staged {
            mem: [0; 10],
            loaded: 0,
            stored: 0,
            eflags: 0,
            compare: None,
            ax: None,
            ip: (i.ip32(), s.seg[CS].selector),
            dp: (off as u32, s.seg[seg].selector),
        }
    }

    /// Stages the `n` loaded bytes of `v`.
    pub fn load(&mut self, v: u64, n: usize) {
        self.mem[..8].copy_from_slice(&v.to_le_bytes());
        self.loaded = n;
    }

    /// The first 8 bytes of the operand (loaded, or stored by the FPU), little-endian.
    pub fn bits(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.mem[..8]);
        u64::from_le_bytes(b)
    }
}

impl X87Context for Staged {
    type Fault = Exception;

    fn read_mem(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Exception> {
        match self.mem.get(..buf.len()) {
            Some(b) if offset == 0 && buf.len() <= self.loaded => {
                buf.copy_from_slice(b);
                Ok(())
            }
            // `Op::mem_use` says what is staged; anything else is a bug in it.
            _ => {
                debug_assert!(false, "x87 read outside the staged operand");
                Err(Exception::UD)
            }
        }
    }

    fn write_mem(&mut self, offset: u32, data: &[u8]) -> Result<(), Exception> {
        match self.mem.get_mut(..data.len()) {
            Some(b) if offset == 0 => {
                b.copy_from_slice(data);
                self.stored = data.len();
                Ok(())
            }
            _ => {
                debug_assert!(false, "x87 write outside the staged operand");
                Err(Exception::UD)
            }
        }
    }

    fn eflags(&self) -> u32 {
        self.eflags
    }

    fn set_compare_flags(&mut self, zf: bool, pf: bool, cf: bool) {
        let v = (zf as u64 * ZF) | (pf as u64 * PF) | (cf as u64 * CF);
        self.compare = Some(v as u32);
    }

    fn set_ax(&mut self, value: u16) {
        self.ax = Some(value);
    }

    // Only the state-image instructions, which are never staged, ask these two.
    fn real_mode(&self) -> bool {
        false
    }

    fn operand_size_16(&self) -> bool {
        false
    }

    fn instruction_pointer(&self) -> (u32, u16) {
        self.ip
    }

    fn data_pointer(&self) -> (u32, u16) {
        self.dp
    }
}

/// Whether compiled code can stage operation `op`: its memory operand, if any, is
/// one load or store of at most 8 bytes (the interpreter stages 10-byte ones too).
pub fn stageable(op: Op) -> bool {
    match op.mem_use() {
        MemUse::None => true,
        MemUse::Load(n) | MemUse::Store(n) => n <= 8,
        MemUse::Image => false,
    }
}

/// Whether the FPU may run a waiting instruction now without an exception of the CPU's
/// own: CR0.EM and CR0.TS clear, and no unmasked FPU exception pending (which a
/// waiting instruction reports first).
pub fn ready(s: &CpuState) -> bool {
    s.cr0 & (CR0_EM | CR0_TS) == 0 && !s.fpu.exception_pending()
}

/// Runs a staged instruction: `op` is `classify(i.code())`, `fop` is `fop_of(i)` (or
/// anything for a control instruction), and a load's bytes are in `st`. The caller
/// applies `st.compare`, `st.ax` and `st.stored` afterwards.
pub fn run_staged(s: &mut CpuState, op: Op, i: &Instruction, fop: u16, st: &mut Staged) -> Fault {
    s.fpu.execute_op(op, i, fop, st).map_err(fault)
}

/// The exception for an FPU error: the memory fault, or #UD for an instruction the
/// FPU does not implement.
fn fault(e: X87Error<Exception>) -> Exception {
    match e {
        X87Error::Fault(x) => x,
        X87Error::Unimplemented(code) => unimplemented(code),
    }
}

fn unimplemented(code: Code) -> Exception {
    tracing::warn!(target: "ox86::cpu", "x87 instruction {code:?} not implemented: #UD");
    Exception::UD
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
    let Some(op) = classify(i.code()) else {
        return Err(unimplemented(i.code()));
    };
    let mem_use = op.mem_use();
    let (seg, off, mask) = if mem_use != MemUse::None {
        let (s, o) = e.mem_operand(i);
        (s, o, super::operand::addr_mask(i))
    } else {
        (crate::state::DS, 0, 0xffff_ffff)
    };
    let mut st = Staged::new(e.s, i, seg, off);
    match mem_use {
        MemUse::None => {
            if matches!(op, Op::Cmov(_)) {
                st.eflags = e.s.eflags() as u32;
            }
        }
        MemUse::Load(n) => {
            let n = usize::from(n);
            match n {
                2 => st.load(u64::from(e.read::<u16>(seg, off)?), 2),
                4 => st.load(u64::from(e.read::<u32>(seg, off)?), 4),
                8 => st.load(e.read::<u64>(seg, off)?, 8),
                _ => {
                    e.read_bytes(seg, off, &mut st.mem[..n])?;
                    st.loaded = n;
                }
            }
        }
        MemUse::Store(n) => {
            // A store the FPU blocks (unmasked exception) must not fault: only a
            // destination known to be writable is staged.
            if e.probe_write(seg, off, u32::from(n)).is_err() {
                return exec_unstaged(e, i, seg, off, mask);
            }
        }
        MemUse::Image => return exec_unstaged(e, i, seg, off, mask),
    }
    let fop = if op.is_control() { 0 } else { fop_of(i) };
    let data = (mem_use != MemUse::None).then_some(st.dp);
    match e
        .s
        .fpu
        .execute_fast(op, sti_of(i), st.bits(), fop, st.ip, data)
    {
        Fast::Done => return Ok(()),
        Fast::Store(b) => {
            st.mem[..8].copy_from_slice(&b.to_le_bytes());
            if let MemUse::Store(n) = mem_use {
                st.stored = usize::from(n);
            }
        }
        Fast::NotDone => run_staged(e.s, op, i, fop, &mut st)?,
    }
    if let Some(ax) = st.ax {
        e.s.set_r16(crate::state::RAX, ax);
    }
    if let Some(v) = st.compare {
        e.s.set_arith_flags(ZF | PF | CF | OF | SF | AF, u64::from(v));
    }
    // Probed above: these cannot fault.
    match st.stored {
        0 => {}
        2 => e.write::<u16>(seg, off, st.bits() as u16)?,
        4 => e.write::<u32>(seg, off, st.bits() as u32)?,
        8 => e.write::<u64>(seg, off, st.bits())?,
        n => e.write_bytes(seg, off, &st.mem[..n])?,
    }
    Ok(())
}

/// Runs an instruction with the whole CPU as its context (state images, and stores
/// to a destination that may fault).
fn exec_unstaged(e: &mut Exec<'_>, i: &Instruction, seg: usize, off: u64, mask: u64) -> Fault {
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
    r.map_err(fault)
}
