//! `flanneld doctor` on kernel WireGuard, inside the VM testbed (`make test-vm`): this machine's
//! kernel has no wireguard module, so the netns test of doctor's WireGuard checks
//! (tests/doctor_peers_e2e.rs) covers only the userspace device read over its UAPI socket. Here
//! two real flanneld daemons with a real etcd pick the kernel device on their own, and doctor
//! reads it over generic netlink:
//! - a healthy pair: doctor exits 0 and says the peers are as the leases say;
//! - with the daemon stopped (the kernel device stays, by design), a peer removed with `wg`: doctor
//!   names the missing peer with its lease and key, and exits 1.

mod e2e_common;
mod support;

use e2e_common::*;
use support::netns::Netns;
use support::testbed::Testbed;

const DEV: &str = "flannel-wg";

/// The e2e lock, or a skip (strict inside the VM) when the kernel has no WireGuard or `wg` is
/// missing.
fn prerequisites(test: &str) -> Option<Serial> {
    if !support::is_root() {
        support::skip(test, "needs root (network namespaces)");
        return None;
    }
    let probe = Netns::new("vmwgd-probe");
    if let Err(e) = probe.try_sh("ip link add probe0 type wireguard") {
        support::skip(
            test,
            &format!("the kernel has no WireGuard (run it with make test-vm): {e}"),
        );
        return None;
    }
    drop(probe);
    if Netns::new("vmwgd-wg").try_sh("wg --version").is_err() {
        support::skip(test, "the `wg` command is missing (wireguard-tools)");
        return None;
    }
    let serial = serial_or_skip(test);
    if serial.is_none() {
        support::skip(test, "etcd or a network tool is missing");
    }
    serial
}

fn start_wg(tb: &mut Testbed, i: usize) {
    // Each node its own key file: the nodes share the VM's /run.
    let key = tb.nodes[i].dir.join("wgkey");
    tb.start_daemon_with_env(i, &[("WIREGUARD_KEY_FILE".into(), key.display().to_string())]);
}

fn public_key(lease: &LeaseInfo) -> String {
    let v: serde_json::Value = serde_json::from_str(&lease.value).expect("lease JSON");
    v["BackendData"]["PublicKey"]
        .as_str()
        .expect("PublicKey in BackendData")
        .to_string()
}

/// Reruns doctor on node `i` until it exits `code` or `CONVERGE` passes; returns the last output.
fn doctor_until(tb: &Testbed, i: usize, code: i32) -> String {
    let mut last = (-1, String::new());
    time_until(CONVERGE, || {
        last = doctor(tb, i, &[]);
        last.0 == code
    });
    assert_eq!(last.0, code, "doctor on {}:\n{}", tb.nodes[i].name, last.1);
    last.1
}

#[test]
#[ignore = "runs inside the VM testbed (make test-vm)"]
fn doctor_reads_kernel_wireguard_peers_and_names_a_removed_one() {
    let Some(_serial) = prerequisites("vm_wireguard_doctor") else {
        return;
    };
    let mut tb = testbed("vmwgd", 2, "wireguard");
    for i in 0..2 {
        start_wg(&mut tb, i);
    }
    for i in 0..2 {
        tb.wait_subnet_env(i, STARTUP);
        wait_ready(&mut tb, i, STARTUP);
        let link = tb.nodes[i].ns.sh(&format!("ip -d link show {DEV}"));
        assert!(
            link.contains("wireguard"),
            "the daemon picked the kernel device:\n{link}"
        );
    }
    add_pods(&mut tb, &[0, 1], "vmwgd");
    let failed = ping_matrix(&tb, &[0, 1]);
    assert!(
        failed.is_empty(),
        "pods could not ping over kernel WireGuard: {failed:?}\n{}",
        logs(&tb, &[0, 1])
    );

    let text = doctor_until(&tb, 0, 0);
    assert!(text.contains("WireGuard peers are as its lease says"), "{text}");
    println!("healthy kernel WireGuard pair, doctor on node1:\n{text}");

    // The daemon stopped, the device stays (hitless restarts); a peer removed by hand.
    let peer = lease_of(&tb, 1);
    let key = public_key(&peer);
    tb.stop_daemon(0, "TERM");
    tb.nodes[0].ns.sh(&format!("wg set {DEV} peer {key} remove"));
    let (code, text) = doctor(&tb, 0, &[]);
    assert_eq!(code, 1, "doctor with a peer removed:\n{text}");
    let sentence = format!(
        "peer lease {} ({}): WireGuard peer {key} on {DEV} is missing",
        peer.key, peer.public_ip
    );
    assert!(
        text.lines().any(|l| l.contains(&sentence)),
        "no line says {sentence:?}:\n{text}"
    );
    println!("peer removed with wg while the daemon is stopped, doctor on node1:\n{text}");
}
