//! Unit tests of the udp backend's pure parts: configuration checks, the entries each lease
//! needs (peer route in the forwarding table, `<Network> dev flannel0`), ownership, lease attrs.

use std::net::SocketAddrV4;

use super::*;
use crate::backend::testutil::{kernel_with_eth0, lease_of, net, netconf, own_lease};
use crate::netconf::BackendConfig;

fn udp_conf(port: u16) -> (UdpConfig, NetConf) {
    let cfg = UdpConfig { port };
    let mut conf = netconf(BackendConfig::Udp(cfg.clone()));
    conf.backend_type = "udp".into();
    (cfg, conf)
}

fn backend(port: u16) -> UdpBackend {
    let (_, ext) = kernel_with_eth0();
    let (cfg, conf) = udp_conf(port);
    UdpBackend::new(&cfg, &ext, &conf).unwrap().with_index(7)
}

#[test]
fn mtu_is_the_interface_mtu_minus_28() {
    assert_eq!(backend(8285).mtu, 1472);
    let (_, mut ext) = kernel_with_eth0();
    ext.mtu = 90;
    let (cfg, conf) = udp_conf(8285);
    let e = UdpBackend::new(&cfg, &ext, &conf).err().unwrap().to_string();
    assert!(e.contains("MTU 90") && e.contains("eth0"), "{e}");
}

#[test]
fn ipv6_and_missing_network_are_refused_by_name() {
    let (_, ext) = kernel_with_eth0();
    let (cfg, mut conf) = udp_conf(8285);
    conf.enable_ipv6 = true;
    let e = UdpBackend::new(&cfg, &ext, &conf).err().unwrap().to_string();
    assert!(e.contains("IPv4 only") && e.contains("EnableIPv6 is true"), "{e}");
    let (cfg, mut conf) = udp_conf(8285);
    conf.network = None;
    assert!(
        UdpBackend::new(&cfg, &ext, &conf)
            .err()
            .unwrap()
            .to_string()
            .contains("Network")
    );
    let (cfg, conf) = udp_conf(8285);
    let mut no_v4 = ext.clone();
    no_v4.iface_addr = None;
    let e = UdpBackend::new(&cfg, &no_v4, &conf).err().unwrap().to_string();
    assert!(e.contains("eth0") && e.contains("no IPv4 address"), "{e}");
}

#[test]
fn every_lease_with_a_public_ip_becomes_a_table_route_to_the_local_port() {
    let b = backend(9000);
    // Upstream filters no type: vxlan, host-gw and untyped (udp) leases all get a route.
    for ty in ["", "vxlan", "host-gw"] {
        let remote = lease_of(2, ty, None);
        let entries = b.entries_for(&remote, &Underlay::default());
        assert_eq!(
            entries,
            vec![Entry::Peer(PeerEntry::Udp(UdpPeer {
                subnet: remote.subnet.unwrap(),
                endpoint: SocketAddrV4::new(remote.attrs.public_ip, 9000),
            }))],
            "type {ty:?}"
        );
    }
    let mut no_ip = lease_of(3, "", None);
    no_ip.attrs.public_ip = Ipv4Addr::UNSPECIFIED;
    assert!(b.entries_for(&no_ip, &Underlay::default()).is_empty());
    let mut no_v4 = lease_of(4, "", None);
    no_v4.subnet = None;
    assert!(b.entries_for(&no_v4, &Underlay::default()).is_empty());
}

#[test]
fn the_network_route_through_flannel0_is_an_own_entry_and_ours() {
    let b = backend(8285);
    let own = own_lease("");
    let route = Route::unicast(net("198.18.0.0/15"), None, Some(7));
    assert_eq!(b.own_entries(&own), vec![Entry::Route(route.clone())]);
    let o = b.ownership(&own);
    assert_eq!((o.devices.clone(), o.route_oifs.clone()), (vec![7], vec![7]));
    assert!(crate::backend::reconcile::is_owned(&o, &Entry::Route(route)));
    assert!(b.peer_table().is_some());
    assert!(b.metrics().is_some());
    // Before the device exists there is nothing to own or route.
    let (_, ext) = kernel_with_eth0();
    let (cfg, conf) = udp_conf(8285);
    let fresh = UdpBackend::new(&cfg, &ext, &conf).unwrap();
    assert!(fresh.own_entries(&own).is_empty());
    assert!(fresh.ownership(&own).devices.is_empty());
}
