//! The wireguard backend (spec 9.5, quirk 16): the node key (`key`), the devices a mode needs
//! and the peer each remote lease needs (`layout`, pure), and one `WireguardDevice` seam
//! (`device`) with three implementations: the kernel module over generic netlink (`kernel`), a
//! userspace data path on a TUN device with the standard UAPI socket (`userspace`), and an
//! in-memory fake (`fake`). Peers are desired state of the one reconciler, installed through
//! the backend's `PeerTable` (`table`); this module never reacts to lease events itself.
//!
//! Implementation choice (`Implementation` key): `kernel`, `userspace`, or `auto` (default): the
//! kernel module when its generic netlink family exists, else userspace.
//!
//! Deviations from upstream (README): devices are adopted at start and left in place at
//! shutdown (a restart is hitless) instead of being deleted and recreated; peers nobody leases
//! are removed (no stale peers), an operator's peers (allowed IPs outside the cluster networks)
//! are never touched; quirk 16 as described in `layout`.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use ipnet::IpNet;

use crate::backend::device_addr::{ensure_device_address, ensure_device_up, kernel_err};
use crate::backend::peers::{PeerEntry, PeerTable, PresharedKey};
use crate::backend::{
    Backend, BackendError, DataPathMetrics, Entry, ExternalInterface, Ownership, Underlay, WarnOnce,
    own_subnets,
};
use crate::kernel::{Netlink, RT_SCOPE_LINK, Route};
use crate::lease::{Lease, LeaseAttrs};
use crate::netconf::{NetConf, WireguardConfig, WireguardImplementation};

pub mod device;
#[cfg(any(test, feature = "fake-kernel"))]
pub mod fake;
pub mod kernel;
pub mod key;
pub mod layout;
pub mod metrics;
pub mod observe;
pub mod table;
pub mod userspace;

#[cfg(test)]
mod tests;

use device::{DeviceUpdate, Implementation, WireguardDevice};
use key::PrivateKey;
use layout::{DeviceLayout, PeerContext};
use metrics::WgMetrics;
use table::{DeviceSlots, WgPeerTable};

/// The smallest MTU a device may get.
const MIN_MTU: u32 = 68;

/// Where the backend keeps its files; `from_env` reads `$WIREGUARD_KEY_FILE`, tests pass paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPaths {
    pub key_file: PathBuf,
    /// The directory of the UAPI sockets of the userspace implementation (`/run/wireguard`).
    pub uapi_dir: PathBuf,
}

impl WgPaths {
    pub fn from_env() -> WgPaths {
        let key_file = std::env::var_os(key::KEY_FILE_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(key::DEFAULT_KEY_FILE));
        WgPaths {
            key_file,
            uapi_dir: PathBuf::from(userspace::UAPI_DIR),
        }
    }
}

fn wg_err(e: device::WgError) -> BackendError {
    BackendError::Config(e.to_string())
}

/// The wireguard backend.
pub struct WireguardBackend {
    cfg: WireguardConfig,
    ext: ExternalInterface,
    network_v4: Option<IpNet>,
    network_v6: Option<IpNet>,
    /// (configured MTU, else the external interface's) - 80.
    mtu: u32,
    layouts: Vec<DeviceLayout>,
    slots: DeviceSlots,
    paths: WgPaths,
    psk: Option<PresharedKey>,
    key: Option<PrivateKey>,
    device: Option<Arc<dyn WireguardDevice>>,
    table: Option<Arc<WgPeerTable>>,
    metrics: Arc<WgMetrics>,
    warn: WarnOnce,
}

impl WireguardBackend {
    pub fn new(
        cfg: &WireguardConfig,
        ext: &ExternalInterface,
        netconf: &NetConf,
        paths: WgPaths,
    ) -> Result<WireguardBackend, BackendError> {
        let base = if cfg.mtu > 0 { cfg.mtu } else { ext.mtu };
        let mtu = base
            .checked_sub(layout::OVERHEAD)
            .filter(|m| *m >= MIN_MTU)
            .ok_or_else(|| {
                BackendError::Config(format!(
                    "wireguard: MTU {base} (of {}) leaves no room for the {} bytes of WireGuard overhead",
                    if cfg.mtu > 0 {
                        "the Backend MTU setting".to_string()
                    } else {
                        format!("interface {}", ext.name)
                    },
                    layout::OVERHEAD
                ))
            })?;
        let psk = match cfg.psk.as_deref() {
            Some(text) => Some(key::parse_psk(text).map_err(|e| BackendError::Config(e.to_string()))?),
            None => None,
        };
        let layouts = layout::devices(
            cfg.mode,
            netconf.enable_ipv4,
            netconf.enable_ipv6,
            cfg.listen_port,
            cfg.listen_port_v6,
        );
        let slots = Arc::new(RwLock::new(
            layouts.iter().map(|l| (l.name.to_string(), 0)).collect(),
        ));
        tracing::info!(mode = ?cfg.mode, implementation = ?cfg.implementation, listen_port = cfg.listen_port,
            listen_port_v6 = cfg.listen_port_v6, keepalive = cfg.persistent_keepalive, mtu, psk = psk.is_some(),
            "WireGuard config");
        Ok(WireguardBackend {
            cfg: cfg.clone(),
            ext: ext.clone(),
            network_v4: netconf.network.map(IpNet::V4).filter(|_| netconf.enable_ipv4),
            network_v6: netconf
                .ipv6_network
                .map(IpNet::V6)
                .filter(|_| netconf.enable_ipv6),
            mtu,
            layouts,
            slots,
            paths,
            psk,
            key: None,
            device: None,
            table: None,
            metrics: Arc::new(WgMetrics::default()),
            warn: WarnOnce::default(),
        })
    }

    /// Use this implementation instead of choosing one in `prepare` (tests: the fake).
    pub fn with_device(mut self, device: Arc<dyn WireguardDevice>) -> WireguardBackend {
        self.device = Some(device);
        self
    }

    /// The implementation in use (after `prepare`).
    pub fn implementation(&self) -> Option<Implementation> {
        self.device.as_ref().map(|d| d.implementation())
    }

    /// The node's public key (after `prepare`).
    pub fn public_key(&self) -> Option<crate::backend::peers::WgKey> {
        self.key.as_ref().map(|k| k.public_key())
    }

    fn networks(&self) -> Vec<IpNet> {
        self.network_v4.into_iter().chain(self.network_v6).collect()
    }

    fn slot_index(&self, name: &str) -> u32 {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, i)| *i)
            .unwrap_or(0)
    }

    async fn choose_device(&self) -> Result<Arc<dyn WireguardDevice>, BackendError> {
        let userspace = || -> Arc<dyn WireguardDevice> {
            self.metrics
                .userspace
                .store(true, std::sync::atomic::Ordering::Relaxed);
            Arc::new(userspace::UserspaceWireguard::new(
                self.paths.uapi_dir.clone(),
                self.metrics.clone(),
            ))
        };
        match self.cfg.implementation {
            WireguardImplementation::Userspace => Ok(userspace()),
            WireguardImplementation::Kernel => match kernel::KernelWireguard::connect().await {
                Ok(k) => Ok(Arc::new(k)),
                Err(e) => Err(BackendError::Config(format!(
                    "wireguard: Implementation \"kernel\" is configured but {e}; use \"auto\" or \"userspace\""
                ))),
            },
            WireguardImplementation::Auto => match kernel::KernelWireguard::connect().await {
                Ok(k) => Ok(Arc::new(k)),
                Err(crate::kernel::wireguard::GenlError::Unavailable) => {
                    tracing::info!(
                        "the kernel has no WireGuard (generic netlink family missing); using the userspace implementation"
                    );
                    Ok(userspace())
                }
                Err(e) => Err(BackendError::Config(format!("wireguard: {e}"))),
            },
        }
    }

    /// Make sure one device exists with our key and port; true when it was created.
    async fn ensure_device(&self, k: &dyn Netlink, layout: &DeviceLayout) -> Result<bool, BackendError> {
        let (Some(device), Some(key)) = (&self.device, &self.key) else {
            return Err(BackendError::Config(
                "wireguard: ensure_device before prepare".into(),
            ));
        };
        let name = layout.name;
        let ensured = device.ensure_link(k, name, self.mtu).await.map_err(wg_err)?;
        let info = device.get(name).await.map_err(wg_err)?;
        let configured = info
            .as_ref()
            .is_some_and(|i| i.private_key.as_ref() == Some(key) && i.listen_port == layout.listen_port);
        if !configured {
            let update = DeviceUpdate {
                private_key: Some(Some(key.clone())),
                listen_port: Some(layout.listen_port),
                ..DeviceUpdate::default()
            };
            device.set(name, &update).await.map_err(wg_err)?;
            tracing::info!(device = %name, listen_port = layout.listen_port, public_key = %key.public_key(),
                "configured WireGuard device key and port");
        }
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.iter_mut().find(|(n, _)| n == name) {
            slot.1 = ensured.link.index;
        }
        Ok(ensured.created)
    }

    async fn ensure_all(&self, k: &dyn Netlink) -> Result<bool, BackendError> {
        let mut created = false;
        for layout in &self.layouts {
            created |= self.ensure_device(k, layout).await?;
        }
        Ok(created)
    }

    /// Addresses `<subnet network>/32` (`/128`) on the devices, stale ones removed, devices up.
    async fn configure_devices(&self, k: &dyn Netlink, own: &Lease) -> Result<(), BackendError> {
        let addrs = k
            .addrs()
            .await
            .map_err(kernel_err("listing addresses of the WireGuard devices".into()))?;
        for layout in &self.layouts {
            let name = layout.name;
            let index = self.slot_index(name);
            // Every subnet first: a lease that lacks one changes nothing on the device.
            let mut wanted = Vec::new();
            if layout.v4 {
                let subnet = own.subnet.ok_or_else(|| {
                    BackendError::Config(format!(
                        "configuring {name}: IPv4 is enabled but the lease has no IPv4 subnet"
                    ))
                })?;
                wanted.push((IpNet::V4(subnet), self.network_v4));
            }
            if layout.v6 {
                let subnet = own.ipv6_subnet.ok_or_else(|| {
                    BackendError::Config(format!(
                        "configuring {name}: IPv6 is enabled but the lease has no IPv6 subnet"
                    ))
                })?;
                wanted.push((IpNet::V6(subnet), self.network_v6));
            }
            for (subnet, network) in wanted {
                ensure_device_address(k, name, index, &addrs, subnet, network).await?;
            }
            ensure_device_up(k, name, &format!("WireGuard device {name}")).await?;
        }
        Ok(())
    }

    fn peer_context(&self) -> PeerContext {
        PeerContext {
            mode: self.cfg.mode,
            devices: self
                .layouts
                .iter()
                .map(|l| (l.clone(), self.slot_index(l.name)))
                .collect(),
            own_v4: self.ext.ext_addr,
            own_v6: self.ext.ext_v6_addr,
            psk: self.psk,
            keepalive: u16::try_from(self.cfg.persistent_keepalive).unwrap_or(u16::MAX),
        }
    }
}

#[async_trait::async_trait]
impl Backend for WireguardBackend {
    fn kind(&self) -> &'static str {
        "wireguard"
    }

    async fn prepare(&mut self, k: &dyn Netlink) -> Result<LeaseAttrs, BackendError> {
        let key =
            key::load_or_create(&self.paths.key_file).map_err(|e| BackendError::Config(e.to_string()))?;
        let public = key.public_key();
        self.key = Some(key);
        if self.device.is_none() {
            self.device = Some(self.choose_device().await?);
        }
        let device = self.device.clone().expect("device chosen above");
        tracing::info!(implementation = %device.implementation(), public_key = %public, "WireGuard backend");
        self.ensure_all(k).await?;
        self.table = Some(Arc::new(WgPeerTable::new(
            device,
            self.slots.clone(),
            self.networks(),
            self.metrics.clone(),
        )));
        Ok(self.lease_attrs_for(&public))
    }

    async fn configure(&mut self, k: &dyn Netlink, own: &Lease) -> Result<u32, BackendError> {
        self.configure_devices(k, own).await?;
        Ok(self.mtu)
    }

    async fn ensure_devices(&mut self, k: &dyn Netlink, own: &Lease) -> Result<bool, BackendError> {
        let created = self.ensure_all(k).await?;
        self.configure_devices(k, own).await?;
        Ok(created)
    }

    fn entries_for(&self, remote: &Lease, _underlay: &Underlay) -> Vec<Entry> {
        if self.warn.other_type(remote, self.kind()) {
            return Vec::new();
        }
        match layout::peers_for(remote, &self.peer_context()) {
            Ok(peers) => peers
                .into_iter()
                .map(|p| Entry::Peer(PeerEntry::Wireguard(p)))
                .collect(),
            Err(reason) => {
                let subnet = remote.key();
                if self.warn.first(format!("{subnet} {reason}")) {
                    tracing::warn!(subnet = %subnet, reason = %reason, "skipping remote lease");
                }
                Vec::new()
            }
        }
    }

    fn own_entries(&self, _own: &Lease) -> Vec<Entry> {
        let mut out = Vec::new();
        for l in &self.layouts {
            let index = self.slot_index(l.name);
            if index == 0 {
                continue;
            }
            if l.v4
                && let Some(net) = self.network_v4
            {
                out.push(Entry::Route(Route {
                    scope: RT_SCOPE_LINK,
                    ..Route::unicast(net.trunc(), None, Some(index))
                }));
            }
            // IPv6 has no route scopes: the kernel reports every IPv6 route as scope universe.
            if l.v6
                && let Some(net) = self.network_v6
            {
                out.push(Entry::Route(Route::unicast(net.trunc(), None, Some(index))));
            }
        }
        out
    }

    fn ownership(&self, own: &Lease) -> Ownership {
        let devices: Vec<u32> = self
            .layouts
            .iter()
            .map(|l| self.slot_index(l.name))
            .filter(|i| *i > 0)
            .collect();
        Ownership {
            route_oifs: devices.clone(),
            devices,
            networks: self.networks(),
            exclude: own_subnets(own),
            ..Ownership::default()
        }
    }

    fn device_names(&self) -> Vec<String> {
        self.layouts.iter().map(|l| l.name.to_string()).collect()
    }

    fn peer_table(&self) -> Option<Arc<dyn PeerTable>> {
        self.table.clone().map(|t| t as Arc<dyn PeerTable>)
    }

    fn metrics(&self) -> Option<Arc<dyn DataPathMetrics>> {
        Some(self.metrics.clone() as Arc<dyn DataPathMetrics>)
    }
}
