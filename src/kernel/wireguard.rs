//! Kernel WireGuard devices over generic netlink (the only module that imports genetlink and
//! netlink-packet-wireguard): `WG_CMD_GET_DEVICE` dumps and `WG_CMD_SET_DEVICE` requests, in the
//! layout `wg(8)` uses (include/uapi/linux/wireguard.h). The link itself is created over
//! rtnetlink (`Netlink::create_wireguard`). The codec (`set_messages`, `decode_device`) is pure
//! and unit-tested on bytes; the socket code applies what it is told and decides nothing.
//!
//! A missing generic netlink family (`ENOENT` when resolving `wireguard`) means the kernel has
//! no WireGuard: `GenlError::Unavailable`, the signal for the userspace fallback.

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use genetlink::{GenetlinkError, GenetlinkHandle};
use ipnet::IpNet;
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute, WireguardCmd,
    WireguardDeviceFlags, WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};

use crate::backend::peers::{PresharedKey, WgKey};
use crate::backend::wireguard::device::{DeviceInfo, DeviceUpdate, PeerInfo, PeerUpdate};
use crate::backend::wireguard::key::PrivateKey;

/// Peers per SET_DEVICE message, and allowed IPs per message, so a request stays well inside
/// the socket buffer (wg(8) splits at its buffer size the same way).
const PEERS_PER_MESSAGE: usize = 64;
const ALLOWED_IPS_PER_MESSAGE: usize = 256;

#[derive(Debug, Clone, thiserror::Error)]
pub enum GenlError {
    #[error("the kernel has no WireGuard (generic netlink family \"wireguard\" not found)")]
    Unavailable,
    #[error("opening a generic netlink socket: {0}")]
    Socket(String),
    #[error("{op} {device}: {message}")]
    Request {
        op: &'static str,
        device: String,
        message: String,
        errno: Option<i32>,
    },
}

impl GenlError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            GenlError::Request { errno, .. } => *errno,
            _ => None,
        }
    }
}

fn request_error(op: &'static str, device: &str, e: GenetlinkError) -> GenlError {
    let errno = match &e {
        GenetlinkError::NetlinkError(io) => io.raw_os_error(),
        _ => None,
    };
    GenlError::Request {
        op,
        device: device.to_string(),
        message: e.to_string(),
        errno,
    }
}

/// A reply of the `op` exchange for `device` that could not be decoded.
fn decode_error(op: &'static str, device: &str, e: impl std::fmt::Display) -> GenlError {
    GenlError::Request {
        op,
        device: device.to_string(),
        message: format!("decoding the reply: {e}"),
        errno: None,
    }
}

/// The kernel's error answer `errno` (`message`) to the `op` exchange for `device`.
fn refused(op: &'static str, device: &str, message: String, errno: i32) -> GenlError {
    GenlError::Request {
        op,
        device: device.to_string(),
        message,
        errno: Some(errno),
    }
}

/// A generic netlink connection to the kernel's WireGuard family.
pub struct GenlWireguard {
    handle: GenetlinkHandle,
}

impl GenlWireguard {
    /// Open the socket (in the caller's network namespace) and resolve the family.
    pub async fn connect() -> Result<GenlWireguard, GenlError> {
        let (connection, handle, _) =
            genetlink::new_connection().map_err(|e| GenlError::Socket(e.to_string()))?;
        tokio::spawn(connection);
        match handle.resolve_family::<WireguardMessage>().await {
            Ok(_) => Ok(GenlWireguard { handle }),
            Err(GenetlinkError::NetlinkError(io)) if io.raw_os_error() == Some(libc::ENOENT) => {
                Err(GenlError::Unavailable)
            }
            Err(e) => Err(request_error(
                "resolving the generic netlink family",
                "wireguard",
                e,
            )),
        }
    }

    /// `wg show <name> dump`; `None` when there is no such WireGuard device.
    pub async fn get_device(&self, name: &str) -> Result<Option<DeviceInfo>, GenlError> {
        const OP: &str = "reading WireGuard device";
        let mut msg = NetlinkMessage::from(GenlMessage::from_payload(get_message(name)));
        msg.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP;
        let mut handle = self.handle.clone();
        let mut stream = handle
            .request(msg)
            .await
            .map_err(|e| request_error(OP, name, e))?;
        let mut parts = Vec::new();
        while let Some(reply) = stream.next().await {
            let reply = reply.map_err(|e| decode_error(OP, name, e))?;
            match reply.payload {
                NetlinkPayload::InnerMessage(genl) => parts.push(genl.payload),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    let errno = -e.raw_code();
                    if errno == libc::ENODEV || errno == libc::ENOENT || errno == libc::EOPNOTSUPP {
                        return Ok(None);
                    }
                    return Err(refused(OP, name, e.to_io().to_string(), errno));
                }
                _ => {}
            }
        }
        Ok(Some(decode_device(&parts)))
    }

    /// `wg set <name> ...`, as one or more SET_DEVICE requests.
    pub async fn set_device(&self, name: &str, update: &DeviceUpdate) -> Result<(), GenlError> {
        const OP: &str = "configuring WireGuard device";
        for payload in set_messages(name, update) {
            let mut msg = NetlinkMessage::from(GenlMessage::from_payload(payload));
            msg.header.flags = NLM_F_REQUEST | NLM_F_ACK;
            let mut handle = self.handle.clone();
            let mut stream = handle
                .request(msg)
                .await
                .map_err(|e| request_error(OP, name, e))?;
            while let Some(reply) = stream.next().await {
                let reply = reply.map_err(|e| decode_error(OP, name, e))?;
                if let NetlinkPayload::Error(e) = reply.payload
                    && e.code.is_some()
                {
                    return Err(refused(OP, name, e.to_io().to_string(), -e.raw_code()));
                }
            }
        }
        Ok(())
    }
}

/// The GET_DEVICE request: the device named by `name`.
pub fn get_message(name: &str) -> WireguardMessage {
    WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![WireguardAttribute::IfName(name.to_string())],
    }
}

fn allowed_ip(net: &IpNet) -> WireguardAllowedIp {
    let family = if net.addr().is_ipv4() {
        WireguardAddressFamily::Ipv4
    } else {
        WireguardAddressFamily::Ipv6
    };
    WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(family),
        WireguardAllowedIpAttr::IpAddr(net.network()),
        WireguardAllowedIpAttr::Cidr(net.prefix_len()),
    ])
}

/// The attributes of one peer (order as wg(8): key, [psk, endpoint, keepalive], flags, allowed
/// IPs). `first` is false for a continuation carrying more allowed IPs of the same peer.
fn peer_attributes(p: &PeerUpdate, ips: &[IpNet], first: bool) -> WireguardPeer {
    let mut attrs = vec![WireguardPeerAttribute::PublicKey(p.public_key.0)];
    let mut flags = WireguardPeerFlags::empty();
    if p.remove {
        flags |= WireguardPeerFlags::RemoveMe;
    }
    if p.update_only || !first {
        flags |= WireguardPeerFlags::UpdateOnly;
    }
    if first && !p.remove {
        if p.replace_allowed_ips {
            flags |= WireguardPeerFlags::ReplaceAllowedIps;
        }
        if let Some(psk) = p.preshared_key {
            attrs.push(WireguardPeerAttribute::PresharedKey(
                psk.map(|k| k.0.0).unwrap_or([0; 32]),
            ));
        }
        if let Some(ep) = p.endpoint {
            attrs.push(WireguardPeerAttribute::Endpoint(ep));
        }
        if let Some(k) = p.persistent_keepalive {
            attrs.push(WireguardPeerAttribute::PersistentKeepalive(k));
        }
    }
    if !flags.is_empty() {
        attrs.push(WireguardPeerAttribute::Flags(flags));
    }
    if !ips.is_empty() && !p.remove {
        attrs.push(WireguardPeerAttribute::AllowedIps(
            ips.iter().map(allowed_ip).collect(),
        ));
    }
    WireguardPeer(attrs)
}

/// The SET_DEVICE requests for one update: the first carries the device attributes, peers are
/// split over as many messages as needed (a peer with very many allowed IPs continues in the
/// next message as an update-only entry without the replace flag).
pub fn set_messages(name: &str, update: &DeviceUpdate) -> Vec<WireguardMessage> {
    let mut head = vec![WireguardAttribute::IfName(name.to_string())];
    if let Some(key) = &update.private_key {
        head.push(WireguardAttribute::PrivateKey(
            key.as_ref().map(|k| *k.as_bytes()).unwrap_or([0; 32]),
        ));
    }
    if let Some(port) = update.listen_port {
        head.push(WireguardAttribute::ListenPort(port));
    }
    if let Some(mark) = update.fwmark {
        head.push(WireguardAttribute::Fwmark(mark));
    }
    if update.replace_peers {
        head.push(WireguardAttribute::Flags(WireguardDeviceFlags::ReplacePeers));
    }
    let mut messages = Vec::new();
    let mut current: Vec<WireguardPeer> = Vec::new();
    let mut ips_in_message = 0usize;
    let flush =
        |attrs: Vec<WireguardAttribute>, peers: &mut Vec<WireguardPeer>, out: &mut Vec<WireguardMessage>| {
            let mut attributes = attrs;
            if !peers.is_empty() {
                attributes.push(WireguardAttribute::Peers(std::mem::take(peers)));
            }
            out.push(WireguardMessage {
                cmd: WireguardCmd::SetDevice,
                attributes,
            });
        };
    let mut first_attrs = Some(head);
    for p in &update.peers {
        let mut rest: &[IpNet] = &p.allowed_ips;
        let mut first = true;
        loop {
            let room = ALLOWED_IPS_PER_MESSAGE.saturating_sub(ips_in_message);
            if current.len() >= PEERS_PER_MESSAGE || (room == 0 && !rest.is_empty()) {
                let attrs = first_attrs
                    .take()
                    .unwrap_or_else(|| vec![WireguardAttribute::IfName(name.to_string())]);
                flush(attrs, &mut current, &mut messages);
                ips_in_message = 0;
                continue;
            }
            let take = rest.len().min(room);
            current.push(peer_attributes(p, &rest[..take], first));
            ips_in_message += take;
            rest = &rest[take..];
            first = false;
            if rest.is_empty() {
                break;
            }
        }
    }
    if first_attrs.is_some() || !current.is_empty() {
        let attrs = first_attrs
            .take()
            .unwrap_or_else(|| vec![WireguardAttribute::IfName(name.to_string())]);
        flush(attrs, &mut current, &mut messages);
    }
    messages
}

fn allowed_from(ip: &WireguardAllowedIp) -> Option<IpNet> {
    let mut addr = None;
    let mut cidr = None;
    for a in ip.iter() {
        match a {
            WireguardAllowedIpAttr::IpAddr(ip) => addr = Some(*ip),
            WireguardAllowedIpAttr::Cidr(c) => cidr = Some(*c),
            _ => {}
        }
    }
    IpNet::new(addr?, cidr?).ok().map(|n| n.trunc())
}

/// Merge the messages of one GET_DEVICE dump into a device: the kernel repeats the device
/// attributes in every message and continues a peer whose allowed IPs did not fit in the next
/// message under the same public key.
pub fn decode_device(parts: &[WireguardMessage]) -> DeviceInfo {
    let mut info = DeviceInfo::default();
    for msg in parts {
        for attr in &msg.attributes {
            match attr {
                WireguardAttribute::IfIndex(i) => info.index = *i,
                WireguardAttribute::IfName(n) => info.name = n.clone(),
                WireguardAttribute::PrivateKey(k) if *k != [0; 32] => {
                    info.private_key = Some(PrivateKey::from_raw(*k));
                }
                WireguardAttribute::ListenPort(p) => info.listen_port = *p,
                WireguardAttribute::Fwmark(m) => info.fwmark = *m,
                WireguardAttribute::Peers(peers) => {
                    for peer in peers {
                        merge_peer(&mut info.peers, peer);
                    }
                }
                _ => {}
            }
        }
    }
    info
}

fn merge_peer(peers: &mut Vec<PeerInfo>, peer: &WireguardPeer) {
    let mut p = PeerInfo::default();
    let mut has_key = false;
    for a in peer.iter() {
        match a {
            WireguardPeerAttribute::PublicKey(k) => {
                p.public_key = WgKey(*k);
                has_key = true;
            }
            WireguardPeerAttribute::PresharedKey(k) if *k != [0; 32] => {
                p.preshared_key = Some(PresharedKey(WgKey(*k)));
            }
            WireguardPeerAttribute::Endpoint(ep) => p.endpoint = Some(*ep),
            WireguardPeerAttribute::PersistentKeepalive(k) => p.persistent_keepalive = *k,
            WireguardPeerAttribute::LastHandshake(t) if t.seconds > 0 || t.nano_seconds > 0 => {
                let secs = u64::try_from(t.seconds).unwrap_or(0);
                let nanos = u32::try_from(t.nano_seconds.clamp(0, 999_999_999)).unwrap_or(0);
                p.last_handshake = SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos));
            }
            WireguardPeerAttribute::RxBytes(b) => p.rx_bytes = *b,
            WireguardPeerAttribute::TxBytes(b) => p.tx_bytes = *b,
            WireguardPeerAttribute::AllowedIps(ips) => {
                p.allowed_ips.extend(ips.iter().filter_map(allowed_from))
            }
            _ => {}
        }
    }
    if !has_key {
        return;
    }
    match peers.last_mut() {
        Some(last) if last.public_key == p.public_key => last.allowed_ips.extend(p.allowed_ips),
        _ => peers.push(p),
    }
}

#[cfg(test)]
#[path = "wireguard_tests.rs"]
mod tests;
