//! The scenarios the vxlan (spec 9.1) and host-gw (spec 9.2) end-to-end tests share: three nodes
//! converge to the exact listings of their backend and every pod pings every other; a node leaving
//! and joining shows on every peer. Only what differs per backend lives in `Backend`; the callers
//! take the e2e lock (`serial_or_skip`) before running a scenario.

use std::time::{Duration, Instant};

use super::{
    CONVERGE, NETWORK, add_pods, hostgw_problems, lease_of, leases, logs, ping_matrix, start, testbed,
    ttl_of, vxlan_problems, wait_hostgw_mesh, wait_vxlan_mesh,
};
use crate::support::testbed::Testbed;

/// The backend a scenario runs with, and what differs between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Vxlan,
    HostGw,
}

impl Backend {
    /// The `Backend.Type` of the network config.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Vxlan => "vxlan",
            Backend::HostGw => "host-gw",
        }
    }

    /// The spec section that prescribes the backend's kernel listings.
    fn spec(self) -> &'static str {
        match self {
            Backend::Vxlan => "9.1",
            Backend::HostGw => "9.2",
        }
    }

    /// What each node has per peer, for messages.
    fn per_peer(self) -> &'static str {
        match self {
            Backend::Vxlan => "route, neighbour and FDB entry",
            Backend::HostGw => "route",
        }
    }

    /// The listing printed for each node once the mesh converged.
    fn listing(self) -> &'static str {
        match self {
            Backend::Vxlan => {
                "ip -d link show flannel.1; ip -4 addr show dev flannel.1; ip neigh show dev flannel.1; \
                 bridge fdb show dev flannel.1; ip route show root 198.18.0.0/15"
            }
            Backend::HostGw => "ip route show root 198.18.0.0/15",
        }
    }

    /// Every per-peer entry of a node, searched for a peer that left.
    fn peer_entries(self) -> &'static str {
        match self {
            Backend::Vxlan => "ip neigh show dev flannel.1; bridge fdb show dev flannel.1; ip route",
            Backend::HostGw => "ip route",
        }
    }

    /// Everything on `nodes` that differs from the backend's spec section.
    pub fn problems(self, tb: &Testbed, nodes: &[usize]) -> Vec<String> {
        match self {
            Backend::Vxlan => vxlan_problems(tb, nodes),
            Backend::HostGw => hostgw_problems(tb, nodes),
        }
    }

    /// Waits until `problems` is empty; panics with the remaining problems and the logs.
    pub fn wait_mesh(self, tb: &Testbed, nodes: &[usize], timeout: Duration) -> Duration {
        match self {
            Backend::Vxlan => wait_vxlan_mesh(tb, nodes, timeout),
            Backend::HostGw => wait_hostgw_mesh(tb, nodes, timeout),
        }
    }
}

/// Three nodes: every node's listings match the spec, the leases in etcd are well-formed (spec 3.1,
/// 3.2, 5.3), every pod pings every other, and the pings created nothing the spec does not prescribe.
pub fn three_nodes_match_the_spec_and_ping(backend: Backend, tag: &str) {
    let mut tb = testbed(tag, 3, backend.name());
    let started = Instant::now();
    start(&mut tb, &[0, 1, 2]);
    let took = backend.wait_mesh(&tb, &[0, 1, 2], CONVERGE);
    println!(
        "3 {} nodes programmed exactly as spec {} after {:?} (listings matched {took:?} after ready)",
        backend.name(),
        backend.spec(),
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
    for node in &tb.nodes {
        println!("{}:\n{}", node.name, node.ns.sh(backend.listing()));
    }

    add_pods(&mut tb, &[0, 1, 2], tag);
    let failed = ping_matrix(&tb, &[0, 1, 2]);
    assert!(
        failed.is_empty(),
        "pods that could not ping each other: {failed:?}\n{}",
        logs(&tb, &[0, 1, 2])
    );
    // Pinging created nothing the spec does not prescribe (e.g. learned FDB entries or neighbours).
    let problems = backend.problems(&tb, &[0, 1, 2]);
    assert!(problems.is_empty(), "after the pings: {problems:#?}");
}

/// node3 leaves (its daemon dies and its key is deleted, as an operator or the TTL would): its
/// entries disappear from node1 and node2, whose pods still ping each other. node3 joins again:
/// every peer gets its entries, matching its new lease in etcd, and every pod pings every other.
pub fn node_leaving_and_joining_shows_on_every_peer(backend: Backend, tag: &str) {
    let mut tb = testbed(tag, 3, backend.name());
    start(&mut tb, &[0, 1, 2]);
    backend.wait_mesh(&tb, &[0, 1, 2], CONVERGE);
    add_pods(&mut tb, &[0, 1], tag);

    let leaving = lease_of(&tb, 2);
    tb.stop_daemon(2, "KILL");
    tb.etcdctl(&["del", &leaving.full_key()]);
    let took = backend.wait_mesh(&tb, &[0, 1], CONVERGE);
    println!(
        "node3 ({}) left: its {} gone from node1 and node2 after {took:?}",
        leaving.subnet(),
        backend.per_peer()
    );
    for node in &tb.nodes[..2] {
        let text = node.ns.sh(backend.peer_entries());
        let mac = leaving.vtep_mac.as_deref().unwrap_or("<none>");
        assert!(
            !text.contains(mac) && !text.contains(&leaving.subnet()),
            "{} still has an entry of node3 ({mac}, {}): {text}",
            node.name,
            leaving.subnet()
        );
    }
    let failed = ping_matrix(&tb, &[0, 1]);
    assert!(
        failed.is_empty(),
        "the remaining pods lost each other: {failed:?}"
    );

    let joining = Instant::now();
    start(&mut tb, &[2]);
    let took = backend.wait_mesh(&tb, &[0, 1, 2], CONVERGE);
    println!(
        "node3 joined ({}): every node programmed as spec {} {:?} after its daemon started \
         ({took:?} after it was ready)",
        lease_of(&tb, 2).subnet(),
        backend.spec(),
        joining.elapsed()
    );
    add_pods(&mut tb, &[2], tag);
    let failed = ping_matrix(&tb, &[0, 1, 2]);
    assert!(
        failed.is_empty(),
        "pods that could not ping each other after the join: {failed:?}"
    );
}
