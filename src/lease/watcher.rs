//! The lease watcher (spec section 8): keeps the own lease and the known remote leases and turns the
//! subnet manager's snapshots and incremental events into Added/Removed events for the backend.
//! Pure code: no I/O, no clock.
//!
//! Deviations from upstream, all in the direction of not losing or inventing state:
//! - the own lease is never stored in the cache (upstream copies the whole snapshot, own lease
//!   included, and so emits a Removed for its own subnet on the next snapshot);
//! - a snapshot naming one subnet twice keeps the last entry;
//! - a snapshot entry already known but with different attributes (a peer that re-registered with a
//!   new VTEP MAC or key while our watch was behind) is forwarded as Added, so the backend updates it;
//!   upstream forwards nothing for known subnets. Expiration alone never produces an event;
//! - an empty `Events` batch is a no-op (upstream treats it as an empty snapshot).

use super::{Lease, LeaseBatch, LeaseEvent};

/// Keeps the own lease and the known remote leases; turns batches into events (spec 8), skipping
/// events for the own subnet.
#[derive(Debug, Clone)]
pub struct LeaseWatcher {
    own: Lease,
    known: Vec<Lease>,
}

impl LeaseWatcher {
    pub fn new(own: Lease) -> LeaseWatcher {
        LeaseWatcher {
            own,
            known: Vec::new(),
        }
    }

    /// Apply one batch; returns the events to forward, in order.
    pub fn apply(&mut self, batch: LeaseBatch) -> Vec<LeaseEvent> {
        let events = match batch {
            LeaseBatch::Events(events) => self.update(events),
            LeaseBatch::Snapshot(leases) => self.reset(leases),
        };
        for (index, event) in events.iter().enumerate() {
            let (kind, lease) = match event {
                LeaseEvent::Added(l) => ("added", l),
                LeaseEvent::Removed(l) => ("removed", l),
            };
            tracing::debug!(
                index,
                event = kind,
                subnet = ?lease.subnet,
                ipv6_subnet = ?lease.ipv6_subnet,
                public_ip = %lease.attrs.public_ip,
                backend_type = %lease.attrs.backend_type,
                "lease event"
            );
        }
        events
    }

    /// The remote leases currently known.
    pub fn known(&self) -> &[Lease] {
        &self.known
    }

    /// The own lease the watcher filters out.
    pub fn own(&self) -> &Lease {
        &self.own
    }

    fn is_own(&self, lease: &Lease) -> bool {
        // Upstream compares with the flags of the incoming lease.
        lease.same_subnet(&self.own)
    }

    fn position(&self, lease: &Lease) -> Option<usize> {
        // Upstream compares with the flags of the cached lease.
        self.known.iter().position(|known| known.same_subnet(lease))
    }

    fn update(&mut self, events: Vec<LeaseEvent>) -> Vec<LeaseEvent> {
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            match event {
                LeaseEvent::Added(lease) => {
                    if self.is_own(&lease) {
                        continue;
                    }
                    match self.position(&lease) {
                        Some(i) => {
                            if let Some(slot) = self.known.get_mut(i) {
                                *slot = lease.clone();
                            }
                        }
                        None => self.known.push(lease.clone()),
                    }
                    out.push(LeaseEvent::Added(lease));
                }
                LeaseEvent::Removed(lease) => {
                    if self.is_own(&lease) {
                        continue;
                    }
                    match self.position(&lease) {
                        Some(i) => out.push(LeaseEvent::Removed(self.known.remove(i))),
                        None => {
                            tracing::warn!(
                                subnet = ?lease.subnet,
                                ipv6_subnet = ?lease.ipv6_subnet,
                                "removed lease was not known; forwarding the removal as received"
                            );
                            out.push(LeaseEvent::Removed(lease));
                        }
                    }
                }
            }
        }
        out
    }

    fn reset(&mut self, leases: Vec<Lease>) -> Vec<LeaseEvent> {
        // Remote leases of the snapshot, one per subnet, the last entry winning.
        let mut snapshot: Vec<Lease> = Vec::with_capacity(leases.len());
        for lease in leases {
            if self.is_own(&lease) {
                continue;
            }
            match snapshot.iter().position(|s| s.same_subnet(&lease)) {
                Some(i) => {
                    if let Some(slot) = snapshot.get_mut(i) {
                        *slot = lease;
                    }
                }
                None => snapshot.push(lease),
            }
        }

        let mut previous = std::mem::take(&mut self.known);
        let mut out = Vec::new();
        for lease in &snapshot {
            match previous.iter().position(|known| known.same_subnet(lease)) {
                Some(i) => {
                    let known = previous.remove(i);
                    if !same_content(&known, lease) {
                        out.push(LeaseEvent::Added(lease.clone()));
                    }
                }
                None => out.push(LeaseEvent::Added(lease.clone())),
            }
        }
        out.extend(previous.into_iter().map(LeaseEvent::Removed));
        self.known = snapshot;
        out
    }
}

/// Equal for the backend's purposes: everything but the expiration, which changes on every renewal.
fn same_content(a: &Lease, b: &Lease) -> bool {
    a.enable_ipv4 == b.enable_ipv4
        && a.enable_ipv6 == b.enable_ipv6
        && a.subnet == b.subnet
        && a.ipv6_subnet == b.ipv6_subnet
        && a.attrs == b.attrs
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::lease::LeaseAttrs;

    fn lease(sn: &str, ip: &str) -> Lease {
        Lease {
            enable_ipv4: true,
            enable_ipv6: false,
            subnet: Some(sn.parse().unwrap()),
            ipv6_subnet: None,
            attrs: LeaseAttrs {
                public_ip: ip.parse().unwrap(),
                ..LeaseAttrs::default()
            },
            expiration: None,
        }
    }

    fn own() -> Lease {
        lease("10.5.1.0/24", "192.0.2.1")
    }

    use LeaseEvent::{Added, Removed};

    #[test]
    fn own_subnet_events_are_dropped() {
        let mut w = LeaseWatcher::new(own());
        let evs = w.apply(LeaseBatch::Events(vec![Added(own()), Removed(own())]));
        assert!(evs.is_empty());
        let evs = w.apply(LeaseBatch::Snapshot(vec![own()]));
        assert!(evs.is_empty());
        assert!(w.known().is_empty());
    }

    #[test]
    fn added_appends_or_replaces() {
        let mut w = LeaseWatcher::new(own());
        let a = lease("10.5.2.0/24", "192.0.2.2");
        let a2 = lease("10.5.2.0/24", "192.0.2.22");
        let b = lease("10.5.3.0/24", "192.0.2.3");
        assert_eq!(
            w.apply(LeaseBatch::Events(vec![Added(a.clone()), Added(b.clone())])),
            vec![Added(a.clone()), Added(b.clone())]
        );
        assert_eq!(
            w.apply(LeaseBatch::Events(vec![Added(a2.clone())])),
            vec![Added(a2.clone())]
        );
        assert_eq!(w.known(), &[a2, b]);
    }

    #[test]
    fn removed_forwards_the_cached_lease() {
        let mut w = LeaseWatcher::new(own());
        let a = lease("10.5.2.0/24", "192.0.2.2");
        w.apply(LeaseBatch::Events(vec![Added(a.clone())]));
        // The removal event carries no attributes (an expired etcd key); the cached one is forwarded.
        let bare = Lease {
            attrs: LeaseAttrs::default(),
            ..a.clone()
        };
        assert_eq!(
            w.apply(LeaseBatch::Events(vec![Removed(bare.clone())])),
            vec![Removed(a)]
        );
        assert!(w.known().is_empty());
        // Unknown: forwarded as received.
        assert_eq!(
            w.apply(LeaseBatch::Events(vec![Removed(bare.clone())])),
            vec![Removed(bare)]
        );
    }

    #[test]
    fn snapshot_diffs_against_the_cache() {
        let mut w = LeaseWatcher::new(own());
        let a = lease("10.5.2.0/24", "192.0.2.2");
        let b = lease("10.5.3.0/24", "192.0.2.3");
        let c = lease("10.5.4.0/24", "192.0.2.4");
        assert_eq!(
            w.apply(LeaseBatch::Snapshot(vec![own(), a.clone(), b.clone()])),
            vec![Added(a.clone()), Added(b.clone())]
        );
        // Known ones are silent (a renewed expiration is not a change), new ones Added, missing Removed.
        let mut a_renewed = a.clone();
        a_renewed.expiration = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(86400));
        assert_eq!(
            w.apply(LeaseBatch::Snapshot(vec![a_renewed.clone(), c.clone(), own()])),
            vec![Added(c.clone()), Removed(b)]
        );
        assert_eq!(w.known(), &[a_renewed, c]);
        // Own lease never lands in the cache, so a re-list does not remove it.
        assert_eq!(w.apply(LeaseBatch::Snapshot(vec![own()])).len(), 2);
        assert!(w.known().is_empty());
    }

    #[test]
    fn snapshot_with_changed_attrs_is_forwarded_as_added() {
        let mut w = LeaseWatcher::new(own());
        let a = lease("10.5.2.0/24", "192.0.2.2");
        w.apply(LeaseBatch::Snapshot(vec![a]));
        let moved = lease("10.5.2.0/24", "192.0.2.99");
        assert_eq!(
            w.apply(LeaseBatch::Snapshot(vec![moved.clone()])),
            vec![Added(moved.clone())]
        );
        assert_eq!(w.known(), &[moved]);
    }

    #[test]
    fn duplicate_snapshot_entries_last_wins() {
        let mut w = LeaseWatcher::new(own());
        let a1 = lease("10.5.2.0/24", "192.0.2.2");
        let a2 = lease("10.5.2.0/24", "192.0.2.3");
        assert_eq!(
            w.apply(LeaseBatch::Snapshot(vec![a1, a2.clone()])),
            vec![Added(a2.clone())]
        );
        assert_eq!(w.known(), &[a2]);
    }

    #[test]
    fn empty_events_batch_changes_nothing() {
        let mut w = LeaseWatcher::new(own());
        w.apply(LeaseBatch::Snapshot(vec![lease("10.5.2.0/24", "192.0.2.2")]));
        assert!(w.apply(LeaseBatch::Events(vec![])).is_empty());
        assert_eq!(w.known().len(), 1);
    }

    #[test]
    fn dual_stack_and_v6_only_identity() {
        let mut own6 = own();
        own6.enable_ipv6 = true;
        own6.ipv6_subnet = Some("fd00:1::/64".parse().unwrap());
        let mut w = LeaseWatcher::new(own6.clone());
        // Same v4, different v6: a different lease in dual stack.
        let mut other = own6.clone();
        other.ipv6_subnet = Some("fd00:2::/64".parse().unwrap());
        assert_eq!(
            w.apply(LeaseBatch::Events(vec![Added(other.clone())])),
            vec![Added(other)]
        );
        // v6-only lease: compared on the v6 subnet only.
        let v6only = Lease {
            enable_ipv4: false,
            enable_ipv6: true,
            subnet: None,
            ipv6_subnet: Some("fd00:1::/64".parse().unwrap()),
            attrs: LeaseAttrs::default(),
            expiration: None,
        };
        assert!(w.apply(LeaseBatch::Events(vec![Added(v6only)])).is_empty());
    }
}
