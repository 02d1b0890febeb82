//! The kernel implementation of the `WireguardDevice` seam: the link over rtnetlink
//! (`Netlink::create_wireguard`), its configuration over generic netlink
//! (`kernel::wireguard::GenlWireguard`). No `wg` binary is involved.

use crate::kernel::Netlink;
use crate::kernel::wireguard::{GenlError, GenlWireguard};

use super::device::{DeviceInfo, DeviceUpdate, EnsuredLink, Implementation, WgError, WireguardDevice};

pub struct KernelWireguard {
    genl: GenlWireguard,
}

impl KernelWireguard {
    /// Connect to the kernel's WireGuard family; `Err(GenlError::Unavailable)` when the kernel
    /// has none.
    pub async fn connect() -> Result<KernelWireguard, GenlError> {
        Ok(KernelWireguard {
            genl: GenlWireguard::connect().await?,
        })
    }
}

#[async_trait::async_trait]
impl WireguardDevice for KernelWireguard {
    fn implementation(&self) -> Implementation {
        Implementation::Kernel
    }

    async fn ensure_link(&self, k: &dyn Netlink, name: &str, mtu: u32) -> Result<EnsuredLink, WgError> {
        let existing = k
            .link_by_name(name)
            .await
            .map_err(WgError::kernel(format!("looking up WireGuard device {name}")))?;
        if let Some(link) = existing {
            if link.kind.as_deref() == Some("wireguard") {
                if link.mtu != mtu {
                    k.set_link_mtu(link.index, mtu)
                        .await
                        .map_err(WgError::kernel(format!("setting the MTU of {name} to {mtu}")))?;
                }
                return Ok(EnsuredLink { link, created: false });
            }
            tracing::warn!(device = %name, kind = ?link.kind, "a link of another kind has the WireGuard device's name; replacing it");
            match k.delete_link(link.index).await {
                Err(e) if !e.is_not_found() => {
                    return Err(WgError::kernel(format!(
                        "deleting link {name} of kind {:?}",
                        link.kind
                    ))(e));
                }
                _ => {}
            }
        }
        let link = k
            .create_wireguard(name, mtu)
            .await
            .map_err(WgError::kernel(format!("creating WireGuard device {name}")))?;
        tracing::info!(device = %name, index = link.index, mtu, "created kernel WireGuard device");
        Ok(EnsuredLink { link, created: true })
    }

    async fn get(&self, name: &str) -> Result<Option<DeviceInfo>, WgError> {
        self.genl
            .get_device(name)
            .await
            .map_err(|e| WgError::device("reading", name, e))
    }

    async fn set(&self, name: &str, update: &DeviceUpdate) -> Result<(), WgError> {
        match self.genl.set_device(name, update).await {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.errno(), Some(libc::ENODEV)) => Err(WgError::NoDevice(name.to_string())),
            Err(e) => Err(WgError::device("configuring", name, e)),
        }
    }
}
