//! Optimisation in the background: while the compiler thread has nothing to do, quick
//! (tier 0) regions that have run are compiled again, optimised, one at a time, the
//! most run first.
//!
//! A region is compiled optimised once it has run `JitConfig::optimize_after`
//! instructions, which most code of a shell session never does: a kernel's fork, exec
//! and page-fault paths and a program's start-up run a few thousand times each, so a
//! session ran about 10% slower in quick code than in optimised code (measured by
//! optimising everything from the start, which costs the first run too much). What
//! the idle compiler optimises is installed as any optimised region is, and reaches
//! the translation cache, from which a later run loads the optimised code directly
//! (see `Jit::seen`). The requests are the coolest of the queue and only one is
//! queued at a time, so a region that becomes hot waits for at most one such
//! compilation.

/// Instructions a quick region must have run to be optimised in the background.
pub const MIN_RUN: u64 = 10_000;
/// Guest instructions between two scans of the regions for candidates.
const SCAN_EVERY: u64 = 20_000_000;

/// The regions left to optimise in the background.
#[derive(Debug, Default)]
pub struct Background {
    /// Region ids, the most run last.
    worklist: Vec<u32>,
    /// The instruction count before which no new scan is made.
    next_scan: u64,
}

impl Background {
    /// The next region to optimise at instruction count `icount`; `scan` lists the
    /// candidates, as (instructions run, region id), when the work list is empty and
    /// a scan is due. The caller checks that the region is still a candidate.
    pub fn next(&mut self, icount: u64, scan: impl FnOnce() -> Vec<(u64, u32)>) -> Option<u32> {
        if self.worklist.is_empty() {
            if icount < self.next_scan {
                return None;
            }
            self.next_scan = icount.saturating_add(SCAN_EVERY);
            let mut c = scan();
            c.retain(|&(ran, _)| ran >= MIN_RUN);
            c.sort_unstable();
            self.worklist = c.into_iter().map(|(_, id)| id).collect();
        }
        self.worklist.pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_run_first_and_scans_are_spaced() {
        let mut b = Background::default();
        let mut scans = 0;
        let mut scan = |v: Vec<(u64, u32)>| {
            scans += 1;
            v
        };
        let cands = vec![
            (MIN_RUN, 1),
            (MIN_RUN * 5, 2),
            (MIN_RUN - 1, 3),
            (MIN_RUN * 2, 4),
        ];
        assert_eq!(b.next(0, || scan(cands.clone())), Some(2));
        assert_eq!(b.next(1, || scan(cands.clone())), Some(4));
        assert_eq!(b.next(2, || scan(cands.clone())), Some(1));
        // Region 3 ran too little; no new scan before SCAN_EVERY instructions.
        assert_eq!(b.next(3, || scan(cands.clone())), None);
        assert_eq!(b.next(SCAN_EVERY - 1, || scan(cands.clone())), None);
        assert_eq!(b.next(SCAN_EVERY, || scan(vec![(MIN_RUN, 7)])), Some(7));
        assert_eq!(scans, 2);
    }
}
