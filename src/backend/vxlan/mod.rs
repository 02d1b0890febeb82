//! The vxlan backend (spec 9.1, quirks 6 and 15): prepares `flannel.<VNI>` (and `flannel-v6.<VNI>`
//! when IPv6 is enabled; both are instances of `device::Device`), publishes
//! `{"VNI":<vni>,"VtepMAC":"<mac>"}`, and says per remote lease which permanent neighbour, FDB
//! entry and onlink route it needs (or, with DirectRouting and a peer on a connected subnet, one
//! route via the peer's public IP). It never programs per-lease entries itself: that is the
//! reconciler's job. Devices stay in place at shutdown (spec 11.3).
//!
//! Deviation from upstream (quirk 15): a device that vanishes or turns incompatible is recreated
//! with the SAME MAC, and the reconciler replays every entry on it.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnet::IpNet;

use crate::backend::{
    Backend, BackendError, Entry, ExternalInterface, Ownership, Underlay, WarnOnce, own_subnets,
};
use crate::kernel::{Fdb, MacAddr, NUD_PERMANENT, Neigh, Netlink, Route};
use crate::lease::{Lease, LeaseAttrs, parse_vxlan_backend_data, vxlan_backend_data};
use crate::netconf::{NetConf, VxlanConfig};

pub mod device;
pub mod observe;
#[cfg(test)]
mod tests;

pub use crate::backend::device_addr::Family;
use device::Device;
pub use device::{incompatibilities, random_mac};

/// VXLAN encapsulation overhead the device MTU leaves below the configured MTU (also for IPv6, as
/// upstream).
const VXLAN_OVERHEAD: u32 = 50;
/// The smallest IPv4 MTU.
const MIN_MTU: u32 = 68;

/// The entries one remote lease needs on one device (pure).
///
/// - `direct`: `<subnet> via <public_ip> dev <ext>`.
/// - otherwise: neighbour `<subnet network> lladdr <mac> nud permanent dev <dev>`, FDB
///   `<mac> dst <public_ip> self permanent dev <dev>`, and
///   `<subnet> via <subnet network> dev <dev> onlink`; all routes main table, protocol boot, scope
///   universe (spec 9.1, quirk 6).
pub fn peer_entries(
    dev_index: u32,
    ext_index: u32,
    subnet: IpNet,
    vtep_mac: MacAddr,
    public_ip: IpAddr,
    direct: bool,
) -> Vec<Entry> {
    let dst = subnet.trunc();
    if direct {
        return vec![Entry::Route(Route::unicast(
            dst,
            Some(public_ip),
            Some(ext_index),
        ))];
    }
    let gateway = subnet.network();
    vec![
        Entry::Neigh(Neigh {
            index: dev_index,
            ip: gateway,
            mac: Some(vtep_mac),
            state: NUD_PERMANENT,
        }),
        Entry::Fdb(Fdb {
            index: dev_index,
            mac: vtep_mac,
            dst: Some(public_ip),
            self_flag: true,
            permanent: true,
        }),
        Entry::Route(Route {
            onlink: true,
            ..Route::unicast(dst, Some(gateway), Some(dev_index))
        }),
    ]
}

/// The VTEP MACs kept from an earlier run (kube `backend-data` / `backend-v6-data` annotations),
/// per device; a device that has to be created gets its stored MAC, so peers' neighbour and FDB
/// entries stay valid across a restart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredMacs {
    pub v4: Option<MacAddr>,
    pub v6: Option<MacAddr>,
}

/// The IPv4 device's MAC only (what callers that know no IPv6 MAC pass, including `None`).
impl From<Option<MacAddr>> for StoredMacs {
    fn from(v4: Option<MacAddr>) -> StoredMacs {
        StoredMacs { v4, v6: None }
    }
}

/// `(IPv4 device, IPv6 device)`, as `SubnetManager::stored_vtep_macs` returns them.
impl From<(Option<MacAddr>, Option<MacAddr>)> for StoredMacs {
    fn from((v4, v6): (Option<MacAddr>, Option<MacAddr>)) -> StoredMacs {
        StoredMacs { v4, v6 }
    }
}

/// The vxlan backend.
pub struct VxlanBackend {
    cfg: VxlanConfig,
    ext: ExternalInterface,
    /// Device MTU: (configured MTU, else the external interface's) - 50.
    mtu: u32,
    v4: Option<Device>,
    v6: Option<Device>,
    sysctl_root: Option<PathBuf>,
    warn: WarnOnce,
}

impl VxlanBackend {
    /// `stored_macs` are the devices' MACs from an earlier run (kube annotations); each is used
    /// when its device has to be created (an adopted device keeps its own MAC).
    pub fn new(
        cfg: &VxlanConfig,
        ext: &ExternalInterface,
        netconf: &NetConf,
        stored_macs: impl Into<StoredMacs>,
    ) -> Result<VxlanBackend, BackendError> {
        let stored = stored_macs.into();
        let base = if cfg.mtu > 0 { cfg.mtu } else { ext.mtu };
        let mtu = base.checked_sub(VXLAN_OVERHEAD).filter(|m| *m >= MIN_MTU).ok_or_else(|| {
            BackendError::Config(format!(
                "vxlan: MTU {base} (of {}) leaves no room for the {VXLAN_OVERHEAD} bytes of VXLAN overhead",
                if cfg.mtu > 0 { "the Backend MTU setting".to_string() } else { format!("interface {}", ext.name) }
            ))
        })?;
        let v4 = if netconf.enable_ipv4 {
            let local = ext.ext_addr.ok_or_else(|| {
                BackendError::Config(format!(
                    "vxlan: IPv4 is enabled but the external interface {} has no IPv4 address",
                    ext.name
                ))
            })?;
            Some(Device {
                family: Family::V4,
                name: format!("flannel.{}", cfg.vni),
                local: IpAddr::V4(local),
                mac: stored.v4.unwrap_or_else(random_mac),
                index: 0,
                network: netconf.network.map(IpNet::V4),
            })
        } else {
            None
        };
        let v6 = if netconf.enable_ipv6 {
            let local = ext.ext_v6_addr.ok_or_else(|| {
                BackendError::Config(format!(
                    "vxlan: IPv6 is enabled but the external interface {} has no IPv6 address",
                    ext.name
                ))
            })?;
            Some(Device {
                family: Family::V6,
                name: format!("flannel-v6.{}", cfg.vni),
                local: IpAddr::V6(local),
                mac: stored.v6.unwrap_or_else(random_mac),
                index: 0,
                network: netconf.ipv6_network.map(IpNet::V6),
            })
        } else {
            None
        };
        tracing::info!(
            vni = cfg.vni,
            port = cfg.port,
            gbp = cfg.gbp,
            learning = cfg.learning,
            direct_routing = cfg.direct_routing,
            mtu,
            "VXLAN config"
        );
        Ok(VxlanBackend {
            cfg: cfg.clone(),
            ext: ext.clone(),
            mtu,
            v4,
            v6,
            sysctl_root: Some(PathBuf::from("/proc/sys")),
            warn: WarnOnce::default(),
        })
    }

    /// Where `net/ipv6/conf/<dev>/accept_ra` is written (`/proc/sys`); `None` writes nothing
    /// (unit tests with the fake kernel must not touch the host's sysctls).
    pub fn with_sysctl_root(mut self, root: Option<PathBuf>) -> VxlanBackend {
        self.sysctl_root = root;
        self
    }

    /// The VTEP MAC of the IPv4 (resp. IPv6) device, e.g. to store it in a node annotation.
    pub fn vtep_mac(&self, family: Family) -> Option<MacAddr> {
        self.device(family).map(|d| d.mac)
    }

    /// The attributes this node publishes: type `vxlan`, the public IP(s) and per device
    /// `{"VNI":<vni>,"VtepMAC":"<mac>"}` (spec 9.1). Devices' MACs as prepared (or observed).
    pub fn lease_attrs(&self) -> LeaseAttrs {
        let vni = self.cfg.vni;
        let mut attrs = LeaseAttrs {
            backend_type: "vxlan".into(),
            ..LeaseAttrs::default()
        };
        if let Some(dev) = &self.v4 {
            attrs.public_ip = self.ext.ext_addr.unwrap_or(Ipv4Addr::UNSPECIFIED);
            attrs.backend_data = Some(vxlan_backend_data(vni, &dev.mac));
        }
        if let Some(dev) = &self.v6 {
            attrs.public_ipv6 = self.ext.ext_v6_addr;
            attrs.backend_v6_data = Some(vxlan_backend_data(vni, &dev.mac));
        }
        attrs
    }

    fn device(&self, family: Family) -> Option<&Device> {
        match family {
            Family::V4 => self.v4.as_ref(),
            Family::V6 => self.v6.as_ref(),
        }
    }

    fn devices(&self) -> impl Iterator<Item = &Device> {
        self.v4.iter().chain(self.v6.iter())
    }

    async fn ensure_device(
        &mut self,
        k: &dyn Netlink,
        family: Family,
        adopt_mac: bool,
    ) -> Result<bool, BackendError> {
        let (vni, port, learning, gbp) = (self.cfg.vni, self.cfg.port, self.cfg.learning, self.cfg.gbp);
        let (ext_index, mtu) = (self.ext.index, self.mtu);
        let sysctl_root = self.sysctl_root.clone();
        let dev = match family {
            Family::V4 => self.v4.as_mut(),
            Family::V6 => self.v6.as_mut(),
        };
        let Some(dev) = dev else { return Ok(false) };
        let spec = dev.spec(vni, port, learning, gbp, ext_index, mtu);
        let created = dev.ensure(k, spec, adopt_mac).await?;
        dev.disable_accept_ra(sysctl_root.as_deref());
        Ok(created)
    }

    async fn configure_devices(&self, k: &dyn Netlink, own: &Lease) -> Result<(), BackendError> {
        // One address dump for all devices, taken when the first one is configured.
        let mut addrs = None;
        for dev in self.devices() {
            let subnet = match dev.family {
                Family::V4 => own.subnet.map(IpNet::V4),
                Family::V6 => own.ipv6_subnet.map(IpNet::V6),
            };
            let subnet = subnet.ok_or_else(|| {
                BackendError::Config(format!(
                    "configuring vxlan device {}: IPv{v} is enabled but the lease has no IPv{v} subnet",
                    dev.name,
                    v = dev.family.version(),
                ))
            })?;
            let addrs = match &mut addrs {
                Some(addrs) => addrs,
                None => addrs.insert(k.addrs().await.map_err(crate::backend::device_addr::kernel_err(
                    format!("listing addresses of {}", self.device_names().join(", ")),
                ))?),
            };
            dev.configure(k, subnet, addrs).await?;
        }
        Ok(())
    }

    /// The entries for one family of a remote lease, or a warning (once) why there are none.
    fn family_entries(&self, remote: &Lease, family: Family, underlay: &Underlay) -> Vec<Entry> {
        let Some(dev) = self.device(family).filter(|d| d.index > 0) else {
            return Vec::new();
        };
        let (subnet, data, public_ip, wanted) = match family {
            Family::V4 => (
                remote.subnet.map(IpNet::V4),
                remote.attrs.backend_data.as_deref(),
                Some(IpAddr::V4(remote.attrs.public_ip)).filter(|ip| !ip.is_unspecified()),
                remote.enable_ipv4 || !remote.enable_ipv6,
            ),
            Family::V6 => (
                remote.ipv6_subnet.map(IpNet::V6),
                remote.attrs.backend_v6_data.as_deref(),
                remote.attrs.public_ipv6.map(IpAddr::V6),
                remote.enable_ipv6 || !remote.enable_ipv4,
            ),
        };
        let Some(subnet) = subnet.filter(|_| wanted) else {
            return Vec::new();
        };
        let skip = |reason: String| {
            if self.warn.first(format!("{subnet} {reason}")) {
                tracing::warn!(subnet = %subnet, device = %dev.name, reason = %reason, "skipping remote lease");
            }
            Vec::new()
        };
        let Some(data) = data else {
            return skip("the lease has no vxlan backend data".into());
        };
        let mac = match parse_vxlan_backend_data(data) {
            Ok((_, mac)) => mac,
            Err(e) => return skip(e.to_string()),
        };
        let Some(public_ip) = public_ip else {
            return skip("the lease has no public IP".into());
        };
        let direct = self.cfg.direct_routing && underlay.is_direct(public_ip);
        peer_entries(dev.index, self.ext.index, subnet, mac, public_ip, direct)
    }
}

#[async_trait::async_trait]
impl Backend for VxlanBackend {
    fn kind(&self) -> &'static str {
        "vxlan"
    }

    async fn prepare(&mut self, k: &dyn Netlink) -> Result<LeaseAttrs, BackendError> {
        self.ensure_device(k, Family::V4, true).await?;
        self.ensure_device(k, Family::V6, true).await?;
        Ok(self.lease_attrs())
    }

    async fn configure(&mut self, k: &dyn Netlink, own: &Lease) -> Result<u32, BackendError> {
        self.configure_devices(k, own).await?;
        Ok(self.mtu)
    }

    async fn ensure_devices(&mut self, k: &dyn Netlink, own: &Lease) -> Result<bool, BackendError> {
        let mut created = self.ensure_device(k, Family::V4, false).await?;
        created |= self.ensure_device(k, Family::V6, false).await?;
        self.configure_devices(k, own).await?;
        Ok(created)
    }

    fn entries_for(&self, remote: &Lease, underlay: &Underlay) -> Vec<Entry> {
        if self.warn.other_type(remote, self.kind()) {
            return Vec::new();
        }
        let mut out = self.family_entries(remote, Family::V4, underlay);
        out.extend(self.family_entries(remote, Family::V6, underlay));
        out
    }

    fn ownership(&self, own: &Lease) -> Ownership {
        let devices: Vec<u32> = self.devices().map(|d| d.index).filter(|i| *i > 0).collect();
        let mut route_oifs = devices.clone();
        route_oifs.push(self.ext.index);
        Ownership {
            devices,
            networks: self.devices().filter_map(|d| d.network).collect(),
            route_oifs,
            exclude: own_subnets(own),
            ..Ownership::default()
        }
    }

    fn device_names(&self) -> Vec<String> {
        self.devices().map(|d| d.name.clone()).collect()
    }
}
