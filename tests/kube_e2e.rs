//! End to end with `--kube-subnet-mgr` (upstream's functional kube suite, spec 13.2): nodes
//! flannel1 (podCIDR 198.18.1.0/24) and flannel2 (198.18.2.0/24) as two testbed nodes running the
//! real flanneld against the test API server (tests/support/apiserver.rs) on the underlay at
//! 192.0.2.100:6443. Checks the wait for a pod CIDR, subnet.env, the annotations exactly as upstream writes them, the
//! NetworkUnavailable condition, the vxlan entries of spec 9.1, pod pings, public-ip-overwrite,
//! a deleted node disappearing from its peer, and the VTEP MAC surviving a device loss + restart.

mod e2e_common;
mod support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use e2e_common::*;
use support::apiserver::ApiServer;
use support::testbed::{ETCD_IP, Testbed};

const P: &str = "flannel.alpha.coreos.com/";
const API_PORT: u16 = 6443;

fn node_name(i: usize) -> String {
    format!("flannel{}", i + 1)
}

fn start_kube_daemon(tb: &mut Testbed, i: usize) {
    tb.start_daemon_with_env(i, &[("NODE_NAME".to_string(), node_name(i))]);
}

/// The node's lease as its annotations publish it (for the spec 9.1 listings).
fn lease_from_annotations(api: &ApiServer, i: usize) -> LeaseInfo {
    let annotations = api.annotations(&node_name(i));
    let public_ip: Ipv4Addr = annotations
        .get(&format!("{P}public-ip"))
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("{} has no public-ip annotation: {annotations:?}", node_name(i)));
    let data: serde_json::Value = serde_json::from_str(
        annotations
            .get(&format!("{P}backend-data"))
            .map_or("null", String::as_str),
    )
    .unwrap_or_default();
    let network = Ipv4Addr::new(198, 18, (i + 1) as u8, 0);
    LeaseInfo {
        key: format!("{network}-24"),
        network,
        prefix_len: 24,
        value: String::new(),
        public_ip,
        vtep_mac: data["VtepMAC"].as_str().map(str::to_string),
    }
}

fn vtep_mac(tb: &Testbed, i: usize) -> String {
    let links = tb.ip_json(i, "link show flannel.1");
    links[0]["address"].as_str().unwrap_or_default().to_string()
}

/// Waits until node `i` has exactly the spec 9.1 entries for `peers`.
fn wait_entries(tb: &Testbed, api: &ApiServer, i: usize, peers: &[usize]) {
    let mut last = None;
    let done = time_until(CONVERGE, || {
        let infos: Vec<LeaseInfo> = peers.iter().map(|&p| lease_from_annotations(api, p)).collect();
        let want = expected_vxlan_entries(&infos.iter().collect::<Vec<_>>());
        let got = vxlan_entries(tb, i);
        let ok = got == want;
        last = Some((got, want));
        ok
    });
    assert!(
        done.is_some(),
        "{} entries never matched (got, want): {last:#?}\n{}",
        tb.nodes[i].name,
        logs(tb, &[0, 1])
    );
}

#[test]
fn kube_subnet_manager_two_vxlan_nodes_like_upstreams_functional_suite() {
    let Some(_serial) = serial_or_skip("kube_two_nodes") else {
        return;
    };
    let mut tb = testbed("kubevx", 2, "vxlan");
    let listener = tb.etcd_ns.run(|| {
        std::net::TcpListener::bind((ETCD_IP, API_PORT)).expect("binding the API server on the underlay")
    });
    let api = ApiServer::start_on(listener);
    api.add_node("flannel1", &["198.18.1.0/24"]);
    // flannel2 has no pod CIDR yet: its daemon must wait and say how to fix it (pain point 1.1).
    api.add_node("flannel2", &[]);
    let net_conf = tb.path().join("net-conf.json");
    std::fs::write(
        &net_conf,
        format!(r#"{{"Network": "{NETWORK}", "Backend": {{"Type": "vxlan"}}}}"#),
    )
    .unwrap();
    for node in &mut tb.nodes {
        node.args.push("--kube-subnet-mgr".into());
        node.args
            .push(format!("--kube-api-url=http://{ETCD_IP}:{API_PORT}"));
        node.args
            .push(format!("--net-config-path={}", net_conf.display()));
    }
    for i in 0..2 {
        start_kube_daemon(&mut tb, i);
    }
    let hint = time_until(STARTUP, || tb.nodes[1].log().contains("--allocate-node-cidrs"));
    assert!(
        hint.is_some(),
        "no pod-CIDR hint in the log:\n{}",
        tb.nodes[1].log()
    );
    assert!(
        tb.nodes[1].subnet_env().is_none() && daemon_alive(&mut tb, 1),
        "flannel2 waits"
    );
    api.add_node("flannel2", &["198.18.2.0/24"]);
    for i in 0..2 {
        let env = tb.wait_subnet_env(i, STARTUP);
        wait_ready(&mut tb, i, STARTUP);
        let expected: BTreeMap<String, String> = [
            ("FLANNEL_NETWORK", NETWORK.to_string()),
            ("FLANNEL_SUBNET", format!("198.18.{}.1/24", i + 1)),
            ("FLANNEL_MTU", "1450".into()),
            ("FLANNEL_IPMASQ", "false".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(env, expected, "subnet.env of {}", tb.nodes[i].name);
    }

    // The annotations exactly as upstream writes them, with the device's real MAC.
    for i in 0..2 {
        let expected: BTreeMap<String, String> = [
            (
                "backend-data",
                format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, vtep_mac(&tb, i)),
            ),
            ("backend-type", "vxlan".into()),
            ("kube-subnet-manager", "true".into()),
            ("public-ip", tb.nodes[i].ip.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{P}{k}"), v))
        .collect();
        assert_eq!(api.annotations(&node_name(i)), expected);
        api.wait_node(&node_name(i), CONVERGE, |n| {
            n["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "NetworkUnavailable" && c["status"] == "False")
            })
        });
    }
    assert!(
        api.patches("/api/v1/nodes/flannel1").is_empty(),
        "writes go to nodes/<n>/status only"
    );

    wait_entries(&tb, &api, 0, &[1]);
    wait_entries(&tb, &api, 1, &[0]);
    add_pods(&mut tb, &[0, 1], "kubevx");
    let failed = ping_matrix(&tb, &[0, 1]);
    assert!(
        failed.is_empty(),
        "pods that could not ping each other: {failed:?}\n{}",
        logs(&tb, &[0, 1])
    );

    // public-ip-overwrite on flannel1 changes its public-ip (upstream: within 1 min), and the
    // peer follows; removing it restores the node's own address and connectivity.
    let public_ip = format!("{P}public-ip");
    api.annotate(
        "flannel1",
        &format!("{P}public-ip-overwrite"),
        Some("192.0.2.201"),
    );
    api.wait_node("flannel1", CONVERGE, |n| {
        n["metadata"]["annotations"][&public_ip] == "192.0.2.201"
    });
    wait_entries(&tb, &api, 1, &[0]);
    api.annotate("flannel1", &format!("{P}public-ip-overwrite"), None);
    api.wait_node("flannel1", CONVERGE, |n| {
        n["metadata"]["annotations"][&public_ip] == "192.0.2.1"
    });
    wait_entries(&tb, &api, 1, &[0]);
    let pod1 = tb.nodes[0].pod_ip().unwrap();
    assert!(
        tb.ping_until(1, pod1, Duration::from_secs(10)),
        "{}",
        logs(&tb, &[0, 1])
    );

    // The VTEP MAC survives losing the device across a restart (read back from backend-data).
    let mac = vtep_mac(&tb, 0);
    tb.stop_daemon(0, "TERM");
    tb.nodes[0].ns.sh("ip link del flannel.1");
    start_kube_daemon(&mut tb, 0);
    wait_ready(&mut tb, 0, STARTUP);
    assert_eq!(
        vtep_mac(&tb, 0),
        mac,
        "flannel.1 was recreated with the stored MAC"
    );
    wait_entries(&tb, &api, 0, &[1]);
    assert!(
        tb.ping_until(1, pod1, Duration::from_secs(10)),
        "{}",
        logs(&tb, &[0, 1])
    );

    // A deleted node disappears from its peer.
    api.delete_node("flannel2");
    wait_entries(&tb, &api, 0, &[]);
    assert!(daemon_alive(&mut tb, 0) && daemon_alive(&mut tb, 1));
}
