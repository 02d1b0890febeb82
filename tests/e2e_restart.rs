//! End to end, daemon restarts (spec 11.3, design.md section 3): SIGTERM leaves the data plane in
//! place and a restarted daemon changes nothing that is already right, so pods pinging every 10 ms
//! across the restart lose no packet, subnet.env and the lease stay the same, and `ip monitor` /
//! `bridge monitor` on every node see no flannel entry deleted or re-added. And a peer that left
//! while our daemon was down has its entries removed when the daemon starts (and only those).

mod e2e_common;
mod support;

use std::time::Duration;

use e2e_common::*;
use support::testbed::Testbed;

/// Monitor lines about flanneld's objects: anything on flannel.1, any route in the pod network.
/// The kernel's own IPv6 link-local bookkeeping on flannel.1 (its `local fe80::...` route appears
/// when duplicate address detection ends) is not flanneld's doing and is left out.
fn flannel_lines(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.contains("flannel.1") || (l.starts_with("[ROUTE]") && l.contains("198.18.")))
        .filter(|l| !l.contains(" fe80::"))
        .cloned()
        .collect()
}

/// Waits until flannel.1's IPv6 link-local address on node `i` finished duplicate address
/// detection, so the kernel's own route change for it does not land inside a recording.
fn wait_dad_done(tb: &Testbed, i: usize) {
    let done = time_until(Duration::from_secs(15), || {
        tb.nodes[i]
            .ns
            .try_sh("ip -6 addr show dev flannel.1 tentative")
            .is_ok_and(|out| out.trim().is_empty())
    });
    assert!(
        done.is_some(),
        "flannel.1 on {} still has tentative IPv6 addresses",
        tb.nodes[i].name
    );
}

fn pod_ip(tb: &Testbed, i: usize) -> std::net::Ipv4Addr {
    tb.nodes[i].pod_ip().expect("pod ip")
}

#[test]
fn sigterm_and_restart_lose_no_packet_and_touch_no_entry() {
    let Some(_serial) = serial_or_skip("restart_hitless") else {
        return;
    };
    let mut tb = testbed("e2ers", 3, "vxlan");
    start(&mut tb, &[0, 1, 2]);
    wait_vxlan_mesh(&tb, &[0, 1, 2], CONVERGE);
    add_pods(&mut tb, &[0, 1, 2], "e2ers");
    let failed = ping_matrix(&tb, &[0, 1, 2]);
    assert!(
        failed.is_empty(),
        "pods cannot ping before the restart: {failed:?}"
    );

    let env_before = std::fs::read_to_string(tb.nodes[0].subnet_file()).expect("subnet.env");
    let lease_before = lease_of(&tb, 0);
    for i in 0..3 {
        wait_dad_done(&tb, i);
    }
    let monitors: Vec<Monitor> = (0..3)
        .map(|i| Monitor::start(&tb.nodes[i].ns, tb.path(), &tb.nodes[i].name))
        .collect();
    // From the restarted node's pod out, and from another node's pod in; 10 ms apart.
    const COUNT: u64 = 600;
    let out = tb.pinger_count(0, pod_ip(&tb, 1), "0.01", COUNT);
    let inbound = tb.pinger_count(2, pod_ip(&tb, 0), "0.01", COUNT);
    std::thread::sleep(Duration::from_millis(1000));

    let status = tb.stop_daemon(0, "TERM").expect("node1's daemon was running");
    assert!(
        status.success(),
        "flanneld exits 0 on SIGTERM, got {status}; log:\n{}",
        tb.nodes[0].log()
    );
    // Shutdown left everything in place (spec 11.3).
    let problems = vxlan_problems(&tb, &[0, 1, 2]);
    assert!(
        problems.is_empty(),
        "after SIGTERM, node1's data plane changed: {problems:#?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    tb.start_daemon(0);
    wait_ready(&mut tb, 0, STARTUP);
    println!("node1's daemon stopped with {status} and is ready again");

    let (sent_out, got_out) = out.wait(Duration::from_secs(120));
    let (sent_in, got_in) = inbound.wait(Duration::from_secs(120));
    println!("ping node1 pod -> node2 pod: {sent_out} sent, {got_out} received");
    println!("ping node3 pod -> node1 pod: {sent_in} sent, {got_in} received");
    assert_eq!(sent_out, COUNT, "the outbound ping did not run to the end");
    assert_eq!(sent_in, COUNT, "the inbound ping did not run to the end");
    assert_eq!(
        got_out, sent_out,
        "packets lost from node1's pod across the restart"
    );
    assert_eq!(got_in, sent_in, "packets lost to node1's pod across the restart");

    let env_after = std::fs::read_to_string(tb.nodes[0].subnet_file()).expect("subnet.env");
    assert_eq!(env_after, env_before, "subnet.env changed across the restart");
    assert_eq!(
        lease_of(&tb, 0),
        lease_before,
        "node1's lease changed across the restart"
    );
    wait_vxlan_mesh(&tb, &[0, 1, 2], CONVERGE);

    let mut touched = Vec::new();
    for (i, monitor) in monitors.into_iter().enumerate() {
        let lines = monitor.finish(&tb.nodes[i].ns);
        println!(
            "{}: monitor lines during the restart (none about flannel expected): {lines:?}",
            tb.nodes[i].name
        );
        touched.extend(
            flannel_lines(&lines)
                .into_iter()
                .map(|l| format!("{}: {l}", tb.nodes[i].name)),
        );
    }
    assert!(
        touched.is_empty(),
        "flannel entries were changed during the restart (should be none):\n  {}\nnode1 log:\n{}",
        touched.join("\n  "),
        tb.nodes[0].log()
    );
}

#[test]
fn entries_of_a_peer_that_left_while_down_are_removed_at_start() {
    let Some(_serial) = serial_or_skip("restart_removes_departed_peer") else {
        return;
    };
    let mut tb = testbed("e2erg", 3, "vxlan");
    start(&mut tb, &[0, 1, 2]);
    wait_vxlan_mesh(&tb, &[0, 1, 2], CONVERGE);
    add_pods(&mut tb, &[0, 1], "e2erg");

    let status = tb.stop_daemon(0, "TERM").expect("node1's daemon was running");
    assert!(status.success(), "flanneld exits 0 on SIGTERM, got {status}");
    let gone = lease_of(&tb, 2);
    let gone_mac = gone.vtep_mac.clone().expect("vxlan lease has a VtepMAC");
    tb.stop_daemon(2, "KILL");
    tb.etcdctl(&["del", &gone.full_key()]);
    // node2's daemon sees the deletion; node1's is down, so node3's entries stay there for now.
    wait_vxlan_mesh(&tb, &[1], CONVERGE);
    let stale = expected_vxlan_entries(&[&gone]);
    let on_node1 = vxlan_entries(&tb, 0);
    let absent = on_node1.missing(&stale);
    assert!(
        absent.is_empty(),
        "node1 lost node3's entries while its daemon was down: {absent:#?}; it has {on_node1:#?}"
    );

    let monitor = Monitor::start(&tb.nodes[0].ns, tb.path(), "node1");
    tb.start_daemon(0);
    wait_ready(&mut tb, 0, STARTUP);
    let took = wait_vxlan_mesh(&tb, &[0, 1], CONVERGE);
    println!("node1 restarted: node3's route, neighbour and FDB entry removed ({took:?} after ready)");
    let lines = flannel_lines(&monitor.finish(&tb.nodes[0].ns));
    println!("node1 monitor during the start:\n  {}", lines.join("\n  "));
    let net = format!("{} ", gone.network);
    let subnet = gone.subnet();
    let foreign: Vec<&String> = lines
        .iter()
        .filter(|l| !l.contains(&net) && !l.contains(&subnet) && !l.contains(&gone_mac))
        .collect();
    assert!(
        foreign.is_empty(),
        "the start touched entries other than node3's: {foreign:#?}"
    );
    for (kind, needle) in [
        ("route", subnet.as_str()),
        ("neighbour", net.as_str()),
        ("fdb entry", gone_mac.as_str()),
    ] {
        assert!(
            lines.iter().any(|l| l.contains("Deleted") && l.contains(needle)),
            "no deletion of node3's {kind} ({needle}) seen on node1: {lines:#?}"
        );
    }
    let failed = ping_matrix(&tb, &[0, 1]);
    assert!(
        failed.is_empty(),
        "node1 and node2 pods cannot ping after the restart: {failed:?}"
    );
}
