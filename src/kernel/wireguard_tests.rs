//! The expected bytes below are written by hand from include/uapi/linux/wireguard.h and the
//! attribute order of wireguard-tools' `kernel_set_device` (ipc-linux.h): device IFNAME,
//! PRIVATE_KEY, LISTEN_PORT, [FWMARK], [FLAGS], then PEERS, each peer as an NLA_F_NESTED entry
//! of type 0 with PUBLIC_KEY, [PRESHARED_KEY, ENDPOINT (a struct sockaddr_in/in6),
//! PERSISTENT_KEEPALIVE_INTERVAL], FLAGS, ALLOWEDIPS (nested, each entry FAMILY u16, IPADDR,
//! CIDR_MASK u8). Integers are host order (little endian here), ports in the sockaddr big endian.

use netlink_packet_core::{Emitable, NlaBuffer, NlasIterator, Parseable};

use super::*;

fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = 4 + value.len();
    let mut out = Vec::new();
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(value);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out
}

const NESTED: u16 = 0x8000;

fn emit(msg: &WireguardMessage) -> Vec<u8> {
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.emit(&mut buf);
    buf
}

/// `wg set flannel-wg private-key K listen-port 51820 peer P preshared-key S endpoint
/// 192.0.2.2:51820 persistent-keepalive 25 allowed-ips 198.18.2.0/24`
#[test]
fn set_device_matches_the_layout_wg_sends() {
    let private = [0x11u8; 32];
    let peer = [0x22u8; 32];
    let psk = [0x33u8; 32];
    let update = DeviceUpdate {
        private_key: Some(Some(PrivateKey::from_raw(private))),
        listen_port: Some(51820),
        peers: vec![PeerUpdate {
            public_key: WgKey(peer),
            preshared_key: Some(Some(PresharedKey(WgKey(psk)))),
            endpoint: Some("192.0.2.2:51820".parse().unwrap()),
            persistent_keepalive: Some(25),
            replace_allowed_ips: true,
            allowed_ips: vec!["198.18.2.0/24".parse().unwrap()],
            ..PeerUpdate::default()
        }],
        ..DeviceUpdate::default()
    };
    let msgs = set_messages("flannel-wg", &update);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].cmd, WireguardCmd::SetDevice);

    let mut sockaddr = vec![2, 0, 0xca, 0x6c, 192, 0, 2, 2];
    sockaddr.extend_from_slice(&[0; 8]);
    let allowed_ip = [
        nla(1, &2u16.to_le_bytes()),
        nla(2, &[198, 18, 2, 0]),
        nla(3, &[24]),
    ]
    .concat();
    let peer_attrs = [
        nla(1, &peer),
        nla(2, &psk),
        nla(4, &sockaddr),
        nla(5, &25u16.to_le_bytes()),
        nla(3, &2u32.to_le_bytes()), // WGPEER_F_REPLACE_ALLOWEDIPS
        nla(9 | NESTED, &nla(NESTED, &allowed_ip)),
    ]
    .concat();
    let expected = [
        nla(2, b"flannel-wg\0"),
        nla(3, &private),
        nla(6, &51820u16.to_le_bytes()),
        nla(8 | NESTED, &nla(NESTED, &peer_attrs)),
    ]
    .concat();
    assert_eq!(emit(&msgs[0]), expected);
}

#[test]
fn remove_and_ipv6_peers_and_psk_clearing_encode_as_wg_does() {
    let update = DeviceUpdate {
        peers: vec![
            PeerUpdate {
                public_key: WgKey([1; 32]),
                remove: true,
                ..PeerUpdate::default()
            },
            PeerUpdate {
                public_key: WgKey([2; 32]),
                preshared_key: Some(None),
                endpoint: Some("[2001:db8::2]:51821".parse().unwrap()),
                replace_allowed_ips: true,
                allowed_ips: vec!["2001:db8:2::/64".parse().unwrap()],
                ..PeerUpdate::default()
            },
        ],
        ..DeviceUpdate::default()
    };
    let msgs = set_messages("flannel-wg-v6", &update);
    assert_eq!(msgs.len(), 1);
    let remove = [nla(1, &[1; 32]), nla(3, &1u32.to_le_bytes())].concat();
    let mut sin6 = vec![10, 0, 0xca, 0x6d, 0, 0, 0, 0];
    sin6.extend_from_slice(&"2001:db8::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
    sin6.extend_from_slice(&[0; 4]);
    let mut v6net = vec![0u8; 16];
    v6net[..6].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 2]);
    let allowed = [nla(1, &10u16.to_le_bytes()), nla(2, &v6net), nla(3, &[64])].concat();
    let change = [
        nla(1, &[2; 32]),
        nla(2, &[0; 32]),
        nla(4, &sin6),
        nla(3, &2u32.to_le_bytes()),
        nla(9 | NESTED, &nla(NESTED, &allowed)),
    ]
    .concat();
    let expected = [
        nla(2, b"flannel-wg-v6\0"),
        nla(8 | NESTED, &[nla(NESTED, &remove), nla(NESTED, &change)].concat()),
    ]
    .concat();
    assert_eq!(emit(&msgs[0]), expected);
}

#[test]
fn many_peers_are_split_over_messages_with_the_device_attributes_first() {
    let update = DeviceUpdate {
        listen_port: Some(51820),
        replace_peers: true,
        peers: (0..150u8)
            .map(|i| PeerUpdate {
                public_key: WgKey([i; 32]),
                allowed_ips: vec![format!("198.18.{i}.0/24").parse().unwrap()],
                ..PeerUpdate::default()
            })
            .collect(),
        ..DeviceUpdate::default()
    };
    let msgs = set_messages("flannel-wg", &update);
    assert_eq!(msgs.len(), 3);
    assert!(
        msgs[0]
            .attributes
            .contains(&WireguardAttribute::ListenPort(51820))
    );
    assert!(
        msgs[0]
            .attributes
            .contains(&WireguardAttribute::Flags(WireguardDeviceFlags::ReplacePeers))
    );
    for m in &msgs[1..] {
        assert_eq!(m.attributes[0], WireguardAttribute::IfName("flannel-wg".into()));
        assert!(!m.attributes.iter().any(|a| matches!(
            a,
            WireguardAttribute::ListenPort(_) | WireguardAttribute::Flags(_)
        )));
    }
    let count: usize = msgs
        .iter()
        .flat_map(|m| m.attributes.iter())
        .map(|a| match a {
            WireguardAttribute::Peers(p) => p.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(count, 150);
}

#[test]
fn a_peer_with_many_allowed_ips_continues_update_only_without_replace() {
    let update = DeviceUpdate {
        peers: vec![PeerUpdate {
            public_key: WgKey([7; 32]),
            replace_allowed_ips: true,
            allowed_ips: (0..300u32)
                .map(|i| format!("198.18.{}.{}/32", i / 256, i % 256).parse().unwrap())
                .collect(),
            ..PeerUpdate::default()
        }],
        ..DeviceUpdate::default()
    };
    let msgs = set_messages("flannel-wg", &update);
    assert_eq!(msgs.len(), 2);
    let peer_of = |m: &WireguardMessage| match m.attributes.last() {
        Some(WireguardAttribute::Peers(p)) => p[0].clone(),
        other => panic!("{other:?}"),
    };
    let first = peer_of(&msgs[0]);
    let second = peer_of(&msgs[1]);
    assert!(first.contains(&WireguardPeerAttribute::Flags(
        WireguardPeerFlags::ReplaceAllowedIps
    )));
    assert!(second.contains(&WireguardPeerAttribute::Flags(WireguardPeerFlags::UpdateOnly)));
}

/// A device dump as the kernel sends it for `wg show`: the device attributes in every message,
/// a peer whose allowed IPs did not fit continued in the next message.
#[test]
fn decode_merges_a_split_dump() {
    let peer_a = |ips: Vec<&str>, first: bool| {
        let mut attrs = vec![WireguardPeerAttribute::PublicKey([1; 32])];
        if first {
            attrs.push(WireguardPeerAttribute::PresharedKey([0; 32]));
            attrs.push(WireguardPeerAttribute::Endpoint(
                "192.0.2.2:51820".parse().unwrap(),
            ));
            attrs.push(WireguardPeerAttribute::PersistentKeepalive(25));
            attrs.push(WireguardPeerAttribute::RxBytes(10));
        }
        attrs.push(WireguardPeerAttribute::AllowedIps(
            ips.iter().map(|s| allowed_ip(&s.parse().unwrap())).collect(),
        ));
        WireguardPeer(attrs)
    };
    let head = || {
        vec![
            WireguardAttribute::IfIndex(7),
            WireguardAttribute::IfName("flannel-wg".into()),
            WireguardAttribute::PrivateKey([9; 32]),
            WireguardAttribute::ListenPort(51820),
        ]
    };
    let mut m1 = head();
    m1.push(WireguardAttribute::Peers(vec![peer_a(
        vec!["198.18.2.0/24"],
        true,
    )]));
    let mut m2 = head();
    m2.push(WireguardAttribute::Peers(vec![
        peer_a(vec!["198.18.3.0/24"], false),
        WireguardPeer(vec![
            WireguardPeerAttribute::PublicKey([2; 32]),
            WireguardPeerAttribute::PresharedKey([5; 32]),
        ]),
    ]));
    let parts = [m1, m2].map(|attributes| WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes,
    });
    // Through bytes, as they come from the socket.
    let reparsed: Vec<WireguardMessage> = parts
        .iter()
        .map(|m| {
            let bytes = emit(m);
            let attributes = NlasIterator::new(&bytes[..])
                .map(|nla| WireguardAttribute::parse(&NlaBuffer::new(nla.unwrap().into_inner())).unwrap())
                .collect();
            WireguardMessage {
                cmd: WireguardCmd::GetDevice,
                attributes,
            }
        })
        .collect();
    let info = decode_device(&reparsed);
    assert_eq!(info.index, 7);
    assert_eq!(info.name, "flannel-wg");
    assert_eq!(info.listen_port, 51820);
    assert_eq!(info.private_key, Some(PrivateKey::from_raw([9; 32])));
    assert_eq!(info.peers.len(), 2);
    let a = &info.peers[0];
    assert_eq!(a.public_key, WgKey([1; 32]));
    assert_eq!(a.preshared_key, None);
    assert_eq!(a.endpoint, Some("192.0.2.2:51820".parse().unwrap()));
    assert_eq!(a.persistent_keepalive, 25);
    assert_eq!(a.rx_bytes, 10);
    assert_eq!(
        a.allowed_ips,
        vec![
            "198.18.2.0/24".parse::<IpNet>().unwrap(),
            "198.18.3.0/24".parse().unwrap()
        ]
    );
    assert_eq!(info.peers[1].preshared_key, Some(PresharedKey(WgKey([5; 32]))));
}

#[test]
fn get_request_names_the_device() {
    let m = get_message("flannel-wg");
    assert_eq!(m.cmd, WireguardCmd::GetDevice);
    assert_eq!(emit(&m), nla(2, b"flannel-wg\0"));
}
