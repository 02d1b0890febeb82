//! `make demo`: a three-node flannel cluster in network namespaces with a real etcd, a pod on each
//! node, and pings from every pod to every other across the vxlan overlay. Everything it creates
//! lives in its own namespaces and is removed at the end (also on failure).
//!
//! Usage: demo <path to flanneld> [nodes] [backend]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::testbed::{Testbed, TestbedOptions};

fn step(start: Instant, text: &str) {
    println!("[{:>5.1}s] {text}", start.elapsed().as_secs_f64());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flanneld = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "target/debug/flanneld".into());
    let nodes: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(3);
    let backend = args.get(3).cloned().unwrap_or_else(|| "vxlan".into());
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("demo: needs root (it creates network namespaces); run it as root or with sudo");
        std::process::exit(1);
    }
    let start = Instant::now();
    println!("flanneld demo: {nodes} nodes, backend {backend}, etcd in its own namespace");
    println!("underlay 192.0.2.0/24 (node i = 192.0.2.i, etcd = 192.0.2.100), pod network 198.18.0.0/16\n");

    step(
        start,
        "building namespaces: a switch, etcd and the nodes; starting etcd",
    );
    let mut tb = Testbed::new(TestbedOptions {
        nodes,
        flanneld: flanneld.clone().into(),
        tag: "demo".into(),
    });
    let config = format!(r#"{{"Network": "198.18.0.0/16", "Backend": {{"Type": "{backend}"}}}}"#);
    tb.put_config(&config);
    step(start, &format!("etcd: put /coreos.com/network/config = {config}"));

    for i in 0..nodes {
        tb.start_daemon(i);
    }
    step(
        start,
        &format!("started flanneld ({flanneld}) on every node; waiting for subnet.env"),
    );
    for i in 0..nodes {
        tb.wait_subnet_env(i, Duration::from_secs(60));
    }
    // vxlan, host-gw and ipip have a route per peer; udp and wireguard one route for the whole
    // network through their device (the peers are in the forwarding table / WireGuard peers).
    let (routes, what) = match backend.as_str() {
        "udp" | "wireguard" => (1, "the network route and its peers"),
        _ => (nodes - 1, "a route to every other"),
    };
    step(
        start,
        &format!("every node has its lease; waiting until every node has {what}"),
    );
    for i in 0..nodes {
        tb.wait_routes(i, routes, Duration::from_secs(30));
    }
    step(start, "the overlay is programmed\n");

    println!("== leases in etcd ==");
    for (key, value) in tb.leases() {
        println!("  /coreos.com/network/subnets/{key}\n      {value}");
    }
    for i in 0..nodes {
        let node = &tb.nodes[i];
        println!("\n== {} ({}) ==", node.name, node.ip);
        println!("  subnet.env:");
        for line in std::fs::read_to_string(node.subnet_file())
            .unwrap_or_default()
            .lines()
        {
            println!("    {line}");
        }
        println!("  routes to the pod network:");
        for line in tb.flannel_routes(i) {
            println!("    {line}");
        }
        if backend == "vxlan" {
            println!("  neighbours and FDB on flannel.1:");
            for line in node
                .ns
                .sh("ip neigh show dev flannel.1; bridge fdb show dev flannel.1")
                .lines()
            {
                println!("    {line}");
            }
        }
    }
    println!();

    let mut pods = Vec::new();
    for i in 0..nodes {
        pods.push(tb.add_pod(i, "demo"));
    }
    step(start, &format!("started a pod on each node: {pods:?}"));

    let mut ok = 0;
    let mut failed = Vec::new();
    for from in 0..nodes {
        for (to, ip) in pods.iter().enumerate() {
            if from == to {
                continue;
            }
            if tb.ping_until(from, *ip, Duration::from_secs(10)) {
                ok += 1;
                println!("  pod on node{} -> {ip} (node{}): reply", from + 1, to + 1);
            } else {
                failed.push(format!("node{} -> node{}", from + 1, to + 1));
                println!("  pod on node{} -> {ip} (node{}): NO REPLY", from + 1, to + 1);
            }
        }
    }
    let total = nodes * (nodes - 1);
    println!();
    if failed.is_empty() {
        step(
            start,
            &format!("VERDICT: PASS — {ok}/{total} pod-to-pod pings answered across the overlay"),
        );
    } else {
        step(
            start,
            &format!(
                "VERDICT: FAIL — {ok}/{total} answered; failed: {}",
                failed.join(", ")
            ),
        );
        for node in &tb.nodes {
            println!("\n--- {} log (last 20 lines) ---", node.name);
            let log = node.log();
            let lines: Vec<&str> = log.lines().collect();
            for line in &lines[lines.len().saturating_sub(20)..] {
                println!("{line}");
            }
        }
    }
    if std::env::var_os("DEMO_SHOW_LOG").is_some() {
        println!("{}", tb.nodes[0].log());
    }
    step(start, "tearing everything down (daemons, etcd, namespaces)");
    drop(tb);
    step(start, "done");
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
