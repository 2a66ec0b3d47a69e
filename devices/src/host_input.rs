//! Input from the host (a terminal, a test) for a device: a bounded, thread-safe byte
//! queue. The host side pushes from any thread; the device takes bytes at defined
//! virtual times (its `advance_to`), so input arrives deterministically.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Most bytes a queue holds; pushes beyond it are refused.
pub const HOST_INPUT_CAPACITY: usize = 4096;

#[derive(Debug, Default)]
struct Queue {
    bytes: Mutex<VecDeque<u8>>,
    /// The queue's length, readable without the lock.
    len: AtomicUsize,
}

/// A cloneable handle on a device's host input queue.
#[derive(Clone, Debug, Default)]
pub struct HostInput {
    queue: Arc<Queue>,
}

impl HostInput {
    fn lock(&self) -> MutexGuard<'_, VecDeque<u8>> {
        self.queue.bytes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `bytes`; returns how many were accepted (at most
    /// [`HOST_INPUT_CAPACITY`] bytes wait at once).
    pub fn push(&self, bytes: &[u8]) -> usize {
        let mut q = self.lock();
        let n = bytes.len().min(HOST_INPUT_CAPACITY.saturating_sub(q.len()));
        q.extend(&bytes[..n]);
        self.queue.len.store(q.len(), Ordering::Release);
        n
    }

    /// Number of bytes waiting.
    pub fn len(&self) -> usize {
        self.queue.len.load(Ordering::Acquire)
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes waiting, left in place (a checkpoint of the debugger's history: queued
    /// bytes are on their way into the guest).
    pub fn contents(&self) -> Vec<u8> {
        self.lock().iter().copied().collect()
    }

    /// Replaces the bytes waiting with `bytes` (a checkpoint returned to).
    pub fn replace(&self, bytes: &[u8]) {
        let mut q = self.lock();
        q.clear();
        q.extend(&bytes[..bytes.len().min(HOST_INPUT_CAPACITY)]);
        self.queue.len.store(q.len(), Ordering::Release);
    }

    /// Takes up to `max` bytes from the front (the device side, or a recorder moving
    /// host input into a device's queue at a defined instruction count).
    pub fn take(&self, max: usize) -> Vec<u8> {
        if self.is_empty() || max == 0 {
            return Vec::new();
        }
        let mut q = self.lock();
        let n = q.len().min(max);
        let out: Vec<u8> = q.drain(..n).collect();
        self.queue.len.store(q.len(), Ordering::Release);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_ordered() {
        let h = HostInput::default();
        let other = h.clone();
        assert_eq!(
            h.push(&vec![7u8; HOST_INPUT_CAPACITY + 10]),
            HOST_INPUT_CAPACITY
        );
        assert_eq!(other.len(), HOST_INPUT_CAPACITY);
        assert_eq!(other.take(3), vec![7, 7, 7]);
        assert_eq!(h.push(b"ab"), 2);
        assert_eq!(h.take(usize::MAX).len(), HOST_INPUT_CAPACITY - 3 + 2);
        assert!(h.is_empty());
        h.push(b"xyz");
        assert_eq!(h.contents(), b"xyz");
        h.replace(b"q");
        assert_eq!((h.len(), h.take(9)), (1, b"q".to_vec()));
        assert!(h.take(5).is_empty());
    }
}
