//! End to end, vxlan backend (spec 9.1, 3.2, 4.1): three real flanneld daemons in network
//! namespaces with a real etcd. Checks that every pod pings every other pod, that each node's
//! kernel listings are exactly what upstream would program (device attributes, address, neighbour,
//! FDB entry and onlink route per peer, nothing else), that the etcd values are byte-compatible,
//! and that a node leaving (key deleted) or joining shows up on every peer.

mod e2e_common;
mod support;

use std::time::Instant;

use e2e_common::*;

#[test]
fn vxlan_three_nodes_match_the_spec_and_every_pod_pings_every_other() {
    let Some(_serial) = serial_or_skip("vxlan_three_nodes") else {
        return;
    };
    let mut tb = testbed("e2evx", 3, "vxlan");
    let started = Instant::now();
    start(&mut tb, &[0, 1, 2]);
    let took = wait_vxlan_mesh(&tb, &[0, 1, 2], CONVERGE);
    println!(
        "3 vxlan nodes programmed exactly as spec 9.1 after {:?} (listings matched {took:?} after ready)",
        started.elapsed()
    );

    let all = leases(&tb);
    assert_eq!(all.len(), 3, "one lease per node: {all:#?}");
    for lease in &all {
        assert_eq!(lease.prefix_len, 24, "SubnetLen defaults to 24: {lease:?}");
        assert!(
            lease.network.octets()[..2] == [198, 18] && lease.network.octets()[3] == 0,
            "lease {lease:?} is not a /24 of {NETWORK}"
        );
        assert_eq!(
            lease.key,
            format!("{}-24", lease.network),
            "key format of spec 3.1"
        );
        // Spec 5.3: every lease is attached to a 24 h etcd lease.
        let ttl = ttl_of(&tb, &lease.full_key());
        assert!(
            ttl.is_some_and(|t| t > 86_000 && t <= 86_400),
            "lease {} has TTL {ttl:?}, want about 86400 s",
            lease.key
        );
        println!("  {} = {}", lease.full_key(), lease.value);
    }
    let mut subnets: Vec<_> = all.iter().map(|l| l.network).collect();
    subnets.sort();
    subnets.dedup();
    assert_eq!(subnets.len(), 3, "three distinct subnets: {all:#?}");
    for i in 0..3 {
        println!("{}:", tb.nodes[i].name);
        println!(
            "{}",
            tb.nodes[i].ns.sh(
                "ip -d link show flannel.1; ip -4 addr show dev flannel.1; ip neigh show dev flannel.1; \
                     bridge fdb show dev flannel.1; ip route show root 198.18.0.0/15"
            )
        );
    }

    add_pods(&mut tb, &[0, 1, 2], "e2evx");
    let failed = ping_matrix(&tb, &[0, 1, 2]);
    assert!(
        failed.is_empty(),
        "pods that could not ping each other: {failed:?}\n{}",
        logs(&tb, &[0, 1, 2])
    );
    // Pinging created nothing the spec does not prescribe (e.g. learned FDB entries or neighbours).
    let problems = vxlan_problems(&tb, &[0, 1, 2]);
    assert!(problems.is_empty(), "after the pings: {problems:#?}");
}

#[test]
fn vxlan_node_leaving_and_joining_shows_on_every_peer() {
    let Some(_serial) = serial_or_skip("vxlan_leave_join") else {
        return;
    };
    let mut tb = testbed("e2evxlj", 3, "vxlan");
    start(&mut tb, &[0, 1, 2]);
    wait_vxlan_mesh(&tb, &[0, 1, 2], CONVERGE);
    add_pods(&mut tb, &[0, 1], "e2evxlj");

    // node3 leaves: its daemon dies and its key is deleted (as an operator or the TTL would).
    let leaving = lease_of(&tb, 2);
    tb.stop_daemon(2, "KILL");
    tb.etcdctl(&["del", &leaving.full_key()]);
    let took = wait_vxlan_mesh(&tb, &[0, 1], CONVERGE);
    println!(
        "node3 ({}) left: its route, neighbour and FDB entry were gone from node1 and node2 after {took:?}",
        leaving.subnet()
    );
    for i in [0, 1] {
        let text = tb.nodes[i]
            .ns
            .sh("ip neigh show dev flannel.1; bridge fdb show dev flannel.1; ip route");
        let mac = leaving.vtep_mac.as_deref().unwrap_or("<none>");
        assert!(
            !text.contains(mac) && !text.contains(&leaving.subnet()),
            "{} still has an entry of node3 ({mac}, {}): {text}",
            tb.nodes[i].name,
            leaving.subnet()
        );
    }
    let failed = ping_matrix(&tb, &[0, 1]);
    assert!(
        failed.is_empty(),
        "the remaining pods lost each other: {failed:?}"
    );

    // node3 joins again: every peer gets its entries, matching its new lease in etcd.
    let joining = Instant::now();
    start(&mut tb, &[2]);
    let took = wait_vxlan_mesh(&tb, &[0, 1, 2], CONVERGE);
    println!(
        "node3 joined ({}): every node programmed as spec 9.1 {:?} after its daemon started \
         ({took:?} after it was ready)",
        lease_of(&tb, 2).subnet(),
        joining.elapsed()
    );
    add_pods(&mut tb, &[2], "e2evxlj");
    let failed = ping_matrix(&tb, &[0, 1, 2]);
    assert!(
        failed.is_empty(),
        "pods that could not ping each other after the join: {failed:?}"
    );
}
