//! Debug facilities: single-step traps (EFLAGS.TF), instruction breakpoints and data
//! breakpoints in DR0-DR3 under DR7, with DR6 status bits and EFLAGS.RF.
//!
//! While any of them is armed the run loop executes one instruction per dispatch and
//! asks this module before and after each. Pages that hold a data breakpoint have
//! their TLB tags forced onto the slow path, where accesses are compared with the
//! breakpoint ranges; other pages keep the fast path.

use crate::exception::{vec, Exception};
use crate::state::{RF, TF};
use crate::Exec;

/// DR6.BS: the #DB came from a single-step trap.
pub const DR6_BS: u64 = 1 << 14;

/// A breakpoint condition (DR7 R/W field).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Execute,
    Write,
    Io,
    ReadWrite,
}

/// The armed breakpoints of DR7: (index, kind, aligned address, length).
fn armed(dr: &[u64; 8]) -> impl Iterator<Item = (usize, Kind, u64, u64)> + '_ {
    let dr7 = dr[7];
    (0..4)
        .filter(move |i| dr7 & (3 << (2 * i)) != 0)
        .map(move |i| {
            let kind = match (dr7 >> (16 + 4 * i)) & 3 {
                0 => Kind::Execute,
                1 => Kind::Write,
                2 => Kind::Io,
                _ => Kind::ReadWrite,
            };
            let len = [1u64, 2, 8, 4][((dr7 >> (18 + 4 * i)) & 3) as usize];
            let addr = if kind == Kind::Execute {
                dr[i]
            } else {
                dr[i] & !(len - 1)
            };
            (i, kind, addr & 0xffff_ffff, len)
        })
}

impl Exec<'_> {
    /// Whether single-stepping or any breakpoint is armed.
    #[inline(always)]
    pub fn debug_armed(&self) -> bool {
        self.s.flags & TF != 0 || self.s.dr[7] & 0xff != 0
    }

    /// An instruction breakpoint at linear address `lin` (a fault, suppressed by RF).
    pub fn instruction_breakpoint(&mut self, lin: u64) -> Option<Exception> {
        if self.s.flags & RF != 0 {
            return None;
        }
        let hits = armed(&self.s.dr)
            .filter(|&(_, k, a, _)| k == Kind::Execute && a == lin)
            .fold(0u64, |m, (i, ..)| m | 1 << i);
        if hits == 0 {
            return None;
        }
        self.s.dr[6] = (self.s.dr[6] & !0xf) | hits;
        Some(Exception::new(vec::DB))
    }

    /// Whether a data access of `[lin, lin+size)` touches an armed data breakpoint.
    /// Records the hit for the trap after the instruction.
    pub fn note_data_access(&mut self, lin: u64, size: u64, write: bool) {
        if self.s.dr[7] & 0xff == 0 {
            return;
        }
        for (i, k, a, len) in armed(&self.s.dr) {
            let hit_kind = k == Kind::ReadWrite || (k == Kind::Write && write);
            if hit_kind && lin < a + len && a < lin + size {
                self.s.dbg_pending |= 1 << i;
            }
        }
    }

    /// Whether the page at `page` holds a data breakpoint (its accesses must go slow).
    pub fn page_has_data_breakpoint(&self, page: u64) -> bool {
        self.s.dr[7] & 0xff != 0
            && armed(&self.s.dr).any(|(_, k, a, len)| {
                matches!(k, Kind::Write | Kind::ReadWrite) && a < page + 4096 && page < a + len
            })
    }

    /// After an instruction ran with debugging armed: the #DB trap for a single step
    /// (TF was set when it started) or a data breakpoint, if any. RF, if it was set
    /// when the instruction started, has done its job and is cleared; RF set by the
    /// instruction itself (IRET) stays for the next one.
    pub fn debug_trap_after(
        &mut self,
        tf_before: bool,
        rf_before: bool,
        software_interrupt: bool,
    ) -> Option<Exception> {
        if rf_before {
            self.s.flags &= !RF;
        }
        let data = std::mem::take(&mut self.s.dbg_pending) as u64;
        let step = tf_before && !software_interrupt;
        if data == 0 && !step {
            return None;
        }
        let mut dr6 = self.s.dr[6] & !0xf;
        dr6 |= data;
        if step {
            dr6 |= DR6_BS;
        }
        self.s.dr[6] = dr6;
        Some(Exception::new(vec::DB))
    }
}
