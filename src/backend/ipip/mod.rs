//! The ipip backend (spec 9.4, IPv4 only): keeps the tunnel device `flannel.ipip` (type ipip,
//! local = the external interface's address, remote any, ttl inherit, pmtudisc off, MTU = external
//! MTU - 20, address `<subnet network>/32`, up), publishes `{"BackendType":"ipip"}` with the public
//! IP, and says per remote lease which route it needs: `<subnet> via <PublicIP> dev flannel.ipip
//! onlink`, or with DirectRouting and a peer on a connected subnet `<subnet> via <PublicIP> dev
//! <ext> onlink`. It never programs per-lease routes itself: the reconciler does, and it also puts
//! back a deleted route or a deleted `flannel.ipip` (upstream checks routes every 10 s and never
//! recreates the device). The device stays in place at shutdown (spec 11.3).
//!
//! Filtering of IPIP from non-peers (our `PeerFilter` option) is the traffic manager's job
//! (`traffic::ipip_filter`); this module only says which address the tunnel listens on.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};

use crate::backend::device_addr::{ensure_device_address, ensure_device_up, kernel_err};
use crate::backend::{
    Backend, BackendError, Entry, ExternalInterface, Ownership, Underlay, WarnOnce, own_subnets,
};
use crate::kernel::{IpipSpec, Link, Netlink, Route};
use crate::lease::{Lease, LeaseAttrs};
use crate::netconf::{IpipConfig, NetConf};

#[cfg(test)]
mod tests;

/// The tunnel device's name (upstream's).
pub const DEVICE: &str = "flannel.ipip";
/// The outer IPv4 header.
const IPIP_OVERHEAD: u32 = 20;
/// The smallest IPv4 MTU.
const MIN_MTU: u32 = 68;

/// The route one remote lease needs (pure): `<subnet> via <public_ip> dev #<oif> onlink`, main
/// table, protocol 70. `oif` is `flannel.ipip`, or the external interface with DirectRouting.
pub fn peer_route(subnet: Ipv4Net, public_ip: Ipv4Addr, oif: u32) -> Entry {
    Entry::Route(Route {
        onlink: true,
        ..Route::unicast(IpNet::V4(subnet.trunc()), Some(IpAddr::V4(public_ip)), Some(oif))
    })
}

/// Whether an existing link can serve as `flannel.ipip` with tunnel address `local`: `Err` when
/// it is not an ipip device at all (upstream refuses to touch it), else the reasons to recreate
/// it (upstream's list: another local address, a remote other than any). Empty: adopt it.
pub fn incompatibilities(existing: &Link, local: Ipv4Addr) -> Result<Vec<String>, BackendError> {
    if existing.kind.as_deref() != Some("ipip") {
        return Err(BackendError::Config(format!(
            "{DEVICE} isn't an ipip mode device, please remove device and try again (it is of type {})",
            existing.kind.as_deref().unwrap_or("none")
        )));
    }
    let info = existing.ipip.clone().unwrap_or_default();
    let mut why = Vec::new();
    if info.local != Some(local) {
        let has = info
            .local
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "any".into());
        why.push(format!("local address is {has}, want {local}"));
    }
    if let Some(remote) = info.remote {
        why.push(format!("remote address is {remote}, want any"));
    }
    Ok(why)
}

/// The ipip backend.
pub struct IpipBackend {
    cfg: IpipConfig,
    ext: ExternalInterface,
    /// The tunnel's local address: the external interface's own address (not `--public-ip`).
    local: Ipv4Addr,
    /// Device MTU: the external interface's - 20.
    mtu: u32,
    /// `flannel.ipip`'s index; 0 until the device exists.
    index: u32,
    network: Option<Ipv4Net>,
    warn: WarnOnce,
}

impl IpipBackend {
    pub fn new(
        cfg: &IpipConfig,
        ext: &ExternalInterface,
        conf: &NetConf,
    ) -> Result<IpipBackend, BackendError> {
        if !conf.enable_ipv4 {
            return Err(BackendError::Config(
                "ipip: the ipip backend carries IPv4 only, but EnableIPv4 is off".into(),
            ));
        }
        let local = ext.iface_addr.ok_or_else(|| {
            BackendError::Config(format!(
                "ipip: the external interface {} has no IPv4 address for the tunnel",
                ext.name
            ))
        })?;
        let mtu = ext
            .mtu
            .checked_sub(IPIP_OVERHEAD)
            .filter(|m| *m >= MIN_MTU)
            .ok_or_else(|| {
                BackendError::Config(format!(
                    "ipip: MTU {} of iface {} is too small for ipip mode to work",
                    ext.mtu, ext.name
                ))
            })?;
        if conf.enable_ipv6 {
            tracing::warn!("ipip carries IPv4 only: IPv6 subnets of the leases get no routes");
        }
        tracing::info!(
            direct_routing = cfg.direct_routing,
            peer_filter = cfg.peer_filter,
            local = %local,
            mtu,
            "IPIP config"
        );
        Ok(IpipBackend {
            cfg: cfg.clone(),
            ext: ext.clone(),
            local,
            mtu,
            index: 0,
            network: conf.network,
            warn: WarnOnce::default(),
        })
    }

    /// The address the tunnel receives on (the traffic manager's peer filter matches it).
    pub fn tunnel_local(&self) -> Ipv4Addr {
        self.local
    }

    /// `flannel.ipip`'s MTU: the external interface's - 20.
    pub fn device_mtu(&self) -> u32 {
        self.mtu
    }

    /// The lease attributes this node publishes (what `prepare` returns).
    pub fn lease_attrs(&self) -> LeaseAttrs {
        LeaseAttrs {
            backend_type: "ipip".into(),
            public_ip: self.ext.ext_addr.unwrap_or(Ipv4Addr::UNSPECIFIED),
            ..LeaseAttrs::default()
        }
    }

    /// The read-only half of `prepare` (for doctor): finds `flannel.ipip` among `links` and takes
    /// its index when the daemon would adopt it as it is, so that `entries_for` and `ownership`
    /// are exactly the daemon's. Returns the link, whatever its state.
    pub fn observe(&mut self, links: &[Link]) -> Option<Link> {
        let link = links.iter().find(|l| l.name == DEVICE).cloned();
        let usable = link
            .as_ref()
            .is_some_and(|l| incompatibilities(l, self.local).is_ok_and(|why| why.is_empty()));
        self.index = link.as_ref().filter(|_| usable).map_or(0, |l| l.index);
        link
    }

    /// Adopt a compatible `flannel.ipip` (fixing its MTU) or (re)create it; true when created.
    async fn ensure_device(&mut self, k: &dyn Netlink) -> Result<bool, BackendError> {
        let existing = k
            .link_by_name(DEVICE)
            .await
            .map_err(kernel_err(format!("looking up ipip device {DEVICE}")))?;
        if let Some(link) = existing {
            let why = incompatibilities(&link, self.local)?;
            if why.is_empty() {
                self.index = link.index;
                if link.mtu != self.mtu {
                    tracing::info!(
                        device = DEVICE,
                        current = link.mtu,
                        wanted = self.mtu,
                        "current MTU of flannel.ipip differs; setting it"
                    );
                    k.set_link_mtu(link.index, self.mtu)
                        .await
                        .map_err(kernel_err(format!("setting the MTU of {DEVICE} to {}", self.mtu)))?;
                }
                return Ok(false);
            }
            tracing::warn!(device = DEVICE, reasons = %why.join("; "),
                "ipip device exists with an incompatible configuration; recreating it");
            match k.delete_link(link.index).await {
                Err(e) if !e.is_not_found() => {
                    return Err(kernel_err(format!("deleting incompatible ipip device {DEVICE}"))(
                        e,
                    ));
                }
                _ => {}
            }
        }
        let spec = IpipSpec {
            name: DEVICE.into(),
            local: self.local,
            mtu: self.mtu,
        };
        let link = k.create_ipip(&spec).await.map_err(kernel_err(format!(
            "creating ipip device {DEVICE} (local {}, mtu {})",
            self.local, self.mtu
        )))?;
        tracing::info!(device = DEVICE, index = link.index, local = %self.local, mtu = link.mtu, "created ipip device");
        self.index = link.index;
        if link.mtu != self.mtu {
            k.set_link_mtu(link.index, self.mtu)
                .await
                .map_err(kernel_err(format!("setting the MTU of {DEVICE} to {}", self.mtu)))?;
        }
        Ok(true)
    }

    /// `<subnet network>/32` on the device (other addresses inside Network removed), device up.
    /// Changes nothing when all is already so.
    async fn configure_device(&self, k: &dyn Netlink, own: &Lease) -> Result<(), BackendError> {
        let subnet = own.subnet.ok_or_else(|| {
            BackendError::Config(format!(
                "configuring ipip device {DEVICE}: IPv4 is enabled but the lease has no IPv4 subnet"
            ))
        })?;
        let addrs = k
            .addrs()
            .await
            .map_err(kernel_err(format!("listing addresses of {DEVICE}")))?;
        let network = self.network.map(IpNet::V4);
        ensure_device_address(k, DEVICE, self.index, &addrs, IpNet::V4(subnet), network).await?;
        ensure_device_up(k, DEVICE, &format!("ipip device {DEVICE}")).await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Backend for IpipBackend {
    fn kind(&self) -> &'static str {
        "ipip"
    }

    async fn prepare(&mut self, k: &dyn Netlink) -> Result<LeaseAttrs, BackendError> {
        self.ensure_device(k).await?;
        Ok(self.lease_attrs())
    }

    async fn configure(&mut self, k: &dyn Netlink, own: &Lease) -> Result<u32, BackendError> {
        self.configure_device(k, own).await?;
        Ok(self.mtu)
    }

    async fn ensure_devices(&mut self, k: &dyn Netlink, own: &Lease) -> Result<bool, BackendError> {
        let created = self.ensure_device(k).await?;
        self.configure_device(k, own).await?;
        Ok(created)
    }

    fn entries_for(&self, remote: &Lease, underlay: &Underlay) -> Vec<Entry> {
        if self.index == 0 || self.warn.other_type(remote, self.kind()) {
            return Vec::new();
        }
        let Some(subnet) = remote
            .subnet
            .filter(|_| remote.enable_ipv4 || !remote.enable_ipv6)
        else {
            return Vec::new();
        };
        let public_ip = remote.attrs.public_ip;
        if public_ip.is_unspecified() {
            if self.warn.first(format!("{} no public ip", remote.key())) {
                tracing::warn!(subnet = %subnet, "skipping remote lease without a public IP");
            }
            return Vec::new();
        }
        let direct = self.cfg.direct_routing && underlay.is_direct(IpAddr::V4(public_ip));
        let oif = if direct { self.ext.index } else { self.index };
        vec![peer_route(subnet, public_ip, oif)]
    }

    fn ownership(&self, own: &Lease) -> Ownership {
        let devices: Vec<u32> = Some(self.index).filter(|i| *i > 0).into_iter().collect();
        let mut route_oifs = devices.clone();
        route_oifs.push(self.ext.index);
        Ownership {
            devices,
            networks: self.network.map(IpNet::V4).into_iter().collect(),
            route_oifs,
            exclude: own_subnets(own),
            ..Ownership::default()
        }
    }

    fn device_names(&self) -> Vec<String> {
        vec![DEVICE.to_string()]
    }
}
