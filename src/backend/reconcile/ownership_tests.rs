//! Unit tests of the ownership rule (`plan::is_owned`): which routes, neighbours and FDB entries
//! the reconciler may delete, and that an operator's route never is one of them.

use super::plan::{is_foreign_route_in_network, is_owned};
use super::plan_tests::{DEV, EXT, ip, mac, net, ownership, route_of, triple};
use crate::backend::Entry;
use crate::kernel::{
    Fdb, MacAddr, NUD_PERMANENT, NUD_REACHABLE, Neigh, RT_SCOPE_LINK, RTPROT_BOOT, RTPROT_FLANNEL,
    RTPROT_KERNEL, Route, RouteKind,
};

#[test]
fn ownership_of_routes() {
    let own = ownership();
    let ours = route_of(&triple(2));
    assert_eq!(ours.protocol, RTPROT_FLANNEL);
    assert!(is_owned(&own, &Entry::Route(ours.clone())));
    let direct = Route::unicast(net("198.18.3.0/24"), Some(ip("192.0.2.3")), Some(EXT));
    assert!(is_owned(&own, &Entry::Route(direct.clone())));
    // Ours from an earlier lease of this node (the subnet is ours now): stale, so ours to delete.
    assert!(is_owned(
        &own,
        &Entry::Route(Route {
            dst: net("198.18.1.0/24"),
            ..ours.clone()
        })
    ));
    let not_ours = [
        // outside the cluster network
        Route {
            dst: net("203.0.113.0/24"),
            ..ours.clone()
        },
        // protocol kernel
        Route {
            protocol: RTPROT_KERNEL,
            scope: RT_SCOPE_LINK,
            ..ours.clone()
        },
        // another table
        Route {
            table: 100,
            ..ours.clone()
        },
        // another device
        Route {
            oif: Some(77),
            ..ours.clone()
        },
        // not unicast, or several next hops
        Route {
            kind: RouteKind::Blackhole,
            oif: None,
            gateway: None,
            ..ours.clone()
        },
        Route {
            multipath: true,
            ..ours.clone()
        },
    ];
    for r in not_ours {
        assert!(!is_owned(&own, &Entry::Route(r.clone())), "{r:?}");
    }
}

#[test]
fn upstreams_boot_routes_are_ours_only_through_our_device_or_via_a_node() {
    let mut own = ownership();
    own.peer_gateways = vec![ip("192.0.2.3")];
    let boot = |r: Route| Route {
        protocol: RTPROT_BOOT,
        ..r
    };
    let upstream_onlink = boot(route_of(&triple(2)));
    assert!(is_owned(&own, &Entry::Route(upstream_onlink.clone())));
    // Upstream's DirectRouting / host-gw route via a current node's public IP.
    let via_node = boot(Route::unicast(
        net("198.18.3.0/24"),
        Some(ip("192.0.2.3")),
        Some(EXT),
    ));
    assert!(is_owned(&own, &Entry::Route(via_node.clone())));
    let operators = [
        // `ip route add 198.18.9.0/24 via 192.0.2.254 dev eth0`: a gateway that is no node
        boot(Route::unicast(
            net("198.18.9.0/24"),
            Some(ip("192.0.2.254")),
            Some(EXT),
        )),
        // the same through eth0 without a gateway
        boot(Route::unicast(net("198.18.9.0/24"), None, Some(EXT))),
        // `proto static` through our own device
        Route {
            protocol: 4,
            ..upstream_onlink.clone()
        },
        // protocol boot overlapping our own subnet or covering it
        Route {
            dst: net("198.18.1.128/25"),
            ..upstream_onlink.clone()
        },
        Route {
            dst: net("198.18.0.0/16"),
            gateway: None,
            onlink: false,
            ..upstream_onlink.clone()
        },
    ];
    for r in &operators {
        assert!(!is_owned(&own, &Entry::Route(r.clone())), "{r:?}");
    }
    // Those through a route device and inside the network are named as foreign (left in place).
    assert!(is_foreign_route_in_network(&own, &operators[0]));
    assert!(is_foreign_route_in_network(&own, &operators[1]));
    assert!(!is_foreign_route_in_network(&own, &via_node));
    // Without the node, its route is an operator's as far as we can tell.
    own.peer_gateways.clear();
    assert!(!is_owned(&own, &Entry::Route(via_node)));
}

#[test]
fn ownership_of_neighbours_and_fdb_entries() {
    let own = ownership();
    let n = Neigh {
        index: DEV,
        ip: ip("198.18.2.0"),
        mac: Some(mac(2)),
        state: NUD_PERMANENT,
    };
    assert!(is_owned(&own, &Entry::Neigh(n.clone())));
    assert!(!is_owned(
        &own,
        &Entry::Neigh(Neigh {
            state: NUD_REACHABLE,
            ..n.clone()
        })
    ));
    assert!(!is_owned(&own, &Entry::Neigh(Neigh { index: EXT, ..n })));
    let f = Fdb {
        index: DEV,
        mac: mac(2),
        dst: Some(ip("192.0.2.2")),
        self_flag: true,
        permanent: true,
    };
    assert!(is_owned(&own, &Entry::Fdb(f.clone())));
    assert!(!is_owned(
        &own,
        &Entry::Fdb(Fdb {
            permanent: false,
            ..f.clone()
        })
    ));
    assert!(!is_owned(
        &own,
        &Entry::Fdb(Fdb {
            dst: None,
            ..f.clone()
        })
    ));
    assert!(!is_owned(
        &own,
        &Entry::Fdb(Fdb {
            mac: MacAddr::default(),
            ..f.clone()
        })
    ));
    assert!(!is_owned(&own, &Entry::Fdb(Fdb { index: EXT, ..f })));
}
