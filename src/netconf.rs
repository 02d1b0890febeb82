//! net-conf.json: parse with case-insensitive keys, compute defaults, validate (etcd mode), and
//! decode the typed per-backend configuration.
//!
//! Pure code: no I/O. Spec: flanneld-behaviour.md section 2.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

/// Every error names the key and the value that is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetConfError {
    #[error("network config is not valid JSON: {0}")]
    Json(String),
    #[error("network config key {key:?} has an invalid value {value}: {reason}")]
    BadValue { key: String, value: String, reason: String },
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WireguardMode {
    #[default]
    Separate,
    Auto,
    Ipv4,
    Ipv6,
}

#[derive(Debug, Clone, PartialEq, Eq)]
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
        todo!("{json}")
    }

    /// Upstream's CheckNetworkConfig (etcd mode): validate and fill SubnetLen/Min/Max.
    pub fn check_and_fill_defaults(&mut self) -> Result<(), NetConfError> {
        todo!()
    }

    /// `parse` followed by `check_and_fill_defaults` (etcd mode).
    pub fn parse_and_check(json: &str) -> Result<NetConf, NetConfError> {
        let mut conf = NetConf::parse(json)?;
        conf.check_and_fill_defaults()?;
        Ok(conf)
    }
}
