//! The `Backend` object of net-conf.json: its `Type` and the typed per-backend keys with upstream's
//! defaults (spec section 2.2). Keys match case-insensitively; the type value is lower-cased.
//! Range checks (VNI, ports, MTU) reject what upstream would silently truncate. Errors name the
//! backend, the key and the value, except for the wireguard PSK, whose value is never printed.

use serde_json::value::RawValue;

use super::{
    BackendConfig, ExtensionConfig, IpipConfig, NetConfError, UdpConfig, VxlanConfig, WireguardConfig,
    WireguardImplementation, WireguardMode,
};
use crate::lease::gojson::{self, Fields, GoObject};

pub(super) const DEFAULT_UDP_PORT: u16 = 8285;
const DEFAULT_VXLAN_VNI: u32 = 1;
const MAX_VXLAN_VNI: i64 = (1 << 24) - 1;
const DEFAULT_WG_PORT: u16 = 51820;
const DEFAULT_WG_PORT_V6: u16 = 51821;

/// Decode a present, non-null `Backend` value into the lower-cased type and its typed config.
pub(super) fn decode(raw: &RawValue) -> Result<(String, BackendConfig), NetConfError> {
    let object = GoObject::parse(raw.get()).map_err(|e| NetConfError::BadValue {
        key: "Backend".to_string(),
        value: raw.get().to_string(),
        reason: format!("expected an object with a Type: {e}"),
    })?;
    let type_fields = object.fields(&["Type"]);
    let type_name = match type_fields.get("Type") {
        None => String::new(),
        Some(t) => gojson::decode_string(t)
            .map_err(|reason| NetConfError::BadValue {
                key: "Backend.Type".to_string(),
                value: t.get().to_string(),
                reason,
            })?
            .unwrap_or_default(),
    };
    let kind = type_name.to_lowercase();
    let config = match kind.as_str() {
        "vxlan" => BackendConfig::Vxlan(vxlan(&object)?),
        "host-gw" => BackendConfig::HostGw,
        "udp" => BackendConfig::Udp(UdpConfig {
            port: port(&kind, &object.fields(&["Port"]), "Port")?.unwrap_or(DEFAULT_UDP_PORT),
        }),
        "ipip" => {
            let f = object.fields(&["DirectRouting", "PeerFilter"]);
            BackendConfig::Ipip(IpipConfig {
                direct_routing: boolean(&kind, &f, "DirectRouting")?,
                peer_filter: boolean(&kind, &f, "PeerFilter")?,
            })
        }
        "wireguard" => BackendConfig::Wireguard(wireguard(&object)?),
        "extension" => BackendConfig::Extension(extension(&object)?),
        "alloc" => BackendConfig::Alloc,
        "ipsec" | "tencent-vpc" => return Err(NetConfError::UnsupportedBackend(type_name)),
        _ => return Err(NetConfError::UnknownBackend(type_name)),
    };
    Ok((kind, config))
}

fn bad(backend: &str, key: &str, raw: &RawValue, reason: impl std::fmt::Display) -> NetConfError {
    NetConfError::BadBackend {
        backend: backend.to_string(),
        reason: format!("key {key:?} has an invalid value {}: {reason}", raw.get()),
    }
}

fn int(backend: &str, f: &Fields<'_>, key: &str, min: i64, max: i64) -> Result<Option<i64>, NetConfError> {
    let Some(raw) = f.get(key) else { return Ok(None) };
    let value = gojson::decode_int(raw).map_err(|r| bad(backend, key, raw, r))?;
    match value {
        Some(v) if v < min || v > max => {
            Err(bad(backend, key, raw, format!("must be between {min} and {max}")))
        }
        other => Ok(other),
    }
}

fn port(backend: &str, f: &Fields<'_>, key: &str) -> Result<Option<u16>, NetConfError> {
    Ok(int(backend, f, key, 0, i64::from(u16::MAX))?.and_then(|v| u16::try_from(v).ok()))
}

fn mtu(backend: &str, f: &Fields<'_>) -> Result<u32, NetConfError> {
    Ok(int(backend, f, "MTU", 0, i64::from(u32::MAX))?
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0))
}

fn boolean(backend: &str, f: &Fields<'_>, key: &str) -> Result<bool, NetConfError> {
    let Some(raw) = f.get(key) else { return Ok(false) };
    Ok(gojson::decode_bool(raw)
        .map_err(|r| bad(backend, key, raw, r))?
        .unwrap_or(false))
}

fn string(backend: &str, f: &Fields<'_>, key: &str) -> Result<Option<String>, NetConfError> {
    let Some(raw) = f.get(key) else { return Ok(None) };
    gojson::decode_string(raw).map_err(|r| bad(backend, key, raw, r))
}

fn vxlan(object: &GoObject) -> Result<VxlanConfig, NetConfError> {
    let f = object.fields(&["VNI", "Port", "MTU", "GBP", "Learning", "DirectRouting"]);
    let b = "vxlan";
    Ok(VxlanConfig {
        // Upstream's default applies only when VNI is absent; an explicit 0 is kept.
        vni: int(b, &f, "VNI", 0, MAX_VXLAN_VNI)?
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(DEFAULT_VXLAN_VNI),
        port: port(b, &f, "Port")?.unwrap_or(0),
        mtu: mtu(b, &f)?,
        gbp: boolean(b, &f, "GBP")?,
        learning: boolean(b, &f, "Learning")?,
        direct_routing: boolean(b, &f, "DirectRouting")?,
    })
}

fn wireguard(object: &GoObject) -> Result<WireguardConfig, NetConfError> {
    let f = object.fields(&[
        "ListenPort",
        "ListenPortV6",
        "MTU",
        "PSK",
        "PersistentKeepaliveInterval",
        "Mode",
        "Implementation",
    ]);
    let b = "wireguard";
    let psk = match f.get("PSK") {
        None => None,
        Some(raw) => {
            // Never echo the value: it is a secret.
            let text = gojson::decode_string(raw).map_err(|r| NetConfError::BadBackend {
                backend: b.to_string(),
                reason: format!("key \"PSK\": {r}"),
            })?;
            match text {
                Some(text) if !text.is_empty() => {
                    if base64_std_decode(&text).map(|k| k.len()) != Some(32) {
                        return Err(NetConfError::BadBackend {
                            backend: b.to_string(),
                            reason: "key \"PSK\": not the base64 encoding of a 32-byte key".to_string(),
                        });
                    }
                    Some(text)
                }
                _ => None,
            }
        }
    };
    let mode = match string(b, &f, "Mode")? {
        None => WireguardMode::Separate,
        Some(text) => match text.as_str() {
            "separate" => WireguardMode::Separate,
            "auto" => WireguardMode::Auto,
            "ipv4" => WireguardMode::Ipv4,
            "ipv6" => WireguardMode::Ipv6,
            _ => {
                let raw = f.get("Mode").map(|r| r.get()).unwrap_or_default();
                return Err(NetConfError::BadBackend {
                    backend: b.to_string(),
                    reason: format!(
                        "no valid Mode configured: key \"Mode\" has value {raw}; expected one of \"separate\", \"auto\", \"ipv4\", \"ipv6\""
                    ),
                });
            }
        },
    };
    let implementation = match string(b, &f, "Implementation")?.as_deref() {
        None | Some("auto") => WireguardImplementation::Auto,
        Some("kernel") => WireguardImplementation::Kernel,
        Some("userspace") => WireguardImplementation::Userspace,
        Some(_) => {
            let raw = f.get("Implementation").map(|r| r.get()).unwrap_or_default();
            return Err(NetConfError::BadBackend {
                backend: b.to_string(),
                reason: format!(
                    "key \"Implementation\" has value {raw}; expected one of \"auto\", \"kernel\", \"userspace\""
                ),
            });
        }
    };
    Ok(WireguardConfig {
        listen_port: port(b, &f, "ListenPort")?.unwrap_or(DEFAULT_WG_PORT),
        listen_port_v6: port(b, &f, "ListenPortV6")?.unwrap_or(DEFAULT_WG_PORT_V6),
        mtu: mtu(b, &f)?,
        psk,
        // The kernel and the UAPI carry the interval as 16 bits.
        persistent_keepalive: int(b, &f, "PersistentKeepaliveInterval", 0, i64::from(u16::MAX))?
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0),
        mode,
        implementation,
    })
}

fn extension(object: &GoObject) -> Result<ExtensionConfig, NetConfError> {
    let keys = [
        "PreStartupCommand",
        "PostStartupCommand",
        "SubnetAddCommand",
        "SubnetRemoveCommand",
    ];
    let f = object.fields(&keys);
    let b = "extension";
    Ok(ExtensionConfig {
        pre_startup_command: string(b, &f, "PreStartupCommand")?.unwrap_or_default(),
        post_startup_command: string(b, &f, "PostStartupCommand")?.unwrap_or_default(),
        subnet_add_command: string(b, &f, "SubnetAddCommand")?.unwrap_or_default(),
        subnet_remove_command: string(b, &f, "SubnetRemoveCommand")?.unwrap_or_default(),
    })
}

/// Go's `base64.StdEncoding.DecodeString`: standard alphabet, padded, CR/LF ignored.
pub(crate) fn base64_std_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let bytes: Vec<u8> = text.bytes().filter(|b| *b != b'\r' && *b != b'\n').collect();
    if bytes.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let chunks = bytes.chunks(4);
    let last = chunks.len().saturating_sub(1);
    for (i, chunk) in chunks.enumerate() {
        let pad = chunk.iter().rev().take_while(|b| **b == b'=').count();
        if pad > 2 || (pad > 0 && i != last) {
            return None;
        }
        let mut acc: u32 = 0;
        for (j, c) in chunk.iter().enumerate() {
            let v = if j >= 4 - pad { 0 } else { value(*c)? };
            acc = (acc << 6) | v;
        }
        let decoded = [(acc >> 16) as u8, (acc >> 8) as u8, acc as u8];
        out.extend_from_slice(decoded.get(..3 - pad)?);
    }
    Some(out)
}
