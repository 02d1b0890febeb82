//! Unit tests for interface selection over constructed snapshots (single-stack rules, address
//! choice); error cases are in `tests_errors.rs`, dual stack and `discover` in `tests_dual.rs`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::*;
use crate::kernel::{Addr, AddrFlags, Link, RouteKind};

pub(super) fn link(index: u32, name: &str) -> Link {
    Link {
        index,
        name: name.to_string(),
        kind: None,
        mtu: 1500,
        mac: None,
        up: true,
        vxlan: None,
        ipip: None,
    }
}

pub(super) fn addr(index: u32, ip: &str) -> Addr {
    addr_flags(
        index,
        ip,
        AddrFlags {
            permanent: true,
            deprecated: false,
            temporary: false,
        },
    )
}

pub(super) fn addr_flags(index: u32, ip: &str, flags: AddrFlags) -> Addr {
    let ip: IpAddr = ip.parse().expect("test address");
    let prefix_len = if ip.is_ipv4() { 24 } else { 64 };
    Addr {
        index,
        ip,
        prefix_len,
        flags,
    }
}

pub(super) fn route(dst: &str, oif: u32) -> Route {
    let dst: IpNet = dst.parse().expect("test prefix");
    Route::unicast(dst, None, Some(oif))
}

pub(super) fn v4(s: &str) -> Ipv4Addr {
    s.parse().expect("test IPv4")
}

pub(super) fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("test IPv6")
}

/// lo (1), eth0 (2) with two IPv4 addresses, eth1 (3) with one; default route via eth1.
pub(super) fn base() -> NetSnapshot {
    NetSnapshot {
        links: vec![link(1, "lo"), link(2, "eth0"), link(3, "eth1")],
        addrs: vec![
            addr(1, "127.0.0.1"),
            addr(1, "::1"),
            addr(2, "192.0.2.10"),
            addr(2, "192.0.2.11"),
            addr(3, "198.51.100.10"),
        ],
        routes: vec![route("192.0.2.0/24", 2), route("0.0.0.0/0", 3)],
    }
}

pub(super) fn req_v4() -> IfaceRequest {
    IfaceRequest {
        ipv4: true,
        ..IfaceRequest::default()
    }
}

pub(super) fn failure_of(err: &IfaceError) -> Vec<LookupFailure> {
    match err {
        IfaceError::NoMatch { attempts, .. } => attempts.iter().map(|a| a.failure.clone()).collect(),
        IfaceError::NotFound { attempt, .. } => vec![attempt.failure.clone()],
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn default_route_selects_its_interface_and_first_address() {
    let sel = select(&req_v4(), &base(), None).expect("selection");
    assert_eq!(
        sel.ext,
        ExternalInterface {
            name: "eth1".into(),
            index: 3,
            mtu: 1500,
            iface_addr: Some(v4("198.51.100.10")),
            iface_v6_addr: None,
            ext_addr: Some(v4("198.51.100.10")),
            ext_v6_addr: None,
        }
    );
    assert!(sel.reasons[0].contains("the default route"), "{:?}", sel.reasons);
    assert!(
        sel.reasons.iter().any(|r| r.contains("198.51.100.10")),
        "{:?}",
        sel.reasons
    );
}

#[test]
fn default_route_first_one_wins_and_other_tables_and_kinds_are_ignored() {
    let mut snap = base();
    let mut other_table = route("0.0.0.0/0", 1);
    other_table.table = 100;
    let mut blackhole = route("0.0.0.0/0", 1);
    blackhole.kind = RouteKind::Blackhole;
    blackhole.oif = None;
    snap.routes = vec![
        other_table,
        blackhole,
        route("0.0.0.0/0", 2),
        route("0.0.0.0/0", 3),
    ];
    let sel = select(&req_v4(), &snap, None).expect("selection");
    assert_eq!(sel.ext.name, "eth0");
    assert_eq!(sel.ext.iface_addr, Some(v4("192.0.2.10")));
}

#[test]
fn address_choice_order_and_filters() {
    let dynamic = AddrFlags {
        permanent: false,
        deprecated: false,
        temporary: false,
    };
    let temporary = AddrFlags {
        permanent: false,
        deprecated: false,
        temporary: true,
    };
    let deprecated = AddrFlags {
        permanent: true,
        deprecated: true,
        temporary: false,
    };
    let snap = NetSnapshot {
        links: vec![link(2, "eth0")],
        addrs: vec![
            addr(2, "fe80::1"),
            addr_flags(2, "2001:db8::d", deprecated),
            addr_flags(2, "2001:db8::7", temporary),
            addr_flags(2, "2001:db8::5", dynamic),
            addr(2, "2001:db8::1"),
            addr(2, "169.254.0.9"),
            addr_flags(2, "192.0.2.9", dynamic),
            addr(2, "192.0.2.8"),
        ],
        routes: vec![route("0.0.0.0/0", 2), route("::/0", 2)],
    };
    let req = IfaceRequest {
        ipv4: true,
        ipv6: true,
        ..IfaceRequest::default()
    };
    let sel = select(&req, &snap, None).expect("selection");
    assert_eq!(sel.ext.iface_addr, Some(v4("192.0.2.8")));
    assert_eq!(sel.ext.iface_v6_addr, Some(v6("2001:db8::1")));
    // Then dynamic before temporary, and a temporary global before a link-local.
    let mut s = snap.clone();
    s.addrs.retain(|a| a.ip != IpAddr::V6(v6("2001:db8::1")));
    assert_eq!(
        select(&req, &s, None).expect("dynamic").ext.iface_v6_addr,
        Some(v6("2001:db8::5"))
    );
    s.addrs.retain(|a| a.ip != IpAddr::V6(v6("2001:db8::5")));
    assert_eq!(
        select(&req, &s, None).expect("temporary").ext.iface_v6_addr,
        Some(v6("2001:db8::7"))
    );

    // Only link-local left: it will do.
    let mut s = snap.clone();
    s.addrs
        .retain(|a| matches!(a.ip, IpAddr::V4(_)) || a.ip == IpAddr::V6(v6("fe80::1")));
    let sel = select(&req, &s, None).expect("link-local only");
    assert_eq!(sel.ext.iface_v6_addr, Some(v6("fe80::1")));

    // Only a deprecated address: not usable.
    s.addrs.retain(|a| matches!(a.ip, IpAddr::V4(_)));
    s.addrs.push(addr_flags(2, "2001:db8::d", deprecated));
    let err = select(&req, &s, None).expect_err("deprecated only");
    assert_eq!(
        failure_of(&err),
        vec![LookupFailure::NoAddress {
            iface: "eth0".into(),
            family: Family::V6
        }]
    );
    assert!(
        err.to_string()
            .contains("interface eth0 has no usable IPv6 address"),
        "{err}"
    );
}

#[test]
fn iface_by_name_and_fallback_order() {
    let req = IfaceRequest {
        iface: vec!["eth9".into(), "eth0".into()],
        ..req_v4()
    };
    let sel = select(&req, &base(), None).expect("selection");
    assert_eq!(sel.ext.name, "eth0");
    assert_eq!(sel.ext.iface_addr, Some(v4("192.0.2.10")));
    assert_eq!(sel.reasons[0], "--iface \"eth9\": no interface is named \"eth9\"");
    assert!(
        sel.reasons[1].starts_with("chosen by --iface \"eth0\""),
        "{:?}",
        sel.reasons
    );
}

#[test]
fn iface_by_ip_keeps_that_exact_address() {
    let deprecated = AddrFlags {
        permanent: true,
        deprecated: true,
        temporary: false,
    };
    let mut snap = base();
    snap.addrs.push(addr_flags(3, "198.51.100.99", deprecated));
    let req = IfaceRequest {
        iface: vec!["192.0.2.11".into()],
        ..req_v4()
    };
    let sel = select(&req, &snap, None).expect("selection");
    assert_eq!(
        (sel.ext.name.as_str(), sel.ext.iface_addr),
        ("eth0", Some(v4("192.0.2.11")))
    );
    assert_eq!(sel.ext.ext_addr, Some(v4("192.0.2.11")));

    // Any address counts for ownership, even a deprecated one; so does the IPv4-mapped form.
    for value in ["198.51.100.99", "::ffff:198.51.100.99"] {
        let req = IfaceRequest {
            iface: vec![value.into()],
            ..req_v4()
        };
        let sel = select(&req, &snap, None).expect("deprecated owner");
        assert_eq!(
            (sel.ext.name.as_str(), sel.ext.iface_addr),
            ("eth1", Some(v4("198.51.100.99")))
        );
    }
}

#[test]
fn links_are_searched_in_index_order() {
    let mut snap = base();
    snap.links.reverse();
    snap.addrs.push(addr(3, "192.0.2.10"));
    let req = IfaceRequest {
        iface: vec!["192.0.2.10".into()],
        ..req_v4()
    };
    assert_eq!(select(&req, &snap, None).expect("selection").ext.name, "eth0");
}

#[test]
fn first_success_short_circuits_later_selectors() {
    let req = IfaceRequest {
        iface: vec!["eth0".into()],
        iface_regex: vec!["(".into()],
        iface_can_reach: Some("203.0.113.50".parse().expect("ip")),
        ..req_v4()
    };
    let sel = select(&req, &base(), None).expect("selection");
    assert_eq!(sel.ext.name, "eth0");
    assert_eq!(sel.reasons.len(), 2, "{:?}", sel.reasons);
}

#[test]
fn public_ip_alone_selects_the_interface_owning_it() {
    let req = IfaceRequest {
        public_ip: Some(v4("192.0.2.11")),
        ..req_v4()
    };
    let sel = select(&req, &base(), None).expect("selection");
    assert_eq!(sel.ext.name, "eth0");
    assert_eq!(sel.ext.iface_addr, Some(v4("192.0.2.11")));
    assert_eq!(sel.ext.ext_addr, Some(v4("192.0.2.11")));

    // Quirk 9: behind NAT, without --iface, this fails and names the address.
    let req = IfaceRequest {
        public_ip: Some(v4("203.0.113.5")),
        ..req_v4()
    };
    let err = select(&req, &base(), None).expect_err("not owned");
    assert_eq!(
        failure_of(&err),
        vec![LookupFailure::NoOwner {
            ip: "203.0.113.5".parse().expect("ip")
        }]
    );
    let text = err.to_string();
    assert!(text.contains("--public-ip 203.0.113.5"), "{text}");
    assert!(
        text.contains("no interface has the address 203.0.113.5"),
        "{text}"
    );
}

#[test]
fn public_ip_with_iface_is_only_advertised() {
    let req = IfaceRequest {
        iface: vec!["eth1".into()],
        public_ip: Some(v4("203.0.113.5")),
        public_ipv6: Some(v6("2001:db8:ffff::5")),
        ..req_v4()
    };
    let sel = select(&req, &base(), None).expect("selection");
    assert_eq!(sel.ext.iface_addr, Some(v4("198.51.100.10")));
    assert_eq!(sel.ext.ext_addr, Some(v4("203.0.113.5")));
    // As upstream: a given --public-ipv6 is passed on even in an IPv4-only setup.
    assert_eq!(sel.ext.iface_v6_addr, None);
    assert_eq!(sel.ext.ext_v6_addr, Some(v6("2001:db8:ffff::5")));
    assert!(
        sel.reasons
            .iter()
            .any(|r| r == "external address 203.0.113.5 from --public-ip")
    );
}

#[test]
fn regex_matches_addresses_before_names() {
    // eth1's name matches, but eth0's second address matches too and addresses come first.
    let req = IfaceRequest {
        iface_regex: vec![r"^eth1$|^192\.0\.2\.11$".into()],
        ..req_v4()
    };
    let sel = select(&req, &base(), None).expect("selection");
    assert_eq!(
        (sel.ext.name.as_str(), sel.ext.iface_addr),
        ("eth0", Some(v4("192.0.2.11")))
    );

    let req = IfaceRequest {
        iface_regex: vec!["^eth1$".into()],
        ..req_v4()
    };
    let sel = select(&req, &base(), None).expect("name match");
    assert_eq!(
        (sel.ext.name.as_str(), sel.ext.iface_addr),
        ("eth1", Some(v4("198.51.100.10")))
    );

    // Unanchored, like Go's MatchString.
    let req = IfaceRequest {
        iface_regex: vec![r"51\.100".into()],
        ..req_v4()
    };
    assert_eq!(select(&req, &base(), None).expect("unanchored").ext.name, "eth1");
}

#[test]
fn can_reach_uses_route_device_and_source() {
    let target: IpAddr = "203.0.113.50".parse().expect("ip");
    let mut via = route("203.0.113.50/32", 3);
    via.gateway = Some("198.51.100.1".parse().expect("ip"));
    via.prefsrc = Some("198.51.100.10".parse().expect("ip"));
    let req = IfaceRequest {
        iface_can_reach: Some(target),
        ..req_v4()
    };
    let sel = select(&req, &base(), Some(std::slice::from_ref(&via))).expect("selection");
    assert_eq!(
        (sel.ext.name.as_str(), sel.ext.iface_addr),
        ("eth1", Some(v4("198.51.100.10")))
    );

    // Without a preferred source, the first usable address.
    via.oif = Some(2);
    via.prefsrc = None;
    let sel = select(&req, &base(), Some(std::slice::from_ref(&via))).expect("no prefsrc");
    assert_eq!(
        (sel.ext.name.as_str(), sel.ext.iface_addr),
        ("eth0", Some(v4("192.0.2.10")))
    );

    let err = select(&req, &base(), None).expect_err("route not looked up");
    assert_eq!(
        failure_of(&err),
        vec![LookupFailure::RouteNotLookedUp { ip: target }]
    );
    via.oif = None;
    let err = select(&req, &base(), Some(std::slice::from_ref(&via))).expect_err("no device");
    assert_eq!(
        failure_of(&err),
        vec![LookupFailure::RouteWithoutIface { ip: target }]
    );
}

#[test]
fn empty_iface_value_means_default_route() {
    let req = IfaceRequest {
        iface: vec![String::new()],
        ..req_v4()
    };
    assert_eq!(select(&req, &base(), None).expect("selection").ext.name, "eth1");
}
