//! The host debugger's stop points: breakpoints and watchpoints that the engine keeps
//! (nothing is written into guest memory, and the guest's own DR0-DR7 are untouched),
//! any number of them.
//!
//! Breakpoints are linear addresses. The run loop looks for them only on pages that
//! hold one: there it runs the interpreter and checks each instruction's address;
//! elsewhere, compiled code runs as usual (the JIT neither enters nor chains to code on
//! such a page). Watchpoints are linear ranges: the TLB sends every access to a page
//! that holds one down the slow path, in both engines, where it is compared with them;
//! a hit stops the run after the instruction that made the access.

use std::collections::BTreeSet;

use ox86_mmu::PAGE_MASK;

/// What accesses a watchpoint stops on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WatchKind {
    /// Reads.
    Read,
    /// Writes.
    Write,
    /// Reads and writes.
    Access,
}

/// A watchpoint: accesses of `kind` to `[addr, addr + len)` (linear) stop the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Watchpoint {
    /// First byte.
    pub addr: u64,
    /// Bytes watched (at least 1).
    pub len: u64,
    /// Accesses that stop.
    pub kind: WatchKind,
}

/// Why the debugger's stop points stopped the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebugStop {
    /// The next instruction is at a breakpoint (linear address).
    Breakpoint(u64),
    /// The instruction that just completed accessed a watched range.
    Watch {
        /// The watchpoint.
        watch: Watchpoint,
        /// Whether the access was a write.
        write: bool,
    },
}

/// The host debugger's breakpoints and watchpoints, and the stop they caused.
#[derive(Debug, Default, Clone)]
pub struct StopPoints {
    breakpoints: BTreeSet<u64>,
    watchpoints: Vec<Watchpoint>,
    /// Set (with `hit`) when a stop point was reached: the run loop returns.
    stop: bool,
    /// What was reached.
    hit: Option<DebugStop>,
    /// A breakpoint at this linear address does not stop the first instruction run
    /// (the run resumes from it).
    pub resume_at: Option<u64>,
    /// Changes with every change to the breakpoints (compiled code chained to a page
    /// that gained one must be unchained).
    pub epoch: u64,
    /// Whether anything is set (the run loop's one test when nothing is).
    armed: bool,
}

impl StopPoints {
    /// Adds a breakpoint at linear address `lin`; false if one was there.
    pub fn add_breakpoint(&mut self, lin: u64) -> bool {
        self.epoch += 1;
        // A breakpoint set after a run's start is not passed by it.
        self.resume_at = None;
        let added = self.breakpoints.insert(lin & 0xffff_ffff);
        self.rearm();
        added
    }

    /// Removes the breakpoint at `lin`; false if there was none.
    pub fn remove_breakpoint(&mut self, lin: u64) -> bool {
        self.epoch += 1;
        let removed = self.breakpoints.remove(&(lin & 0xffff_ffff));
        self.rearm();
        removed
    }

    /// Adds a watchpoint; false if the same one was there. The TLB must be flushed
    /// after it (see [`StopPoints::watches_page`]).
    pub fn add_watchpoint(&mut self, w: Watchpoint) -> bool {
        let w = Watchpoint {
            len: w.len.max(1),
            ..w
        };
        if self.watchpoints.contains(&w) {
            return false;
        }
        self.watchpoints.push(w);
        self.rearm();
        true
    }

    /// Removes a watchpoint; false if there was none.
    pub fn remove_watchpoint(&mut self, w: Watchpoint) -> bool {
        let w = Watchpoint {
            len: w.len.max(1),
            ..w
        };
        let before = self.watchpoints.len();
        self.watchpoints.retain(|x| *x != w);
        self.rearm();
        before != self.watchpoints.len()
    }

    /// The breakpoints, in address order.
    pub fn breakpoints(&self) -> impl Iterator<Item = u64> + '_ {
        self.breakpoints.iter().copied()
    }

    /// The watchpoints.
    pub fn watchpoints(&self) -> &[Watchpoint] {
        &self.watchpoints
    }

    /// Whether a stop point was reached (the run loop returns).
    #[inline(always)]
    pub fn stopped(&self) -> bool {
        self.stop
    }

    /// Whether any breakpoint or watchpoint is set (or a stop is pending).
    #[inline(always)]
    pub fn armed(&self) -> bool {
        self.armed
    }

    fn rearm(&mut self) {
        self.armed = !self.breakpoints.is_empty() || !self.watchpoints.is_empty() || self.stop;
    }

    /// Whether any breakpoint is set.
    #[inline(always)]
    pub fn has_breakpoints(&self) -> bool {
        !self.breakpoints.is_empty()
    }

    /// Whether the page of linear address `lin` holds a breakpoint.
    #[inline]
    pub fn page_has_breakpoint(&self, lin: u64) -> bool {
        let page = lin & 0xffff_ffff & !PAGE_MASK;
        self.breakpoints
            .range(page..=page | PAGE_MASK)
            .next()
            .is_some()
    }

    /// Whether the next instruction, at linear address `lin`, stops at a breakpoint
    /// (and records the stop). The first instruction of a run resumed from a
    /// breakpoint passes it.
    #[inline]
    pub fn check_breakpoint(&mut self, lin: u64) -> bool {
        let lin = lin & 0xffff_ffff;
        if self.resume_at.take() == Some(lin) || !self.breakpoints.contains(&lin) {
            return false;
        }
        self.stop = true;
        self.armed = true;
        self.hit = Some(DebugStop::Breakpoint(lin));
        true
    }

    /// Whether the page at linear address `page` holds a watched byte (its accesses
    /// must take the slow path).
    #[inline]
    pub fn watches_page(&self, page: u64) -> bool {
        self.watchpoints
            .iter()
            .any(|w| w.addr < page + PAGE_MASK + 1 && page < w.addr.saturating_add(w.len))
    }

    /// An access of `[lin, lin + size)`: records a stop if it hits a watchpoint.
    #[inline(always)]
    pub fn note_access(&mut self, lin: u64, size: u64, write: bool) {
        if self.armed {
            self.note_watched(lin, size, write);
        }
    }

    #[cold]
    #[inline(never)]
    fn note_watched(&mut self, lin: u64, size: u64, write: bool) {
        if self.watchpoints.is_empty() || self.stop {
            return;
        }
        let hit = self.watchpoints.iter().find(|w| {
            let kind = match w.kind {
                WatchKind::Read => !write,
                WatchKind::Write => write,
                WatchKind::Access => true,
            };
            kind && lin < w.addr.saturating_add(w.len) && w.addr < lin + size
        });
        if let Some(&watch) = hit {
            self.stop = true;
            self.armed = true;
            self.hit = Some(DebugStop::Watch { watch, write });
        }
    }

    /// Forgets a stop recorded by an instruction that then faulted (it did not
    /// complete; it runs again after the fault is handled).
    #[inline]
    pub fn cancel_watch_hit(&mut self) {
        if matches!(self.hit, Some(DebugStop::Watch { .. })) {
            self.hit = None;
            self.stop = false;
            self.rearm();
        }
    }

    /// Takes the stop recorded, if any.
    pub fn take_stop(&mut self) -> Option<DebugStop> {
        self.stop = false;
        self.rearm();
        self.hit.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breakpoints_by_page_and_resume() {
        let mut s = StopPoints::default();
        assert!(!s.has_breakpoints());
        assert!(s.add_breakpoint(0xc000_1234));
        assert!(!s.add_breakpoint(0xc000_1234));
        assert!(s.page_has_breakpoint(0xc000_1000));
        assert!(s.page_has_breakpoint(0xc000_1fff));
        assert!(!s.page_has_breakpoint(0xc000_2000));
        assert!(!s.page_has_breakpoint(0xc000_0fff));
        assert!(!s.check_breakpoint(0xc000_1233));
        assert!(s.check_breakpoint(0xc000_1234));
        assert_eq!(s.take_stop(), Some(DebugStop::Breakpoint(0xc000_1234)));
        s.resume_at = Some(0xc000_1234);
        assert!(!s.check_breakpoint(0xc000_1234), "resumed from it");
        assert!(s.check_breakpoint(0xc000_1234), "passed once only");
        s.take_stop();
        assert!(s.remove_breakpoint(0xc000_1234));
        assert!(!s.page_has_breakpoint(0xc000_1000));
    }

    #[test]
    fn watchpoints_by_kind_and_range() {
        let mut s = StopPoints::default();
        let w = Watchpoint {
            addr: 0x1ffe,
            len: 4,
            kind: WatchKind::Write,
        };
        assert!(s.add_watchpoint(w));
        assert!(s.watches_page(0x1000) && s.watches_page(0x2000));
        assert!(!s.watches_page(0x3000) && !s.watches_page(0));
        s.note_access(0x1ffe, 4, false);
        assert!(!s.stopped(), "a read does not stop a write watchpoint");
        s.note_access(0x2002, 1, true);
        assert!(!s.stopped(), "past the end");
        s.note_access(0x1ffc, 3, true);
        assert_eq!(
            s.take_stop(),
            Some(DebugStop::Watch {
                watch: w,
                write: true
            })
        );
        s.note_access(0x2001, 1, true);
        s.cancel_watch_hit();
        assert!(!s.stopped() && s.hit.is_none());
        assert!(s.remove_watchpoint(w));
        assert!(!s.watches_page(0x1000));
    }
}
