//! net-conf.json: parse with Go `encoding/json` semantics (case-insensitive keys, the last
//! occurrence of a key wins, unknown keys ignored, wrong JSON types are errors naming the key),
//! compute defaults and validate (etcd mode, upstream's CheckNetworkConfig), and decode the typed
//! per-backend configuration.
//!
//! Pure code: no I/O, no logging of secrets (the wireguard PSK is never put in an error).
//! Spec: flanneld-behaviour.md section 2 (2.1 in `check`, 2.2 in `backend`); quirks 3 and 4.
//!
//! Choices where upstream is silent or odd (all stricter or equal, none accepts less valid input):
//! - JSON `null` for a key leaves it unset (upstream errors on `"Network": null`).
//! - `IPv6Network`, `IPv6SubnetMin`, `IPv6SubnetMax` must be IPv6 text (upstream does not check the
//!   family and would carry an IPv4 value into 128-bit arithmetic).
//! - `SubnetLen`/`IPv6SubnetLen` above 255 are rejected at parse time (upstream's `uint` would fail
//!   the range checks later anyway).
//! - `Networks`/`IPv6Networks` are ignored (upstream decodes them, then overwrites them).
//! - An unknown or unsupported backend type and a bad backend key are errors of `parse`, so both
//!   modes see them before anything is set up (upstream fails the same way at backend creation).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::value::RawValue;

use crate::lease::gojson::{self, GoObject};

pub(crate) mod backend;
mod check;

/// Every error names the key and the value that is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetConfError {
    #[error("network config is not valid JSON: {0}")]
    Json(String),
    #[error("network config key {key:?} has an invalid value {value}: {reason}")]
    BadValue {
        key: String,
        value: String,
        reason: String,
    },
    #[error("network config: {0}")]
    Invalid(String),
    #[error("network config Backend: unknown backend type {0:?}")]
    UnknownBackend(String),
    #[error("network config Backend: backend type {0:?} is not supported by this flanneld")]
    UnsupportedBackend(String),
    #[error("network config Backend ({backend}): {reason}")]
    BadBackend { backend: String, reason: String },
}

/// The network configuration after defaults (spec 2.1).
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub enable_ipv4: bool,
    pub enable_ipv6: bool,
    pub enable_nftables: bool,
    pub network: Option<Ipv4Net>,
    pub subnet_len: u8,
    pub subnet_min: Option<Ipv4Addr>,
    pub subnet_max: Option<Ipv4Addr>,
    pub ipv6_network: Option<Ipv6Net>,
    pub ipv6_subnet_len: u8,
    pub ipv6_subnet_min: Option<Ipv6Addr>,
    pub ipv6_subnet_max: Option<Ipv6Addr>,
    /// Lower-cased backend type (`udp` when Backend is absent, as upstream).
    pub backend_type: String,
    pub backend: BackendConfig,
}

/// Typed per-backend configuration (spec 2.2).
#[derive(Debug, Clone, PartialEq)]
pub enum BackendConfig {
    Vxlan(VxlanConfig),
    HostGw,
    Udp(UdpConfig),
    Ipip(IpipConfig),
    Wireguard(WireguardConfig),
    Extension(ExtensionConfig),
    Alloc,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VxlanConfig {
    /// Default 1.
    pub vni: u32,
    /// 0 = kernel default (8472).
    pub port: u16,
    /// 0 = external interface MTU.
    pub mtu: u32,
    pub gbp: bool,
    pub learning: bool,
    pub direct_routing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpConfig {
    /// Default 8285.
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpipConfig {
    pub direct_routing: bool,
    /// `PeerFilter` (ours, default off): drop IPIP packets to this node whose source is not a
    /// current peer's PublicIP (upstream accepts IPIP from anywhere, flannel #961).
    pub peer_filter: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WireguardMode {
    #[default]
    Separate,
    Auto,
    Ipv4,
    Ipv6,
}

/// Which WireGuard data path the wireguard backend uses (`Implementation` key; not upstream's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WireguardImplementation {
    /// The kernel module when its generic netlink family exists, else the userspace one.
    #[default]
    Auto,
    Kernel,
    Userspace,
}

#[derive(Clone, PartialEq, Eq)]
pub struct WireguardConfig {
    /// Default 51820.
    pub listen_port: u16,
    /// Default 51821.
    pub listen_port_v6: u16,
    /// 0 = external interface MTU.
    pub mtu: u32,
    /// Base64 text of the pre-shared key, if any (never logged).
    pub psk: Option<String>,
    /// Seconds; 0 = off.
    pub persistent_keepalive: u32,
    pub mode: WireguardMode,
    /// Default `auto`.
    pub implementation: WireguardImplementation,
}

/// Written by hand so that the PSK never shows in a log line (`{:?}` of the config).
impl std::fmt::Debug for WireguardConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireguardConfig")
            .field("listen_port", &self.listen_port)
            .field("listen_port_v6", &self.listen_port_v6)
            .field("mtu", &self.mtu)
            .field("psk", &self.psk.as_ref().map(|_| "<redacted>"))
            .field("persistent_keepalive", &self.persistent_keepalive)
            .field("mode", &self.mode)
            .field("implementation", &self.implementation)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExtensionConfig {
    pub pre_startup_command: String,
    pub post_startup_command: String,
    pub subnet_add_command: String,
    pub subnet_remove_command: String,
}

impl NetConf {
    /// Parse net-conf.json and decode the backend config, without the etcd-mode checks
    /// (kube mode uses this alone, as upstream).
    pub fn parse(json: &str) -> Result<NetConf, NetConfError> {
        let object = GoObject::parse(json).map_err(NetConfError::Json)?;
        let fields = object.fields(TOP_LEVEL_FIELDS);

        let flag = |key: &'static str, default: bool| -> Result<bool, NetConfError> {
            match fields.get(key) {
                None => Ok(default),
                Some(raw) => Ok(gojson::decode_bool(raw)
                    .map_err(|r| bad_value(key, raw, r))?
                    .unwrap_or(default)),
            }
        };
        let enable_ipv4 = flag("EnableIPv4", true)?;
        let enable_ipv6 = flag("EnableIPv6", false)?;
        let enable_nftables = flag("EnableNFTables", false)?;

        let network = match text_field(&fields, "Network")? {
            None => None,
            Some((raw, text)) => match parse_go_cidr(&text) {
                Ok(IpNet::V4(net)) => Some(net).filter(|n| n.prefix_len() != 0 || !n.addr().is_unspecified()),
                Ok(IpNet::V6(_)) => return Err(bad_value("Network", raw, "expected an IPv4 CIDR, got IPv6")),
                Err(reason) => return Err(bad_value("Network", raw, reason)),
            },
        };
        let ipv6_network = match text_field(&fields, "IPv6Network")? {
            None => None,
            Some((raw, text)) => match parse_go_cidr(&text) {
                Ok(IpNet::V6(net)) => Some(net).filter(|n| n.prefix_len() != 0 || !n.addr().is_unspecified()),
                Ok(IpNet::V4(_)) => {
                    return Err(bad_value("IPv6Network", raw, "expected an IPv6 CIDR, got IPv4"));
                }
                Err(reason) => return Err(bad_value("IPv6Network", raw, reason)),
            },
        };
        let subnet_len = prefix_len_field(&fields, "SubnetLen")?;
        let ipv6_subnet_len = prefix_len_field(&fields, "IPv6SubnetLen")?;
        let subnet_min = ipv4_field(&fields, "SubnetMin")?;
        let subnet_max = ipv4_field(&fields, "SubnetMax")?;
        let ipv6_subnet_min = ipv6_field(&fields, "IPv6SubnetMin")?;
        let ipv6_subnet_max = ipv6_field(&fields, "IPv6SubnetMax")?;

        let (backend_type, backend) = match fields.non_null("Backend") {
            // Upstream's default when Backend is absent is udp (the docs say vxlan).
            None => (
                "udp".to_string(),
                BackendConfig::Udp(UdpConfig {
                    port: backend::DEFAULT_UDP_PORT,
                }),
            ),
            Some(raw) => backend::decode(raw)?,
        };

        Ok(NetConf {
            enable_ipv4,
            enable_ipv6,
            enable_nftables,
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            ipv6_network,
            ipv6_subnet_len,
            ipv6_subnet_min,
            ipv6_subnet_max,
            backend_type,
            backend,
        })
    }

    /// Upstream's CheckNetworkConfig (etcd mode): validate and fill SubnetLen/Min/Max.
    pub fn check_and_fill_defaults(&mut self) -> Result<(), NetConfError> {
        check::check_and_fill_defaults(self)
    }

    /// `parse` followed by `check_and_fill_defaults` (etcd mode).
    pub fn parse_and_check(json: &str) -> Result<NetConf, NetConfError> {
        let mut conf = NetConf::parse(json)?;
        conf.check_and_fill_defaults()?;
        Ok(conf)
    }

    /// At least one IP family must be enabled (upstream exits 1 at startup otherwise, in both modes).
    pub fn check_stack(&self) -> Result<(), NetConfError> {
        if self.enable_ipv4 || self.enable_ipv6 {
            Ok(())
        } else {
            Err(NetConfError::Invalid(
                "neither EnableIPv4 nor EnableIPv6 is set: enable at least one IP family".to_string(),
            ))
        }
    }
}

const TOP_LEVEL_FIELDS: &[&str] = &[
    "EnableIPv4",
    "EnableIPv6",
    "EnableNFTables",
    "Network",
    "IPv6Network",
    "SubnetLen",
    "SubnetMin",
    "SubnetMax",
    "IPv6SubnetLen",
    "IPv6SubnetMin",
    "IPv6SubnetMax",
    "Backend",
];

fn bad_value(key: &str, raw: &RawValue, reason: impl Into<String>) -> NetConfError {
    NetConfError::BadValue {
        key: key.to_string(),
        value: raw.get().to_string(),
        reason: reason.into(),
    }
}

/// A string-typed key: absent or `null` is `None`; any other JSON type is an error naming the key.
fn text_field<'a>(
    fields: &gojson::Fields<'a>,
    key: &'static str,
) -> Result<Option<(&'a RawValue, String)>, NetConfError> {
    match fields.non_null(key) {
        None => Ok(None),
        Some(raw) => {
            let text = gojson::decode_string(raw)
                .map_err(|r| bad_value(key, raw, r))?
                .unwrap_or_default();
            Ok(Some((raw, text)))
        }
    }
}

fn prefix_len_field(fields: &gojson::Fields<'_>, key: &'static str) -> Result<u8, NetConfError> {
    match fields.get(key) {
        None => Ok(0),
        Some(raw) => {
            let value = gojson::decode_uint(raw)
                .map_err(|r| bad_value(key, raw, r))?
                .unwrap_or(0);
            u8::try_from(value).map_err(|_| bad_value(key, raw, "prefix length out of range"))
        }
    }
}

/// `SubnetMin`/`SubnetMax`: IPv4 text (Go's ParseIP also takes the IPv4-mapped form); `0.0.0.0` is unset.
fn ipv4_field(fields: &gojson::Fields<'_>, key: &'static str) -> Result<Option<Ipv4Addr>, NetConfError> {
    let Some((raw, text)) = text_field(fields, key)? else {
        return Ok(None);
    };
    let ip = match text.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip,
        Ok(IpAddr::V6(ip)) => ip
            .to_ipv4_mapped()
            .ok_or_else(|| bad_value(key, raw, "expected an IPv4 address, got IPv6"))?,
        Err(_) => return Err(bad_value(key, raw, "not an IPv4 address")),
    };
    Ok(Some(ip).filter(|ip| !ip.is_unspecified()))
}

/// `IPv6SubnetMin`/`IPv6SubnetMax`: IPv6 text; `::` is unset.
fn ipv6_field(fields: &gojson::Fields<'_>, key: &'static str) -> Result<Option<Ipv6Addr>, NetConfError> {
    let Some((raw, text)) = text_field(fields, key)? else {
        return Ok(None);
    };
    let ip = match text.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => ip,
        Ok(IpAddr::V4(_)) => return Err(bad_value(key, raw, "expected an IPv6 address, got IPv4")),
        Err(_) => return Err(bad_value(key, raw, "not an IPv6 address")),
    };
    Ok(Some(ip).filter(|ip| !ip.is_unspecified()))
}

/// Go's `net.ParseCIDR`: `<ip>/<decimal prefix length>` for either family, host bits masked.
pub fn parse_go_cidr(text: &str) -> Result<IpNet, String> {
    let (ip_text, len_text) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not a CIDR (expected <ip>/<prefix length>)"))?;
    let ip: IpAddr = ip_text
        .parse()
        .map_err(|_| format!("{ip_text:?} in {text:?} is not an IP address"))?;
    let max: u8 = if ip.is_ipv4() { 32 } else { 128 };
    let len = if !len_text.is_empty() && len_text.bytes().all(|b| b.is_ascii_digit()) {
        let trimmed = len_text.trim_start_matches('0');
        if trimmed.is_empty() {
            Some(0)
        } else {
            trimmed.parse::<u8>().ok()
        }
    } else {
        None
    };
    let len = len.filter(|l| *l <= max).ok_or_else(|| {
        format!("prefix length {len_text:?} in {text:?} is not a number between 0 and {max}")
    })?;
    IpNet::new(ip, len)
        .map(|n| n.trunc())
        .map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_backend;
