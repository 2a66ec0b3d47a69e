//! Access groups: the memory operands of a region that address `[reg + disp]` in a
//! flat segment, where `reg` holds the value it had at the region's entry (no path
//! from the entry to the access may have written it).
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
    /// For each instruction of each block, the registers some path from the entry may
    /// have written by its end: after it, the groups of those registers have no
    /// accesses left (and are not checked again).
    pub written_after: Vec<Vec<u8>>,
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

/// The memory operand of `i` an access group can hold (see [`simple_access`]), if
/// `i` accesses memory through it (LEA and hinting NOPs do not).
fn groupable(i: &iced_x86::Instruction) -> Option<(usize, i64)> {
    let has_mem = (0..i.op_count()).any(|n| i.op_kind(n) == OpKind::Memory);
    if !has_mem || matches!(kind(i), Kind::Lea | Kind::Nop) {
        return None;
    }
    simple_access(i)
}

/// What the data-flow passes over a region need, computed once: the general
/// registers (a bit each, EAX..EDI) each instruction writes or may write, and each
/// block's successors in the region.
struct Flow {
    writes: Vec<Vec<u8>>,
    succs: Vec<Vec<usize>>,
}

impl Flow {
    fn of(region: &Region, f: &mut InstructionInfoFactory) -> Flow {
        let writes = region
            .blocks
            .iter()
            .map(|b| b.insns.iter().map(|d| insn_writes(f, &d.insn)).collect())
            .collect();
        let succs = region.blocks.iter().map(|b| region.successors(b)).collect();
        Flow { writes, succs }
    }

    /// The registers block `b` writes.
    fn block_writes(&self, b: usize) -> u8 {
        self.writes[b].iter().fold(0, |w, x| w | x)
    }

    /// For each block, the registers that some path from the region's entry may have
    /// written before the block starts (the entry's own: what its predecessors inside
    /// the region write, as the entry can be reached again by a backward edge).
    fn written_before(&self) -> Vec<u8> {
        let own: Vec<u8> = (0..self.succs.len())
            .map(|b| self.block_writes(b))
            .collect();
        let mut inp = vec![0u8; self.succs.len()];
        loop {
            let mut changed = false;
            for (b, ss) in self.succs.iter().enumerate() {
                let out = inp[b] | own[b];
                for &s in ss {
                    if inp[s] | out != inp[s] {
                        inp[s] |= out;
                        changed = true;
                    }
                }
            }
            if !changed {
                return inp;
            }
        }
    }
}

/// The general registers instruction `i` writes or may write.
fn insn_writes(f: &mut InstructionInfoFactory, i: &iced_x86::Instruction) -> u8 {
    let mut w = 0u8;
    for u in f.info(i).used_registers() {
        if matches!(u.access(), OpAccess::Read | OpAccess::CondRead) {
            continue;
        }
        if let Some((idx, ..)) = gpr(u.register().full_register32()) {
            w |= 1 << idx;
        }
    }
    w
}

/// The blocks reachable from block `h` along `edges` (`h` itself only if on a cycle).
fn reach(h: usize, edges: &[Vec<usize>]) -> Vec<bool> {
    let mut seen = vec![false; edges.len()];
    let mut work = edges[h].clone();
    while let Some(b) = work.pop() {
        if !std::mem::replace(&mut seen[b], true) {
            work.extend_from_slice(&edges[b]);
        }
    }
    seen
}

/// Groups the memory operands of `region` (compiled with flat DS, ES and SS): an
/// access is in its base register's group if no path from the region's entry to it
/// may have written that register, so that the register holds there what it held at
/// the entry, where the group is checked.
pub fn plan(region: &Region) -> Plan {
    let mut f = InstructionInfoFactory::new();
    let flow = Flow::of(region, &mut f);
    let before = flow.written_before();
    // Registers some instruction of the region writes, and the blocks on a cycle.
    let all_written = (0..region.blocks.len()).fold(0u8, |w, b| w | flow.block_writes(b));
    let cyclic: Vec<bool> = (0..region.blocks.len())
        .map(|h| reach(h, &flow.succs)[h])
        .collect();
    let mut groups: Vec<Group> = Vec::new();
    let mut of_insn = Vec::new();
    let mut written_after = Vec::new();
    for (bi, b) in region.blocks.iter().enumerate() {
        let mut v = vec![None; b.insns.len()];
        let mut after = vec![0u8; b.insns.len()];
        let mut written = before[bi];
        for (k, d) in b.insns.iter().enumerate() {
            let i = &d.insn;
            let was = written;
            written |= flow.writes[bi][k];
            after[k] = written;
            // A register the region writes somewhere groups only accesses in loops,
            // which run many times per check: a check costs about what two TLB look-ups
            // do, so straight-line code gains little (in one set of runs, grouping it
            // too made bench.elf 3-5% slower; in others, no difference).
            let member =
                |r: usize| was & (1 << r) == 0 && (all_written & (1 << r) == 0 || cyclic[bi]);
            let Some((reg, disp)) = groupable(i).filter(|a| member(a.0)) else {
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
        written_after.push(after);
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
    Plan {
        of_insn,
        groups,
        written_after,
    }
}

/// The head of a loop of `region` to leave out of it, if any: a loop (the blocks on
/// a cycle through a block other than the entry) with two or more accesses
/// `[reg + disp]` whose base register no block of the loop writes, but that the code
/// before the loop may have written. Entered at its head, a region of its own groups
/// those accesses, checked once per entry into the loop instead of a TLB look-up per
/// access and iteration.
pub fn loop_to_split(region: &Region) -> Option<u64> {
    let n = region.blocks.len();
    let flow = Flow::of(region, &mut InstructionInfoFactory::new());
    let before = flow.written_before();
    let succs = &flow.succs;
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (b, ss) in succs.iter().enumerate() {
        for &s in ss {
            preds[s].push(b);
        }
    }
    for h in 1..n {
        let (fwd, bwd) = (reach(h, succs), reach(h, &preds));
        if !fwd[h] || (fwd[0] && bwd[0]) {
            continue; // Not on a cycle, or the entry is on it.
        }
        let body: Vec<usize> = (0..n).filter(|&b| fwd[b] && bwd[b]).collect();
        let mut written = 0u8;
        let mut count = [0u32; 8];
        for &b in &body {
            written |= flow.block_writes(b);
            for d in &region.blocks[b].insns {
                if let Some((reg, _)) = groupable(&d.insn) {
                    count[reg] += 1;
                }
            }
        }
        let split = (0..8).any(|r| {
            let bit = 1u8 << r;
            count[r] >= 2 && written & bit == 0 && before[h] & bit != 0
        });
        if split {
            return Some(region.blocks[h].eip);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mode::Mode;
    use crate::region::{Entry, PAGE};

    fn region_at(code: &[u8], off: usize) -> Region {
        let mut page = vec![0xf4u8; PAGE];
        page[..code.len()].copy_from_slice(code);
        let e = Entry {
            eip: 0x1000 + off as u64,
            page_off: off,
            cs_hi: u32::MAX as u64,
            mode: Mode::FLAT32,
        };
        Region::decode(&page, None, &e, 8)
    }

    fn region(code: &[u8]) -> Region {
        region_at(code, 0)
    }

    /// push ebp; mov ebp,esp; sub esp,8;
    /// l: mov eax,[ebp-4]; add eax,[ebp-8]; mov [ebp-4],eax; (extra); dec ecx; jnz l;
    /// mov esp,ebp; pop ebp; ret
    fn function(extra: &[u8]) -> Vec<u8> {
        let mut c = vec![0x55, 0x89, 0xe5, 0x83, 0xec, 0x08];
        c.extend_from_slice(&[0x8b, 0x45, 0xfc, 0x03, 0x45, 0xf8, 0x89, 0x45, 0xfc]);
        c.extend_from_slice(extra);
        let back = 6i64 - (c.len() as i64 + 3);
        c.extend_from_slice(&[0x49, 0x75, back as u8, 0x89, 0xec, 0x5d, 0xc3]);
        c
    }

    #[test]
    fn a_loop_after_a_prologue_is_a_region_of_its_own() {
        // Entered at the function, the prologue writes EBP: the loop is left out (the
        // first block runs on into the first iteration, then leaves or returns).
        let r = region(&function(&[]));
        assert_eq!(r.blocks.len(), 2, "the first block and the epilogue");
        assert!(!r.index.contains_key(&0x1006));
        assert_eq!(loop_to_split(&r), None);
        // Entered at the loop, its three [ebp-n] accesses form a group, though the
        // epilogue after the loop writes EBP.
        let r = region_at(&function(&[]), 6);
        assert_eq!(r.blocks.len(), 2);
        let p = plan(&r);
        assert_eq!(
            p.groups,
            [Group {
                reg: 5,
                lo: -8,
                end: 0,
                write: true,
                count: 3
            }]
        );
        assert_eq!(p.of_insn[0], [Some(0), Some(0), Some(0), None, None]);
        // After the epilogue's POP EBP, EBP's group is not checked again.
        assert_eq!(p.written_after[1][1] & (1 << 5), 1 << 5);
        assert_eq!(p.written_after[0][4] & (1 << 5), 0);
    }

    #[test]
    fn a_loop_that_writes_its_base_stays_in_the_region() {
        // inc ebp; dec ebp inside the loop: no group to gain.
        let r = region(&function(&[0x45, 0x4d]));
        assert_eq!(r.blocks.len(), 3, "prologue, loop and epilogue");
        assert_eq!(loop_to_split(&r), None);
        assert!(plan(&r).groups.is_empty());
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
