//! The addresses compiled code uses that are known only where the code is placed: the
//! dispatcher's context, the helpers, the region's decoded instructions, a heat cell,
//! the chain context, the frame of the next page. Compiled code names them as symbols
//! (`symbol_value`, never a constant), so that its bytes do not depend on the process
//! that compiled them: the translation cache on disk (`diskcache`) stores the bytes
//! and these fixups, and a later process patches in its own values.
//!
//! Every fixup is an absolute 64-bit address (Cranelift's `Abs8`, the form non-PIC
//! code uses for a symbol that is not colocated, on x86-64 and on aarch64).

use cranelift_codegen::binemit::Reloc;
use cranelift_codegen::ir::types::I64;
use cranelift_codegen::ir::{
    ExternalName, Function, GlobalValueData, InstBuilder, UserExternalName, Value,
};
use cranelift_codegen::FinalizedMachReloc;
use cranelift_codegen::FinalizedRelocTarget;
use cranelift_frontend::FunctionBuilder;

use crate::compiler::Request;
use crate::helpers;
use crate::region::Region;

/// Namespace of ox86's symbols in Cranelift's user external names.
const NAMESPACE: u32 = 0x0086;

const INSN: u32 = 1 << 28;
const X87_INSN: u32 = 2 << 28;
const INDEX: u32 = (1 << 28) - 1;

/// A symbol compiled code refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sym {
    /// The dispatcher's `JitCtx`.
    Ctx,
    /// `helpers::interp`.
    Interp,
    /// `helpers::eflags`.
    Eflags,
    /// `helpers::x87`.
    X87,
    /// The address of the region's heat cell.
    HeatCell,
    /// The number of the region's heat cell (a value, not an address).
    HeatId,
    /// The region's chain context, shifted into the high half of a chain tag.
    ChainTag,
    /// The physical frame of the next page, for instructions across the page end.
    NextFrame,
    /// The raw trace id of the region's first guest block (a value).
    TraceBase,
    /// Instruction `k` of guest block `b` (`DecodedInsn`).
    Insn { b: u16, k: u8 },
    /// Entry `i` of the region's lowered x87 instructions (`X87Insn`).
    X87Insn(u32),
}

impl Sym {
    /// The symbol's number.
    pub fn encode(self) -> u32 {
        match self {
            Sym::Ctx => 0,
            Sym::Interp => 1,
            Sym::Eflags => 2,
            Sym::X87 => 3,
            Sym::HeatCell => 4,
            Sym::HeatId => 5,
            Sym::ChainTag => 6,
            Sym::NextFrame => 7,
            Sym::TraceBase => 8,
            Sym::Insn { b, k } => INSN | (u32::from(b) << 8) | u32::from(k),
            Sym::X87Insn(i) => X87_INSN | (i & INDEX),
        }
    }

    /// The symbol numbered `n`, if any.
    pub fn decode(n: u32) -> Option<Sym> {
        Some(match n {
            0 => Sym::Ctx,
            1 => Sym::Interp,
            2 => Sym::Eflags,
            3 => Sym::X87,
            4 => Sym::HeatCell,
            5 => Sym::HeatId,
            6 => Sym::ChainTag,
            7 => Sym::NextFrame,
            8 => Sym::TraceBase,
            _ if n & !INDEX == INSN && (n & INDEX) >> 8 <= u32::from(u16::MAX) => Sym::Insn {
                b: ((n & INDEX) >> 8) as u16,
                k: n as u8,
            },
            _ if n & !INDEX == X87_INSN => Sym::X87Insn(n & INDEX),
            _ => return None,
        })
    }

    /// The symbol's value for region `region` compiled for `req`; None if the region
    /// or the request has no such thing (a corrupt fixup).
    pub fn value(self, region: &Region, req: &Request) -> Option<u64> {
        Some(match self {
            Sym::Ctx => req.ctx as u64,
            Sym::Interp => helpers::interp as *const () as usize as u64,
            Sym::Eflags => helpers::eflags as *const () as usize as u64,
            Sym::X87 => helpers::x87 as *const () as usize as u64,
            Sym::HeatCell => req.heat?.1 as u64,
            Sym::HeatId => u64::from(req.heat?.0),
            Sym::ChainTag => u64::from(req.chain?) << 32,
            Sym::NextFrame => req.next.as_ref()?.0,
            Sym::TraceBase => u64::from(req.trace?.0),
            Sym::Insn { b, k } => {
                let d = region
                    .blocks
                    .get(usize::from(b))?
                    .insns
                    .get(usize::from(k))?;
                d as *const _ as usize as u64
            }
            Sym::X87Insn(i) => region.x87.get(i as usize)? as *const _ as usize as u64,
        })
    }
}

/// The value of symbol `sym` in the function being built.
pub fn symbol(b: &mut FunctionBuilder<'_>, sym: Sym) -> Value {
    let name = b
        .func
        .declare_imported_user_function(UserExternalName::new(NAMESPACE, sym.encode()));
    let gv = b.create_global_value(GlobalValueData::Symbol {
        name: ExternalName::User(name),
        offset: 0.into(),
        colocated: false,
        tls: false,
    });
    b.ins().symbol_value(I64, gv)
}

/// A place in compiled code that holds a symbol's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fixup {
    /// Offset in the code of the 8 bytes to write.
    pub offset: u32,
    /// The symbol.
    pub sym: Sym,
    /// Added to the symbol's value.
    pub addend: i64,
}

/// The fixups of function `func`'s compiled code, from Cranelift's relocations; an
/// error names a relocation that is not an absolute address of one of our symbols.
pub fn fixups(func: &Function, relocs: &[FinalizedMachReloc]) -> Result<Vec<Fixup>, String> {
    relocs
        .iter()
        .map(|r| {
            let sym = match (&r.kind, &r.target) {
                (Reloc::Abs8, FinalizedRelocTarget::ExternalName(ExternalName::User(n))) => {
                    let name = &func.params.user_named_funcs()[*n];
                    (name.namespace == NAMESPACE)
                        .then(|| Sym::decode(name.index))
                        .flatten()
                }
                _ => None,
            };
            let sym = sym.ok_or_else(|| format!("unexpected relocation {r:?}"))?;
            Ok(Fixup {
                offset: r.offset,
                sym,
                addend: r.addend,
            })
        })
        .collect()
}

/// Writes the value of every fixup into `code` (the code of `region` compiled for
/// `req`). An error (a fixup outside the code, or a symbol the region does not have)
/// means the code must not run.
pub fn apply(
    code: &mut [u8],
    fixups: &[Fixup],
    region: &Region,
    req: &Request,
) -> Result<(), String> {
    for f in fixups {
        let v = f
            .sym
            .value(region, req)
            .ok_or_else(|| format!("no value for {:?}", f.sym))?;
        let at = f.offset as usize;
        let slot = code
            .get_mut(at..at.saturating_add(8))
            .filter(|s| s.len() == 8)
            .ok_or_else(|| format!("fixup at {at:#x} outside the code"))?;
        slot.copy_from_slice(&v.wrapping_add(f.addend as u64).to_le_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_round_trip_and_junk_is_refused() {
        let all = [
            Sym::Ctx,
            Sym::Interp,
            Sym::Eflags,
            Sym::X87,
            Sym::HeatCell,
            Sym::HeatId,
            Sym::ChainTag,
            Sym::NextFrame,
            Sym::TraceBase,
            Sym::Insn { b: 0, k: 0 },
            Sym::Insn { b: 7, k: 63 },
            Sym::Insn { b: 65535, k: 255 },
            Sym::X87Insn(0),
            Sym::X87Insn(12345),
        ];
        for s in all {
            assert_eq!(Sym::decode(s.encode()), Some(s), "{s:?}");
        }
        for n in [9, 10, 1000, 3 << 28, u32::MAX] {
            assert_eq!(Sym::decode(n), None, "{n:#x}");
        }
    }
}
