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
mod tests {
    use super::*;

    fn config(change: impl FnOnce(&mut Flags)) -> Result<Config, ConfigError> {
        let mut flags = Flags::default();
        change(&mut flags);
        Config::from_flags(&flags)
    }

    #[test]
    fn defaults_match_upstream() {
        let config = config(|_| {}).expect("defaults are valid");
        assert_eq!(
            config.etcd.endpoints,
            ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
        );
        assert_eq!(config.etcd.prefix, "/coreos.com/network");
        assert_eq!(config.etcd.keyfile, None);
        assert_eq!(config.etcd.password, None);
        assert_eq!(config.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(config.subnet_lease_renew_margin, Duration::from_secs(3600));
        assert_eq!(config.kube_annotation_prefix, "flannel.alpha.coreos.com");
        assert_eq!(config.healthz_ip, "0.0.0.0");
        assert_eq!(config.healthz_port, 0);
        assert_eq!(config.iptables_resync, Duration::from_secs(5));
        assert!(config.iptables_forward_rules && config.set_node_network_unavailable);
        assert!(!config.ip_masq && !config.kube_subnet_mgr && !config.ip_blackhole_route);
        assert_eq!(
            config.net_config_path,
            PathBuf::from("/etc/kube-flannel/net-conf.json")
        );
        assert_eq!(
            (config.public_ip, config.public_ipv6, config.iface_can_reach),
            (None, None, None)
        );
        assert_eq!(config.verbosity, 0);
    }

    #[test]
    fn values_are_typed() {
        let config = config(|f| {
            f.etcd_keyfile = "/k.pem".into();
            f.etcd_username = "root".into();
            f.etcd_password = "secret".into();
            f.public_ip = "192.0.2.7".into();
            f.public_ipv6 = "2001:db8::7".into();
            f.iface_can_reach = "198.51.100.1".into();
            f.subnet_lease_renew_margin = 1439;
            f.healthz_port = 65535;
            f.iptables_resync = 1;
            f.kube_api_url = "https://192.0.2.1:6443".into();
            f.v = 10;
        })
        .expect("valid");
        assert_eq!(config.etcd.keyfile, Some(PathBuf::from("/k.pem")));
        assert_eq!(config.etcd.username.as_deref(), Some("root"));
        assert_eq!(config.etcd.password.as_deref(), Some("secret"));
        assert_eq!(config.public_ip, Some(Ipv4Addr::new(192, 0, 2, 7)));
        assert_eq!(config.public_ipv6, "2001:db8::7".parse().ok());
        assert_eq!(config.iface_can_reach, "198.51.100.1".parse().ok());
        assert_eq!(config.subnet_lease_renew_margin, Duration::from_secs(1439 * 60));
        assert_eq!(config.healthz_port, 65535);
        assert_eq!(config.iptables_resync, Duration::from_secs(1));
        assert_eq!(config.kube_api_url.as_deref(), Some("https://192.0.2.1:6443"));
        assert_eq!(config.verbosity, 10);
    }

    #[test]
    fn endpoints_split_on_commas_dropping_empty_items() {
        let config = config(|f| f.etcd_endpoints = "https://a:2379,,https://b:2379,".into()).expect("valid");
        assert_eq!(config.etcd.endpoints, ["https://a:2379", "https://b:2379"]);
        assert_eq!(
            config_err(|f| f.etcd_endpoints = ",".into()),
            ConfigError::NoEtcdEndpoints { value: ",".into() }
        );
        let kube = config_ok(|f| {
            f.etcd_endpoints = String::new();
            f.kube_subnet_mgr = true;
        });
        assert!(kube.etcd.endpoints.is_empty());
    }

    fn config_err(change: impl FnOnce(&mut Flags)) -> ConfigError {
        config(change).expect_err("must be rejected")
    }

    fn config_ok(change: impl FnOnce(&mut Flags)) -> Config {
        config(change).expect("must be accepted")
    }

    #[test]
    fn renew_margin_range_is_1_to_1439() {
        for value in [0, -1, 1440, i64::MAX] {
            let err = config_err(|f| f.subnet_lease_renew_margin = value);
            assert_eq!(err, ConfigError::RenewMarginOutOfRange { value });
            assert!(err.to_string().contains(&value.to_string()) && err.to_string().contains("1..=1439"));
            assert_eq!(err.exit_code(), 1);
        }
        assert_eq!(
            config_ok(|f| f.subnet_lease_renew_margin = 1)
                .subnet_lease_renew_margin
                .as_secs(),
            60
        );
    }

    #[test]
    fn healthz_port_and_resync_ranges() {
        for value in [-1, 65536] {
            assert_eq!(
                config_err(|f| f.healthz_port = value),
                ConfigError::HealthzPortOutOfRange { value }
            );
        }
        for value in [0, -5, MAX_IPTABLES_RESYNC_SECONDS + 1] {
            let err = config_err(|f| f.iptables_resync = value);
            assert!(matches!(err, ConfigError::IptablesResyncOutOfRange { value: v, .. } if v == value));
        }
    }

    #[test]
    fn addresses_must_parse_with_the_right_family() {
        type Setter = fn(&mut Flags, String);
        let cases: [(&str, Setter); 3] = [
            ("public-ip", |f, v| f.public_ip = v),
            ("public-ipv6", |f, v| f.public_ipv6 = v),
            ("iface-can-reach", |f, v| f.iface_can_reach = v),
        ];
        for (flag, set) in cases {
            for bad in ["abc", "192.0.2.300", "192.0.2.1/24", " 192.0.2.1", "fe80::1%eth0"] {
                let err = config_err(|f| set(f, bad.into()));
                assert!(
                    matches!(&err, ConfigError::BadAddress { flag: f, value, .. } if *f == flag && value == bad)
                );
                assert!(
                    err.to_string().contains(flag) && err.to_string().contains(bad),
                    "{err}"
                );
            }
        }
        assert!(matches!(
            config_err(|f| f.public_ip = "2001:db8::1".into()),
            ConfigError::BadAddress { .. }
        ));
        assert!(matches!(
            config_err(|f| f.public_ipv6 = "192.0.2.1".into()),
            ConfigError::BadAddress { .. }
        ));
        assert_eq!(
            config_ok(|f| f.public_ip = "::ffff:192.0.2.9".into()).public_ip,
            Some(Ipv4Addr::new(192, 0, 2, 9))
        );
        assert_eq!(
            config_ok(|f| f.iface_can_reach = "2001:db8::1".into()).iface_can_reach,
            "2001:db8::1".parse().ok()
        );
    }

    #[test]
    fn empty_interface_selectors_are_dropped_as_upstream() {
        // Upstream treats `--iface=` like no --iface (the default route decides); manifests that
        // template `--iface=$(IFACE)` rely on that.
        assert_eq!(
            config_ok(|f| f.iface = vec!["eth0".into(), String::new()]).iface,
            ["eth0"]
        );
        assert!(
            config_ok(|f| f.iface_regex = vec![String::new()])
                .iface_regex
                .is_empty()
        );
        assert_eq!(
            config_ok(|f| f.iface = vec!["eth0,eth1".into()]).iface,
            ["eth0,eth1"]
        );
    }

    #[test]
    fn summary_redacts_the_password() {
        let with = config_ok(|f| f.etcd_password = "hunter2".into());
        let summary = with.redacted_summary();
        assert!(!summary.contains("hunter2"), "{summary}");
        assert!(summary.contains("etcd-password=<redacted>"), "{summary}");
        assert!(
            !format!("{with:?}").contains("hunter2"),
            "Debug must not show the password"
        );
        let without = config_ok(|_| {}).redacted_summary();
        assert!(without.contains("etcd-password=\"\""), "{without}");
        let in_url = config_ok(|f| f.etcd_endpoints = "https://root:hunter3@192.0.2.100:2379".into());
        let summary = in_url.redacted_summary();
        assert!(!summary.contains("hunter3"), "{summary}");
        assert!(
            summary.contains("https://<redacted>@192.0.2.100:2379"),
            "{summary}"
        );
        assert!(!format!("{in_url:?}").contains("hunter3"));
    }

    #[test]
    fn summary_lists_the_effective_values_in_flag_order() {
        let summary = config_ok(|f| {
            f.iface = vec!["ens38".into()];
            f.ip_masq = true;
            f.kube_subnet_mgr = true;
        })
        .redacted_summary();
        assert!(summary.starts_with(
            "etcd-endpoints=\"http://127.0.0.1:4001,http://127.0.0.1:2379\" etcd-prefix=\"/coreos.com/network\" "
        ));
        assert!(
            summary.contains(" iface=[\"ens38\"] iface-regex=[] "),
            "{summary}"
        );
        assert!(
            summary.contains(" subnet-lease-renew-margin=60m ip-masq=true "),
            "{summary}"
        );
        assert!(summary.contains(" kube-subnet-mgr=true "), "{summary}");
        assert!(
            summary.ends_with(" set-node-network-unavailable=true v=0"),
            "{summary}"
        );
        assert!(!summary.contains('\n'));
    }
}
