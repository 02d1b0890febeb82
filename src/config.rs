//! Validated, typed daemon configuration built from the command line (no I/O).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

/// How to reach etcd (spec 5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub keyfile: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub cafile: Option<PathBuf>,
    pub username: Option<String>,
    /// Never logged.
    pub password: Option<String>,
}

/// The daemon's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub etcd: EtcdConfig,
    pub iface: Vec<String>,
    pub iface_regex: Vec<String>,
    pub iface_can_reach: Option<IpAddr>,
    pub subnet_file: PathBuf,
    pub public_ip: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
    pub subnet_lease_renew_margin: Duration,
    pub ip_masq: bool,
    pub ip_masq_fully_random_disable: bool,
    pub kube_subnet_mgr: bool,
    pub kube_api_url: Option<String>,
    pub kube_annotation_prefix: String,
    pub kubeconfig_file: Option<PathBuf>,
    pub healthz_ip: String,
    /// 0 = no health server.
    pub healthz_port: u16,
    pub iptables_resync: Duration,
    pub iptables_forward_rules: bool,
    pub ip_blackhole_route: bool,
    pub net_config_path: PathBuf,
    pub set_node_network_unavailable: bool,
    pub verbosity: i32,
}
