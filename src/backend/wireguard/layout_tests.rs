use super::*;
use crate::lease::LeaseAttrs;

fn key(n: u8) -> WgKey {
    WgKey([n; 32])
}

fn lease(
    v4: Option<&str>,
    v6: Option<&str>,
    ip: &str,
    ip6: Option<&str>,
    data: Option<String>,
    data6: Option<String>,
) -> Lease {
    Lease {
        enable_ipv4: v4.is_some(),
        enable_ipv6: v6.is_some(),
        subnet: v4.map(|s| s.parse().unwrap()),
        ipv6_subnet: v6.map(|s| s.parse().unwrap()),
        attrs: LeaseAttrs {
            public_ip: ip.parse().unwrap(),
            public_ipv6: ip6.map(|s| s.parse().unwrap()),
            backend_type: "wireguard".into(),
            backend_data: data,
            backend_v6_data: data6,
        },
        expiration: None,
    }
}

fn ctx(mode: WireguardMode, v4: bool, v6: bool) -> PeerContext {
    let devs = devices(mode, v4, v6, 51820, 51821);
    PeerContext {
        mode,
        devices: devs
            .into_iter()
            .enumerate()
            .map(|(i, d)| (d, 10 + i as u32))
            .collect(),
        own_v4: Some("192.0.2.1".parse().unwrap()),
        own_v6: Some("2001:db8::1".parse().unwrap()),
        psk: None,
        keepalive: 25,
    }
}

#[test]
fn backend_data_is_byte_exact_and_parses_back() {
    let k = WgKey(*b"0123456789abcdef0123456789abcdef");
    let json = backend_data(&k, 51820);
    assert_eq!(json, format!("{{\"PublicKey\":\"{k}\",\"Port\":51820}}"));
    assert_eq!(
        json,
        "{\"PublicKey\":\"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\",\"Port\":51820}"
    );
    assert_eq!(
        parse_backend_data(&json).unwrap(),
        LeaseData {
            public_key: k,
            port: 51820
        }
    );
    // Go's decoder: keys case-insensitive, Port optional.
    let lower = format!("{{\"publickey\":\"{k}\"}}");
    assert_eq!(
        parse_backend_data(&lower).unwrap(),
        LeaseData {
            public_key: k,
            port: 0
        }
    );
}

#[test]
fn bad_backend_data_says_what_is_wrong() {
    for (json, needle) in [
        ("[]", "not a JSON object"),
        ("{}", "no PublicKey"),
        (
            "{\"PublicKey\":\"abc\"}",
            "not the base64 encoding of a 32-byte key",
        ),
        ("{\"PublicKey\":7}", "PublicKey"),
        (
            "{\"PublicKey\":\"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\",\"Port\":70000}",
            "between 0 and 65535",
        ),
        (
            "{\"PublicKey\":\"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\",\"Port\":\"x\"}",
            "Port",
        ),
    ] {
        let err = parse_backend_data(json).unwrap_err();
        assert!(err.contains(needle), "{json}: {err}");
    }
}

#[test]
fn modes_lay_out_devices_as_upstream() {
    let names = |m, v4, v6| {
        devices(m, v4, v6, 1, 2)
            .iter()
            .map(|d| (d.name, d.listen_port, d.v4, d.v6))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(WireguardMode::Separate, true, true),
        vec![(DEVICE_V4, 1, true, false), (DEVICE_V6, 2, false, true)]
    );
    assert_eq!(
        names(WireguardMode::Separate, false, true),
        vec![(DEVICE_V6, 2, false, true)]
    );
    for m in [WireguardMode::Auto, WireguardMode::Ipv4, WireguardMode::Ipv6] {
        assert_eq!(names(m, true, true), vec![(DEVICE_V4, 1, true, true)]);
        assert_eq!(names(m, false, true), vec![(DEVICE_V4, 1, false, true)]);
    }
    assert!(names(WireguardMode::Auto, false, false).is_empty());
}

#[test]
fn auto_endpoint_follows_the_spec() {
    let v4 = |s: &str| Some(s.parse::<Ipv4Addr>().unwrap());
    let v6 = |s: &str| Some(s.parse::<Ipv6Addr>().unwrap());
    let pick = |r4, r6, o4, o6| auto_endpoint_ip(r4, r6, o4, o6).map(|ip| ip.to_string());
    let own4 = v4("192.0.2.1");
    let own6 = v6("2001:db8::1");
    // Remote without IPv6: IPv4.
    assert_eq!(
        pick(v4("10.0.0.2"), None, own4, own6).as_deref(),
        Some("10.0.0.2")
    );
    // Public remote IPv4 and we have IPv4: IPv4.
    assert_eq!(
        pick(v4("192.0.2.2"), v6("2001:db8::2"), own4, own6).as_deref(),
        Some("192.0.2.2")
    );
    // Private remote IPv4, global remote and own IPv6: IPv6.
    assert_eq!(
        pick(v4("10.0.0.2"), v6("2001:db8::2"), own4, own6).as_deref(),
        Some("2001:db8::2")
    );
    assert_eq!(
        pick(v4("172.16.0.2"), v6("2001:db8::2"), own4, own6).as_deref(),
        Some("2001:db8::2")
    );
    assert_eq!(
        pick(v4("192.168.1.2"), v6("2001:db8::2"), own4, own6).as_deref(),
        Some("2001:db8::2")
    );
    // Public remote IPv4 but we have no IPv4: IPv6.
    assert_eq!(
        pick(v4("192.0.2.2"), v6("2001:db8::2"), None, own6).as_deref(),
        Some("2001:db8::2")
    );
    // ULA remote IPv6 or ULA/no own IPv6: back to IPv4.
    assert_eq!(
        pick(v4("10.0.0.2"), v6("fd00::2"), own4, own6).as_deref(),
        Some("10.0.0.2")
    );
    assert_eq!(
        pick(v4("10.0.0.2"), v6("2001:db8::2"), own4, v6("fdaa::1")).as_deref(),
        Some("10.0.0.2")
    );
    assert_eq!(
        pick(v4("10.0.0.2"), v6("2001:db8::2"), own4, None).as_deref(),
        Some("10.0.0.2")
    );
    // 172.32/12 is not RFC 1918.
    assert_eq!(
        pick(v4("172.32.0.2"), v6("2001:db8::2"), own4, own6).as_deref(),
        Some("172.32.0.2")
    );
    // A remote with IPv6 only.
    assert_eq!(
        pick(None, v6("2001:db8::2"), own4, own6).as_deref(),
        Some("2001:db8::2")
    );
}

#[test]
fn separate_mode_gives_one_peer_per_family_device() {
    let data = backend_data(&key(1), 51820);
    let data6 = backend_data(&key(1), 0);
    let l = lease(
        Some("198.18.2.0/24"),
        Some("2001:db8:2::/64"),
        "192.0.2.2",
        Some("2001:db8::2"),
        Some(data),
        Some(data6),
    );
    let peers = peers_for(&l, &ctx(WireguardMode::Separate, true, true)).unwrap();
    assert_eq!(peers.len(), 2);
    assert_eq!(peers[0].device, 10);
    assert_eq!(peers[0].endpoint, Some("192.0.2.2:51820".parse().unwrap()));
    assert_eq!(
        peers[0].allowed_ips,
        vec!["198.18.2.0/24".parse::<IpNet>().unwrap()]
    );
    assert_eq!(peers[0].persistent_keepalive, 25);
    assert_eq!(peers[1].device, 11);
    // Port 0 in the lease: our own device's port.
    assert_eq!(peers[1].endpoint, Some("[2001:db8::2]:51821".parse().unwrap()));
    assert_eq!(
        peers[1].allowed_ips,
        vec!["2001:db8:2::/64".parse::<IpNet>().unwrap()]
    );
}

#[test]
fn single_device_modes_give_one_peer_with_both_subnets() {
    // An upstream node: BackendV6Data carries ListenPortV6 (quirk 16); BackendData is right.
    let l = lease(
        Some("198.18.2.0/24"),
        Some("2001:db8:2::/64"),
        "10.0.0.2",
        Some("2001:db8::2"),
        Some(backend_data(&key(2), 51820)),
        Some(backend_data(&key(2), 51821)),
    );
    for (mode, ep) in [
        (WireguardMode::Ipv4, "10.0.0.2:51820"),
        (WireguardMode::Ipv6, "[2001:db8::2]:51820"),
        (WireguardMode::Auto, "[2001:db8::2]:51820"),
    ] {
        let peers = peers_for(&l, &ctx(mode, true, true)).unwrap();
        assert_eq!(peers.len(), 1, "{mode:?}");
        assert_eq!(peers[0].public_key, key(2));
        assert_eq!(peers[0].endpoint, Some(ep.parse().unwrap()), "{mode:?}");
        assert_eq!(
            peers[0].allowed_ips,
            vec![
                "198.18.2.0/24".parse::<IpNet>().unwrap(),
                "2001:db8:2::/64".parse().unwrap()
            ]
        );
    }
    // We run IPv4 only: the remote's IPv6 subnet is not ours to route.
    let peers = peers_for(&l, &ctx(WireguardMode::Auto, true, false)).unwrap();
    assert_eq!(
        peers[0].allowed_ips,
        vec!["198.18.2.0/24".parse::<IpNet>().unwrap()]
    );
}

#[test]
fn leases_without_what_a_peer_needs_are_skipped_with_a_reason() {
    let c = ctx(WireguardMode::Separate, true, false);
    let no_data = lease(Some("198.18.2.0/24"), None, "192.0.2.2", None, None, None);
    assert!(peers_for(&no_data, &c).unwrap_err().contains("no BackendData"));
    let bad = lease(
        Some("198.18.2.0/24"),
        None,
        "192.0.2.2",
        None,
        Some("{\"PublicKey\":\"x\"}".into()),
        None,
    );
    assert!(peers_for(&bad, &c).unwrap_err().contains("BackendData"));
    let no_ip = lease(
        Some("198.18.2.0/24"),
        None,
        "0.0.0.0",
        None,
        Some(backend_data(&key(1), 1)),
        None,
    );
    assert!(peers_for(&no_ip, &c).unwrap_err().contains("no PublicIP"));
    let mut other = no_ip.clone();
    other.attrs.backend_type = "vxlan".into();
    assert!(peers_for(&other, &c).unwrap_err().contains("not wireguard"));
    // A device not created yet (index 0) gets no peers.
    let mut missing = c.clone();
    missing.devices[0].1 = 0;
    let ok = lease(
        Some("198.18.2.0/24"),
        None,
        "192.0.2.2",
        None,
        Some(backend_data(&key(1), 1)),
        None,
    );
    assert!(peers_for(&ok, &missing).unwrap().is_empty());
}

#[test]
fn psk_goes_into_every_peer() {
    let mut c = ctx(WireguardMode::Separate, true, false);
    c.psk = Some(PresharedKey(key(9)));
    let l = lease(
        Some("198.18.2.0/24"),
        None,
        "192.0.2.2",
        None,
        Some(backend_data(&key(1), 0)),
        None,
    );
    assert_eq!(
        peers_for(&l, &c).unwrap()[0].preshared_key,
        Some(PresharedKey(key(9)))
    );
}
