//! End to end, host-gw backend (spec 9.2, 3.2, 4.1): three real flanneld daemons in network
//! namespaces with a real etcd. Checks that every pod pings every other pod, that each node has
//! exactly one `<peer subnet> via <peer PublicIP> dev eth0` route per peer (and no vxlan device),
//! that the etcd values are byte-compatible, that a node leaving or joining shows up on every peer
//! (scenarios shared with the vxlan tests, e2e_common/scenarios.rs), and that a route deleted by
//! hand comes back.

mod e2e_common;
mod support;

use std::time::Duration;

use e2e_common::*;
use support::testbed::ROUTE_PROTO;

#[test]
fn hostgw_three_nodes_match_the_spec_and_every_pod_pings_every_other() {
    let Some(_serial) = serial_or_skip("hostgw_three_nodes") else {
        return;
    };
    three_nodes_match_the_spec_and_ping(Backend::HostGw, "e2ehg");
}

#[test]
fn hostgw_node_leaving_and_joining_shows_on_every_peer() {
    let Some(_serial) = serial_or_skip("hostgw_leave_join") else {
        return;
    };
    node_leaving_and_joining_shows_on_every_peer(Backend::HostGw, "e2ehglj");
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
                "ip route show {} via {} dev eth0 proto {}",
                peer.subnet(),
                peer.public_ip,
                ROUTE_PROTO
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
        against_one_second_goal(took)
    );
    wait_hostgw_mesh(&tb, &[0, 1, 2], CONVERGE);
    let failed = ping_matrix(&tb, &[0, 1]);
    assert!(
        failed.is_empty(),
        "pods could not ping each other after the repair: {failed:?}"
    );
}
