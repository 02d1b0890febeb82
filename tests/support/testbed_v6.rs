//! The testbed's IPv6 option: an IPv6 underlay next to (or instead of) the IPv4 one, and pods with
//! the addresses of both families that subnet.env gives them.
//!
//! Underlay 2001:db8::/64 on the same switch: node i at 2001:db8::<i+1> (the same number as its
//! IPv4 address 192.0.2.<i+1>), the etcd namespace at 2001:db8::100, a default route via
//! 2001:db8::fe that nobody answers (as the IPv4 one via .254). Pods: cni0 takes the first address
//! of FLANNEL_SUBNET and of FLANNEL_IPV6_SUBNET, the pod the second one of each, as a CNI bridge
//! plugin would. Addresses are added with `nodad` so no test waits for duplicate address detection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use super::netns::{Netns, veth};
use super::testbed::{Node, Testbed};

/// The IPv6 underlay prefix length (2001:db8::/64).
pub const UNDERLAY_V6_LEN: u8 = 64;
/// The etcd namespace's IPv6 address (also where tests bind an IPv6 API server).
pub const ETCD_IPV6: &str = "2001:db8::100";
/// The nodes' IPv6 default gateway (nobody answers it, as 192.0.2.254 for IPv4).
pub const GATEWAY_V6: &str = "2001:db8::fe";

/// The first address of a subnet.env CIDR (`2001:db8:1:5::1/64`) and its prefix length.
fn first_and_len(cidr: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = cidr.split_once('/')?;
    Some((ip.parse().ok()?, len.parse().ok()?))
}

impl Node {
    /// The node's IPv6 underlay address: 2001:db8::<n> for the node at 192.0.2.<n>.
    pub fn ipv6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(self.ip.octets()[3]))
    }

    /// The pod's IPv6 address: the second address of FLANNEL_IPV6_SUBNET (the first is cni0's).
    pub fn pod_ipv6(&self) -> Option<Ipv6Addr> {
        let env = self.subnet_env()?;
        match first_and_len(env.get("FLANNEL_IPV6_SUBNET")?)? {
            (IpAddr::V6(gw), _) => Some(Ipv6Addr::from(u128::from(gw) + 1)),
            _ => None,
        }
    }

    /// The pod's addresses of both families (those subnet.env has).
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        let v4 = self.pod_ip().map(IpAddr::V4);
        v4.into_iter().chain(self.pod_ipv6().map(IpAddr::V6)).collect()
    }
}

impl Testbed {
    /// Adds the IPv6 underlay: every node's eth0 gets 2001:db8::<n>/64 and an IPv6 default route,
    /// IPv6 forwarding is turned on, and the etcd namespace gets 2001:db8::100.
    pub fn add_ipv6_underlay(&self) {
        self.etcd_ns.sh(&format!(
            "ip -6 addr add {ETCD_IPV6}/{UNDERLAY_V6_LEN} dev eth0 nodad"
        ));
        for node in &self.nodes {
            node.ns.sh(&format!(
                "sysctl -qw net.ipv6.conf.all.forwarding=1 && \
                 ip -6 addr add {}/{UNDERLAY_V6_LEN} dev eth0 nodad && \
                 ip -6 route add default via {GATEWAY_V6} dev eth0",
                node.ipv6()
            ));
        }
    }

    /// Makes node `i` IPv6-only: its IPv4 underlay address (and so its IPv4 default route) goes.
    pub fn remove_ipv4_underlay(&self, i: usize) {
        self.nodes[i].ns.sh("ip -4 addr flush dev eth0");
    }

    /// Builds cni0 and one pod namespace on node `i` from subnet.env, with an address of each
    /// family subnet.env has (FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET): cni0 the first, the pod the
    /// second, and a default route of each family via cni0.
    pub fn add_pod_any(&mut self, i: usize, tag: &str) {
        let env = self.nodes[i].subnet_env().expect("subnet.env before add_pod");
        let mtu = env.get("FLANNEL_MTU").expect("FLANNEL_MTU").clone();
        let families: Vec<(IpAddr, u8, IpAddr)> = ["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]
            .iter()
            .filter_map(|key| env.get(*key))
            .map(|cidr| {
                let (gw, len) = first_and_len(cidr).unwrap_or_else(|| panic!("{cidr} is not a CIDR"));
                let pod = match gw {
                    IpAddr::V4(gw) => IpAddr::V4(Ipv4Addr::from(u32::from(gw) + 1)),
                    IpAddr::V6(gw) => IpAddr::V6(Ipv6Addr::from(u128::from(gw) + 1)),
                };
                (gw, len, pod)
            })
            .collect();
        assert!(!families.is_empty(), "subnet.env has no subnet: {env:?}");
        let node = &mut self.nodes[i];
        node.ns.sh(&format!(
            "ip link add cni0 type bridge && ip link set cni0 mtu {mtu} && ip link set cni0 up"
        ));
        let pod = Netns::new(&format!("{tag}-pod{}", i + 1));
        veth(&node.ns, "veth0", &pod, "eth0");
        node.ns.sh("ip link set veth0 master cni0");
        pod.sh(&format!("ip link set eth0 mtu {mtu}"));
        for (gw, len, pod_ip) in families {
            let (family, nodad) = if gw.is_ipv6() {
                ("-6", " nodad")
            } else {
                ("-4", "")
            };
            node.ns
                .sh(&format!("ip {family} addr add {gw}/{len} dev cni0{nodad}"));
            pod.sh(&format!(
                "ip {family} addr add {pod_ip}/{len} dev eth0{nodad} && ip {family} route add default via {gw}"
            ));
        }
        node.pod = Some(pod);
    }

    /// One ping of either family from node `from`'s pod to `to`; true when answered.
    pub fn ping_addr(&self, from: usize, to: IpAddr) -> bool {
        let pod = self.nodes[from].pod.as_ref().expect("pod");
        pod.exec(&["ping", "-c", "1", "-W", "1", &to.to_string()])
            .status
            .success()
    }

    /// Pings (either family) until one answer arrives or `timeout` passes.
    pub fn ping_addr_until(&self, from: usize, to: IpAddr, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.ping_addr(from, to) {
                return true;
            }
        }
        false
    }

    /// Pings every pod address (both families) of `nodes` from every other node's pod; returns
    /// the pairs that got no answer within 10 s each, as `nodeA -> nodeB (ip)`.
    pub fn ping_matrix_all(&self, nodes: &[usize]) -> Vec<String> {
        let mut failed = Vec::new();
        for &from in nodes {
            for &to in nodes.iter().filter(|&&to| to != from) {
                for ip in self.nodes[to].pod_ips() {
                    if !self.ping_addr_until(from, ip, Duration::from_secs(10)) {
                        failed.push(format!(
                            "{} -> {} ({ip})",
                            self.nodes[from].name, self.nodes[to].name
                        ));
                    }
                }
            }
        }
        failed
    }
}
