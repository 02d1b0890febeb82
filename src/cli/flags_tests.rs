//! Unit tests of the flag table: names, defaults, env names, redaction.

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
    for spec in FLAGS.iter().filter(|spec| spec.kind() != FlagKind::List) {
        let mut flags = Flags::default();
        let text = match (spec.kind(), spec.default) {
            (FlagKind::Bool, "") => "false",
            (FlagKind::Int, "") => "0",
            // klog rejects its own ":0" default text; it is only shown, never parsed.
            (FlagKind::Value, ":0") => continue,
            (_, text) => text,
        };
        spec.set(&mut flags, text)
            .unwrap_or_else(|e| panic!("{}: {e}", spec.name));
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
        let Some((_, value)) = samples.iter().find(|(kind, _)| *kind == spec.kind()) else {
            panic!("no sample for {:?}", spec.kind());
        };
        let value = match (spec.name, spec.kind(), spec.default) {
            ("vmodule", _, _) => "x=7",
            (_, FlagKind::Bool, "true") => "false",
            _ => value,
        };
        let mut flags = Flags::default();
        spec.set(&mut flags, value)
            .unwrap_or_else(|e| panic!("{}: {e}", spec.name));
        assert_ne!(flags, Flags::default(), "{} changed nothing", spec.name);
        assert!(
            !seen.contains(&format!("{flags:?}")),
            "{} sets the same field as another flag",
            spec.name
        );
        seen.push(format!("{flags:?}"));
    }
}

#[test]
fn env_names_follow_upstream_rule() {
    let env = |name| lookup(name).map(FlagSpec::env_name);
    assert_eq!(env("etcd-endpoints").as_deref(), Some("FLANNELD_ETCD_ENDPOINTS"));
    assert_eq!(env("ip-masq").as_deref(), Some("FLANNELD_IP_MASQ"));
    assert_eq!(
        env("kube-subnet-mgr").as_deref(),
        Some("FLANNELD_KUBE_SUBNET_MGR")
    );
    assert_eq!(
        env("iptables-forward-rules").as_deref(),
        Some("FLANNELD_IPTABLES_FORWARD_RULES")
    );
    assert_eq!(env("v").as_deref(), Some("FLANNELD_V"));
    assert_eq!(
        env("log_backtrace_at").as_deref(),
        Some("FLANNELD_LOG_BACKTRACE_AT")
    );
}

#[test]
fn debug_never_shows_the_password() {
    let flags = Flags {
        etcd_password: "hunter2".into(),
        ..Flags::default()
    };
    let shown = format!("{flags:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
}

#[test]
fn help_lists_every_flag_with_defaults() {
    let help = help_text();
    for spec in FLAGS {
        assert!(
            help.contains(&format!("  -{}", spec.name)),
            "{} missing from help",
            spec.name
        );
    }
    assert!(help.contains("(default \"/coreos.com/network\")"), "{help}");
    assert!(help.contains("(default 60)"), "{help}");
    assert!(help.contains("  -healthz-port int\n"), "{help}");
    assert!(help.contains("  -ip-masq\n"), "{help}");
}
