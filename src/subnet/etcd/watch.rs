//! The cluster watch: a snapshot of every lease at revision R, then a prefix watch from R+1, as
//! one endless stream of `LeaseBatch`es. Connection errors reconnect from the last revision seen
//! (backoff 100 ms doubling to 5 s, reset on success); a compaction re-lists and sends a new
//! snapshot (the `LeaseWatcher` computes the difference). Malformed keys or values are skipped
//! with a warning naming the key, so they never remove valid leases.
//!
//! It must not filter the own lease (the `LeaseWatcher` does) or decide anything about routes.
//! Spec: flanneld-behaviour.md section 5.5.

use std::sync::Arc;

use futures::stream::{BoxStream, StreamExt};

use super::entries::lease_of_key;
use super::registry::{Watch, WatchEvent, WatchMessage};
use super::{Backoff, Shared, warn_malformed};
use crate::lease::{LeaseBatch, LeaseEvent};

/// Where the watch stands.
enum Phase {
    /// A snapshot must be listed (start, or after a compaction).
    List,
    /// Events from this revision on are still to be seen; `watch` is the open stream, if any.
    Follow { from: i64, watch: Option<Box<Watch>> },
}

struct ClusterWatch {
    shared: Arc<Shared>,
    phase: Phase,
    backoff: Backoff,
}

/// The stream behind `SubnetManager::watch_leases`; it ends only when dropped.
pub(crate) fn cluster_watch(shared: Arc<Shared>) -> BoxStream<'static, LeaseBatch> {
    let state = ClusterWatch {
        shared,
        phase: Phase::List,
        backoff: Backoff::watch(),
    };
    futures::stream::unfold(state, |mut state| async move {
        let batch = state.next_batch().await;
        Some((batch, state))
    })
    .boxed()
}

impl ClusterWatch {
    async fn pause(&mut self) {
        tokio::time::sleep(self.backoff.next_delay()).await;
    }

    async fn next_batch(&mut self) -> LeaseBatch {
        loop {
            match std::mem::replace(&mut self.phase, Phase::List) {
                Phase::List => match self.shared.list_leases().await {
                    Ok(listing) => {
                        self.backoff.reset();
                        self.phase = Phase::Follow {
                            from: listing.revision + 1,
                            watch: None,
                        };
                        return LeaseBatch::Snapshot(listing.leases.into_iter().map(|l| l.lease).collect());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "listing the cluster's leases failed; retrying");
                        self.pause().await;
                    }
                },
                Phase::Follow { from, watch: None } => {
                    match self
                        .shared
                        .registry
                        .watch(&self.shared.layout.subnets, from, true)
                        .await
                    {
                        Ok(open) => {
                            self.phase = Phase::Follow {
                                from,
                                watch: Some(Box::new(open)),
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, from_revision = from, "opening the lease watch failed; retrying");
                            self.phase = Phase::Follow { from, watch: None };
                            self.pause().await;
                        }
                    }
                }
                Phase::Follow {
                    from,
                    watch: Some(mut open),
                } => match open.next().await {
                    Ok(WatchMessage::Changes {
                        events,
                        next_revision,
                    }) => {
                        self.backoff.reset();
                        self.phase = Phase::Follow {
                            from: next_revision,
                            watch: Some(open),
                        };
                        let lease_events = self.to_lease_events(&events);
                        if !lease_events.is_empty() {
                            return LeaseBatch::Events(lease_events);
                        }
                    }
                    Ok(WatchMessage::Compacted { compact_revision }) => {
                        tracing::warn!(
                            key = %self.shared.layout.subnets,
                            compact_revision,
                            from_revision = from,
                            "the lease watch fell behind etcd's compaction; re-listing and resuming"
                        );
                        self.phase = Phase::List;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, from_revision = from, "the lease watch was interrupted; reconnecting");
                        self.phase = Phase::Follow { from, watch: None };
                        self.pause().await;
                    }
                },
            }
        }
    }

    /// Watch events as lease events; malformed entries are skipped with a warning.
    fn to_lease_events(&self, events: &[WatchEvent]) -> Vec<LeaseEvent> {
        let lease_events = events.iter().map(|event| match event {
            WatchEvent::Put(entry) => self
                .shared
                .listed(entry)
                .map(|listed| LeaseEvent::Added(listed.lease)),
            WatchEvent::Delete { key, .. } => self
                .shared
                .layout
                .parse_key(key)
                .map(|sn| LeaseEvent::Removed(lease_of_key(&sn))),
        });
        lease_events
            .filter_map(|e| e.inspect_err(warn_malformed).ok())
            .collect()
    }
}
