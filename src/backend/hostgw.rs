//! The host-gw backend (spec 9.2): no device, no address; per remote lease one route
//! `<subnet> via <PublicIP> dev <ext>` (and `<v6 subnet> via <PublicIPv6> dev <ext>`), programmed
//! by the reconciler, which also replaces upstream's 10-second route check. Refuses to run behind
//! NAT (public IP different from the interface address), as upstream does.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use crate::backend::{
    Backend, BackendError, Entry, ExternalInterface, Ownership, Underlay, WarnOnce, own_subnets,
};
use crate::kernel::{Netlink, Route};
use crate::lease::{Lease, LeaseAttrs};
use crate::netconf::NetConf;

/// The host-gw backend.
pub struct HostGwBackend {
    ext: ExternalInterface,
    enable_ipv4: bool,
    enable_ipv6: bool,
    networks: Vec<IpNet>,
    warn: WarnOnce,
}

impl HostGwBackend {
    pub fn new(conf: &NetConf, ext: &ExternalInterface) -> Result<HostGwBackend, BackendError> {
        Ok(HostGwBackend {
            ext: ext.clone(),
            enable_ipv4: conf.enable_ipv4,
            enable_ipv6: conf.enable_ipv6,
            networks: conf
                .network
                .map(IpNet::V4)
                .into_iter()
                .chain(conf.ipv6_network.map(IpNet::V6))
                .collect(),
            warn: WarnOnce::default(),
        })
    }
}

/// The route a remote lease needs: `<subnet> via <public ip> dev <ext>` (main table, protocol boot,
/// no onlink: a gateway that is not on a connected subnet is rejected by the kernel, as upstream).
pub fn peer_route(subnet: IpNet, public_ip: IpAddr, ext_index: u32) -> Entry {
    Entry::Route(Route::unicast(subnet.trunc(), Some(public_ip), Some(ext_index)))
}

#[async_trait::async_trait]
impl Backend for HostGwBackend {
    fn kind(&self) -> &'static str {
        "host-gw"
    }

    async fn prepare(&mut self, _k: &dyn Netlink) -> Result<LeaseAttrs, BackendError> {
        if self.ext.ext_addr.is_some() && self.ext.ext_addr != self.ext.iface_addr {
            return Err(BackendError::Config(format!(
                "host-gw: the public IP {} differs from the address {} of interface {}, so this node is \
                 probably behind NAT, which the host-gw backend does not support",
                self.ext.ext_addr.map(|a| a.to_string()).unwrap_or_default(),
                self.ext
                    .iface_addr
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "(none)".into()),
                self.ext.name
            )));
        }
        let mut attrs = LeaseAttrs {
            backend_type: "host-gw".into(),
            ..LeaseAttrs::default()
        };
        if self.enable_ipv4 {
            attrs.public_ip = self.ext.ext_addr.unwrap_or(Ipv4Addr::UNSPECIFIED);
        }
        if self.enable_ipv6 {
            attrs.public_ipv6 = self.ext.ext_v6_addr;
        }
        Ok(attrs)
    }

    async fn configure(&mut self, _k: &dyn Netlink, _own: &Lease) -> Result<u32, BackendError> {
        Ok(self.ext.mtu)
    }

    fn entries_for(&self, remote: &Lease, _underlay: &Underlay) -> Vec<Entry> {
        if self.warn.other_type(remote, self.kind()) {
            return Vec::new();
        }
        let subnet = remote.key();
        let mut out = Vec::new();
        let v4_subnet = remote
            .subnet
            .filter(|_| self.enable_ipv4 && (remote.enable_ipv4 || !remote.enable_ipv6));
        if let Some(sn) = v4_subnet {
            let ip = remote.attrs.public_ip;
            if ip.is_unspecified() {
                if self.warn.first(format!("{subnet} no public ip")) {
                    tracing::warn!(subnet = %subnet, "skipping remote lease without a public IP");
                }
            } else {
                out.push(peer_route(IpNet::V4(sn), IpAddr::V4(ip), self.ext.index));
            }
        }
        if self.enable_ipv6 && (remote.enable_ipv6 || !remote.enable_ipv4) {
            match (remote.ipv6_subnet, remote.attrs.public_ipv6) {
                (Some(sn), Some(ip)) => out.push(peer_route(IpNet::V6(sn), IpAddr::V6(ip), self.ext.index)),
                (Some(sn), None) if self.warn.first(format!("{subnet} no public ipv6")) => {
                    tracing::warn!(subnet = %sn, "skipping IPv6 of a remote lease without a public IPv6");
                }
                _ => {}
            }
        }
        out
    }

    fn ownership(&self, own: &Lease) -> Ownership {
        Ownership {
            devices: Vec::new(),
            networks: self.networks.clone(),
            route_oifs: vec![self.ext.index],
            exclude: own_subnets(own),
            ..Ownership::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::testutil::{kernel_with_eth0, lease_of, netconf, own_lease};
    use crate::kernel::RTPROT_FLANNEL;
    use crate::netconf::BackendConfig;

    fn conf() -> NetConf {
        netconf(BackendConfig::HostGw)
    }

    #[tokio::test]
    async fn refuses_a_nated_public_ip() {
        let (k, mut ext) = kernel_with_eth0();
        ext.ext_addr = Some("203.0.113.5".parse().unwrap());
        let mut b = HostGwBackend::new(&conf(), &ext).unwrap();
        let err = b.prepare(&*k).await.unwrap_err().to_string();
        assert!(
            err.contains("203.0.113.5") && err.contains("192.0.2.1") && err.contains("NAT"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn publishes_type_and_public_ip_and_ext_mtu() {
        let (k, ext) = kernel_with_eth0();
        let mut b = HostGwBackend::new(&conf(), &ext).unwrap();
        let attrs = b.prepare(&*k).await.unwrap();
        assert_eq!(
            attrs.to_json(),
            r#"{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"host-gw"}"#
        );
        assert_eq!(b.configure(&*k, &own_lease("host-gw")).await.unwrap(), 1500);
        assert_eq!(k.counters().mutations, 0);
    }

    #[test]
    fn one_route_per_peer_via_its_public_ip() {
        let (_, ext) = kernel_with_eth0();
        let b = HostGwBackend::new(&conf(), &ext).unwrap();
        let got = b.entries_for(&lease_of(2, "host-gw", None), &Underlay::default());
        let want = Route::unicast(
            "198.18.2.0/24".parse().unwrap(),
            Some("192.0.2.2".parse().unwrap()),
            Some(ext.index),
        );
        assert_eq!(got, vec![Entry::Route(want.clone())]);
        assert_eq!(want.protocol, RTPROT_FLANNEL);
        assert!(!want.onlink);
        // Other backend types and leases without a public IP are ignored.
        assert!(
            b.entries_for(&lease_of(3, "vxlan", None), &Underlay::default())
                .is_empty()
        );
        let mut no_public_ip = lease_of(3, "host-gw", None);
        no_public_ip.attrs.public_ip = Ipv4Addr::UNSPECIFIED;
        assert!(b.entries_for(&no_public_ip, &Underlay::default()).is_empty());
    }

    #[test]
    fn dual_stack_peer_gets_a_v6_route_too() {
        let mut c = conf();
        c.enable_ipv6 = true;
        c.ipv6_network = Some("2001:db8::/48".parse().unwrap());
        let (_, mut e) = kernel_with_eth0();
        e.ext_v6_addr = Some("2001:db8:ffff::1".parse().unwrap());
        let b = HostGwBackend::new(&c, &e).unwrap();
        let mut l = lease_of(2, "host-gw", None);
        l.enable_ipv6 = true;
        l.ipv6_subnet = Some("2001:db8:0:2::/64".parse().unwrap());
        l.attrs.public_ipv6 = Some("2001:db8:ffff::2".parse().unwrap());
        let got = b.entries_for(&l, &Underlay::default());
        assert_eq!(got.len(), 2);
        let want6 = Route::unicast(
            "2001:db8:0:2::/64".parse().unwrap(),
            Some("2001:db8:ffff::2".parse().unwrap()),
            Some(e.index),
        );
        assert_eq!(got[1], Entry::Route(want6));
        let o = b.ownership(&own_lease("host-gw"));
        assert_eq!(o.route_oifs, vec![e.index]);
        assert_eq!(o.networks.len(), 2);
        assert_eq!(o.exclude, vec!["198.18.1.0/24".parse::<IpNet>().unwrap()]);
    }
}
