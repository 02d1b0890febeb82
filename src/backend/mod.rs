//! Backends: each prepares its devices, publishes its lease attributes, and says as pure data
//! (`entries_for`) which kernel entries a remote lease needs. A backend must not program
//! per-lease entries itself: kernel changes for remote leases are applied only by
//! `reconcile::Reconciler`, which also defines which objects are ours (`Ownership`). The one
//! `match` from backend type to implementation is `build`.
//!
//! Spec: flanneld-behaviour.md section 9 (9.1 vxlan, 9.2 host-gw, 9.4 ipip, 9.6 extension,
//! 9.7 alloc); design.md sections 3 and 4.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::kernel::{Fdb, KernelError, Neigh, Netlink, Route};

use crate::lease::{Lease, LeaseAttrs};
use crate::netconf::{BackendConfig, NetConf};
pub use peers::{PeerEntry, PeerError, PeerKey, PeerOp, PeerTable};

pub mod alloc;
pub mod device_addr;
pub mod extension;
pub mod hostgw;
pub mod ipip;
pub mod offload;
pub mod peers;
pub mod peers_json;
pub mod reconcile;
#[cfg(test)]
pub(crate) mod testutil;
pub mod tun;
pub mod udp;
pub mod vxlan;
pub mod wireguard;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{step}: {source}")]
    Kernel { step: String, source: KernelError },
    #[error("{0}")]
    Config(String),
}

/// The external interface the backend runs on (from interface selection, spec 7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalInterface {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    /// The interface's own IPv4 address (`None` in an IPv6-only setup).
    pub iface_addr: Option<Ipv4Addr>,
    pub iface_v6_addr: Option<Ipv6Addr>,
    /// The advertised public address (`--public-ip` or the interface address).
    pub ext_addr: Option<Ipv4Addr>,
    pub ext_v6_addr: Option<Ipv6Addr>,
}

/// One object the data plane needs: a kernel route, neighbour or FDB entry (applied over
/// rtnetlink), or a peer of the backend's own data path (applied through its `PeerTable`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entry {
    Neigh(Neigh),
    Fdb(Fdb),
    Route(Route),
    Peer(PeerEntry),
}

/// What the reconciler may consider its own (and therefore delete when not desired); the rule
/// is `reconcile::is_owned`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    /// The backend's devices (flannel.<VNI>, flannel.ipip, flannel0, flannel-wg ...): their
    /// permanent neighbour and FDB entries are ours, and so are protocol-boot routes through them
    /// (what upstream flanneld left behind).
    pub devices: Vec<u32>,
    /// The cluster networks: no route outside them is ever ours.
    pub networks: Vec<IpNet>,
    /// The devices our routes go through (the backend's devices, the external interface).
    pub route_oifs: Vec<u32>,
    /// Our own subnets: a protocol-boot route overlapping them is never ours.
    pub exclude: Vec<IpNet>,
    /// The public IPs of the current leases (filled in by the reconciler): a protocol-boot route
    /// through the external interface via one of them is a leftover of upstream flanneld.
    pub peer_gateways: Vec<std::net::IpAddr>,
}

/// Facts about the underlay that `entries_for` may depend on (kept pure by passing them in).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Underlay {
    /// Directly connected prefixes (routes without gateway) of the main table.
    pub connected: Vec<IpNet>,
    /// Prefixes of the main table reached otherwise (through a gateway, several next hops, or
    /// blackholed). A longer match here wins over a connected prefix, as in `ip route get`.
    pub indirect: Vec<IpNet>,
}

impl Underlay {
    /// Upstream's DirectRouting test (`ip route get <ip>` gives one route without gateway): the
    /// longest matching prefix is a connected one (on equal length the connected prefix wins).
    pub fn is_direct(&self, ip: IpAddr) -> bool {
        let longest = |nets: &[IpNet]| {
            nets.iter()
                .filter(|n| n.contains(&ip))
                .map(|n| n.prefix_len())
                .max()
        };
        match (longest(&self.connected), longest(&self.indirect)) {
            (Some(c), Some(i)) => c >= i,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// A backend (vxlan, host-gw, ...).
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// The lower-case type name (`vxlan`).
    fn kind(&self) -> &'static str;

    /// Create or adopt devices; return the attributes to publish in the lease.
    async fn prepare(&mut self, k: &dyn Netlink) -> Result<LeaseAttrs, BackendError>;

    /// Configure devices for the own lease (address, up); return the MTU for subnet.env.
    async fn configure(&mut self, k: &dyn Netlink, own: &Lease) -> Result<u32, BackendError>;

    /// Re-check the backend's devices (after a link event or on the periodic check); recreate
    /// what is missing or incompatible. Returns true when something was recreated. The default is
    /// for backends without devices (host-gw, alloc, extension): nothing to check.
    async fn ensure_devices(&mut self, _k: &dyn Netlink, _own: &Lease) -> Result<bool, BackendError> {
        Ok(false)
    }

    /// Pure: the kernel entries one remote lease needs. Empty for leases this backend ignores.
    fn entries_for(&self, remote: &Lease, underlay: &Underlay) -> Vec<Entry>;

    /// The objects the reconciler owns for this backend.
    fn ownership(&self, own: &Lease) -> Ownership;

    /// Names of the devices this backend keeps (`flannel.1`): a link appearing under one of these
    /// names (recreated by someone else, new index) makes the reconciler check the devices.
    fn device_names(&self) -> Vec<String> {
        Vec::new()
    }

    /// Pure: entries the own lease needs whatever the peers (`<Network> dev flannel0`,
    /// `<Network> dev flannel-wg scope link`). Reconciled like the per-peer entries.
    fn own_entries(&self, _own: &Lease) -> Vec<Entry> {
        Vec::new()
    }

    /// Where this backend's `Entry::Peer` entries are installed; `None` for backends without any.
    fn peer_table(&self) -> Option<std::sync::Arc<dyn PeerTable>> {
        None
    }

    /// Counters of the backend's own data path (udp, userspace WireGuard) for /metrics.
    fn metrics(&self) -> Option<std::sync::Arc<dyn DataPathMetrics>> {
        None
    }
}

/// A backend data path's counters, rendered into /metrics.
pub trait DataPathMetrics: Send + Sync {
    /// Append the metrics in the Prometheus text exposition format (`# HELP`, `# TYPE`, samples),
    /// each name starting with `flannel_`.
    fn render(&self, out: &mut String);
}

/// The one `match` from backend type to implementation. `stored_macs` are the VTEP MACs kept from
/// an earlier run (kube node annotations `backend-data`, `backend-v6-data`; `None` or one
/// `Option<MacAddr>` for the IPv4 device only), used when a vxlan device has to be created.
pub fn build(
    conf: &NetConf,
    ext: &ExternalInterface,
    stored_macs: impl Into<vxlan::StoredMacs>,
) -> Result<Box<dyn Backend>, BackendError> {
    match &conf.backend {
        BackendConfig::Vxlan(cfg) => Ok(Box::new(vxlan::VxlanBackend::new(cfg, ext, conf, stored_macs)?)),
        BackendConfig::HostGw => Ok(Box::new(hostgw::HostGwBackend::new(conf, ext)?)),
        BackendConfig::Udp(cfg) => Ok(Box::new(udp::UdpBackend::new(cfg, ext, conf)?)),
        BackendConfig::Ipip(cfg) => Ok(Box::new(ipip::IpipBackend::new(cfg, ext, conf)?)),
        BackendConfig::Extension(cfg) => Ok(Box::new(extension::ExtensionBackend::new(cfg, ext, conf))),
        BackendConfig::Alloc => Ok(Box::new(alloc::AllocBackend::new(conf, ext))),
        BackendConfig::Wireguard(cfg) => Ok(Box::new(wireguard::WireguardBackend::new(
            cfg,
            ext,
            conf,
            wireguard::WgPaths::from_env(),
        )?)),
    }
}

const WARN_ONCE_LIMIT: usize = 4096;

/// Warn once per (lease, reason) about a remote lease a backend has to ignore; `entries_for` runs
/// on every pass, and the log must not repeat itself every ten seconds.
#[derive(Debug, Default)]
pub(crate) struct WarnOnce {
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl WarnOnce {
    /// True the first time `key` is seen. The memory is bounded: past `WARN_ONCE_LIMIT` keys
    /// (lease churn over months) it starts over, which at worst repeats a warning once.
    pub(crate) fn first(&self, key: String) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= WARN_ONCE_LIMIT && !seen.contains(&key) {
            seen.clear();
        }
        seen.insert(key)
    }

    /// True when `remote` is a lease of another backend type than `kind` (which the backend
    /// ignores); warns the first time for each (lease, type).
    pub(crate) fn other_type(&self, remote: &Lease, kind: &str) -> bool {
        let backend_type = &remote.attrs.backend_type;
        if backend_type == kind {
            return false;
        }
        let subnet = remote.key();
        if self.first(format!("{subnet} type {backend_type}")) {
            tracing::warn!(subnet = %subnet, backend_type = %backend_type,
                "ignoring a remote lease of another backend type");
        }
        true
    }
}

/// The own lease's subnets (v4, then v6): the prefixes `Ownership::exclude` keeps out of reach.
pub(crate) fn own_subnets(own: &Lease) -> Vec<IpNet> {
    own.subnet
        .map(IpNet::V4)
        .into_iter()
        .chain(own.ipv6_subnet.map(IpNet::V6))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::testutil::{kernel_with_eth0, netconf, vxlan_cfg};

    #[test]
    fn build_picks_the_backend_by_type() {
        let (_, ext) = kernel_with_eth0();
        let vxlan = build(&netconf(BackendConfig::Vxlan(vxlan_cfg(false))), &ext, None).unwrap();
        assert_eq!(vxlan.kind(), "vxlan");
        assert_eq!(vxlan.device_names(), vec!["flannel.1".to_string()]);
        let hostgw = build(&netconf(BackendConfig::HostGw), &ext, None).unwrap();
        assert_eq!(hostgw.kind(), "host-gw");
        let mut udp = netconf(BackendConfig::Udp(crate::netconf::UdpConfig { port: 8285 }));
        udp.backend_type = "udp".into();
        let udp = build(&udp, &ext, None).unwrap();
        assert_eq!(udp.kind(), "udp");
        assert_eq!(udp.device_names(), vec!["flannel0".to_string()]);
    }

    #[test]
    fn warn_once_remembers_and_stays_bounded() {
        let w = WarnOnce::default();
        assert!(w.first("a".into()));
        assert!(!w.first("a".into()));
        for i in 0..(2 * WARN_ONCE_LIMIT) {
            w.first(format!("k{i}"));
        }
        assert!(w.seen.lock().unwrap().len() <= WARN_ONCE_LIMIT);
    }

    #[test]
    fn build_picks_ipip_alloc_and_extension() {
        let (_, ext) = kernel_with_eth0();
        let ipip = build(
            &netconf(BackendConfig::Ipip(crate::netconf::IpipConfig::default())),
            &ext,
            None,
        )
        .unwrap();
        assert_eq!(ipip.kind(), "ipip");
        assert_eq!(ipip.device_names(), vec!["flannel.ipip".to_string()]);
        let alloc = build(&netconf(BackendConfig::Alloc), &ext, None).unwrap();
        assert_eq!(alloc.kind(), "alloc");
        let extension = build(
            &netconf(BackendConfig::Extension(
                crate::netconf::ExtensionConfig::default(),
            )),
            &ext,
            None,
        )
        .unwrap();
        assert_eq!(extension.kind(), "extension");
        assert!(extension.peer_table().is_some());
    }

    #[test]
    fn underlay_without_indirect_prefixes_is_plain_containment() {
        let u = Underlay {
            connected: vec!["192.0.2.0/24".parse().unwrap()],
            indirect: vec![],
        };
        assert!(u.is_direct("192.0.2.9".parse().unwrap()));
        assert!(!u.is_direct("198.51.100.9".parse().unwrap()));
    }
}
