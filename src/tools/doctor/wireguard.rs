//! What doctor checks of the wireguard backend (spec 9.5): each device of the mode (`flannel-wg`,
//! `flannel-wg-v6`) against the own lease (exists, up, MTU, address, and the key and port the
//! lease publishes against the device's own), the `<Network> dev flannel-wg` routes as own
//! entries, and every peer on the device against the daemon's own `entries_for` of every lease
//! (`layout::peers_for`: public key from BackendData/BackendV6Data, allowed IPs, endpoint),
//! through the backend's own `WgPeerTable`, so only peers the daemon would consider its own are
//! compared (an operator's peer, with allowed IPs outside the cluster networks, is not a problem).
//!
//! The device is read directly (`wg_device`), not through the daemon's /peers: the device is the
//! truth, including an endpoint WireGuard moved (which the daemon's table reports as written, by
//! design), and a kernel device can be read with the daemon stopped. A userspace device is run by
//! the daemon itself, so it answers only while the daemon runs.
//!
//! Reachability: each peer's overlay address (its subnet's network address, which its daemon puts
//! on its device as /32 or /128) is probed through the device: the probe needs both sides' keys,
//! endpoints and allowed IPs to be right.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::IpNet;

use super::backends::{DoctorBackend, KernelView, ProbePair, address_problems};
use super::report::{Check, Finding, THIS_NODE};
use super::wg_device::ReadOnlyDevices;
use crate::backend::vxlan::device::{Family, device_address};
use crate::backend::wireguard::device::{DeviceInfo, WgError, WireguardDevice};
use crate::backend::wireguard::layout;
use crate::backend::wireguard::observe::ObservedWgDevice;
use crate::backend::wireguard::{WgPaths, WireguardBackend};
use crate::backend::{Backend, ExternalInterface, PeerEntry};
use crate::kernel::Netlink;
use crate::lease::{Lease, LeaseAttrs};
use crate::netconf::{NetConf, WireguardConfig};

pub struct WireguardDoctor {
    backend: WireguardBackend,
    networks: (Option<IpNet>, Option<IpNet>),
    uapi_dir: PathBuf,
    devices: Vec<ObservedWgDevice>,
    /// What each usable device reported (by name), or why it could not be read.
    infos: Vec<(String, Result<DeviceInfo, String>)>,
}

impl WireguardDoctor {
    pub fn new(
        cfg: &WireguardConfig,
        ext: &ExternalInterface,
        netconf: &NetConf,
    ) -> Result<WireguardDoctor, String> {
        let paths = WgPaths::from_env();
        Ok(WireguardDoctor {
            backend: WireguardBackend::new(cfg, ext, netconf, paths.clone()).map_err(|e| e.to_string())?,
            networks: (
                netconf.network.map(IpNet::V4).filter(|_| netconf.enable_ipv4),
                netconf
                    .ipv6_network
                    .map(IpNet::V6)
                    .filter(|_| netconf.enable_ipv6),
            ),
            uapi_dir: paths.uapi_dir,
            devices: Vec::new(),
            infos: Vec::new(),
        })
    }

    fn info(&self, name: &str) -> Option<&Result<DeviceInfo, String>> {
        self.infos.iter().find(|(n, _)| n == name).map(|(_, i)| i)
    }

    /// Why device `name` could not be read, as a sentence.
    fn unreadable(&self, dev: &ObservedWgDevice, error: &str) -> String {
        let name = dev.layout.name;
        match dev.link.as_ref().and_then(|l| l.kind.as_deref()) {
            Some("tun") => format!(
                "{name} is a userspace WireGuard device, but it does not answer on {} ({error}): the daemon runs \
                 that device, so no packet passes it while the daemon is stopped or stuck; its peers are not checked",
                self.uapi_dir.join(format!("{name}.sock")).display()
            ),
            _ => format!("reading the WireGuard device {name} failed ({error}): its peers are not checked"),
        }
    }

    fn device_checks(
        &self,
        dev: &ObservedWgDevice,
        own: Option<&Lease>,
        kernel: &KernelView,
    ) -> Vec<Finding> {
        let name = dev.layout.name;
        let problem = |message: String| Finding::problem(Check::Device, THIS_NODE, name, message);
        let Some(link) = &dev.link else {
            return vec![problem(format!(
                "{name} does not exist: no peer is reachable over WireGuard (the daemon creates it when it runs)"
            ))];
        };
        if !dev.usable() {
            return vec![problem(format!(
                "{name} is a {} link, not a WireGuard device: the daemon deletes and recreates it",
                link.kind.as_deref().unwrap_or("physical")
            ))];
        }
        let mtu = self.backend.device_mtu();
        let mut out: Vec<Finding> = super::backends::link_state_problems(name, link, mtu)
            .into_iter()
            .map(problem)
            .collect();
        let families = [(dev.layout.v4, Family::V4), (dev.layout.v6, Family::V6)];
        for (_, family) in families.into_iter().filter(|(on, _)| *on) {
            let (subnet, network) = match family {
                Family::V4 => (own.and_then(|o| o.subnet).map(IpNet::V4), self.networks.0),
                Family::V6 => (own.and_then(|o| o.ipv6_subnet).map(IpNet::V6), self.networks.1),
            };
            if let Some(subnet) = subnet {
                let wanted = device_address(subnet);
                out.extend(
                    address_problems(name, link.index, family, wanted, network, kernel)
                        .into_iter()
                        .map(problem),
                );
            }
        }
        // The key and port: the device's own against what this node's lease publishes.
        if let Some(Ok(info)) = self.info(name) {
            match &info.private_key {
                None => out.push(problem(format!(
                    "{name} has no private key: it completes no handshake (the daemon sets it when it runs)"
                ))),
                Some(private) => {
                    if let Some(own) = own {
                        out.extend(lease_key_problems(
                            dev,
                            own,
                            &private.public_key(),
                            info.listen_port,
                        ));
                    }
                }
            }
            if info.listen_port != dev.layout.listen_port {
                out.push(problem(format!(
                    "{name} listens on UDP port {}, but the config says {}",
                    info.listen_port, dev.layout.listen_port
                )));
            }
        }
        if out.is_empty() {
            out.push(Finding::ok(
                Check::Device,
                THIS_NODE,
                name,
                format!(
                    "{name}: up, public key and port {} as this node's lease says, MTU {mtu}, address as the lease's subnet",
                    dev.layout.listen_port
                ),
            ));
        }
        out
    }
}

/// This node's lease data for the device's family against the device's public key and port.
pub fn lease_key_problems(
    dev: &ObservedWgDevice,
    own: &Lease,
    device_key: &crate::backend::peers::WgKey,
    device_port: u16,
) -> Vec<Finding> {
    let name = dev.layout.name;
    let (field, data) = if dev.layout.v4 {
        ("BackendData", own.attrs.backend_data.as_deref())
    } else {
        ("BackendV6Data", own.attrs.backend_v6_data.as_deref())
    };
    let problem = |message: String| Finding::problem(Check::Device, THIS_NODE, name, message);
    let Some(data) = data.filter(|d| !d.is_empty() && *d != "null") else {
        return vec![problem(format!(
            "this node's lease has no {field}, so no peer knows {name}'s key"
        ))];
    };
    match layout::parse_backend_data(data) {
        Err(e) => vec![problem(format!("this node's lease {field}: {e}"))],
        Ok(published) => {
            let mut out = Vec::new();
            if published.public_key != *device_key {
                out.push(problem(format!(
                    "this node's lease says PublicKey {} for {name}, but {name} has public key {device_key}: \
                     peers encrypt for a key this node does not hold",
                    published.public_key
                )));
            }
            if published.port != 0 && published.port != device_port {
                out.push(problem(format!(
                    "this node's lease says Port {} for {name}, but {name} listens on {device_port}: peers send to a port nobody reads",
                    published.port
                )));
            }
            out
        }
    }
}

#[async_trait::async_trait]
impl DoctorBackend for WireguardDoctor {
    fn kind(&self) -> &str {
        "wireguard"
    }

    async fn observe(&mut self, _k: &dyn Netlink, kernel: &KernelView) -> Vec<Finding> {
        let names: Vec<&str> = self.backend.layouts().iter().map(|l| l.name).collect();
        let reader = Arc::new(ReadOnlyDevices::open(&kernel.links, &names, &self.uapi_dir).await);
        self.devices = self
            .backend
            .observe(&kernel.links, reader.clone() as Arc<dyn WireguardDevice>);
        self.infos.clear();
        for dev in self.devices.iter().filter(|d| d.usable()) {
            let name = dev.layout.name;
            let info = match reader.get(name).await {
                Ok(Some(info)) => Ok(info),
                Ok(None) => Err("the kernel has no WireGuard device of that name".to_string()),
                // The cause only: the sentence names the device and the socket itself.
                Err(WgError::Device { message, .. }) => Err(message),
                Err(e) => Err(e.to_string()),
            };
            self.infos.push((name.to_string(), info));
        }
        Vec::new()
    }

    /// What the daemon publishes with the key the device has (the key file's, once the daemon
    /// configured the device); not checked while no device can be read.
    fn lease_attrs(&self) -> Option<LeaseAttrs> {
        let key = self
            .infos
            .iter()
            .find_map(|(_, i)| i.as_ref().ok()?.private_key.as_ref())?;
        Some(self.backend.lease_attrs_for(&key.public_key()))
    }

    fn mtu(&self) -> Option<u32> {
        Some(self.backend.device_mtu())
    }

    fn device_findings(&self, own: Option<&Lease>, kernel: &KernelView) -> Vec<Finding> {
        self.devices
            .iter()
            .flat_map(|dev| self.device_checks(dev, own, kernel))
            .collect()
    }

    fn backend(&self) -> Option<&dyn Backend> {
        Some(&self.backend)
    }

    fn probes(&self, peer: &Lease) -> Vec<ProbePair> {
        if peer.attrs.backend_type != "wireguard" {
            return Vec::new();
        }
        let mut out = Vec::new();
        for dev in self.devices.iter().filter(|d| d.usable()) {
            let name = dev.layout.name.to_string();
            let v4 = peer
                .subnet
                .filter(|_| dev.layout.v4)
                .zip(Some(peer.attrs.public_ip).filter(|ip| !ip.is_unspecified()))
                .map(|(s, ip)| (IpAddr::V4(s.network()), IpAddr::V4(ip)));
            let v6 = peer
                .ipv6_subnet
                .filter(|_| dev.layout.v6)
                .zip(peer.attrs.public_ipv6)
                .map(|(s, ip)| (IpAddr::V6(s.network()), IpAddr::V6(ip)));
            for (overlay, underlay) in v4.into_iter().chain(v6) {
                out.push(ProbePair {
                    overlay: Some((overlay, name.clone())),
                    underlay,
                });
            }
        }
        out
    }

    async fn installed_peers(&self, _health: Option<SocketAddr>) -> Option<Result<Vec<PeerEntry>, Finding>> {
        for dev in self.devices.iter().filter(|d| d.usable()) {
            if let Some(Err(e)) = self.info(dev.layout.name) {
                return Some(Err(Finding::problem(
                    Check::PeerEntries,
                    THIS_NODE,
                    dev.layout.name,
                    self.unreadable(dev, e),
                )));
            }
        }
        let table = self.backend.peer_table()?;
        Some(table.installed().await.map_err(|e| {
            Finding::problem(
                Check::PeerEntries,
                THIS_NODE,
                "WireGuard peers",
                format!("reading the WireGuard peers failed ({e}): they are not checked"),
            )
        }))
    }

    fn tunnel_hint(&self) -> String {
        let ports: Vec<String> = self
            .backend
            .layouts()
            .iter()
            .map(|l| l.listen_port.to_string())
            .collect();
        format!(
            "a wrong public key, endpoint or allowed IPs on either side, or UDP port {} filtered on either side",
            ports.join(" or ")
        )
    }
}
