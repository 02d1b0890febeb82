//! The read-only counterpart of `prepare` for `flanneld doctor`: take the indexes and MACs of the
//! vxlan devices that exist, exactly as `prepare` would adopt them, without creating, deleting or
//! changing anything, so that `entries_for` and `ownership` then say what the daemon wants on this
//! node. Also the facts doctor compares a device with: the spec the daemon creates it with and the
//! reasons it would recreate it (`incompatibilities`, the daemon's own rule), and the address the
//! own lease puts on it.

use std::net::IpAddr;

use ipnet::IpNet;

use super::VxlanBackend;
use super::device::incompatibilities;
use crate::backend::device_addr::{Family, device_address};
use crate::kernel::{Link, VxlanSpec};
use crate::lease::Lease;

/// One vxlan device as the daemon wants it and as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedDevice {
    pub family: Family,
    pub name: String,
    /// What `prepare` creates (its MAC: the existing device's when it is adopted).
    pub wanted: VxlanSpec,
    /// The kernel's link of that name, if any.
    pub link: Option<Link>,
    /// Why the daemon would delete and recreate the existing device (empty: it adopts it).
    pub incompatible: Vec<String>,
}

impl ObservedDevice {
    /// The address the own lease puts on the device (`<subnet network>/32`, `/128` for IPv6).
    pub fn wanted_address(&self, own: &Lease) -> Option<(IpAddr, u8)> {
        let subnet = match self.family {
            Family::V4 => own.subnet.map(IpNet::V4),
            Family::V6 => own.ipv6_subnet.map(IpNet::V6),
        };
        subnet.map(device_address)
    }
}

impl VxlanBackend {
    /// Adopt the existing devices' indexes and MACs from `links` (as `prepare` does at startup,
    /// but changing nothing) and describe each device the backend keeps. A device that is missing
    /// keeps index 0, so `entries_for` programs nothing on it, as in the daemon.
    pub fn observe(&mut self, links: &[Link]) -> Vec<ObservedDevice> {
        let (vni, port, learning, gbp) = (self.cfg.vni, self.cfg.port, self.cfg.learning, self.cfg.gbp);
        let (ext_index, mtu) = (self.ext.index, self.mtu);
        let mut out = Vec::new();
        for dev in self.v4.iter_mut().chain(self.v6.iter_mut()) {
            let link = links.iter().find(|l| l.name == dev.name).cloned();
            let mut wanted = dev.spec(vni, port, learning, gbp, ext_index, mtu);
            let mut incompatible = Vec::new();
            if let Some(link) = &link {
                incompatible = incompatibilities(link, &wanted);
                if incompatible.is_empty() {
                    dev.index = link.index;
                    if let Some(mac) = link.mac {
                        dev.mac = mac;
                        wanted.mac = mac;
                    }
                }
            }
            out.push(ObservedDevice {
                family: dev.family,
                name: dev.name.clone(),
                wanted,
                link,
                incompatible,
            });
        }
        out
    }

    /// The device MTU the backend sets (configured or external interface MTU, minus 50).
    pub fn device_mtu(&self) -> u32 {
        self.mtu
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::testutil::*;
    use crate::backend::{Backend, Underlay};
    use crate::kernel::Netlink;
    use crate::netconf::BackendConfig;

    #[tokio::test]
    async fn observing_adopts_what_prepare_adopts_and_changes_nothing() {
        let (k, ext) = kernel_with_eth0();
        let prepared = prepared_vxlan(&k, &ext, false, Some(OWN_MAC)).await;
        let links = k.links().await.unwrap();
        let before = k.counters().mutations;

        let cfg = vxlan_cfg(false);
        let conf = netconf(BackendConfig::Vxlan(cfg.clone()));
        let mut observer = VxlanBackend::new(&cfg, &ext, &conf, None).unwrap();
        let devices = observer.observe(&links);
        assert_eq!(devices.len(), 1);
        assert!(devices[0].incompatible.is_empty(), "{devices:?}");
        assert_eq!(
            devices[0].wanted.mac, OWN_MAC,
            "the existing device's MAC is adopted"
        );
        assert_eq!(
            devices[0].wanted_address(&own_lease("vxlan")),
            Some(("198.18.1.0".parse().unwrap(), 32))
        );
        // Same entries and ownership as the daemon's backend.
        let peer = vxlan_peer(2);
        let own = own_lease("vxlan");
        assert_eq!(
            observer.entries_for(&peer, &Underlay::default()),
            prepared.entries_for(&peer, &Underlay::default())
        );
        assert_eq!(observer.ownership(&own), prepared.ownership(&own));
        assert_eq!(k.counters().mutations, before, "observing changed the kernel");
    }

    #[test]
    fn a_missing_or_incompatible_device_gets_no_entries() {
        let (_, ext) = kernel_with_eth0();
        let cfg = vxlan_cfg(false);
        let conf = netconf(BackendConfig::Vxlan(cfg.clone()));
        let mut missing = VxlanBackend::new(&cfg, &ext, &conf, None).unwrap();
        let devices = missing.observe(&[]);
        assert!(devices[0].link.is_none());
        assert!(
            missing
                .entries_for(&vxlan_peer(2), &Underlay::default())
                .is_empty()
        );

        let wrong_vni = Link {
            index: 7,
            name: "flannel.1".into(),
            kind: Some("vxlan".into()),
            mtu: 1450,
            mac: Some(OWN_MAC),
            up: true,
            vxlan: Some(crate::kernel::VxlanInfo {
                vni: 2,
                ..Default::default()
            }),
            ipip: None,
        };
        let mut incompatible = VxlanBackend::new(&cfg, &ext, &conf, None).unwrap();
        let devices = incompatible.observe(&[wrong_vni]);
        assert_eq!(devices[0].incompatible, vec!["VNI is 2, want 1".to_string()]);
        assert!(
            incompatible
                .entries_for(&vxlan_peer(2), &Underlay::default())
                .is_empty()
        );
    }
}
