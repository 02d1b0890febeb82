//! What doctor checks per backend type: `DoctorBackend`, one implementation per type, and
//! `for_config`, the one `match` from the network config to an implementation.
//!
//! Each implementation wraps the daemon's own backend and only observes: vxlan adopts the existing
//! devices' indexes and MACs (`VxlanBackend::observe`, the read-only half of `prepare`) so that
//! `entries_for` and `ownership` are exactly the daemon's; host-gw has no device at all. So the
//! expected entries are never re-derived here. What an implementation adds: the checks of the own
//! devices against the own lease, and the addresses to probe per peer.
//!
//! Backends with a peer table of their own (udp forwarding table, WireGuard peers; `udp`,
//! `wireguard`) also return their installed peer entries (`installed_peers`), read where they
//! live: the udp table from the daemon's `/peers` (it exists only in the daemon's memory), the
//! WireGuard peers from the device itself. `peers::entry_findings` then compares them with the
//! backend's `entries_for` like kernel entries. ipip and alloc live in `ipip`. extension is
//! `NotCheckedYet`: its state is whatever the operator's commands made, so doctor says so instead
//! of guessing.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use super::report::{Check, Finding, THIS_NODE};
use crate::backend::PeerEntry;
use crate::backend::hostgw::HostGwBackend;
use crate::backend::vxlan::device::stale_addresses;
use crate::backend::vxlan::observe::ObservedDevice;
use crate::backend::vxlan::{Family, VxlanBackend};
use crate::backend::{Backend, ExternalInterface};
use crate::kernel::{Addr, Link, Netlink};
use crate::lease::{Lease, LeaseAttrs, parse_vxlan_backend_data};
use crate::netconf::{BackendConfig, NetConf};

/// VXLAN over IPv6 needs 70 bytes of headroom: the kernel caps flannel-v6.<VNI>'s MTU at the
/// external interface's MTU minus 70 (upstream asks for minus 50 on both devices, quirk 6).
const VXLAN6_HEADROOM: u32 = 70;

/// One address to probe through the overlay (with the device it leaves by) and the underlay
/// address that tells whether the peer is up at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePair {
    /// (overlay address, device), e.g. (198.18.2.0, flannel.1); `None` for backends whose data
    /// path is the underlay itself (host-gw).
    pub overlay: Option<(IpAddr, String)>,
    pub underlay: IpAddr,
}

/// The kernel state doctor reads once.
#[derive(Debug, Clone, Default)]
pub struct KernelView {
    pub links: Vec<Link>,
    pub addrs: Vec<Addr>,
}

/// What doctor needs of one backend type.
#[async_trait::async_trait]
pub trait DoctorBackend: Send + Sync {
    /// The backend type (`vxlan`).
    fn kind(&self) -> &str;

    /// Read-only setup from the kernel (device indexes and MACs); findings about the setup.
    async fn observe(&mut self, k: &dyn Netlink, kernel: &KernelView) -> Vec<Finding>;

    /// The lease attributes this node publishes, as the daemon's backend computes them from the
    /// observed devices; `None` when not checked.
    fn lease_attrs(&self) -> Option<LeaseAttrs>;

    /// The MTU the daemon writes to subnet.env; `None` when not checked.
    fn mtu(&self) -> Option<u32>;

    /// This node's devices against its lease (`own`, from the datastore) and the config.
    fn device_findings(&self, own: Option<&Lease>, kernel: &KernelView) -> Vec<Finding>;

    /// The daemon's backend, for `entries_for` and `ownership`; `None`: peers not checked yet.
    fn backend(&self) -> Option<&dyn Backend>;

    /// What to probe for one peer lease (empty: not probed).
    fn probes(&self, peer: &Lease) -> Vec<ProbePair>;

    /// The installed entries of the backend's own peer table (`health`: where the daemon
    /// serves /peers); `None` when the backend has none (its peers are kernel entries); an
    /// error is the finding that says why they are not checked.
    async fn installed_peers(&self, _health: Option<SocketAddr>) -> Option<Result<Vec<PeerEntry>, Finding>> {
        None
    }

    /// What breaks this backend's overlay while the underlay works, for reachability sentences.
    fn tunnel_hint(&self) -> String {
        "the tunnel between the two nodes is broken".to_string()
    }
}

/// The one `match` from the network config's backend to what doctor checks of it.
pub fn for_config(netconf: &NetConf, ext: &ExternalInterface) -> Result<Box<dyn DoctorBackend>, String> {
    match &netconf.backend {
        BackendConfig::Vxlan(cfg) => {
            let backend = VxlanBackend::new(cfg, ext, netconf, None).map_err(|e| e.to_string())?;
            Ok(Box::new(VxlanDoctor {
                backend,
                ext: ext.clone(),
                networks: (
                    netconf.network.map(IpNet::V4),
                    netconf.ipv6_network.map(IpNet::V6),
                ),
                devices: Vec::new(),
                port: if cfg.port == 0 { 8472 } else { cfg.port },
            }))
        }
        BackendConfig::HostGw => Ok(Box::new(HostGwDoctor {
            backend: HostGwBackend::new(netconf, ext).map_err(|e| e.to_string())?,
            attrs: None,
        })),
        BackendConfig::Udp(cfg) => Ok(Box::new(super::udp::UdpDoctor::new(cfg, ext, netconf)?)),
        BackendConfig::Wireguard(cfg) => Ok(Box::new(super::wireguard::WireguardDoctor::new(
            cfg, ext, netconf,
        )?)),
        BackendConfig::Ipip(cfg) => Ok(Box::new(super::ipip::IpipDoctor::new(cfg, ext, netconf)?)),
        BackendConfig::Alloc => Ok(Box::new(super::ipip::AllocDoctor::new(netconf, ext))),
        BackendConfig::Extension(_) => Ok(Box::new(NotCheckedYet {
            kind: netconf.backend_type.clone(),
        })),
    }
}

/// What is wrong with the addresses of device `name` (index `index`): its own address `wanted`
/// (the own subnet's network address) missing, or others the daemon removes (`stale_addresses`,
/// the daemon's own rule).
pub(super) fn address_problems(
    name: &str,
    index: u32,
    family: Family,
    wanted: (IpAddr, u8),
    network: Option<IpNet>,
    kernel: &KernelView,
) -> Vec<String> {
    let on_device: Vec<Addr> = kernel
        .addrs
        .iter()
        .filter(|a| a.index == index)
        .cloned()
        .collect();
    let mut out = Vec::new();
    if !on_device.iter().any(|a| (a.ip, a.prefix_len) == wanted) {
        out.push(format!(
            "{name} lacks its address {}/{} (the own subnet's network address)",
            wanted.0, wanted.1
        ));
    }
    for stale in stale_addresses(family, &on_device, wanted, network) {
        out.push(format!(
            "{name} also carries {}/{}, which the daemon removes",
            stale.ip, stale.prefix_len
        ));
    }
    out
}

pub(super) fn is_up_link(kernel: &KernelView, name: &str) -> Option<Link> {
    kernel.links.iter().find(|l| l.name == name).cloned()
}

/// The sentences for an overlay device that is down or whose MTU is not the one the backend sets:
/// the same two checks for every backend's device.
pub(super) fn link_state_problems(name: &str, link: &Link, mtu: u32) -> Vec<String> {
    let mut out = Vec::new();
    if !link.up {
        out.push(format!("{name} is down: nothing goes through the overlay"));
    }
    if link.mtu != mtu {
        out.push(format!(
            "{name} has MTU {}, the backend sets {mtu}: pods may send packets the overlay cannot carry",
            link.mtu
        ));
    }
    out
}

/// vxlan: flannel.<VNI> and flannel-v6.<VNI>.
struct VxlanDoctor {
    backend: VxlanBackend,
    ext: ExternalInterface,
    /// The config's Network and IPv6Network (addresses inside them on a device are ours).
    networks: (Option<IpNet>, Option<IpNet>),
    devices: Vec<ObservedDevice>,
    /// The VXLAN UDP port (for sentences).
    port: u16,
}

impl VxlanDoctor {
    fn device_checks(&self, dev: &ObservedDevice, own: Option<&Lease>, kernel: &KernelView) -> Vec<Finding> {
        let name = dev.name.as_str();
        let problem = |message: String| Finding::problem(Check::Device, THIS_NODE, name, message);
        let family = match dev.family {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        };
        let Some(link) = is_up_link(kernel, name) else {
            return vec![problem(format!(
                "{name} does not exist: no peer is reachable over {family} (the daemon creates it when it runs)"
            ))];
        };
        if !dev.incompatible.is_empty() {
            return vec![problem(format!(
                "{name} does not match the configuration ({}): the daemon deletes and recreates it",
                dev.incompatible.join("; ")
            ))];
        }
        let allowed_mtu = match dev.family {
            Family::V4 => dev.wanted.mtu,
            Family::V6 => dev.wanted.mtu.min(self.ext.mtu.saturating_sub(VXLAN6_HEADROOM)),
        };
        let mut out: Vec<Finding> = link_state_problems(name, &link, allowed_mtu)
            .into_iter()
            .map(problem)
            .collect();
        let Some(own) = own else { return out };
        let data = match dev.family {
            Family::V4 => own.attrs.backend_data.as_deref(),
            Family::V6 => own.attrs.backend_v6_data.as_deref(),
        };
        let device_mac = link.mac.map(|m| m.to_string()).unwrap_or_else(|| "none".into());
        match data.map(parse_vxlan_backend_data) {
            None => out.push(problem(format!(
                "this node's lease has no {family} vxlan backend data, so no peer can reach {name}"
            ))),
            Some(Err(e)) => out.push(problem(format!("this node's lease: {e}"))),
            Some(Ok((vni, mac))) => {
                if Some(mac) != link.mac {
                    out.push(problem(format!(
                        "this node's lease says VtepMAC {mac} for {name}, but {name} has MAC {device_mac}: \
                         peers send this node's overlay traffic to a MAC it drops"
                    )));
                }
                if vni != dev.wanted.vni {
                    out.push(problem(format!(
                        "this node's lease says VNI {vni} for {name}, but the config says {}",
                        dev.wanted.vni
                    )));
                }
            }
        }
        if let Some(wanted) = dev.wanted_address(own) {
            let network = self.network_of(dev.family);
            out.extend(
                address_problems(name, link.index, dev.family, wanted, network, kernel)
                    .into_iter()
                    .map(problem),
            );
        }
        if out.is_empty() {
            out.push(Finding::ok(
                Check::Device,
                THIS_NODE,
                name,
                format!(
                    "{name}: up, MAC {device_mac} and VNI {} as this node's lease says, MTU {}, address as the lease's subnet",
                    dev.wanted.vni, link.mtu
                ),
            ));
        }
        out
    }

    fn network_of(&self, family: Family) -> Option<IpNet> {
        match family {
            Family::V4 => self.networks.0,
            Family::V6 => self.networks.1,
        }
    }
}

#[async_trait::async_trait]
impl DoctorBackend for VxlanDoctor {
    fn kind(&self) -> &str {
        "vxlan"
    }

    async fn observe(&mut self, _k: &dyn Netlink, kernel: &KernelView) -> Vec<Finding> {
        self.devices = self.backend.observe(&kernel.links);
        Vec::new()
    }

    fn lease_attrs(&self) -> Option<LeaseAttrs> {
        Some(self.backend.lease_attrs())
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
        if peer.attrs.backend_type != "vxlan" {
            return Vec::new();
        }
        let mut out = Vec::new();
        for dev in self
            .devices
            .iter()
            .filter(|d| d.link.is_some() && d.incompatible.is_empty())
        {
            let pair = match dev.family {
                Family::V4 => peer
                    .subnet
                    .zip(Some(peer.attrs.public_ip).filter(|ip| !ip.is_unspecified()))
                    .map(|(s, ip)| (IpAddr::V4(s.network()), IpAddr::V4(ip))),
                Family::V6 => peer
                    .ipv6_subnet
                    .zip(peer.attrs.public_ipv6)
                    .map(|(s, ip)| (IpAddr::V6(s.network()), IpAddr::V6(ip))),
            };
            if let Some((overlay, underlay)) = pair {
                out.push(ProbePair {
                    overlay: Some((overlay, dev.name.clone())),
                    underlay,
                });
            }
        }
        out
    }

    fn tunnel_hint(&self) -> String {
        format!(
            "a wrong VTEP MAC (in an FDB or neighbour entry, or in a lease) on either side, or UDP port {} \
             (VXLAN) filtered on either side",
            self.port
        )
    }
}

/// host-gw: no device; one route per peer via its public IP on the external interface.
struct HostGwDoctor {
    backend: HostGwBackend,
    attrs: Option<LeaseAttrs>,
}

#[async_trait::async_trait]
impl DoctorBackend for HostGwDoctor {
    fn kind(&self) -> &str {
        "host-gw"
    }

    /// host-gw's `prepare` creates nothing: it checks the public IP and computes the attributes.
    async fn observe(&mut self, k: &dyn Netlink, _kernel: &KernelView) -> Vec<Finding> {
        match self.backend.prepare(k).await {
            Ok(attrs) => {
                self.attrs = Some(attrs);
                Vec::new()
            }
            Err(e) => vec![Finding::problem(
                Check::Interface,
                THIS_NODE,
                "public IP",
                format!("the daemon refuses to start: {e}"),
            )],
        }
    }

    fn lease_attrs(&self) -> Option<LeaseAttrs> {
        self.attrs.clone()
    }

    fn mtu(&self) -> Option<u32> {
        None
    }

    fn device_findings(&self, _own: Option<&Lease>, _kernel: &KernelView) -> Vec<Finding> {
        Vec::new()
    }

    fn backend(&self) -> Option<&dyn Backend> {
        Some(&self.backend)
    }

    fn probes(&self, peer: &Lease) -> Vec<ProbePair> {
        if peer.attrs.backend_type != "host-gw" {
            return Vec::new();
        }
        super::leases::public_ips(peer)
            .into_iter()
            .map(|underlay| ProbePair {
                overlay: None,
                underlay,
            })
            .collect()
    }
}

/// Backends doctor does not check (extension: its commands' effects are the operator's): it says so.
struct NotCheckedYet {
    kind: String,
}

#[async_trait::async_trait]
impl DoctorBackend for NotCheckedYet {
    fn kind(&self) -> &str {
        &self.kind
    }

    async fn observe(&mut self, _k: &dyn Netlink, _kernel: &KernelView) -> Vec<Finding> {
        vec![Finding::note(
            Check::Device,
            THIS_NODE,
            &self.kind,
            format!(
                "the {} backend's kernel state is whatever its commands make, so doctor does not check it (only leases, subnet.env and the daemon's health)",
                self.kind
            ),
        )]
    }

    fn lease_attrs(&self) -> Option<LeaseAttrs> {
        None
    }

    fn mtu(&self) -> Option<u32> {
        None
    }

    fn device_findings(&self, _own: Option<&Lease>, _kernel: &KernelView) -> Vec<Finding> {
        Vec::new()
    }

    fn backend(&self) -> Option<&dyn Backend> {
        None
    }

    fn probes(&self, _peer: &Lease) -> Vec<ProbePair> {
        Vec::new()
    }
}
