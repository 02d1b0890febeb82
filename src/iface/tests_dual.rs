//! Unit tests for dual-stack and IPv6-only selection, and for `discover` over a stub kernel.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::stream::BoxStream;

use super::tests::{addr, failure_of as failures, link, route, v4, v6};
use super::*;
use crate::kernel::{Fdb, KResult, Link, Neigh, Op, VxlanSpec};

/// eth0 (2) and eth1 (3) have both families, eth2 (4) only IPv4; both defaults via eth0.
fn dual() -> NetSnapshot {
    NetSnapshot {
        links: vec![link(1, "lo"), link(2, "eth0"), link(3, "eth1"), link(4, "eth2")],
        addrs: vec![
            addr(1, "127.0.0.1"),
            addr(1, "::1"),
            addr(2, "192.0.2.10"),
            addr(2, "2001:db8:1::10"),
            addr(2, "2001:db8:1::11"),
            addr(2, "fe80::2"),
            addr(3, "198.51.100.10"),
            addr(3, "2001:db8:2::10"),
            addr(4, "203.0.113.10"),
        ],
        routes: vec![route("0.0.0.0/0", 2), route("::/0", 2)],
    }
}

fn req_dual() -> IfaceRequest {
    IfaceRequest {
        ipv4: true,
        ipv6: true,
        ..IfaceRequest::default()
    }
}

fn req_v6() -> IfaceRequest {
    IfaceRequest {
        ipv6: true,
        ..IfaceRequest::default()
    }
}

fn addrs_of(sel: &Selection) -> (&str, Option<std::net::Ipv4Addr>, Option<std::net::Ipv6Addr>) {
    (sel.ext.name.as_str(), sel.ext.iface_addr, sel.ext.iface_v6_addr)
}

#[test]
fn dual_default_routes_on_one_interface() {
    let sel = select(&req_dual(), &dual(), None).expect("selection");
    assert_eq!(
        addrs_of(&sel),
        ("eth0", Some(v4("192.0.2.10")), Some(v6("2001:db8:1::10")))
    );
    assert_eq!(sel.ext.ext_addr, Some(v4("192.0.2.10")));
    assert_eq!(sel.ext.ext_v6_addr, Some(v6("2001:db8:1::10")));
}

#[test]
fn dual_default_routes_must_agree_and_both_exist() {
    let mut snap = dual();
    snap.routes = vec![route("0.0.0.0/0", 2), route("::/0", 3)];
    let err = select(&req_dual(), &snap, None).expect_err("different interfaces");
    assert_eq!(
        failures(&err),
        vec![LookupFailure::DefaultRoutesDiffer {
            v6_iface: "eth1".into(),
            v4_iface: "eth0".into()
        }]
    );
    assert!(
        err.to_string()
            .contains("the IPv6 default route uses interface eth1 but the IPv4 default route uses eth0"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("eth0:[192.0.2.10 2001:db8:1::10 2001:db8:1::11 fe80::2]"),
        "{err}"
    );

    snap.routes = vec![route("0.0.0.0/0", 2)];
    let err = select(&req_dual(), &snap, None).expect_err("no v6 default");
    assert_eq!(
        failures(&err),
        vec![LookupFailure::NoDefaultRoute { family: Family::V6 }]
    );
}

#[test]
fn v6_only_default_route() {
    let mut snap = dual();
    snap.routes = vec![route("::/0", 3)];
    let sel = select(&req_v6(), &snap, None).expect("selection");
    assert_eq!(addrs_of(&sel), ("eth1", None, Some(v6("2001:db8:2::10"))));
    assert_eq!(
        (sel.ext.ext_addr, sel.ext.ext_v6_addr),
        (None, Some(v6("2001:db8:2::10")))
    );
}

#[test]
fn dual_v4_selector_with_public_ipv6_on_the_same_interface() {
    let req = IfaceRequest {
        iface: vec!["192.0.2.10".into()],
        public_ipv6: Some(v6("2001:db8:1::11")),
        ..req_dual()
    };
    let sel = select(&req, &dual(), None).expect("selection");
    assert_eq!(
        addrs_of(&sel),
        ("eth0", Some(v4("192.0.2.10")), Some(v6("2001:db8:1::11")))
    );
    assert_eq!(sel.ext.ext_v6_addr, Some(v6("2001:db8:1::11")));
}

#[test]
fn dual_public_ipv6_must_be_on_the_chosen_interface() {
    let req = IfaceRequest {
        iface: vec!["192.0.2.10".into()],
        public_ipv6: Some(v6("2001:db8:2::10")),
        ..req_dual()
    };
    let err = select(&req, &dual(), None).expect_err("other interface");
    assert_eq!(
        failures(&err),
        vec![LookupFailure::PublicV6OnOtherIface {
            ip: v6("2001:db8:2::10"),
            v6_iface: "eth1".into(),
            iface: "eth0".into()
        }]
    );
    assert!(
        err.to_string()
            .contains("is on interface eth1, not on the chosen interface eth0"),
        "{err}"
    );

    let req = IfaceRequest {
        public_ipv6: Some(v6("2001:db8:ffff::1")),
        ..req
    };
    let err = select(&req, &dual(), None).expect_err("not owned");
    assert_eq!(
        failures(&err),
        vec![LookupFailure::NoOwnerPublicV6 {
            ip: v6("2001:db8:ffff::1")
        }]
    );
}

#[test]
fn dual_ip_selectors_fill_the_other_family_from_the_interface() {
    let req = IfaceRequest {
        iface: vec!["198.51.100.10".into()],
        ..req_dual()
    };
    let sel = select(&req, &dual(), None).expect("v4 selector");
    assert_eq!(
        addrs_of(&sel),
        ("eth1", Some(v4("198.51.100.10")), Some(v6("2001:db8:2::10")))
    );

    let req = IfaceRequest {
        iface: vec!["2001:db8:1::11".into()],
        ..req_dual()
    };
    let sel = select(&req, &dual(), None).expect("v6 selector");
    assert_eq!(
        addrs_of(&sel),
        ("eth0", Some(v4("192.0.2.10")), Some(v6("2001:db8:1::11")))
    );
}

#[test]
fn dual_needs_both_families_on_the_interface() {
    let req = IfaceRequest {
        iface: vec!["eth2".into(), "203.0.113.10".into()],
        ..req_dual()
    };
    let err = select(&req, &dual(), None).expect_err("no IPv6 on eth2");
    let missing = LookupFailure::NoAddress {
        iface: "eth2".into(),
        family: Family::V6,
    };
    assert_eq!(failures(&err), vec![missing.clone(), missing]);
}

#[test]
fn dual_public_ips_alone_select_the_owner() {
    let req = IfaceRequest {
        public_ip: Some(v4("198.51.100.10")),
        public_ipv6: Some(v6("2001:db8:2::10")),
        ..req_dual()
    };
    let sel = select(&req, &dual(), None).expect("selection");
    assert_eq!(
        addrs_of(&sel),
        ("eth1", Some(v4("198.51.100.10")), Some(v6("2001:db8:2::10")))
    );
    assert_eq!(
        (sel.ext.ext_addr, sel.ext.ext_v6_addr),
        (Some(v4("198.51.100.10")), Some(v6("2001:db8:2::10")))
    );
}

#[test]
fn v6_only_ip_selectors_keep_the_given_address() {
    // Upstream took the first IPv6 address here (flannel#2045); we keep the one asked for.
    let req = IfaceRequest {
        public_ipv6: Some(v6("2001:db8:1::11")),
        ..req_v6()
    };
    let sel = select(&req, &dual(), None).expect("public-ipv6");
    assert_eq!(addrs_of(&sel), ("eth0", None, Some(v6("2001:db8:1::11"))));

    let req = IfaceRequest {
        iface: vec!["2001:db8:1::11".into()],
        ..req_v6()
    };
    let sel = select(&req, &dual(), None).expect("--iface v6");
    assert_eq!(addrs_of(&sel), ("eth0", None, Some(v6("2001:db8:1::11"))));
}

#[test]
fn dual_regex_needs_both_families_on_one_interface() {
    let split = IfaceRequest {
        iface_regex: vec![r"^(192\.0\.2\.10|2001:db8:2::10)$".into()],
        ..req_dual()
    };
    let err = select(&split, &dual(), None).expect_err("matches on two interfaces");
    assert!(
        matches!(failures(&err).as_slice(), [LookupFailure::RegexNoMatch { .. }]),
        "{err}"
    );

    let both = IfaceRequest {
        iface_regex: vec![r"^(198\.51\.100\.10|2001:db8:2::10)$".into()],
        ..req_dual()
    };
    let sel = select(&both, &dual(), None).expect("both on eth1");
    assert_eq!(
        addrs_of(&sel),
        ("eth1", Some(v4("198.51.100.10")), Some(v6("2001:db8:2::10")))
    );

    let v6_only = IfaceRequest {
        iface_regex: vec!["^2001:db8:1::11$".into()],
        ..req_v6()
    };
    let sel = select(&v6_only, &dual(), None).expect("v6 regex");
    assert_eq!(addrs_of(&sel), ("eth0", None, Some(v6("2001:db8:1::11"))));

    // A name match still needs both families.
    let name = IfaceRequest {
        iface_regex: vec!["eth2".into()],
        ..req_dual()
    };
    let err = select(&name, &dual(), None).expect_err("eth2 has no IPv6");
    assert_eq!(
        failures(&err),
        vec![LookupFailure::NoAddress {
            iface: "eth2".into(),
            family: Family::V6
        }]
    );
}

#[test]
fn dual_can_reach_an_ipv6_target() {
    let target: IpAddr = "2001:db8:2::99".parse().expect("ip");
    let mut via = route("2001:db8:2::99/128", 3);
    via.prefsrc = Some("2001:db8:2::10".parse().expect("ip"));
    let req = IfaceRequest {
        iface_can_reach: Some(target),
        ..req_dual()
    };
    let sel = select(&req, &dual(), Some(&[via])).expect("selection");
    assert_eq!(
        addrs_of(&sel),
        ("eth1", Some(v4("198.51.100.10")), Some(v6("2001:db8:2::10")))
    );
}

/// A kernel that only answers `snapshot` and `route_get`.
struct StubKernel {
    snapshot: KResult<NetSnapshot>,
    route_get: KResult<Vec<Route>>,
    route_gets: AtomicUsize,
}

impl StubKernel {
    fn new(snapshot: KResult<NetSnapshot>, route_get: KResult<Vec<Route>>) -> StubKernel {
        StubKernel {
            snapshot,
            route_get,
            route_gets: AtomicUsize::new(0),
        }
    }
}

fn unsupported<T>(op: &str) -> KResult<T> {
    Err(KernelError::Socket(format!(
        "{op} is not supported by the stub kernel"
    )))
}

#[async_trait::async_trait]
impl Netlink for StubKernel {
    async fn links(&self) -> KResult<Vec<Link>> {
        unsupported("links")
    }
    async fn link_by_name(&self, _name: &str) -> KResult<Option<Link>> {
        unsupported("link_by_name")
    }
    async fn addrs(&self) -> KResult<Vec<crate::kernel::Addr>> {
        unsupported("addrs")
    }
    async fn routes(&self) -> KResult<Vec<Route>> {
        unsupported("routes")
    }
    async fn neighs(&self, _index: u32) -> KResult<Vec<Neigh>> {
        unsupported("neighs")
    }
    async fn fdbs(&self, _index: u32) -> KResult<Vec<Fdb>> {
        unsupported("fdbs")
    }
    async fn route_get(&self, _dst: IpAddr) -> KResult<Vec<Route>> {
        self.route_gets.fetch_add(1, Ordering::SeqCst);
        self.route_get.clone()
    }
    async fn create_vxlan(&self, _spec: &VxlanSpec) -> KResult<Link> {
        unsupported("create_vxlan")
    }
    async fn create_ipip(&self, _spec: &crate::kernel::IpipSpec) -> KResult<Link> {
        unsupported("create_ipip")
    }
    async fn delete_link(&self, _index: u32) -> KResult<()> {
        unsupported("delete_link")
    }
    async fn set_link_up(&self, _index: u32) -> KResult<()> {
        unsupported("set_link_up")
    }
    async fn set_link_mtu(&self, _index: u32, _mtu: u32) -> KResult<()> {
        unsupported("set_link_mtu")
    }
    async fn add_addr(&self, _addr: &crate::kernel::Addr) -> KResult<()> {
        unsupported("add_addr")
    }
    async fn del_addr(&self, _addr: &crate::kernel::Addr) -> KResult<()> {
        unsupported("del_addr")
    }
    async fn apply(&self, ops: &[Op]) -> Vec<KResult<()>> {
        ops.iter().map(|_| unsupported("apply")).collect()
    }
    async fn subscribe(&self) -> KResult<BoxStream<'static, crate::kernel::KernelEvent>> {
        unsupported("subscribe")
    }
    async fn snapshot(&self) -> KResult<NetSnapshot> {
        self.snapshot.clone()
    }
}

#[tokio::test]
async fn discover_reads_the_snapshot_and_route_only_when_asked() {
    let k = StubKernel::new(Ok(dual()), Ok(vec![]));
    let ext = discover(&req_dual(), &k).await.expect("selection");
    assert_eq!(ext.name, "eth0");
    assert_eq!(k.route_gets.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn discover_reports_a_failed_route_lookup() {
    let unreachable = KernelError::Failed {
        op: "route get".into(),
        object: "203.0.113.50".into(),
        message: "Network is unreachable".into(),
        errno: Some(libc::ENETUNREACH),
    };
    let k = StubKernel::new(Ok(dual()), Err(unreachable));
    let target: IpAddr = "203.0.113.50".parse().expect("ip");
    let req = IfaceRequest {
        iface_can_reach: Some(target),
        ..req_dual()
    };
    let err = discover(&req, &k).await.expect_err("no route");
    assert_eq!(k.route_gets.load(Ordering::SeqCst), 1);
    match failures(&err).as_slice() {
        [LookupFailure::RouteGet { ip, message }] => {
            assert_eq!(*ip, target);
            assert!(message.contains("Network is unreachable"), "{message}");
        }
        other => panic!("unexpected failures {other:?}"),
    }
}

#[tokio::test]
async fn discover_names_the_step_when_the_kernel_fails() {
    let k = StubKernel::new(Err(KernelError::Socket("permission denied".into())), Ok(vec![]));
    let err = discover(&req_dual(), &k).await.expect_err("kernel error");
    assert!(matches!(err, IfaceError::Kernel { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "selecting the external interface: reading interfaces, addresses and routes: \
         opening netlink socket: permission denied"
    );
}
