//! The comparison of peer-table entries (udp table, WireGuard peers) with what the leases say,
//! through `peers::entry_findings` (the same path doctor takes), one sentence per problem.

use super::*;
use crate::backend::peers::{PresharedKey, UdpPeer, WgKey, base64_std_encode};
use crate::backend::wireguard::key::PrivateKey;
use crate::kernel::Route;
use crate::lease::Lease;
use crate::tools::doctor::peers::entry_findings;

fn names(index: u32) -> String {
    match index {
        5 => "flannel0".into(),
        7 => "flannel-wg".into(),
        other => format!("#{other}"),
    }
}

fn lease(n: u16) -> Lease {
    crate::backend::testutil::lease_of(n, "", None)
}

fn label(n: u8) -> String {
    format!("lease 198.18.{n}.0-24 (192.0.2.{n})")
}

fn udp(n: u8, host: u8) -> PeerEntry {
    PeerEntry::Udp(UdpPeer {
        subnet: format!("198.18.{n}.0/24").parse().unwrap(),
        endpoint: format!("192.0.2.{host}:8285").parse().unwrap(),
    })
}

fn key(n: u8) -> WgKey {
    PrivateKey::from_bytes([n; 32]).public_key()
}

fn wg(n: u8) -> WgPeer {
    WgPeer {
        device: 7,
        public_key: key(n),
        preshared_key: None,
        endpoint: Some(format!("192.0.2.{n}:51820").parse().unwrap()),
        allowed_ips: vec![format!("198.18.{n}.0/24").parse().unwrap()],
        persistent_keepalive: 0,
    }
}

/// `entry_findings` for peers 2 and 3 wanting `want(n)`, the own route, and `installed`.
fn run(want: &dyn Fn(u8) -> PeerEntry, installed: Vec<PeerEntry>) -> Vec<Finding> {
    let own_route = Entry::Route(Route::unicast("198.18.0.0/16".parse().unwrap(), None, Some(5)));
    let (l2, l3) = (lease(2), lease(3));
    let (a, b) = (label(2), label(3));
    let peers = [
        PeerEntries {
            label: &a,
            lease: &l2,
            entries: vec![Entry::Peer(want(2))],
        },
        PeerEntries {
            label: &b,
            lease: &l3,
            entries: vec![Entry::Peer(want(3))],
        },
    ];
    let mut all = vec![own_route.clone()];
    all.extend(installed.into_iter().map(Entry::Peer));
    entry_findings(&[own_route], &peers, &all, &names)
}

fn messages(found: &[Finding]) -> Vec<String> {
    found.iter().map(|f| f.message.clone()).collect()
}

#[test]
fn a_udp_table_as_the_leases_say_is_one_ok_sentence() {
    let found = run(&|n| udp(n, n), vec![udp(2, 2), udp(3, 3)]);
    assert_eq!(
        messages(&found),
        [
            "every peer's kernel entries and udp table entries are as its lease says, and no other is installed \
             (2 peers, 1 kernel entry, 2 udp table entries)"
        ]
    );
}

#[test]
fn a_stale_udp_table_is_named_entry_by_entry() {
    // Peer 2 moved to 192.0.2.22, peer 3 is new, 198.18.9.0/24 left: the daemon did not see it.
    let found = run(
        &|n| udp(n, if n == 2 { 22 } else { n }),
        vec![udp(2, 2), udp(9, 9)],
    );
    let stale =
        "the daemon's view of the leases is behind the datastore (is its connection to the datastore stuck?)";
    assert_eq!(
        messages(&found),
        [
            format!(
                "peer {}: the daemon's udp table has no entry for 198.18.3.0/24 (the lease says 192.0.2.3:8285): {stale}",
                label(3)
            ),
            format!(
                "peer {}: the daemon's udp table sends 198.18.2.0/24 to 192.0.2.2:8285, but the lease says 192.0.2.22:8285: {stale}",
                label(2)
            ),
            format!(
                "the daemon's udp table sends 198.18.9.0/24 to 192.0.2.9:8285, but no lease has that subnet: {stale}"
            ),
        ]
    );
    assert!(found.iter().all(|f| f.severity == Severity::Problem));
    assert_eq!(found[0].subject, label(3));
    assert_eq!(found[1].object, "udp table entry 198.18.2.0/24 -> 192.0.2.2:8285");
    assert_eq!(found[2].check, Check::UnexplainedEntries);
}

#[test]
fn wireguard_peers_as_the_leases_say_are_one_ok_sentence() {
    let found = run(
        &|n| PeerEntry::Wireguard(wg(n)),
        vec![PeerEntry::Wireguard(wg(2)), PeerEntry::Wireguard(wg(3))],
    );
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0]
            .message
            .contains("kernel entries and WireGuard peers are as its lease says"),
        "{found:?}"
    );
}

#[test]
fn a_missing_peer_and_a_wrong_key_are_named_with_the_peer_and_the_device() {
    // Peer 2 is missing; peer 3 is there with an old key (the node was re-keyed).
    let mut old = wg(3);
    old.public_key = key(33);
    let found = run(&|n| PeerEntry::Wireguard(wg(n)), vec![PeerEntry::Wireguard(old)]);
    assert_eq!(
        messages(&found),
        [
            format!(
                "peer {}: the WireGuard peer for 198.18.3.0/24 on flannel-wg has public key {}, but the lease says {}",
                label(3),
                key(33),
                key(3)
            ),
            format!(
                "peer {}: WireGuard peer {} on flannel-wg is missing (the lease says 192.0.2.2:51820, allowed IPs 198.18.2.0/24)",
                label(2),
                key(2)
            ),
        ]
    );
}

#[test]
fn each_wireguard_field_that_differs_is_its_own_sentence_and_no_psk_shows() {
    let psk = PresharedKey(WgKey([0x42; 32]));
    let want = |n: u8| {
        let mut p = wg(n);
        p.preshared_key = Some(psk);
        p.persistent_keepalive = 25;
        PeerEntry::Wireguard(p)
    };
    let mut two = wg(2);
    two.endpoint = Some("192.0.2.99:51820".parse().unwrap());
    two.allowed_ips = vec!["198.18.2.0/25".parse().unwrap()];
    two.preshared_key = Some(psk);
    two.persistent_keepalive = 25;
    let mut three = wg(3);
    three.preshared_key = Some(PresharedKey(WgKey([0x43; 32])));
    let found = run(
        &want,
        vec![PeerEntry::Wireguard(two), PeerEntry::Wireguard(three)],
    );
    let p2 = format!("peer {}: WireGuard peer {} on flannel-wg", label(2), key(2));
    let p3 = format!("peer {}: WireGuard peer {} on flannel-wg", label(3), key(3));
    assert_eq!(
        messages(&found),
        [
            format!("{p2} has endpoint 192.0.2.99:51820, but the lease says 192.0.2.2:51820"),
            format!(
                "{p2} has allowed IPs 198.18.2.0/25, but the lease says 198.18.2.0/24: packets for the difference go \
                 nowhere or to the wrong node"
            ),
            format!("{p3} has persistent keepalive off, but the network config says every 25 s"),
            format!("{p3} has another preshared key than the network config's: no handshake succeeds"),
        ]
    );
    assert_eq!(found[0].check, Check::PeerEndpoints);
    let all = format!("{found:?}");
    for secret in [[0x42u8; 32], [0x43; 32]] {
        assert!(!all.contains(&base64_std_encode(&secret)), "{all}");
    }
}

#[test]
fn an_unexplained_wireguard_peer_is_named_with_its_device() {
    let stray = WgPeer {
        device: 7,
        public_key: key(9),
        preshared_key: None,
        endpoint: Some("192.0.2.9:51820".parse().unwrap()),
        allowed_ips: vec!["198.18.9.0/24".parse().unwrap()],
        persistent_keepalive: 0,
    };
    let installed = vec![
        PeerEntry::Wireguard(wg(2)),
        PeerEntry::Wireguard(wg(3)),
        PeerEntry::Wireguard(stray),
    ];
    let found = run(&|n| PeerEntry::Wireguard(wg(n)), installed);
    assert_eq!(
        messages(&found),
        [format!(
            "WireGuard peer {} on flannel-wg (endpoint 192.0.2.9:51820, allowed IPs 198.18.9.0/24) is on flannel-wg, \
             but no lease explains it (the daemon removes it)",
            key(9)
        )]
    );
}

#[test]
fn an_endpoint_of_a_peer_that_answers_is_roaming_a_note() {
    let mut moved = wg(2);
    moved.endpoint = Some("203.0.113.7:40000".parse().unwrap());
    let mut wrong = wg(3);
    wrong.endpoint = Some("192.0.2.99:51820".parse().unwrap());
    let mut found = run(
        &|n| PeerEntry::Wireguard(wg(n)),
        vec![PeerEntry::Wireguard(moved), PeerEntry::Wireguard(wrong)],
    );
    assert_eq!(found.len(), 2);
    settle_endpoints(&mut found, &[label(2)]);
    assert_eq!(found[0].severity, Severity::Note);
    assert_eq!(
        found[0].message,
        format!(
            "peer {}: WireGuard peer {} on flannel-wg has endpoint 203.0.113.7:40000, but the lease says \
             192.0.2.2:51820; the peer answers over the overlay, so WireGuard follows it there (roaming, e.g. \
             behind NAT), and the daemon leaves such an endpoint",
            label(2),
            key(2)
        )
    );
    assert_eq!(found[1].severity, Severity::Problem, "peer 3 did not answer");
}
