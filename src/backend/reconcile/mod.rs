//! The one reconciler (design.md section 3): the only place where lease events become kernel
//! changes. Desired entries are `entries_for` of every known remote lease; installed entries are
//! the owned objects read from the kernel; the diff becomes ordered, idempotent ops applied in one
//! `Netlink::apply` call per pass. Level-triggered: it repairs drift (a route, neighbour, FDB
//! entry or the vxlan device deleted behind our back), removes entries of peers that left while we
//! were down, and on restart changes nothing that is already right.
//!
//! Desired entries also include the backend's `own_entries` (routes the own lease needs whatever
//! the peers) and its peer entries (`Entry::Peer`: udp table, WireGuard peers, extension
//! commands), which are read from and applied to the backend's `PeerTable`.
//!
//! What is ours (and so may be deleted when no lease wants it) — see `plan::is_owned`:
//! - routes of the main table, unicast, single next hop, whose output device is one of
//!   `Ownership::route_oifs` and whose destination lies inside a cluster network
//!   (`Ownership::networks`), written by us (protocol `RTPROT_FLANNEL`), or written by upstream
//!   flanneld (protocol `boot`) through one of the backend's devices or via a current node's
//!   public IP, and not overlapping our own subnets; an operator's route is never ours;
//! - permanent (NUD_PERMANENT) neighbours on the backend's devices (`Ownership::devices`);
//! - permanent FDB entries with a destination and a non-zero MAC on the backend's devices;
//! - the peer entries the backend's `PeerTable` reports.
//!
//! Everything else (other tables, other protocols, other devices, non-permanent or learned
//! entries) is never touched. Shutdown leaves every entry in place (spec 11.3).
//!
//! When a pass runs (and only then does it dump kernel state):
//! - lease events (bursts are coalesced: everything queued is taken, then one pass);
//! - kernel events that make the kernel differ from the desired state (our own changes echoing
//!   back do not count), that touch the backend's devices (then `ensure_devices` runs first), or
//!   that touch the underlay (a route device going down or away, connected routes);
//! - a change reported by the backend's peer table (`PeerTable::changes`);
//! - a periodic full check (10 s) with `ensure_devices`;
//! - a retry with exponential backoff (100 ms .. 10 s) after any failure.
//!
//! Nothing is programmed before the first lease batch arrives: until then the reconciler cannot
//! tell a peer that left from one not yet listed.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::kernel::Netlink;
use crate::lease::{Lease, LeaseEvent};

mod apply;
mod installed;
#[cfg(test)]
mod ownership_tests;
mod phase;
mod plan;
#[cfg(test)]
mod plan_tests;
#[cfg(test)]
mod tests;
mod worker;

pub use installed::{Trigger, classify, read_installed, underlay_from};
pub use plan::{DesiredSet, EntryKey, Plan, is_foreign_route_in_network, is_owned, plan, same_entry};
use worker::Worker;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("reconciler: the lease event channel closed before shutdown (the lease watcher is gone)")]
    LeaseEventsClosed,
}

/// What the daemon shows on /readyz and /metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileStatus {
    /// The first lease batch has arrived (before that nothing is programmed).
    pub synced: bool,
    /// The last pass read, planned and applied everything without an error.
    pub converged: bool,
    /// Some pass has converged since the start: every desired entry was installed at least once.
    pub converged_once: bool,
    /// How long passes have kept failing (zero after a converged pass).
    pub failing_for: Duration,
    /// Remote leases known.
    pub leases: usize,
    /// Desired entries of the last pass.
    pub desired: usize,
    /// Owned entries installed after the last pass.
    pub installed: usize,
    /// Ops of the last pass that failed.
    pub failed_ops: usize,
    /// The most recent error (kept after recovery; `converged` says whether it is current).
    pub last_error: Option<String>,
    /// Passes completed.
    pub passes: u64,
    /// Objects put right without any lease change (drift repaired), devices recreated included.
    pub repairs: u64,
}

/// Intervals of the reconciler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileTiming {
    /// Full check even when nothing was reported.
    pub resync: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for ReconcileTiming {
    fn default() -> Self {
        ReconcileTiming {
            resync: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// The reconciler task. Build it once the backend is prepared and configured for `own`.
pub struct Reconciler {
    netlink: Arc<dyn Netlink>,
    backend: Box<dyn Backend>,
    own: Lease,
    timing: ReconcileTiming,
    status: watch::Sender<ReconcileStatus>,
}

impl Reconciler {
    pub fn new(netlink: Arc<dyn Netlink>, backend: Box<dyn Backend>, own: Lease) -> Reconciler {
        let (status, _) = watch::channel(ReconcileStatus::default());
        Reconciler {
            netlink,
            backend,
            own,
            timing: ReconcileTiming::default(),
            status,
        }
    }

    pub fn with_timing(mut self, timing: ReconcileTiming) -> Reconciler {
        self.timing = timing;
        self
    }

    /// Updated after every pass.
    pub fn status(&self) -> watch::Receiver<ReconcileStatus> {
        self.status.subscribe()
    }

    /// Run until `shutdown`. Send the events of the watcher's first snapshot as one batch, even
    /// when it is empty (no other node): that batch starts programming. Cancel `shutdown` before
    /// dropping the sender; a sender dropped earlier ends the task with `LeaseEventsClosed`.
    pub async fn run(
        self,
        mut lease_events: mpsc::UnboundedReceiver<Vec<LeaseEvent>>,
        shutdown: CancellationToken,
    ) -> Result<(), ReconcileError> {
        let resync = self.timing.resync;
        let mut w = Worker::new(self);
        let mut events = w.subscribe().await;
        let mut peer_changes = w.peer_table.as_ref().and_then(|t| t.changes());
        let mut tick = tokio::time::interval_at(Instant::now() + resync, resync);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let retry_at = w.phase.retry_at();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                batch = lease_events.recv() => match batch {
                    Some(batch) => w.on_leases(batch),
                    None if shutdown.is_cancelled() => return Ok(()),
                    None => return Err(ReconcileError::LeaseEventsClosed),
                },
                event = next_event(&mut events) => match event {
                    Some(event) => w.on_kernel_event(&event),
                    None => w.events_lost(&mut events),
                },
                change = next_event(&mut peer_changes) => match change {
                    Some(()) => w.pending.pass = true,
                    None => peer_changes = None,
                },
                _ = tick.tick() => {
                    w.on_tick();
                    if events.is_none() {
                        events = w.subscribe().await;
                    }
                }
                _ = sleep_until(retry_at), if retry_at.is_some() => w.on_timer(),
            }
            // Coalesce: take everything already queued, then run one pass.
            while let Ok(batch) = lease_events.try_recv() {
                w.on_leases(batch);
            }
            while let Some(stream) = events.as_mut() {
                match stream.next().now_or_never() {
                    Some(Some(event)) => w.on_kernel_event(&event),
                    Some(None) => w.events_lost(&mut events),
                    None => break,
                }
            }
            if w.ready() {
                w.pass().await;
            }
        }
    }
}

async fn next_event<T>(events: &mut Option<BoxStream<'static, T>>) -> Option<T> {
    match events {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
