//! The ipip backend against the fake kernel: device attributes and adoption rules, lease attrs,
//! MTU and address (spec 9.4), the route per peer with and without DirectRouting, ownership, and
//! the reconciler putting back a deleted route and a deleted `flannel.ipip`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::backend::reconcile::Reconciler;
use crate::backend::testutil::{ip, kernel_with_eth0, lease_of, net, netconf, own_lease};
use crate::kernel::fake::FakeKernel;
use crate::kernel::{IpipInfo, RTPROT_FLANNEL};
use crate::lease::LeaseEvent;
use crate::netconf::BackendConfig;

fn cfg(direct_routing: bool) -> IpipConfig {
    IpipConfig {
        direct_routing,
        peer_filter: false,
    }
}

fn conf(direct_routing: bool) -> NetConf {
    let mut c = netconf(BackendConfig::Ipip(cfg(direct_routing)));
    c.backend_type = "ipip".into();
    c
}

async fn prepared(k: &Arc<FakeKernel>, ext: &ExternalInterface, direct_routing: bool) -> IpipBackend {
    let mut b = IpipBackend::new(&cfg(direct_routing), ext, &conf(direct_routing)).unwrap();
    b.prepare(&**k).await.unwrap();
    b.configure(&**k, &own_lease("ipip")).await.unwrap();
    b
}

fn ipip_link(name: &str, local: Option<Ipv4Addr>, remote: Option<Ipv4Addr>, mtu: u32) -> Link {
    Link {
        index: 0,
        name: name.into(),
        kind: Some("ipip".into()),
        mtu,
        mac: None,
        up: true,
        vxlan: None,
        ipip: Some(IpipInfo {
            local,
            remote,
            ttl: 0,
            pmtudisc: false,
            link: 0,
        }),
    }
}

#[tokio::test]
async fn prepare_creates_flannel_ipip_as_upstream_and_publishes_type_and_public_ip() {
    let (k, ext) = kernel_with_eth0();
    let mut b = IpipBackend::new(&cfg(false), &ext, &conf(false)).unwrap();
    let attrs = b.prepare(&*k).await.unwrap();
    assert_eq!(
        attrs.to_json(),
        r#"{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"ipip"}"#
    );
    let link = k.link("flannel.ipip").expect("device created");
    assert_eq!(link.kind.as_deref(), Some("ipip"));
    assert_eq!(link.mtu, 1480, "ext MTU 1500 - 20");
    let info = link.ipip.expect("ipip attributes");
    assert_eq!(
        info.local,
        Some("192.0.2.1".parse().unwrap()),
        "local = interface address"
    );
    assert_eq!((info.remote, info.ttl, info.pmtudisc), (None, 0, false));

    assert_eq!(b.configure(&*k, &own_lease("ipip")).await.unwrap(), 1480);
    let link = k.link("flannel.ipip").unwrap();
    assert!(link.up);
    let addrs: Vec<_> = k
        .all_addrs()
        .into_iter()
        .filter(|a| a.index == link.index)
        .map(|a| (a.ip, a.prefix_len))
        .collect();
    assert_eq!(addrs, vec![(ip("198.18.1.0"), 32)], "<subnet network>/32");
}

#[tokio::test]
async fn the_tunnel_uses_the_interface_address_not_the_public_ip() {
    let (k, mut ext) = kernel_with_eth0();
    ext.ext_addr = Some("203.0.113.7".parse().unwrap());
    let mut b = IpipBackend::new(&cfg(false), &ext, &conf(false)).unwrap();
    let attrs = b.prepare(&*k).await.unwrap();
    assert_eq!(attrs.public_ip, "203.0.113.7".parse::<Ipv4Addr>().unwrap());
    assert_eq!(b.tunnel_local(), "192.0.2.1".parse::<Ipv4Addr>().unwrap());
    let info = k.link("flannel.ipip").unwrap().ipip.unwrap();
    assert_eq!(info.local, Some("192.0.2.1".parse().unwrap()));
}

#[tokio::test]
async fn a_non_ipip_device_of_that_name_is_refused_with_upstreams_message_and_kept() {
    let (k, ext) = kernel_with_eth0();
    let index = k.insert_link(Link {
        kind: Some("dummy".into()),
        ipip: None,
        ..ipip_link("flannel.ipip", None, None, 1500)
    });
    let mut b = IpipBackend::new(&cfg(false), &ext, &conf(false)).unwrap();
    let err = b.prepare(&*k).await.unwrap_err().to_string();
    assert!(
        err.contains("flannel.ipip isn't an ipip mode device, please remove device and try again"),
        "{err}"
    );
    assert_eq!(k.link("flannel.ipip").map(|l| l.index), Some(index), "left alone");
}

#[tokio::test]
async fn a_wrong_ipip_device_is_recreated_and_a_right_one_adopted_with_its_mtu_fixed() {
    for (local, remote, why) in [
        (Some("192.0.2.99"), None, "other local"),
        (None, None, "local any"),
        (Some("192.0.2.1"), Some("203.0.113.9"), "a remote"),
    ] {
        let (k, ext) = kernel_with_eth0();
        let old = k.insert_link(ipip_link(
            "flannel.ipip",
            local.map(|l| l.parse().unwrap()),
            remote.map(|r| r.parse().unwrap()),
            1480,
        ));
        let mut b = IpipBackend::new(&cfg(false), &ext, &conf(false)).unwrap();
        b.prepare(&*k).await.unwrap();
        let link = k.link("flannel.ipip").unwrap();
        assert_ne!(link.index, old, "{why}: recreated");
        assert_eq!(link.ipip.unwrap().local, Some("192.0.2.1".parse().unwrap()));
    }
    // Compatible but with another MTU: adopted (same index), MTU set, nothing else changed.
    let (k, ext) = kernel_with_eth0();
    let old = k.insert_link(ipip_link(
        "flannel.ipip",
        Some("192.0.2.1".parse().unwrap()),
        None,
        1400,
    ));
    let mut b = IpipBackend::new(&cfg(false), &ext, &conf(false)).unwrap();
    k.reset_counters();
    b.prepare(&*k).await.unwrap();
    let link = k.link("flannel.ipip").unwrap();
    assert_eq!((link.index, link.mtu), (old, 1480));
    assert_eq!(k.counters().mutations, 1, "only the MTU was set");
    // A second start over the finished device changes nothing.
    b.configure(&*k, &own_lease("ipip")).await.unwrap();
    let mut again = IpipBackend::new(&cfg(false), &ext, &conf(false)).unwrap();
    k.reset_counters();
    again.prepare(&*k).await.unwrap();
    again.configure(&*k, &own_lease("ipip")).await.unwrap();
    assert_eq!(k.counters().mutations, 0);
}

#[test]
fn configuration_errors_name_the_interface_and_the_value() {
    let (_, mut ext) = kernel_with_eth0();
    ext.mtu = 80;
    let err = IpipBackend::new(&cfg(false), &ext, &conf(false))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("MTU 80 of iface eth0 is too small for ipip mode"),
        "{err}"
    );
    let (_, mut ext) = kernel_with_eth0();
    ext.iface_addr = None;
    let err = IpipBackend::new(&cfg(false), &ext, &conf(false))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("eth0 has no IPv4 address"), "{err}");
    let (_, ext) = kernel_with_eth0();
    let mut c = conf(false);
    c.enable_ipv4 = false;
    let err = IpipBackend::new(&cfg(false), &ext, &c).err().unwrap().to_string();
    assert!(err.contains("IPv4 only"), "{err}");
}

#[tokio::test]
async fn one_onlink_route_per_peer_via_its_public_ip_through_flannel_ipip() {
    let (k, ext) = kernel_with_eth0();
    let b = prepared(&k, &ext, false).await;
    let dev = k.link("flannel.ipip").unwrap().index;
    let got = b.entries_for(&lease_of(2, "ipip", None), &Underlay::default());
    let [Entry::Route(r)] = &got[..] else {
        panic!("want one route, got {got:?}")
    };
    assert_eq!(r.dst, net("198.18.2.0/24"));
    assert_eq!(r.gateway, Some(ip("192.0.2.2")));
    assert_eq!(r.oif, Some(dev));
    assert!(r.onlink);
    assert_eq!(r.protocol, RTPROT_FLANNEL);
    assert_eq!(
        got,
        vec![peer_route(
            "198.18.2.0/24".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
            dev
        )]
    );
    // Other backend types and leases without a public IP are ignored.
    assert!(
        b.entries_for(&lease_of(3, "vxlan", None), &Underlay::default())
            .is_empty()
    );
    let mut no_ip = lease_of(3, "ipip", None);
    no_ip.attrs.public_ip = Ipv4Addr::UNSPECIFIED;
    assert!(b.entries_for(&no_ip, &Underlay::default()).is_empty());
}

#[tokio::test]
async fn direct_routing_goes_through_the_external_interface_only_for_connected_peers() {
    let (k, ext) = kernel_with_eth0();
    let b = prepared(&k, &ext, true).await;
    let dev = k.link("flannel.ipip").unwrap().index;
    let underlay = Underlay {
        connected: vec![net("192.0.2.0/24")],
        indirect: vec![net("0.0.0.0/0")],
    };
    let near = b.entries_for(&lease_of(2, "ipip", None), &underlay);
    assert_eq!(
        near,
        vec![peer_route(
            "198.18.2.0/24".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
            ext.index
        )]
    );
    // Peer 300 sits in 198.51.100.0/24, reached through the default gateway: tunnelled.
    let far = b.entries_for(&lease_of(300, "ipip", None), &underlay);
    let Entry::Route(r) = &far[0] else {
        panic!("{far:?}")
    };
    assert_eq!((r.oif, r.gateway), (Some(dev), Some(ip("198.51.100.44"))));
}

#[tokio::test]
async fn ownership_covers_the_device_and_the_external_interface() {
    let (k, ext) = kernel_with_eth0();
    let b = prepared(&k, &ext, true).await;
    let dev = k.link("flannel.ipip").unwrap().index;
    let o = b.ownership(&own_lease("ipip"));
    assert_eq!(o.devices, vec![dev]);
    assert_eq!(o.route_oifs, vec![dev, ext.index]);
    assert_eq!(o.networks, vec![net("198.18.0.0/15")]);
    assert_eq!(o.exclude, vec![net("198.18.1.0/24")]);
    assert_eq!(b.device_names(), vec!["flannel.ipip".to_string()]);
}

/// Waits (paused clock) until `done` holds for the fake kernel.
async fn eventually(k: &FakeKernel, what: &str, done: impl Fn(&FakeKernel) -> bool) {
    for _ in 0..2000 {
        if done(k) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}; routes {:?}", k.all_routes());
}

fn has_route_via(k: &FakeKernel, dst: &str, gw: &str, dev: &str) -> bool {
    let Some(index) = k.link(dev).map(|l| l.index) else {
        return false;
    };
    k.all_routes()
        .iter()
        .any(|r| r.dst == net(dst) && r.gateway == Some(ip(gw)) && r.oif == Some(index) && r.onlink)
}

#[tokio::test(start_paused = true)]
async fn the_reconciler_puts_back_a_deleted_route_and_a_deleted_device() {
    let (k, ext) = kernel_with_eth0();
    let b = prepared(&k, &ext, false).await;
    let reconciler = Reconciler::new(k.clone(), Box::new(b), own_lease("ipip"));
    let (tx, rx) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(reconciler.run(rx, shutdown.clone()));
    tx.send(vec![
        LeaseEvent::Added(lease_of(2, "ipip", None)),
        LeaseEvent::Added(lease_of(3, "ipip", None)),
    ])
    .unwrap();
    eventually(&k, "both routes", |k| {
        has_route_via(k, "198.18.2.0/24", "192.0.2.2", "flannel.ipip")
            && has_route_via(k, "198.18.3.0/24", "192.0.2.3", "flannel.ipip")
    })
    .await;

    let route = k
        .all_routes()
        .into_iter()
        .find(|r| r.dst == net("198.18.2.0/24"))
        .unwrap();
    assert!(k.remove_route(&route));
    eventually(&k, "the deleted route back", |k| {
        has_route_via(k, "198.18.2.0/24", "192.0.2.2", "flannel.ipip")
    })
    .await;

    let old = k.link("flannel.ipip").unwrap().index;
    assert!(k.remove_link(old));
    eventually(&k, "the device and both routes back", |k| {
        k.link("flannel.ipip").is_some_and(|l| l.index != old && l.up)
            && has_route_via(k, "198.18.2.0/24", "192.0.2.2", "flannel.ipip")
            && has_route_via(k, "198.18.3.0/24", "192.0.2.3", "flannel.ipip")
    })
    .await;
    let dev = k.link("flannel.ipip").unwrap().index;
    assert!(
        k.all_addrs()
            .iter()
            .any(|a| a.index == dev && a.ip == ip("198.18.1.0")),
        "address back"
    );

    // A departed peer's route goes.
    tx.send(vec![LeaseEvent::Removed(lease_of(3, "ipip", None))])
        .unwrap();
    eventually(&k, "the departed peer's route gone", |k| {
        !k.all_routes().iter().any(|r| r.dst == net("198.18.3.0/24"))
    })
    .await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
