//! Unit tests of the config validation (spec 1.2, 1.3) and of its log summary.

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
