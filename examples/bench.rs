//! `make bench`: control-plane benchmark of the real daemon in network namespaces.
//!
//! 1. Bulk: one node, N remote vxlan leases already in etcd (N = 1000 and 5000). Time from
//!    process start until every route, neighbour and FDB entry is installed, compared with the time
//!    `ip -batch` + `bridge -batch` need to install the same objects on an equivalent device; the
//!    daemon's RSS after convergence.
//! 2. Latency: with the daemon running, 200 new leases written one by one; time from the etcd put
//!    until the route exists (seen on `ip monitor route`), p50/p99.
//!
//! 3. Data path (`bench/datapath.rs`): iperf3 TCP pod to pod through the udp backend and through
//!    kernel vxlan, and the udp restart gap.
//! 4. WireGuard: iperf3 pod to pod through our userspace WireGuard and through wireguard-go
//!    (bench/wireguard.rs).
//!
//! Usage: bench <path to flanneld> [N...]   (`bench <flanneld> datapath` runs only section 3;
//! `BENCH_ONLY=wireguard` only section 4)

mod common;
#[path = "bench/datapath.rs"]
mod datapath;
#[path = "../tests/support/mod.rs"]
mod support;
#[path = "bench/wireguard.rs"]
mod wireguard;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{EtcdWriter, NETWORK, SUBNET_LEN, rss_kib, synthetic_lease, vxlan_entries};
use support::netns::Netns;
use support::testbed::{Testbed, TestbedOptions};

/// Installs the same N triples with `ip -batch` and `bridge -batch` on an equivalent device in a
/// fresh namespace; returns the elapsed time.
fn ip_batch(n: u32) -> Duration {
    let ns = Netns::new("bench-ipb");
    ns.sh(
        "ip link add eth0 type veth peer name eth1 && ip link set eth0 up && ip addr add 192.0.2.1/24 dev eth0 && \
         ip link add flannel.1 type vxlan id 1 dev eth0 local 192.0.2.1 nolearning dstport 8472 && \
         ip link set flannel.1 mtu 1450 up && ip addr add 198.18.0.0/32 dev flannel.1",
    );
    let dir = tempfile::tempdir().unwrap();
    let (mut ipb, mut brb) = (String::new(), String::new());
    for i in 0..n {
        let l = synthetic_lease(i);
        let (sn, net, mac, public) = (&l.subnet, &l.network, &l.mac, &l.public_ip);
        ipb.push_str(&format!(
            "neigh replace {net} dev flannel.1 lladdr {mac} nud permanent\n"
        ));
        ipb.push_str(&format!("route replace {sn} via {net} dev flannel.1 onlink\n"));
        brb.push_str(&format!(
            "fdb replace {mac} dev flannel.1 dst {public} self permanent\n"
        ));
    }
    let ipf = dir.path().join("ip.batch");
    let brf = dir.path().join("bridge.batch");
    std::fs::write(&ipf, ipb).unwrap();
    std::fs::write(&brf, brb).unwrap();
    let started = Instant::now();
    ns.sh(&format!(
        "ip -batch {} && bridge -batch {}",
        ipf.display(),
        brf.display()
    ));
    let elapsed = started.elapsed();
    let (r, ne, f) = vxlan_entries(&ns).counts();
    assert!(
        r >= n as usize && ne >= n as usize && f >= n as usize,
        "ip -batch installed {r}/{ne}/{f}"
    );
    elapsed
}

/// A one-node vxlan testbed (no daemon started yet) and a writer into its etcd.
fn one_node(flanneld: &str, tag: &str) -> (Testbed, EtcdWriter) {
    let mut tb = Testbed::new(TestbedOptions {
        nodes: 1,
        flanneld: flanneld.into(),
        tag: tag.into(),
    });
    tb.put_config(&format!(
        r#"{{"Network": "{NETWORK}", "SubnetLen": {SUBNET_LEN}, "Backend": {{"Type": "vxlan"}}}}"#
    ));
    tb.nodes[0].args = vec!["--iface=eth0".into()];
    let writer = EtcdWriter::new(&tb.etcd_ns);
    (tb, writer)
}

fn bulk(flanneld: &str, n: u32) -> (Duration, Duration, u64) {
    let (mut tb, writer) = one_node(flanneld, "bench");
    writer.put(
        (0..n)
            .map(|i| {
                let l = synthetic_lease(i);
                (l.key, l.value)
            })
            .collect(),
    );
    let started = Instant::now();
    tb.start_daemon(0);
    let deadline = started + Duration::from_secs(120);
    let converged = loop {
        let (r, ne, f) = vxlan_entries(&tb.nodes[0].ns).counts();
        if r >= n as usize && ne >= n as usize && f >= n as usize {
            break started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "not converged after 120 s ({r}/{ne}/{f} of {n}); log:\n{}",
            tb.nodes[0].log()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let pid = tb.nodes[0].daemon.as_ref().unwrap().id();
    if std::env::var_os("BENCH_SHOW_LOG").is_some() {
        println!("{}", tb.nodes[0].log());
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss = rss_kib(pid);
    (converged, ip_batch(n), rss)
}

fn latency(flanneld: &str, samples: u32) -> Vec<Duration> {
    let (mut tb, writer) = one_node(flanneld, "benchlat");
    tb.start_daemon(0);
    tb.wait_subnet_env(0, Duration::from_secs(60));
    let mut monitor = tb.nodes[0]
        .ns
        .spawn_cmd(&["ip", "monitor", "route"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ip monitor");
    let (line_tx, line_rx) = mpsc::channel::<(String, Instant)>();
    let stdout = monitor.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line_tx.send((line, Instant::now())).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut out = Vec::new();
    for i in 0..samples {
        // Ids past the bulk sizes, still inside the network (8190 /28s).
        let l = synthetic_lease(6_000 + i);
        let sn = l.subnet.clone();
        let started = writer.put(vec![(l.key, l.value)]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match line_rx.recv_timeout(left) {
                Ok((line, at)) if line.starts_with(&sn) && !line.starts_with("Deleted") => {
                    out.push(at.duration_since(started));
                    break;
                }
                Ok(_) => {}
                Err(_) => panic!(
                    "route {sn} did not appear within 10 s; log:\n{}",
                    tb.nodes[0].log()
                ),
            }
        }
    }
    let _ = monitor.kill();
    let _ = monitor.wait();
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flanneld = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "target/release/flanneld".into());
    if args.get(2).map(String::as_str) == Some("datapath") {
        datapath::run(&flanneld);
        return;
    }
    let sizes: Vec<u32> = if args.len() > 2 {
        args[2..].iter().filter_map(|a| a.parse().ok()).collect()
    } else {
        vec![1000, 5000]
    };
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("bench: needs root (network namespaces)");
        std::process::exit(1);
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("wireguard") {
        wireguard::run(&flanneld);
        return;
    }
    println!("flanneld control-plane benchmark ({flanneld})\n");
    println!(
        "{:>6} | {:>14} | {:>14} | {:>6} | {:>9}",
        "peers", "flanneld", "ip -batch", "ratio", "RSS"
    );
    for n in sizes {
        let (daemon, batch, rss) = bulk(&flanneld, n);
        println!(
            "{:>6} | {:>11.1} ms | {:>11.1} ms | {:>6.2} | {:>6.1} MB",
            n,
            daemon.as_secs_f64() * 1e3,
            batch.as_secs_f64() * 1e3,
            daemon.as_secs_f64() / batch.as_secs_f64(),
            rss as f64 / 1024.0
        );
    }
    let mut lat = latency(&flanneld, 200);
    lat.sort();
    println!(
        "\nnew lease in etcd -> route on the node ({} samples): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3
    );
    datapath::run(&flanneld);
    wireguard::run(&flanneld);
}
