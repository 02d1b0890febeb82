//! End to end, vxlan backend (spec 9.1, 3.2, 4.1): three real flanneld daemons in network
//! namespaces with a real etcd. Checks that every pod pings every other pod, that each node's
//! kernel listings are exactly what upstream would program (device attributes, address, neighbour,
//! FDB entry and onlink route per peer, nothing else), that the etcd values are byte-compatible,
//! and that a node leaving (key deleted) or joining shows up on every peer. The scenarios are
//! shared with the host-gw tests (e2e_common/scenarios.rs).

mod e2e_common;
mod support;

use e2e_common::*;

#[test]
fn vxlan_three_nodes_match_the_spec_and_every_pod_pings_every_other() {
    let Some(_serial) = serial_or_skip("vxlan_three_nodes") else {
        return;
    };
    three_nodes_match_the_spec_and_ping(Backend::Vxlan, "e2evx");
}

#[test]
fn vxlan_node_leaving_and_joining_shows_on_every_peer() {
    let Some(_serial) = serial_or_skip("vxlan_leave_join") else {
        return;
    };
    node_leaving_and_joining_shows_on_every_peer(Backend::Vxlan, "e2evxlj");
}
