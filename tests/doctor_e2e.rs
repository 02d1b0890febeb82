//! `flanneld doctor` in the netns testbed (issue 13): a healthy three-node dual-stack vxlan cluster
//! with the etcd manager gives exit 0 on every node; then, one fault at a time (each undone before
//! the next), doctor exits 1 and names the fault in one sentence with the peer and the object:
//! - a wrong FDB MAC written on a peer (its daemon stopped, so nothing repairs it): the peer's
//!   doctor names the FDB entry, and node1's names the peer as unreachable over the overlay
//!   although its underlay answers;
//! - a filtered VXLAN port on a peer: node1's doctor names the peer as unreachable over the overlay
//!   although its underlay answers, for both families;
//! - a route deleted on the node while its daemon is stopped: the missing route, with its peer;
//! - a lease whose VtepMAC disagrees with the peer's device (written while the peer's daemon is
//!   stopped): the peer's doctor names its lease and device, node1's names the peer as unreachable
//!   over the overlay.

mod e2e_common;
mod support;
mod v6_common;

use std::net::Ipv6Addr;

use e2e_common::*;
use support::testbed::Testbed;
use v6_common::*;

const WRONG_MAC: &str = "02:de:ad:be:ef:01";

/// How doctor names an etcd lease in sentences.
fn label(lease: &DualLease) -> String {
    format!("lease {} ({}, {})", lease.key, lease.public_ip, lease.public_ipv6)
}

/// Runs doctor on node `i`, expects exit status `code`, and returns its output.
fn doctor_expect(tb: &Testbed, i: usize, code: i32) -> String {
    let (got, text) = doctor(tb, i, &[]);
    assert_eq!(got, code, "doctor on {} exited {got}:\n{text}", tb.nodes[i].name);
    text
}

/// Asserts that `text` has a line containing every part of `parts` (one sentence names them all).
fn assert_sentence(text: &str, parts: &[&str]) {
    assert!(
        text.lines().any(|line| parts.iter().all(|p| line.contains(p))),
        "no line of doctor's output names all of {parts:?}:\n{text}"
    );
}

fn unreachable_over_overlay(peer: &DualLease) -> [String; 3] {
    [
        format!(
            "peer {} is unreachable over the overlay ({} via flannel.1)",
            label(peer),
            peer.subnet.network()
        ),
        format!("although its underlay address {} answers", peer.public_ip),
        "UDP port 8472".to_string(),
    ]
}

fn healthy(tb: &mut Testbed, public6: &[Ipv6Addr]) {
    wait_dual_mesh(tb, &[0, 1, 2], Dual::Vxlan, false, |i| public6[i]);
    for i in 0..3 {
        wait_ready(tb, i, STARTUP);
        doctor_expect(tb, i, 0);
    }
}

#[test]
fn doctor_passes_a_healthy_cluster_and_names_each_fault() {
    let Some(_serial) = serial_or_skip("doctor_faults") else {
        return;
    };
    let mut tb = testbed("doc", 3, "vxlan");
    tb.add_ipv6_underlay();
    tb.put_config(&dual_config(r#"{"Type": "vxlan"}"#));
    start(&mut tb, &[0, 1, 2]);
    let public6: Vec<Ipv6Addr> = tb.nodes.iter().map(|n| n.ipv6()).collect();
    for i in 0..3 {
        tb.add_pod_any(i, "doc");
    }
    healthy(&mut tb, &public6);
    let (_, text) = doctor(&tb, 0, &[]);
    println!("healthy cluster, doctor on node1:\n{text}");
    let (code, json) = doctor(&tb, 0, &["--json"]);
    let json: serde_json::Value = serde_json::from_str(&json).expect("--json prints JSON");
    assert_eq!(
        (code, &json["ok"], &json["problems"]),
        (0, &serde_json::json!(true), &serde_json::json!(0))
    );
    let (l1, l2, l3) = (
        dual_lease_of(&tb, 0),
        dual_lease_of(&tb, 1),
        dual_lease_of(&tb, 2),
    );

    // 1. A wrong FDB MAC on node2 for node1 (node2's daemon stopped, or it repairs the entry).
    tb.stop_daemon(1, "TERM");
    let mac1 = l1.vtep_mac.clone().expect("node1's VtepMAC");
    tb.nodes[1].ns.sh(&format!(
        "bridge fdb del {mac1} dev flannel.1 dst {ip} self permanent && \
         bridge fdb add {WRONG_MAC} dev flannel.1 dst {ip} self permanent",
        ip = l1.public_ip
    ));
    let text = doctor_expect(&tb, 1, 1);
    let sentence = format!(
        "peer {}: the FDB entry for {} on flannel.1 has MAC {WRONG_MAC}, but the lease says VtepMAC {mac1}",
        label(&l1),
        l1.public_ip
    );
    assert_sentence(&text, &[&sentence]);
    println!("wrong FDB MAC, doctor on node2:\n{text}");
    let text = doctor_expect(&tb, 0, 1);
    let parts = unreachable_over_overlay(&l2);
    assert_sentence(&text, &parts.iter().map(String::as_str).collect::<Vec<_>>());
    println!("wrong FDB MAC on node2, doctor on node1:\n{text}");
    start(&mut tb, &[1]);
    healthy(&mut tb, &public6);

    // 2. A filtered VXLAN port on node3, both families.
    let filter =
        "iptables -I INPUT -p udp --dport 8472 -j DROP && ip6tables -I INPUT -p udp --dport 8472 -j DROP";
    tb.nodes[2].ns.sh(filter);
    let text = doctor_expect(&tb, 0, 1);
    let parts = unreachable_over_overlay(&l3);
    assert_sentence(&text, &parts.iter().map(String::as_str).collect::<Vec<_>>());
    assert_sentence(
        &text,
        &[
            &format!(
                "peer {} is unreachable over the overlay ({} via flannel-v6.1)",
                label(&l3),
                l3.subnet6.network()
            ),
            &format!("although its underlay address {} answers", l3.public_ipv6),
        ],
    );
    println!("filtered VXLAN port on node3, doctor on node1:\n{text}");
    tb.nodes[2].ns.sh(&filter.replace("-I INPUT", "-D INPUT"));
    healthy(&mut tb, &public6);

    // 3. node1's route to node2 deleted while node1's daemon is stopped.
    tb.stop_daemon(0, "TERM");
    tb.nodes[0].ns.sh(&format!("ip route del {}", l2.subnet));
    let text = doctor_expect(&tb, 0, 1);
    assert_sentence(
        &text,
        &[&format!(
            "peer {}: route {} via {} dev flannel.1 onlink is missing",
            label(&l2),
            l2.subnet,
            l2.subnet.network()
        )],
    );
    assert_sentence(
        &text,
        &["flanneld does not answer on http://127.0.0.1:8081/readyz"],
    );
    println!("deleted route, doctor on node1:\n{text}");
    start(&mut tb, &[0]);
    healthy(&mut tb, &public6);

    // 4. node3's lease says another VtepMAC than its device has (written in etcd, keeping its
    //    etcd lease, while node3's daemon is stopped: a running daemon restarts on a lease value it
    //    did not write); node1 and node2 program what the lease says.
    tb.stop_daemon(2, "TERM");
    let mac3 = l3.vtep_mac.clone().expect("node3's VtepMAC");
    let bad_value = l3.value.replace(&mac3, WRONG_MAC);
    tb.etcdctl(&["put", "--ignore-lease", &full_key(&l3.key), &bad_value]);
    let programmed = time_until(CONVERGE, || {
        tb.nodes[0]
            .ns
            .sh("ip neigh show dev flannel.1")
            .contains(WRONG_MAC)
    });
    assert!(
        programmed.is_some(),
        "node1 did not follow node3's lease:\n{}",
        tb.nodes[0].log()
    );
    let text = doctor_expect(&tb, 2, 1);
    assert_sentence(
        &text,
        &[&format!(
            "this node's lease says VtepMAC {WRONG_MAC} for flannel.1, but flannel.1 has MAC {mac3}"
        )],
    );
    println!("VtepMAC of node3's lease differs from its device, doctor on node3:\n{text}");
    let text = doctor_expect(&tb, 0, 1);
    let parts = unreachable_over_overlay(&l3);
    assert_sentence(&text, &parts.iter().map(String::as_str).collect::<Vec<_>>());
    println!("VtepMAC of node3's lease differs from its device, doctor on node1:\n{text}");
    // node3's daemon reuses its lease and publishes its device's MAC again.
    start(&mut tb, &[2]);
    healthy(&mut tb, &public6);
}
