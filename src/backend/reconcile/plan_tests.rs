//! Unit tests of the pure parts: plan, equality, ownership, underlay, event classification.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::*;
use crate::backend::{Entry, Ownership, Underlay};
use crate::kernel::{
    Fdb, KernelEvent, Link, MacAddr, NUD_NOARP, NUD_PERMANENT, NUD_REACHABLE, Neigh, Op, RT_SCOPE_LINK,
    RTPROT_KERNEL, Route,
};

pub(super) const DEV: u32 = 5;
pub(super) const EXT: u32 = 2;

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(super) fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

pub(super) fn mac(last: u8) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, 0, last])
}

/// The vxlan triple for peer `n`: subnet 198.18.n.0/24 behind 192.0.2.n.
pub(super) fn triple(n: u8) -> Vec<Entry> {
    crate::backend::vxlan::peer_entries(
        DEV,
        EXT,
        net(&format!("198.18.{n}.0/24")),
        mac(n),
        ip(&format!("192.0.2.{n}")),
        false,
    )
}

pub(super) fn ownership() -> Ownership {
    Ownership {
        devices: vec![DEV],
        networks: vec![net("198.18.0.0/16")],
        route_oifs: vec![DEV, EXT],
        exclude: vec![net("198.18.1.0/24")],
        ..Ownership::default()
    }
}

pub(super) fn route_of(entries: &[Entry]) -> Route {
    entries
        .iter()
        .find_map(|e| match e {
            Entry::Route(r) => Some(r.clone()),
            _ => None,
        })
        .unwrap()
}

#[test]
fn identical_state_plans_nothing() {
    let want: Vec<Entry> = (2..6).flat_map(triple).collect();
    assert!(plan(&want, &want).is_empty());
}

#[test]
fn deletes_go_route_fdb_neigh_then_adds_go_neigh_fdb_route() {
    let ops = plan(&triple(2), &triple(3));
    let kinds: Vec<&str> = ops
        .iter()
        .map(|op| match op {
            Op::DeleteRoute(_) => "-route",
            Op::DeleteFdb(_) => "-fdb",
            Op::DeleteNeigh(_) => "-neigh",
            Op::ReplaceNeigh(_) => "+neigh",
            Op::ReplaceFdb(_) => "+fdb",
            Op::ReplaceRoute(_) => "+route",
        })
        .collect();
    assert_eq!(kinds, ["-route", "-fdb", "-neigh", "+neigh", "+fdb", "+route"]);
    // The deletes carry the installed objects as read.
    assert_eq!(ops[0], Op::DeleteRoute(route_of(&triple(3))));
}

#[test]
fn a_changed_object_is_replaced_in_place_without_delete() {
    let want = triple(2);
    let mut have = triple(2);
    // The neighbour entry carries another MAC than wanted: one replace.
    if let Entry::Neigh(n) = &mut have[0] {
        n.mac = Some(mac(99));
    }
    let ops = plan(&want, &have);
    assert_eq!(
        ops,
        vec![Op::ReplaceNeigh(match &want[0] {
            Entry::Neigh(n) => n.clone(),
            _ => unreachable!(),
        })]
    );
    // A gateway change of a route: one replace.
    let mut moved = route_of(&want);
    moved.gateway = Some(ip("198.18.2.1"));
    let ops = plan(&want, &[want[0].clone(), want[1].clone(), Entry::Route(moved)]);
    assert_eq!(ops, vec![Op::ReplaceRoute(route_of(&want))]);
}

#[test]
fn fdb_destination_change_is_one_replace() {
    let want = triple(2);
    let mut have = triple(2);
    if let Entry::Fdb(f) = &mut have[1] {
        f.dst = Some(ip("192.0.2.200"));
    }
    let ops = plan(&want, &have);
    assert_eq!(ops.len(), 1);
    assert!(matches!(&ops[0], Op::ReplaceFdb(f) if f.dst == Some(ip("192.0.2.2"))));
}

#[test]
fn equality_ignores_what_the_kernel_fills_in() {
    let want = triple(2);
    let have: Vec<Entry> = want
        .iter()
        .cloned()
        .map(|e| match e {
            Entry::Neigh(n) => Entry::Neigh(Neigh {
                state: NUD_PERMANENT | NUD_NOARP,
                ..n
            }),
            Entry::Route(r) => Entry::Route(Route {
                prefsrc: Some(ip("198.18.1.0")),
                ..r
            }),
            Entry::Fdb(f) => Entry::Fdb(Fdb {
                self_flag: false,
                ..f
            }),
            Entry::Peer(p) => Entry::Peer(p),
        })
        .collect();
    assert!(plan(&want, &have).is_empty());
    // ...but not a lost PERMANENT bit, a wrong onlink flag or another protocol.
    let n = Neigh {
        index: DEV,
        ip: ip("198.18.2.0"),
        mac: Some(mac(2)),
        state: NUD_PERMANENT,
    };
    assert!(!same_entry(
        &Entry::Neigh(n.clone()),
        &Entry::Neigh(Neigh {
            state: NUD_REACHABLE,
            ..n
        })
    ));
    let r = route_of(&want);
    assert!(!same_entry(
        &Entry::Route(r.clone()),
        &Entry::Route(Route {
            onlink: false,
            ..r.clone()
        })
    ));
    assert!(!same_entry(
        &Entry::Route(r.clone()),
        &Entry::Route(Route {
            protocol: RTPROT_KERNEL,
            ..r
        })
    ));
}

#[test]
fn extra_versions_of_a_key_are_deleted_keeping_the_right_one() {
    let want = triple(2);
    let right = route_of(&want);
    let wrong = Route {
        gateway: Some(ip("198.18.2.9")),
        ..right.clone()
    };
    let have = vec![
        want[0].clone(),
        want[1].clone(),
        Entry::Route(wrong.clone()),
        Entry::Route(right.clone()),
    ];
    assert_eq!(plan(&want, &have), vec![Op::DeleteRoute(wrong.clone())]);
    // None right: the first is rewritten in place, the others go.
    let wrong2 = Route {
        gateway: Some(ip("198.18.2.8")),
        ..right.clone()
    };
    let have = vec![
        want[0].clone(),
        want[1].clone(),
        Entry::Route(wrong.clone()),
        Entry::Route(wrong2.clone()),
    ];
    assert_eq!(
        plan(&want, &have),
        vec![Op::DeleteRoute(wrong2), Op::ReplaceRoute(right)]
    );
}

#[test]
fn conflicting_desired_entries_first_wins() {
    // Two peers claim the same VTEP MAC: one FDB entry can only point at one of them.
    let mut a = triple(2);
    let b = vec![Entry::Fdb(Fdb {
        index: DEV,
        mac: mac(2),
        dst: Some(ip("192.0.2.3")),
        self_flag: true,
        permanent: true,
    })];
    a.extend(b.clone());
    let set = DesiredSet::new(&a);
    assert_eq!(set.conflicts, vec![&b[0]]);
    let ops = plan(&a, &[]);
    assert_eq!(ops.iter().filter(|o| matches!(o, Op::ReplaceFdb(_))).count(), 1);
    assert!(
        ops.iter()
            .any(|o| matches!(o, Op::ReplaceFdb(f) if f.dst == Some(ip("192.0.2.2"))))
    );
}

#[test]
fn underlay_uses_the_longest_prefix_like_route_get() {
    let connected = Route {
        protocol: RTPROT_KERNEL,
        scope: RT_SCOPE_LINK,
        ..Route::unicast(net("192.0.2.0/24"), None, Some(EXT))
    };
    let default = Route::unicast(net("0.0.0.0/0"), Some(ip("192.0.2.254")), Some(EXT));
    let detour = Route::unicast(net("192.0.2.128/25"), Some(ip("192.0.2.254")), Some(EXT));
    // A stray device route over the vxlan device says nothing about the underlay.
    let over_vxlan = Route::unicast(net("203.0.113.0/24"), None, Some(DEV));
    let u = underlay_from(&[connected, default, detour, over_vxlan], &ownership());
    assert!(u.is_direct(ip("192.0.2.7")));
    assert!(
        !u.is_direct(ip("192.0.2.200")),
        "a more specific route via a gateway wins"
    );
    assert!(
        !u.is_direct(ip("198.51.100.1")),
        "reached through the default gateway"
    );
    assert!(!u.is_direct(ip("203.0.113.1")));
    assert!(!Underlay::default().is_direct(ip("192.0.2.7")));
}

#[test]
fn classify_reacts_to_drift_and_ignores_echoes_and_foreign_objects() {
    let own = ownership();
    let names = vec!["flannel.1".to_string()];
    let want = triple(2);
    let desired: BTreeMap<EntryKey, Entry> = want.iter().map(|e| (EntryKey::of(e), e.clone())).collect();
    let ours = route_of(&want);
    let c = |e: KernelEvent| classify(&e, &own, &names, &desired);

    assert_eq!(
        c(KernelEvent::RouteAdded(ours.clone())),
        Trigger::Nothing,
        "echo of our replace"
    );
    assert_eq!(
        c(KernelEvent::RouteDeleted(ours.clone())),
        Trigger::Pass,
        "our route vanished"
    );
    let stale = route_of(&triple(3));
    assert_eq!(
        c(KernelEvent::RouteAdded(stale.clone())),
        Trigger::Pass,
        "an owned route nobody wants"
    );
    assert_eq!(
        c(KernelEvent::RouteDeleted(stale)),
        Trigger::Nothing,
        "echo of our delete"
    );
    let foreign = Route::unicast(net("203.0.113.0/24"), Some(ip("192.0.2.254")), Some(EXT));
    assert_eq!(c(KernelEvent::RouteAdded(foreign)), Trigger::Nothing);
    let connected = Route {
        protocol: RTPROT_KERNEL,
        scope: RT_SCOPE_LINK,
        ..Route::unicast(net("198.51.100.0/24"), None, Some(EXT))
    };
    assert_eq!(
        c(KernelEvent::RouteAdded(connected)),
        Trigger::Pass,
        "the underlay changed"
    );

    let n = Neigh {
        index: DEV,
        ip: ip("198.18.2.0"),
        mac: Some(mac(2)),
        state: NUD_PERMANENT,
    };
    assert_eq!(c(KernelEvent::NeighChanged(n.clone())), Trigger::Nothing);
    assert_eq!(
        c(KernelEvent::NeighChanged(Neigh {
            state: NUD_REACHABLE,
            ..n.clone()
        })),
        Trigger::Pass
    );
    assert_eq!(c(KernelEvent::NeighDeleted(n.clone())), Trigger::Pass);
    let other = Neigh {
        ip: ip("198.18.9.9"),
        state: NUD_REACHABLE,
        ..n
    };
    assert_eq!(
        c(KernelEvent::NeighChanged(other)),
        Trigger::Nothing,
        "not permanent: not ours"
    );

    let f = Fdb {
        index: DEV,
        mac: mac(2),
        dst: Some(ip("192.0.2.2")),
        self_flag: true,
        permanent: true,
    };
    assert_eq!(c(KernelEvent::FdbDeleted(f.clone())), Trigger::Pass);
    assert_eq!(c(KernelEvent::FdbChanged(f)), Trigger::Nothing);

    assert_eq!(
        c(KernelEvent::LinkDeleted {
            index: DEV,
            name: "flannel.1".into()
        }),
        Trigger::Devices
    );
    let recreated = Link {
        index: 99,
        name: "flannel.1".into(),
        kind: Some("vxlan".into()),
        mtu: 1450,
        mac: None,
        up: true,
        vxlan: None,
        ipip: None,
    };
    assert_eq!(
        c(KernelEvent::LinkChanged(recreated.clone())),
        Trigger::Devices,
        "our name, new index"
    );
    let ext = Link {
        index: EXT,
        name: "eth0".into(),
        kind: None,
        ..recreated.clone()
    };
    assert_eq!(
        c(KernelEvent::LinkChanged(ext)),
        Trigger::Pass,
        "the underlay link changed state"
    );
    let pod = Link {
        index: 40,
        name: "veth1".into(),
        kind: Some("veth".into()),
        ..recreated
    };
    assert_eq!(c(KernelEvent::LinkChanged(pod)), Trigger::Nothing);
    assert_eq!(c(KernelEvent::Overrun), Trigger::Devices);
}
