//! The mode a region is compiled for: what compiled code takes as fixed about the CPU
//! state, and part of every region's key, so that a mode change selects other code.

use ox86_cpu::state::{AC, CR0_AM, CS, DS, ES, SEG_READ, SEG_WRITE, SS};
use ox86_cpu::{CpuState, Exec};

/// The mode bits of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mode {
    /// Code size in bits (16 or 32).
    pub bitness: u32,
    /// Current privilege level (selects the TLB table).
    pub cpl: u32,
    /// SS is a 32-bit stack (ESP rather than SP).
    pub ss32: bool,
    /// DS, ES and SS are flat: base 0, limit 4 GiB, readable and writable, in protected
    /// mode; their accesses skip segmentation.
    pub flat: bool,
    /// A trace is being recorded: the code writes a record at each guest block it
    /// runs (see `ox86_cpu::trace`).
    pub traced: bool,
    /// The trace records memory accesses too: the code writes a record for each.
    pub traced_mem: bool,
}

impl Mode {
    /// The mode of `s`, or None when compiled code must not run (alignment checking on).
    #[inline]
    pub fn of(s: &CpuState) -> Option<Mode> {
        if s.cpl == 3 && s.cr0 & CR0_AM != 0 && s.flags & AC != 0 {
            return None;
        }
        let flat = s.protected()
            && !s.v86()
            && [DS, ES, SS].iter().all(|&k| {
                let g = &s.seg[k];
                g.base == 0 && g.lo == 0 && g.hi == 0xffff_ffff && g.rights == SEG_READ | SEG_WRITE
            });
        Some(Mode {
            bitness: if s.seg[CS].big() { 32 } else { 16 },
            cpl: s.cpl,
            ss32: s.seg[SS].big(),
            flat,
            traced: false,
            traced_mem: false,
        })
    }

    /// The mode compiled code for `ex` runs in, or None as for [`Mode::of`].
    #[inline]
    pub fn of_exec(ex: &Exec<'_>) -> Option<Mode> {
        let m = Mode::of(ex.s)?;
        Some(Mode {
            traced: ex.trace.is_some(),
            traced_mem: ex.trace.is_some() && ex.trace_mem,
            ..m
        })
    }

    /// The mode as one byte (for the translation cache's file names): bit 0 a 32-bit
    /// code segment, bits 1-2 the CPL, bit 3 a 32-bit stack, bit 4 flat, bit 5 traced,
    /// bit 6 traced with memory accesses.
    pub fn bits(&self) -> u8 {
        u8::from(self.bitness == 32)
            | ((self.cpl as u8 & 3) << 1)
            | (u8::from(self.ss32) << 3)
            | (u8::from(self.flat) << 4)
            | (u8::from(self.traced) << 5)
            | (u8::from(self.traced_mem) << 6)
    }

    /// Whether accesses use the user TLB table.
    pub fn user(&self) -> bool {
        self.cpl == 3
    }

    /// 32-bit flat protected mode at CPL 0 (for tests).
    #[cfg(test)]
    pub const FLAT32: Mode = Mode {
        bitness: 32,
        cpl: 0,
        ss32: true,
        flat: true,
        traced: false,
        traced_mem: false,
    };
}
