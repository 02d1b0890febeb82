//! The reconciler's loop state as one explicit state machine (`Phase`), the work owed
//! (`Pending`), and the detector of fights with another program (`FightDetector`). Pure: times
//! are passed in, nothing here touches the kernel.
//!
//! Transitions of `Phase`:
//!
//! ```text
//! Unsynced  --first lease batch-->            Behind
//! Converged --lease change-->                 Behind
//! Retrying / Holding / Probing --lease change--> same phase, drift = false
//! (synced)  --pass converged, no fight-->     Converged
//! (synced)  --pass converged, same ops again-->  Holding  { retry at now + backoff, backoff doubled }
//! (synced)  --pass failed-->                  Retrying { retry at now + backoff, backoff doubled,
//!                                                        failing since the first failure }
//! Retrying  --timer-->                        Retrying (no timer; devices + pass owed)
//! Holding   --timer-->                        Probing  (the next pass tells whether the fight goes on)
//! ```
//!
//! `drift` says whether what the next pass changes is a repair of drift (the kernel had matched
//! the leases and nothing changed in the leases since) rather than lease work.

use std::time::Duration;

use tokio::time::Instant;

use super::ReconcileTiming;

/// Where the reconciler stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// No lease batch yet: nothing may be programmed (a restarted daemon cannot tell a peer that
    /// left from one not yet listed).
    Unsynced,
    /// The leases changed since the kernel last matched them.
    Behind,
    /// The kernel matched the desired state at the end of the last pass.
    Converged,
    /// The last pass failed. Passes still run on every trigger; the timer adds a retry.
    Retrying {
        retry_at: Option<Instant>,
        backoff: Duration,
        failing_since: Instant,
        drift: bool,
    },
    /// The same ops were needed again right after being applied (another program keeps undoing
    /// them): only lease changes and the timer run a pass.
    Holding {
        retry_at: Instant,
        backoff: Duration,
        drift: bool,
    },
    /// A hold ended; the next pass decides whether the fight goes on.
    Probing { backoff: Duration, drift: bool },
}

/// How a pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PassResult {
    /// Everything was read, planned and applied without an error.
    pub converged: bool,
    /// The pass re-applied the same ops as the one before, again (see `FightDetector`).
    pub fighting: bool,
}

impl Phase {
    pub fn synced(&self) -> bool {
        !matches!(self, Phase::Unsynced)
    }

    /// Ops applied now repair drift (rather than do lease work).
    pub fn drift(&self) -> bool {
        match self {
            Phase::Converged => true,
            Phase::Unsynced | Phase::Behind => false,
            Phase::Retrying { drift, .. } | Phase::Holding { drift, .. } | Phase::Probing { drift, .. } => {
                *drift
            }
        }
    }

    /// When the timer should fire.
    pub fn retry_at(&self) -> Option<Instant> {
        match self {
            Phase::Retrying { retry_at, .. } => *retry_at,
            Phase::Holding { retry_at, .. } => Some(*retry_at),
            _ => None,
        }
    }

    /// Kernel events may run a pass now (not while holding back in a fight).
    pub fn events_run_passes(&self) -> bool {
        !matches!(self, Phase::Unsynced | Phase::Holding { .. })
    }

    /// The hold just ended: the next pass counts as a repeat whatever the time since the last.
    pub fn released(&self) -> bool {
        matches!(self, Phase::Probing { .. })
    }

    /// How long passes have kept failing (zero when the last pass converged).
    pub fn failing_for(&self, now: Instant) -> Duration {
        match self {
            Phase::Retrying { failing_since, .. } => now.saturating_duration_since(*failing_since),
            _ => Duration::ZERO,
        }
    }

    pub fn on_leases_changed(&mut self) {
        match self {
            Phase::Unsynced | Phase::Converged => *self = Phase::Behind,
            Phase::Behind => {}
            Phase::Retrying { drift, .. } | Phase::Holding { drift, .. } | Phase::Probing { drift, .. } => {
                *drift = false
            }
        }
    }

    pub fn on_timer(&mut self) {
        match *self {
            Phase::Retrying { ref mut retry_at, .. } => *retry_at = None,
            Phase::Holding { backoff, drift, .. } => *self = Phase::Probing { backoff, drift },
            _ => {}
        }
    }

    pub fn after_pass(&mut self, result: PassResult, now: Instant, timing: &ReconcileTiming) {
        let backoff = match self {
            Phase::Retrying { backoff, .. }
            | Phase::Holding { backoff, .. }
            | Phase::Probing { backoff, .. } => *backoff,
            _ => timing.backoff_min,
        };
        let next_backoff = (backoff * 2).min(timing.backoff_max);
        *self = match (result.converged, result.fighting) {
            (true, false) => Phase::Converged,
            (true, true) => Phase::Holding {
                retry_at: now + backoff,
                backoff: next_backoff,
                drift: true,
            },
            (false, _) => Phase::Retrying {
                retry_at: Some(now + backoff),
                backoff: next_backoff,
                failing_since: match self {
                    Phase::Retrying { failing_since, .. } => *failing_since,
                    _ => now,
                },
                drift: self.drift(),
            },
        };
    }
}

/// Work owed to the kernel, accumulated from triggers until the next pass takes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Pending {
    /// Read, diff and apply.
    pub pass: bool,
    /// Check the backend's devices before the pass.
    pub devices: bool,
    /// The lease map changed since the last pass.
    pub leases: bool,
}

impl Pending {
    /// Everything a pass does, as after a timer or a lost event stream.
    pub fn everything() -> Pending {
        Pending {
            pass: true,
            devices: true,
            leases: false,
        }
    }

    /// Take the work for one pass, leaving nothing owed.
    pub fn take(&mut self) -> Pending {
        std::mem::take(self)
    }
}

/// The same ops, all applied fine, needed again within this time without a lease change: someone
/// (or the kernel's own view of our entries) keeps undoing them.
pub(super) const FIGHT_WINDOW: Duration = Duration::from_secs(1);
/// After this many such repeats in a row kernel-event passes wait for the backoff timer.
pub(super) const FIGHT_REPEATS: u32 = 2;

/// Counts passes that needed exactly the same ops again soon after they were applied.
#[derive(Debug, Default)]
pub(super) struct FightDetector {
    last: Option<(u64, Instant)>,
    repeats: u32,
}

impl FightDetector {
    /// Note a pass's ops (`fingerprint`, `None` when it had none). `clean`: the pass applied all
    /// of them without error and no lease changed. Returns true when kernel-event passes should
    /// slow down.
    pub fn note(&mut self, fingerprint: Option<u64>, clean: bool, released: bool, now: Instant) -> bool {
        let Some(fingerprint) = fingerprint else {
            self.last = None;
            self.repeats = 0;
            return false;
        };
        let again = self
            .last
            .is_some_and(|(f, at)| f == fingerprint && (released || now.duration_since(at) < FIGHT_WINDOW));
        self.repeats = if clean && again { self.repeats + 1 } else { 0 };
        self.last = Some((fingerprint, now));
        self.repeats >= FIGHT_REPEATS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> ReconcileTiming {
        ReconcileTiming::default()
    }

    const OK: PassResult = PassResult {
        converged: true,
        fighting: false,
    };
    const FAILED: PassResult = PassResult {
        converged: false,
        fighting: false,
    };
    const FIGHT: PassResult = PassResult {
        converged: true,
        fighting: true,
    };

    #[test]
    fn nothing_runs_before_the_first_lease_batch() {
        let mut p = Phase::Unsynced;
        assert!(!p.synced() && !p.events_run_passes());
        p.on_leases_changed();
        assert_eq!(p, Phase::Behind);
        assert!(p.synced() && !p.drift());
    }

    #[test]
    fn failures_back_off_and_remember_since_when() {
        let t0 = Instant::now();
        let mut p = Phase::Behind;
        p.after_pass(FAILED, t0, &timing());
        assert_eq!(p.retry_at(), Some(t0 + timing().backoff_min));
        p.on_timer();
        assert_eq!(p.retry_at(), None);
        assert!(p.events_run_passes());
        let t1 = t0 + Duration::from_secs(3);
        p.after_pass(FAILED, t1, &timing());
        assert_eq!(p.retry_at(), Some(t1 + timing().backoff_min * 2));
        assert_eq!(p.failing_for(t1), Duration::from_secs(3));
        for _ in 0..20 {
            p.after_pass(FAILED, t1, &timing());
        }
        assert_eq!(p.retry_at(), Some(t1 + timing().backoff_max));
        p.after_pass(OK, t1, &timing());
        assert_eq!(p, Phase::Converged);
        assert_eq!(p.failing_for(t1), Duration::ZERO);
        assert!(p.drift());
        p.after_pass(FAILED, t1, &timing());
        assert_eq!(
            p.retry_at(),
            Some(t1 + timing().backoff_min),
            "backoff starts over"
        );
    }

    #[test]
    fn drift_survives_failures_but_not_lease_changes() {
        let now = Instant::now();
        let mut p = Phase::Converged;
        p.after_pass(FAILED, now, &timing());
        assert!(p.drift());
        p.on_leases_changed();
        assert!(!p.drift());
        assert!(matches!(p, Phase::Retrying { .. }));
    }

    #[test]
    fn a_fight_holds_event_passes_until_the_timer_then_probes() {
        let now = Instant::now();
        let mut p = Phase::Converged;
        p.after_pass(FIGHT, now, &timing());
        assert!(!p.events_run_passes());
        assert_eq!(p.retry_at(), Some(now + timing().backoff_min));
        p.on_timer();
        assert!(p.released() && p.events_run_passes());
        p.after_pass(FIGHT, now, &timing());
        assert_eq!(p.retry_at(), Some(now + timing().backoff_min * 2), "longer hold");
        p.on_timer();
        p.after_pass(OK, now, &timing());
        assert_eq!(p, Phase::Converged);
    }

    #[test]
    fn the_fight_detector_needs_clean_quick_repeats() {
        let t = Instant::now();
        let mut f = FightDetector::default();
        assert!(!f.note(Some(7), true, false, t));
        assert!(!f.note(Some(7), true, false, t + Duration::from_millis(100)));
        assert!(f.note(Some(7), true, false, t + Duration::from_millis(200)));
        // A different plan, a slow repeat, or an unclean pass starts over.
        assert!(!f.note(Some(8), true, false, t + Duration::from_millis(300)));
        assert!(!f.note(Some(8), true, false, t + Duration::from_secs(5)));
        assert!(!f.note(Some(8), false, false, t + Duration::from_secs(5)));
        // After a hold the time since the last pass does not matter.
        assert!(!f.note(Some(9), true, false, t));
        assert!(!f.note(Some(9), true, true, t + Duration::from_secs(60)));
        assert!(f.note(Some(9), true, true, t + Duration::from_secs(120)));
        assert!(!f.note(None, true, false, t));
    }
}
