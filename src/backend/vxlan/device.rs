//! One vxlan device (`flannel.<VNI>` for IPv4, `flannel-v6.<VNI>` for IPv6; both are instances of
//! this code): when an existing device can be adopted, creating it, and putting the own lease's
//! address on it. Spec: flanneld-behaviour.md section 9.1 (attributes, compatibility list,
//! address rules).

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

use crate::backend::BackendError;
use crate::backend::device_addr::{ensure_device_address, ensure_device_up, kernel_err};
use crate::kernel::{Addr, Link, MacAddr, Netlink, VxlanSpec};

// The device-address rules live in `backend::device_addr` (shared with ipip, wireguard, udp);
// re-exported here for the code that still names them by this path (`tools::doctor`).
pub use crate::backend::device_addr::{Family, device_address, stale_addresses};

/// The reasons an existing link cannot serve as the wanted vxlan device (empty: adopt it).
/// Upstream's list: link type, VNI, vtep device index (when both set), local address (when both
/// set), group, l2miss, port (when both set), GBP. Learning, MTU and MAC are not compared.
pub fn incompatibilities(existing: &Link, wanted: &VxlanSpec) -> Vec<String> {
    let mut why = Vec::new();
    if existing.kind.as_deref() != Some("vxlan") {
        why.push(format!(
            "link type is {}, want vxlan",
            existing.kind.as_deref().unwrap_or("(none)")
        ));
        return why;
    }
    let Some(info) = &existing.vxlan else {
        why.push("vxlan attributes are missing".to_string());
        return why;
    };
    if info.vni != wanted.vni {
        why.push(format!("VNI is {}, want {}", info.vni, wanted.vni));
    }
    if info.dev_index > 0 && wanted.dev_index > 0 && info.dev_index != wanted.dev_index {
        why.push(format!(
            "vtep device index is {}, want {}",
            info.dev_index, wanted.dev_index
        ));
    }
    match info.local {
        Some(local) if local != wanted.local && !local.is_unspecified() => {
            why.push(format!("local address is {local}, want {}", wanted.local));
        }
        _ => {}
    }
    match info.group {
        Some(group) if !group.is_unspecified() => why.push(format!("group is {group}, want none")),
        _ => {}
    }
    if info.l2miss {
        why.push("l2miss is on, want off".to_string());
    }
    if info.port > 0 && wanted.port > 0 && info.port != wanted.port {
        why.push(format!("port is {}, want {}", info.port, wanted.port));
    }
    if info.gbp != wanted.gbp {
        why.push(format!("GBP is {}, want {}", onoff(info.gbp), onoff(wanted.gbp)));
    }
    why
}

fn onoff(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

/// A random locally administered unicast MAC (first byte `(b & 0xfe) | 0x02`), as upstream.
pub fn random_mac() -> MacAddr {
    let mut b: [u8; 6] = rand::random();
    b[0] = (b[0] & 0xfe) | 0x02;
    MacAddr(b)
}

/// One vxlan device of the backend.
#[derive(Debug, Clone)]
pub struct Device {
    pub family: Family,
    pub name: String,
    /// The local (public) address of the tunnel.
    pub local: IpAddr,
    /// The VTEP MAC: adopted from an existing device, else stored, else random.
    pub mac: MacAddr,
    /// 0 until the device exists.
    pub index: u32,
    /// The cluster network of this family (Network / IPv6Network).
    pub network: Option<IpNet>,
}

impl Device {
    pub fn spec(
        &self,
        vni: u32,
        port: u16,
        learning: bool,
        gbp: bool,
        ext_index: u32,
        mtu: u32,
    ) -> VxlanSpec {
        VxlanSpec {
            name: self.name.clone(),
            vni,
            port,
            local: self.local,
            dev_index: ext_index,
            learning,
            gbp,
            mtu,
            mac: self.mac,
        }
    }

    /// Adopt a compatible device or (re)create it. `adopt_mac`: at start an adopted device keeps
    /// its MAC; later a device with another MAC than ours is recreated (peers know ours).
    /// Returns whether the device was created.
    pub async fn ensure(
        &mut self,
        k: &dyn Netlink,
        spec: VxlanSpec,
        adopt_mac: bool,
    ) -> Result<bool, BackendError> {
        let existing = k
            .link_by_name(&self.name)
            .await
            .map_err(kernel_err(format!("looking up vxlan device {}", self.name)))?;
        if let Some(link) = existing {
            let mut why = incompatibilities(&link, &spec);
            match link.mac {
                Some(mac) if adopt_mac && why.is_empty() => self.mac = mac,
                Some(mac) if mac != self.mac => why.push(format!("MAC address is {mac}, want {}", self.mac)),
                _ => {}
            }
            if why.is_empty() {
                self.index = link.index;
                return Ok(false);
            }
            tracing::warn!(device = %self.name, reasons = %why.join("; "),
                "vxlan device exists with an incompatible configuration; recreating it");
            match k.delete_link(link.index).await {
                Err(e) if !e.is_not_found() => {
                    return Err(kernel_err(format!(
                        "deleting incompatible vxlan device {}",
                        self.name
                    ))(e));
                }
                _ => {}
            }
        }
        let spec = VxlanSpec {
            mac: self.mac,
            ..spec
        };
        let link = k.create_vxlan(&spec).await.map_err(kernel_err(format!(
            "creating vxlan device {} (VNI {}, local {}) on link #{}",
            self.name, spec.vni, spec.local, spec.dev_index
        )))?;
        tracing::info!(device = %self.name, index = link.index, mac = %self.mac, mtu = link.mtu, "created vxlan device");
        self.index = link.index;
        Ok(true)
    }

    /// Put the own subnet's address on the device (removing stale ones), bring it up, and check
    /// that it carries our MAC. Changes nothing when all is already so. `addrs` is the kernel's
    /// address listing (one dump serves every device of the backend).
    pub async fn configure(
        &self,
        k: &dyn Netlink,
        subnet: IpNet,
        addrs: &[Addr],
    ) -> Result<(), BackendError> {
        let name = &self.name;
        ensure_device_address(k, name, self.index, addrs, subnet, self.network).await?;
        let link = ensure_device_up(k, name, &format!("vxlan device {name}")).await?;
        if link.mac != Some(self.mac) {
            let got = link.mac.map(|m| m.to_string()).unwrap_or_else(|| "none".into());
            return Err(BackendError::Config(format!(
                "vxlan device {name} has MAC address {got}, expected {}",
                self.mac
            )));
        }
        Ok(())
    }

    /// `net.ipv6.conf.<dev>.accept_ra = 0` under `sysctl_root` (errors ignored, as upstream).
    pub fn disable_accept_ra(&self, sysctl_root: Option<&Path>) {
        let Some(root) = sysctl_root else { return };
        let path = root.join("net/ipv6/conf").join(&self.name).join("accept_ra");
        if let Err(e) = std::fs::write(&path, "0") {
            tracing::debug!(path = %path.display(), error = %e, "could not disable accept_ra (ignored)");
        }
    }
}
