//! The exact kernel listings and etcd values the end-to-end tests compare against: what spec 9.1
//! prescribes for vxlan (flannel.1's attributes and address; per peer a permanent neighbour, a
//! permanent FDB entry and an onlink route), what 9.2 prescribes for host-gw (per peer a route via
//! the peer's public IP on eth0), the lease values of spec 3.2, and subnet.env of 4.1.
//! Listings are read with `ip -j` / `bridge -j` and compared as canonical JSON (keys sorted), so a
//! mismatch shows the whole object that differs.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::{LeaseInfo, NETWORK, leases, logs, time_until};
use crate::support::testbed::{ROUTE_PROTO, Testbed};

/// The vxlan device flanneld creates for VNI 1.
pub const VXLAN_DEV: &str = "flannel.1";

/// `v` with every object's keys in sorted order, so two listings compare and print the same way.
pub fn canon(v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut sorted = Map::new();
            for k in keys {
                sorted.insert(k.clone(), canon(&map[k]));
            }
            Value::Object(sorted)
        }
        Value::Array(items) => Value::Array(items.iter().map(canon).collect()),
        other => other.clone(),
    }
}

fn canon_sorted(items: impl IntoIterator<Item = Value>) -> Vec<String> {
    let mut out: Vec<String> = items.into_iter().map(|v| canon(&v).to_string()).collect();
    out.sort();
    out
}

fn json_list(tb: &Testbed, i: usize, cmd: &str) -> Vec<Value> {
    // A missing device makes `ip ... dev flannel.1` fail: that is an empty listing here.
    match tb.nodes[i].ns.try_sh(cmd) {
        Ok(out) => match serde_json::from_str::<Value>(out.trim()) {
            Ok(Value::Array(items)) => items,
            _ => Vec::new(),
        },
        Err(_) => Vec::new(),
    }
}

/// The lease value spec 3.2 prescribes for a vxlan node.
pub fn vxlan_value(ip: Ipv4Addr, mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
    )
}

/// The lease value spec 3.2 prescribes for a host-gw node.
pub fn hostgw_value(ip: Ipv4Addr) -> String {
    format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"host-gw"}}"#)
}

/// subnet.env exactly as spec 4.1 prescribes (no --ip-masq).
pub fn subnet_env_text(own: &LeaseInfo, mtu: u32) -> String {
    let first = Ipv4Addr::from(u32::from(own.network) + 1);
    format!(
        "FLANNEL_NETWORK={NETWORK}\nFLANNEL_SUBNET={first}/{}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=false\n",
        own.prefix_len
    )
}

/// Owned per-peer entries on a node, each as canonical JSON, sorted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Entries {
    pub neigh: Vec<String>,
    pub fdb: Vec<String>,
    pub routes: Vec<String>,
}

impl Entries {
    /// Routes only (host-gw programs no neighbours or FDB entries).
    pub fn routes(routes: Vec<String>) -> Entries {
        Entries {
            routes,
            ..Entries::default()
        }
    }

    fn kinds<'a>(&'a self, want: &'a Entries) -> [(&'static str, &'a [String], &'a [String]); 3] {
        [
            ("neighbour", &self.neigh, &want.neigh),
            ("fdb entry", &self.fdb, &want.fdb),
            ("route", &self.routes, &want.routes),
        ]
    }

    /// The entries of `want` this node lacks, one line each.
    pub fn missing(&self, want: &Entries) -> Vec<String> {
        self.kinds(want)
            .into_iter()
            .flat_map(|(kind, got, want)| {
                want.iter()
                    .filter(|w| !got.contains(w))
                    .map(move |w| format!("missing {kind} {w}"))
            })
            .collect()
    }

    /// What differs from `want`, one line per missing or unexpected object.
    pub fn diff(&self, want: &Entries) -> Vec<String> {
        let mut out = self.missing(want);
        for (kind, got, want) in self.kinds(want) {
            out.extend(
                got.iter()
                    .filter(|g| !want.contains(g))
                    .map(|g| format!("unexpected {kind} {g}")),
            );
        }
        out
    }
}

/// Main-table routes inside the pod network on node `i`, except the connected route of cni0.
pub fn pod_network_routes(tb: &Testbed, i: usize) -> Vec<String> {
    canon_sorted(
        json_list(tb, i, "ip -d -j route show root 198.18.0.0/15")
            .into_iter()
            .filter(|r| r["dev"] != "cni0"),
    )
}

/// The neighbours, FDB entries and pod-network routes a vxlan node has.
pub fn vxlan_entries(tb: &Testbed, i: usize) -> Entries {
    Entries {
        neigh: canon_sorted(json_list(tb, i, &format!("ip -j neigh show dev {VXLAN_DEV}"))),
        fdb: canon_sorted(json_list(tb, i, &format!("bridge -j fdb show dev {VXLAN_DEV}"))),
        routes: pod_network_routes(tb, i),
    }
}

/// Spec 9.1: for each peer lease, `<net> lladdr <VtepMAC> PERMANENT`, `<VtepMAC> dst <PublicIP> self
/// permanent` and `<subnet> via <net> dev flannel.1 onlink` (protocol 70, flanneld's own, scope global).
pub fn expected_vxlan_entries(peers: &[&LeaseInfo]) -> Entries {
    let mac = |p: &LeaseInfo| p.vtep_mac.clone().unwrap_or_else(|| "<no VtepMAC>".into());
    Entries {
        neigh: canon_sorted(peers.iter().map(|p| {
            json!({"dst": p.network.to_string(), "lladdr": mac(p), "state": ["PERMANENT"]})
        })),
        fdb: canon_sorted(peers.iter().map(|p| {
            json!({"mac": mac(p), "dst": p.public_ip.to_string(), "flags": ["self"], "state": "permanent"})
        })),
        routes: canon_sorted(peers.iter().map(|p| {
            json!({"type": "unicast", "dst": p.subnet(), "gateway": p.network.to_string(),
                   "dev": VXLAN_DEV, "protocol": ROUTE_PROTO, "scope": "global", "flags": ["onlink"]})
        })),
    }
}

/// Spec 9.2: for each peer lease, `<subnet> via <PublicIP> dev eth0` (protocol 70, no onlink).
pub fn expected_hostgw_routes(peers: &[&LeaseInfo]) -> Vec<String> {
    canon_sorted(peers.iter().map(|p| {
        json!({"type": "unicast", "dst": p.subnet(), "gateway": p.public_ip.to_string(),
               "dev": "eth0", "protocol": ROUTE_PROTO, "scope": "global", "flags": []})
    }))
}

fn check(problems: &mut Vec<String>, what: &str, got: &Value, want: Value) {
    if *got != want {
        problems.push(format!("{what}: got {got}, want {want}"));
    }
}

/// flannel.1 on node `i` against spec 9.1, its address against its lease, and the lease value.
pub fn vxlan_device_problems(tb: &Testbed, i: usize, own: &LeaseInfo) -> Vec<String> {
    let node = &tb.nodes[i];
    let mut p = Vec::new();
    let links = json_list(tb, i, &format!("ip -d -j link show {VXLAN_DEV}"));
    let Some(link) = links.first() else {
        return vec![format!("{VXLAN_DEV} does not exist")];
    };
    let mac = link["address"].as_str().unwrap_or_default().to_string();
    check(&mut p, "link mtu", &link["mtu"], json!(1450));
    // `ip -j` leaves txqlen out when it is 0 (spec 9: links are created with txqueuelen 0).
    if link["txqlen"].as_u64().unwrap_or(0) != 0 {
        p.push(format!("link txqlen is {}, want 0", link["txqlen"]));
    }
    if !link["flags"].as_array().is_some_and(|f| f.contains(&json!("UP"))) {
        p.push(format!("link is not up: flags {}", link["flags"]));
    }
    let first_byte = u8::from_str_radix(mac.get(..2).unwrap_or("zz"), 16).unwrap_or(1);
    if first_byte & 0x03 != 0x02 {
        p.push(format!("MAC {mac} is not a locally administered unicast address"));
    }
    check(
        &mut p,
        "link kind",
        &link["linkinfo"]["info_kind"],
        json!("vxlan"),
    );
    let data = &link["linkinfo"]["info_data"];
    check(&mut p, "vxlan id", &data["id"], json!(1));
    check(&mut p, "vxlan local", &data["local"], json!(node.ip.to_string()));
    check(&mut p, "vxlan link", &data["link"], json!("eth0"));
    check(&mut p, "vxlan port", &data["port"], json!(8472));
    check(&mut p, "vxlan learning", &data["learning"], json!(false));
    check(&mut p, "vxlan ttl", &data["ttl"], json!(0));
    check(
        &mut p,
        "vxlan udp_zero_csum6_tx",
        &data["udp_zero_csum6_tx"],
        json!(false),
    );
    check(
        &mut p,
        "vxlan udp_zero_csum6_rx",
        &data["udp_zero_csum6_rx"],
        json!(false),
    );
    for flag in ["proxy", "rsc", "l2miss", "l3miss", "gbp", "group", "remote"] {
        if let Some(v) = data.get(flag) {
            p.push(format!(
                "vxlan attribute {flag} is set ({v}); spec 9.1 leaves it off"
            ));
        }
    }
    let addrs = json_list(tb, i, &format!("ip -j addr show dev {VXLAN_DEV}"));
    let v4: Vec<Value> = addrs
        .iter()
        .flat_map(|a| a["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["family"] == "inet")
        .map(|a| json!({"local": a["local"], "prefixlen": a["prefixlen"]}))
        .collect();
    check(
        &mut p,
        "IPv4 addresses",
        &Value::Array(v4),
        json!([{"local": own.network.to_string(), "prefixlen": 32}]),
    );
    if own.value != vxlan_value(node.ip, &mac) {
        p.push(format!(
            "lease value {} differs from {} (the device MAC is {mac})",
            own.value,
            vxlan_value(node.ip, &mac)
        ));
    }
    p
}

fn subnet_env_problem(tb: &Testbed, i: usize, own: &LeaseInfo, mtu: u32) -> Option<String> {
    let got = std::fs::read_to_string(tb.nodes[i].subnet_file()).unwrap_or_default();
    let want = subnet_env_text(own, mtu);
    (got != want).then(|| format!("subnet.env is {got:?}, want {want:?}"))
}

pub(super) fn own_and_peers<'a>(
    tb: &Testbed,
    i: usize,
    all: &'a [LeaseInfo],
) -> Result<(&'a LeaseInfo, Vec<&'a LeaseInfo>), String> {
    let ip = tb.nodes[i].ip;
    let own: Vec<&LeaseInfo> = all.iter().filter(|l| l.public_ip == ip).collect();
    match own.as_slice() {
        [one] => Ok((one, all.iter().filter(|l| l.public_ip != ip).collect())),
        _ => Err(format!(
            "wanted exactly one lease with PublicIP {ip}, etcd has {all:?}"
        )),
    }
}

/// Runs `node_problems(i, own lease, peer leases)` for each of `nodes`, with every lease in etcd
/// read once; one line per problem, prefixed with the node's name.
fn problems_per_node(
    tb: &Testbed,
    nodes: &[usize],
    node_problems: impl Fn(usize, &LeaseInfo, &[&LeaseInfo]) -> Vec<String>,
) -> Vec<String> {
    let all = leases(tb);
    let mut problems = Vec::new();
    for &i in nodes {
        let name = &tb.nodes[i].name;
        let p = match own_and_peers(tb, i, &all) {
            Ok((own, peers)) => node_problems(i, own, &peers),
            Err(e) => vec![e],
        };
        problems.extend(p.into_iter().map(|x| format!("{name}: {x}")));
    }
    problems
}

/// Everything on the vxlan nodes `nodes` that differs from spec 9.1, with every lease in etcd
/// (except the node's own) as the peers; one line per problem, prefixed with the node's name.
pub fn vxlan_problems(tb: &Testbed, nodes: &[usize]) -> Vec<String> {
    problems_per_node(tb, nodes, |i, own, peers| {
        let mut p = vxlan_device_problems(tb, i, own);
        p.extend(vxlan_entries(tb, i).diff(&expected_vxlan_entries(peers)));
        p.extend(subnet_env_problem(tb, i, own, 1450));
        p
    })
}

/// Everything on the host-gw nodes `nodes` that differs from spec 9.2 (routes to every other lease
/// in etcd, no vxlan device, lease value, subnet.env with the interface MTU).
pub fn hostgw_problems(tb: &Testbed, nodes: &[usize]) -> Vec<String> {
    problems_per_node(tb, nodes, |i, own, peers| {
        let got = Entries::routes(pod_network_routes(tb, i));
        let mut p = got.diff(&Entries::routes(expected_hostgw_routes(peers)));
        if !json_list(tb, i, &format!("ip -j link show {VXLAN_DEV}")).is_empty() {
            p.push(format!("{VXLAN_DEV} exists on a host-gw node"));
        }
        let want = hostgw_value(tb.nodes[i].ip);
        if own.value != want {
            p.push(format!("lease value {} differs from {want}", own.value));
        }
        p.extend(subnet_env_problem(tb, i, own, 1500));
        p
    })
}

fn wait_clean(
    tb: &Testbed,
    nodes: &[usize],
    timeout: Duration,
    problems: impl Fn(&Testbed, &[usize]) -> Vec<String>,
) -> Duration {
    if let Some(took) = time_until(timeout, || problems(tb, nodes).is_empty()) {
        return took;
    }
    let all: Vec<usize> = (0..tb.nodes.len()).collect();
    panic!(
        "the kernel state still differs from the spec after {timeout:?}:\n  {}\nleases: {:#?}\n{}",
        problems(tb, nodes).join("\n  "),
        tb.leases(),
        logs(tb, &all)
    );
}

/// Waits until `vxlan_problems` is empty; panics with the remaining problems and the logs.
pub fn wait_vxlan_mesh(tb: &Testbed, nodes: &[usize], timeout: Duration) -> Duration {
    wait_clean(tb, nodes, timeout, vxlan_problems)
}

/// Waits until `hostgw_problems` is empty; panics with the remaining problems and the logs.
pub fn wait_hostgw_mesh(tb: &Testbed, nodes: &[usize], timeout: Duration) -> Duration {
    wait_clean(tb, nodes, timeout, hostgw_problems)
}
