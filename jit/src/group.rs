//! Access groups: the memory operands of a region that address `[reg + disp]` in a
//! flat segment, where `reg` is a register no instruction of the region writes.
//!
//! Loops read and write stack frames and structures this way many times per
//! iteration (`[esp+0Ch]`, `[edi+4]`, `[ebp-10h]`). The translation checks each group
//! once, at the region's entry: the whole span of displacements on one page, and that
//! page's TLB entry valid for the group's kind of access (writes, if any access
//! writes). Then every access of the group is one addition away from its host
//! address. When the check fails, each access takes the usual TLB path, so the result
//! is the same either way; only the cost differs.
//!
//! Nothing in the region can change the TLB between the check and an access: lowered
//! instructions only touch memory through it, and every slow path leaves the region.
//! An instruction run by a helper may change the TLB and go on in the region: the
//! groups are checked again after it (and the region left if a check fails).

use iced_x86::{InstructionInfoFactory, OpAccess, OpKind, Register};
use ox86_cpu::exec::operand::seg_index;
use ox86_cpu::state::{DS, ES, SS};

use crate::lower::{gpr, kind, Kind};
use crate::region::Region;

/// The span of one group's accesses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    /// The base register (EAX..EDI).
    pub reg: usize,
    /// Lowest displacement.
    pub lo: i64,
    /// Highest displacement plus its access size.
    pub end: i64,
    /// Some access writes.
    pub write: bool,
    /// Accesses.
    pub count: u32,
}

/// The groups of a region.
#[derive(Debug, Default)]
pub struct Plan {
    /// For each instruction of each block, the group of its memory operand (groups of
    /// one access are left out: nothing to share).
    pub of_insn: Vec<Vec<Option<usize>>>,
    /// The groups.
    pub groups: Vec<Group>,
}

/// The base register and displacement of the memory operand of `i` if it is
/// `[reg32 + disp]` of 1, 2 or 4 bytes in DS, ES or SS.
fn simple_access(i: &iced_x86::Instruction) -> Option<(usize, i64)> {
    let (reg, size, high) = gpr(i.memory_base())?;
    let bytes = i.memory_size().size();
    let ok = size == 4
        && !high
        && i.memory_index() == Register::None
        && matches!(bytes, 1 | 2 | 4)
        && matches!(seg_index(i.memory_segment()), DS | ES | SS);
    ok.then(|| (reg, i64::from(i.memory_displacement32() as i32)))
}

/// Groups the memory operands of `region` (compiled with flat DS, ES and SS).
pub fn plan(region: &Region) -> Plan {
    let mut f = InstructionInfoFactory::new();
    let mut written = 0u8;
    for d in region.blocks.iter().flat_map(|b| b.insns.iter()) {
        for u in f.info(&d.insn).used_registers() {
            if matches!(u.access(), OpAccess::Read | OpAccess::CondRead) {
                continue;
            }
            if let Some((idx, ..)) = gpr(u.register().full_register32()) {
                written |= 1 << idx;
            }
        }
    }
    let mut groups: Vec<Group> = Vec::new();
    let mut of_insn = Vec::new();
    for b in &region.blocks {
        let mut v = vec![None; b.insns.len()];
        for (k, d) in b.insns.iter().enumerate() {
            let i = &d.insn;
            let has_mem = (0..i.op_count()).any(|n| i.op_kind(n) == OpKind::Memory);
            if !has_mem || matches!(kind(i), Kind::Lea | Kind::Nop) {
                continue;
            }
            let Some((reg, disp)) = simple_access(i).filter(|a| written & (1 << a.0) == 0) else {
                continue;
            };
            let size = i.memory_size().size() as i64;
            let write = f.info(i).used_memory().iter().any(|m| {
                !matches!(m.access(), OpAccess::Read | OpAccess::CondRead)
                    && m.base() == i.memory_base()
            });
            let g = match groups.iter().position(|g| g.reg == reg) {
                Some(g) => g,
                None => {
                    groups.push(Group {
                        reg,
                        lo: disp,
                        end: disp + size,
                        write: false,
                        count: 0,
                    });
                    groups.len() - 1
                }
            };
            let gr = &mut groups[g];
            gr.lo = gr.lo.min(disp);
            gr.end = gr.end.max(disp + size);
            gr.write |= write;
            gr.count += 1;
            v[k] = Some(g);
        }
        of_insn.push(v);
    }
    // One access has nothing to share; a span of a page or more is never on one page.
    let useless: Vec<bool> = groups
        .iter()
        .map(|g| g.count < 2 || g.end - g.lo >= 4096)
        .collect();
    for x in of_insn.iter_mut().flatten() {
        if x.is_some_and(|g| useless[g]) {
            *x = None;
        }
    }
    Plan { of_insn, groups }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mode::Mode;
    use crate::region::{Entry, PAGE};

    fn region(code: &[u8]) -> Region {
        let mut page = vec![0xf4u8; PAGE];
        page[..code.len()].copy_from_slice(code);
        let e = Entry {
            eip: 0x1000,
            page_off: 0,
            cs_hi: u32::MAX as u64,
            mode: Mode::FLAT32,
        };
        Region::decode(&page, None, &e, 8)
    }

    #[test]
    fn groups_are_of_registers_the_region_never_writes() {
        // l: mov eax,[ebp-10h]; add [ebp-1Ch],eax; mov ecx,[esi+4]; cmp [edi+8],ecx;
        //    mov edx,[edi+0Ch]; mov [esi+10h],edx; inc esi; dec ebx; jnz l; ret
        let r = region(&[
            0x8b, 0x45, 0xf0, 0x01, 0x45, 0xe4, 0x8b, 0x4e, 0x04, 0x39, 0x4f, 0x08, 0x8b, 0x57,
            0x0c, 0x89, 0x56, 0x10, 0x46, 0x4b, 0x75, 0xea, 0xc3,
        ]);
        let p = plan(&r);
        assert_eq!(
            p.groups[0],
            Group {
                reg: 5,
                lo: -0x1c,
                end: -0xc,
                write: true,
                count: 2
            }
        );
        assert_eq!(
            p.groups[1],
            Group {
                reg: 7,
                lo: 8,
                end: 16,
                write: false,
                count: 2
            }
        );
        // ESI is written (INC): its accesses take the TLB path.
        assert_eq!(
            p.of_insn[0][..6],
            [Some(0), Some(0), None, Some(1), Some(1), None]
        );
        // An instruction run by a helper (BSWAP) writes EBX: its accesses take the TLB
        // path; EBP's still form a group.
        let r = region(&[
            0x8b, 0x45, 0xf0, 0x0f, 0xcb, 0x01, 0x45, 0xe4, 0x8b, 0x03, 0x8b, 0x43, 0x04, 0xc3,
        ]);
        let p = plan(&r);
        assert_eq!(p.groups.len(), 1);
        let flat: Vec<Option<usize>> = p.of_insn.iter().flatten().copied().collect();
        assert_eq!(flat, [Some(0), None, Some(0), None, None, None], "{p:?}");
    }
}
