//! Shared fixtures for the backend and reconciler unit tests: a fake kernel with an underlay
//! (`eth0` 192.0.2.1/24), vxlan/host-gw configurations over 198.18.0.0/16, leases, and the
//! fixed-seed property-test configuration of the data-path tests.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::backend::{ExternalInterface, vxlan::VxlanBackend};
use crate::kernel::MacAddr;
use crate::kernel::fake::FakeKernel;
use crate::lease::{Lease, LeaseAttrs, vxlan_backend_data};
use crate::netconf::{BackendConfig, NetConf, VxlanConfig};

pub const OWN_MAC: MacAddr = MacAddr([0x02, 0xaa, 0, 0, 0, 1]);

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// The VTEP MAC of peer `n`.
pub fn peer_mac(n: u16) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, (n >> 8) as u8, (n & 0xff) as u8])
}

pub fn vxlan_cfg(direct_routing: bool) -> VxlanConfig {
    VxlanConfig {
        vni: 1,
        port: 0,
        mtu: 0,
        gbp: false,
        learning: false,
        direct_routing,
    }
}

pub fn netconf(backend: BackendConfig) -> NetConf {
    let backend_type = match &backend {
        BackendConfig::Vxlan(_) => "vxlan",
        BackendConfig::HostGw => "host-gw",
        _ => "other",
    };
    NetConf {
        enable_ipv4: true,
        enable_ipv6: false,
        enable_nftables: false,
        network: Some("198.18.0.0/15".parse().unwrap()),
        subnet_len: 24,
        subnet_min: None,
        subnet_max: None,
        ipv6_network: None,
        ipv6_subnet_len: 64,
        ipv6_subnet_min: None,
        ipv6_subnet_max: None,
        backend_type: backend_type.into(),
        backend,
    }
}

/// A fake kernel with `eth0` (up, MTU 1500, 192.0.2.1/24); returns it and eth0's interface.
pub fn kernel_with_eth0() -> (Arc<FakeKernel>, ExternalInterface) {
    let k = Arc::new(FakeKernel::new());
    let index = k.add_physical_link("eth0", 1500, MacAddr([0x02, 0xee, 0, 0, 0, 1]));
    k.add_address(index, ip("192.0.2.1"), 24);
    let ext = ExternalInterface {
        name: "eth0".into(),
        index,
        mtu: 1500,
        iface_addr: Some("192.0.2.1".parse().unwrap()),
        iface_v6_addr: None,
        ext_addr: Some("192.0.2.1".parse().unwrap()),
        ext_v6_addr: None,
    };
    (k, ext)
}

/// Subnet 198.18.n.0/24 for n < 256; above, /29s of 198.19.0.0/16 (room for 8192 peers).
pub fn subnet_of(n: u16) -> ipnet::Ipv4Net {
    if n < 256 {
        format!("198.18.{n}.0/24").parse().unwrap()
    } else {
        let base = u32::from(std::net::Ipv4Addr::new(198, 19, 0, 0)) + (u32::from(n) - 256) * 8;
        ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(base), 29).unwrap()
    }
}

/// The public IP of peer `n`: 192.0.2.n (connected) for n < 255, else an address of
/// 198.51.100.0/24 (not connected; shared between peers, which the FDB allows).
pub fn public_ip_of(n: u16) -> std::net::Ipv4Addr {
    if n < 255 {
        std::net::Ipv4Addr::new(192, 0, 2, n as u8)
    } else {
        std::net::Ipv4Addr::new(198, 51, 100, (n % 256) as u8)
    }
}

/// A remote lease of type `ty` for peer `n`.
pub fn lease_of(n: u16, ty: &str, backend_data: Option<String>) -> Lease {
    Lease {
        enable_ipv4: true,
        enable_ipv6: false,
        subnet: Some(subnet_of(n)),
        ipv6_subnet: None,
        attrs: LeaseAttrs {
            public_ip: public_ip_of(n),
            backend_type: ty.into(),
            backend_data,
            ..LeaseAttrs::default()
        },
        expiration: None,
    }
}

/// A vxlan peer lease: `{"VNI":1,"VtepMAC":"<peer_mac(n)>"}`.
pub fn vxlan_peer(n: u16) -> Lease {
    lease_of(n, "vxlan", Some(vxlan_backend_data(1, &peer_mac(n))))
}

/// The own lease (peer 1, 198.18.1.0/24 behind 192.0.2.1).
pub fn own_lease(ty: &str) -> Lease {
    lease_of(1, ty, None)
}

/// A vxlan backend on `k`, prepared and configured for the own lease (sysctls untouched).
pub async fn prepared_vxlan(
    k: &Arc<FakeKernel>,
    ext: &ExternalInterface,
    direct_routing: bool,
    stored_mac: Option<MacAddr>,
) -> VxlanBackend {
    let cfg = vxlan_cfg(direct_routing);
    let conf = netconf(BackendConfig::Vxlan(cfg.clone()));
    let mut b = VxlanBackend::new(&cfg, ext, &conf, stored_mac)
        .unwrap()
        .with_sysctl_root(None);
    use crate::backend::Backend;
    b.prepare(&**k).await.unwrap();
    b.configure(&**k, &own_lease("vxlan")).await.unwrap();
    b
}

/// The property tests' configuration for the udp data path and the offloads: a fixed seed and
/// case count, so `make test` runs the same cases every time, and no persistence files.
pub fn fixed_proptest_config() -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases: 512,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x0f1a_2285),
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}
