//! Unit tests for the Go address classes, `--iface` parsing and the failure cases of selection:
//! each error names the selector, the object and the value, and lists the interfaces.

use std::net::IpAddr;

use super::lookup::{is_global_unicast, is_link_local_unicast, parse_ip};
use super::tests::{base, failure_of, req_v4, route, v4, v6};
use super::*;

#[test]
fn go_address_classes() {
    for (ip, global, ll) in [
        ("192.0.2.1", true, false),
        ("10.0.0.1", true, false),
        ("127.0.0.1", false, false),
        ("169.254.3.4", false, true),
        ("224.0.0.1", false, false),
        ("255.255.255.255", false, false),
        ("0.0.0.0", false, false),
        ("2001:db8::1", true, false),
        ("fd00::1", true, false),
        ("fe80::1", false, true),
        ("febf::1", false, true),
        ("fec0::1", true, false),
        ("::1", false, false),
        ("::", false, false),
        ("ff02::1", false, false),
        ("::ffff:127.0.0.1", false, false),
    ] {
        let ip: IpAddr = ip.parse().expect("test address");
        assert_eq!(is_global_unicast(ip), global, "global {ip}");
        assert_eq!(is_link_local_unicast(ip), ll, "link-local {ip}");
    }
}

#[test]
fn iface_values_parse_like_go() {
    assert_eq!(parse_ip("192.0.2.1"), Some(IpAddr::V4(v4("192.0.2.1"))));
    assert_eq!(parse_ip("::ffff:192.0.2.1"), Some(IpAddr::V4(v4("192.0.2.1"))));
    assert_eq!(parse_ip("2001:db8::1"), Some(IpAddr::V6(v6("2001:db8::1"))));
    assert_eq!(parse_ip("eth0"), None);
    assert_eq!(parse_ip("192.0.2.01"), None);
    assert_eq!(parse_ip("fe80::1%eth0"), None);
}

#[test]
fn default_route_errors() {
    let mut snap = base();
    snap.routes = vec![route("192.0.2.0/24", 2)];
    let err = select(&req_v4(), &snap, None).expect_err("no default route");
    assert_eq!(
        failure_of(&err),
        vec![LookupFailure::NoDefaultRoute { family: Family::V4 }]
    );
    assert_eq!(
        err.to_string(),
        "finding the external interface by the default route: no IPv4 default route in the main routing \
         table; available interfaces: lo:[], eth0:[192.0.2.10 192.0.2.11], eth1:[198.51.100.10]"
    );

    let mut multipath = route("0.0.0.0/0", 3);
    multipath.oif = None;
    multipath.multipath = true;
    snap.routes = vec![multipath];
    let err = select(&req_v4(), &snap, None).expect_err("multipath default");
    assert_eq!(
        failure_of(&err),
        vec![LookupFailure::DefaultWithoutIface { family: Family::V4 }]
    );
    assert!(
        err.to_string().contains("could not determine its interface"),
        "{err}"
    );

    snap.routes = vec![route("0.0.0.0/0", 42)];
    let err = select(&req_v4(), &snap, None).expect_err("unknown index");
    assert_eq!(failure_of(&err), vec![LookupFailure::UnknownIndex { index: 42 }]);
}

#[test]
fn all_selectors_failing_lists_each_failure_and_the_interfaces() {
    let req = IfaceRequest {
        iface: vec!["eth9".into(), "203.0.113.1".into()],
        iface_regex: vec!["(".into(), "^wlan".into()],
        iface_can_reach: Some("203.0.113.50".parse().expect("ip")),
        ..req_v4()
    };
    let err = select(&req, &base(), Some(&[])).expect_err("nothing matches");
    let failures = failure_of(&err);
    assert_eq!(failures.len(), 5);
    assert_eq!(failures[0], LookupFailure::NoSuchName { name: "eth9".into() });
    assert_eq!(
        failures[1],
        LookupFailure::NoOwner {
            ip: "203.0.113.1".parse().expect("ip")
        }
    );
    assert!(matches!(&failures[2], LookupFailure::BadRegex { regex, .. } if regex == "("));
    assert_eq!(
        failures[3],
        LookupFailure::RegexNoMatch {
            regex: "^wlan".into()
        }
    );
    assert_eq!(
        failures[4],
        LookupFailure::NoRoute {
            ip: "203.0.113.50".parse().expect("ip")
        }
    );
    let text = err.to_string();
    for needle in [
        "--iface \"eth9\": no interface is named \"eth9\"",
        "--iface \"203.0.113.1\": no interface has the address 203.0.113.1",
        "--iface-regex \"(\": compiling the regular expression \"(\": ",
        "--iface-regex \"^wlan\": the pattern \"^wlan\" matches no usable address and no interface name",
        "--iface-can-reach 203.0.113.50: the kernel returned no route to 203.0.113.50",
        "available interfaces: lo:[], eth0:[192.0.2.10 192.0.2.11], eth1:[198.51.100.10]",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    assert!(!text.contains('\n'), "one line: {text}");
}

#[test]
fn regex_ignores_unusable_addresses() {
    // 127.0.0.1 is not usable, so "^127" can only match a name, and none does.
    let req = IfaceRequest {
        iface_regex: vec!["^127".into()],
        ..req_v4()
    };
    let err = select(&req, &base(), None).expect_err("loopback is not usable");
    assert_eq!(
        failure_of(&err),
        vec![LookupFailure::RegexNoMatch { regex: "^127".into() }]
    );
}

#[test]
fn zero_mtu_fails_that_selector_only() {
    let mut snap = base();
    snap.links[1].mtu = 0;
    let req = IfaceRequest {
        iface: vec!["eth0".into(), "eth1".into()],
        ..req_v4()
    };
    let sel = select(&req, &snap, None).expect("fallback");
    assert_eq!(sel.ext.name, "eth1");
    assert!(
        sel.reasons[0].contains("could not determine the MTU of interface eth0"),
        "{:?}",
        sel.reasons
    );
}

#[test]
fn no_family_is_an_error() {
    let req = IfaceRequest::default();
    let err = select(&req, &base(), None).expect_err("no family");
    assert_eq!(err, IfaceError::NoFamily);
    assert!(err.to_string().contains("neither IPv4 nor IPv6"));
}

#[test]
fn empty_snapshot_reports_no_interfaces() {
    let err = select(&req_v4(), &NetSnapshot::default(), None).expect_err("empty");
    assert!(err.to_string().ends_with("available interfaces: none"), "{err}");
}
