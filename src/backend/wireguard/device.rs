//! The `WireguardDevice` seam (design.md 4b): one interface for the kernel module (generic
//! netlink), the userspace implementation (TUN + UAPI) and the in-memory fake. Its vocabulary is
//! WireGuard's own configuration model (what `wg set` / `wg show` and the UAPI speak): a device
//! has a private key, a listen port and peers; an update sets some of these and adds, changes or
//! removes peers. Implementations apply what they are told and decide nothing.

use std::net::SocketAddr;
use std::time::SystemTime;

use futures::stream::BoxStream;
use ipnet::IpNet;

use crate::backend::peers::{PresharedKey, WgKey};
use crate::kernel::{KernelError, Link, Netlink};

use super::key::PrivateKey;

#[derive(Debug, Clone, thiserror::Error)]
pub enum WgError {
    #[error("{op} WireGuard device {device}: {message}")]
    Device {
        op: String,
        device: String,
        message: String,
    },
    #[error("{step}: {source}")]
    Kernel { step: String, source: KernelError },
    #[error("WireGuard device {0} does not exist")]
    NoDevice(String),
}

impl WgError {
    pub fn device(
        op: impl Into<String>,
        device: impl Into<String>,
        message: impl std::fmt::Display,
    ) -> WgError {
        WgError::Device {
            op: op.into(),
            device: device.into(),
            message: message.to_string(),
        }
    }

    /// A kernel error at `step` (which names the object), for `map_err`.
    pub fn kernel(step: String) -> impl FnOnce(KernelError) -> WgError {
        move |source| WgError::Kernel { step, source }
    }
}

/// A peer as a device reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerInfo {
    pub public_key: WgKey,
    pub preshared_key: Option<PresharedKey>,
    pub endpoint: Option<SocketAddr>,
    /// Seconds; 0 = off.
    pub persistent_keepalive: u16,
    pub allowed_ips: Vec<IpNet>,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// A device's configuration and peers as it reports them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceInfo {
    pub name: String,
    pub index: u32,
    pub private_key: Option<PrivateKey>,
    pub listen_port: u16,
    pub fwmark: u32,
    pub peers: Vec<PeerInfo>,
}

/// A change of one peer (WGPEER_A_* / the UAPI's peer keys).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerUpdate {
    pub public_key: WgKey,
    /// Remove the peer (`remove=true`); the other fields are then ignored.
    pub remove: bool,
    /// Only change an existing peer, never create one (`update_only=true`).
    pub update_only: bool,
    /// `Some(None)` clears the PSK (the all-zero key); `None` leaves it.
    pub preshared_key: Option<Option<PresharedKey>>,
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: Option<u16>,
    /// Replace the allowed IPs with `allowed_ips` instead of adding to them.
    pub replace_allowed_ips: bool,
    pub allowed_ips: Vec<IpNet>,
}

/// A change of a device (WGDEVICE_A_* / the UAPI's `set=1`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceUpdate {
    /// `Some(None)` removes the private key.
    pub private_key: Option<Option<PrivateKey>>,
    pub listen_port: Option<u16>,
    pub fwmark: Option<u32>,
    /// Remove every peer not named in `peers` first.
    pub replace_peers: bool,
    pub peers: Vec<PeerUpdate>,
}

impl DeviceUpdate {
    pub fn is_empty(&self) -> bool {
        self.private_key.is_none()
            && self.listen_port.is_none()
            && self.fwmark.is_none()
            && !self.replace_peers
            && self.peers.is_empty()
    }
}

/// The link of a device after `ensure_link`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnsuredLink {
    pub link: Link,
    /// It did not exist (or was not usable) and was created now: its configuration is empty.
    pub created: bool,
}

/// Which implementation drives the devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    Kernel,
    Userspace,
    Fake,
}

impl std::fmt::Display for Implementation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Implementation::Kernel => "kernel",
            Implementation::Userspace => "userspace",
            Implementation::Fake => "fake",
        })
    }
}

/// A WireGuard implementation (kernel, userspace, fake).
#[async_trait::async_trait]
pub trait WireguardDevice: Send + Sync {
    fn implementation(&self) -> Implementation;

    /// Make sure the link `name` exists as a device of this implementation with `mtu`: adopt a
    /// usable one (a restart is hitless), replace one of another kind, create a missing one.
    async fn ensure_link(&self, k: &dyn Netlink, name: &str, mtu: u32) -> Result<EnsuredLink, WgError>;

    /// The device's configuration and peers; `None` when the device does not exist.
    async fn get(&self, name: &str) -> Result<Option<DeviceInfo>, WgError>;

    /// Apply one update (all of it, or an error).
    async fn set(&self, name: &str, update: &DeviceUpdate) -> Result<(), WgError>;

    /// Notifications that a device's configuration changed from outside (the UAPI socket); `None`
    /// when the implementation has none (the peer table then polls).
    fn changes(&self) -> Option<BoxStream<'static, ()>> {
        None
    }
}

/// WireGuard's semantics of an update, applied to a device model (the fake and the userspace
/// implementation keep their configuration this way): peers are keyed by public key, an allowed
/// IP belongs to at most one peer (adding it to one takes it from another), removing an unknown
/// peer is no error, `update_only` never creates a peer.
pub fn apply_update(info: &mut DeviceInfo, update: &DeviceUpdate) {
    if let Some(key) = &update.private_key {
        info.private_key = key.clone();
    }
    if let Some(port) = update.listen_port {
        info.listen_port = port;
    }
    if let Some(mark) = update.fwmark {
        info.fwmark = mark;
    }
    if update.replace_peers {
        info.peers.clear();
    }
    for p in &update.peers {
        let pos = info.peers.iter().position(|x| x.public_key == p.public_key);
        if p.remove {
            if let Some(i) = pos {
                info.peers.remove(i);
            }
            continue;
        }
        let i = match pos {
            Some(i) => i,
            None if p.update_only => continue,
            None => {
                info.peers.push(PeerInfo {
                    public_key: p.public_key,
                    ..PeerInfo::default()
                });
                info.peers.len() - 1
            }
        };
        {
            let peer = &mut info.peers[i];
            if let Some(psk) = p.preshared_key {
                peer.preshared_key = psk.filter(|k| k.0 != WgKey::default());
            }
            if let Some(ep) = p.endpoint {
                peer.endpoint = Some(ep);
            }
            if let Some(k) = p.persistent_keepalive {
                peer.persistent_keepalive = k;
            }
            if p.replace_allowed_ips {
                peer.allowed_ips.clear();
            }
        }
        for net in &p.allowed_ips {
            let net = net.trunc();
            for (j, other) in info.peers.iter_mut().enumerate() {
                if j != i {
                    other.allowed_ips.retain(|n| *n != net);
                }
            }
            let peer = &mut info.peers[i];
            if !peer.allowed_ips.contains(&net) {
                peer.allowed_ips.push(net);
            }
        }
    }
}
