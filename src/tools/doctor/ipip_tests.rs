use std::net::Ipv4Addr;

use super::*;
use crate::backend::testutil::{kernel_with_eth0, lease_of, netconf, own_lease};
use crate::backend::{Entry, Underlay};
use crate::kernel::{Addr, AddrFlags, IpipInfo};
use crate::netconf::BackendConfig;

const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

fn tunnel(local: Option<Ipv4Addr>) -> Link {
    Link {
        index: 7,
        name: DEVICE.into(),
        kind: Some("ipip".into()),
        mtu: 1480,
        mac: None,
        up: true,
        vxlan: None,
        ipip: Some(IpipInfo {
            local,
            ..IpipInfo::default()
        }),
    }
}

fn addr(ip: &str, prefix_len: u8) -> Addr {
    Addr {
        index: 7,
        ip: ip.parse().unwrap(),
        prefix_len,
        flags: AddrFlags::default(),
    }
}

fn subnet() -> Option<Ipv4Net> {
    Some("198.18.1.0/24".parse().unwrap())
}

fn network() -> Option<Ipv4Net> {
    Some("198.18.0.0/16".parse().unwrap())
}

#[test]
fn a_healthy_tunnel_has_no_problem_and_each_fault_is_one_sentence() {
    let kernel = KernelView {
        links: vec![tunnel(Some(LOCAL))],
        addrs: vec![addr("198.18.1.0", 32)],
    };
    let link = tunnel(Some(LOCAL));
    assert!(device_problems(Some(&link), LOCAL, 1480, subnet(), network(), &kernel).is_empty());

    assert_eq!(
        device_problems(None, LOCAL, 1480, subnet(), network(), &kernel),
        ["flannel.ipip does not exist: no peer is reachable (the daemon creates it when it runs)"]
    );

    let moved = tunnel(Some(Ipv4Addr::new(192, 0, 2, 9)));
    assert_eq!(
        device_problems(Some(&moved), LOCAL, 1480, subnet(), network(), &kernel),
        [
            "flannel.ipip does not match the configuration (local address is 192.0.2.9, want 192.0.2.1): \
             the daemon deletes and recreates it"
        ]
    );

    let bridge = Link {
        kind: Some("bridge".into()),
        ipip: None,
        ..tunnel(None)
    };
    assert_eq!(
        device_problems(Some(&bridge), LOCAL, 1480, subnet(), network(), &kernel),
        [
            "flannel.ipip is a bridge link, not an ipip device: the daemon refuses to start until it is removed"
        ]
    );

    let down_small = Link {
        up: false,
        mtu: 1400,
        ..tunnel(Some(LOCAL))
    };
    let stale = KernelView {
        links: vec![down_small.clone()],
        addrs: vec![addr("198.18.9.0", 32)],
    };
    assert_eq!(
        device_problems(Some(&down_small), LOCAL, 1480, subnet(), network(), &stale),
        [
            "flannel.ipip is down: nothing goes through the overlay",
            "flannel.ipip has MTU 1400, the backend sets 1480: pods may send packets the overlay cannot carry",
            "flannel.ipip lacks its address 198.18.1.0/32 (the own subnet's network address)",
            "flannel.ipip also carries 198.18.9.0/32, which the daemon removes",
        ]
    );
}

#[tokio::test]
async fn observing_an_adoptable_tunnel_gives_the_daemons_routes_and_probes() {
    let (k, ext) = kernel_with_eth0();
    let conf = netconf(BackendConfig::Ipip(IpipConfig::default()));
    let mut doctor = IpipDoctor::new(&IpipConfig::default(), &ext, &conf).unwrap();
    let local = ext.iface_addr.unwrap();
    let peer = lease_of(2, "ipip", None);

    // No device: the daemon would program nothing, and doctor expects nothing.
    let none = KernelView::default();
    doctor.observe(&*k, &none).await;
    let backend = doctor.backend().unwrap();
    assert!(backend.entries_for(&peer, &Underlay::default()).is_empty());

    // A device the daemon adopts: its routes go through it, and the peer is probed through it.
    let kernel = KernelView {
        links: vec![tunnel(Some(local))],
        addrs: Vec::new(),
    };
    doctor.observe(&*k, &kernel).await;
    let entries = doctor.backend().unwrap().entries_for(&peer, &Underlay::default());
    match entries.as_slice() {
        [Entry::Route(r)] => assert_eq!(r.oif, Some(7)),
        other => panic!("one route via flannel.ipip expected, got {other:?}"),
    }
    let probes = doctor.probes(&peer);
    assert_eq!(probes.len(), 1);
    assert_eq!(
        probes[0].overlay,
        Some((peer.subnet.unwrap().network().into(), DEVICE.to_string()))
    );
    assert!(doctor.probes(&lease_of(3, "vxlan", None)).is_empty());
    assert_eq!(
        doctor.lease_attrs().unwrap().to_json(),
        doctor.backend.lease_attrs().to_json()
    );
    assert_eq!(doctor.mtu(), Some(ext.mtu - 20));
    let own = own_lease("ipip");
    assert_eq!(
        doctor.device_findings(Some(&own), &kernel).len(),
        1,
        "the missing address is the one finding"
    );
}

#[tokio::test]
async fn alloc_checks_only_its_attributes_and_the_interface_mtu() {
    let (k, ext) = kernel_with_eth0();
    let conf = netconf(BackendConfig::Alloc);
    let mut doctor = AllocDoctor::new(&conf, &ext);
    let notes = doctor.observe(&*k, &KernelView::default()).await;
    assert_eq!(notes.len(), 1);
    assert_eq!(doctor.mtu(), Some(ext.mtu));
    assert!(doctor.lease_attrs().unwrap().backend_type.is_empty());
    assert!(doctor.probes(&lease_of(2, "", None)).is_empty());
    assert!(doctor.device_findings(None, &KernelView::default()).is_empty());
}
