//! `flanneld doctor` on udp and wireguard nodes in the netns testbed (issue 13: "every peer: its
//! udp table entry or WireGuard peer present and equal to what its lease says; entries no lease
//! explains"). Real daemons, real etcd; the WireGuard nodes run the daemon's own userspace
//! implementation (this kernel has no WireGuard), so doctor reads `flannel-wg` over the UAPI socket
//! in the daemon's mount namespace, as `wg` does.
//!
//! A healthy cluster gives exit 0 on every node (with an operator's own WireGuard peer present on
//! the device, which is not a problem). Then one fault at a time, each named in one sentence with
//! the peer and the object, exit 1:
//! - udp: node1's daemon loses its datastore connection (its etcd traffic dropped on node1, while
//!   doctor still reaches etcd on another address), and node3's lease moves to another PublicIP,
//!   then disappears: node1's udp table, which only its daemon writes from its own view of the
//!   leases, keeps the old endpoint, then the entry no lease explains. (Pausing the daemon with
//!   SIGSTOP, as first suggested, cannot show this: the table lives only in the daemon, and a
//!   stopped daemon answers neither /peers nor anything else.)
//! - wireguard: an endpoint changed with `wg set` on node1 (the daemon leaves endpoints WireGuard
//!   may have moved, so it stays), and a peer's key that node1's device still has after that peer
//!   was re-keyed while node1's daemon was cut off from etcd. In between, not a fault: node2's
//!   packets leave from another address (as behind NAT), node1's WireGuard roams to it, and doctor
//!   only notes the endpoint (the peer answers over the overlay), exit 0. (`wg set ... remove` with the daemon
//!   paused, as first suggested, cannot be done: the paused daemon is the userspace device, so
//!   `wg` hangs; with the daemon running the peer is back at once.)

mod e2e_common;
mod support;

use std::process::Command;

use e2e_common::*;
use support::testbed::{ETCD_IP, Testbed};

/// An address of etcd that only the daemon of a cut-off node uses: node-local DNAT to etcd itself.
const DAEMON_ETCD_IP: &str = "192.0.2.101";
const ENDPOINTS_FLAG: &str = "--etcd-endpoints=";

/// Routes node `i`'s daemon to etcd through `DAEMON_ETCD_IP` (before it starts), so that
/// `cut_from_etcd` can later drop exactly the daemon's etcd traffic.
fn via_alias(tb: &mut Testbed, i: usize) {
    tb.nodes[i].ns.sh(&format!(
        "iptables -t nat -A OUTPUT -d {DAEMON_ETCD_IP} -p tcp --dport 2379 -j DNAT --to-destination {ETCD_IP}:2379"
    ));
    tb.nodes[i]
        .args
        .push(format!("{ENDPOINTS_FLAG}http://{DAEMON_ETCD_IP}:2379"));
}

/// `iptables <op>` of the two rules that drop every packet of connections made to `DAEMON_ETCD_IP`.
fn cut_rules(op: &str) -> String {
    ["OUTPUT", "INPUT"]
        .map(|chain| {
            format!("iptables {op} {chain} -p tcp -m conntrack --ctorigdst {DAEMON_ETCD_IP} -j DROP")
        })
        .join(" && ")
}

/// Drops every packet of node `i`'s daemon's etcd connections (existing ones and new ones): its
/// watch stalls silently, as with a stuck connection. Doctor uses etcd's real address.
fn cut_from_etcd(tb: &Testbed, i: usize) {
    tb.nodes[i].ns.sh(&cut_rules("-I"));
}

fn reconnect_to_etcd(tb: &Testbed, i: usize) {
    tb.nodes[i].ns.sh(&cut_rules("-D"));
}

/// Runs doctor on node `i` with the daemon's flags (but etcd's real address); in the mount
/// namespace of process `mount_of` when given (a userspace WireGuard daemon's private /run), else
/// with a private empty /run.
fn doctor(tb: &Testbed, i: usize, mount_of: Option<u32>, extra: &[&str]) -> (i32, String) {
    let node = &tb.nodes[i];
    let mut argv: Vec<String> = vec![
        env!("CARGO_BIN_EXE_flanneld").into(),
        "doctor".into(),
        format!("{ENDPOINTS_FLAG}http://{ETCD_IP}:2379"),
        format!("--subnet-file={}", node.subnet_file().display()),
    ];
    argv.extend(
        node.args
            .iter()
            .filter(|a| !a.starts_with(ENDPOINTS_FLAG))
            .cloned(),
    );
    argv.extend(extra.iter().map(|s| s.to_string()));
    let out = match mount_of {
        Some(pid) => Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-m", "-n"])
            .args(&argv)
            .output(),
        None => {
            // A private, empty /run, as the node's daemon has (never the host's /run/wireguard).
            let quoted: Vec<String> = argv.iter().map(|a| format!("'{a}'")).collect();
            let script = format!("mount -t tmpfs tmpfs /run && exec {}", quoted.join(" "));
            let argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", &script];
            node.ns.spawn_cmd(&argv).output()
        }
    }
    .expect("running flanneld doctor");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Reruns doctor until it exits `code` (a daemon may still be learning of peers that started
/// after it) or `CONVERGE` passes; asserts the code and returns the output.
fn doctor_until(tb: &Testbed, i: usize, mount_of: Option<u32>, code: i32) -> String {
    let mut last = (0, String::new());
    let done = time_until(CONVERGE, || {
        last = doctor(tb, i, mount_of, &[]);
        last.0 == code
    });
    assert!(
        done.is_some(),
        "doctor on {} exited {} (want {code}):\n{}\n{}",
        tb.nodes[i].name,
        last.0,
        last.1,
        logs(tb, &[i])
    );
    last.1
}

/// Asserts that one line of `text` contains every part (one sentence names them all).
fn assert_sentence(text: &str, parts: &[&str]) {
    assert!(
        text.lines()
            .any(|line| line.starts_with("PROBLEM") && parts.iter().all(|p| line.contains(p))),
        "no problem sentence of doctor names all of {parts:?}:\n{text}"
    );
}

/// How doctor names an etcd lease: `lease <key> (<public IP>)`.
fn label(key: &str, public_ip: &str) -> String {
    format!("lease {key} ({public_ip})")
}

fn json_ok(tb: &Testbed, i: usize, mount_of: Option<u32>) {
    let (code, json) = doctor(tb, i, mount_of, &["--json"]);
    let json: serde_json::Value = serde_json::from_str(&json).expect("--json prints JSON");
    assert_eq!(
        (code, &json["ok"], &json["problems"]),
        (0, &serde_json::json!(true), &serde_json::json!(0)),
        "{json}"
    );
}

#[test]
fn doctor_checks_the_udp_table_of_every_peer() {
    let Some(_serial) = serial_or_skip("doctor_peers_udp") else {
        return;
    };
    let mut tb = testbed("dpu", 3, "udp");
    via_alias(&mut tb, 0);
    start(&mut tb, &[0, 1, 2]);
    for i in 0..3 {
        doctor_until(&tb, i, None, 0);
    }
    let (_, text) = doctor(&tb, 0, None, &[]);
    println!("healthy udp cluster, doctor on node1:\n{text}");
    assert!(text.contains("udp table entries are as its lease says"), "{text}");
    json_ok(&tb, 0, None);

    // node3 stops; node1's daemon loses etcd; node3's lease then names another PublicIP.
    let l3 = lease_of(&tb, 2);
    tb.stop_daemon(2, "TERM");
    cut_from_etcd(&tb, 0);
    let moved = l3.value.replace("\"192.0.2.3\"", "\"192.0.2.33\"");
    assert_ne!(moved, l3.value);
    tb.etcdctl(&["put", "--ignore-lease", &l3.full_key(), &moved]);
    let (code, text) = doctor(&tb, 0, None, &[]);
    assert_eq!(code, 1, "{text}");
    assert_sentence(
        &text,
        &[&format!(
            "peer {}: the daemon's udp table sends {} to 192.0.2.3:8285, but the lease says 192.0.2.33:8285: \
             the daemon's view of the leases is behind the datastore",
            label(&l3.key, "192.0.2.33"),
            l3.subnet()
        )],
    );
    println!("node3's lease moved while node1's daemon is cut off from etcd, doctor on node1:\n{text}");

    // node3's lease goes away: node1's table still sends its subnet to node3.
    tb.etcdctl(&["del", &l3.full_key()]);
    let (code, text) = doctor(&tb, 0, None, &[]);
    assert_eq!(code, 1, "{text}");
    assert_sentence(
        &text,
        &[&format!(
            "the daemon's udp table sends {} to 192.0.2.3:8285, but no lease has that subnet",
            l3.subnet()
        )],
    );
    println!("node3's lease deleted while node1's daemon is cut off, doctor on node1:\n{text}");

    reconnect_to_etcd(&tb, 0);
    // The daemon stopped: its table is gone with it, and doctor says what it could not check.
    tb.stop_daemon(0, "TERM");
    let (code, text) = doctor(&tb, 0, None, &["--no-probe"]);
    assert_eq!(code, 1, "{text}");
    assert_sentence(
        &text,
        &["flanneld does not answer on http://127.0.0.1:8081/readyz"],
    );
    assert!(
        text.lines().any(|l| l.starts_with("note")
            && l.contains("flanneld does not answer on http://127.0.0.1:8081/peers")
            && l.contains("udp table entries are not checked")),
        "{text}"
    );
    println!("node1's daemon stopped, doctor on node1:\n{text}");
    tb.stop_daemon(1, "TERM");
}

fn wg_missing() -> Option<String> {
    for tool in ["wg", "nsenter", "iptables"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        if !found {
            return Some(format!(
                "the `{tool}` command is missing (wireguard-tools, util-linux, iptables; see scripts/deps.sh)"
            ));
        }
    }
    (!std::path::Path::new("/dev/net/tun").exists()).then(|| "/dev/net/tun is missing".to_string())
}

fn start_wg(tb: &mut Testbed, i: usize, key_file: &str) {
    let key = tb.nodes[i].dir.join(key_file);
    tb.start_daemon_with_env(i, &[("WIREGUARD_KEY_FILE".into(), key.display().to_string())]);
}

fn pid(tb: &Testbed, i: usize) -> u32 {
    tb.nodes[i].daemon.as_ref().expect("daemon running").id()
}

/// `wg <args>` in node `i`'s daemon's namespaces (its userspace device's UAPI socket).
fn wg(tb: &Testbed, i: usize, args: &[&str]) -> String {
    support::wggo::wg_in(pid(tb, i), args).unwrap_or_else(|e| panic!("wg {args:?}: {e}"))
}

/// Pings node1's overlay address from node2 until node1's device has `endpoint` for node2's key.
fn roam(tb: &Testbed, key2: &str, overlay1: &str, endpoint: &str) {
    let roamed = time_until(CONVERGE, || {
        let _ = tb.nodes[1].ns.try_sh(&format!("ping -c 1 -W 1 {overlay1}"));
        wg(tb, 0, &["show", "flannel-wg", "endpoints"])
            .lines()
            .any(|l| l.starts_with(key2) && l.trim_end().ends_with(endpoint))
    });
    assert!(
        roamed.is_some(),
        "node1 does not see node2 at {endpoint}:\n{}",
        wg(tb, 0, &["show", "flannel-wg"])
    );
}

/// The PublicKey of a wireguard lease value.
fn lease_key(value: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(value).unwrap();
    v["BackendData"]["PublicKey"]
        .as_str()
        .expect("PublicKey")
        .to_string()
}

#[test]
fn doctor_checks_the_wireguard_peers_of_every_peer() {
    if !support::is_root() {
        return support::skip("doctor_peers_wireguard", "needs root (network namespaces)");
    }
    if let Some(why) = wg_missing() {
        return support::skip("doctor_peers_wireguard", &why);
    }
    let Some(_serial) = serial_or_skip("doctor_peers_wireguard") else {
        return;
    };
    let mut tb = testbed("dpw", 3, "wireguard");
    via_alias(&mut tb, 0);
    for i in 0..3 {
        start_wg(&mut tb, i, "wgkey");
    }
    for i in 0..3 {
        tb.wait_subnet_env(i, STARTUP);
        wait_ready(&mut tb, i, STARTUP);
    }
    // An operator's own peer (allowed IPs outside the cluster network) is not ours: no problem.
    let (_, operator) = support::wggo::genkey();
    wg(
        &tb,
        0,
        &[
            "set",
            "flannel-wg",
            "peer",
            &operator,
            "allowed-ips",
            "203.0.113.0/24",
        ],
    );
    for i in 0..3 {
        doctor_until(&tb, i, Some(pid(&tb, i)), 0);
    }
    let (_, text) = doctor(&tb, 0, Some(pid(&tb, 0)), &[]);
    println!("healthy wireguard cluster (and an operator's peer on node1), doctor on node1:\n{text}");
    assert!(text.contains("WireGuard peers are as its lease says"), "{text}");
    json_ok(&tb, 0, Some(pid(&tb, 0)));

    // 1. node2's endpoint changed by hand on node1: the daemon leaves it (roaming), doctor names it.
    let l2 = lease_of(&tb, 1);
    let key2 = lease_key(&l2.value);
    wg(
        &tb,
        0,
        &["set", "flannel-wg", "peer", &key2, "endpoint", "192.0.2.99:51820"],
    );
    let text = doctor_until(&tb, 0, Some(pid(&tb, 0)), 1);
    assert_sentence(
        &text,
        &[&format!(
            "peer {}: WireGuard peer {key2} on flannel-wg has endpoint 192.0.2.99:51820, but the lease says 192.0.2.2:51820",
            label(&l2.key, "192.0.2.2")
        )],
    );
    assert_sentence(
        &text,
        &[&format!(
            "peer {} is unreachable over the overlay ({} via flannel-wg) although its underlay address 192.0.2.2 answers",
            label(&l2.key, "192.0.2.2"),
            l2.network
        )],
    );
    println!("node2's endpoint changed with wg set on node1, doctor on node1:\n{text}");
    wg(
        &tb,
        0,
        &["set", "flannel-wg", "peer", &key2, "endpoint", "192.0.2.2:51820"],
    );
    doctor_until(&tb, 0, Some(pid(&tb, 0)), 0);

    // 2. Not a fault: node2's packets to node1 leave from another address (as behind NAT); node1's
    //    WireGuard follows them (roaming), the daemon keeps that endpoint, doctor only notes it.
    let overlay1 = lease_of(&tb, 0).network.to_string();
    tb.nodes[1]
        .ns
        .sh("ip addr add 192.0.2.12/24 dev eth0 && ip route add 192.0.2.1/32 dev eth0 src 192.0.2.12");
    roam(&tb, &key2, &overlay1, "192.0.2.12:51820");
    let (code, text) = doctor(&tb, 0, Some(pid(&tb, 0)), &[]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("note")
            && l.contains(&format!(
                "WireGuard peer {key2} on flannel-wg has endpoint 192.0.2.12:51820, but the lease says 192.0.2.2:51820; \
                 the peer answers over the overlay, so WireGuard follows it there"
            ))),
        "{text}"
    );
    println!("node2 roamed to 192.0.2.12 as seen from node1, doctor on node1:\n{text}");
    tb.nodes[1]
        .ns
        .sh("ip route del 192.0.2.1/32 dev eth0 src 192.0.2.12 && ip addr del 192.0.2.12/24 dev eth0");
    roam(&tb, &key2, &overlay1, "192.0.2.2:51820");

    // 3. node3 gets a new key while node1's daemon is cut off from etcd: node1's device keeps
    //    the old key for node3's subnet.
    let l3 = lease_of(&tb, 2);
    let old3 = lease_key(&l3.value);
    cut_from_etcd(&tb, 0);
    tb.stop_daemon(2, "TERM");
    start_wg(&mut tb, 2, "wgkey-new");
    wait_ready(&mut tb, 2, STARTUP);
    let l3_new = lease_of(&tb, 2);
    let new3 = lease_key(&l3_new.value);
    assert_ne!(old3, new3, "node3 re-keyed");
    assert_eq!(l3_new.key, l3.key, "node3 kept its subnet");
    let (code, text) = doctor(&tb, 0, Some(pid(&tb, 0)), &[]);
    assert_eq!(code, 1, "{text}");
    assert_sentence(
        &text,
        &[&format!(
            "peer {}: the WireGuard peer for {} on flannel-wg has public key {old3}, but the lease says {new3}",
            label(&l3.key, "192.0.2.3"),
            l3.subnet()
        )],
    );
    println!("node3 re-keyed while node1's daemon is cut off from etcd, doctor on node1:\n{text}");

    reconnect_to_etcd(&tb, 0);
    // The daemon stopped: the userspace device it ran forwards nothing and cannot be read.
    tb.stop_daemon(0, "TERM");
    let (code, text) = doctor(&tb, 0, None, &["--no-probe"]);
    assert_eq!(code, 1, "{text}");
    assert_sentence(
        &text,
        &[
            "flannel-wg is a userspace WireGuard device, but it does not answer on /run/wireguard/flannel-wg.sock",
            "its peers are not checked",
        ],
    );
    println!("node1's daemon stopped, doctor on node1:\n{text}");
    for i in 1..3 {
        tb.stop_daemon(i, "TERM");
    }
}
