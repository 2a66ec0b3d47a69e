//! Requests from devices to the machine: exit, reset, A20 gate.
//!
//! Devices hold a [`Requests`] handle and post requests; the CPU stops at the next
//! instruction boundary ([`ox86_mmu::IoBus::stop_requested`]) and the machine collects them
//! with [`Requests::take`].

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

/// Which kind of reset a device requested.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResetKind {
    /// CPU reset/INIT only (port 0x92 fast reset, 0xcf9 without SYS_RST): memory and most
    /// devices keep their state.
    Soft,
    /// Whole-system reset (0xcf9 with SYS_RST or FULL_RST).
    Hard,
}

/// The requests collected since the last [`Requests::take`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingRequests {
    /// The guest asked to exit with this status (isa-debug-exit: `(value << 1) | 1`).
    pub exit_status: Option<u32>,
    /// The guest asked for a reset; a hard request wins over a soft one.
    pub reset: Option<ResetKind>,
    /// The A20 gate changed; the new state (`true` = enabled, address bit 20 passes).
    pub a20: Option<bool>,
}

impl PendingRequests {
    /// Whether there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.exit_status.is_none() && self.reset.is_none() && self.a20.is_none()
    }
}

const EXIT_PRESENT: u64 = 1 << 32;
const RESET_NONE: u8 = 0;
const RESET_SOFT: u8 = 1;
const RESET_HARD: u8 = 2;

#[derive(Debug)]
struct State {
    pending: AtomicBool,
    exit: AtomicU64,
    reset: AtomicU8,
    a20: AtomicBool,
    a20_changed: AtomicBool,
}

/// A shared handle through which devices post requests to the machine.
#[derive(Clone, Debug)]
pub struct Requests {
    state: Arc<State>,
}

impl Default for Requests {
    /// A handle shared with nothing (what a device restored from a snapshot holds
    /// until the platform moves the machine's handle back in).
    fn default() -> Self {
        Requests::new(true)
    }
}

impl Requests {
    /// A handle with no pending requests and the A20 gate in state `a20_enabled`.
    pub fn new(a20_enabled: bool) -> Self {
        Requests {
            state: Arc::new(State {
                pending: AtomicBool::new(false),
                exit: AtomicU64::new(0),
                reset: AtomicU8::new(RESET_NONE),
                a20: AtomicBool::new(a20_enabled),
                a20_changed: AtomicBool::new(false),
            }),
        }
    }

    /// Asks the machine to exit with `status`. The first request before a
    /// [`Requests::take`] wins.
    pub fn request_exit(&self, status: u32) {
        let _ = self.state.exit.compare_exchange(
            0,
            EXIT_PRESENT | status as u64,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.state.pending.store(true, Ordering::Release);
    }

    /// Asks the machine to reset.
    pub fn request_reset(&self, kind: ResetKind) {
        let v = match kind {
            ResetKind::Soft => RESET_SOFT,
            ResetKind::Hard => RESET_HARD,
        };
        self.state.reset.fetch_max(v, Ordering::AcqRel);
        self.state.pending.store(true, Ordering::Release);
    }

    /// Drives the A20 gate. A change is reported to the machine; setting the current state
    /// again is not.
    pub fn set_a20(&self, enabled: bool) {
        if self.state.a20.swap(enabled, Ordering::AcqRel) != enabled {
            // Toggling back before the machine looked still counts: the machine applies the
            // final state, which is harmless.
            self.state.a20_changed.store(true, Ordering::Release);
            self.state.pending.store(true, Ordering::Release);
        }
    }

    /// The current state of the A20 gate (`true` = enabled).
    pub fn a20(&self) -> bool {
        self.state.a20.load(Ordering::Acquire)
    }

    /// Sets the A20 state without reporting a change (used on reset, when the machine
    /// re-reads the state itself).
    pub fn reset_a20(&self, enabled: bool) {
        self.state.a20.store(enabled, Ordering::Release);
        self.state.a20_changed.store(false, Ordering::Release);
    }

    /// Whether any request is waiting.
    #[inline]
    pub fn is_pending(&self) -> bool {
        self.state.pending.load(Ordering::Acquire)
    }

    /// Takes the waiting requests.
    pub fn take(&self) -> PendingRequests {
        if !self.state.pending.swap(false, Ordering::AcqRel) {
            return PendingRequests::default();
        }
        let exit = self.state.exit.swap(0, Ordering::AcqRel);
        let reset = self.state.reset.swap(RESET_NONE, Ordering::AcqRel);
        let a20_changed = self.state.a20_changed.swap(false, Ordering::AcqRel);
        PendingRequests {
            exit_status: (exit & EXIT_PRESENT != 0).then_some(exit as u32),
            reset: match reset {
                RESET_SOFT => Some(ResetKind::Soft),
                RESET_HARD => Some(ResetKind::Hard),
                _ => None,
            },
            a20: a20_changed.then(|| self.a20()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_collects_and_clears() {
        let r = Requests::new(true);
        assert!(!r.is_pending());
        assert!(r.take().is_empty());
        r.request_exit(7);
        r.request_exit(9);
        r.request_reset(ResetKind::Soft);
        r.request_reset(ResetKind::Hard);
        r.request_reset(ResetKind::Soft);
        r.set_a20(false);
        assert!(r.is_pending());
        assert_eq!(
            r.take(),
            PendingRequests {
                exit_status: Some(7),
                reset: Some(ResetKind::Hard),
                a20: Some(false)
            }
        );
        assert!(!r.is_pending());
        assert!(r.take().is_empty());
    }

    #[test]
    fn unchanged_a20_is_not_a_request() {
        let r = Requests::new(false);
        r.set_a20(false);
        assert!(!r.is_pending());
        r.set_a20(true);
        assert_eq!(r.take().a20, Some(true));
        assert!(r.a20());
        // Exit status 0 is representable.
        r.request_exit(0);
        assert_eq!(r.take().exit_status, Some(0));
    }
}
