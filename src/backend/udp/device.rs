//! The udp backend's TUN device `flannel0`: attaching the worker queues (creating the device, or
//! re-attaching to the one a previous run left), making it persistent, enabling offloads, and
//! giving it the own lease's address, the MTU and the up flag through the kernel seam. Spec:
//! flanneld-behaviour.md 9.3 (IFF_TUN|IFF_NO_PI, `<subnet network address>/32`, MTU ext-28, up).

use std::path::Path;

use ipnet::{IpNet, Ipv4Net};

use crate::backend::BackendError;
use crate::backend::device_addr::{device_link, ensure_device_address, kernel_err, set_up};
use crate::backend::tun::{
    self, QueueOptions, TUN_F_CSUM, TUN_F_TSO4, TUN_F_USO4, TUN_F_USO6, TunError, TunQueue,
};
use crate::kernel::Netlink;

pub const DEVICE: &str = "flannel0";

fn tun_err(e: TunError) -> BackendError {
    BackendError::Config(format!("udp: {e}"))
}

/// Queues attached to `flannel0` and what they support.
pub struct Attached {
    pub queues: Vec<TunQueue>,
    pub index: u32,
    pub vnet_hdr: bool,
}

/// Attach `count` queues to `flannel0` (creating it, persistent), with offloads when the kernel
/// has them. A link of that name that cannot take our queues (not a TUN, a TUN of other flags)
/// is deleted and the device created anew; that happens only when an operator or another program
/// made it, since ours always match.
pub async fn attach(k: &dyn Netlink, count: usize) -> Result<Attached, BackendError> {
    let mut deleted = false;
    let (queues, vnet_hdr) = loop {
        match open(count) {
            Ok(q) => break q,
            Err(e) if !deleted && matches!(e.errno(), Some(libc::EINVAL) | Some(libc::EBUSY)) => {
                let existing = k
                    .link_by_name(DEVICE)
                    .await
                    .map_err(kernel_err(format!("looking up {DEVICE}")))?;
                let Some(link) = existing else {
                    return Err(tun_err(e));
                };
                tracing::warn!(device = DEVICE, kind = ?link.kind, error = %e,
                    "a link named flannel0 exists that cannot serve as the udp backend's multi-queue TUN device; recreating it");
                k.delete_link(link.index)
                    .await
                    .map_err(kernel_err(format!("deleting the incompatible link {DEVICE}")))?;
                deleted = true;
            }
            Err(e) => return Err(tun_err(e)),
        }
    };
    queues[0].set_persist(true).map_err(tun_err)?;
    let link = k
        .link_by_name(DEVICE)
        .await
        .map_err(kernel_err(format!("looking up {DEVICE}")))?
        .ok_or_else(|| BackendError::Config(format!("udp: {DEVICE} vanished right after it was attached")))?;
    Ok(Attached {
        queues,
        index: link.index,
        vnet_hdr,
    })
}

/// Open the queues with IFF_VNET_HDR and TSO (plus USO where the kernel has it); without them
/// when the kernel refuses. Returns the queues and whether they carry virtio-net headers.
fn open(count: usize) -> Result<(Vec<TunQueue>, bool), TunError> {
    let with_offload = tun::open_queues(DEVICE, count, QueueOptions { vnet_hdr: true }).and_then(|qs| {
        let base = TUN_F_CSUM | TUN_F_TSO4;
        for q in &qs {
            if q.set_offload(base | TUN_F_USO4 | TUN_F_USO6).is_err() {
                q.set_offload(base)?;
            }
        }
        Ok(qs)
    });
    match with_offload {
        Ok(qs) => Ok((qs, true)),
        // EINVAL here also means "exists with other flags": let the caller decide.
        Err(e) if e.errno() == Some(libc::EINVAL) => {
            match tun::open_queues(DEVICE, count, QueueOptions { vnet_hdr: false }) {
                Ok(qs) => {
                    tracing::warn!(error = %e, "udp: TUN offloads unavailable; running without them (slower)");
                    Ok((qs, false))
                }
                Err(_) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Give `flannel0` (index `index`) the own subnet's network address as /32 (removing other
/// addresses inside `network`), the MTU, and the up flag. Changes nothing that is already right.
pub async fn configure(
    k: &dyn Netlink,
    index: u32,
    subnet: Ipv4Net,
    network: Ipv4Net,
    mtu: u32,
) -> Result<(), BackendError> {
    let addrs = k
        .addrs()
        .await
        .map_err(kernel_err(format!("listing addresses of {DEVICE}")))?;
    let (own, cluster) = (IpNet::V4(subnet), Some(IpNet::V4(network)));
    ensure_device_address(k, DEVICE, index, &addrs, own, cluster).await?;
    let link = device_link(k, DEVICE, &format!("udp TUN device {DEVICE}")).await?;
    if link.mtu != mtu {
        k.set_link_mtu(index, mtu)
            .await
            .map_err(kernel_err(format!("setting the MTU of {DEVICE} to {mtu}")))?;
    }
    set_up(k, &link, DEVICE).await
}

/// The udp backend carries IPv4 only: keep the kernel from sending IPv6 (router solicitations,
/// MLD) into the device (errors ignored: IPv6 may be off altogether).
pub fn disable_ipv6(sysctl_root: Option<&Path>) {
    let Some(root) = sysctl_root else { return };
    let path = root.join("net/ipv6/conf").join(DEVICE).join("disable_ipv6");
    if let Err(e) = std::fs::write(&path, "1") {
        tracing::debug!(path = %path.display(), error = %e, "could not disable IPv6 on flannel0 (ignored)");
    }
}
