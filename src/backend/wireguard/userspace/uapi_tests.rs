use proptest::prelude::*;

use super::*;

const K1: &str = "e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a";
const K2: &str = "b85996fecc9c7f1fc6d2572a76eba76c2a8b4f1e56e9a67e2c5c2e5f9b3f7c14";

/// The example of the cross-platform UAPI documentation (trimmed): what `wg set` sends.
#[test]
fn parses_a_wg_set_request() {
    let body = format!(
        "private_key={K1}\nlisten_port=12912\nreplace_peers=true\npublic_key={K2}\npreshared_key=188515093e952f5f22e865cef3012e72f8b5f0b598ac0309d5dacce3b70fcf52\nreplace_allowed_ips=true\nallowed_ip=192.168.4.4/32\nendpoint=[abcd:23::33]:51820\npublic_key={K1}\nupdate_only=true\nendpoint=182.122.22.19:3233\npersistent_keepalive_interval=111\nreplace_allowed_ips=true\nallowed_ip=192.168.4.6/32\nallowed_ip=192.168.4.10/24\nprotocol_version=1\npublic_key={K2}\nremove=true\n\n"
    );
    let u = parse_set(&body).unwrap();
    assert_eq!(
        u.private_key,
        Some(Some(PrivateKey::from_raw(parse_hex_key(K1).unwrap())))
    );
    assert_eq!(u.listen_port, Some(12912));
    assert!(u.replace_peers);
    assert_eq!(u.peers.len(), 3);
    assert!(u.peers[0].preshared_key.unwrap().is_some());
    assert!(u.peers[0].replace_allowed_ips);
    assert_eq!(
        u.peers[0].allowed_ips,
        vec!["192.168.4.4/32".parse::<IpNet>().unwrap()]
    );
    assert_eq!(u.peers[0].endpoint.unwrap().port(), 51820);
    assert!(u.peers[1].update_only);
    assert_eq!(u.peers[1].persistent_keepalive, Some(111));
    // Host bits are cleared, as the kernel does.
    assert_eq!(
        u.peers[1].allowed_ips[1],
        "192.168.4.0/24".parse::<IpNet>().unwrap()
    );
    assert!(u.peers[2].remove);
}

#[test]
fn errors_name_the_key_and_line_but_never_a_key_value() {
    for (body, line, key) in [
        ("listen_port=x\n".to_string(), 1, "listen_port"),
        (format!("private_key={}\n", &K1[..60]), 1, "private_key"),
        ("endpoint=1.2.3.4:5\n".to_string(), 1, "endpoint"),
        (
            format!("public_key={K2}\nallowed_ip=300.1.1.1/8\n"),
            2,
            "allowed_ip",
        ),
        (
            format!("public_key={K2}\nprotocol_version=2\n"),
            2,
            "protocol_version",
        ),
        ("bogus=1\n".to_string(), 1, "bogus"),
        ("no equals sign\n".to_string(), 1, "no equals sign"),
        (format!("public_key={K2}\nremove=yes\n"), 2, "remove"),
    ] {
        let e = parse_set(&body).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (line, key), "{body}");
        assert!(!e.to_string().contains(&K1[..60]), "{e}");
    }
}

#[test]
fn get_output_is_what_wg_show_parses() {
    let info = DeviceInfo {
        private_key: Some(PrivateKey::from_raw([1; 32])),
        listen_port: 51820,
        peers: vec![PeerInfo {
            public_key: WgKey([2; 32]),
            preshared_key: None,
            endpoint: Some("192.0.2.2:51820".parse().unwrap()),
            persistent_keepalive: 25,
            allowed_ips: vec!["198.18.2.0/24".parse().unwrap()],
            last_handshake: Some(SystemTime::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 5)),
            rx_bytes: 3,
            tx_bytes: 4,
        }],
        ..DeviceInfo::default()
    };
    let text = format_get(&info);
    assert_eq!(
        text,
        format!(
            "private_key={}\nlisten_port=51820\npublic_key={}\npreshared_key={}\nprotocol_version=1\nendpoint=192.0.2.2:51820\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\ntx_bytes=4\nrx_bytes=3\npersistent_keepalive_interval=25\nallowed_ip=198.18.2.0/24\n",
            "01".repeat(32),
            "02".repeat(32),
            "00".repeat(32)
        )
    );
    assert_eq!(parse_get(&text).unwrap(), info);
}

fn arb_net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (any::<[u8; 4]>(), 0u8..=32)
            .prop_map(|(a, l)| IpNet::new(std::net::Ipv4Addr::from(a).into(), l).unwrap().trunc()),
        (any::<[u8; 16]>(), 0u8..=128)
            .prop_map(|(a, l)| IpNet::new(std::net::Ipv6Addr::from(a).into(), l).unwrap().trunc()),
    ]
}

fn arb_peer() -> impl Strategy<Value = PeerInfo> {
    (
        any::<[u8; 32]>(),
        proptest::option::of(any::<[u8; 32]>().prop_filter("non-zero", |k| *k != [0; 32])),
        proptest::option::of((any::<[u8; 4]>(), any::<u16>())),
        any::<u16>(),
        proptest::collection::vec(arb_net(), 0..4),
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(k, psk, ep, keepalive, ips, hs, rx, tx)| PeerInfo {
            public_key: WgKey(k),
            preshared_key: psk.map(|p| PresharedKey(WgKey(p))),
            endpoint: ep.map(|(a, p)| SocketAddr::new(std::net::Ipv4Addr::from(a).into(), p)),
            persistent_keepalive: keepalive,
            allowed_ips: ips,
            last_handshake: (hs > 0)
                .then(|| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(hs))),
            rx_bytes: rx,
            tx_bytes: tx,
        })
}

proptest! {
    #[test]
    fn get_roundtrips(key in proptest::option::of(any::<[u8; 32]>()), port in any::<u16>(), mark in any::<u32>(), peers in proptest::collection::vec(arb_peer(), 0..4)) {
        let info = DeviceInfo {
            private_key: key.map(PrivateKey::from_raw),
            listen_port: port,
            fwmark: mark,
            peers,
            ..DeviceInfo::default()
        };
        prop_assert_eq!(parse_get(&format_get(&info)).unwrap(), info);
    }

    #[test]
    fn set_parser_never_panics(body in "(?s).{0,400}") {
        let _ = parse_set(&body);
        let _ = parse_get(&body);
    }

    #[test]
    fn set_parser_never_panics_on_key_value_noise(lines in proptest::collection::vec(("[a-z_]{1,30}", "[ -~]{0,70}"), 0..12)) {
        let body: String = lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        let _ = parse_set(&body);
        let with_peer = format!("public_key={K1}\n{body}");
        let _ = parse_set(&with_peer);
    }

    #[test]
    fn parse_hex_key_accepts_exactly_64_hex_digits(bytes in any::<[u8; 32]>(), junk in "[ -~]{0,70}") {
        prop_assert_eq!(parse_hex_key(&hex(&bytes)), Some(bytes));
        let _ = parse_hex_key(&junk);
    }
}
