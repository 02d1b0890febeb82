//! End to end, IPv6 with `--kube-subnet-mgr` (issue 13): two testbed nodes with an IPv6 underlay
//! run the real flanneld against the test API server (tests/support/apiserver.rs).
//! - dual stack: podCIDRs of both families, subnet.env's six lines, the annotations exactly as
//!   upstream writes them (backend-data and backend-v6-data, public-ip and public-ipv6), the vxlan
//!   entries of both families, pods pinging over both, `public-ipv6-overwrite` followed by the
//!   peer, both VTEP MACs kept across a restart that lost both devices, `flanneld doctor` clean;
//! - IPv6-only: the nodes have no IPv4 address at all and reach the API server over IPv6, podCIDRs
//!   of one family, only the v6 annotations, no flannel.1, pods pinging over IPv6, doctor clean.

mod e2e_common;
mod support;
mod v6_common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};

use e2e_common::*;
use support::apiserver::ApiServer;
use support::testbed::Testbed;
use support::testbed_v6::ETCD_IPV6;
use v6_common::*;

const P: &str = "flannel.alpha.coreos.com/";
const API_PORT: u16 = 6443;

fn node_name(i: usize) -> String {
    format!("flannel{}", i + 1)
}

fn pod_cidr6(i: usize) -> String {
    format!("2001:db8:1:{}::/64", i + 1)
}

fn start_kube_daemon(tb: &mut Testbed, i: usize) {
    tb.start_daemon_with_env(i, &[("NODE_NAME".to_string(), node_name(i))]);
}

/// A testbed of two vxlan nodes with the IPv6 underlay and an API server on `api_ip` in the etcd
/// namespace; every daemon gets the kube flags and `net_conf` as its net-conf.json.
fn kube_testbed(tag: &str, api_ip: IpAddr, net_conf: &str) -> (Testbed, ApiServer) {
    let mut tb = testbed(tag, 2, "vxlan");
    tb.add_ipv6_underlay();
    let listener = tb.etcd_ns.run(move || {
        std::net::TcpListener::bind((api_ip, API_PORT)).expect("binding the API server on the underlay")
    });
    let api = ApiServer::start_on(listener);
    let path = tb.path().join("net-conf.json");
    std::fs::write(&path, net_conf).unwrap();
    for node in &mut tb.nodes {
        node.args.push("--kube-subnet-mgr".into());
        node.args
            .push(format!("--kube-api-url=http://{}:{API_PORT}", url_host(api_ip)));
        node.args.push(format!("--net-config-path={}", path.display()));
    }
    (tb, api)
}

fn link_mac(tb: &Testbed, i: usize, dev: &str) -> String {
    tb.ip_json(i, &format!("link show {dev}"))[0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Node `i`'s IPv6 lease as its annotations publish it.
fn v6_peer_from_annotations(api: &ApiServer, i: usize) -> V6Peer {
    let annotations = api.annotations(&node_name(i));
    let data: serde_json::Value = serde_json::from_str(
        annotations
            .get(&format!("{P}backend-v6-data"))
            .map_or("null", String::as_str),
    )
    .unwrap_or_default();
    V6Peer {
        subnet6: pod_cidr6(i).parse().unwrap(),
        public_ipv6: annotations
            .get(&format!("{P}public-ipv6"))
            .and_then(|ip| ip.parse().ok())
            .unwrap_or(Ipv6Addr::UNSPECIFIED),
        vtep_mac6: data["VtepMAC"].as_str().map(str::to_string),
    }
}

/// Waits until node `i` has exactly the IPv6 vxlan entries of spec 9.1 for node `peer`'s
/// annotations (and, with `v4`, the IPv4 ones too).
fn wait_entries(tb: &Testbed, api: &ApiServer, i: usize, peer: usize, v4: bool) {
    let mut last = None;
    let done = time_until(CONVERGE, || {
        let want6 = expected_v6_vxlan_entries(&[v6_peer_from_annotations(api, peer)]);
        let got6 = v6_entries(tb, i);
        let mut ok = got6 == want6;
        if v4 {
            let annotations = api.annotations(&node_name(peer));
            let data: serde_json::Value = serde_json::from_str(
                annotations
                    .get(&format!("{P}backend-data"))
                    .map_or("null", String::as_str),
            )
            .unwrap_or_default();
            let network = std::net::Ipv4Addr::new(198, 18, (peer + 1) as u8, 0);
            let info = LeaseInfo {
                key: format!("{network}-24"),
                network,
                prefix_len: 24,
                value: String::new(),
                public_ip: tb.nodes[peer].ip,
                vtep_mac: data["VtepMAC"].as_str().map(str::to_string),
            };
            ok &= vxlan_entries(tb, i) == expected_vxlan_entries(&[&info]);
        }
        last = Some((got6, want6));
        ok
    });
    assert!(
        done.is_some(),
        "{} entries never matched (got, want): {last:#?}\n{}",
        tb.nodes[i].name,
        logs(tb, &[0, 1])
    );
}

fn annotations_of(pairs: Vec<(&str, String)>) -> BTreeMap<String, String> {
    pairs.into_iter().map(|(k, v)| (format!("{P}{k}"), v)).collect()
}

fn doctor_kube(tb: &Testbed, i: usize) -> (i32, String) {
    let name = node_name(i);
    doctor_with_env(tb, i, &[], &[("NODE_NAME", name.as_str())])
}

#[test]
fn kube_dual_stack_two_vxlan_nodes() {
    let Some(_serial) = serial_or_skip("kube_ipv6_dual") else {
        return;
    };
    let (mut tb, api) = kube_testbed(
        "kv6d",
        support::testbed::ETCD_IP.parse().unwrap(),
        &dual_config(r#"{"Type": "vxlan"}"#),
    );
    for i in 0..2 {
        let v4 = format!("198.18.{}.0/24", i + 1);
        api.add_node(&node_name(i), &[&v4, &pod_cidr6(i)]);
        start_kube_daemon(&mut tb, i);
    }
    for i in 0..2 {
        let env = tb.wait_subnet_env(i, STARTUP);
        wait_ready(&mut tb, i, STARTUP);
        let text = std::fs::read_to_string(tb.nodes[i].subnet_file()).unwrap();
        assert_eq!(
            text,
            format!(
                "FLANNEL_NETWORK={NETWORK}\nFLANNEL_SUBNET=198.18.{n}.1/24\nFLANNEL_IPV6_NETWORK={NETWORK6}\n\
                 FLANNEL_IPV6_SUBNET=2001:db8:1:{n}::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
                n = i + 1
            ),
            "subnet.env of {}: {env:?}",
            tb.nodes[i].name
        );
        let expected = annotations_of(vec![
            (
                "backend-data",
                format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, link_mac(&tb, i, "flannel.1")),
            ),
            (
                "backend-v6-data",
                format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, link_mac(&tb, i, VXLAN6_DEV)),
            ),
            ("backend-type", "vxlan".into()),
            ("kube-subnet-manager", "true".into()),
            ("public-ip", tb.nodes[i].ip.to_string()),
            ("public-ipv6", tb.nodes[i].ipv6().to_string()),
        ]);
        assert_eq!(api.annotations(&node_name(i)), expected);
    }
    wait_entries(&tb, &api, 0, 1, true);
    wait_entries(&tb, &api, 1, 0, true);
    for i in 0..2 {
        tb.add_pod_any(i, "kv6d");
    }
    let failed = tb.ping_matrix_all(&[0, 1]);
    assert!(failed.is_empty(), "{failed:?}\n{}", logs(&tb, &[0, 1]));
    for i in 0..2 {
        let (code, text) = doctor_kube(&tb, i);
        assert_eq!(code, 0, "doctor on {}: {text}", tb.nodes[i].name);
    }

    // public-ipv6-overwrite: flannel1 publishes the given address, and flannel2's IPv6 FDB entry
    // for it follows; removing it restores the node's own address.
    let public_ipv6 = format!("{P}public-ipv6");
    api.annotate(
        "flannel1",
        &format!("{P}public-ipv6-overwrite"),
        Some("2001:db8::201"),
    );
    api.wait_node("flannel1", CONVERGE, |n| {
        n["metadata"]["annotations"][&public_ipv6] == "2001:db8::201"
    });
    wait_entries(&tb, &api, 1, 0, true);
    api.annotate("flannel1", &format!("{P}public-ipv6-overwrite"), None);
    api.wait_node("flannel1", CONVERGE, |n| {
        n["metadata"]["annotations"][&public_ipv6] == "2001:db8::1"
    });
    wait_entries(&tb, &api, 1, 0, true);

    // Both VTEP MACs survive losing both devices across a restart (read back from backend-data
    // and backend-v6-data), so flannel2's entries stay valid.
    let macs = (link_mac(&tb, 0, "flannel.1"), link_mac(&tb, 0, VXLAN6_DEV));
    tb.stop_daemon(0, "TERM");
    tb.nodes[0]
        .ns
        .sh(&format!("ip link del flannel.1 && ip link del {VXLAN6_DEV}"));
    start_kube_daemon(&mut tb, 0);
    wait_ready(&mut tb, 0, STARTUP);
    assert_eq!(
        (link_mac(&tb, 0, "flannel.1"), link_mac(&tb, 0, VXLAN6_DEV)),
        macs,
        "flannel.1 and {VXLAN6_DEV} were recreated with the stored MACs"
    );
    wait_entries(&tb, &api, 0, 1, true);
    let failed = tb.ping_matrix_all(&[0, 1]);
    assert!(
        failed.is_empty(),
        "after the restart: {failed:?}\n{}",
        logs(&tb, &[0, 1])
    );
}

#[test]
fn kube_ipv6_only_two_vxlan_nodes_without_any_ipv4() {
    let Some(_serial) = serial_or_skip("kube_ipv6_only") else {
        return;
    };
    let net_conf = format!(
        r#"{{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "{NETWORK6}", "Backend": {{"Type": "vxlan"}}}}"#
    );
    let (mut tb, api) = kube_testbed("kv6o", ETCD_IPV6.parse().unwrap(), &net_conf);
    for i in 0..2 {
        tb.remove_ipv4_underlay(i);
        api.add_node(&node_name(i), &[&pod_cidr6(i)]);
        start_kube_daemon(&mut tb, i);
    }
    for i in 0..2 {
        tb.wait_subnet_env(i, STARTUP);
        wait_ready(&mut tb, i, STARTUP);
        let text = std::fs::read_to_string(tb.nodes[i].subnet_file()).unwrap();
        assert_eq!(
            text,
            format!(
                "FLANNEL_IPV6_NETWORK={NETWORK6}\nFLANNEL_IPV6_SUBNET=2001:db8:1:{}::1/64\n\
                 FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
                i + 1
            )
        );
        let expected = annotations_of(vec![
            (
                "backend-v6-data",
                format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, link_mac(&tb, i, VXLAN6_DEV)),
            ),
            ("backend-type", "vxlan".into()),
            ("kube-subnet-manager", "true".into()),
            ("public-ipv6", tb.nodes[i].ipv6().to_string()),
        ]);
        assert_eq!(api.annotations(&node_name(i)), expected);
        assert!(
            tb.nodes[i].ns.try_sh("ip link show flannel.1").is_err(),
            "no IPv4 vxlan device in IPv6-only mode"
        );
    }
    wait_entries(&tb, &api, 0, 1, false);
    wait_entries(&tb, &api, 1, 0, false);
    for i in 0..2 {
        tb.add_pod_any(i, "kv6o");
    }
    let failed = tb.ping_matrix_all(&[0, 1]);
    assert!(failed.is_empty(), "{failed:?}\n{}", logs(&tb, &[0, 1]));
    for i in 0..2 {
        let (code, text) = doctor_kube(&tb, i);
        assert_eq!(code, 0, "doctor on {}: {text}", tb.nodes[i].name);
        println!("doctor on {}:\n{text}", tb.nodes[i].name);
    }
}
