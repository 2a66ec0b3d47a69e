//! The compile queue: requests waiting for the compiler thread, hottest first.
//!
//! When blocks become hot faster than the compiler thread compiles them (most of a
//! kernel's initialisation), the order matters: a block that keeps running in the
//! interpreter while its request waits costs more with every run. Each request
//! carries a *heat*, the guest instructions the dispatcher saw run without the
//! compiled code since it asked (bumped as they run), weighed by what compiling
//! saves per instruction; the compiler thread takes the hottest, the oldest among
//! equals.

use std::sync::{Mutex, MutexGuard};

use crate::compiler::Request;

/// Requests waiting for the compiler thread.
#[derive(Default)]
pub struct CompileQueue {
    items: Mutex<Vec<(u64, Request)>>,
}

impl CompileQueue {
    fn lock(&self) -> MutexGuard<'_, Vec<(u64, Request)>> {
        // A panic elsewhere while the lock was held leaves a valid vector.
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a request with heat `heat`.
    pub fn push(&self, heat: u64, req: Request) {
        self.lock().push((heat, req));
    }

    /// Adds `heat` to the queued request `which` picks; false if none is queued (the
    /// compiler thread has taken it).
    pub fn bump(&self, heat: u64, which: impl Fn(&Request) -> bool) -> bool {
        let mut items = self.lock();
        match items.iter_mut().find(|(_, r)| which(r)) {
            Some((h, _)) => {
                *h = h.saturating_add(heat);
                true
            }
            None => false,
        }
    }

    /// Changes every queued request with `f`.
    pub fn update(&self, f: impl Fn(&mut Request)) {
        for (_, r) in self.lock().iter_mut() {
            f(r);
        }
    }

    /// Takes the hottest request (the oldest of the hottest).
    pub fn pop(&self) -> Option<Request> {
        let mut items = self.lock();
        let mut best: Option<(usize, u64)> = None;
        for (i, &(h, _)) in items.iter().enumerate() {
            if best.is_none_or(|(_, bh)| h > bh) {
                best = Some((i, h));
            }
        }
        best.map(|(i, _)| items.remove(i).1)
    }

    /// Drops every queued request.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Requests queued.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mode::Mode;
    use crate::region::{Entry, PAGE};

    fn req(eip: u64) -> Request {
        Request {
            phys: eip,
            entry: Entry {
                eip,
                page_off: (eip & 0xfff) as usize,
                cs_hi: u32::MAX as u64,
                mode: Mode::FLAT32,
            },
            cs_base: 0,
            page: vec![0u8; PAGE].into_boxed_slice(),
            next: None,
            tier: 0,
            chain: None,
            heat: None,
            ctx: 0,
            cache_only: false,
            trace: None,
        }
    }

    #[test]
    fn hottest_first_then_oldest() {
        let q = CompileQueue::default();
        q.push(10, req(0x1000));
        q.push(30, req(0x2000));
        q.push(10, req(0x3000));
        q.push(30, req(0x4000));
        assert!(q.bump(25, |r| r.phys == 0x3000));
        assert!(!q.bump(25, |r| r.phys == 0x5000));
        let order: Vec<u64> = std::iter::from_fn(|| q.pop()).map(|r| r.phys).collect();
        assert_eq!(order, [0x3000, 0x2000, 0x4000, 0x1000]);
        assert_eq!(q.len(), 0);
        assert!(q.pop().is_none());
    }
}
