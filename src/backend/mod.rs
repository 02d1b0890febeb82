//! Backends: each prepares its devices, publishes its lease attributes, and says as pure data
//! (`entries_for`) which kernel entries a remote lease needs. Kernel changes for remote leases
//! are applied only by `reconcile::Reconciler`. The one `match` from backend type to
//! implementation is `build`.
//!
//! Spec: flanneld-behaviour.md section 9.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::kernel::{Fdb, KernelError, Neigh, Netlink, Route};
use crate::lease::{Lease, LeaseAttrs};

pub mod reconcile;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{step}: {source}")]
    Kernel { step: String, source: KernelError },
    #[error("{0}")]
    Config(String),
    #[error("backend type {0:?} is not implemented yet")]
    NotImplemented(String),
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

/// One kernel object the data plane needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entry {
    Neigh(Neigh),
    Fdb(Fdb),
    Route(Route),
}

/// What the reconciler may consider its own (and therefore delete when not desired).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    /// Devices whose permanent neighbour entries and FDB entries with a destination are all ours
    /// (flannel.<VNI>, flannel-v6.<VNI>).
    pub devices: Vec<u32>,
    /// Main-table, protocol-boot, unicast routes inside these networks and through one of
    /// `route_oifs` are ours, except those for `exclude`.
    pub networks: Vec<IpNet>,
    pub route_oifs: Vec<u32>,
    pub exclude: Vec<IpNet>,
}

/// Facts about the underlay that `entries_for` may depend on (kept pure by passing them in).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Underlay {
    /// Directly connected prefixes (routes without gateway) of the main table.
    pub connected: Vec<IpNet>,
}

impl Underlay {
    pub fn is_direct(&self, ip: IpAddr) -> bool {
        self.connected.iter().any(|n| n.contains(&ip))
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
    /// what is missing or incompatible. Returns true when something was recreated.
    async fn ensure_devices(&mut self, k: &dyn Netlink, own: &Lease) -> Result<bool, BackendError>;

    /// Pure: the kernel entries one remote lease needs. Empty for leases this backend ignores.
    fn entries_for(&self, remote: &Lease, underlay: &Underlay) -> Vec<Entry>;

    /// The objects the reconciler owns for this backend.
    fn ownership(&self, own: &Lease) -> Ownership;
}
