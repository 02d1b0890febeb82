//! The read-only counterpart of `prepare` for `flanneld doctor`: adopt the indexes of the
//! WireGuard devices that exist, exactly as the daemon would find them, and read their peers
//! through a `WireguardDevice` the caller opened, without creating, keying or changing anything.
//! `entries_for`, `own_entries`, `ownership` and `peer_table().installed()` then say what the
//! daemon wants on this node and what its device has, by the daemon's own rules (ownership of
//! peers: `table::is_owned_peer`). Also what the own lease publishes for a given device key
//! (`lease_attrs_for`, which `prepare` uses too).

use std::net::Ipv4Addr;
use std::sync::Arc;

use super::WireguardBackend;
use super::device::WireguardDevice;
use super::layout::{self, DeviceLayout};
use super::table::WgPeerTable;
use crate::backend::peers::WgKey;
use crate::kernel::Link;
use crate::lease::LeaseAttrs;

/// One device of the backend as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedWgDevice {
    pub layout: DeviceLayout,
    /// The kernel's link of that name, if any.
    pub link: Option<Link>,
}

impl ObservedWgDevice {
    /// Whether the link is one the daemon adopts: a kernel WireGuard device or a TUN device
    /// (the userspace implementation's); any other kind it replaces.
    pub fn usable(&self) -> bool {
        self.link
            .as_ref()
            .is_some_and(|l| matches!(l.kind.as_deref(), Some("wireguard") | Some("tun")))
    }
}

impl WireguardBackend {
    /// Adopt the existing devices' indexes from `links` and read peers through `device`
    /// (read-only use: `get` only). A missing or unusable device keeps index 0, so no peer is
    /// wanted on it, as in the daemon before it creates the device.
    pub fn observe(&mut self, links: &[Link], device: Arc<dyn WireguardDevice>) -> Vec<ObservedWgDevice> {
        let observed: Vec<ObservedWgDevice> = self
            .layouts
            .iter()
            .map(|l| ObservedWgDevice {
                layout: l.clone(),
                link: links.iter().find(|link| link.name == l.name).cloned(),
            })
            .collect();
        {
            let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
            for dev in &observed {
                if let Some(slot) = slots.iter_mut().find(|(n, _)| n == dev.layout.name) {
                    slot.1 = match (&dev.link, dev.usable()) {
                        (Some(link), true) => link.index,
                        _ => 0,
                    };
                }
            }
        }
        self.table = Some(Arc::new(WgPeerTable::new(
            device,
            self.slots.clone(),
            self.networks(),
            self.metrics.clone(),
        )));
        observed
    }

    /// What this node's lease publishes when its devices have the key `public`: BackendType,
    /// public IPs, and `{"PublicKey":..,"Port":..}` per family.
    pub fn lease_attrs_for(&self, public: &WgKey) -> LeaseAttrs {
        let mut attrs = LeaseAttrs {
            backend_type: "wireguard".into(),
            public_ip: self.ext.ext_addr.unwrap_or(Ipv4Addr::UNSPECIFIED),
            public_ipv6: self.ext.ext_v6_addr,
            ..LeaseAttrs::default()
        };
        if let Some(l) = self.layouts.iter().find(|l| l.v4) {
            attrs.backend_data = Some(layout::backend_data(public, l.listen_port));
        }
        if let Some(l) = self.layouts.iter().find(|l| l.v6) {
            attrs.backend_v6_data = Some(layout::backend_data(public, l.listen_port));
        }
        attrs
    }

    /// The MTU the backend gives its devices (and writes to subnet.env).
    pub fn device_mtu(&self) -> u32 {
        self.mtu
    }

    /// The devices of the configured mode.
    pub fn layouts(&self) -> &[DeviceLayout] {
        &self.layouts
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::device::{DeviceUpdate, PeerUpdate};
    use super::super::fake::FakeWireguard;
    use super::super::key::PrivateKey;
    use super::*;
    use crate::backend::testutil::{kernel_with_eth0, lease_of, netconf, own_lease};
    use crate::backend::{Backend, Entry, PeerEntry, Underlay};
    use crate::kernel::Netlink;
    use crate::netconf::{BackendConfig, WireguardConfig, WireguardImplementation, WireguardMode};

    fn cfg() -> WireguardConfig {
        WireguardConfig {
            listen_port: 51820,
            listen_port_v6: 51821,
            mtu: 0,
            psk: None,
            persistent_keepalive: 0,
            mode: WireguardMode::Auto,
            implementation: WireguardImplementation::Auto,
        }
    }

    #[tokio::test]
    async fn observing_adopts_the_daemons_devices_and_reports_only_owned_peers() {
        let (k, ext) = kernel_with_eth0();
        let wg = Arc::new(FakeWireguard::new(k.clone()));
        let dir = tempfile::tempdir().unwrap();
        let mut conf = netconf(BackendConfig::Wireguard(cfg()));
        conf.backend_type = "wireguard".into();
        let paths = super::super::WgPaths {
            key_file: dir.path().join("wgkey"),
            uapi_dir: dir.path().join("wireguard"),
        };
        // The daemon's side: devices created and keyed, one cluster peer and an operator's peer.
        let mut daemon = WireguardBackend::new(&cfg(), &ext, &conf, paths.clone())
            .unwrap()
            .with_device(wg.clone());
        let published = daemon.prepare(&*k).await.unwrap();
        daemon.configure(&*k, &own_lease("wireguard")).await.unwrap();
        let peer_key = PrivateKey::from_bytes([2; 32]).public_key();
        let peer = lease_of(2, "wireguard", Some(layout::backend_data(&peer_key, 51820)));
        let wanted = daemon.entries_for(&peer, &Underlay::default());
        let Entry::Peer(PeerEntry::Wireguard(p)) = &wanted[0] else {
            panic!("{wanted:?}")
        };
        let operator = PeerUpdate {
            public_key: PrivateKey::from_bytes([9; 32]).public_key(),
            allowed_ips: vec!["203.0.113.0/24".parse().unwrap()],
            ..PeerUpdate::default()
        };
        let update = DeviceUpdate {
            peers: vec![super::super::table::replace_update(p), operator],
            ..DeviceUpdate::default()
        };
        wg.operator_set("flannel-wg", &update);

        // Doctor's side: a fresh backend, nothing prepared, only observed.
        let mut doctor = WireguardBackend::new(&cfg(), &ext, &conf, paths).unwrap();
        let links = k.links().await.unwrap();
        let observed = doctor.observe(&links, wg.clone());
        assert_eq!(observed.len(), 1);
        assert!(observed[0].usable());
        assert_eq!(doctor.entries_for(&peer, &Underlay::default()), wanted);
        assert_eq!(
            doctor.own_entries(&own_lease("wireguard")),
            daemon.own_entries(&own_lease("wireguard"))
        );
        let installed = doctor.peer_table().unwrap().installed().await.unwrap();
        assert_eq!(
            installed,
            vec![PeerEntry::Wireguard(p.clone())],
            "the operator's peer is not ours"
        );
        let key = wg.device("flannel-wg").unwrap().private_key.unwrap().public_key();
        assert_eq!(doctor.lease_attrs_for(&key), published);
        assert_eq!(wg.sets(), 1, "observing changed nothing");
    }
}
