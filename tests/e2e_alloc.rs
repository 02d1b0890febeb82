//! End to end, alloc backend (spec 9.7, 3.2, 4.1): real flanneld daemons in network namespaces
//! with a real etcd. Each node gets a lease whose value is only its public IP, writes subnet.env
//! with the external interface's MTU, and creates nothing in the kernel: no device, no route, no
//! neighbour, whatever the other nodes do; `flanneld doctor` finds nothing wrong with it.

mod e2e_common;
mod support;

use std::time::Duration;

use e2e_common::*;

#[test]
fn alloc_nodes_get_leases_and_subnet_env_and_touch_no_kernel_state() {
    if !support::is_root() {
        return support::skip("alloc_nodes_get_leases", "needs root (network namespaces)");
    }
    let Some(_serial) = serial_or_skip("alloc_nodes_get_leases") else {
        return support::skip("alloc_nodes_get_leases", "etcd or a network tool is missing");
    };
    let mut tb = testbed("e2eal", 2, "alloc");
    // What each node has before flanneld starts, to compare with afterwards.
    let before: Vec<(String, String)> = (0..2)
        .map(|i| {
            let ns = &tb.nodes[i].ns;
            (
                ns.sh("ip -o link show | cut -d: -f2"),
                ns.sh("ip -4 route show table all"),
            )
        })
        .collect();
    start(&mut tb, &[0, 1]);

    let all = leases(&tb);
    assert_eq!(all.len(), 2, "one lease per node: {all:?}");
    for i in 0..2 {
        let own = lease_of(&tb, i);
        assert_eq!(
            own.value,
            format!(r#"{{"PublicIP":"{}","PublicIPv6":null}}"#, tb.nodes[i].ip),
            "spec 9.7: the public IP and no BackendType"
        );
        let text = std::fs::read_to_string(tb.nodes[i].subnet_file()).unwrap();
        assert_eq!(
            text,
            subnet_env_text(&own, 1500),
            "MTU = the external interface's"
        );
    }
    // Let the daemons run a while (a lease watch, had there been one, would have delivered the peer).
    std::thread::sleep(Duration::from_secs(2));
    for (i, (links, routes)) in before.iter().enumerate() {
        let ns = &tb.nodes[i].ns;
        assert_eq!(
            &ns.sh("ip -o link show | cut -d: -f2"),
            links,
            "no device on {}",
            tb.nodes[i].name
        );
        assert_eq!(
            &ns.sh("ip -4 route show table all"),
            routes,
            "no route on {}",
            tb.nodes[i].name
        );
        assert!(
            ns.sh("ip -6 route show table all proto 70").trim().is_empty(),
            "no IPv6 route of ours"
        );
        assert!(
            ns.sh("ip neigh show nud permanent").trim().is_empty(),
            "no permanent neighbour"
        );
    }
    // alloc watches no leases: the reconciler never learns of the other node.
    let metrics = tb.nodes[0]
        .ns
        .sh(&format!("curl -s -m 2 http://127.0.0.1:{HEALTHZ_PORT}/metrics"));
    assert!(
        metrics.lines().any(|l| l == "flannel_leases 0"),
        "alloc must not watch leases:\n{metrics}"
    );

    // doctor checks what alloc has (the lease, subnet.env with the interface MTU, health) and says
    // that nothing else is the backend's.
    for i in 0..2 {
        let (code, text) = doctor(&tb, i, &["--no-probe"]);
        assert_eq!(code, 0, "doctor on {}:\n{text}", tb.nodes[i].name);
        assert!(
            text.contains("the alloc backend programs nothing"),
            "doctor says what it checks of alloc:\n{text}"
        );
    }
}
