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

use flanneld::kernel::Netlink;
use flanneld::kernel::rtnl::RtNetlink;
use support::netns::Netns;
use support::testbed::{ETCD_IP, ETCD_PREFIX, Testbed, TestbedOptions};

const NETWORK: &str = "198.18.0.0/15";
const SUBNET_LEN: u8 = 28;

/// The i-th remote lease: subnet key and value.
fn lease(i: u32) -> (String, String) {
    // /28 subnets from 198.18.0.16 on (198.18.0.0/28 is never handed out); public IPs spread over
    // two documentation ranges; a distinct locally administered MAC each.
    let base = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + (i + 1) * 16;
    let subnet = std::net::Ipv4Addr::from(base);
    let public = if i % 2 == 0 {
        format!("198.51.100.{}", 1 + (i / 2) % 254)
    } else {
        format!("203.0.113.{}", 1 + (i / 2) % 254)
    };
    let mac = format!(
        "0a:00:{:02x}:{:02x}:{:02x}:01",
        (i >> 16) & 0xff,
        (i >> 8) & 0xff,
        i & 0xff
    );
    let key = format!("{ETCD_PREFIX}/subnets/{subnet}-{SUBNET_LEN}");
    let value = format!(
        r#"{{"PublicIP":"{public}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
    );
    (key, value)
}

/// A batch of key/value pairs to write, and where to report the instant the write started.
type WriteRequest = (Vec<(String, String)>, mpsc::Sender<Instant>);

/// Runs etcd puts from a thread inside the etcd namespace (the bench process itself stays in the
/// root namespace and never talks to the underlay directly).
struct EtcdWriter {
    tx: mpsc::Sender<WriteRequest>,
}

impl EtcdWriter {
    fn new(ns: &Netns) -> EtcdWriter {
        let (tx, rx) = mpsc::channel::<WriteRequest>();
        let path = format!("/run/netns/{}", ns.name);
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(&path).expect("opening etcd netns");
            // SAFETY: setns only changes this thread's network namespace.
            assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut client = etcd_client::Client::connect([format!("http://{ETCD_IP}:2379")], None)
                    .await
                    .expect("connecting to etcd");
                while let Ok((kvs, done)) = rx.recv() {
                    let started = Instant::now();
                    for chunk in kvs.chunks(100) {
                        let ops: Vec<etcd_client::TxnOp> = chunk
                            .iter()
                            .map(|(k, v)| etcd_client::TxnOp::put(k.as_str(), v.as_str(), None))
                            .collect();
                        client
                            .txn(etcd_client::Txn::new().and_then(ops))
                            .await
                            .expect("etcd txn");
                    }
                    let _ = done.send(started);
                }
            });
        });
        EtcdWriter { tx }
    }

    /// Writes the pairs; returns when etcd acknowledged, with the instant the write started.
    fn put(&self, kvs: Vec<(String, String)>) -> Instant {
        let (done_tx, done_rx) = mpsc::channel();
        self.tx.send((kvs, done_tx)).expect("etcd writer alive");
        done_rx.recv().expect("etcd writer answered")
    }
}

/// (routes via flannel.1, permanent neighbours, FDB entries) in a namespace, read over netlink.
fn counts(ns: &Netns) -> (usize, usize, usize) {
    ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let k = RtNetlink::new().expect("netlink");
            let Ok(Some(dev)) = k.link_by_name("flannel.1").await else {
                return (0, 0, 0);
            };
            let routes = k
                .routes()
                .await
                .unwrap_or_default()
                .iter()
                .filter(|r| r.oif == Some(dev.index))
                .count();
            let neighs = k
                .neighs(dev.index)
                .await
                .unwrap_or_default()
                .iter()
                .filter(|n| n.state & flanneld::kernel::NUD_PERMANENT != 0)
                .count();
            let fdbs = k
                .fdbs(dev.index)
                .await
                .unwrap_or_default()
                .iter()
                .filter(|f| f.dst.is_some())
                .count();
            (routes, neighs, fdbs)
        })
    })
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

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
        let (key, value) = lease(i);
        let sn = key.rsplit('/').next().unwrap().replace('-', "/");
        let net = sn.split('/').next().unwrap();
        let v: serde_json::Value = serde_json::from_str(&value).unwrap();
        let mac = v["BackendData"]["VtepMAC"].as_str().unwrap();
        let public = v["PublicIP"].as_str().unwrap();
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
    let (r, ne, f) = counts(&ns);
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
    writer.put((0..n).map(lease).collect());
    let started = Instant::now();
    tb.start_daemon(0);
    let deadline = started + Duration::from_secs(120);
    let converged = loop {
        let (r, ne, f) = counts(&tb.nodes[0].ns);
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
        let (key, value) = lease(10_000 + i);
        let sn = key.rsplit('/').next().unwrap().replace('-', "/");
        let started = writer.put(vec![(key, value)]);
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
