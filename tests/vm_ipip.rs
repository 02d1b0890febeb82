//! ipip backend end to end (spec 9.4) in the VM testbed (`make test-vm`): this machine's kernel has
//! no ipip module, so these run inside a VM with a Debian kernel (tests/kernel_vm.rs). Real etcd,
//! real flanneld daemons in network namespaces, pods pinging across `flannel.ipip`:
//! - the mesh matches the spec (device attributes, address, MTU, one onlink route per peer, lease
//!   value, subnet.env) and every pod pings every other; without PeerFilter a stranger's IPIP
//!   reaches the pods, as upstream (flannel #961);
//! - with DirectRouting the routes go `via <PublicIP> dev eth0 onlink` and pods ping;
//! - a route deleted by hand and a deleted `flannel.ipip` come back, and pods ping again; then
//!   `flanneld doctor` finds the node healthy, and names a route deleted while the daemon is stopped;
//! - with PeerFilter a stranger's IPIP is dropped while the peers still ping.

mod e2e_common;
mod support;

use std::net::Ipv4Addr;

use e2e_common::*;
use serde_json::{Value, json};
use support::netns::{Netns, veth};
use support::testbed::{ROUTE_PROTO, Testbed};

const DEV: &str = "flannel.ipip";
const STRANGER_IP: &str = "192.0.2.50";

/// The e2e lock, or a skip (strict inside the VM) when the kernel cannot make ipip devices.
fn prerequisites(test: &str) -> Option<Serial> {
    if !support::is_root() {
        support::skip(test, "needs root (network namespaces)");
        return None;
    }
    let probe = Netns::new("vmipip-probe");
    if let Err(e) = probe.try_sh("ip link add probe0 type ipip local 192.0.2.1") {
        support::skip(
            test,
            &format!("the kernel cannot create ipip devices (run it with make test-vm): {e}"),
        );
        return None;
    }
    drop(probe);
    let serial = serial_or_skip(test);
    if serial.is_none() {
        support::skip(test, "etcd or a network tool is missing");
    }
    serial
}

fn ipip_testbed(tag: &str, nodes: usize, backend: &str) -> Testbed {
    let tb = testbed(tag, nodes, "ipip");
    tb.put_config(&format!(r#"{{"Network": "{NETWORK}", "Backend": {backend}}}"#));
    tb
}

fn json_list(tb: &Testbed, i: usize, args: &str) -> Vec<Value> {
    match tb.ip_json(i, args) {
        Value::Array(items) => items,
        _ => Vec::new(),
    }
}

fn sorted(items: impl IntoIterator<Item = Value>) -> Vec<String> {
    let mut out: Vec<String> = items.into_iter().map(|v| canon(&v).to_string()).collect();
    out.sort();
    out
}

/// The pod-network routes of node `i` (cni0's connected route left out).
fn routes(tb: &Testbed, i: usize) -> Vec<String> {
    sorted(
        json_list(tb, i, "-d route show root 198.18.0.0/15")
            .into_iter()
            .filter(|r| r["dev"] != "cni0"),
    )
}

/// Spec 9.4: one `<subnet> via <PublicIP> dev <dev> onlink` per peer (protocol 70).
fn expected_routes(peers: &[&LeaseInfo], dev: &str) -> Vec<String> {
    sorted(peers.iter().map(|p| {
        json!({"type": "unicast", "dst": p.subnet(), "gateway": p.public_ip.to_string(),
               "dev": dev, "protocol": ROUTE_PROTO, "scope": "global", "flags": ["onlink"]})
    }))
}

/// What differs on node `i` from spec 9.4: device, address, routes via `dev`, lease, subnet.env.
fn node_problems(tb: &Testbed, i: usize, route_dev: &str) -> Vec<String> {
    let all = leases(tb);
    let ip = tb.nodes[i].ip;
    let Some(own) = all.iter().find(|l| l.public_ip == ip) else {
        return vec![format!("no lease with PublicIP {ip}")];
    };
    let peers: Vec<&LeaseInfo> = all.iter().filter(|l| l.public_ip != ip).collect();
    let mut p = Vec::new();
    let links = json_list(tb, i, &format!("-d link show {DEV}"));
    match links.first() {
        None => p.push(format!("{DEV} is missing")),
        Some(link) => {
            let info = &link["linkinfo"];
            let data = &info["info_data"];
            if info["info_kind"] != "ipip" {
                p.push(format!("{DEV} kind {}", info["info_kind"]));
            }
            if data["local"] != ip.to_string() || data["remote"] != "any" {
                p.push(format!("{DEV} local/remote {} {}", data["local"], data["remote"]));
            }
            if data["ttl"] != 0 && data["ttl"] != "inherit" {
                p.push(format!("{DEV} ttl {}", data["ttl"]));
            }
            if data["pmtudisc"] != false {
                p.push(format!("{DEV} pmtudisc {}", data["pmtudisc"]));
            }
            if link["mtu"] != 1480 {
                p.push(format!("{DEV} mtu {}", link["mtu"]));
            }
            if !link["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "UP"))
            {
                p.push(format!("{DEV} is not up"));
            }
        }
    }
    let addrs: Vec<String> = json_list(tb, i, &format!("-4 addr show dev {DEV}"))
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
        .collect();
    if addrs != vec![format!("{}/32", own.network)] {
        p.push(format!("{DEV} addresses {addrs:?}"));
    }
    let got = routes(tb, i);
    let want = expected_routes(&peers, route_dev);
    if got != want {
        p.push(format!("routes {got:?}, want {want:?}"));
    }
    let value = format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"ipip"}}"#);
    if own.value != value {
        p.push(format!("lease value {}", own.value));
    }
    let env = std::fs::read_to_string(tb.nodes[i].subnet_file()).unwrap_or_default();
    if env != subnet_env_text(own, 1480) {
        p.push(format!("subnet.env {env:?}"));
    }
    p.into_iter()
        .map(|x| format!("{}: {x}", tb.nodes[i].name))
        .collect()
}

fn wait_mesh(tb: &Testbed, nodes: &[usize], route_dev: impl Fn(usize) -> String) {
    let check = || -> Vec<String> {
        nodes
            .iter()
            .flat_map(|&i| node_problems(tb, i, &route_dev(i)))
            .collect()
    };
    if time_until(CONVERGE, || check().is_empty()).is_none() {
        let all: Vec<usize> = (0..tb.nodes.len()).collect();
        panic!(
            "the ipip mesh differs from spec 9.4:\n  {}\n{}",
            check().join("\n  "),
            logs(tb, &all)
        );
    }
    for &i in nodes {
        println!(
            "--- {} ---\n{}",
            tb.nodes[i].name,
            tb.nodes[i].ns.sh(&format!(
                "ip -d link show {DEV}; ip route show root 198.18.0.0/15"
            ))
        );
    }
}

/// A host on the underlay that is no node: it tunnels IPIP to node `to` and routes its pod subnet
/// through that tunnel. Returns the namespace.
fn stranger(tb: &Testbed, tag: &str, to: usize) -> Netns {
    let ns = Netns::new(&format!("{tag}-x"));
    veth(&tb.switch, "x0", &ns, "eth0");
    tb.switch.sh("ip link set x0 master br0");
    let node = tb.nodes[to].ip;
    let subnet = lease_of(tb, to).subnet();
    ns.sh(&format!(
        "ip addr add {STRANGER_IP}/24 dev eth0 && \
         ip link add t0 type ipip local {STRANGER_IP} remote {node} && ip link set t0 up && \
         ip route add {subnet} dev t0 src {STRANGER_IP}"
    ));
    ns
}

fn stranger_reaches(ns: &Netns, pod: Ipv4Addr) -> bool {
    (0..3).any(|_| {
        ns.exec(&["ping", "-c", "1", "-W", "2", &pod.to_string()])
            .status
            .success()
    })
}

#[test]
#[ignore = "runs inside the VM testbed (make test-vm)"]
fn ipip_mesh_matches_the_spec_and_every_pod_pings_every_other() {
    let Some(_serial) = prerequisites("ipip_mesh") else {
        return;
    };
    let mut tb = ipip_testbed("vmip", 3, r#"{"Type": "ipip"}"#);
    start(&mut tb, &[0, 1, 2]);
    wait_mesh(&tb, &[0, 1, 2], |_| DEV.to_string());
    add_pods(&mut tb, &[0, 1, 2], "vmip");
    let failed = ping_matrix(&tb, &[0, 1, 2]);
    assert!(
        failed.is_empty(),
        "pods could not ping: {failed:?}\n{}",
        logs(&tb, &[0, 1, 2])
    );

    // Upstream's behaviour without PeerFilter (flannel #961): anyone's IPIP to the node is taken.
    let x = stranger(&tb, "vmip", 0);
    let pod = tb.nodes[0].pod_ip().unwrap();
    assert!(
        stranger_reaches(&x, pod),
        "without PeerFilter a stranger's IPIP reaches the pods (the control for the filter test)"
    );
}

#[test]
#[ignore = "runs inside the VM testbed (make test-vm)"]
fn ipip_direct_routing_goes_via_eth0_and_pods_ping() {
    let Some(_serial) = prerequisites("ipip_direct_routing") else {
        return;
    };
    let mut tb = ipip_testbed("vmipd", 3, r#"{"Type": "ipip", "DirectRouting": true}"#);
    start(&mut tb, &[0, 1, 2]);
    // Every peer shares the underlay subnet: all routes go straight through eth0.
    wait_mesh(&tb, &[0, 1, 2], |_| "eth0".to_string());
    add_pods(&mut tb, &[0, 1, 2], "vmipd");
    let failed = ping_matrix(&tb, &[0, 1, 2]);
    assert!(
        failed.is_empty(),
        "pods could not ping: {failed:?}\n{}",
        logs(&tb, &[0, 1, 2])
    );
    // doctor expects the DirectRouting routes the daemon made, and the peers answer.
    wait_ready(&mut tb, 0, STARTUP);
    let (code, text) = doctor(&tb, 0, &[]);
    assert_eq!(code, 0, "doctor with DirectRouting:\n{text}");
}

#[test]
#[ignore = "runs inside the VM testbed (make test-vm)"]
fn ipip_deleted_route_and_deleted_device_come_back() {
    let Some(_serial) = prerequisites("ipip_self_heal") else {
        return;
    };
    let mut tb = ipip_testbed("vmiph", 2, r#"{"Type": "ipip"}"#);
    start(&mut tb, &[0, 1]);
    wait_mesh(&tb, &[0, 1], |_| DEV.to_string());
    add_pods(&mut tb, &[0, 1], "vmiph");

    let peer = lease_of(&tb, 1);
    let route = format!("{} via {} dev {DEV} onlink", peer.subnet(), peer.public_ip);
    tb.nodes[0].ns.sh(&format!("ip route del {route}"));
    let back = time_until(CONVERGE, || {
        !tb.nodes[0]
            .ns
            .sh(&format!(
                "ip route show {} proto {ROUTE_PROTO} dev {DEV}",
                peer.subnet()
            ))
            .trim()
            .is_empty()
    });
    let Some(took) = back else {
        panic!("route {route} not back; log:\n{}", tb.nodes[0].log());
    };
    println!(
        "ipip route deleted by hand: back after {took:?} (goal 1 s: {})",
        against_one_second_goal(took)
    );

    tb.nodes[0].ns.sh(&format!("ip link del {DEV}"));
    let back = time_until(CONVERGE, || node_problems(&tb, 0, DEV).is_empty());
    let Some(took) = back else {
        panic!(
            "{DEV} and its routes not back: {:?}\nlog:\n{}",
            node_problems(&tb, 0, DEV),
            tb.nodes[0].log()
        );
    };
    println!("{DEV} deleted by hand: device, address and routes back after {took:?}");
    let failed = ping_matrix(&tb, &[0, 1]);
    assert!(
        failed.is_empty(),
        "pods could not ping after the repairs: {failed:?}"
    );

    // doctor: the repaired node is healthy (device, routes, the peer answering over the tunnel);
    // with its daemon stopped, a deleted route is named with its peer.
    wait_ready(&mut tb, 0, STARTUP);
    let (code, text) = doctor(&tb, 0, &[]);
    assert_eq!(code, 0, "doctor on the repaired node:\n{text}");
    assert!(text.contains("flannel.ipip: ipip, local"), "{text}");
    tb.stop_daemon(0, "TERM");
    tb.nodes[0].ns.sh(&format!("ip route del {route}"));
    let (code, text) = doctor(&tb, 0, &[]);
    assert_eq!(code, 1, "doctor with a route missing:\n{text}");
    let missing = format!("route {route} is missing");
    assert!(
        text.lines()
            .any(|l| l.contains(&missing) && l.contains(&peer.public_ip.to_string())),
        "no line names the missing route and its peer:\n{text}"
    );
    println!("deleted route, daemon stopped, doctor says:\n{text}");
}

#[test]
#[ignore = "runs inside the VM testbed (make test-vm)"]
fn ipip_peer_filter_drops_a_strangers_ipip_and_keeps_the_peers() {
    let Some(_serial) = prerequisites("ipip_peer_filter") else {
        return;
    };
    let mut tb = ipip_testbed("vmipf", 3, r#"{"Type": "ipip", "PeerFilter": true}"#);
    start(&mut tb, &[0, 1]);
    wait_mesh(&tb, &[0, 1], |_| DEV.to_string());
    add_pods(&mut tb, &[0, 1], "vmipf");
    let x = stranger(&tb, "vmipf", 0);
    let pod = tb.nodes[0].pod_ip().unwrap();
    assert!(
        !stranger_reaches(&x, pod),
        "PeerFilter must drop the stranger's IPIP"
    );
    let failed = ping_matrix(&tb, &[0, 1]);
    assert!(
        failed.is_empty(),
        "peers could not ping: {failed:?}\n{}",
        logs(&tb, &[0, 1])
    );
    let chain = tb.nodes[0].ns.sh("iptables -w -t raw -S FLANNEL-IPIP");
    println!("node1's filter:\n{chain}");
    assert!(chain.contains(&format!("-s {}/32", tb.nodes[1].ip)), "{chain}");

    // A node joining is let in as soon as its lease is seen.
    start(&mut tb, &[2]);
    wait_mesh(&tb, &[0, 1, 2], |_| DEV.to_string());
    add_pods(&mut tb, &[2], "vmipf");
    let failed = ping_matrix(&tb, &[0, 1, 2]);
    assert!(
        failed.is_empty(),
        "after a join: {failed:?}\n{}",
        logs(&tb, &[0, 1, 2])
    );
    assert!(!stranger_reaches(&x, pod), "still dropped");
}

/// The ifindex of node `i`'s `flannel.ipip`.
fn ipip_index(tb: &Testbed, i: usize) -> Option<u64> {
    json_list(tb, i, &format!("link show {DEV}"))
        .first()
        .and_then(|l| l["ifindex"].as_u64())
}

#[test]
#[ignore = "runs inside the VM testbed (make test-vm)"]
fn ipip_existing_devices_are_recreated_adopted_or_refused() {
    let Some(_serial) = prerequisites("ipip_existing_devices") else {
        return;
    };
    let mut tb = ipip_testbed("vmipx", 2, r#"{"Type": "ipip"}"#);
    // node1: a leftover flannel.ipip with another local address is recreated (its attributes are
    // read back from the kernel to decide that).
    tb.nodes[0].ns.sh(&format!(
        "ip link add {DEV} type ipip local 192.0.2.99 && ip link set {DEV} up"
    ));
    let stale = ipip_index(&tb, 0);
    // node2: a device of that name that is no ipip tunnel is refused with upstream's message.
    tb.nodes[1].ns.sh(&format!("ip link add {DEV} type dummy"));
    start(&mut tb, &[0]);
    wait_mesh(&tb, &[0], |_| DEV.to_string());
    assert_ne!(ipip_index(&tb, 0), stale, "the incompatible device was recreated");

    tb.start_daemon(1);
    let deadline = std::time::Instant::now() + STARTUP;
    while daemon_alive(&mut tb, 1) {
        assert!(
            std::time::Instant::now() < deadline,
            "node2 did not refuse the dummy device"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let log = tb.nodes[1].log();
    assert!(
        log.contains("flannel.ipip isn't an ipip mode device, please remove device and try again"),
        "{log}"
    );
    assert!(
        tb.nodes[1]
            .ns
            .sh(&format!("ip -d link show {DEV}"))
            .contains("dummy"),
        "the foreign device is left alone"
    );

    // A restart adopts the right device as it is: same index, nothing re-created.
    let before = ipip_index(&tb, 0);
    tb.stop_daemon(0, "TERM");
    start(&mut tb, &[0]);
    wait_mesh(&tb, &[0], |_| DEV.to_string());
    assert_eq!(ipip_index(&tb, 0), before, "adopted across a restart");
}
