//! Backend section of net-conf.json (spec 2.2): types, defaults, keys, errors.

use super::*;

fn conf(json: &str) -> NetConf {
    NetConf::parse(json).unwrap_or_else(|e| panic!("{json}: {e}"))
}

fn parse_err(json: &str) -> NetConfError {
    match NetConf::parse(json) {
        Ok(c) => panic!("{json}: expected an error, got {c:?}"),
        Err(e) => e,
    }
}

#[test]
fn backend_defaults() {
    let c = conf(r#"{"Network":"10.1.0.0/16"}"#);
    assert_eq!(c.backend_type, "udp");
    assert_eq!(c.backend, BackendConfig::Udp(UdpConfig { port: 8285 }));
    let c = conf(r#"{"Backend":{"Type":"VXLAN"}}"#);
    assert_eq!(c.backend_type, "vxlan");
    assert_eq!(
        c.backend,
        BackendConfig::Vxlan(VxlanConfig {
            vni: 1,
            ..VxlanConfig::default()
        })
    );
    assert_eq!(
        conf(r#"{"Backend":{"type":"Host-GW"}}"#).backend,
        BackendConfig::HostGw
    );
    assert_eq!(
        conf(r#"{"Backend":{"Type":"alloc"}}"#).backend,
        BackendConfig::Alloc
    );
    assert_eq!(
        conf(r#"{"Backend":{"Type":"udp"}}"#).backend,
        BackendConfig::Udp(UdpConfig { port: 8285 })
    );
    assert_eq!(
        conf(r#"{"Backend":{"Type":"ipip"}}"#).backend,
        BackendConfig::Ipip(IpipConfig::default())
    );
    assert_eq!(
        conf(r#"{"Backend":{"Type":"wireguard"}}"#).backend,
        BackendConfig::Wireguard(WireguardConfig {
            listen_port: 51820,
            listen_port_v6: 51821,
            mtu: 0,
            psk: None,
            persistent_keepalive: 0,
            mode: WireguardMode::Separate,
            implementation: WireguardImplementation::Auto,
        })
    );
    assert_eq!(
        conf(r#"{"Backend":{"Type":"extension"}}"#).backend,
        BackendConfig::Extension(ExtensionConfig::default())
    );
}

#[test]
fn backend_keys_are_decoded() {
    let c = conf(
        r#"{"Backend":{"Type":"vxlan","vni":4096,"PORT":4789,"MTU":1400,"GBP":true,"learning":true,"DirectRouting":true,"MacPrefix":"0E-2A"}}"#,
    );
    assert_eq!(
        c.backend,
        BackendConfig::Vxlan(VxlanConfig {
            vni: 4096,
            port: 4789,
            mtu: 1400,
            gbp: true,
            learning: true,
            direct_routing: true
        })
    );
    let c = conf(r#"{"Backend":{"Type":"vxlan","VNI":0}}"#);
    assert_eq!(
        c.backend,
        BackendConfig::Vxlan(VxlanConfig {
            vni: 0,
            ..VxlanConfig::default()
        })
    );
    assert_eq!(
        conf(r#"{"Backend":{"Type":"udp","Port":9000}}"#).backend,
        BackendConfig::Udp(UdpConfig { port: 9000 })
    );
    assert_eq!(
        conf(r#"{"Backend":{"Type":"ipip","directrouting":true}}"#).backend,
        BackendConfig::Ipip(IpipConfig {
            direct_routing: true,
            peer_filter: false
        })
    );
    assert_eq!(
        conf(r#"{"Backend":{"Type":"ipip","PeerFilter":true}}"#).backend,
        BackendConfig::Ipip(IpipConfig {
            direct_routing: false,
            peer_filter: true
        })
    );
    let psk = "Ft3ZJ1uXAfLCKWGXbqtsUGJ4qHsJyTjuS3u6hUJuwLc=";
    let c = conf(&format!(
        r#"{{"Backend":{{"Type":"WireGuard","ListenPort":5000,"ListenPortV6":5001,"MTU":1420,"PSK":"{psk}","PersistentKeepaliveInterval":25,"Mode":"auto"}}}}"#
    ));
    assert_eq!(c.backend_type, "wireguard");
    assert_eq!(
        c.backend,
        BackendConfig::Wireguard(WireguardConfig {
            listen_port: 5000,
            listen_port_v6: 5001,
            mtu: 1420,
            psk: Some(psk.to_string()),
            persistent_keepalive: 25,
            mode: WireguardMode::Auto,
            implementation: WireguardImplementation::Auto,
        })
    );
    for (text, mode) in [
        ("separate", WireguardMode::Separate),
        ("ipv4", WireguardMode::Ipv4),
        ("ipv6", WireguardMode::Ipv6),
    ] {
        let c = conf(&format!(
            r#"{{"Backend":{{"Type":"wireguard","Mode":"{text}"}}}}"#
        ));
        assert!(matches!(c.backend, BackendConfig::Wireguard(WireguardConfig { mode: m, .. }) if m == mode));
    }
    let c = conf(
        r#"{"Backend":{"Type":"extension","PreStartupCommand":"a","PostStartupCommand":"b","SubnetAddCommand":"c","subnetremovecommand":"d"}}"#,
    );
    assert_eq!(
        c.backend,
        BackendConfig::Extension(ExtensionConfig {
            pre_startup_command: "a".into(),
            post_startup_command: "b".into(),
            subnet_add_command: "c".into(),
            subnet_remove_command: "d".into(),
        })
    );
}

#[test]
fn backend_type_errors() {
    assert_eq!(
        parse_err(r#"{"Backend":{}}"#),
        NetConfError::UnknownBackend(String::new())
    );
    assert_eq!(
        parse_err(r#"{"Backend":{"Type":""}}"#),
        NetConfError::UnknownBackend(String::new())
    );
    assert_eq!(
        parse_err(r#"{"Backend":{"Type":"Foo"}}"#),
        NetConfError::UnknownBackend("Foo".into())
    );
    assert_eq!(
        parse_err(r#"{"Backend":{"Type":"IPsec"}}"#),
        NetConfError::UnsupportedBackend("IPsec".into())
    );
    assert_eq!(
        parse_err(r#"{"Backend":{"Type":"tencent-vpc"}}"#),
        NetConfError::UnsupportedBackend("tencent-vpc".into())
    );
    assert!(
        parse_err(r#"{"Backend":{"Type":"Foo"}}"#)
            .to_string()
            .contains("\"Foo\"")
    );
}

#[test]
fn backend_value_errors_name_backend_key_and_value() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{"Backend":{"Type":"vxlan","VNI":16777216}}"#,
            "(vxlan): key \"VNI\" has an invalid value 16777216: must be between 0 and 16777215",
        ),
        (
            r#"{"Backend":{"Type":"vxlan","VNI":-1}}"#,
            "key \"VNI\" has an invalid value -1",
        ),
        (
            r#"{"Backend":{"Type":"vxlan","VNI":"1"}}"#,
            "key \"VNI\" has an invalid value \"1\"",
        ),
        (
            r#"{"Backend":{"Type":"vxlan","Port":65536}}"#,
            "key \"Port\" has an invalid value 65536",
        ),
        (
            r#"{"Backend":{"Type":"vxlan","MTU":-5}}"#,
            "key \"MTU\" has an invalid value -5",
        ),
        (
            r#"{"Backend":{"Type":"vxlan","GBP":"yes"}}"#,
            "key \"GBP\" has an invalid value \"yes\"",
        ),
        (
            r#"{"Backend":{"Type":"udp","Port":1.5}}"#,
            "(udp): key \"Port\" has an invalid value 1.5",
        ),
        (
            r#"{"Backend":{"Type":"ipip","DirectRouting":1}}"#,
            "(ipip): key \"DirectRouting\" has an invalid value 1",
        ),
        (
            r#"{"Backend":{"Type":"ipip","PeerFilter":"on"}}"#,
            "(ipip): key \"PeerFilter\" has an invalid value \"on\"",
        ),
        (
            r#"{"Backend":{"Type":"wireguard","PersistentKeepaliveInterval":"25s"}}"#,
            "key \"PersistentKeepaliveInterval\" has an invalid value \"25s\"",
        ),
        (
            r#"{"Backend":{"Type":"wireguard","ListenPort":-1}}"#,
            "key \"ListenPort\" has an invalid value -1",
        ),
        (
            r#"{"Backend":{"Type":"wireguard","Mode":"Separate"}}"#,
            "no valid Mode configured: key \"Mode\" has value \"Separate\"",
        ),
        (
            r#"{"Backend":{"Type":"wireguard","Mode":""}}"#,
            "no valid Mode configured",
        ),
        (
            r#"{"Backend":{"Type":"wireguard","Implementation":"ebpf"}}"#,
            "key \"Implementation\" has value \"ebpf\"; expected one of \"auto\", \"kernel\", \"userspace\"",
        ),
        (
            r#"{"Backend":{"Type":"wireguard","PersistentKeepaliveInterval":65536}}"#,
            "key \"PersistentKeepaliveInterval\" has an invalid value 65536: must be between 0 and 65535",
        ),
        (
            r#"{"Backend":{"Type":"extension","SubnetAddCommand":["a"]}}"#,
            "(extension): key \"SubnetAddCommand\" has an invalid value [\"a\"]",
        ),
    ];
    for (json, needle) in cases {
        let text = parse_err(json).to_string();
        assert!(text.contains(needle), "{json}: {text}");
    }
}

#[test]
fn wireguard_psk_errors_never_print_the_value() {
    for psk in [
        "c2hvcnQ=",
        "not base64 at all!",
        "Ft3ZJ1uXAfLCKWGXbqtsUGJ4qHsJyTjuS3u6hUJuwLc",
        "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB",
    ] {
        let err = parse_err(&format!(r#"{{"Backend":{{"Type":"wireguard","PSK":"{psk}"}}}}"#));
        let text = err.to_string();
        assert!(text.contains("\"PSK\""), "{text}");
        assert!(!text.contains(psk), "{text}");
    }
    let err = parse_err(r#"{"Backend":{"Type":"wireguard","PSK":12345}}"#).to_string();
    assert!(err.contains("\"PSK\"") && !err.contains("12345"), "{err}");
    // An empty PSK is "no PSK", as upstream.
    let c = conf(r#"{"Backend":{"Type":"wireguard","PSK":""}}"#);
    assert!(matches!(
        c.backend,
        BackendConfig::Wireguard(WireguardConfig { psk: None, .. })
    ));
}

#[test]
fn base64_decoder_is_strict_std() {
    use super::backend::base64_std_decode as d;
    assert_eq!(d("").unwrap(), b"");
    assert_eq!(d("Zg==").unwrap(), b"f");
    assert_eq!(d("Zm8=").unwrap(), b"fo");
    assert_eq!(d("Zm9v").unwrap(), b"foo");
    assert_eq!(d("Zm9v\nYmFy").unwrap(), b"foobar");
    assert!(d("Zg").is_none());
    assert!(d("Zg==Zm9v").is_none());
    assert!(d("Z===").is_none());
    assert!(d("Zm9-").is_none());
    assert_eq!(
        d("Ft3ZJ1uXAfLCKWGXbqtsUGJ4qHsJyTjuS3u6hUJuwLc=").unwrap().len(),
        32
    );
}

#[test]
fn wireguard_implementation_key_selects_the_data_path() {
    for (text, want) in [
        ("auto", WireguardImplementation::Auto),
        ("kernel", WireguardImplementation::Kernel),
        ("userspace", WireguardImplementation::Userspace),
    ] {
        let c = conf(&format!(
            r#"{{"Backend":{{"Type":"wireguard","implementation":"{text}"}}}}"#
        ));
        assert!(
            matches!(c.backend, BackendConfig::Wireguard(WireguardConfig { implementation: i, .. }) if i == want),
            "{text}"
        );
    }
}

#[test]
fn wireguard_config_debug_hides_the_psk() {
    let psk = "Ft3ZJ1uXAfLCKWGXbqtsUGJ4qHsJyTjuS3u6hUJuwLc=";
    let c = conf(&format!(r#"{{"Backend":{{"Type":"wireguard","PSK":"{psk}"}}}}"#));
    let text = format!("{:?}", c);
    assert!(!text.contains(psk), "{text}");
    assert!(text.contains("<redacted>"), "{text}");
}
