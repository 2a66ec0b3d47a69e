//! The undo log of guest RAM: while it is on, the first write to a RAM page after the
//! log was last taken saves the page as it was (its pre-image). The debugger's
//! history keeps one log per checkpoint interval; writing a log's pre-images back,
//! newest log first, returns RAM to an older checkpoint's contents.
//!
//! Writes reach RAM three ways: through [`crate::Memory::write_phys`] (loaders, the
//! page walker's accessed and dirty bits, the CPU's slow path, a debugger), and
//! through TLB entries filled for writing. The first way notes the write itself. The
//! TLB is kept from filling a page for writing before its pre-image is saved (see
//! [`crate::Memory::write_noted`]): the CPU saves it when it translates the write, and
//! flushes its TLB whenever the log is taken.

use crate::addr::PAGE_SIZE;

/// A page as it was before the first write of an interval: its number and bytes.
pub type PreImage = (u32, Box<[u8]>);

/// Which RAM pages were written since the log was last taken, and their pre-images.
#[derive(Debug, Default)]
pub struct UndoLog {
    /// One bit per RAM page: written since the log was taken.
    written: Vec<u64>,
    /// Pre-images, in the order of the first writes.
    pages: Vec<PreImage>,
}

impl UndoLog {
    /// An empty log for `pages` RAM pages.
    pub fn new(pages: u64) -> UndoLog {
        UndoLog {
            written: vec![0; pages.div_ceil(64) as usize],
            pages: Vec::new(),
        }
    }

    /// Whether page `pfn` was written since the log was taken (pages beyond RAM
    /// count as written: there is nothing to save).
    #[inline]
    pub fn written(&self, pfn: u64) -> bool {
        self.written
            .get((pfn / 64) as usize)
            .is_none_or(|w| w & (1 << (pfn % 64)) != 0)
    }

    /// Saves page `pfn`'s bytes `ram` (its current contents) before its first write.
    pub fn save(&mut self, pfn: u64, ram: &[u8]) {
        if self.written(pfn) {
            return;
        }
        self.written[(pfn / 64) as usize] |= 1 << (pfn % 64);
        debug_assert_eq!(ram.len() as u64, PAGE_SIZE);
        self.pages.push((pfn as u32, ram.into()));
    }

    /// Takes the pre-images saved since the last call and starts a new interval.
    pub fn take(&mut self) -> Vec<PreImage> {
        self.written.fill(0);
        std::mem::take(&mut self.pages)
    }

    /// Bytes of pre-images held.
    pub fn bytes(&self) -> u64 {
        self.pages.len() as u64 * PAGE_SIZE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_each_page_once_per_interval() {
        let mut log = UndoLog::new(100);
        let a = vec![1u8; PAGE_SIZE as usize];
        let b = vec![2u8; PAGE_SIZE as usize];
        assert!(!log.written(5));
        log.save(5, &a);
        log.save(5, &b);
        assert!(log.written(5));
        assert!(log.written(1000), "pages beyond RAM have nothing to save");
        let taken = log.take();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].0, 5);
        assert_eq!(taken[0].1[0], 1, "the first pre-image is kept");
        assert!(!log.written(5));
        log.save(5, &b);
        assert_eq!(log.take()[0].1[0], 2);
    }
}
