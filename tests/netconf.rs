//! net-conf.json through the public API: upstream's reference values (spec 13.1), the documented
//! example configs, Go decoding semantics and the error texts that operators see.

use std::net::{Ipv4Addr, Ipv6Addr};

use flanneld::netconf::{BackendConfig, NetConf, NetConfError, UdpConfig, VxlanConfig, WireguardMode};

#[test]
fn upstream_config_test_values() {
    let c = NetConf::parse_and_check(r#"{ "network": "10.3.0.0/16" }"#).unwrap();
    assert_eq!(c.subnet_len, 24);
    assert_eq!(c.subnet_min, Some(Ipv4Addr::new(10, 3, 1, 0)));
    assert_eq!(c.subnet_max, Some(Ipv4Addr::new(10, 3, 255, 0)));

    let c = NetConf::parse_and_check(
        r#"{ "enableIPv6": true, "ipv6Network": "fc00::/48", "enableIPv4": false }"#,
    )
    .unwrap();
    assert_eq!(c.ipv6_subnet_len, 64);
    assert_eq!(
        c.ipv6_subnet_min.map(|ip| ip.to_string()).as_deref(),
        Some("fc00:0:0:1::")
    );
    assert_eq!(
        c.ipv6_subnet_max.map(|ip| ip.to_string()).as_deref(),
        Some("fc00:0:0:ffff::")
    );

    // The etcd suite's config: min/max kept verbatim.
    let c = NetConf::parse_and_check(
        r#"{ "Network": "10.3.0.0/16", "SubnetMin": "10.3.1.0", "SubnetMax": "10.3.25.0" }"#,
    )
    .unwrap();
    assert_eq!(
        (c.subnet_min, c.subnet_max),
        (
            Some(Ipv4Addr::new(10, 3, 1, 0)),
            Some(Ipv4Addr::new(10, 3, 25, 0))
        )
    );
}

#[test]
fn kube_flannel_manifest_config() {
    let json = "{\n  \"Network\": \"10.244.0.0/16\",\n  \"EnableNFTables\": false,\n  \"Backend\": {\n    \"Type\": \"vxlan\"\n  }\n}\n";
    let c = NetConf::parse(json).unwrap();
    assert_eq!(c.network, Some("10.244.0.0/16".parse().unwrap()));
    assert_eq!(c.backend_type, "vxlan");
    assert_eq!(
        c.backend,
        BackendConfig::Vxlan(VxlanConfig {
            vni: 1,
            ..Default::default()
        })
    );
    // Kube mode does not fill defaults.
    assert_eq!(c.subnet_len, 0);
    assert_eq!(c.subnet_min, None);
}

#[test]
fn e2e_dual_stack_config() {
    let c = NetConf::parse_and_check(
        r#"{ "Network": "10.42.0.0/16", "IPv6Network": "fd00:10:244::/56", "EnableIPv6": true, "Backend": { "Type": "wireguard" }, "EnableNFTables": true }"#,
    )
    .unwrap();
    assert!(c.enable_ipv4 && c.enable_ipv6 && c.enable_nftables);
    assert_eq!(
        c.ipv6_subnet_min,
        Some("fd00:10:244:1::".parse::<Ipv6Addr>().unwrap())
    );
    assert!(
        matches!(c.backend, BackendConfig::Wireguard(ref w) if w.mode == WireguardMode::Separate && w.listen_port == 51820)
    );
}

#[test]
fn no_backend_means_udp() {
    let c = NetConf::parse(r#"{"Network":"10.10.0.0/16"}"#).unwrap();
    assert_eq!(c.backend_type, "udp");
    assert_eq!(c.backend, BackendConfig::Udp(UdpConfig { port: 8285 }));
}

#[test]
fn every_backend_type_case_insensitively() {
    for (written, kind) in [
        ("VXLAN", "vxlan"),
        ("Host-Gw", "host-gw"),
        ("UDP", "udp"),
        ("IpIp", "ipip"),
        ("WireGuard", "wireguard"),
        ("Extension", "extension"),
        ("ALLOC", "alloc"),
    ] {
        let c = NetConf::parse(&format!(
            r#"{{"Network":"10.1.0.0/16","backend":{{"TYPE":"{written}"}}}}"#
        ))
        .unwrap();
        assert_eq!(c.backend_type, kind);
    }
}

#[test]
fn errors_read_well() {
    let e = NetConf::parse(r#"{"Network":"10.1.0.0/16","SubnetLen":"24"}"#).unwrap_err();
    assert_eq!(
        e.to_string(),
        "network config key \"SubnetLen\" has an invalid value \"24\": expected a number"
    );

    let e = NetConf::parse(r#"{"Backend":{"Type":"bogus"}}"#).unwrap_err();
    assert_eq!(e, NetConfError::UnknownBackend("bogus".into()));
    assert_eq!(
        e.to_string(),
        "network config Backend: unknown backend type \"bogus\""
    );

    let e = NetConf::parse_and_check(r#"{"Network":"10.1.0.0/16","SubnetMin":"10.1.0.7"}"#).unwrap_err();
    assert!(
        e.to_string().contains("SubnetMin") && e.to_string().contains("10.1.0.7"),
        "{e}"
    );

    let e = NetConf::parse_and_check(r#"{"EnableIPv4":false}"#).unwrap_err();
    assert!(e.to_string().contains("neither EnableIPv4 nor EnableIPv6"), "{e}");

    let e = NetConf::parse("{\"Network\": ").unwrap_err();
    assert!(matches!(e, NetConfError::Json(_)), "{e}");
}

#[test]
fn fuzz_like_inputs_never_panic() {
    let samples = [
        r#"{"Network":"255.255.255.255/32","SubnetLen":0}"#,
        r#"{"Network":"0.0.0.0/1","SubnetLen":30,"SubnetMin":"127.255.255.252"}"#,
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0/124"}"#,
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"8000::/1","IPv6SubnetLen":3}"#,
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"::1/128"}"#,
        r#"{"Network":"1.0.0.0/1","SubnetLen":3}"#,
        r#"{"Network":"10.0.0.0/8","SubnetLen":255,"IPv6SubnetLen":255}"#,
        r#"{"Backend":{"Type":"vxlan","VNI":9223372036854775808}}"#,
        r#"{"Backend":{"Type":"wireguard","PSK":"===="}}"#,
        r#"{"Backend":[]}"#,
        "{\"N\u{212A}twork\":1}",
    ];
    for json in samples {
        let _ = NetConf::parse_and_check(json);
    }
    let c = NetConf::parse_and_check(r#"{"Network":"1.0.0.0/1","SubnetLen":3}"#).unwrap();
    assert_eq!(
        (c.subnet_min, c.subnet_max),
        (Some(Ipv4Addr::new(32, 0, 0, 0)), Some(Ipv4Addr::new(96, 0, 0, 0)))
    );
}
