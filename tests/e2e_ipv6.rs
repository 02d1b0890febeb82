//! End to end, IPv6 with the etcd subnet manager (issue 13): real flanneld daemons in the netns
//! testbed with an IPv6 underlay (2001:db8::/64) next to the IPv4 one, IPv6Network 2001:db8:1::/48.
//! - dual-stack vxlan: subnet.env's six lines in order, dual-stack lease keys and values (spec 3.1,
//!   3.2, 4.1), the IPv4 and IPv6 neighbours, FDB entries and onlink routes of spec 9.1 exactly,
//!   interface selection by `--iface`, `--iface-regex` and `--iface-can-reach` with an IPv6 target
//!   and `--public-ipv6` (default routes point elsewhere, so only the flags can pick eth0),
//!   ip6tables masquerade (exact listing, and a pod reaching an outside host only through it),
//!   pods pinging over both families;
//! - dual-stack host-gw with nftables: IPv6 routes via the peers' IPv6 addresses, the exact
//!   `ip6 flannel-ipv6` chains, masquerading and pings over both families; before that, an
//!   IPv6-only config, which the etcd manager refuses with a clear message (README: why) while it
//!   waits, is fixed by writing a dual-stack config, without a restart;
//! - vxlan DirectRouting over both families: direct routes via the peers' public IPs, no tunnel
//!   entries; `flanneld doctor` agrees (exit 0).

mod e2e_common;
mod support;
mod v6_common;

use std::net::Ipv6Addr;

use e2e_common::*;
use support::testbed::Testbed;
use v6_common::*;

const OUTSIDE: &str = "203.0.113.5";
const OUTSIDE6: &str = "2001:db8:ff::5";

/// spec 10.1 for IPv6: `ip6tables -t nat -S` with --ip-masq, C = NETWORK6, P = the own subnet.
fn nat6_listing(own6: &str) -> String {
    let c = NETWORK6;
    let comment = r#"-m comment --comment "flanneld masq""#;
    format!(
        "-P PREROUTING ACCEPT\n-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n-P POSTROUTING ACCEPT\n-N FLANNEL-POSTRTG\n\
         -A POSTROUTING {comment} -j FLANNEL-POSTRTG\n\
         -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {comment} -j RETURN\n\
         -A FLANNEL-POSTRTG -s {own6} -d {c} {comment} -j RETURN\n\
         -A FLANNEL-POSTRTG -s {c} -d {own6} {comment} -j RETURN\n\
         -A FLANNEL-POSTRTG ! -s {c} -d {own6} {comment} -j RETURN\n\
         -A FLANNEL-POSTRTG -s {c} ! -d ff00::/8 {comment} -j MASQUERADE --random-fully\n\
         -A FLANNEL-POSTRTG ! -s {c} -d {c} {comment} -j MASQUERADE --random-fully\n"
    )
}

/// spec 10.1 for IPv6: `ip6tables -S` (filter) with the forward rules.
fn filter6_listing() -> String {
    let c = NETWORK6;
    let comment = r#"-m comment --comment "flanneld forward""#;
    format!(
        "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n-N FLANNEL-FWD\n\
         -A FORWARD {comment} -j FLANNEL-FWD\n-A FLANNEL-FWD -s {c} {comment} -j ACCEPT\n\
         -A FLANNEL-FWD -d {c} {comment} -j ACCEPT\n"
    )
}

/// spec 10.2 for IPv6: `nft list chain ip6 flannel-ipv6 postrtg` and `... forward`.
fn nft6_listings(own6: &str) -> (String, String) {
    let c = NETWORK6;
    (
        format!(
            "table ip6 flannel-ipv6 {{\n\tchain postrtg {{\n\
             \t\tcomment \"chain to manage traffic masquerading by flannel\"\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tmeta mark 0x00004000 return\n\
             \t\tip6 saddr {own6} ip6 daddr {c} return\n\
             \t\tip6 saddr {c} ip6 daddr {own6} return\n\
             \t\tip6 saddr != {own6} ip6 daddr {c} return\n\
             \t\tip6 saddr {c} ip6 daddr != ff00::/8 masquerade fully-random\n\
             \t\tip6 saddr != {c} ip6 daddr {c} masquerade fully-random\n\t}}\n}}\n"
        ),
        format!(
            "table ip6 flannel-ipv6 {{\n\tchain forward {{\n\
             \t\tcomment \"chain to accept flannel traffic\"\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tip6 saddr {c} accept\n\t\tip6 daddr {c} accept\n\t}}\n}}\n"
        ),
    )
}

/// Moves node `i`'s default routes (both families) to a decoy interface lan0, so interface
/// selection without flags would pick lan0; routes to the outside host stay on eth0.
fn decoy_default_routes(tb: &Testbed, i: usize) {
    let n = i + 1;
    tb.nodes[i].ns.sh(&format!(
        "ip link add lan0 type veth peer name lan1 && ip link set lan1 up && ip link set lan0 up && \
         ip addr add 198.51.100.{n}/24 dev lan0 && ip -6 addr add 2001:db8:ff00::{n}/64 dev lan0 nodad && \
         ip route replace default via 198.51.100.254 dev lan0 && \
         ip -6 route replace default via 2001:db8:ff00::fe dev lan0 && \
         ip route add {OUTSIDE}/32 via 192.0.2.254 dev eth0 && \
         ip -6 route add {OUTSIDE6}/128 via 2001:db8::fe dev eth0"
    ));
}

/// Pod of node `from` reaches the outside host over both families (only masquerading lets the
/// answers back: the outside host has no route to the pod networks).
fn outside_reachable(tb: &Testbed, from: usize) -> Vec<String> {
    [OUTSIDE, OUTSIDE6]
        .iter()
        .filter(|ip| !tb.ping_addr_until(from, ip.parse().unwrap(), std::time::Duration::from_secs(10)))
        .map(|ip| format!("{} -> outside {ip}", tb.nodes[from].name))
        .collect()
}

#[test]
fn dual_stack_vxlan_etcd_iface_flags_and_ip6tables_masquerade() {
    let Some(_serial) = serial_or_skip("ipv6_dual_vxlan") else {
        return;
    };
    let mut tb = testbed("v6vx", 3, "vxlan");
    tb.add_ipv6_underlay();
    tb.put_config(&dual_config(r#"{"Type": "vxlan"}"#));
    for i in 0..3 {
        decoy_default_routes(&tb, i);
    }
    // node3 advertises a second IPv6 address of eth0 (--public-ipv6).
    tb.nodes[2].ns.sh("ip -6 addr add 2001:db8::33/64 dev eth0 nodad");
    let public6: Vec<Ipv6Addr> = vec![
        tb.nodes[0].ipv6(),
        tb.nodes[1].ipv6(),
        "2001:db8::33".parse().unwrap(),
    ];
    let node1_v6 = tb.nodes[0].ipv6();
    let selectors: [Vec<String>; 3] = [
        vec!["--iface=eth0".into()],
        vec![r"--iface-regex=^(192\.0\.2\.2|2001:db8::2)$".into()],
        vec![
            format!("--iface-can-reach={node1_v6}"),
            "--public-ipv6=2001:db8::33".into(),
        ],
    ];
    for (node, flags) in tb.nodes.iter_mut().zip(selectors) {
        node.args.extend(flags);
        node.args.push("--ip-masq".into());
    }
    start(&mut tb, &[0, 1, 2]);
    let took = wait_dual_mesh(&tb, &[0, 1, 2], Dual::Vxlan, true, |i| public6[i]);
    println!("3 dual-stack vxlan nodes programmed as spec 9.1 for both families {took:?} after ready");
    for (i, lease) in dual_leases(&tb).iter().enumerate() {
        println!("  lease {i}: {} = {}", full_key(&lease.key), lease.value);
    }

    // Each node chose eth0 for the reason its flag gives (the default routes lead to lan0).
    let reasons = [
        vec!["interface eth0 exists".to_string()],
        vec!["address 192.0.2.2 and 2001:db8::2 of interface eth0 matches".to_string()],
        vec![
            format!("the route to {node1_v6} leaves through eth0"),
            "external IPv6 address 2001:db8::33 from --public-ipv6".to_string(),
        ],
    ];
    for (node, reasons) in tb.nodes.iter().zip(reasons) {
        let log = node.log();
        for reason in reasons {
            assert!(
                log.contains(&reason),
                "{}: no {reason:?} in the log:\n{log}",
                node.name
            );
        }
    }
    for (i, public6) in public6.iter().enumerate() {
        let node = &tb.nodes[i];
        let link = &tb.ip_json(i, &format!("-d link show {VXLAN6_DEV}"))[0];
        assert_eq!(
            link["linkinfo"]["info_data"]["local6"],
            public6.to_string(),
            "{}: {VXLAN6_DEV} tunnels from the selected IPv6 address",
            node.name
        );
        assert_eq!(link["linkinfo"]["info_data"]["link"], "eth0", "{}", node.name);
        let own6 = dual_lease_of(&tb, i).subnet6.to_string();
        assert_eq!(
            node.ns.sh("ip6tables -t nat -S"),
            nat6_listing(&own6),
            "{}",
            node.name
        );
        assert_eq!(node.ns.sh("ip6tables -S"), filter6_listing(), "{}", node.name);
        println!(
            "{}:\n{}",
            node.name,
            node.ns.sh(&format!(
                "cat {}; ip -6 neigh show dev {VXLAN6_DEV}; bridge fdb show dev {VXLAN6_DEV}; \
                 ip -6 route show root {NETWORK6}",
                node.subnet_file().display()
            ))
        );
    }

    add_pods(&mut tb, &[0, 1, 2], "v6vx");
    let mut failed = tb.ping_matrix_all(&[0, 1, 2]);
    let _outside = add_outside_dual(&tb, "v6vx", OUTSIDE, OUTSIDE6);
    failed.extend(outside_reachable(&tb, 0));
    assert!(
        failed.is_empty(),
        "pods that could not reach each other or the outside: {failed:?}\n{}",
        logs(&tb, &[0, 1, 2])
    );
    // Pinging created nothing the spec does not prescribe.
    wait_dual_mesh(&tb, &[0, 1, 2], Dual::Vxlan, true, |i| public6[i]);
}

#[test]
fn dual_stack_host_gw_nftables_after_a_refused_ipv6_only_config() {
    let Some(_serial) = serial_or_skip("ipv6_dual_hostgw") else {
        return;
    };
    let mut tb = testbed("v6hg", 2, "host-gw");
    tb.add_ipv6_underlay();
    tb.put_config(&format!(
        r#"{{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "{NETWORK6}", "Backend": {{"Type": "host-gw"}}}}"#
    ));
    for node in &mut tb.nodes {
        node.args.push("--ip-masq".into());
    }
    // node1 names its interface by its IPv6 address (the IPv4 one is filled in from eth0).
    let node1_v6 = tb.nodes[0].ipv6();
    tb.nodes[0].args.push(format!("--iface={node1_v6}"));
    tb.start_daemon(0);
    let refused = time_until(STARTUP, || {
        tb.nodes[0].log().contains("IPv6-only is not supported with etcd")
    });
    assert!(
        refused.is_some(),
        "no clear refusal of IPv6-only in the log:\n{}",
        tb.nodes[0].log()
    );
    assert!(daemon_alive(&mut tb, 0), "the daemon waits for a usable config");
    assert!(tb.nodes[0].subnet_env().is_none() && tb.leases().is_empty());
    let (code, text) = doctor(&tb, 0, &[]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("enables IPv6 only, which the etcd subnet manager refuses"),
        "{text}"
    );

    // A dual-stack config is picked up by the waiting daemon.
    tb.put_config(&format!(
        r#"{{"Network": "{NETWORK}", "EnableIPv6": true, "IPv6Network": "{NETWORK6}", "EnableNFTables": true, "Backend": {{"Type": "host-gw"}}}}"#
    ));
    tb.start_daemon(1);
    for i in 0..2 {
        tb.wait_subnet_env(i, STARTUP);
        wait_ready(&mut tb, i, STARTUP);
    }
    let public6: Vec<Ipv6Addr> = tb.nodes.iter().map(|n| n.ipv6()).collect();
    wait_dual_mesh(&tb, &[0, 1], Dual::HostGw, true, |i| public6[i]);
    let reason = format!("interface eth0 has address {node1_v6}");
    assert!(
        tb.nodes[0].log().contains(&reason),
        "no {reason:?} in:\n{}",
        tb.nodes[0].log()
    );
    for i in 0..2 {
        let node = &tb.nodes[i];
        let own6 = dual_lease_of(&tb, i).subnet6.to_string();
        let (postrtg, forward) = nft6_listings(&own6);
        assert_eq!(
            node.ns.sh("nft list chain ip6 flannel-ipv6 postrtg"),
            postrtg,
            "{}",
            node.name
        );
        assert_eq!(
            node.ns.sh("nft list chain ip6 flannel-ipv6 forward"),
            forward,
            "{}",
            node.name
        );
        println!(
            "{}:\n{}",
            node.name,
            node.ns.sh(&format!("ip -6 route show root {NETWORK6}"))
        );
    }
    add_pods(&mut tb, &[0, 1], "v6hg");
    let mut failed = tb.ping_matrix_all(&[0, 1]);
    let _outside = add_outside_dual(&tb, "v6hg", OUTSIDE, OUTSIDE6);
    failed.extend(outside_reachable(&tb, 1));
    assert!(failed.is_empty(), "{failed:?}\n{}", logs(&tb, &[0, 1]));
}

#[test]
fn dual_stack_vxlan_direct_routing_over_both_families() {
    let Some(_serial) = serial_or_skip("ipv6_direct_routing") else {
        return;
    };
    let mut tb = testbed("v6dr", 2, "vxlan");
    tb.add_ipv6_underlay();
    tb.put_config(&dual_config(r#"{"Type": "vxlan", "DirectRouting": true}"#));
    start(&mut tb, &[0, 1]);
    let public6: Vec<Ipv6Addr> = tb.nodes.iter().map(|n| n.ipv6()).collect();
    wait_dual_mesh(&tb, &[0, 1], Dual::VxlanDirect, false, |i| public6[i]);
    add_pods(&mut tb, &[0, 1], "v6dr");
    let failed = tb.ping_matrix_all(&[0, 1]);
    assert!(failed.is_empty(), "{failed:?}\n{}", logs(&tb, &[0, 1]));
    // The pings went the direct way: still no tunnel entries, and doctor finds nothing wrong.
    wait_dual_mesh(&tb, &[0, 1], Dual::VxlanDirect, false, |i| public6[i]);
    let (code, text) = doctor(&tb, 0, &[]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("the peer answers (2 probes)"), "{text}");
}
