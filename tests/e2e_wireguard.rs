//! End to end, wireguard backend on this machine's kernel (no WireGuard module: the daemons pick
//! the userspace implementation on their own), interoperating with WireGuard peers we did not
//! write: two nodes run our flanneld, two run Debian's `wireguard-go` configured with `wg` the
//! way upstream flanneld configures the kernel device (tests/support/wggo.rs). Checks (issue 10):
//! every pod pings every other pod; `wg show flannel-wg` on our node lists exactly the current
//! peers; garbage datagrams to 51820 change nothing; a departed node's peer is gone within 5 s;
//! a restart keeps the key and the lease and traffic resumes.

mod e2e_common;
mod support;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use e2e_common::*;
use support::wggo::{self, GoNode};

const OURS: [usize; 2] = [0, 1];
const GO: [usize; 2] = [2, 3];
const KEEPALIVE: u16 = 25;

fn daemon_pid(tb: &support::testbed::Testbed, i: usize) -> u32 {
    tb.nodes[i].daemon.as_ref().expect("daemon running").id()
}

fn start_ours(tb: &mut support::testbed::Testbed, i: usize) {
    let key = tb.nodes[i].dir.join("wgkey");
    tb.start_daemon_with_env(i, &[("WIREGUARD_KEY_FILE".into(), key.display().to_string())]);
}

/// The public key a lease publishes.
fn lease_key(tb: &support::testbed::Testbed, i: usize) -> String {
    let lease = lease_of(tb, i);
    let v: serde_json::Value = serde_json::from_str(&lease.value).unwrap();
    v["BackendData"]["PublicKey"]
        .as_str()
        .expect("PublicKey in BackendData")
        .to_string()
}

fn wait_peers(pid: u32, want: &[String], timeout: Duration) -> Result<Duration, Vec<String>> {
    let started = Instant::now();
    let mut want = want.to_vec();
    want.sort();
    loop {
        let got = wggo::peers_in(pid, "flannel-wg").unwrap_or_default();
        if got == want {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            return Err(got);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// 2000 datagrams of junk, some shaped like each WireGuard message type.
fn send_garbage(tb: &support::testbed::Testbed, from: usize, to: &str) {
    let to = to.to_string();
    tb.nodes[from].ns.run(move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..2000 {
            let len = match i % 6 {
                0 => 148,
                1 => 92,
                2 => 64,
                3 => 32 + (next() % 1400) as usize,
                4 => (next() % 4) as usize,
                _ => (next() % 1500) as usize,
            };
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len >= 4 && i % 6 < 4 {
                buf[..4].copy_from_slice(&[1 + (i % 4) as u8, 0, 0, 0]);
            }
            let _ = sock.send_to(&buf, &to);
        }
    });
}

fn metric(tb: &support::testbed::Testbed, i: usize, name: &str) -> u64 {
    let text = tb.nodes[i]
        .ns
        .try_sh(&format!("curl -s -m 2 http://127.0.0.1:{HEALTHZ_PORT}/metrics"))
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

#[test]
fn userspace_wireguard_interoperates_with_wireguard_go_and_keeps_peers_exact() {
    if !support::is_root() {
        return support::skip("e2e_wireguard", "needs root (network namespaces)");
    }
    if let Some(why) = wggo::missing() {
        return support::skip("e2e_wireguard", &why);
    }
    let Some(_serial) = serial_or_skip("e2e_wireguard") else {
        return;
    };
    let mut tb = testbed("e2ewg", 4, "wireguard");
    tb.put_config(&format!(
        r#"{{"Network": "{NETWORK}", "Backend": {{"Type": "wireguard", "PersistentKeepaliveInterval": {KEEPALIVE}}}}}"#
    ));
    // The wireguard-go nodes first: their leases exist before our daemons pick subnets.
    let go: Vec<GoNode> = GO
        .iter()
        .enumerate()
        .map(|(n, &i)| GoNode::start(&tb, i, &format!("198.18.{}.0/24", 200 + n), NETWORK))
        .collect();
    for &i in &OURS {
        start_ours(&mut tb, i);
    }
    for &i in &OURS {
        tb.wait_subnet_env(i, STARTUP);
        wait_ready(&mut tb, i, STARTUP);
    }
    for g in &go {
        g.mesh(&tb, KEEPALIVE);
    }
    let all = [OURS, GO].concat();
    add_pods(&mut tb, &all, "e2ewg");

    // Every pod pings every other pod, across both implementations.
    let failed = ping_matrix(&tb, &all);
    assert!(failed.is_empty(), "no answer: {failed:?}\n{}", logs(&tb, &OURS));

    // `wg show` on our node lists exactly the other nodes' keys.
    let ours_pid = daemon_pid(&tb, 0);
    let mut want: Vec<String> = go.iter().map(|g| g.public_key.clone()).collect();
    want.push(lease_key(&tb, 1));
    let got = wait_peers(ours_pid, &want, CONVERGE);
    assert!(
        got.is_ok(),
        "wg show flannel-wg peers on node1: {got:?}, want {want:?}"
    );
    let show = wggo::wg_in(ours_pid, &["show", "flannel-wg"]).unwrap();
    println!("{show}");
    assert!(show.contains("listening port: 51820"), "{show}");
    assert!(
        show.contains(&format!("persistent keepalive: every {KEEPALIVE} seconds")),
        "{show}"
    );
    assert!(show.contains("latest handshake"), "{show}");

    // `wg set` works on our device: an operator's peer (allowed IPs outside the cluster network)
    // stays, a cluster peer's allowed IPs changed by hand are put back at once.
    let (_, operator) = wggo::genkey();
    wggo::wg_in(
        ours_pid,
        &[
            "set",
            "flannel-wg",
            "peer",
            &operator,
            "allowed-ips",
            "203.0.113.0/24",
        ],
    )
    .unwrap();
    let go0 = &go[0];
    wggo::wg_in(
        ours_pid,
        &[
            "set",
            "flannel-wg",
            "peer",
            &go0.public_key,
            "allowed-ips",
            "198.18.200.0/25",
        ],
    )
    .unwrap();
    let restored = e2e_common::time_until(Duration::from_secs(5), || {
        wggo::wg_in(ours_pid, &["show", "flannel-wg", "allowed-ips"])
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with(&go0.public_key) && l.trim_end().ends_with("198.18.200.0/24"))
    });
    assert!(
        restored.is_some(),
        "allowed IPs not corrected:\n{}",
        wggo::wg_in(ours_pid, &["show", "flannel-wg"]).unwrap()
    );
    let mut with_operator = want.clone();
    with_operator.push(operator.clone());
    let listed = wait_peers(ours_pid, &with_operator, Duration::from_secs(2));
    assert!(listed.is_ok(), "operator's peer must stay: {listed:?}");
    wggo::wg_in(ours_pid, &["set", "flannel-wg", "peer", &operator, "remove"]).unwrap();

    // Garbage to the listen port changes nothing.
    let invalid_before = metric(&tb, 0, "flannel_wireguard_userspace_rx_invalid_total");
    send_garbage(&tb, GO[0], &format!("{}:51820", tb.nodes[0].ip));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        daemon_alive(&mut tb, 0),
        "daemon died on garbage:\n{}",
        tb.nodes[0].log()
    );
    assert_eq!(wggo::peers_in(ours_pid, "flannel-wg").unwrap(), {
        let mut w = want.clone();
        w.sort();
        w
    });
    let failed = ping_matrix(&tb, &all);
    assert!(failed.is_empty(), "after garbage: {failed:?}");
    let invalid_after = metric(&tb, 0, "flannel_wireguard_userspace_rx_invalid_total");
    assert!(
        invalid_after > invalid_before,
        "garbage counted as invalid ({invalid_before} -> {invalid_after})"
    );

    // The device deleted by hand comes back (same key and port, every peer, the network route).
    tb.nodes[1].ns.sh("ip link del flannel-wg");
    let back = e2e_common::time_until(CONVERGE, || {
        tb.ping(1, tb.nodes[0].pod_ip().unwrap()) && tb.ping(1, tb.nodes[GO[0]].pod_ip().unwrap())
    });
    assert!(
        back.is_some(),
        "no traffic after deleting flannel-wg on node2:\n{}",
        tb.nodes[1].log()
    );
    let node2_peers = wggo::peers_in(daemon_pid(&tb, 1), "flannel-wg").unwrap();
    assert_eq!(node2_peers.len(), 3, "{node2_peers:?}");
    println!(
        "userspace device recreated, traffic back after {:?}",
        back.unwrap()
    );

    // A departed node (its lease deleted) is gone from our device within 5 s.
    let departed = &go[1];
    tb.etcdctl(&["del", &departed.lease_key]);
    let remaining: Vec<String> = want
        .iter()
        .filter(|k| **k != departed.public_key)
        .cloned()
        .collect();
    let gone = wait_peers(ours_pid, &remaining, Duration::from_secs(5));
    assert!(
        gone.is_ok(),
        "peer of the departed node still listed after 5 s: {gone:?}\n{}",
        tb.nodes[0].log()
    );
    println!("departed peer removed after {:?}", gone.unwrap());

    // A restart keeps the key, the lease and the device; traffic resumes.
    let key_before = std::fs::read_to_string(tb.nodes[0].dir.join("wgkey")).unwrap();
    let lease_before = lease_of(&tb, 0);
    let index_before = tb.ip_json(0, "link show flannel-wg")[0]["ifindex"].clone();
    tb.stop_daemon(0, "TERM");
    assert!(
        tb.ip_json(0, "link show flannel-wg")[0]["ifindex"] == index_before,
        "device left in place at shutdown"
    );
    start_ours(&mut tb, 0);
    wait_ready(&mut tb, 0, STARTUP);
    assert_eq!(
        std::fs::read_to_string(tb.nodes[0].dir.join("wgkey")).unwrap(),
        key_before
    );
    let lease_after = lease_of(&tb, 0);
    assert_eq!(
        (lease_after.key.clone(), lease_after.value.clone()),
        (lease_before.key, lease_before.value)
    );
    assert_eq!(
        tb.ip_json(0, "link show flannel-wg")[0]["ifindex"],
        index_before,
        "device adopted"
    );
    let pid = daemon_pid(&tb, 0);
    assert!(wait_peers(pid, &remaining, CONVERGE).is_ok());
    let live = [OURS.to_vec(), vec![GO[0]]].concat();
    let failed = ping_matrix(&tb, &live);
    assert!(
        failed.is_empty(),
        "after restart: {failed:?}\n{}",
        logs(&tb, &OURS)
    );
    drop(go);
}
