//! Pure WireGuard backend logic (spec 9.5): which devices a mode needs, the lease's
//! BackendData / BackendV6Data `{"PublicKey":..,"Port":..}` both ways, the endpoint of a remote
//! node (including the `auto` choice), and the peer a remote lease needs on each device.
//!
//! Quirk 16 (deviation, README): in the single-device modes (`auto`, `ipv4`, `ipv6`) upstream
//! publishes `Port = ListenPortV6` in BackendV6Data although its one device listens on
//! `ListenPort`. We publish the port the device really listens on in both, and read a remote
//! node's port from BackendData first (correct for upstream nodes too), from BackendV6Data only
//! when the lease has no BackendData. Upstream's crash when IPv6Network is unset does not exist
//! here: families without a network get no route.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

use crate::backend::peers::{PresharedKey, WgKey, WgPeer};
use crate::lease::Lease;
use crate::lease::gojson::{self, GoObject};
use crate::netconf::WireguardMode;

use super::key::decode_key;

/// The IPv4 (and, in single-device modes, only) device.
pub const DEVICE_V4: &str = "flannel-wg";
/// The IPv6 device in mode `separate`.
pub const DEVICE_V6: &str = "flannel-wg-v6";
/// Bytes WireGuard needs below the configured MTU (IPv6 outer header 40 + UDP 8 + 32).
pub const OVERHEAD: u32 = 80;

/// One WireGuard device of the backend and the families it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLayout {
    pub name: &'static str,
    pub listen_port: u16,
    pub v4: bool,
    pub v6: bool,
}

/// The devices of a mode: `separate` has `flannel-wg` for IPv4 (ListenPort) and
/// `flannel-wg-v6` for IPv6 (ListenPortV6); the other modes have one `flannel-wg` carrying
/// every enabled family on ListenPort.
pub fn devices(mode: WireguardMode, ipv4: bool, ipv6: bool, port: u16, port_v6: u16) -> Vec<DeviceLayout> {
    match mode {
        WireguardMode::Separate => {
            let mut out = Vec::new();
            if ipv4 {
                out.push(DeviceLayout {
                    name: DEVICE_V4,
                    listen_port: port,
                    v4: true,
                    v6: false,
                });
            }
            if ipv6 {
                out.push(DeviceLayout {
                    name: DEVICE_V6,
                    listen_port: port_v6,
                    v4: false,
                    v6: true,
                });
            }
            out
        }
        _ if ipv4 || ipv6 => vec![DeviceLayout {
            name: DEVICE_V4,
            listen_port: port,
            v4: ipv4,
            v6: ipv6,
        }],
        _ => Vec::new(),
    }
}

/// `{"PublicKey":"<base64>","Port":<port>}`, byte for byte as upstream's json.Marshal.
pub fn backend_data(public_key: &WgKey, port: u16) -> String {
    format!("{{\"PublicKey\":\"{public_key}\",\"Port\":{port}}}")
}

/// A remote node's WireGuard lease data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseData {
    pub public_key: WgKey,
    /// 0 when absent: the peer then listens on our own port (spec 9.5).
    pub port: u16,
}

/// Decode BackendData / BackendV6Data (keys case-insensitive, as Go). Errors say what is wrong
/// without echoing the whole value.
pub fn parse_backend_data(json: &str) -> Result<LeaseData, String> {
    let object = GoObject::parse(json).map_err(|e| format!("backend data is not a JSON object: {e}"))?;
    let fields = object.fields(&["PublicKey", "Port"]);
    let raw_key = fields
        .non_null("PublicKey")
        .ok_or_else(|| "backend data has no PublicKey".to_string())?;
    let key_text = gojson::decode_string(raw_key)
        .map_err(|e| format!("backend data PublicKey: {e}"))?
        .unwrap_or_default();
    let key = decode_key(&key_text).ok_or_else(|| {
        format!("backend data PublicKey {key_text:?} is not the base64 encoding of a 32-byte key")
    })?;
    let port = match fields.get("Port") {
        None => 0,
        Some(raw) => {
            let value =
                gojson::decode_int(raw).map_err(|e| format!("backend data Port {}: {e}", raw.get()))?;
            u16::try_from(value.unwrap_or(0))
                .map_err(|_| format!("backend data Port {}: must be between 0 and 65535", raw.get()))?
        }
    };
    Ok(LeaseData {
        public_key: WgKey(key),
        port,
    })
}

/// RFC 1918 (what upstream's `auto` calls private for IPv4).
fn is_rfc1918(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[0] == 10 || (o[0] == 172 && (o[1] & 0xf0) == 16) || (o[0] == 192 && o[1] == 168)
}

/// fc00::/7
fn is_ula(ip: Ipv6Addr) -> bool {
    (ip.segments()[0] & 0xfe00) == 0xfc00
}

/// The `auto` endpoint address (spec 9.5): IPv4 when the remote has no IPv6; else IPv4 when the
/// remote IPv4 is public (not RFC 1918) and we have an IPv4 address; else IPv6 when the remote
/// IPv6 is not ULA and we have a non-ULA IPv6 address; else IPv4. A family the remote does not
/// have at all is never chosen.
pub fn auto_endpoint_ip(
    remote_v4: Option<Ipv4Addr>,
    remote_v6: Option<Ipv6Addr>,
    own_v4: Option<Ipv4Addr>,
    own_v6: Option<Ipv6Addr>,
) -> Option<IpAddr> {
    let Some(r6) = remote_v6 else {
        return remote_v4.map(IpAddr::V4);
    };
    let Some(r4) = remote_v4 else {
        return Some(IpAddr::V6(r6));
    };
    if !is_rfc1918(r4) && own_v4.is_some() {
        return Some(IpAddr::V4(r4));
    }
    if !is_ula(r6) && own_v6.is_some_and(|o| !is_ula(o)) {
        return Some(IpAddr::V6(r6));
    }
    Some(IpAddr::V4(r4))
}

/// What `peers_for` needs to know about this node (kept pure by passing it in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerContext {
    pub mode: WireguardMode,
    /// (layout, interface index; 0 while the device does not exist).
    pub devices: Vec<(DeviceLayout, u32)>,
    pub own_v4: Option<Ipv4Addr>,
    pub own_v6: Option<Ipv6Addr>,
    pub psk: Option<PresharedKey>,
    pub keepalive: u16,
}

/// The peers one remote lease needs (at most one per device), or why it needs none.
pub fn peers_for(remote: &Lease, ctx: &PeerContext) -> Result<Vec<WgPeer>, String> {
    if remote.attrs.backend_type != "wireguard" {
        return Err(format!(
            "backend type is {:?}, not wireguard",
            remote.attrs.backend_type
        ));
    }
    let wants_v4 = remote.enable_ipv4 || !remote.enable_ipv6;
    let wants_v6 = remote.enable_ipv6 || !remote.enable_ipv4;
    let v4_subnet = remote.subnet.filter(|_| wants_v4).map(IpNet::V4);
    let v6_subnet = remote.ipv6_subnet.filter(|_| wants_v6).map(IpNet::V6);
    let remote_v4 = Some(remote.attrs.public_ip).filter(|ip| !ip.is_unspecified());
    let remote_v6 = remote.attrs.public_ipv6.filter(|ip| !ip.is_unspecified());
    let data = |raw: &Option<String>, which: &str| -> Result<Option<LeaseData>, String> {
        match raw.as_deref() {
            None | Some("") | Some("null") => Ok(None),
            Some(json) => parse_backend_data(json)
                .map(Some)
                .map_err(|e| format!("{which}: {e}")),
        }
    };
    let data_v4 = data(&remote.attrs.backend_data, "BackendData")?;
    let data_v6 = data(&remote.attrs.backend_v6_data, "BackendV6Data")?;
    let mut out = Vec::new();
    for (dev, index) in ctx.devices.iter().filter(|(_, i)| *i > 0) {
        let peer = |key: WgKey, ip: Option<IpAddr>, port: u16, allowed: Vec<IpNet>| {
            let port = if port == 0 { dev.listen_port } else { port };
            let mut allowed_ips: Vec<IpNet> = allowed.into_iter().map(|n| n.trunc()).collect();
            allowed_ips.sort();
            allowed_ips.dedup();
            WgPeer {
                device: *index,
                public_key: key,
                preshared_key: ctx.psk,
                endpoint: ip.map(|ip| SocketAddr::new(ip, port)),
                allowed_ips,
                persistent_keepalive: ctx.keepalive,
            }
        };
        if ctx.mode == WireguardMode::Separate {
            if dev.v4
                && let Some(subnet) = v4_subnet
            {
                let d = data_v4.ok_or("the lease has no BackendData")?;
                let ip = remote_v4.ok_or("the lease has no PublicIP")?;
                out.push(peer(d.public_key, Some(IpAddr::V4(ip)), d.port, vec![subnet]));
            }
            if dev.v6
                && let Some(subnet) = v6_subnet
            {
                let d = data_v6.ok_or("the lease has no BackendV6Data")?;
                let ip = remote_v6.ok_or("the lease has no PublicIPv6")?;
                out.push(peer(d.public_key, Some(IpAddr::V6(ip)), d.port, vec![subnet]));
            }
            continue;
        }
        let allowed: Vec<IpNet> = v4_subnet
            .filter(|_| dev.v4)
            .into_iter()
            .chain(v6_subnet.filter(|_| dev.v6))
            .collect();
        if allowed.is_empty() {
            continue;
        }
        let d = data_v4
            .or(data_v6)
            .ok_or("the lease has no BackendData or BackendV6Data")?;
        let ip = match ctx.mode {
            WireguardMode::Ipv4 => Some(IpAddr::V4(
                remote_v4.ok_or("mode ipv4: the lease has no PublicIP")?,
            )),
            WireguardMode::Ipv6 => Some(IpAddr::V6(
                remote_v6.ok_or("mode ipv6: the lease has no PublicIPv6")?,
            )),
            _ => auto_endpoint_ip(remote_v4, remote_v6, ctx.own_v4, ctx.own_v6),
        };
        out.push(peer(d.public_key, ip, d.port, allowed));
    }
    Ok(out)
}

#[cfg(test)]
#[path = "layout_tests.rs"]
mod tests;
