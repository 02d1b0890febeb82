//! Per-peer kernel entries (and peer-table entries: udp table, WireGuard peers) against what the
//! leases say, decided by the reconciler's own pure planner: the ops `reconcile::plan_desired` would apply to turn the installed entries into the desired
//! ones are exactly what is wrong, so doctor and daemon agree by construction. Each op becomes one
//! sentence naming the peer and the object: an entry that is missing, one that differs from the
//! lease (a neighbour with another MAC, a route through another gateway), or one in the kernel that
//! no lease explains. An FDB entry whose MAC is wrong shows in the planner as "delete the wrong
//! MAC, add the right one" (the MAC is part of an FDB entry's identity); doctor joins the two into
//! one sentence. Peer-table entries get their own sentences (`peer_table`). Pure.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::leases::public_ips;
use super::peer_table::{self, PeerDiffs};
use super::report::{Check, Finding, THIS_NODE, describe};
use crate::backend::reconcile::{DesiredSet, EntryKey, plan, same_entry};
use crate::backend::{Entry, PeerEntry};
use crate::kernel::{Fdb, Op};
use crate::lease::Lease;

/// The entries one peer's lease needs (from the backend's `entries_for`).
#[derive(Debug, Clone)]
pub struct PeerEntries<'a> {
    pub label: &'a str,
    pub lease: &'a Lease,
    pub entries: Vec<Entry>,
}

fn entry_of(op: &Op) -> (Entry, bool) {
    match op {
        Op::ReplaceRoute(r) => (Entry::Route(r.clone()), false),
        Op::DeleteRoute(r) => (Entry::Route(r.clone()), true),
        Op::ReplaceNeigh(n) => (Entry::Neigh(n.clone()), false),
        Op::DeleteNeigh(n) => (Entry::Neigh(n.clone()), true),
        Op::ReplaceFdb(f) => (Entry::Fdb(f.clone()), false),
        Op::DeleteFdb(f) => (Entry::Fdb(f.clone()), true),
    }
}

/// The peer-table entries keyed as the reconciler keys them (`DesiredSet`: the first desired
/// entry of a key wins) and compared with its own `same_entry`: what its planner would replace
/// (missing or different) or delete (installed, not desired). A table holds one entry per key,
/// so the planner's handling of several installed versions of a key does not arise.
/// (`reconcile::plan` returns kernel ops only; its `plan_desired`, which also plans peer ops, is
/// not exported.)
fn peer_diffs(
    desired: &[Entry],
    installed_by_key: &BTreeMap<EntryKey, &Entry>,
    owner: &BTreeMap<EntryKey, (Option<usize>, &Entry)>,
) -> PeerDiffs {
    let wanted = DesiredSet::new(desired);
    let mut diffs = PeerDiffs::default();
    for (key, want) in &wanted.by_key {
        let Entry::Peer(w) = want else { continue };
        let who = owner.get(key).and_then(|(who, _)| *who);
        match installed_by_key.get(key) {
            None => diffs.missing.push((who, w.clone())),
            Some(have) if !same_entry(want, have) => {
                if let Entry::Peer(h) = have {
                    diffs.differs.push((who, w.clone(), h.clone()));
                }
            }
            Some(_) => {}
        }
    }
    for (key, have) in installed_by_key {
        if let Entry::Peer(h) = have
            && !wanted.by_key.contains_key(key)
        {
            diffs.extra.push(h.clone());
        }
    }
    // In the order of the leases, as people read them.
    diffs.missing.sort_by_key(|(who, _)| *who);
    diffs.differs.sort_by_key(|(who, _, _)| *who);
    diffs
}

/// Whether `entry` concerns `lease` (its subnet, its subnet's address, its public IP), to name the
/// peer an unexplained entry most likely belonged to.
pub(super) fn concerns(entry: &Entry, lease: &Lease) -> bool {
    let in_subnet = |ip: &IpAddr| match ip {
        IpAddr::V4(v4) => lease.subnet.is_some_and(|s| s.contains(v4)),
        IpAddr::V6(v6) => lease.ipv6_subnet.is_some_and(|s| s.contains(v6)),
    };
    match entry {
        Entry::Route(r) => in_subnet(&r.dst.network()),
        Entry::Neigh(n) => in_subnet(&n.ip),
        Entry::Fdb(f) => f.dst.is_some_and(|d| public_ips(lease).contains(&d)),
        Entry::Peer(PeerEntry::Udp(p)) => {
            in_subnet(&IpAddr::V4(p.subnet.network()))
                || public_ips(lease).contains(&IpAddr::V4(*p.endpoint.ip()))
        }
        Entry::Peer(PeerEntry::Wireguard(p)) => {
            p.allowed_ips.iter().any(|n| in_subnet(&n.network()))
                || p.endpoint.is_some_and(|e| public_ips(lease).contains(&e.ip()))
        }
        Entry::Peer(PeerEntry::Extension(p)) => p.public_ip == lease.attrs.public_ip,
    }
}

/// The findings for every peer's entries; `own_entries` are the backend's entries for the own
/// lease, `installed` the owned entries read from the kernel (`reconcile::read_installed`).
pub fn entry_findings(
    own_entries: &[Entry],
    peers: &[PeerEntries<'_>],
    installed: &[Entry],
    link_name: &dyn Fn(u32) -> String,
) -> Vec<Finding> {
    // Who wants each key (the first wins, as in the reconciler): None = this node.
    let mut owner: BTreeMap<EntryKey, (Option<usize>, &Entry)> = BTreeMap::new();
    let mut desired: Vec<Entry> = own_entries.to_vec();
    for e in own_entries {
        owner.entry(EntryKey::of(e)).or_insert((None, e));
    }
    for (i, peer) in peers.iter().enumerate() {
        for e in &peer.entries {
            owner.entry(EntryKey::of(e)).or_insert((Some(i), e));
        }
        desired.extend(peer.entries.iter().cloned());
    }
    let mut installed_by_key: BTreeMap<EntryKey, &Entry> = BTreeMap::new();
    for e in installed {
        installed_by_key.entry(EntryKey::of(e)).or_insert(e);
    }

    let mut missing: Vec<(Option<usize>, Entry)> = Vec::new();
    let mut differs: Vec<(Option<usize>, Entry, Entry)> = Vec::new();
    let mut extra: Vec<Entry> = Vec::new();
    for op in plan(&desired, installed) {
        let (entry, delete) = entry_of(&op);
        let key = EntryKey::of(&entry);
        if delete {
            extra.push(entry);
            continue;
        }
        let who = owner.get(&key).and_then(|(who, _)| *who);
        match installed_by_key.get(&key) {
            Some(have) => differs.push((who, entry, (*have).clone())),
            None => missing.push((who, entry)),
        }
    }
    let peer_diffs = peer_diffs(&desired, &installed_by_key, &owner);

    let subject = |who: Option<usize>| who.map_or(THIS_NODE, |i| peers[i].label);
    // How a sentence starts: `peer <label>` or `this node`.
    let who_of =
        |who: Option<usize>| who.map_or(THIS_NODE.to_string(), |i| format!("peer {}", peers[i].label));
    let mut out = Vec::new();
    // A wrong FDB MAC: the planner deletes the entry for the wrong MAC and adds the right one.
    extra.retain(|e| {
        let Entry::Fdb(have) = e else { return true };
        let pair = missing.iter().position(|(_, want)| {
            matches!(want, Entry::Fdb(Fdb { index, dst, .. }) if *index == have.index && *dst == have.dst)
        });
        let Some(pos) = pair else { return true };
        let (who, want) = missing.remove(pos);
        let Entry::Fdb(want) = want else { return true };
        let dst = have.dst.map(|d| d.to_string()).unwrap_or_default();
        out.push(Finding::problem(
            Check::PeerEntries,
            subject(who),
            &describe(e, link_name),
            format!(
                "{}: the FDB entry for {dst} on {} has MAC {}, but the lease says VtepMAC {}",
                who_of(who),
                link_name(have.index),
                have.mac,
                want.mac
            ),
        ));
        false
    });
    for (who, want) in missing {
        let what = describe(&want, link_name);
        out.push(Finding::problem(
            Check::PeerEntries,
            subject(who),
            &what,
            format!("{}: {what} is missing", who_of(who)),
        ));
    }
    for (who, want, have) in differs {
        let (want, have) = (describe(&want, link_name), describe(&have, link_name));
        out.push(Finding::problem(
            Check::PeerEntries,
            subject(who),
            &have,
            format!(
                "{}: the kernel has {have}, but the lease says {want}",
                who_of(who)
            ),
        ));
    }
    for e in extra {
        let what = describe(&e, link_name);
        let message = match peers.iter().find(|p| concerns(&e, p.lease)) {
            Some(p) => format!(
                "peer {}: {what} is in the kernel, but the lease does not explain it (the daemon deletes it)",
                p.label
            ),
            None => format!("{what} is in the kernel, but no lease explains it (the daemon deletes it)"),
        };
        out.push(Finding::problem(
            Check::UnexplainedEntries,
            THIS_NODE,
            &what,
            message,
        ));
    }
    out.extend(peer_table::findings(peer_diffs, peers, link_name));
    if out.is_empty() {
        out.push(ok_sentence(&desired, peers.len()));
    }
    out
}

/// `n` with the singular or plural noun ("1 peer", "2 peers").
fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// All is well: how many entries of which kind were compared.
fn ok_sentence(desired: &[Entry], peers: usize) -> Finding {
    let kernel = desired.iter().filter(|e| !matches!(e, Entry::Peer(_))).count();
    let table = desired.len() - kernel;
    let noun = desired.iter().find_map(|e| match e {
        Entry::Peer(PeerEntry::Udp(_)) => Some(("udp table entry", "udp table entries")),
        Entry::Peer(PeerEntry::Wireguard(_)) => Some(("WireGuard peer", "WireGuard peers")),
        Entry::Peer(PeerEntry::Extension(_)) => Some(("extension peer", "extension peers")),
        _ => None,
    });
    let peers = counted(peers, "peer", "peers");
    let message = match noun {
        None => format!(
            "every peer's kernel entries are as its lease says, and no other is installed ({peers}, {})",
            counted(kernel, "entry", "entries")
        ),
        Some((one, many)) => format!(
            "every peer's kernel entries and {many} are as its lease says, and no other is installed \
             ({peers}, {}, {})",
            counted(kernel, "kernel entry", "kernel entries"),
            counted(table, one, many)
        ),
    };
    Finding::ok(Check::PeerEntries, THIS_NODE, "entries", message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::vxlan::peer_entries;
    use crate::kernel::{MacAddr, Neigh, Route};

    fn names(index: u32) -> String {
        if index == 3 {
            "flannel.1".into()
        } else {
            format!("#{index}")
        }
    }

    fn mac(n: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, n])
    }

    fn peer_lease(n: u16) -> Lease {
        crate::backend::testutil::lease_of(n, "vxlan", None)
    }

    fn entries(n: u8, vtep: MacAddr) -> Vec<Entry> {
        peer_entries(
            3,
            2,
            format!("198.18.{n}.0/24").parse().unwrap(),
            vtep,
            format!("192.0.2.{n}").parse().unwrap(),
            false,
        )
    }

    fn run(installed: &[Entry]) -> Vec<String> {
        let (l2, l3) = (peer_lease(2), peer_lease(3));
        let peers = [
            PeerEntries {
                label: "two",
                lease: &l2,
                entries: entries(2, mac(2)),
            },
            PeerEntries {
                label: "three",
                lease: &l3,
                entries: entries(3, mac(3)),
            },
        ];
        entry_findings(&[], &peers, installed, &names)
            .into_iter()
            .map(|f| f.message)
            .collect()
    }

    #[test]
    fn all_installed_is_one_ok_sentence() {
        let mut installed = entries(2, mac(2));
        installed.extend(entries(3, mac(3)));
        assert_eq!(
            run(&installed),
            [
                "every peer's kernel entries are as its lease says, and no other is installed (2 peers, 6 entries)"
            ]
        );
    }

    #[test]
    fn a_wrong_fdb_mac_is_one_sentence_naming_the_peer() {
        let mut installed = entries(2, mac(2));
        let mut wrong = entries(3, mac(3));
        wrong[1] = entries(3, mac(99))[1].clone();
        installed.extend(wrong);
        assert_eq!(
            run(&installed),
            [
                "peer three: the FDB entry for 192.0.2.3 on flannel.1 has MAC 02:00:00:00:00:63, but \
              the lease says VtepMAC 02:00:00:00:00:03"
            ]
        );
    }

    #[test]
    fn missing_differing_and_unexplained_entries_are_named() {
        let mut installed = entries(2, mac(2));
        installed.remove(2); // the route of peer two
        let mut three = entries(3, mac(3));
        if let Entry::Neigh(n) = &mut three[0] {
            n.mac = Some(mac(77));
        }
        installed.extend(three);
        installed.push(Entry::Route(Route::unicast(
            "198.18.9.0/24".parse().unwrap(),
            Some("192.0.2.9".parse().unwrap()),
            Some(2),
        )));
        installed.push(Entry::Neigh(Neigh {
            index: 3,
            ip: "198.18.2.7".parse().unwrap(),
            mac: Some(mac(7)),
            state: crate::kernel::NUD_PERMANENT,
        }));
        assert_eq!(
            run(&installed),
            [
                "peer two: route 198.18.2.0/24 via 198.18.2.0 dev flannel.1 onlink is missing",
                "peer three: the kernel has neighbour 198.18.3.0 lladdr 02:00:00:00:00:4d on flannel.1, \
                 but the lease says neighbour 198.18.3.0 lladdr 02:00:00:00:00:03 on flannel.1",
                "route 198.18.9.0/24 via 192.0.2.9 dev #2 is in the kernel, but no lease explains it \
                 (the daemon deletes it)",
                "peer two: neighbour 198.18.2.7 lladdr 02:00:00:00:00:07 on flannel.1 is in the kernel, \
                 but the lease does not explain it (the daemon deletes it)",
            ]
        );
    }

    #[test]
    fn counts_read_as_english() {
        assert_eq!(counted(1, "peer", "peers"), "1 peer");
        assert_eq!(counted(0, "peer", "peers"), "0 peers");
        assert_eq!(counted(2, "kernel entry", "kernel entries"), "2 kernel entries");
    }
}
