//! The flag table: every upstream flanneld flag with its name, kind, default and our own help text,
//! the raw [`Flags`] values they fill, and the `--help` text rendered from the table.
//!
//! One table drives the parser, the FLANNELD_* environment and the help, so they cannot disagree.
//! No validation beyond value syntax lives here (ranges are `config`'s job). Spec: section 1.2.

use std::fmt;

use super::goparse::{
    ValueError, check_trace_location, check_vmodule, parse_bool, parse_go_int, parse_klog_level,
};

/// How a flag takes its value (decides `-name value` vs bool syntax and the help type word).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    /// Go bool: `-name` means true; a value only as `-name=value`.
    Bool,
    /// Go int (64-bit, base 0).
    Int,
    String,
    /// Repeatable: each occurrence appends one entry.
    List,
    /// klog's `-v` level (decimal 32-bit).
    Level,
    /// klog's `-vmodule` / `-log_backtrace_at`: syntax-checked, otherwise ignored.
    Value,
}

impl FlagKind {
    /// The type word shown in `--help` (as Go's PrintDefaults: none for bools).
    fn help_type(self) -> &'static str {
        match self {
            FlagKind::Bool => "",
            FlagKind::Int => "int",
            FlagKind::String => "string",
            FlagKind::List | FlagKind::Level | FlagKind::Value => "value",
        }
    }
}

/// One entry of the flag table.
pub struct FlagSpec {
    pub name: &'static str,
    pub kind: FlagKind,
    /// The default as text, shown in `--help` (empty = no default shown).
    pub default: &'static str,
    pub help: &'static str,
    set: fn(&mut Flags, &str) -> Result<(), ValueError>,
}

impl FlagSpec {
    /// Parse `value` and store it in `flags`; on error `flags` is unchanged.
    pub fn set(&self, flags: &mut Flags, value: &str) -> Result<(), ValueError> {
        (self.set)(flags, value)
    }

    /// `FLANNELD_` + upper-cased name with `-` and `.` turned into `_` (spec 1.3).
    pub fn env_name(&self) -> String {
        format!("FLANNELD_{}", self.name.to_ascii_uppercase().replace(['-', '.'], "_"))
    }
}

impl fmt::Debug for FlagSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlagSpec").field("name", &self.name).field("kind", &self.kind).finish()
    }
}

/// Raw flag values after the command line and FLANNELD_* environment, before validation.
/// Field names are the flag names with `-` turned into `_`.
#[derive(Clone, PartialEq, Eq)]
pub struct Flags {
    pub etcd_endpoints: String,
    pub etcd_prefix: String,
    pub etcd_keyfile: String,
    pub etcd_certfile: String,
    pub etcd_cafile: String,
    pub etcd_username: String,
    /// Never shown by `Debug`.
    pub etcd_password: String,
    pub iface: Vec<String>,
    pub iface_regex: Vec<String>,
    pub iface_can_reach: String,
    pub subnet_file: String,
    pub public_ip: String,
    pub public_ipv6: String,
    pub subnet_lease_renew_margin: i64,
    pub ip_masq: bool,
    pub ip_masq_fully_random_disable: bool,
    pub kube_subnet_mgr: bool,
    pub kube_api_url: String,
    pub kube_annotation_prefix: String,
    pub kubeconfig_file: String,
    pub version: bool,
    pub healthz_ip: String,
    pub healthz_port: i64,
    pub iptables_resync: i64,
    pub iptables_forward_rules: bool,
    pub ip_blackhole_route: bool,
    pub net_config_path: String,
    pub set_node_network_unavailable: bool,
    pub v: i32,
    pub vmodule: String,
    pub log_backtrace_at: String,
}

impl Default for Flags {
    /// Upstream's defaults (spec 1.2).
    fn default() -> Self {
        Flags {
            etcd_endpoints: "http://127.0.0.1:4001,http://127.0.0.1:2379".into(),
            etcd_prefix: "/coreos.com/network".into(),
            etcd_keyfile: String::new(),
            etcd_certfile: String::new(),
            etcd_cafile: String::new(),
            etcd_username: String::new(),
            etcd_password: String::new(),
            iface: Vec::new(),
            iface_regex: Vec::new(),
            iface_can_reach: String::new(),
            subnet_file: "/run/flannel/subnet.env".into(),
            public_ip: String::new(),
            public_ipv6: String::new(),
            subnet_lease_renew_margin: 60,
            ip_masq: false,
            ip_masq_fully_random_disable: false,
            kube_subnet_mgr: false,
            kube_api_url: String::new(),
            kube_annotation_prefix: "flannel.alpha.coreos.com".into(),
            kubeconfig_file: String::new(),
            version: false,
            healthz_ip: "0.0.0.0".into(),
            healthz_port: 0,
            iptables_resync: 5,
            iptables_forward_rules: true,
            ip_blackhole_route: false,
            net_config_path: "/etc/kube-flannel/net-conf.json".into(),
            set_node_network_unavailable: true,
            v: 0,
            vmodule: String::new(),
            log_backtrace_at: ":0".into(),
        }
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let password = if self.etcd_password.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("Flags")
            .field("etcd_endpoints", &self.etcd_endpoints)
            .field("etcd_prefix", &self.etcd_prefix)
            .field("etcd_keyfile", &self.etcd_keyfile)
            .field("etcd_certfile", &self.etcd_certfile)
            .field("etcd_cafile", &self.etcd_cafile)
            .field("etcd_username", &self.etcd_username)
            .field("etcd_password", &password)
            .field("iface", &self.iface)
            .field("iface_regex", &self.iface_regex)
            .field("iface_can_reach", &self.iface_can_reach)
            .field("subnet_file", &self.subnet_file)
            .field("public_ip", &self.public_ip)
            .field("public_ipv6", &self.public_ipv6)
            .field("subnet_lease_renew_margin", &self.subnet_lease_renew_margin)
            .field("ip_masq", &self.ip_masq)
            .field("ip_masq_fully_random_disable", &self.ip_masq_fully_random_disable)
            .field("kube_subnet_mgr", &self.kube_subnet_mgr)
            .field("kube_api_url", &self.kube_api_url)
            .field("kube_annotation_prefix", &self.kube_annotation_prefix)
            .field("kubeconfig_file", &self.kubeconfig_file)
            .field("version", &self.version)
            .field("healthz_ip", &self.healthz_ip)
            .field("healthz_port", &self.healthz_port)
            .field("iptables_resync", &self.iptables_resync)
            .field("iptables_forward_rules", &self.iptables_forward_rules)
            .field("ip_blackhole_route", &self.ip_blackhole_route)
            .field("net_config_path", &self.net_config_path)
            .field("set_node_network_unavailable", &self.set_node_network_unavailable)
            .field("v", &self.v)
            .field("vmodule", &self.vmodule)
            .field("log_backtrace_at", &self.log_backtrace_at)
            .finish()
    }
}

/// Builds a table entry; the setter is a plain function so the table can be a `static`.
const fn flag(
    name: &'static str,
    kind: FlagKind,
    default: &'static str,
    help: &'static str,
    set: fn(&mut Flags, &str) -> Result<(), ValueError>,
) -> FlagSpec {
    FlagSpec { name, kind, default, help, set }
}

use FlagKind::{Bool, Int, Level, List, String as Str, Value};

/// Every flag, sorted by name (the order FLANNELD_* variables are applied in and `--help` lists).
pub static FLAGS: &[FlagSpec] = &[
    flag("etcd-cafile", Str, "", "CA certificate file that verifies the etcd server (system roots when empty)", |f, v| {
        f.etcd_cafile = v.into();
        Ok(())
    }),
    flag("etcd-certfile", Str, "", "TLS client certificate file for etcd (TLS needs both this and -etcd-keyfile)", |f, v| {
        f.etcd_certfile = v.into();
        Ok(())
    }),
    flag(
        "etcd-endpoints",
        Str,
        "http://127.0.0.1:4001,http://127.0.0.1:2379",
        "comma-separated list of etcd endpoints",
        |f, v| {
            f.etcd_endpoints = v.into();
            Ok(())
        },
    ),
    flag("etcd-keyfile", Str, "", "TLS client key file for etcd (TLS needs both this and -etcd-certfile)", |f, v| {
        f.etcd_keyfile = v.into();
        Ok(())
    }),
    flag("etcd-password", Str, "", "password for etcd authentication (never logged)", |f, v| {
        f.etcd_password = v.into();
        Ok(())
    }),
    flag(
        "etcd-prefix",
        Str,
        "/coreos.com/network",
        "etcd key prefix holding the network config and the subnet leases",
        |f, v| {
            f.etcd_prefix = v.into();
            Ok(())
        },
    ),
    flag("etcd-username", Str, "", "user name for etcd authentication", |f, v| {
        f.etcd_username = v.into();
        Ok(())
    }),
    flag(
        "healthz-ip",
        Str,
        "0.0.0.0",
        "address the health endpoints (/healthz, /readyz) listen on",
        |f, v| {
            f.healthz_ip = v.into();
            Ok(())
        },
    ),
    flag("healthz-port", Int, "", "port of the health endpoints; 0 turns them off", |f, v| {
        f.healthz_port = parse_go_int(v)?;
        Ok(())
    }),
    flag(
        "iface",
        List,
        "",
        "interface name or IP address to use for traffic between hosts; repeat it to list fallbacks, tried in order",
        |f, v| {
            f.iface.push(v.into());
            Ok(())
        },
    ),
    flag(
        "iface-can-reach",
        Str,
        "",
        "use the interface whose route reaches this IP address (tried after -iface and -iface-regex)",
        |f, v| {
            f.iface_can_reach = v.into();
            Ok(())
        },
    ),
    flag(
        "iface-regex",
        List,
        "",
        "regular expression matched against interface addresses, then names; repeatable, tried after every -iface",
        |f, v| {
            f.iface_regex.push(v.into());
            Ok(())
        },
    ),
    flag(
        "ip-blackhole-route",
        Bool,
        "",
        "add a blackhole route for this node's subnet so traffic to unused pod addresses is dropped",
        |f, v| {
            f.ip_blackhole_route = parse_bool(v)?;
            Ok(())
        },
    ),
    flag("ip-masq", Bool, "", "masquerade traffic that leaves the flannel network", |f, v| {
        f.ip_masq = parse_bool(v)?;
        Ok(())
    }),
    flag(
        "ip-masq-fully-random-disable",
        Bool,
        "",
        "do not add --random-fully to the masquerade rules",
        |f, v| {
            f.ip_masq_fully_random_disable = parse_bool(v)?;
            Ok(())
        },
    ),
    flag(
        "iptables-forward-rules",
        Bool,
        "true",
        "accept forwarded traffic of the flannel network in the FORWARD chain",
        |f, v| {
            f.iptables_forward_rules = parse_bool(v)?;
            Ok(())
        },
    ),
    flag(
        "iptables-resync",
        Int,
        "5",
        "seconds between checks that the firewall rules are still in place",
        |f, v| {
            f.iptables_resync = parse_go_int(v)?;
            Ok(())
        },
    ),
    flag(
        "kube-annotation-prefix",
        Str,
        "flannel.alpha.coreos.com",
        "prefix of the node annotations flannel reads and writes",
        |f, v| {
            f.kube_annotation_prefix = v.into();
            Ok(())
        },
    ),
    flag(
        "kube-api-url",
        Str,
        "",
        "Kubernetes API server URL; overrides the server of the kubeconfig (in-cluster config when both are empty)",
        |f, v| {
            f.kube_api_url = v.into();
            Ok(())
        },
    ),
    flag(
        "kube-subnet-mgr",
        Bool,
        "",
        "take this node's subnet from the Kubernetes API (node podCIDR) instead of etcd",
        |f, v| {
            f.kube_subnet_mgr = parse_bool(v)?;
            Ok(())
        },
    ),
    flag(
        "kubeconfig-file",
        Str,
        "",
        "kubeconfig file for the Kubernetes API (in-cluster config when empty; KUBECONFIG is not read)",
        |f, v| {
            f.kubeconfig_file = v.into();
            Ok(())
        },
    ),
    flag(
        "log_backtrace_at",
        Value,
        ":0",
        "accepted for compatibility with klog (file.go:N); has no effect",
        |f, v| {
            check_trace_location(v)?;
            f.log_backtrace_at = v.into();
            Ok(())
        },
    ),
    flag(
        "net-config-path",
        Str,
        "/etc/kube-flannel/net-conf.json",
        "network configuration file read in Kubernetes mode",
        |f, v| {
            f.net_config_path = v.into();
            Ok(())
        },
    ),
    flag(
        "public-ip",
        Str,
        "",
        "IPv4 address other nodes use to reach this node (default: the address of the chosen interface)",
        |f, v| {
            f.public_ip = v.into();
            Ok(())
        },
    ),
    flag(
        "public-ipv6",
        Str,
        "",
        "IPv6 address other nodes use to reach this node (default: the IPv6 address of the chosen interface)",
        |f, v| {
            f.public_ipv6 = v.into();
            Ok(())
        },
    ),
    flag(
        "set-node-network-unavailable",
        Bool,
        "true",
        "in Kubernetes mode, clear the node's NetworkUnavailable condition once the network is up",
        |f, v| {
            f.set_node_network_unavailable = parse_bool(v)?;
            Ok(())
        },
    ),
    flag(
        "subnet-file",
        Str,
        "/run/flannel/subnet.env",
        "file that receives this node's subnet settings (FLANNEL_NETWORK, FLANNEL_SUBNET, ...)",
        |f, v| {
            f.subnet_file = v.into();
            Ok(())
        },
    ),
    flag(
        "subnet-lease-renew-margin",
        Int,
        "60",
        "renew the subnet lease this many minutes before it expires (1 to 1439)",
        |f, v| {
            f.subnet_lease_renew_margin = parse_go_int(v)?;
            Ok(())
        },
    ),
    flag(
        "v",
        Level,
        "0",
        "log verbosity: 0 info, 1 to 4 debug, 5 and more trace (RUST_LOG, when set, takes precedence)",
        |f, v| {
            f.v = parse_klog_level(v)?;
            Ok(())
        },
    ),
    flag("version", Bool, "", "print the version to stderr and exit", |f, v| {
        f.version = parse_bool(v)?;
        Ok(())
    }),
    flag(
        "vmodule",
        Value,
        "",
        "accepted for compatibility with klog (pattern=N,...); has no effect",
        |f, v| {
            check_vmodule(v)?;
            f.vmodule = v.into();
            Ok(())
        },
    ),
];

/// The table entry for `name` (without dashes), if it is a flag.
pub fn lookup(name: &str) -> Option<&'static FlagSpec> {
    FLAGS.iter().find(|spec| spec.name == name)
}

/// Our own `--help` text, rendered from the table.
pub fn help_text() -> String {
    let mut text = String::from(
        "Usage: flanneld [OPTION]...\n\
         \n\
         Runs the flannel overlay network on this node: takes a subnet lease from etcd or from the\n\
         Kubernetes API, programs the chosen backend and writes the subnet file for the CNI plugin.\n\
         \n\
         Options take one or two dashes and a value as -name=value or -name value;\n\
         booleans as -name or -name=false. Options stop at the first non-option argument or at --.\n\
         Each option can also be set with FLANNELD_<NAME> (upper case, '-' as '_'), for example\n\
         FLANNELD_IP_MASQ=true; an option given on the command line wins over its variable.\n\
         \n",
    );
    for spec in FLAGS {
        let type_word = spec.kind.help_type();
        if type_word.is_empty() {
            text.push_str(&format!("  -{}\n", spec.name));
        } else {
            text.push_str(&format!("  -{} {}\n", spec.name, type_word));
        }
        let default = match (spec.kind, spec.default) {
            (_, "") => String::new(),
            (FlagKind::String, value) => format!(" (default {value:?})"),
            (_, value) => format!(" (default {value})"),
        };
        text.push_str(&format!("        {}{}\n", spec.help, default));
    }
    text.push_str("  -h, -help\n        show this help and exit\n");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_unique() {
        for pair in FLAGS.windows(2) {
            if let [a, b] = pair {
                assert!(a.name < b.name, "{} must sort before {}", a.name, b.name);
            }
        }
    }

    #[test]
    fn table_has_exactly_the_upstream_flags() {
        let names: Vec<&str> = FLAGS.iter().map(|spec| spec.name).collect();
        let mut upstream = vec![
            "etcd-endpoints",
            "etcd-prefix",
            "etcd-keyfile",
            "etcd-certfile",
            "etcd-cafile",
            "etcd-username",
            "etcd-password",
            "iface",
            "iface-regex",
            "iface-can-reach",
            "subnet-file",
            "public-ip",
            "public-ipv6",
            "subnet-lease-renew-margin",
            "ip-masq",
            "ip-masq-fully-random-disable",
            "kube-subnet-mgr",
            "kube-api-url",
            "kube-annotation-prefix",
            "kubeconfig-file",
            "version",
            "healthz-ip",
            "healthz-port",
            "iptables-resync",
            "iptables-forward-rules",
            "ip-blackhole-route",
            "net-config-path",
            "set-node-network-unavailable",
            "v",
            "vmodule",
            "log_backtrace_at",
        ];
        upstream.sort_unstable();
        assert_eq!(names, upstream);
    }

    #[test]
    fn table_defaults_agree_with_flags_default() {
        // Setting each scalar flag to its documented default leaves Flags::default() unchanged.
        for spec in FLAGS.iter().filter(|spec| spec.kind != FlagKind::List) {
            let mut flags = Flags::default();
            let text = match (spec.kind, spec.default) {
                (FlagKind::Bool, "") => "false",
                (FlagKind::Int, "") => "0",
                // klog rejects its own ":0" default text; it is only shown, never parsed.
                (FlagKind::Value, ":0") => continue,
                (_, text) => text,
            };
            spec.set(&mut flags, text).unwrap_or_else(|e| panic!("{}: {e}", spec.name));
            assert_eq!(flags, Flags::default(), "{}", spec.name);
        }
    }

    #[test]
    fn every_flag_sets_its_own_field() {
        let samples = [
            (FlagKind::Bool, "true"),
            (FlagKind::Int, "0x7"),
            (FlagKind::String, "sample"),
            (FlagKind::List, "sample"),
            (FlagKind::Level, "7"),
            (FlagKind::Value, "x.go:7"),
        ];
        let mut seen = Vec::new();
        for spec in FLAGS {
            let Some((_, value)) = samples.iter().find(|(kind, _)| *kind == spec.kind) else {
                panic!("no sample for {:?}", spec.kind);
            };
            let value = match (spec.name, spec.kind, spec.default) {
                ("vmodule", _, _) => "x=7",
                (_, FlagKind::Bool, "true") => "false",
                _ => value,
            };
            let mut flags = Flags::default();
            spec.set(&mut flags, value).unwrap_or_else(|e| panic!("{}: {e}", spec.name));
            assert_ne!(flags, Flags::default(), "{} changed nothing", spec.name);
            assert!(!seen.contains(&format!("{flags:?}")), "{} sets the same field as another flag", spec.name);
            seen.push(format!("{flags:?}"));
        }
    }

    #[test]
    fn env_names_follow_upstream_rule() {
        let env = |name| lookup(name).map(FlagSpec::env_name);
        assert_eq!(env("etcd-endpoints").as_deref(), Some("FLANNELD_ETCD_ENDPOINTS"));
        assert_eq!(env("ip-masq").as_deref(), Some("FLANNELD_IP_MASQ"));
        assert_eq!(env("kube-subnet-mgr").as_deref(), Some("FLANNELD_KUBE_SUBNET_MGR"));
        assert_eq!(env("iptables-forward-rules").as_deref(), Some("FLANNELD_IPTABLES_FORWARD_RULES"));
        assert_eq!(env("v").as_deref(), Some("FLANNELD_V"));
        assert_eq!(env("log_backtrace_at").as_deref(), Some("FLANNELD_LOG_BACKTRACE_AT"));
    }

    #[test]
    fn debug_never_shows_the_password() {
        let flags = Flags { etcd_password: "hunter2".into(), ..Flags::default() };
        let shown = format!("{flags:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn help_lists_every_flag_with_defaults() {
        let help = help_text();
        for spec in FLAGS {
            assert!(help.contains(&format!("  -{}", spec.name)), "{} missing from help", spec.name);
        }
        assert!(help.contains("(default \"/coreos.com/network\")"), "{help}");
        assert!(help.contains("(default 60)"), "{help}");
        assert!(help.contains("  -healthz-port int\n"), "{help}");
        assert!(help.contains("  -ip-masq\n"), "{help}");
    }
}
