//! The udp backend (spec 9.3; the backend of a net-conf without `Backend`, quirk 3): a TUN device
//! `flannel0` whose packets userspace workers carry to peers, one bare IPv4 packet per UDP
//! datagram to `<peer PublicIP>:<Port>`, wire-compatible with upstream's proxy.
//!
//! What it owns: the TUN device (persistent, re-attached by the next run), its address
//! `<subnet network address>/32`, MTU (ext - 28) and up flag (`ensure_devices` repairs them), the
//! route `<Network> dev flannel0` (an own entry, so the reconciler repairs it), and the forwarding
//! table (`table`, a `PeerTable`: desired state of the one reconciler, never changed here). It
//! must not react to lease events itself. Modules: `packet` (pure packet code), `table`,
//! `socket` and `crate::backend::tun` (the syscalls), `worker` (the threads), `device`,
//! `metrics`.
//!
//! Deviations from upstream (README): datagrams are validated before they reach the TUN device;
//! ICMP errors come from an address the kernel accepts and also answer ICMP queries (ping); the
//! TUN device persists across restarts (upstream deletes it at exit) so the route is never
//! deleted and re-added and forwarding resumes as soon as the next process attaches.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};

use crate::backend::peers::UdpPeer;
use crate::backend::{
    Backend, BackendError, DataPathMetrics, Entry, ExternalInterface, Ownership, PeerEntry, PeerTable,
    Underlay, own_subnets,
};
use crate::kernel::{Netlink, Route};
use crate::lease::{Lease, LeaseAttrs};
use crate::netconf::{NetConf, UdpConfig};

pub mod device;
pub mod metrics;
pub mod packet;
pub mod socket;
pub mod table;
#[cfg(test)]
mod tests;
pub mod worker;

use metrics::UdpMetrics;
use packet::ipv4::{ReceivePolicy, icmp_source};
use socket::UdpSock;
use table::ForwardingTable;
use worker::{WorkerConfig, Workers};

/// IPv4 (20) + UDP (8) header bytes each packet carries on the wire.
pub const UDP_OVERHEAD: u32 = 28;
const MIN_MTU: u32 = 68;
/// Upper bound of workers (queues), whatever the core count.
const MAX_WORKERS: usize = 8;

/// The udp backend.
pub struct UdpBackend {
    port: u16,
    ext: ExternalInterface,
    network: Ipv4Net,
    mtu: u32,
    workers_wanted: usize,
    table: Arc<ForwardingTable>,
    metrics: Arc<UdpMetrics>,
    sockets: Vec<Arc<UdpSock>>,
    /// Queues attached but not yet handed to workers (between prepare and configure).
    pending: Option<device::Attached>,
    index: u32,
    vnet_hdr: bool,
    workers: Option<Workers>,
    sysctl_root: Option<PathBuf>,
}

impl UdpBackend {
    pub fn new(cfg: &UdpConfig, ext: &ExternalInterface, conf: &NetConf) -> Result<UdpBackend, BackendError> {
        if !conf.enable_ipv4 || conf.enable_ipv6 {
            return Err(BackendError::Config(format!(
                "udp: the udp backend carries IPv4 only (EnableIPv4 is {}, EnableIPv6 is {}); use vxlan or wireguard for IPv6",
                conf.enable_ipv4, conf.enable_ipv6
            )));
        }
        let network = conf
            .network
            .ok_or_else(|| BackendError::Config("udp: the network config has no Network".to_string()))?;
        if ext.iface_addr.is_none() {
            return Err(BackendError::Config(format!(
                "udp: the external interface {} has no IPv4 address to bind the UDP socket to",
                ext.name
            )));
        }
        let mtu = ext.mtu.checked_sub(UDP_OVERHEAD).filter(|m| *m >= MIN_MTU).ok_or_else(|| {
            BackendError::Config(format!("udp: the MTU {} of interface {} leaves no room for the {UDP_OVERHEAD} bytes of IPv4+UDP headers", ext.mtu, ext.name))
        })?;
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        tracing::info!(
            port = cfg.port,
            mtu,
            workers = cores.min(MAX_WORKERS),
            "UDP config"
        );
        Ok(UdpBackend {
            port: cfg.port,
            ext: ext.clone(),
            network,
            mtu,
            workers_wanted: cores.clamp(1, MAX_WORKERS),
            table: Arc::new(ForwardingTable::new()),
            metrics: Arc::new(UdpMetrics::default()),
            sockets: Vec::new(),
            pending: None,
            index: 0,
            vnet_hdr: false,
            workers: None,
            sysctl_root: Some(PathBuf::from("/proc/sys")),
        })
    }

    /// The forwarding table (for tests and the data path).
    pub fn table(&self) -> Arc<ForwardingTable> {
        self.table.clone()
    }

    /// What this node's lease publishes: only the public IP, no BackendType and no data, as
    /// upstream (spec 3.2).
    pub fn lease_attrs(&self) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: self.ext.ext_addr.unwrap_or(Ipv4Addr::UNSPECIFIED),
            ..LeaseAttrs::default()
        }
    }

    /// The MTU of flannel0 (and subnet.env's FLANNEL_MTU).
    pub fn device_mtu(&self) -> u32 {
        self.mtu
    }

    /// The UDP port peers are sent to (and this node listens on).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// For `flanneld doctor`, the read-only counterpart of `prepare`: adopt the index of an
    /// existing `flannel0` TUN device from `links` (binding nothing, attaching nothing), so
    /// `own_entries` and `ownership` say what the daemon keeps. Returns that link.
    pub fn observe(&mut self, links: &[crate::kernel::Link]) -> Option<crate::kernel::Link> {
        let link = links
            .iter()
            .find(|l| l.name == device::DEVICE && l.kind.as_deref() == Some("tun"))
            .cloned();
        self.index = link.as_ref().map_or(0, |l| l.index);
        link
    }

    fn bind_address(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.ext.iface_addr.unwrap_or(Ipv4Addr::UNSPECIFIED), self.port)
    }

    fn bind_sockets(&mut self) -> Result<(), BackendError> {
        if !self.sockets.is_empty() {
            return Ok(());
        }
        let addr = self.bind_address();
        let mut socks = Vec::new();
        for _ in 0..self.workers_wanted {
            socks.push(Arc::new(
                UdpSock::bind(addr).map_err(|e| BackendError::Config(format!("udp: {e}")))?,
            ));
        }
        tracing::info!(address = %addr, sockets = socks.len(), gso = socks[0].gso, gro = socks[0].gro, "bound the udp backend's sockets");
        self.sockets = socks;
        Ok(())
    }

    async fn attach(&mut self, k: &dyn Netlink) -> Result<(), BackendError> {
        let attached = device::attach(k, self.workers_wanted).await?;
        tracing::info!(
            device = device::DEVICE,
            index = attached.index,
            queues = attached.queues.len(),
            offloads = attached.vnet_hdr,
            "attached to the TUN device"
        );
        self.index = attached.index;
        self.vnet_hdr = attached.vnet_hdr;
        self.pending = Some(attached);
        device::disable_ipv6(self.sysctl_root.as_deref());
        Ok(())
    }

    fn start_workers(&mut self, own: &Lease) -> Result<(), BackendError> {
        let Some(attached) = self.pending.take() else {
            return Ok(());
        };
        let subnet = own_subnet(own)?;
        let cfg = WorkerConfig {
            policy: ReceivePolicy {
                own_subnet: subnet,
                network: self.network,
                mtu: self.mtu as usize,
            },
            port: self.port,
            icmp_source: icmp_source(self.network, subnet),
            vnet_hdr: attached.vnet_hdr,
        };
        let workers = Workers::start(
            attached.queues,
            &self.sockets,
            self.table.clone(),
            self.metrics.clone(),
            cfg,
        )
        .map_err(|e| BackendError::Config(format!("udp: starting the packet workers: {e}")))?;
        self.workers = Some(workers);
        Ok(())
    }
}

fn own_subnet(own: &Lease) -> Result<Ipv4Net, BackendError> {
    own.subnet.ok_or_else(|| {
        BackendError::Config("udp: configuring flannel0: the lease has no IPv4 subnet".to_string())
    })
}

#[async_trait::async_trait]
impl Backend for UdpBackend {
    fn kind(&self) -> &'static str {
        "udp"
    }

    async fn prepare(&mut self, k: &dyn Netlink) -> Result<LeaseAttrs, BackendError> {
        self.bind_sockets()?;
        self.attach(k).await?;
        Ok(self.lease_attrs())
    }

    async fn configure(&mut self, k: &dyn Netlink, own: &Lease) -> Result<u32, BackendError> {
        device::configure(k, self.index, own_subnet(own)?, self.network, self.mtu).await?;
        self.start_workers(own)?;
        Ok(self.mtu)
    }

    async fn ensure_devices(&mut self, k: &dyn Netlink, own: &Lease) -> Result<bool, BackendError> {
        let link = k
            .link_by_name(device::DEVICE)
            .await
            .map_err(|source| BackendError::Kernel {
                step: format!("looking up {}", device::DEVICE),
                source,
            })?;
        let healthy = self.workers.as_ref().is_some_and(|w| w.all_alive());
        let same = link
            .as_ref()
            .is_some_and(|l| l.index == self.index && l.kind.as_deref() == Some("tun"));
        let recreate = !same || !healthy;
        if recreate {
            tracing::warn!(
                device = device::DEVICE,
                present = link.is_some(),
                workers_running = healthy,
                "the udp backend's TUN device is gone or its workers stopped; re-attaching"
            );
            self.workers.take();
            self.attach(k).await?;
        }
        device::configure(k, self.index, own_subnet(own)?, self.network, self.mtu).await?;
        self.start_workers(own)?;
        Ok(recreate)
    }

    fn entries_for(&self, remote: &Lease, _underlay: &Underlay) -> Vec<Entry> {
        // Upstream filters no backend type here (spec 9.3).
        let (Some(subnet), ip) = (remote.subnet, remote.attrs.public_ip) else {
            return Vec::new();
        };
        if ip.is_unspecified() {
            return Vec::new();
        }
        vec![Entry::Peer(PeerEntry::Udp(UdpPeer {
            subnet,
            endpoint: SocketAddrV4::new(ip, self.port),
        }))]
    }

    fn own_entries(&self, _own: &Lease) -> Vec<Entry> {
        if self.index == 0 {
            return Vec::new();
        }
        vec![Entry::Route(Route::unicast(
            IpNet::V4(self.network),
            None,
            Some(self.index),
        ))]
    }

    fn ownership(&self, own: &Lease) -> Ownership {
        let devices: Vec<u32> = Some(self.index).filter(|i| *i > 0).into_iter().collect();
        Ownership {
            devices: devices.clone(),
            networks: vec![IpNet::V4(self.network)],
            route_oifs: devices,
            exclude: own_subnets(own),
            ..Ownership::default()
        }
    }

    fn device_names(&self) -> Vec<String> {
        vec![device::DEVICE.to_string()]
    }

    fn peer_table(&self) -> Option<Arc<dyn PeerTable>> {
        Some(self.table.clone())
    }

    fn metrics(&self) -> Option<Arc<dyn DataPathMetrics>> {
        Some(self.metrics.clone())
    }
}

/// For tests: the backend with its index set as if `flannel0` existed, without touching devices.
#[cfg(test)]
impl UdpBackend {
    pub(crate) fn with_index(mut self, index: u32) -> UdpBackend {
        self.index = index;
        self
    }
}
