//! Heat counters of quick (tier 0) regions, counted by their compiled code, so that
//! other regions can chain into them and the dispatcher still learns when one has run
//! long enough to be compiled again, optimised.
//!
//! Each quick region gets a cell when its compilation is requested; its code subtracts
//! the region's length from the cell at its entry and on its backward edges, and when
//! the cell drops to zero or below it leaves with status `HOT` and the cell's number in
//! the context (at the entry, before running anything). The dispatcher then asks for
//! the optimised compilation and refills the cell.

/// Cells available: a region asked for when all are taken gets none, and the
/// dispatcher counts its instructions (it is then not entered by chaining).
pub const CELLS: usize = 1 << 16;

/// The cells and who holds them.
pub struct HeatCounters {
    /// The cells (compiled code holds their addresses: the slice never moves).
    cells: Box<[i64]>,
    /// Cells not held.
    free: Vec<u32>,
    /// The installed region holding each cell (`u32::MAX`: none yet).
    owner: Box<[u32]>,
}

impl Default for HeatCounters {
    fn default() -> Self {
        HeatCounters {
            cells: vec![0; CELLS].into_boxed_slice(),
            free: (0..CELLS as u32).rev().collect(),
            owner: vec![u32::MAX; CELLS].into_boxed_slice(),
        }
    }
}

impl HeatCounters {
    /// Takes a cell holding `value`: (its number, its address), or None if all are
    /// held.
    pub fn take(&mut self, value: i64) -> Option<(u32, usize)> {
        let c = self.free.pop()?;
        self.cells[c as usize] = value;
        self.owner[c as usize] = u32::MAX;
        Some((c, &self.cells[c as usize] as *const i64 as usize))
    }

    /// Gives cell `c` back (its region is gone, or was never installed).
    pub fn give_back(&mut self, c: u32) {
        self.owner[c as usize] = u32::MAX;
        self.free.push(c);
    }

    /// Records that installed region `id` holds cell `c`.
    pub fn set_owner(&mut self, c: u32, id: u32) {
        self.owner[c as usize] = id;
    }

    /// The region holding cell `c`, if installed.
    pub fn owner(&self, c: u32) -> Option<u32> {
        self.owner
            .get(c as usize)
            .copied()
            .filter(|&id| id != u32::MAX)
    }

    /// The value of cell `c`.
    pub fn get(&self, c: u32) -> i64 {
        self.cells[c as usize]
    }

    /// Sets cell `c` to `value`.
    pub fn set(&mut self, c: u32, value: i64) {
        self.cells[c as usize] = value;
    }

    /// Cells held.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        CELLS - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_taken_given_back_and_keep_their_address() {
        let mut h = HeatCounters::default();
        let (a, pa) = h.take(10).unwrap();
        let (b, pb) = h.take(20).unwrap();
        assert_ne!(a, b);
        assert_ne!(pa, pb);
        assert_eq!(h.held(), 2);
        // SAFETY: `pa` is the address of a live cell of `h`.
        assert_eq!(unsafe { *(pa as *const i64) }, 10);
        h.set_owner(a, 7);
        assert_eq!(h.owner(a), Some(7));
        assert_eq!(h.owner(b), None);
        h.give_back(a);
        assert_eq!(h.owner(a), None);
        let (c, pc) = h.take(5).unwrap();
        assert_eq!((c, pc), (a, pa));
        // SAFETY: as above.
        assert_eq!(unsafe { *(pc as *const i64) }, 5);
    }

    #[test]
    fn all_cells_held_gives_none() {
        let mut h = HeatCounters::default();
        for _ in 0..CELLS {
            assert!(h.take(1).is_some());
        }
        assert!(h.take(1).is_none());
        h.give_back(3);
        assert_eq!(h.take(1).map(|t| t.0), Some(3));
    }
}
