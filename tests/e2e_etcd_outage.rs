//! End to end, etcd outage (spec 5.1, 5.5): etcd is killed for 20 s while pods ping each other
//! across nodes. The data plane must not notice (no packet lost, nothing removed), the daemons
//! must stay up, and once etcd is back they must converge: a node that joins after the outage gets
//! its entries on both old nodes, through their re-established watches.

mod e2e_common;
mod support;

use std::time::{Duration, Instant};

use e2e_common::*;

#[test]
fn etcd_down_for_20s_loses_no_packet_and_the_daemons_converge_after() {
    let Some(_serial) = serial_or_skip("etcd_outage") else {
        return;
    };
    // Three nodes, two started: node3 joins after the outage.
    let mut tb = testbed("e2eeo", 3, "vxlan");
    start(&mut tb, &[0, 1]);
    wait_vxlan_mesh(&tb, &[0, 1], CONVERGE);
    add_pods(&mut tb, &[0, 1], "e2eeo");
    let failed = ping_matrix(&tb, &[0, 1]);
    assert!(
        failed.is_empty(),
        "pods cannot ping before the outage: {failed:?}"
    );
    let before = [vxlan_entries(&tb, 0), vxlan_entries(&tb, 1)];
    let leases_before = leases(&tb);

    // 20 ms apart in both directions for the outage plus some seconds around it.
    const COUNT: u64 = 1300;
    let pod1 = tb.nodes[0].pod_ip().expect("pod ip");
    let pod2 = tb.nodes[1].pod_ip().expect("pod ip");
    let there = tb.pinger_count(0, pod2, "0.02", COUNT);
    let back = tb.pinger_count(1, pod1, "0.02", COUNT);
    std::thread::sleep(Duration::from_secs(1));

    tb.stop_etcd();
    let outage = Instant::now();
    println!("etcd stopped");
    while outage.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(500));
        for i in [0, 1] {
            assert!(
                daemon_alive(&mut tb, i),
                "flanneld on {} exited during the etcd outage; log:\n{}",
                tb.nodes[i].name,
                tb.nodes[i].log()
            );
            // Nothing is removed or changed while the datastore is unreachable.
            let now = vxlan_entries(&tb, i);
            assert_eq!(
                now, before[i],
                "{}'s entries changed during the etcd outage",
                tb.nodes[i].name
            );
        }
    }
    tb.start_etcd();
    println!("etcd back after {:?}", outage.elapsed());
    assert_eq!(
        leases(&tb),
        leases_before,
        "the leases in etcd changed across the outage"
    );

    let joined = Instant::now();
    start(&mut tb, &[2]);
    let took = wait_vxlan_mesh(&tb, &[0, 1, 2], Duration::from_secs(60));
    println!(
        "node3 joined after the outage: node1 and node2 have its entries {:?} after its daemon started \
         ({took:?} after it was ready)",
        joined.elapsed()
    );
    add_pods(&mut tb, &[2], "e2eeo");
    let failed = ping_matrix(&tb, &[0, 1, 2]);
    assert!(failed.is_empty(), "pods cannot ping after the outage: {failed:?}");

    let (sent_there, got_there) = there.wait(Duration::from_secs(120));
    let (sent_back, got_back) = back.wait(Duration::from_secs(120));
    println!("ping node1 pod -> node2 pod: {sent_there} sent, {got_there} received");
    println!("ping node2 pod -> node1 pod: {sent_back} sent, {got_back} received");
    assert_eq!(
        (sent_there, sent_back),
        (COUNT, COUNT),
        "a ping did not run to the end"
    );
    assert_eq!(
        got_there, sent_there,
        "packets lost node1 -> node2 around the etcd outage"
    );
    assert_eq!(
        got_back, sent_back,
        "packets lost node2 -> node1 around the etcd outage"
    );
    for i in [0, 1] {
        assert!(
            daemon_alive(&mut tb, i),
            "flanneld on {} exited after the outage",
            tb.nodes[i].name
        );
    }
    let log = tb.nodes[0].log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).take(10).collect();
    println!(
        "node1's first warnings (the outage as the daemon saw it):\n  {}",
        warnings.join("\n  ")
    );
}
