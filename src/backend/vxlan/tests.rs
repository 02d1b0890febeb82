use super::*;
use crate::backend::testutil::*;
use crate::kernel::{Addr, Link, RT_SCOPE_UNIVERSE, RT_TABLE_MAIN, VxlanInfo, VxlanSpec};
use crate::netconf::BackendConfig;

fn backend(k_ext: &ExternalInterface, cfg: VxlanConfig, stored: Option<MacAddr>) -> VxlanBackend {
    let conf = netconf(BackendConfig::Vxlan(cfg.clone()));
    VxlanBackend::new(&cfg, k_ext, &conf, stored)
        .unwrap()
        .with_sysctl_root(None)
}

fn wanted_spec(ext: &ExternalInterface) -> VxlanSpec {
    VxlanSpec {
        name: "flannel.1".into(),
        vni: 1,
        port: 0,
        local: ip("192.0.2.1"),
        dev_index: ext.index,
        learning: false,
        gbp: false,
        mtu: 1450,
        mac: OWN_MAC,
    }
}

fn vxlan_link(info: VxlanInfo) -> Link {
    Link {
        index: 9,
        name: "flannel.1".into(),
        kind: Some("vxlan".into()),
        mtu: 1450,
        mac: Some(OWN_MAC),
        up: true,
        vxlan: Some(info),
        ipip: None,
    }
}

#[tokio::test]
async fn prepare_creates_the_device_as_upstream_and_publishes_vni_and_mac() {
    let (k, ext) = kernel_with_eth0();
    let mut b = backend(&ext, vxlan_cfg(false), Some(OWN_MAC));
    let attrs = b.prepare(&*k).await.unwrap();
    assert_eq!(
        attrs.to_json(),
        r#"{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:aa:00:00:00:01"}}"#
    );
    let link = k.link("flannel.1").unwrap();
    assert_eq!(
        (link.mtu, link.mac, link.kind.as_deref()),
        (1450, Some(OWN_MAC), Some("vxlan"))
    );
    let info = link.vxlan.unwrap();
    assert_eq!(
        (info.vni, info.dev_index, info.local, info.learning, info.gbp),
        (1, ext.index, Some(ip("192.0.2.1")), false, false)
    );
    assert_eq!(info.port, 8472, "no port requested: kernel default");
    assert_eq!(b.configure(&*k, &own_lease("vxlan")).await.unwrap(), 1450);
    assert!(k.link("flannel.1").unwrap().up);
    let addrs: Vec<Addr> = k
        .all_addrs()
        .into_iter()
        .filter(|a| a.index == link.index)
        .collect();
    assert_eq!(addrs.len(), 1);
    assert_eq!((addrs[0].ip, addrs[0].prefix_len), (ip("198.18.1.0"), 32));
}

#[tokio::test]
async fn without_a_stored_mac_a_random_local_unicast_one_is_used() {
    let (k, ext) = kernel_with_eth0();
    let mut b = backend(&ext, vxlan_cfg(false), None);
    b.prepare(&*k).await.unwrap();
    let mac = k.link("flannel.1").unwrap().mac.unwrap();
    assert_eq!(mac.0[0] & 0x03, 0x02, "{mac}: locally administered, unicast");
    assert_eq!(b.vtep_mac(Family::V4), Some(mac));
    for _ in 0..100 {
        assert_eq!(random_mac().0[0] & 0x03, 0x02);
    }
}

#[tokio::test]
async fn a_compatible_device_is_adopted_with_its_mac_and_nothing_changes() {
    let (k, ext) = kernel_with_eth0();
    let first = prepared_vxlan(&k, &ext, false, None).await;
    let mac = first.vtep_mac(Family::V4).unwrap();
    let index = k.link("flannel.1").unwrap().index;
    k.reset_counters();
    // Another stored MAC does not matter when the device exists and is compatible.
    let mut b = backend(&ext, vxlan_cfg(false), Some(OWN_MAC));
    let attrs = b.prepare(&*k).await.unwrap();
    assert_eq!(b.configure(&*k, &own_lease("vxlan")).await.unwrap(), 1450);
    assert!(attrs.backend_data.unwrap().contains(&mac.to_string()));
    assert_eq!(k.link("flannel.1").unwrap().index, index);
    assert_eq!(k.counters().mutations, 0);
    assert!(!b.ensure_devices(&*k, &own_lease("vxlan")).await.unwrap());
    assert_eq!(k.counters().mutations, 0);
}

#[tokio::test]
async fn an_incompatible_device_is_recreated() {
    let (k, ext) = kernel_with_eth0();
    let old = VxlanSpec {
        vni: 1,
        gbp: true,
        mac: peer_mac(9),
        ..wanted_spec(&ext)
    };
    let old_index = k.create_vxlan(&old).await.unwrap().index;
    let mut b = backend(&ext, vxlan_cfg(false), Some(OWN_MAC));
    b.prepare(&*k).await.unwrap();
    let link = k.link("flannel.1").unwrap();
    assert_ne!(link.index, old_index);
    assert_eq!(link.mac, Some(OWN_MAC));
    assert!(!link.vxlan.unwrap().gbp);
}

#[test]
fn incompatibilities_follow_upstreams_list() {
    let (_, ext) = kernel_with_eth0();
    let want = wanted_spec(&ext);
    let good = VxlanInfo {
        vni: 1,
        port: 8472,
        local: Some(ip("192.0.2.1")),
        group: None,
        dev_index: ext.index,
        learning: true,
        gbp: false,
        l2miss: false,
    };
    assert!(
        incompatibilities(&vxlan_link(good.clone()), &want).is_empty(),
        "learning, MTU, port 0 ignored"
    );
    let unset = VxlanInfo {
        local: None,
        dev_index: 0,
        ..good.clone()
    };
    assert!(
        incompatibilities(&vxlan_link(unset), &want).is_empty(),
        "unset local/dev are not compared"
    );
    let cases = [
        (
            VxlanInfo {
                vni: 2,
                ..good.clone()
            },
            "VNI",
        ),
        (
            VxlanInfo {
                dev_index: ext.index + 7,
                ..good.clone()
            },
            "vtep device",
        ),
        (
            VxlanInfo {
                local: Some(ip("192.0.2.9")),
                ..good.clone()
            },
            "local address",
        ),
        (
            VxlanInfo {
                group: Some(ip("239.1.1.1")),
                ..good.clone()
            },
            "group",
        ),
        (
            VxlanInfo {
                l2miss: true,
                ..good.clone()
            },
            "l2miss",
        ),
        (
            VxlanInfo {
                gbp: true,
                ..good.clone()
            },
            "GBP",
        ),
    ];
    for (info, what) in cases {
        let why = incompatibilities(&vxlan_link(info), &want);
        assert_eq!(why.len(), 1, "{what}: {why:?}");
        assert!(why[0].contains(what), "{what}: {why:?}");
    }
    let port_want = VxlanSpec {
        port: 4789,
        ..want.clone()
    };
    assert!(incompatibilities(&vxlan_link(good.clone()), &port_want)[0].contains("port"));
    let bridge = Link {
        kind: Some("bridge".into()),
        vxlan: None,
        ipip: None,
        ..vxlan_link(good)
    };
    assert!(incompatibilities(&bridge, &want)[0].contains("bridge"));
}

#[tokio::test]
async fn configure_keeps_addresses_outside_the_network_and_drops_stale_ones() {
    let (k, ext) = kernel_with_eth0();
    let mut b = backend(&ext, vxlan_cfg(false), Some(OWN_MAC));
    b.prepare(&*k).await.unwrap();
    let dev = k.link("flannel.1").unwrap().index;
    k.add_address(dev, ip("198.18.5.0"), 32); // from an earlier lease
    k.add_address(dev, ip("203.0.113.9"), 32); // an operator's, outside the network
    b.configure(&*k, &own_lease("vxlan")).await.unwrap();
    let mut on_dev: Vec<String> = k
        .all_addrs()
        .into_iter()
        .filter(|a| a.index == dev)
        .map(|a| format!("{}/{}", a.ip, a.prefix_len))
        .collect();
    on_dev.sort();
    assert_eq!(on_dev, ["198.18.1.0/32", "203.0.113.9/32"]);
}

#[tokio::test]
async fn configure_without_an_ipv4_subnet_fails_clearly() {
    let (k, ext) = kernel_with_eth0();
    let mut b = backend(&ext, vxlan_cfg(false), Some(OWN_MAC));
    b.prepare(&*k).await.unwrap();
    let mut own = own_lease("vxlan");
    own.subnet = None;
    let err = b.configure(&*k, &own).await.unwrap_err().to_string();
    assert!(
        err.contains("flannel.1") && err.contains("no IPv4 subnet"),
        "{err}"
    );
}

#[tokio::test]
async fn mtu_comes_from_the_config_or_the_interface_minus_50() {
    let (k, ext) = kernel_with_eth0();
    let mut b = backend(
        &ext,
        VxlanConfig {
            mtu: 1400,
            ..vxlan_cfg(false)
        },
        Some(OWN_MAC),
    );
    b.prepare(&*k).await.unwrap();
    assert_eq!(b.configure(&*k, &own_lease("vxlan")).await.unwrap(), 1350);
    assert_eq!(k.link("flannel.1").unwrap().mtu, 1350);
    let conf = netconf(BackendConfig::Vxlan(vxlan_cfg(false)));
    let tiny = ExternalInterface {
        mtu: 100,
        ..ext.clone()
    };
    let err = VxlanBackend::new(&vxlan_cfg(false), &tiny, &conf, None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("100") && err.contains("eth0"), "{err}");
    let no_v4 = ExternalInterface {
        ext_addr: None,
        ..ext
    };
    let err = VxlanBackend::new(&vxlan_cfg(false), &no_v4, &conf, None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("IPv4") && err.contains("eth0"), "{err}");
}

#[tokio::test]
async fn ensure_devices_recreates_a_missing_or_foreign_mac_device_with_our_mac() {
    let (k, ext) = kernel_with_eth0();
    let mut b = prepared_vxlan(&k, &ext, false, Some(OWN_MAC)).await;
    let own = own_lease("vxlan");
    let dev = k.link("flannel.1").unwrap().index;
    assert!(k.remove_link(dev));
    assert!(b.ensure_devices(&*k, &own).await.unwrap());
    let link = k.link("flannel.1").unwrap();
    assert_eq!((link.mac, link.up), (Some(OWN_MAC), true));
    assert_eq!(b.ownership(&own).devices, vec![link.index]);
    // Someone recreates it with another MAC: peers know ours, so it is recreated again.
    assert!(k.remove_link(link.index));
    k.create_vxlan(&VxlanSpec {
        mac: peer_mac(3),
        ..wanted_spec(&ext)
    })
    .await
    .unwrap();
    assert!(b.ensure_devices(&*k, &own).await.unwrap());
    assert_eq!(k.link("flannel.1").unwrap().mac, Some(OWN_MAC));
}

#[test]
fn entries_for_a_peer_are_neighbour_fdb_and_onlink_route() {
    let (k, ext) = kernel_with_eth0();
    let b = futures::executor::block_on(prepared_vxlan(&k, &ext, false, Some(OWN_MAC)));
    let dev = k.link("flannel.1").unwrap().index;
    let got = b.entries_for(&vxlan_peer(2), &Underlay::default());
    let route = Route {
        dst: net("198.18.2.0/24"),
        gateway: Some(ip("198.18.2.0")),
        oif: Some(dev),
        table: RT_TABLE_MAIN,
        protocol: crate::kernel::RTPROT_FLANNEL,
        scope: RT_SCOPE_UNIVERSE,
        kind: crate::kernel::RouteKind::Unicast,
        onlink: true,
        prefsrc: None,
        multipath: false,
    };
    assert_eq!(
        got,
        vec![
            Entry::Neigh(Neigh {
                index: dev,
                ip: ip("198.18.2.0"),
                mac: Some(peer_mac(2)),
                state: NUD_PERMANENT
            }),
            Entry::Fdb(Fdb {
                index: dev,
                mac: peer_mac(2),
                dst: Some(ip("192.0.2.2")),
                self_flag: true,
                permanent: true
            }),
            Entry::Route(route),
        ]
    );
    // Other types, missing or broken data, no public IP: nothing.
    let u = Underlay::default();
    assert!(b.entries_for(&lease_of(3, "host-gw", None), &u).is_empty());
    assert!(b.entries_for(&lease_of(3, "vxlan", None), &u).is_empty());
    assert!(
        b.entries_for(&lease_of(3, "vxlan", Some("[1]".into())), &u)
            .is_empty()
    );
    let mut no_ip = vxlan_peer(3);
    no_ip.attrs.public_ip = std::net::Ipv4Addr::UNSPECIFIED;
    assert!(b.entries_for(&no_ip, &u).is_empty());
    // Data keys are case-insensitive, as upstream's decoder.
    let lower = lease_of(
        4,
        "vxlan",
        Some(r#"{"vni":1,"vtepmac":"02:00:00:00:00:04"}"#.into()),
    );
    assert_eq!(b.entries_for(&lower, &u).len(), 3);
}

#[test]
fn direct_routing_only_for_peers_on_a_connected_subnet() {
    let (k, ext) = kernel_with_eth0();
    let b = futures::executor::block_on(prepared_vxlan(&k, &ext, true, Some(OWN_MAC)));
    let underlay = Underlay {
        connected: vec![net("192.0.2.0/24")],
        indirect: vec![net("0.0.0.0/0")],
    };
    let got = b.entries_for(&vxlan_peer(2), &underlay);
    assert_eq!(
        got,
        vec![Entry::Route(Route::unicast(
            net("198.18.2.0/24"),
            Some(ip("192.0.2.2")),
            Some(ext.index)
        ))]
    );
    let mut far = vxlan_peer(3);
    far.attrs.public_ip = "203.0.113.3".parse().unwrap();
    assert_eq!(b.entries_for(&far, &underlay).len(), 3);
    // Without DirectRouting a connected peer still gets the tunnel.
    let (k2, ext2) = kernel_with_eth0();
    let b = futures::executor::block_on(prepared_vxlan(&k2, &ext2, false, None));
    assert_eq!(b.entries_for(&vxlan_peer(2), &underlay).len(), 3);
}

#[tokio::test]
async fn ownership_covers_devices_network_and_route_devices() {
    let (k, ext) = kernel_with_eth0();
    let b = prepared_vxlan(&k, &ext, false, Some(OWN_MAC)).await;
    let dev = k.link("flannel.1").unwrap().index;
    let o = b.ownership(&own_lease("vxlan"));
    assert_eq!(o.devices, vec![dev]);
    assert_eq!(o.route_oifs, vec![dev, ext.index]);
    assert_eq!(o.networks, vec![net("198.18.0.0/15")]);
    assert_eq!(o.exclude, vec![net("198.18.1.0/24")]);
    assert_eq!(b.device_names(), vec!["flannel.1".to_string()]);
    // Every entry the backend wants is one the reconciler will see as its own.
    let u = Underlay {
        connected: vec![net("192.0.2.0/24")],
        indirect: vec![],
    };
    for e in b.entries_for(&vxlan_peer(2), &u) {
        assert!(crate::backend::reconcile::is_owned(&o, &e), "{e:?}");
    }
}

#[tokio::test]
async fn ipv6_uses_a_second_device_of_the_same_code() {
    let (k, mut ext) = kernel_with_eth0();
    ext.ext_v6_addr = Some("2001:db8:ffff::1".parse().unwrap());
    let cfg = vxlan_cfg(false);
    let mut conf = netconf(BackendConfig::Vxlan(cfg.clone()));
    conf.enable_ipv6 = true;
    conf.ipv6_network = Some("2001:db8::/48".parse().unwrap());
    let mut b = VxlanBackend::new(&cfg, &ext, &conf, Some(OWN_MAC))
        .unwrap()
        .with_sysctl_root(None);
    let attrs = b.prepare(&*k).await.unwrap();
    let v6 = k.link("flannel-v6.1").unwrap();
    assert_eq!(v6.vxlan.as_ref().unwrap().local, Some(ip("2001:db8:ffff::1")));
    assert_eq!(attrs.public_ipv6, ext.ext_v6_addr);
    assert_eq!(
        attrs.backend_v6_data,
        Some(format!("{{\"VNI\":1,\"VtepMAC\":\"{}\"}}", v6.mac.unwrap()))
    );
    let mut own = own_lease("vxlan");
    own.enable_ipv6 = true;
    own.ipv6_subnet = Some("2001:db8:0:1::/64".parse().unwrap());
    k.add_address(v6.index, ip("fe80::1"), 64);
    k.add_address(v6.index, ip("2001:db8:0:7::"), 128);
    assert_eq!(b.configure(&*k, &own).await.unwrap(), 1450);
    let mut on_v6: Vec<String> = k
        .all_addrs()
        .into_iter()
        .filter(|a| a.index == v6.index)
        .map(|a| format!("{}/{}", a.ip, a.prefix_len))
        .collect();
    on_v6.sort();
    assert_eq!(on_v6, ["2001:db8:0:1::/128", "fe80::1/64"]);

    let mut peer = vxlan_peer(2);
    peer.enable_ipv6 = true;
    peer.ipv6_subnet = Some("2001:db8:0:2::/64".parse().unwrap());
    peer.attrs.public_ipv6 = Some("2001:db8:ffff::2".parse().unwrap());
    peer.attrs.backend_v6_data = Some(crate::lease::vxlan_backend_data(1, &peer_mac(22)));
    let got = b.entries_for(&peer, &Underlay::default());
    assert_eq!(got.len(), 6);
    let want6 = peer_entries(
        v6.index,
        ext.index,
        net("2001:db8:0:2::/64"),
        peer_mac(22),
        ip("2001:db8:ffff::2"),
        false,
    );
    assert_eq!(&got[3..], &want6[..]);
    let o = b.ownership(&own);
    assert_eq!(o.devices.len(), 2);
    for e in &got {
        assert!(crate::backend::reconcile::is_owned(&o, e), "{e:?}");
    }
}

#[tokio::test]
async fn stored_macs_are_used_per_device_when_creating_them() {
    // Issue 12: the IPv6 VTEP MAC published in backend-v6-data is kept across a restart too.
    let (k, mut ext) = kernel_with_eth0();
    ext.ext_v6_addr = Some("2001:db8:ffff::1".parse().unwrap());
    let cfg = vxlan_cfg(false);
    let mut conf = netconf(BackendConfig::Vxlan(cfg.clone()));
    conf.enable_ipv6 = true;
    conf.ipv6_network = Some("2001:db8::/48".parse().unwrap());
    let stored = StoredMacs {
        v4: Some(OWN_MAC),
        v6: Some(peer_mac(66)),
    };
    let mut b = VxlanBackend::new(&cfg, &ext, &conf, stored)
        .unwrap()
        .with_sysctl_root(None);
    let attrs = b.prepare(&*k).await.unwrap();
    assert_eq!(k.link("flannel.1").unwrap().mac, Some(OWN_MAC));
    assert_eq!(k.link("flannel-v6.1").unwrap().mac, Some(peer_mac(66)));
    assert_eq!(
        attrs.backend_v6_data,
        Some(crate::lease::vxlan_backend_data(1, &peer_mac(66)))
    );
    // A tuple as the subnet manager returns it, and a lone IPv4 MAC, convert the same way.
    assert_eq!(
        StoredMacs::from((Some(OWN_MAC), None)),
        StoredMacs::from(Some(OWN_MAC))
    );
    assert_eq!(StoredMacs::from(None), StoredMacs::default());
}
