//! x87 instructions in compiled code. Compiled code loads or stores the memory
//! operand through the inline TLB path and makes one direct call into the FPU, with
//! the operation classified and its FOP worked out when the region was decoded. No
//! GPR or flag is written back around the call: the FPU touches neither, except a
//! compare into EFLAGS and FNSTSW AX, whose results come back through the context.
//!
//! The helper declines (and the instruction's slow path runs it in the interpreter)
//! when CR0.EM/TS is set or an unmasked exception is pending, so #NM and #MF are
//! raised by the interpreter, precisely. A store's destination is translated for
//! writing before the call, so the FPU never changes state for a store that faults.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{I16, I64};
use cranelift_codegen::ir::InstBuilder;
use iced_x86::{Instruction, Register};
use ox86_cpu::exec::operand::seg_index;
use ox86_cpu::exec::x87 as fpu;
use ox86_x87::ops::{classify, MemUse, Op};
use ox86_x87::{fop_of, sti_of};

use crate::flagsrc::FlagSrc;
use crate::helpers::{JitCtx, X87_DONE, X87_STORE};
use crate::lower::simple_address;
use crate::symbols::{symbol, Sym};
use crate::translate::{Tx, MF};

/// An x87 instruction of a region, as its helper needs it.
pub struct X87Insn {
    /// The instruction.
    pub insn: Instruction,
    /// Its operation.
    pub op: Op,
    /// Its FOP (last-opcode) value.
    pub fop: u16,
    /// Segment of its memory operand (DS when it has none).
    pub seg: usize,
    /// Index i of its ST(i) operand.
    pub sti: usize,
}

impl X87Insn {
    /// The instruction's entry, if compiled code runs it through the FPU helper.
    pub fn new(i: &Instruction) -> Option<X87Insn> {
        if lowerable(i) != Some(true) {
            return None;
        }
        let op = classify(i.code())?;
        let seg = match op.mem_use() {
            MemUse::None => ox86_cpu::state::DS,
            _ => seg_index(i.memory_segment()),
        };
        Some(X87Insn {
            insn: *i,
            op,
            fop: if op.is_control() { 0 } else { fop_of(i) },
            seg,
            sti: sti_of(i),
        })
    }
}

/// For an x87 instruction, whether compiled code runs it through the FPU helper
/// (`Some(false)`: the interpreter's handler runs it); `None` for the rest.
pub fn lowerable(i: &Instruction) -> Option<bool> {
    let op = classify(i.code())?;
    Some(
        fpu::stageable(op)
            && !matches!(op, Op::Cmov(_) | Op::Wait)
            && (op.mem_use() == MemUse::None || simple_address(i)),
    )
}

impl Tx<'_, '_> {
    /// Emits an x87 instruction; false if the region has no entry for it.
    pub fn x87(&mut self, i: &Instruction) -> bool {
        let region = self.region;
        let Some(at) = region.x87.iter().position(|x| x.insn.ip() == i.ip()) else {
            return false;
        };
        let xi = &region.x87[at];
        let zero = self.b.ins().iconst(I64, 0);
        let (ea, loaded, dest) = match xi.op.mem_use() {
            MemUse::Load(n) => {
                let (seg, off) = self.mem(i);
                let v = self.load(seg, off, u32::from(n));
                let v = self.widen(v);
                (off, v, None)
            }
            MemUse::Store(n) => {
                let (seg, off) = self.mem(i);
                let lin = self.linear(seg, off, u32::from(n), true);
                let h = self.host(lin, u32::from(n), true);
                (off, zero, Some((lin, h, u32::from(n))))
            }
            MemUse::None | MemUse::Image => (zero, zero, None),
        };
        let f = symbol(self.b, Sym::X87);
        let p = symbol(self.b, Sym::X87Insn(at as u32));
        let ctx = self.ctx();
        let call = self
            .b
            .ins()
            .call_indirect(self.sigs.x87, f, &[ctx, p, ea, loaded]);
        let r = self.b.inst_results(call)[0];
        let bail = self.bail_block();
        let done = self.b.create_block();
        let out_off = std::mem::offset_of!(JitCtx, x87_out) as i32;
        if let Some((lin, h, n)) = dest {
            let store = self.b.create_block();
            let other = self.b.create_block();
            let is_store = self.b.ins().icmp_imm_s(IntCC::Equal, r, X87_STORE as i64);
            self.b.ins().brif(is_store, store, &[], other, &[]);
            self.b.switch_to_block(store);
            let v = self.b.ins().load(I64, MF, ctx, out_off);
            let v = self.narrow(v, n);
            self.store_at(lin, h, n, v);
            self.b.ins().jump(done, &[]);
            self.b.switch_to_block(other);
        }
        let is_done = self.b.ins().icmp_imm_s(IntCC::Equal, r, X87_DONE as i64);
        self.b.ins().brif(is_done, done, &[], bail, &[]);
        self.b.switch_to_block(done);
        match xi.op {
            Op::Compare { eflags: true, .. } => {
                let v = self.b.ins().load(I64, MF, ctx, out_off);
                self.flags = FlagSrc::Bits(v);
            }
            Op::StswAx => {
                let v = self.b.ins().load(I16, MF, ctx, out_off);
                self.set(Register::AX, v);
            }
            _ => {}
        }
        true
    }
}
