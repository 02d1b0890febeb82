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

/// Where a flag's value goes; the variant also fixes how the value is parsed, so a flag's kind and
/// its parser cannot disagree.
enum Slot {
    Bool(fn(&mut Flags) -> &mut bool),
    Int(fn(&mut Flags) -> &mut i64),
    Str(fn(&mut Flags) -> &mut String),
    List(fn(&mut Flags) -> &mut Vec<String>),
    Level(fn(&mut Flags) -> &mut i32),
    /// A klog value stored as given after a syntax check.
    Checked(fn(&mut Flags) -> &mut String, fn(&str) -> Result<(), ValueError>),
}

/// One entry of the flag table.
pub struct FlagSpec {
    pub name: &'static str,
    /// The default as text, shown in `--help` (empty = no default shown).
    pub default: &'static str,
    pub help: &'static str,
    slot: Slot,
}

impl FlagSpec {
    pub fn kind(&self) -> FlagKind {
        match self.slot {
            Slot::Bool(_) => FlagKind::Bool,
            Slot::Int(_) => FlagKind::Int,
            Slot::Str(_) => FlagKind::String,
            Slot::List(_) => FlagKind::List,
            Slot::Level(_) => FlagKind::Level,
            Slot::Checked(..) => FlagKind::Value,
        }
    }

    /// Parses `value` and stores it in `flags`; on error `flags` is unchanged.
    pub fn set(&self, flags: &mut Flags, value: &str) -> Result<(), ValueError> {
        match self.slot {
            Slot::Bool(field) => *field(flags) = parse_bool(value)?,
            Slot::Int(field) => *field(flags) = parse_go_int(value)?,
            Slot::Str(field) => *field(flags) = value.to_owned(),
            Slot::List(field) => field(flags).push(value.to_owned()),
            Slot::Level(field) => *field(flags) = parse_klog_level(value)?,
            Slot::Checked(field, check) => {
                check(value)?;
                *field(flags) = value.to_owned();
            }
        }
        Ok(())
    }

    /// `FLANNELD_` + upper-cased name with `-` and `.` turned into `_` (spec 1.3).
    pub fn env_name(&self) -> String {
        format!(
            "FLANNELD_{}",
            self.name.to_ascii_uppercase().replace(['-', '.'], "_")
        )
    }
}

impl fmt::Debug for FlagSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlagSpec")
            .field("name", &self.name)
            .field("kind", &self.kind())
            .finish()
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
        let password = if self.etcd_password.is_empty() {
            ""
        } else {
            "<redacted>"
        };
        f.debug_struct("Flags")
            .field("etcd_endpoints", &crate::redact::urls(&self.etcd_endpoints))
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

const fn flag(name: &'static str, default: &'static str, help: &'static str, slot: Slot) -> FlagSpec {
    FlagSpec {
        name,
        default,
        help,
        slot,
    }
}

use Slot::{Bool, Checked, Int, Level, List, Str};

/// Every flag, sorted by name (the order FLANNELD_* variables are applied in and `--help` lists).
#[rustfmt::skip]
pub static FLAGS: &[FlagSpec] = &[
    flag("etcd-cafile", "", "CA certificate file that verifies the etcd server (system roots when empty)",
        Str(|f| &mut f.etcd_cafile)),
    flag("etcd-certfile", "", "TLS client certificate file for etcd (TLS needs both this and -etcd-keyfile)",
        Str(|f| &mut f.etcd_certfile)),
    flag("etcd-endpoints", "http://127.0.0.1:4001,http://127.0.0.1:2379", "comma-separated list of etcd endpoints",
        Str(|f| &mut f.etcd_endpoints)),
    flag("etcd-keyfile", "", "TLS client key file for etcd (TLS needs both this and -etcd-certfile)",
        Str(|f| &mut f.etcd_keyfile)),
    flag("etcd-password", "", "password for etcd authentication (never logged)",
        Str(|f| &mut f.etcd_password)),
    flag("etcd-prefix", "/coreos.com/network", "etcd key prefix holding the network config and the subnet leases",
        Str(|f| &mut f.etcd_prefix)),
    flag("etcd-username", "", "user name for etcd authentication",
        Str(|f| &mut f.etcd_username)),
    flag("healthz-ip", "0.0.0.0", "address the health endpoints (/healthz, /readyz) listen on",
        Str(|f| &mut f.healthz_ip)),
    flag("healthz-port", "", "port of the health endpoints; 0 turns them off",
        Int(|f| &mut f.healthz_port)),
    flag("iface", "", "interface name or IP address to use for traffic between hosts; \
        repeat it to list fallbacks, tried in order",
        List(|f| &mut f.iface)),
    flag("iface-can-reach", "", "use the interface whose route reaches this IP address \
        (tried after -iface and -iface-regex)",
        Str(|f| &mut f.iface_can_reach)),
    flag("iface-regex", "", "regular expression matched against interface addresses, then names; \
        repeatable, tried after every -iface",
        List(|f| &mut f.iface_regex)),
    flag("ip-blackhole-route", "", "add a blackhole route for this node's subnet so traffic to unused \
        pod addresses is dropped",
        Bool(|f| &mut f.ip_blackhole_route)),
    flag("ip-masq", "", "masquerade traffic that leaves the flannel network",
        Bool(|f| &mut f.ip_masq)),
    flag("ip-masq-fully-random-disable", "", "do not add --random-fully to the masquerade rules",
        Bool(|f| &mut f.ip_masq_fully_random_disable)),
    flag("iptables-forward-rules", "true", "accept forwarded traffic of the flannel network in the FORWARD chain",
        Bool(|f| &mut f.iptables_forward_rules)),
    flag("iptables-resync", "5", "seconds between checks that the firewall rules are still in place",
        Int(|f| &mut f.iptables_resync)),
    flag("kube-annotation-prefix", "flannel.alpha.coreos.com", "prefix of the node annotations flannel reads \
        and writes",
        Str(|f| &mut f.kube_annotation_prefix)),
    flag("kube-api-url", "", "Kubernetes API server URL; overrides the server of the kubeconfig \
        (in-cluster config when both are empty)",
        Str(|f| &mut f.kube_api_url)),
    flag("kube-subnet-mgr", "", "take this node's subnet from the Kubernetes API (node podCIDR) instead of etcd",
        Bool(|f| &mut f.kube_subnet_mgr)),
    flag("kubeconfig-file", "", "kubeconfig file for the Kubernetes API (in-cluster config when empty; \
        KUBECONFIG is not read)",
        Str(|f| &mut f.kubeconfig_file)),
    flag("log_backtrace_at", ":0", "accepted for compatibility with klog (file.go:N); has no effect",
        Checked(|f| &mut f.log_backtrace_at, check_trace_location)),
    flag("net-config-path", "/etc/kube-flannel/net-conf.json", "network configuration file read in \
        Kubernetes mode",
        Str(|f| &mut f.net_config_path)),
    flag("public-ip", "", "IPv4 address other nodes use to reach this node (default: the address of the \
        chosen interface)",
        Str(|f| &mut f.public_ip)),
    flag("public-ipv6", "", "IPv6 address other nodes use to reach this node (default: the IPv6 address \
        of the chosen interface)",
        Str(|f| &mut f.public_ipv6)),
    flag("set-node-network-unavailable", "true", "in Kubernetes mode, clear the node's NetworkUnavailable \
        condition once the network is up",
        Bool(|f| &mut f.set_node_network_unavailable)),
    flag("subnet-file", "/run/flannel/subnet.env", "file that receives this node's subnet settings \
        (FLANNEL_NETWORK, FLANNEL_SUBNET, ...)",
        Str(|f| &mut f.subnet_file)),
    flag("subnet-lease-renew-margin", "60", "renew the subnet lease this many minutes before it expires \
        (1 to 1439)",
        Int(|f| &mut f.subnet_lease_renew_margin)),
    flag("v", "0", "log verbosity: 0 info, 1 to 4 debug, 5 and more trace (RUST_LOG, when set, takes \
        precedence)",
        Level(|f| &mut f.v)),
    flag("version", "", "print the version to stderr and exit",
        Bool(|f| &mut f.version)),
    flag("vmodule", "", "accepted for compatibility with klog (pattern=N,...); has no effect",
        Checked(|f| &mut f.vmodule, check_vmodule)),
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
        let type_word = spec.kind().help_type();
        if type_word.is_empty() {
            text.push_str(&format!("  -{}\n", spec.name));
        } else {
            text.push_str(&format!("  -{} {}\n", spec.name, type_word));
        }
        let default = match (spec.kind(), spec.default) {
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
#[path = "flags_tests.rs"]
mod tests;
