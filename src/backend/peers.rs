//! Per-peer state that is not a route, neighbour or FDB entry: the udp backend's forwarding table,
//! WireGuard peers, and the extension backend's add/remove commands. These are desired state of
//! the one reconciler like routes are (design.md section 4b): a backend returns them from
//! `entries_for` as `Entry::Peer`, the planner diffs them against what its `PeerTable` reports as
//! installed, and the reconciler hands the resulting `PeerOp`s to that same `PeerTable`.
//!
//! A `PeerTable` applies what it is told and reports what is there; it must not decide anything
//! and must not run a control loop of its own. It reports only entries it owns (for WireGuard:
//! peers whose allowed IPs all lie inside the cluster networks), so an operator's peer is never
//! touched.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

use futures::stream::BoxStream;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A 32-byte WireGuard key (public key, or a preshared key inside `PresharedKey`). Displays as
/// standard base64, the form `wg` and lease JSON use.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct WgKey(pub [u8; 32]);

impl fmt::Display for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base64_std_encode(&self.0))
    }
}

impl fmt::Debug for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A preshared key: a secret, so it never shows in logs (`Debug` and `Display` print
/// `<redacted>`). Use `.0` only where the key itself must go (the device).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PresharedKey(pub WgKey);

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Standard base64 with padding (RFC 4648 section 4).
pub fn base64_std_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One route of the udp backend's forwarding table: packets for `subnet` go to `endpoint`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UdpPeer {
    pub subnet: Ipv4Net,
    pub endpoint: SocketAddrV4,
}

/// One WireGuard peer on one of the backend's devices.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WgPeer {
    /// The interface index of the WireGuard device (kernel or userspace TUN).
    pub device: u32,
    pub public_key: WgKey,
    pub preshared_key: Option<PresharedKey>,
    pub endpoint: Option<SocketAddr>,
    /// Kept sorted, so equal peers compare equal.
    pub allowed_ips: Vec<IpNet>,
    /// Seconds; 0 = off.
    pub persistent_keepalive: u16,
}

/// One remote lease as the extension backend's add/remove commands see it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExtensionPeer {
    pub subnet: Option<Ipv4Net>,
    pub ipv6_subnet: Option<Ipv6Net>,
    pub public_ip: Ipv4Addr,
    pub public_ipv6: Option<Ipv6Addr>,
    /// The lease's BackendData decoded to the string the commands get on stdin.
    pub backend_data: String,
}

/// Per-peer state of a backend's own data path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerEntry {
    Udp(UdpPeer),
    Wireguard(WgPeer),
    Extension(ExtensionPeer),
}

/// The identity of a peer entry: a table holds at most one entry per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerKey {
    /// The remote subnet.
    Udp(Ipv4Net),
    /// (device index, public key): peers are keyed by key, never by endpoint, so nodes behind
    /// one NAT address are distinct peers.
    Wireguard(u32, WgKey),
    /// The remote lease's subnets.
    Extension(Option<Ipv4Net>, Option<Ipv6Net>),
}

impl PeerEntry {
    pub fn key(&self) -> PeerKey {
        match self {
            PeerEntry::Udp(p) => PeerKey::Udp(p.subnet),
            PeerEntry::Wireguard(p) => PeerKey::Wireguard(p.device, p.public_key),
            PeerEntry::Extension(p) => PeerKey::Extension(p.subnet, p.ipv6_subnet),
        }
    }
}

impl fmt::Display for PeerEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerEntry::Udp(p) => write!(f, "udp route {} -> {}", p.subnet, p.endpoint),
            PeerEntry::Wireguard(p) => {
                write!(f, "wireguard peer {} dev #{}", p.public_key, p.device)?;
                if let Some(ep) = p.endpoint {
                    write!(f, " endpoint {ep}")?;
                }
                let ips: Vec<String> = p.allowed_ips.iter().map(|n| n.to_string()).collect();
                write!(f, " allowed-ips {}", ips.join(","))
            }
            PeerEntry::Extension(p) => {
                let v4 = p.subnet.map(|s| s.to_string()).unwrap_or_default();
                write!(f, "extension peer {v4}")?;
                if let Some(v6) = p.ipv6_subnet {
                    write!(f, " {v6}")?;
                }
                write!(f, " public-ip {}", p.public_ip)
            }
        }
    }
}

/// A change of a peer table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerOp {
    Replace(PeerEntry),
    Delete(PeerEntry),
}

impl PeerOp {
    pub fn entry(&self) -> &PeerEntry {
        match self {
            PeerOp::Replace(e) | PeerOp::Delete(e) => e,
        }
    }
}

impl fmt::Display for PeerOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerOp::Replace(e) => write!(f, "replace {e}"),
            PeerOp::Delete(e) => write!(f, "delete {e}"),
        }
    }
}

/// Why a peer op failed, naming the op's object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op}: {message}")]
pub struct PeerError {
    pub op: String,
    pub message: String,
    /// The entry was already gone (a delete that found nothing counts as done).
    pub not_found: bool,
}

impl PeerError {
    pub fn new(op: impl fmt::Display, message: impl fmt::Display) -> PeerError {
        PeerError {
            op: op.to_string(),
            message: message.to_string(),
            not_found: false,
        }
    }
}

/// Where a backend's peer entries are installed: the udp forwarding table, a WireGuard device
/// (kernel or userspace), the record of the extension commands that succeeded.
#[async_trait::async_trait]
pub trait PeerTable: Send + Sync {
    /// The entries installed now that this table owns.
    async fn installed(&self) -> Result<Vec<PeerEntry>, PeerError>;

    /// Apply the ops in order; one result per op.
    async fn apply(&self, ops: &[PeerOp]) -> Vec<Result<(), PeerError>>;

    /// Notifications that the installed entries may have changed behind the reconciler's back
    /// (`wg set` on the UAPI socket, a device-side change); each item asks for a pass. `None`: the
    /// table has no such source and relies on the periodic check.
    fn changes(&self) -> Option<BoxStream<'static, ()>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(base64_std_encode(b""), "");
        assert_eq!(base64_std_encode(b"f"), "Zg==");
        assert_eq!(base64_std_encode(b"fo"), "Zm8=");
        assert_eq!(base64_std_encode(b"foo"), "Zm9v");
        assert_eq!(base64_std_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_std_encode(&[0u8; 32]).len(), 44);
    }

    #[test]
    fn preshared_keys_never_print() {
        let psk = PresharedKey(WgKey([7; 32]));
        assert_eq!(format!("{psk:?} {psk}"), "<redacted> <redacted>");
        let peer = WgPeer {
            device: 5,
            public_key: WgKey([1; 32]),
            preshared_key: Some(psk),
            endpoint: None,
            allowed_ips: vec![],
            persistent_keepalive: 0,
        };
        let text = format!("{peer:?} {}", PeerEntry::Wireguard(peer.clone()));
        assert!(!text.contains(&base64_std_encode(&[7; 32])), "{text}");
    }

    #[test]
    fn keys_ignore_everything_but_identity() {
        let a = PeerEntry::Udp(UdpPeer {
            subnet: "198.18.2.0/24".parse().unwrap(),
            endpoint: "192.0.2.2:8285".parse().unwrap(),
        });
        let b = PeerEntry::Udp(UdpPeer {
            subnet: "198.18.2.0/24".parse().unwrap(),
            endpoint: "192.0.2.9:8285".parse().unwrap(),
        });
        assert_eq!(a.key(), b.key());
        assert_ne!(a, b);
    }
}
