//! Pure pieces of reconciliation: which kernel objects are ours (`is_owned`), the identity of an
//! entry (`EntryKey`), when an installed entry already is the desired one (`same_entry`), and the
//! diff from desired to installed entries as ordered ops (`plan`).
//!
//! Ordering: all deletions first (routes, then FDB entries, then neighbours), then all additions
//! (neighbours, then FDB entries, then routes), so a route never points at a missing neighbour.
//! Within a group ops are sorted by key, so equal inputs give equal plans. Peer entries (udp
//! table, WireGuard peers, extension commands) are planned the same way into `Plan::peers`; the
//! reconciler applies them after the kernel ops.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::backend::{Entry, Ownership, PeerKey, PeerOp};
use crate::kernel::{
    Fdb, MacAddr, NUD_PERMANENT, Neigh, Op, RT_TABLE_MAIN, RTPROT_BOOT, RTPROT_FLANNEL, Route, RouteKind,
};

/// The identity of an entry: the kernel keeps at most one object per key (for routes: per key and
/// metric, which we do not use). Two entries with the same key are two versions of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntryKey {
    /// (link, address)
    Neigh(u32, IpAddr),
    /// (link, MAC): `bridge fdb replace` rewrites the destination of an existing MAC.
    Fdb(u32, MacAddr),
    /// (table, destination)
    Route(u32, IpNet),
    Peer(PeerKey),
}

impl EntryKey {
    pub fn of(entry: &Entry) -> EntryKey {
        match entry {
            Entry::Neigh(n) => EntryKey::Neigh(n.index, n.ip),
            Entry::Fdb(f) => EntryKey::Fdb(f.index, f.mac),
            Entry::Route(r) => EntryKey::Route(r.table, r.dst),
            Entry::Peer(p) => EntryKey::Peer(p.key()),
        }
    }
}

/// Whether `installed` (as the kernel lists it) already is `desired`. Ignored, because the kernel
/// reports them differently from what we request or they do not change forwarding:
/// - neighbours: state bits other than NUD_PERMANENT (the kernel may add NUD_NOARP and friends);
/// - routes: `prefsrc` unless the desired route sets one, and `multipath` (owned routes never
///   have several next hops: they need an output device);
/// - FDB entries: the `self` flag (NTF_SELF says where the request goes — the vxlan device rather
///   than a bridge master — not what the entry is).
pub fn same_entry(desired: &Entry, installed: &Entry) -> bool {
    match (desired, installed) {
        (Entry::Neigh(d), Entry::Neigh(i)) => {
            d.index == i.index
                && d.ip == i.ip
                && d.mac == i.mac
                && (d.state & NUD_PERMANENT) == (i.state & NUD_PERMANENT)
        }
        (Entry::Fdb(d), Entry::Fdb(i)) => {
            d.index == i.index && d.mac == i.mac && d.dst == i.dst && d.permanent == i.permanent
        }
        (Entry::Route(d), Entry::Route(i)) => {
            d.dst == i.dst
                && d.gateway == i.gateway
                && d.oif == i.oif
                && d.table == i.table
                && d.protocol == i.protocol
                && d.scope == i.scope
                && d.kind == i.kind
                && d.onlink == i.onlink
                && (d.prefsrc.is_none() || d.prefsrc == i.prefsrc)
        }
        (Entry::Peer(d), Entry::Peer(i)) => d == i,
        _ => false,
    }
}

fn inside_any(nets: &[IpNet], dst: &IpNet) -> bool {
    nets.iter().any(|n| n.contains(dst))
}

fn overlaps_any(nets: &[IpNet], dst: &IpNet) -> bool {
    nets.iter().any(|n| n.contains(dst) || dst.contains(n))
}

/// Whether the reconciler owns this object, and so may delete it when it is not desired.
///
/// - A route: main table, unicast, a single next hop whose output device is in `route_oifs`, a
///   destination inside one of `networks`, and
///   - protocol `RTPROT_FLANNEL` (only this daemon writes it), or
///   - protocol `boot` (what upstream flanneld writes) and a destination that does not overlap
///     `exclude` (our own subnets), and either an output device that is one of the backend's
///     `devices` or a gateway that is a current node's public IP (`peer_gateways`).
///
///   So an operator's static route inside the cluster network through the external interface
///   (protocol boot or static, via a gateway that is no node) is never ours; upstream's leftovers
///   for peers that left are. A protocol-boot route a lease wants is adopted: the replace rewrites
///   it in place with our protocol.
/// - A neighbour: NUD_PERMANENT on one of `devices`.
/// - An FDB entry: permanent, with a destination, for a non-zero MAC, on one of `devices`
///   (entries the kernel learned are not permanent and stay untouched).
/// - A peer entry: always (its `PeerTable` reports only the peers it owns).
pub fn is_owned(own: &Ownership, entry: &Entry) -> bool {
    match entry {
        Entry::Route(r) => is_owned_route(own, r),
        Entry::Neigh(n) => is_owned_neigh(own, n),
        Entry::Fdb(f) => is_owned_fdb(own, f),
        Entry::Peer(_) => true,
    }
}

pub fn is_owned_route(own: &Ownership, r: &Route) -> bool {
    let Some(oif) = r.oif else { return false };
    let candidate = r.table == RT_TABLE_MAIN
        && r.kind == RouteKind::Unicast
        && !r.multipath
        && own.route_oifs.contains(&oif)
        && inside_any(&own.networks, &r.dst);
    candidate
        && match r.protocol {
            RTPROT_FLANNEL => true,
            RTPROT_BOOT => {
                !overlaps_any(&own.exclude, &r.dst)
                    && (own.devices.contains(&oif)
                        || r.gateway.is_some_and(|gw| own.peer_gateways.contains(&gw)))
            }
            _ => false,
        }
}

/// A protocol-boot route inside the cluster network through one of our route devices that is not
/// ours: possibly an operator's, possibly upstream's leftover for a node that is gone. The
/// reconciler leaves it alone and names it once.
pub fn is_foreign_route_in_network(own: &Ownership, r: &Route) -> bool {
    r.table == RT_TABLE_MAIN
        && r.kind == RouteKind::Unicast
        && r.protocol == RTPROT_BOOT
        && r.oif.is_some_and(|oif| own.route_oifs.contains(&oif))
        && inside_any(&own.networks, &r.dst)
        && !overlaps_any(&own.exclude, &r.dst)
        && !is_owned_route(own, r)
}

pub fn is_owned_neigh(own: &Ownership, n: &Neigh) -> bool {
    own.devices.contains(&n.index) && n.state & NUD_PERMANENT != 0
}

pub fn is_owned_fdb(own: &Ownership, f: &Fdb) -> bool {
    own.devices.contains(&f.index) && f.permanent && f.dst.is_some() && f.mac != MacAddr::default()
}

/// Desired entries by key; when two share a key the first one wins (`conflicts` lists the losers).
pub struct DesiredSet<'a> {
    pub by_key: BTreeMap<EntryKey, &'a Entry>,
    pub conflicts: Vec<&'a Entry>,
}

impl<'a> DesiredSet<'a> {
    pub fn new(desired: &'a [Entry]) -> DesiredSet<'a> {
        let mut by_key = BTreeMap::new();
        let mut conflicts = Vec::new();
        for e in desired {
            match by_key.entry(EntryKey::of(e)) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(e);
                }
                std::collections::btree_map::Entry::Occupied(o) => {
                    if *o.get() != e {
                        conflicts.push(e);
                    }
                }
            }
        }
        DesiredSet { by_key, conflicts }
    }
}

/// The changes of one pass: kernel ops (for rtnetlink) and peer ops (for the backend's
/// `PeerTable`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Plan {
    pub kernel: Vec<Op>,
    pub peers: Vec<PeerOp>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.kernel.is_empty() && self.peers.is_empty()
    }
    pub fn len(&self) -> usize {
        self.kernel.len() + self.peers.len()
    }
}

/// The kernel ops that turn `installed` (owned entries as read from the kernel) into `desired`.
///
/// A desired entry whose key has no installed entry is added; one whose installed entry differs
/// is replaced in place (no gap). Installed entries that are not desired are deleted, including
/// extra versions of a desired key (when one of them is already right it is the one kept).
/// Desired entries that share a key with an earlier one are dropped (the first wins).
pub fn plan(desired: &[Entry], installed: &[Entry]) -> Vec<Op> {
    plan_desired(&DesiredSet::new(desired), installed).kernel
}

/// `plan` for kernel and peer entries, with the desired entries already keyed (the reconciler
/// keys them once per pass).
pub fn plan_desired(desired: &DesiredSet<'_>, installed: &[Entry]) -> Plan {
    let mut installed_by_key: BTreeMap<EntryKey, Vec<&Entry>> = BTreeMap::new();
    for e in installed {
        installed_by_key.entry(EntryKey::of(e)).or_default().push(e);
    }

    let mut deletes: Vec<&Entry> = Vec::new();
    let mut replaces: Vec<&Entry> = Vec::new();
    for (key, want) in &desired.by_key {
        match installed_by_key.get(key) {
            None => replaces.push(want),
            Some(have) => match have.iter().position(|h| same_entry(want, h)) {
                Some(keep) => deletes.extend(
                    have.iter()
                        .enumerate()
                        .filter(|(i, _)| *i != keep)
                        .map(|(_, h)| *h),
                ),
                None => {
                    // The first installed version is rewritten in place; the others go.
                    replaces.push(want);
                    deletes.extend(have.iter().skip(1));
                }
            },
        }
    }
    for (key, have) in &installed_by_key {
        if !desired.by_key.contains_key(key) {
            deletes.extend(have.iter());
        }
    }

    let rank_delete = |e: &Entry| match e {
        Entry::Route(_) => 0,
        Entry::Fdb(_) => 1,
        Entry::Neigh(_) => 2,
        Entry::Peer(_) => 3,
    };
    let rank_add = |e: &Entry| match e {
        Entry::Peer(_) => 0,
        Entry::Neigh(_) => 1,
        Entry::Fdb(_) => 2,
        Entry::Route(_) => 3,
    };
    deletes.sort_by(|a, b| rank_delete(a).cmp(&rank_delete(b)).then_with(|| a.cmp(b)));
    replaces.sort_by(|a, b| rank_add(a).cmp(&rank_add(b)).then_with(|| a.cmp(b)));

    let mut out = Plan {
        kernel: Vec::with_capacity(deletes.len() + replaces.len()),
        peers: Vec::new(),
    };
    for e in deletes {
        match e {
            Entry::Route(r) => out.kernel.push(Op::DeleteRoute(r.clone())),
            Entry::Fdb(f) => out.kernel.push(Op::DeleteFdb(f.clone())),
            Entry::Neigh(n) => out.kernel.push(Op::DeleteNeigh(n.clone())),
            Entry::Peer(p) => out.peers.push(PeerOp::Delete(p.clone())),
        }
    }
    for e in replaces {
        match e {
            Entry::Route(r) => out.kernel.push(Op::ReplaceRoute(r.clone())),
            Entry::Fdb(f) => out.kernel.push(Op::ReplaceFdb(f.clone())),
            Entry::Neigh(n) => out.kernel.push(Op::ReplaceNeigh(n.clone())),
            Entry::Peer(p) => out.peers.push(PeerOp::Replace(p.clone())),
        }
    }
    out
}

/// The entry a kernel op acts on.
pub fn op_entry(op: &Op) -> Entry {
    match op {
        Op::ReplaceRoute(r) | Op::DeleteRoute(r) => Entry::Route(r.clone()),
        Op::ReplaceNeigh(n) | Op::DeleteNeigh(n) => Entry::Neigh(n.clone()),
        Op::ReplaceFdb(f) | Op::DeleteFdb(f) => Entry::Fdb(f.clone()),
    }
}

pub fn is_delete(op: &Op) -> bool {
    matches!(op, Op::DeleteRoute(_) | Op::DeleteNeigh(_) | Op::DeleteFdb(_))
}
