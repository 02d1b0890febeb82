//! The cross-platform WireGuard UAPI text protocol (what `wg` speaks to
//! `/run/wireguard/<name>.sock`), pure: `get=1` answers are formatted from a `DeviceInfo`,
//! `set=1` requests parsed into a `DeviceUpdate`. Keys are lowercase hex, one `key=value` per
//! line, a peer section starts at `public_key=`. Errors name the line's key, never a key value.

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::SystemTime;

use ipnet::IpNet;

use crate::backend::peers::{PresharedKey, WgKey};

use super::super::device::{DeviceInfo, DeviceUpdate, PeerInfo, PeerUpdate};
use super::super::key::PrivateKey;

/// `errno` values of the protocol (negative, as wireguard-go writes them).
pub const ERRNO_INVALID: i32 = -libc::EINVAL;
pub const ERRNO_IO: i32 = -libc::EIO;
pub const ERRNO_PROTOCOL: i32 = -libc::EPROTO;
pub const ERRNO_PORT_IN_USE: i32 = -libc::EADDRINUSE;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("UAPI line {line} ({key}): {reason}")]
pub struct UapiError {
    pub line: usize,
    pub key: String,
    pub reason: String,
}

pub fn hex(bytes: &[u8; 32]) -> String {
    let mut s = String::with_capacity(64);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub fn parse_hex_key(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The body of a `get=1` answer (without the final `errno=0` line).
pub fn format_get(info: &DeviceInfo) -> String {
    let mut out = String::new();
    if let Some(k) = &info.private_key {
        let _ = writeln!(out, "private_key={}", hex(k.as_bytes()));
    }
    let _ = writeln!(out, "listen_port={}", info.listen_port);
    if info.fwmark != 0 {
        let _ = writeln!(out, "fwmark={}", info.fwmark);
    }
    for p in &info.peers {
        let _ = writeln!(out, "public_key={}", hex(&p.public_key.0));
        let psk = p.preshared_key.map(|k| k.0.0).unwrap_or([0; 32]);
        let _ = writeln!(out, "preshared_key={}", hex(&psk));
        let _ = writeln!(out, "protocol_version=1");
        if let Some(ep) = p.endpoint {
            let _ = writeln!(out, "endpoint={ep}");
        }
        let (sec, nsec) = p
            .last_handshake
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| (d.as_secs(), d.subsec_nanos()))
            .unwrap_or((0, 0));
        let _ = writeln!(out, "last_handshake_time_sec={sec}");
        let _ = writeln!(out, "last_handshake_time_nsec={nsec}");
        let _ = writeln!(out, "tx_bytes={}", p.tx_bytes);
        let _ = writeln!(out, "rx_bytes={}", p.rx_bytes);
        let _ = writeln!(out, "persistent_keepalive_interval={}", p.persistent_keepalive);
        for ip in &p.allowed_ips {
            let _ = writeln!(out, "allowed_ip={ip}");
        }
    }
    out
}

fn bad(line: usize, key: &str, reason: impl Into<String>) -> UapiError {
    UapiError {
        line,
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn boolean(line: usize, key: &str, value: &str) -> Result<bool, UapiError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(bad(line, key, "expected true or false")),
    }
}

fn hex_key(line: usize, key: &str, value: &str) -> Result<[u8; 32], UapiError> {
    parse_hex_key(value).ok_or_else(|| bad(line, key, "not a 64-digit hex key"))
}

/// The `key=value` lines of a request or answer body, numbered from 1, up to the empty line.
fn key_values(body: &str) -> impl Iterator<Item = Result<(usize, &str, &str), UapiError>> {
    body.lines()
        .enumerate()
        .map(|(i, raw)| (i + 1, raw))
        .take_while(|(_, raw)| !raw.is_empty())
        .map(|(line, raw)| {
            let (key, value) = raw
                .split_once('=')
                .ok_or_else(|| bad(line, raw.get(..20).unwrap_or(raw), "expected key=value"))?;
            Ok((line, key, value))
        })
}

fn number<T: std::str::FromStr>(line: usize, key: &str, value: &str) -> Result<T, UapiError> {
    value
        .parse()
        .map_err(|_| bad(line, key, format!("{value:?} is not a valid number")))
}

/// Parse the lines of a `set=1` request (after the `set=1` line, up to the empty line).
pub fn parse_set(body: &str) -> Result<DeviceUpdate, UapiError> {
    let mut update = DeviceUpdate::default();
    let mut peer: Option<PeerUpdate> = None;
    for kv in key_values(body) {
        let (line, key, value) = kv?;
        match (key, peer.as_mut()) {
            ("private_key", None) => {
                let k = hex_key(line, key, value)?;
                update.private_key = Some(Some(PrivateKey::from_raw(k)).filter(|_| k != [0; 32]));
            }
            ("listen_port", None) => update.listen_port = Some(number(line, key, value)?),
            ("fwmark", None) => update.fwmark = Some(number(line, key, value)?),
            ("replace_peers", None) => update.replace_peers = boolean(line, key, value)?,
            ("public_key", _) => {
                let k = hex_key(line, key, value)?;
                if let Some(done) = peer.take() {
                    update.peers.push(done);
                }
                peer = Some(PeerUpdate {
                    public_key: WgKey(k),
                    ..PeerUpdate::default()
                });
            }
            ("remove", Some(p)) => p.remove = boolean(line, key, value)?,
            ("update_only", Some(p)) => p.update_only = boolean(line, key, value)?,
            ("preshared_key", Some(p)) => {
                let k = hex_key(line, key, value)?;
                p.preshared_key = Some(Some(PresharedKey(WgKey(k))).filter(|_| k != [0; 32]));
            }
            ("endpoint", Some(p)) => {
                let ep: SocketAddr = value
                    .parse()
                    .map_err(|_| bad(line, key, format!("{value:?} is not IP:port or [IPv6]:port")))?;
                p.endpoint = Some(ep);
            }
            ("persistent_keepalive_interval", Some(p)) => {
                p.persistent_keepalive = Some(number(line, key, value)?)
            }
            ("replace_allowed_ips", Some(p)) => p.replace_allowed_ips = boolean(line, key, value)?,
            ("allowed_ip", Some(p)) => {
                let net: IpNet = value
                    .parse()
                    .map_err(|_| bad(line, key, format!("{value:?} is not a CIDR")))?;
                p.allowed_ips.push(net.trunc());
            }
            ("protocol_version", Some(_)) => {
                if value != "1" {
                    return Err(bad(
                        line,
                        key,
                        format!("protocol version {value:?} is not supported"),
                    ));
                }
            }
            (_, None) if is_peer_key(key) => return Err(bad(line, key, "peer key before any public_key")),
            _ => return Err(bad(line, key, "unknown key")),
        }
    }
    if let Some(done) = peer.take() {
        update.peers.push(done);
    }
    Ok(update)
}

fn is_peer_key(key: &str) -> bool {
    matches!(
        key,
        "remove"
            | "update_only"
            | "preshared_key"
            | "endpoint"
            | "persistent_keepalive_interval"
            | "replace_allowed_ips"
            | "allowed_ip"
            | "protocol_version"
    )
}

/// Parse a `get=1` answer body back into a device (tests and tools).
pub fn parse_get(body: &str) -> Result<DeviceInfo, UapiError> {
    let mut info = DeviceInfo::default();
    for kv in key_values(body) {
        let (line, key, value) = kv?;
        let key_bytes = |v: &str| hex_key(line, key, v);
        match (key, info.peers.last_mut()) {
            ("private_key", None) => info.private_key = Some(PrivateKey::from_raw(key_bytes(value)?)),
            ("listen_port", None) => info.listen_port = number(line, key, value)?,
            ("fwmark", None) => info.fwmark = number(line, key, value)?,
            ("errno", _) => {}
            ("public_key", _) => info.peers.push(PeerInfo {
                public_key: WgKey(key_bytes(value)?),
                ..PeerInfo::default()
            }),
            ("preshared_key", Some(p)) => {
                let k = key_bytes(value)?;
                p.preshared_key = Some(PresharedKey(WgKey(k))).filter(|_| k != [0; 32]);
            }
            ("protocol_version", Some(_)) => {}
            ("endpoint", Some(p)) => {
                p.endpoint = Some(value.parse().map_err(|_| bad(line, key, "not an endpoint"))?)
            }
            ("last_handshake_time_sec", Some(p)) => {
                let s: u64 = number(line, key, value)?;
                p.last_handshake =
                    (s > 0).then(|| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s));
            }
            ("last_handshake_time_nsec", Some(p)) => {
                let n: u32 = number(line, key, value)?;
                if let Some(t) = p.last_handshake.as_mut() {
                    *t += std::time::Duration::from_nanos(u64::from(n.min(999_999_999)));
                }
            }
            ("tx_bytes", Some(p)) => p.tx_bytes = number(line, key, value)?,
            ("rx_bytes", Some(p)) => p.rx_bytes = number(line, key, value)?,
            ("persistent_keepalive_interval", Some(p)) => p.persistent_keepalive = number(line, key, value)?,
            ("allowed_ip", Some(p)) => p
                .allowed_ips
                .push(value.parse().map_err(|_| bad(line, key, "not a CIDR"))?),
            _ => return Err(bad(line, key, "unknown key")),
        }
    }
    Ok(info)
}

#[cfg(test)]
#[path = "uapi_tests.rs"]
mod tests;
