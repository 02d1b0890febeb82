//! End to end, host-gw backend (spec 9.2, 3.2, 4.1): three real flanneld daemons in network
//! namespaces with a real etcd. Checks that every pod pings every other pod, that each node has
//! exactly one `<peer subnet> via <peer PublicIP> dev eth0` route per peer (and no vxlan device),
//! that the etcd values are byte-compatible, that a node leaving or joining shows up on every peer,
//! and that a route deleted by hand comes back.

mod e2e_common;
mod support;

use std::time::{Duration, Instant};

use e2e_common::*;

#[test]
fn hostgw_three_nodes_match_the_spec_and_every_pod_pings_every_other() {
    let Some(_serial) = serial_or_skip("hostgw_three_nodes") else {
        return;
    };
    let mut tb = testbed("e2ehg", 3, "host-gw");
    let started = Instant::now();
    start(&mut tb, &[0, 1, 2]);
    let took = wait_hostgw_mesh(&tb, &[0, 1, 2], CONVERGE);
    println!(
        "3 host-gw nodes programmed exactly as spec 9.2 after {:?} (listings matched {took:?} after ready)",
        started.elapsed()
    );
    let all = leases(&tb);
    assert_eq!(all.len(), 3, "one lease per node: {all:#?}");
    for lease in &all {
        assert_eq!(
            lease.key,
            format!("{}-24", lease.network),
            "key format of spec 3.1"
        );
        println!("  {} = {}", lease.full_key(), lease.value);
    }
    for i in 0..3 {
        println!(
            "{}:\n{}",
            tb.nodes[i].name,
            tb.nodes[i].ns.sh("ip route show root 198.18.0.0/15")
        );
    }

    add_pods(&mut tb, &[0, 1, 2], "e2ehg");
    let failed = ping_matrix(&tb, &[0, 1, 2]);
    assert!(
        failed.is_empty(),
        "pods that could not ping each other: {failed:?}\n{}",
        logs(&tb, &[0, 1, 2])
    );
    let problems = hostgw_problems(&tb, &[0, 1, 2]);
    assert!(problems.is_empty(), "after the pings: {problems:#?}");
}

#[test]
fn hostgw_node_leaving_and_joining_shows_on_every_peer() {
    let Some(_serial) = serial_or_skip("hostgw_leave_join") else {
        return;
    };
    let mut tb = testbed("e2ehglj", 3, "host-gw");
    start(&mut tb, &[0, 1, 2]);
    wait_hostgw_mesh(&tb, &[0, 1, 2], CONVERGE);
    add_pods(&mut tb, &[0, 1], "e2ehglj");

    let leaving = lease_of(&tb, 2);
    tb.stop_daemon(2, "KILL");
    tb.etcdctl(&["del", &leaving.full_key()]);
    let took = wait_hostgw_mesh(&tb, &[0, 1], CONVERGE);
    println!(
        "node3 ({}) left: its route was gone from node1 and node2 after {took:?}",
        leaving.subnet()
    );
    let failed = ping_matrix(&tb, &[0, 1]);
    assert!(
        failed.is_empty(),
        "the remaining pods lost each other: {failed:?}"
    );

    let joining = Instant::now();
    start(&mut tb, &[2]);
    let took = wait_hostgw_mesh(&tb, &[0, 1, 2], CONVERGE);
    println!(
        "node3 joined ({}): every node programmed as spec 9.2 {:?} after its daemon started \
         ({took:?} after it was ready)",
        lease_of(&tb, 2).subnet(),
        joining.elapsed()
    );
    add_pods(&mut tb, &[2], "e2ehglj");
    let failed = ping_matrix(&tb, &[0, 1, 2]);
    assert!(
        failed.is_empty(),
        "pods that could not ping each other after the join: {failed:?}"
    );
}

#[test]
fn hostgw_route_deleted_by_hand_comes_back() {
    let Some(_serial) = serial_or_skip("hostgw_self_heal") else {
        return;
    };
    let mut tb = testbed("e2ehgsh", 3, "host-gw");
    start(&mut tb, &[0, 1, 2]);
    wait_hostgw_mesh(&tb, &[0, 1, 2], CONVERGE);
    add_pods(&mut tb, &[0, 1], "e2ehgsh");

    let peer = lease_of(&tb, 1);
    let node = &tb.nodes[0].ns;
    node.sh(&format!(
        "ip route del {} via {} dev eth0",
        peer.subnet(),
        peer.public_ip
    ));
    let back = time_until(Duration::from_secs(10), || {
        !node
            .sh(&format!(
                "ip route show {} via {} dev eth0 proto boot",
                peer.subnet(),
                peer.public_ip
            ))
            .trim()
            .is_empty()
    });
    let Some(took) = back else {
        panic!(
            "node1's route to {} via {} was not back 10 s after it was deleted; log:\n{}",
            peer.subnet(),
            peer.public_ip,
            tb.nodes[0].log()
        );
    };
    println!(
        "host-gw route {} via {} deleted by hand on node1: back after {took:?} (goal 1 s: {})",
        peer.subnet(),
        peer.public_ip,
        if took <= Duration::from_secs(1) {
            "met"
        } else {
            "MISSED"
        }
    );
    wait_hostgw_mesh(&tb, &[0, 1, 2], CONVERGE);
    let failed = ping_matrix(&tb, &[0, 1]);
    assert!(
        failed.is_empty(),
        "pods could not ping each other after the repair: {failed:?}"
    );
}
