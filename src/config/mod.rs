//! Validated, typed daemon configuration built from the parsed flags (spec 1.2 validation, 11.1
//! step 1), and the one-line redacted summary logged at startup.
//!
//! Pure: no I/O, no logging. It checks what can be checked without the system (ranges, address
//! syntax); whether an interface or file exists is decided later by the daemon.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::Flags;

/// Accepted `--subnet-lease-renew-margin` values, in minutes (upstream: 1 <= m <= 1439).
pub const RENEW_MARGIN_MINUTES: std::ops::RangeInclusive<i64> = 1..=1439;

/// Largest `--iptables-resync` upstream can represent (Go `time.Duration` in nanoseconds).
pub const MAX_IPTABLES_RESYNC_SECONDS: i64 = i64::MAX / 1_000_000_000;

/// A flag value that cannot be used; every message names the flag and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("flag -subnet-lease-renew-margin is {value} minutes, outside the accepted range 1..=1439")]
    RenewMarginOutOfRange { value: i64 },
    #[error("flag -healthz-port is {value}, outside the accepted range 0..=65535")]
    HealthzPortOutOfRange { value: i64 },
    #[error("flag -iptables-resync is {value} seconds, outside the accepted range 1..={max}")]
    IptablesResyncOutOfRange { value: i64, max: i64 },
    #[error("invalid value {value:?} for flag -{flag}: not an {expected} address")]
    BadAddress {
        flag: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("flag -etcd-endpoints {value:?} names no endpoint (needed unless -kube-subnet-mgr is set)")]
    NoEtcdEndpoints { value: String },
}

impl ConfigError {
    /// Exit status for a configuration error (as upstream's renew-margin check).
    pub fn exit_code(&self) -> i32 {
        1
    }
}

/// How to reach etcd (spec 5.1).
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub keyfile: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub cafile: Option<PathBuf>,
    pub username: Option<String>,
    /// Never logged; `Debug` shows `<redacted>`.
    pub password: Option<String>,
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let endpoints: Vec<String> = self.endpoints.iter().map(|e| crate::redact::urls(e)).collect();
        f.debug_struct("EtcdConfig")
            .field("endpoints", &endpoints)
            .field("prefix", &self.prefix)
            .field("keyfile", &self.keyfile)
            .field("certfile", &self.certfile)
            .field("cafile", &self.cafile)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
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

impl Config {
    /// Validates and types the flags. Empty strings become `None`; the first problem found is
    /// returned (flags checked in spec 1.2 table order).
    pub fn from_flags(flags: &Flags) -> Result<Config, ConfigError> {
        let endpoints: Vec<String> = flags
            .etcd_endpoints
            .split(',')
            .filter(|endpoint| !endpoint.is_empty())
            .map(str::to_owned)
            .collect();
        if endpoints.is_empty() && !flags.kube_subnet_mgr {
            return Err(ConfigError::NoEtcdEndpoints {
                value: flags.etcd_endpoints.clone(),
            });
        }
        let iface_can_reach = parse_optional("iface-can-reach", &flags.iface_can_reach, "IP", |text| {
            text.parse::<IpAddr>().ok()
        })?;
        let public_ip = parse_optional("public-ip", &flags.public_ip, "IPv4", parse_ipv4)?;
        let public_ipv6 = parse_optional("public-ipv6", &flags.public_ipv6, "IPv6", |text| {
            text.parse::<Ipv6Addr>().ok()
        })?;
        let margin = flags.subnet_lease_renew_margin;
        if !RENEW_MARGIN_MINUTES.contains(&margin) {
            return Err(ConfigError::RenewMarginOutOfRange { value: margin });
        }
        let healthz_port =
            u16::try_from(flags.healthz_port).map_err(|_| ConfigError::HealthzPortOutOfRange {
                value: flags.healthz_port,
            })?;
        // Deviation: upstream accepts 0 (and negatives) and then busy-loops on the resync timer.
        let resync = flags.iptables_resync;
        if !(1..=MAX_IPTABLES_RESYNC_SECONDS).contains(&resync) {
            return Err(ConfigError::IptablesResyncOutOfRange {
                value: resync,
                max: MAX_IPTABLES_RESYNC_SECONDS,
            });
        }
        Ok(Config {
            etcd: EtcdConfig {
                endpoints,
                prefix: flags.etcd_prefix.clone(),
                keyfile: non_empty(&flags.etcd_keyfile).map(PathBuf::from),
                certfile: non_empty(&flags.etcd_certfile).map(PathBuf::from),
                cafile: non_empty(&flags.etcd_cafile).map(PathBuf::from),
                username: non_empty(&flags.etcd_username),
                password: non_empty(&flags.etcd_password),
            },
            iface: flags.iface.iter().filter(|i| !i.is_empty()).cloned().collect(),
            iface_regex: flags
                .iface_regex
                .iter()
                .filter(|r| !r.is_empty())
                .cloned()
                .collect(),
            iface_can_reach,
            subnet_file: PathBuf::from(&flags.subnet_file),
            public_ip,
            public_ipv6,
            // Both ranges were checked above, so the conversions cannot fail.
            subnet_lease_renew_margin: Duration::from_secs(margin.unsigned_abs() * 60),
            ip_masq: flags.ip_masq,
            ip_masq_fully_random_disable: flags.ip_masq_fully_random_disable,
            kube_subnet_mgr: flags.kube_subnet_mgr,
            kube_api_url: non_empty(&flags.kube_api_url),
            kube_annotation_prefix: flags.kube_annotation_prefix.clone(),
            kubeconfig_file: non_empty(&flags.kubeconfig_file).map(PathBuf::from),
            healthz_ip: flags.healthz_ip.clone(),
            healthz_port,
            iptables_resync: Duration::from_secs(resync.unsigned_abs()),
            iptables_forward_rules: flags.iptables_forward_rules,
            ip_blackhole_route: flags.ip_blackhole_route,
            net_config_path: PathBuf::from(&flags.net_config_path),
            set_node_network_unavailable: flags.set_node_network_unavailable,
            verbosity: flags.v,
        })
    }

    /// The effective configuration on one line, for the startup log (spec 11.1 step 1), in the
    /// spec 1.2 flag order. The etcd password is shown as `<redacted>` when set (upstream logs it
    /// in clear text: quirk 17).
    pub fn redacted_summary(&self) -> String {
        let etcd = &self.etcd;
        let mut line = String::new();
        let mut item = |name: &str, value: &dyn fmt::Display| {
            if !line.is_empty() {
                line.push(' ');
            }
            // Writing into a String cannot fail.
            let _ = write!(line, "{name}={value}");
        };
        item(
            "etcd-endpoints",
            &Quoted(&crate::redact::urls(&etcd.endpoints.join(","))),
        );
        item("etcd-prefix", &Quoted(&etcd.prefix));
        item("etcd-keyfile", &QuotedPath(&etcd.keyfile));
        item("etcd-certfile", &QuotedPath(&etcd.certfile));
        item("etcd-cafile", &QuotedPath(&etcd.cafile));
        item("etcd-username", &Quoted(etcd.username.as_deref().unwrap_or("")));
        item(
            "etcd-password",
            &if etcd.password.is_some() {
                "<redacted>"
            } else {
                "\"\""
            },
        );
        item("iface", &List(&self.iface));
        item("iface-regex", &List(&self.iface_regex));
        item("iface-can-reach", &OptionalAddr(self.iface_can_reach));
        item("subnet-file", &Quoted(&self.subnet_file.display().to_string()));
        item("public-ip", &OptionalAddr(self.public_ip.map(IpAddr::V4)));
        item("public-ipv6", &OptionalAddr(self.public_ipv6.map(IpAddr::V6)));
        item(
            "subnet-lease-renew-margin",
            &format!("{}m", self.subnet_lease_renew_margin.as_secs() / 60),
        );
        item("ip-masq", &self.ip_masq);
        item("ip-masq-fully-random-disable", &self.ip_masq_fully_random_disable);
        item("kube-subnet-mgr", &self.kube_subnet_mgr);
        item(
            "kube-api-url",
            &Quoted(self.kube_api_url.as_deref().unwrap_or("")),
        );
        item("kube-annotation-prefix", &Quoted(&self.kube_annotation_prefix));
        item("kubeconfig-file", &QuotedPath(&self.kubeconfig_file));
        item("healthz-ip", &Quoted(&self.healthz_ip));
        item("healthz-port", &self.healthz_port);
        item("iptables-resync", &format!("{}s", self.iptables_resync.as_secs()));
        item("iptables-forward-rules", &self.iptables_forward_rules);
        item("ip-blackhole-route", &self.ip_blackhole_route);
        item(
            "net-config-path",
            &Quoted(&self.net_config_path.display().to_string()),
        );
        item("set-node-network-unavailable", &self.set_node_network_unavailable);
        item("v", &self.verbosity);
        line
    }
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

fn parse_optional<T>(
    flag: &'static str,
    text: &str,
    expected: &'static str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, ConfigError> {
    if text.is_empty() {
        return Ok(None);
    }
    parse(text).map(Some).ok_or_else(|| ConfigError::BadAddress {
        flag,
        value: text.to_owned(),
        expected,
    })
}

/// An IPv4 address; like Go's `net.ParseIP(..).To4()`, an IPv4-mapped IPv6 form is accepted.
fn parse_ipv4(text: &str) -> Option<Ipv4Addr> {
    match text.parse::<IpAddr>().ok()? {
        IpAddr::V4(addr) => Some(addr),
        IpAddr::V6(addr) => addr.to_ipv4_mapped(),
    }
}

/// A string shown with quotes and escapes, so empty values and spaces are visible.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

struct QuotedPath<'a>(&'a Option<PathBuf>);

impl fmt::Display for QuotedPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(path) => write!(f, "{:?}", path.display().to_string()),
            None => f.write_str("\"\""),
        }
    }
}

struct List<'a>(&'a [String]);

impl fmt::Display for List<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

struct OptionalAddr(Option<IpAddr>);

impl fmt::Display for OptionalAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => write!(f, "{addr}"),
            None => f.write_str("\"\""),
        }
    }
}

#[cfg(test)]
mod tests;
