use std::net::IpAddr;

use futures::StreamExt;

use super::*;
use crate::kernel::{NUD_PERMANENT, NUD_REACHABLE, RTPROT_BOOT};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

const MAC_A: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xa]);
const MAC_B: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xb]);

/// eth0 192.0.2.1/24 (up) and flannel.1 on it (down until set up).
async fn kernel_with_vxlan() -> (FakeKernel, u32, u32) {
    let k = FakeKernel::new();
    let eth0 = k.add_physical_link("eth0", 1500, MacAddr([0x02, 0, 0, 0, 0, 1]));
    k.add_address(eth0, ip("192.0.2.1"), 24);
    let spec = VxlanSpec {
        name: "flannel.1".into(),
        vni: 1,
        port: 0,
        local: ip("192.0.2.1"),
        dev_index: eth0,
        learning: false,
        gbp: false,
        mtu: 1450,
        mac: MAC_A,
    };
    let link = k.create_vxlan(&spec).await.unwrap();
    (k, eth0, link.index)
}

fn onlink_route(dst: &str, gw: &str, oif: u32) -> Route {
    Route {
        onlink: true,
        ..Route::unicast(net(dst), Some(ip(gw)), Some(oif))
    }
}

#[tokio::test]
async fn created_vxlan_reports_kernel_defaults() {
    let (k, eth0, idx) = kernel_with_vxlan().await;
    let link = k.link("flannel.1").unwrap();
    assert_eq!(link.index, idx);
    assert_eq!(link.kind.as_deref(), Some("vxlan"));
    assert!(!link.up);
    let info = link.vxlan.unwrap();
    assert_eq!(
        (info.vni, info.port, info.dev_index, info.local),
        (1, 8472, eth0, Some(ip("192.0.2.1")))
    );
    // Same name again: EEXIST.
    let spec = VxlanSpec {
        name: "flannel.1".into(),
        vni: 2,
        port: 0,
        local: ip("192.0.2.1"),
        dev_index: eth0,
        learning: false,
        gbp: false,
        mtu: 1450,
        mac: MAC_B,
    };
    assert!(k.create_vxlan(&spec).await.unwrap_err().is_exists());
}

#[tokio::test]
async fn vxlan_mtu_is_clamped_to_the_lower_device() {
    let k = FakeKernel::new();
    let eth0 = k.add_physical_link("eth0", 1500, MAC_B);
    let spec = VxlanSpec {
        name: "flannel-v6.1".into(),
        vni: 1,
        port: 0,
        local: ip("2001:db8::1"),
        dev_index: eth0,
        learning: false,
        gbp: false,
        mtu: 1450,
        mac: MAC_A,
    };
    assert_eq!(k.create_vxlan(&spec).await.unwrap().mtu, 1430);
}

#[tokio::test]
async fn onlink_route_needs_an_up_device() {
    let (k, _, idx) = kernel_with_vxlan().await;
    let r = onlink_route("198.18.2.0/24", "198.18.2.0", idx);
    let res = k.apply(&[Op::ReplaceRoute(r.clone())]).await;
    assert_eq!(res[0].as_ref().unwrap_err().errno(), Some(libc::ENETDOWN));
    k.set_link_up(idx).await.unwrap();
    assert!(k.apply(&[Op::ReplaceRoute(r.clone())]).await[0].is_ok());
    assert!(k.all_routes().contains(&r));
}

#[tokio::test]
async fn gateway_route_needs_a_connected_gateway() {
    let (k, eth0, _) = kernel_with_vxlan().await;
    let bad = Route::unicast(net("198.18.3.0/24"), Some(ip("203.0.113.9")), Some(eth0));
    assert_eq!(
        k.apply(&[Op::ReplaceRoute(bad)]).await[0]
            .as_ref()
            .unwrap_err()
            .errno(),
        Some(libc::ENETUNREACH)
    );
    // Without a device the kernel picks the one the gateway is connected through.
    let good = Route::unicast(net("198.18.3.0/24"), Some(ip("192.0.2.3")), None);
    assert!(k.apply(&[Op::ReplaceRoute(good)]).await[0].is_ok());
    let installed = k
        .all_routes()
        .into_iter()
        .find(|r| r.dst == net("198.18.3.0/24"))
        .unwrap();
    assert_eq!(installed.oif, Some(eth0));
}

#[tokio::test]
async fn replace_overwrites_and_delete_of_missing_is_not_found() {
    let (k, _, idx) = kernel_with_vxlan().await;
    k.set_link_up(idx).await.unwrap();
    let r1 = onlink_route("198.18.2.0/24", "198.18.2.0", idx);
    let r2 = onlink_route("198.18.2.0/24", "198.18.2.1", idx);
    k.apply(&[Op::ReplaceRoute(r1.clone()), Op::ReplaceRoute(r2.clone())])
        .await;
    assert_eq!(k.all_routes().iter().filter(|r| r.dst == r1.dst).count(), 1);
    let res = k
        .apply(&[Op::DeleteRoute(r1.clone()), Op::DeleteRoute(r2.clone())])
        .await;
    assert!(res[0].as_ref().unwrap_err().is_not_found());
    assert!(res[1].is_ok());
    let n = permanent_neigh(idx, ip("198.18.2.0"), MAC_B);
    assert!(
        k.apply(&[Op::DeleteNeigh(n)]).await[0]
            .as_ref()
            .unwrap_err()
            .is_not_found()
    );
    let f = Fdb {
        index: idx,
        mac: MAC_B,
        dst: Some(ip("192.0.2.2")),
        self_flag: true,
        permanent: true,
    };
    assert!(
        k.apply(&[Op::DeleteFdb(f)]).await[0]
            .as_ref()
            .unwrap_err()
            .is_not_found()
    );
}

#[tokio::test]
async fn fdb_replace_rewrites_the_first_remote() {
    let (k, _, idx) = kernel_with_vxlan().await;
    let f1 = Fdb {
        index: idx,
        mac: MAC_B,
        dst: Some(ip("192.0.2.2")),
        self_flag: true,
        permanent: true,
    };
    let f2 = Fdb {
        dst: Some(ip("192.0.2.3")),
        ..f1.clone()
    };
    k.apply(&[Op::ReplaceFdb(f1.clone())]).await;
    k.apply(&[Op::ReplaceFdb(f2.clone())]).await;
    assert_eq!(k.all_fdbs(), vec![f2.clone()]);
    // FDB entries exist only on vxlan devices.
    let eth0 = k.link("eth0").unwrap().index;
    let on_eth = Fdb { index: eth0, ..f1 };
    assert_eq!(
        k.apply(&[Op::ReplaceFdb(on_eth)]).await[0]
            .as_ref()
            .unwrap_err()
            .errno(),
        Some(libc::EOPNOTSUPP)
    );
}

#[tokio::test]
async fn deleting_a_link_flushes_everything_on_it_and_announces_it() {
    let (k, _, idx) = kernel_with_vxlan().await;
    k.set_link_up(idx).await.unwrap();
    k.add_addr(&Addr {
        index: idx,
        ip: ip("198.18.1.0"),
        prefix_len: 32,
        flags: AddrFlags::default(),
    })
    .await
    .unwrap();
    let ops = [
        Op::ReplaceNeigh(permanent_neigh(idx, ip("198.18.2.0"), MAC_B)),
        Op::ReplaceFdb(Fdb {
            index: idx,
            mac: MAC_B,
            dst: Some(ip("192.0.2.2")),
            self_flag: true,
            permanent: true,
        }),
        Op::ReplaceRoute(onlink_route("198.18.2.0/24", "198.18.2.0", idx)),
    ];
    assert!(k.apply(&ops).await.iter().all(|r| r.is_ok()));
    let mut events = k.subscribe().await.unwrap();
    k.delete_link(idx).await.unwrap();
    assert!(k.all_neighs().is_empty() && k.all_fdbs().is_empty());
    assert!(k.all_routes().iter().all(|r| r.oif != Some(idx)));
    assert!(k.all_addrs().iter().all(|a| a.index != idx));
    assert!(matches!(events.next().await, Some(KernelEvent::AddrDeleted(_))));
    assert_eq!(
        events.next().await,
        Some(KernelEvent::LinkDeleted {
            index: idx,
            name: "flannel.1".into()
        })
    );
    assert!(k.delete_link(idx).await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn address_rules() {
    let (k, eth0, _) = kernel_with_vxlan().await;
    let a = Addr {
        index: eth0,
        ip: ip("192.0.2.1"),
        prefix_len: 24,
        flags: AddrFlags::default(),
    };
    assert!(k.add_addr(&a).await.unwrap_err().is_exists());
    let b = Addr {
        ip: ip("192.0.2.77"),
        ..a.clone()
    };
    assert_eq!(
        k.del_addr(&b).await.unwrap_err().errno(),
        Some(libc::EADDRNOTAVAIL)
    );
    k.del_addr(&a).await.unwrap();
    assert!(
        !k.all_routes().iter().any(|r| r.dst == net("192.0.2.0/24")),
        "connected route goes with the address"
    );
}

#[tokio::test]
async fn link_down_flushes_routes_silently_and_up_restores_connected() {
    let (k, eth0, _) = kernel_with_vxlan().await;
    let r = Route::unicast(net("198.18.3.0/24"), Some(ip("192.0.2.3")), Some(eth0));
    k.apply(&[Op::ReplaceRoute(r.clone())]).await;
    let mut events = k.subscribe().await.unwrap();
    k.set_link_state(eth0, false);
    assert!(k.all_routes().is_empty());
    assert!(matches!(events.next().await, Some(KernelEvent::LinkChanged(l)) if !l.up));
    k.set_link_state(eth0, true);
    assert!(matches!(events.next().await, Some(KernelEvent::RouteAdded(c)) if c.dst == net("192.0.2.0/24")));
    assert!(!k.all_routes().contains(&r));
}

#[tokio::test]
async fn route_get_returns_the_longest_match_for_the_host() {
    let (k, eth0, _) = kernel_with_vxlan().await;
    let got = k.route_get(ip("192.0.2.7")).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].dst, got[0].gateway, got[0].oif),
        (net("192.0.2.7/32"), None, Some(eth0))
    );
    let e = k.route_get(ip("203.0.113.1")).await.unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENETUNREACH));
}

#[tokio::test]
async fn counters_and_injected_failures() {
    let (k, _, idx) = kernel_with_vxlan().await;
    k.reset_counters();
    let n = permanent_neigh(idx, ip("198.18.2.0"), MAC_B);
    k.inject_failure(2, libc::EBUSY, |c| {
        matches!(c, FakeCall::Apply(Op::ReplaceNeigh(_)))
    });
    for _ in 0..2 {
        let e = k
            .apply(&[Op::ReplaceNeigh(n.clone())])
            .await
            .remove(0)
            .unwrap_err();
        assert_eq!(e.errno(), Some(libc::EBUSY));
    }
    k.apply(&[Op::ReplaceNeigh(n.clone())]).await.remove(0).unwrap();
    // Same content again: asked for, but no change.
    k.apply(&[Op::ReplaceNeigh(n.clone())]).await.remove(0).unwrap();
    k.routes().await.unwrap();
    let c = k.counters();
    assert_eq!(
        (c.mutations, c.changes, c.apply_calls, c.injected_failures),
        (4, 1, 4, 2)
    );
    assert_eq!((c.reads, c.route_dumps), (1, 1));
    // A non-permanent entry stays what it is until replaced.
    k.insert_neigh(Neigh {
        state: NUD_REACHABLE,
        ..n.clone()
    });
    assert_eq!(k.all_neighs()[0].state, NUD_REACHABLE);
    assert_eq!(n.state, NUD_PERMANENT);
}

#[tokio::test]
async fn behind_the_back_helpers_emit_events() {
    let (k, eth0, _) = kernel_with_vxlan().await;
    let r = Route {
        protocol: RTPROT_BOOT,
        ..Route::unicast(net("198.18.9.0/24"), Some(ip("192.0.2.9")), Some(eth0))
    };
    k.insert_route(r.clone());
    let mut events = k.subscribe().await.unwrap();
    assert!(k.remove_route(&r));
    assert!(!k.remove_route(&r));
    assert_eq!(events.next().await, Some(KernelEvent::RouteDeleted(r)));
}
