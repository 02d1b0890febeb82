//! Shared pieces of the IPv6 end-to-end tests (issue 13): the dual-stack network config, the
//! dual-stack lease keys and values of spec 3.1/3.2 as etcd holds them, the exact IPv6 kernel
//! listings spec 9.1 (vxlan, `flannel-v6.1`) and 9.2 (host-gw) prescribe next to the IPv4 ones of
//! e2e_common, subnet.env's six lines (spec 4.1), and `flanneld doctor` run in a node. It only
//! reads and compares; the tests take the e2e lock (`serial_or_skip`) before building a testbed.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::{Value, json};

use crate::e2e_common::{
    Entries, LeaseInfo, NETWORK, canon, expected_hostgw_routes, expected_vxlan_entries, logs,
    pod_network_routes, time_until, vxlan_entries,
};
use crate::support::testbed::{ETCD_PREFIX, ROUTE_PROTO, Testbed};

/// The IPv6 cluster network of every dual-stack and IPv6-only test (inside 2001:db8::/32, apart
/// from the 2001:db8::/64 underlay).
pub const NETWORK6: &str = "2001:db8:1::/48";
/// The IPv6 vxlan device for VNI 1.
pub const VXLAN6_DEV: &str = "flannel-v6.1";

/// A dual-stack network config with `backend` (JSON) as `Backend`.
pub fn dual_config(backend: &str) -> String {
    format!(
        r#"{{"Network": "{NETWORK}", "EnableIPv6": true, "IPv6Network": "{NETWORK6}", "Backend": {backend}}}"#
    )
}

/// One node's dual-stack lease as stored in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DualLease {
    /// `198.18.76.0-24&2001:db8:1:5::-64`
    pub key: String,
    pub subnet: Ipv4Net,
    pub subnet6: Ipv6Net,
    pub value: String,
    pub public_ip: Ipv4Addr,
    pub public_ipv6: Ipv6Addr,
    pub vtep_mac: Option<String>,
    pub vtep_mac6: Option<String>,
}

/// The IPv6 half of a peer's lease (dual stack or IPv6-only), for the IPv6 listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V6Peer {
    pub subnet6: Ipv6Net,
    pub public_ipv6: Ipv6Addr,
    pub vtep_mac6: Option<String>,
}

impl DualLease {
    /// The IPv6 half.
    pub fn v6(&self) -> V6Peer {
        V6Peer {
            subnet6: self.subnet6,
            public_ipv6: self.public_ipv6,
            vtep_mac6: self.vtep_mac6.clone(),
        }
    }

    /// The IPv4 half as e2e_common's listings want it.
    pub fn v4(&self) -> LeaseInfo {
        LeaseInfo {
            key: self.key.clone(),
            network: self.subnet.network(),
            prefix_len: self.subnet.prefix_len(),
            value: self.value.clone(),
            public_ip: self.public_ip,
            vtep_mac: self.vtep_mac.clone(),
        }
    }
}

/// Every lease in etcd as a dual-stack lease; a key or value of another shape fails the test.
pub fn dual_leases(tb: &Testbed) -> Vec<DualLease> {
    tb.leases()
        .into_iter()
        .map(|(key, value)| {
            let (v4, v6) = key
                .split_once('&')
                .unwrap_or_else(|| panic!("lease key {key:?} is not <v4>-<len>&<v6>-<len> (spec 3.1)"));
            let cidr = |part: &str| {
                let (ip, len) = part
                    .rsplit_once('-')
                    .unwrap_or_else(|| panic!("{part:?} of key {key:?} is not <ip>-<len>"));
                format!("{ip}/{len}")
            };
            let subnet: Ipv4Net = cidr(v4).parse().unwrap_or_else(|e| panic!("key {key}: {e}"));
            let subnet6: Ipv6Net = cidr(v6).parse().unwrap_or_else(|e| panic!("key {key}: {e}"));
            assert_eq!(
                key,
                format!(
                    "{}-{}&{}-{}",
                    subnet.network(),
                    subnet.prefix_len(),
                    subnet6.network(),
                    subnet6.prefix_len()
                ),
                "keys use network addresses in Go's text form"
            );
            let attrs: Value =
                serde_json::from_str(&value).unwrap_or_else(|e| panic!("value of {key} ({e}): {value}"));
            let ip = |field: &str| {
                attrs[field]
                    .as_str()
                    .unwrap_or_else(|| panic!("value of {key} has no {field}: {value}"))
                    .to_string()
            };
            DualLease {
                subnet,
                subnet6,
                public_ip: ip("PublicIP").parse().expect("PublicIP"),
                public_ipv6: ip("PublicIPv6").parse().expect("PublicIPv6"),
                vtep_mac: attrs["BackendData"]["VtepMAC"].as_str().map(str::to_string),
                vtep_mac6: attrs["BackendV6Data"]["VtepMAC"].as_str().map(str::to_string),
                key,
                value,
            }
        })
        .collect()
}

/// Node `i`'s lease: the one with the node's IPv4 address as PublicIP.
pub fn dual_lease_of(tb: &Testbed, i: usize) -> DualLease {
    let all = dual_leases(tb);
    let ip = tb.nodes[i].ip;
    all.iter()
        .find(|l| l.public_ip == ip)
        .cloned()
        .unwrap_or_else(|| panic!("no lease of {} in {all:#?}", tb.nodes[i].name))
}

/// The value spec 3.2 prescribes for a dual-stack vxlan node (field order fixed).
pub fn vxlan_dual_value(ip: Ipv4Addr, ip6: Ipv6Addr, mac: &str, mac6: &str) -> String {
    format!(
        r#"{{"PublicIP":"{ip}","PublicIPv6":"{ip6}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}"#
    )
}

/// The value spec 3.2 prescribes for a dual-stack host-gw node.
pub fn hostgw_dual_value(ip: Ipv4Addr, ip6: Ipv6Addr) -> String {
    format!(r#"{{"PublicIP":"{ip}","PublicIPv6":"{ip6}","BackendType":"host-gw"}}"#)
}

/// subnet.env exactly as spec 4.1 prescribes for a dual-stack lease: six lines in this order.
pub fn dual_subnet_env(lease: &DualLease, mtu: u32, ip_masq: bool) -> String {
    let first = Ipv4Addr::from(u32::from(lease.subnet.network()) + 1);
    let first6 = Ipv6Addr::from(u128::from(lease.subnet6.network()) + 1);
    format!(
        "FLANNEL_NETWORK={NETWORK}\nFLANNEL_SUBNET={first}/{}\nFLANNEL_IPV6_NETWORK={NETWORK6}\n\
         FLANNEL_IPV6_SUBNET={first6}/{}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={ip_masq}\n",
        lease.subnet.prefix_len(),
        lease.subnet6.prefix_len()
    )
}

fn json_list(tb: &Testbed, i: usize, cmd: &str) -> Vec<Value> {
    match tb.nodes[i].ns.try_sh(cmd) {
        Ok(out) => match serde_json::from_str::<Value>(out.trim()) {
            Ok(Value::Array(items)) => items,
            _ => Vec::new(),
        },
        Err(_) => Vec::new(),
    }
}

fn canon_sorted(items: impl IntoIterator<Item = Value>) -> Vec<String> {
    let mut out: Vec<String> = items.into_iter().map(|v| canon(&v).to_string()).collect();
    out.sort();
    out
}

/// Main-table IPv6 routes inside NETWORK6 on node `i` except the kernel's own (cni0's prefix, the
/// vxlan device's address), as canonical JSON.
pub fn pod_network_routes6(tb: &Testbed, i: usize) -> Vec<String> {
    canon_sorted(
        json_list(tb, i, &format!("ip -6 -d -j route show root {NETWORK6}"))
            .into_iter()
            .filter(|r| r["protocol"] != "kernel"),
    )
}

/// The IPv6 neighbours and FDB entries on flannel-v6.1 and the IPv6 pod-network routes of node `i`.
pub fn v6_entries(tb: &Testbed, i: usize) -> Entries {
    Entries {
        neigh: canon_sorted(json_list(tb, i, &format!("ip -6 -j neigh show dev {VXLAN6_DEV}"))),
        fdb: canon_sorted(json_list(tb, i, &format!("bridge -j fdb show dev {VXLAN6_DEV}"))),
        routes: pod_network_routes6(tb, i),
    }
}

fn route6(dst: &str, gateway: &str, dev: &str, onlink: bool) -> Value {
    json!({"type": "unicast", "dst": dst, "gateway": gateway, "dev": dev, "protocol": ROUTE_PROTO,
           "scope": "global", "metric": 1024, "pref": "medium",
           "flags": if onlink { json!(["onlink"]) } else { json!([]) }})
}

/// Spec 9.1 for IPv6: per peer `<net6> lladdr <v6 VtepMAC> PERMANENT` and `<v6 VtepMAC> dst
/// <PublicIPv6> self permanent` on flannel-v6.1, and `<subnet6> via <net6> dev flannel-v6.1 onlink`.
pub fn expected_v6_vxlan_entries(peers: &[V6Peer]) -> Entries {
    let mac = |p: &V6Peer| p.vtep_mac6.clone().unwrap_or_else(|| "<no v6 VtepMAC>".into());
    Entries {
        neigh: canon_sorted(peers.iter().map(|p| {
            json!({"dst": p.subnet6.network().to_string(), "lladdr": mac(p), "state": ["PERMANENT"]})
        })),
        fdb: canon_sorted(peers.iter().map(|p| {
            json!({"mac": mac(p), "dst": p.public_ipv6.to_string(), "flags": ["self"], "state": "permanent"})
        })),
        routes: canon_sorted(peers.iter().map(|p| {
            route6(&p.subnet6.to_string(), &p.subnet6.network().to_string(), VXLAN6_DEV, true)
        })),
    }
}

/// Spec 9.2 for IPv6 (also vxlan DirectRouting): per peer `<subnet6> via <PublicIPv6> dev eth0`.
pub fn expected_v6_direct_routes(peers: &[V6Peer]) -> Vec<String> {
    canon_sorted(
        peers
            .iter()
            .map(|p| route6(&p.subnet6.to_string(), &p.public_ipv6.to_string(), "eth0", false)),
    )
}

/// The dual-stack backends of the etcd tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dual {
    Vxlan,
    /// vxlan with DirectRouting: peers on the same underlay get direct routes, no tunnel entries.
    VxlanDirect,
    HostGw,
}

/// Everything on node `i` that differs from spec 3.2, 4.1, 9.1/9.2 for both families, with every
/// other lease in etcd as its peers; `public_ipv6` is what the node should advertise.
pub fn dual_node_problems(
    tb: &Testbed,
    i: usize,
    backend: Dual,
    ip_masq: bool,
    public_ipv6: Ipv6Addr,
) -> Vec<String> {
    let all = dual_leases(tb);
    let ip = tb.nodes[i].ip;
    let Some(own) = all.iter().find(|l| l.public_ip == ip) else {
        return vec![format!("no lease with PublicIP {ip}: {all:#?}")];
    };
    let peers: Vec<&DualLease> = all.iter().filter(|l| l.public_ip != ip).collect();
    let peers4: Vec<LeaseInfo> = peers.iter().map(|p| p.v4()).collect();
    let peers4: Vec<&LeaseInfo> = peers4.iter().collect();
    let peers6: Vec<V6Peer> = peers.iter().map(|p| p.v6()).collect();
    let mut p = Vec::new();
    let link_mac = |dev: &str| {
        json_list(tb, i, &format!("ip -j link show {dev}"))
            .first()
            .and_then(|l| l["address"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("<no {dev}>"))
    };
    let (want_value, mtu) = match backend {
        Dual::Vxlan | Dual::VxlanDirect => (
            vxlan_dual_value(ip, public_ipv6, &link_mac("flannel.1"), &link_mac(VXLAN6_DEV)),
            1450,
        ),
        Dual::HostGw => (hostgw_dual_value(ip, public_ipv6), 1500),
    };
    if own.value != want_value {
        p.push(format!("lease value {} differs from {want_value}", own.value));
    }
    let env = std::fs::read_to_string(tb.nodes[i].subnet_file()).unwrap_or_default();
    let want_env = dual_subnet_env(own, mtu, ip_masq);
    if env != want_env {
        p.push(format!("subnet.env is {env:?}, want {want_env:?}"));
    }
    let (want4, want6) = match backend {
        Dual::Vxlan => (
            expected_vxlan_entries(&peers4),
            expected_v6_vxlan_entries(&peers6),
        ),
        Dual::VxlanDirect | Dual::HostGw => (
            Entries::routes(expected_hostgw_routes(&peers4)),
            Entries::routes(expected_v6_direct_routes(&peers6)),
        ),
    };
    let got4 = match backend {
        Dual::Vxlan | Dual::VxlanDirect => vxlan_entries(tb, i),
        Dual::HostGw => Entries::routes(pod_network_routes(tb, i)),
    };
    let got6 = match backend {
        Dual::Vxlan | Dual::VxlanDirect => v6_entries(tb, i),
        Dual::HostGw => Entries::routes(pod_network_routes6(tb, i)),
    };
    p.extend(got4.diff(&want4).into_iter().map(|d| format!("IPv4: {d}")));
    p.extend(got6.diff(&want6).into_iter().map(|d| format!("IPv6: {d}")));
    p
}

/// Waits until `dual_node_problems` is empty for every node of `nodes` (`public_ipv6(i)` gives
/// each node's advertised IPv6 address); panics with the remaining problems and the logs.
pub fn wait_dual_mesh(
    tb: &Testbed,
    nodes: &[usize],
    backend: Dual,
    ip_masq: bool,
    public_ipv6: impl Fn(usize) -> Ipv6Addr,
) -> Duration {
    let problems = || -> Vec<String> {
        nodes
            .iter()
            .flat_map(|&i| {
                dual_node_problems(tb, i, backend, ip_masq, public_ipv6(i))
                    .into_iter()
                    .map(move |p| format!("node{}: {p}", i + 1))
            })
            .collect()
    };
    if let Some(took) = time_until(crate::e2e_common::CONVERGE, || problems().is_empty()) {
        return took;
    }
    let all: Vec<usize> = (0..tb.nodes.len()).collect();
    panic!(
        "the dual-stack kernel state still differs from the spec:\n  {}\nleases: {:#?}\n{}",
        problems().join("\n  "),
        tb.leases(),
        logs(tb, &all)
    );
}

/// An "outside" host for both families: the IPv4 one of `Testbed::add_outside` plus 2001:db8::fe
/// (the nodes' IPv6 gateway) and `outside6` on its loopback, with no route back to the pods.
pub fn add_outside_dual(
    tb: &Testbed,
    tag: &str,
    outside: &str,
    outside6: &str,
) -> crate::support::netns::Netns {
    let ns = tb.add_outside(tag, outside);
    ns.sh(&format!(
        "ip -6 addr add {}/64 dev eth0 nodad && ip -6 addr add {outside6}/128 dev lo",
        crate::support::testbed_v6::GATEWAY_V6
    ));
    ns
}

/// The full etcd key of a lease key suffix.
pub fn full_key(key: &str) -> String {
    format!("{ETCD_PREFIX}/subnets/{key}")
}

/// `ip` of either family as text in a URL host (`[v6]`).
pub fn url_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}
