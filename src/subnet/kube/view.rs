//! The cluster's leases as the node watch last saw them, and what the consumer of the lease stream
//! has been given so far. Changes coalesce per node: however many updates of a node arrive while
//! the consumer is busy, it receives one event with the node's latest lease (no event queue that
//! can fill up or block; pain point 1.12). Only changes that matter produce an event: the lease
//! (subnets, public IPs, backend type and data) is compared as a whole, for both families
//! (upstream's dual-stack blind spot, quirk 13, is not replicated).
//!
//! Rules (spec 6.3, 6.5): only nodes annotated `kube-subnet-manager=true` are leases; a deleted or
//! no longer annotated node is Removed; a node that cannot be turned into a lease is skipped with
//! one warning naming the node and the annotation, and its last good lease (if any) stays.
//! A new listing (start, or after the watch expired) produces a `Snapshot`.
//!
//! Pure state, no I/O.

use std::collections::{BTreeMap, BTreeSet};

use super::annotations::{self, AnnotationNames, NodeInfo};
use crate::lease::{Lease, LeaseBatch, LeaseEvent};

/// What a node is to flannel.
enum Seen {
    Lease(Lease),
    /// Not annotated `kube-subnet-manager=true`.
    Unmanaged,
    /// Managed, but its annotations or pod CIDRs do not make a lease.
    Unusable,
}

pub(crate) struct LeaseView {
    names: AnnotationNames,
    enable_ipv4: bool,
    enable_ipv6: bool,
    /// Latest lease of every managed node.
    current: BTreeMap<String, Lease>,
    /// What the consumer has been given.
    delivered: BTreeMap<String, Lease>,
    /// Nodes changed since the last batch.
    dirty: BTreeSet<String>,
    /// A listing arrived since the last batch (or no batch has been taken yet).
    snapshot_due: bool,
    /// The error last warned about for each node, so an unchanged bad node warns once.
    warned: BTreeMap<String, String>,
}

impl LeaseView {
    pub(crate) fn new(names: AnnotationNames, enable_ipv4: bool, enable_ipv6: bool) -> LeaseView {
        LeaseView {
            names,
            enable_ipv4,
            enable_ipv6,
            current: BTreeMap::new(),
            delivered: BTreeMap::new(),
            dirty: BTreeSet::new(),
            snapshot_due: false,
            warned: BTreeMap::new(),
        }
    }

    /// What the node is to flannel (a bad node is warned about once per distinct error).
    fn lease_of(&mut self, node: &NodeInfo) -> Seen {
        if !annotations::is_managed(&self.names, node) {
            self.warned.remove(&node.name);
            return Seen::Unmanaged;
        }
        match annotations::node_lease(&self.names, node, self.enable_ipv4, self.enable_ipv6) {
            Ok(lease) => {
                self.warned.remove(&node.name);
                Seen::Lease(lease)
            }
            Err(e) => {
                let text = e.to_string();
                if self.warned.get(&node.name) != Some(&text) {
                    let kept = self.current.contains_key(&node.name);
                    tracing::warn!(
                        node = %node.name,
                        error = %text,
                        keeping_last_good_lease = kept,
                        "cannot turn a node into a lease; skipping it"
                    );
                    self.warned.insert(node.name.clone(), text);
                }
                Seen::Unusable
            }
        }
    }

    /// A complete listing of the nodes: the next batch is a snapshot.
    pub(crate) fn relist(&mut self, nodes: &[NodeInfo]) {
        let mut next = BTreeMap::new();
        for node in nodes {
            let lease = match self.lease_of(node) {
                Seen::Lease(lease) => Some(lease),
                Seen::Unmanaged => None,
                // Keep the last good lease of a node that turned unusable.
                Seen::Unusable => self.current.get(&node.name).cloned(),
            };
            if let Some(lease) = lease {
                next.insert(node.name.clone(), lease);
            }
        }
        self.warned
            .retain(|name, _| nodes.iter().any(|n| n.name == *name));
        self.current = next;
        self.dirty.clear();
        self.snapshot_due = true;
    }

    /// A node was added or modified.
    pub(crate) fn apply(&mut self, node: &NodeInfo) {
        match self.lease_of(node) {
            Seen::Lease(lease) => {
                if self.current.get(&node.name) != Some(&lease) {
                    self.current.insert(node.name.clone(), lease);
                    self.dirty.insert(node.name.clone());
                }
            }
            Seen::Unmanaged => {
                if self.current.remove(&node.name).is_some() {
                    self.dirty.insert(node.name.clone());
                }
            }
            Seen::Unusable => {}
        }
    }

    /// A node was deleted.
    pub(crate) fn remove(&mut self, name: &str) {
        self.warned.remove(name);
        if self.current.remove(name).is_some() {
            self.dirty.insert(name.to_string());
        }
    }

    /// Everything not yet given to the consumer, as one batch; `None` when nothing changed.
    pub(crate) fn take_batch(&mut self) -> Option<LeaseBatch> {
        if self.snapshot_due {
            self.snapshot_due = false;
            self.dirty.clear();
            self.delivered = self.current.clone();
            return Some(LeaseBatch::Snapshot(self.current.values().cloned().collect()));
        }
        let mut events = Vec::new();
        for name in std::mem::take(&mut self.dirty) {
            match (self.delivered.get(&name), self.current.get(&name)) {
                (None, Some(new)) => events.push(LeaseEvent::Added(new.clone())),
                (Some(old), None) => events.push(LeaseEvent::Removed(old.clone())),
                (Some(old), Some(new)) if old != new => {
                    // A new subnet is a different lease: the old one has to go first.
                    if old.subnets() != new.subnets() {
                        events.push(LeaseEvent::Removed(old.clone()));
                    }
                    events.push(LeaseEvent::Added(new.clone()));
                }
                _ => {}
            }
            match self.current.get(&name) {
                Some(lease) => self.delivered.insert(name, lease.clone()),
                None => self.delivered.remove(&name),
            };
        }
        (!events.is_empty()).then_some(LeaseBatch::Events(events))
    }

    /// The current leases (for tests).
    #[cfg(test)]
    pub(crate) fn leases(&self) -> Vec<Lease> {
        self.current.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subnet::kube::annotations::DEFAULT_PREFIX;

    const DATA: &str = r#"{"VNI":1,"VtepMAC":"96:59:b2:3f:04:ee"}"#;

    fn node(name: &str, cidr: &str, ip: &str) -> NodeInfo {
        let p = "flannel.alpha.coreos.com/";
        NodeInfo {
            name: name.into(),
            resource_version: "1".into(),
            annotations: [
                (format!("{p}kube-subnet-manager"), "true".to_string()),
                (format!("{p}backend-type"), "vxlan".into()),
                (format!("{p}backend-data"), DATA.into()),
                (format!("{p}public-ip"), ip.into()),
            ]
            .into_iter()
            .collect(),
            pod_cidr: cidr.into(),
            pod_cidrs: vec![cidr.into()],
        }
    }

    fn view() -> LeaseView {
        LeaseView::new(AnnotationNames::new(DEFAULT_PREFIX).unwrap(), true, false)
    }

    fn subnets(batch: &LeaseBatch) -> Vec<String> {
        let show = |l: &Lease| l.subnet.map(|s| s.to_string()).unwrap_or_default();
        match batch {
            LeaseBatch::Snapshot(leases) => leases.iter().map(|l| format!("S {}", show(l))).collect(),
            LeaseBatch::Events(events) => events
                .iter()
                .map(|e| match e {
                    LeaseEvent::Added(l) => format!("+ {} {}", show(l), l.attrs.public_ip),
                    LeaseEvent::Removed(l) => format!("- {}", show(l)),
                })
                .collect(),
        }
    }

    #[test]
    fn nothing_before_the_first_listing_then_a_snapshot() {
        let mut v = view();
        assert!(v.take_batch().is_none());
        v.relist(&[]);
        assert_eq!(v.take_batch(), Some(LeaseBatch::Snapshot(vec![])));
        assert!(v.take_batch().is_none());
    }

    #[test]
    fn snapshot_holds_only_managed_valid_nodes() {
        let mut v = view();
        let mut unmanaged = node("c", "198.18.3.0/24", "192.0.2.3");
        unmanaged.annotations.clear();
        let mut garbage = node("d", "198.18.4.0/24", "192.0.2.4");
        garbage
            .annotations
            .insert("flannel.alpha.coreos.com/backend-data".into(), "{garbage".into());
        v.relist(&[
            node("a", "198.18.1.0/24", "192.0.2.1"),
            node("b", "198.18.2.0/24", "192.0.2.2"),
            unmanaged,
            garbage,
        ]);
        assert_eq!(
            subnets(&v.take_batch().unwrap()),
            vec!["S 198.18.1.0/24", "S 198.18.2.0/24"]
        );
    }

    #[test]
    fn bursts_coalesce_to_the_latest_state_per_node() {
        let mut v = view();
        v.relist(&[node("a", "198.18.1.0/24", "192.0.2.1")]);
        v.take_batch();
        for i in 10..20 {
            v.apply(&node("a", "198.18.1.0/24", &format!("192.0.2.{i}")));
            v.apply(&node("b", "198.18.2.0/24", &format!("192.0.2.{}", i + 100)));
        }
        v.apply(&node("c", "198.18.3.0/24", "192.0.2.3"));
        v.remove("c");
        assert_eq!(
            subnets(&v.take_batch().unwrap()),
            vec!["+ 198.18.1.0/24 192.0.2.19", "+ 198.18.2.0/24 192.0.2.119"]
        );
        assert!(v.take_batch().is_none());
    }

    #[test]
    fn only_changes_that_matter_produce_events() {
        let mut v = view();
        let a = node("a", "198.18.1.0/24", "192.0.2.1");
        v.relist(std::slice::from_ref(&a));
        v.take_batch();
        let mut touched = a.clone();
        touched.resource_version = "2".into();
        touched.annotations.insert("unrelated".into(), "x".into());
        v.apply(&touched);
        assert!(v.take_batch().is_none());
        // Changed and changed back before the consumer looked: nothing to say.
        v.apply(&node("a", "198.18.1.0/24", "192.0.2.9"));
        v.apply(&a);
        assert!(v.take_batch().is_none());
    }

    #[test]
    fn dual_stack_v4_change_with_unchanged_v6_is_seen() {
        let mut v = LeaseView::new(AnnotationNames::new(DEFAULT_PREFIX).unwrap(), true, true);
        let mut a = node("a", "198.18.1.0/24", "192.0.2.1");
        a.pod_cidrs.push("2001:db8:1::/64".into());
        a.annotations.insert(
            "flannel.alpha.coreos.com/public-ipv6".into(),
            "2001:db8::1".into(),
        );
        a.annotations
            .insert("flannel.alpha.coreos.com/backend-v6-data".into(), DATA.into());
        v.relist(std::slice::from_ref(&a));
        v.take_batch();
        a.annotations
            .insert("flannel.alpha.coreos.com/public-ip".into(), "192.0.2.77".into());
        v.apply(&a);
        assert_eq!(
            subnets(&v.take_batch().unwrap()),
            vec!["+ 198.18.1.0/24 192.0.2.77"]
        );
    }

    #[test]
    fn deletion_and_unannotation_remove_the_delivered_lease() {
        let mut v = view();
        v.relist(&[
            node("a", "198.18.1.0/24", "192.0.2.1"),
            node("b", "198.18.2.0/24", "192.0.2.2"),
        ]);
        v.take_batch();
        v.remove("a");
        let mut b = node("b", "198.18.2.0/24", "192.0.2.2");
        b.annotations
            .remove("flannel.alpha.coreos.com/kube-subnet-manager");
        v.apply(&b);
        assert_eq!(
            subnets(&v.take_batch().unwrap()),
            vec!["- 198.18.1.0/24", "- 198.18.2.0/24"]
        );
        v.remove("unknown");
        assert!(v.take_batch().is_none());
    }

    #[test]
    fn a_node_turning_bad_keeps_its_last_good_lease_also_across_relists() {
        let mut v = view();
        v.relist(&[node("a", "198.18.1.0/24", "192.0.2.1")]);
        v.take_batch();
        let mut bad = node("a", "198.18.1.0/24", "192.0.2.1");
        bad.annotations
            .insert("flannel.alpha.coreos.com/public-ip".into(), "not-an-ip".into());
        v.apply(&bad);
        assert!(v.take_batch().is_none());
        v.relist(std::slice::from_ref(&bad));
        assert_eq!(subnets(&v.take_batch().unwrap()), vec!["S 198.18.1.0/24"]);
        assert_eq!(v.leases()[0].attrs.public_ip.to_string(), "192.0.2.1");
    }

    #[test]
    fn a_new_pod_cidr_removes_the_old_lease_first() {
        let mut v = view();
        v.relist(&[node("a", "198.18.1.0/24", "192.0.2.1")]);
        v.take_batch();
        v.apply(&node("a", "198.18.9.0/24", "192.0.2.1"));
        assert_eq!(
            subnets(&v.take_batch().unwrap()),
            vec!["- 198.18.1.0/24", "+ 198.18.9.0/24 192.0.2.1"]
        );
    }

    #[test]
    fn a_relist_after_changes_is_a_snapshot_of_the_new_state() {
        let mut v = view();
        v.relist(&[node("a", "198.18.1.0/24", "192.0.2.1")]);
        v.take_batch();
        v.apply(&node("b", "198.18.2.0/24", "192.0.2.2"));
        v.relist(&[node("c", "198.18.3.0/24", "192.0.2.3")]);
        assert_eq!(subnets(&v.take_batch().unwrap()), vec!["S 198.18.3.0/24"]);
        assert!(v.take_batch().is_none());
        v.remove("c");
        assert_eq!(subnets(&v.take_batch().unwrap()), vec!["- 198.18.3.0/24"]);
    }
}
