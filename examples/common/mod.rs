//! Pieces the benchmarks share: synthetic vxlan leases, an etcd writer that runs inside the etcd
//! namespace, reading a node's flannel.1 entries over netlink, process figures (RSS, CPU), and
//! iperf3 between two testbed pods.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use flanneld::kernel::Netlink;
use flanneld::kernel::rtnl::RtNetlink;

use crate::support::netns::Netns;
use crate::support::testbed::{ETCD_IP, ETCD_PREFIX, Testbed};

pub const NETWORK: &str = "198.18.0.0/15";
pub const SUBNET_LEN: u8 = 28;

/// The i-th synthetic remote vxlan lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticLease {
    pub key: String,
    pub value: String,
    /// `198.18.x.y/28`
    pub subnet: String,
    /// The subnet's network address (the peer's VTEP address).
    pub network: String,
    pub public_ip: String,
    pub mac: String,
}

pub fn synthetic_lease(i: u32) -> SyntheticLease {
    // /28 subnets from 198.18.0.16 on (198.18.0.0/28 is never handed out); public IPs spread over
    // two documentation ranges; a distinct locally administered MAC each.
    let base = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + (i + 1) * 16;
    let network = std::net::Ipv4Addr::from(base).to_string();
    let public_ip = if i % 2 == 0 {
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
    let key = format!("{ETCD_PREFIX}/subnets/{network}-{SUBNET_LEN}");
    let value = format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
    );
    SyntheticLease {
        key,
        value,
        subnet: format!("{network}/{SUBNET_LEN}"),
        network,
        public_ip,
        mac,
    }
}

/// One etcd change.
pub enum Change {
    Put(String, String),
    Delete(String),
}

type WriteRequest = (Vec<Change>, mpsc::Sender<Instant>);

/// Runs etcd changes from a thread inside the etcd namespace (the bench process itself stays in
/// the root namespace and never talks to the underlay directly).
pub struct EtcdWriter {
    tx: mpsc::Sender<WriteRequest>,
}

impl EtcdWriter {
    pub fn new(ns: &Netns) -> EtcdWriter {
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
                while let Ok((changes, done)) = rx.recv() {
                    let started = Instant::now();
                    for chunk in changes.chunks(100) {
                        let ops: Vec<etcd_client::TxnOp> = chunk
                            .iter()
                            .map(|c| match c {
                                Change::Put(k, v) => etcd_client::TxnOp::put(k.as_str(), v.as_str(), None),
                                Change::Delete(k) => etcd_client::TxnOp::delete(k.as_str(), None),
                            })
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

    /// Applies the changes; returns when etcd acknowledged, with the instant the write started.
    pub fn apply(&self, changes: Vec<Change>) -> Instant {
        let (done_tx, done_rx) = mpsc::channel();
        self.tx.send((changes, done_tx)).expect("etcd writer alive");
        done_rx.recv().expect("etcd writer answered")
    }

    pub fn put(&self, kvs: Vec<(String, String)>) -> Instant {
        self.apply(kvs.into_iter().map(|(k, v)| Change::Put(k, v)).collect())
    }
}

/// What flannel.1 carries in a namespace, as text sets: routes (`dst via gw`), permanent
/// neighbours (`ip mac`), FDB entries with a destination (`mac dst`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VxlanEntries {
    pub routes: BTreeSet<String>,
    pub neighs: BTreeSet<String>,
    pub fdbs: BTreeSet<String>,
}

impl VxlanEntries {
    /// The entries spec 9.1 prescribes for these leases.
    pub fn of_leases<'a>(leases: impl IntoIterator<Item = &'a SyntheticLease>) -> VxlanEntries {
        let mut want = VxlanEntries::default();
        for l in leases {
            want.routes.insert(format!("{} via {}", l.subnet, l.network));
            want.neighs.insert(format!("{} {}", l.network, l.mac));
            want.fdbs.insert(format!("{} {}", l.mac, l.public_ip));
        }
        want
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        (self.routes.len(), self.neighs.len(), self.fdbs.len())
    }

    /// A few of the entries `self` has and `want` has not, for messages.
    pub fn extra_sample(&self, want: &VxlanEntries) -> Vec<String> {
        self.routes
            .difference(&want.routes)
            .chain(self.neighs.difference(&want.neighs))
            .chain(self.fdbs.difference(&want.fdbs))
            .take(5)
            .cloned()
            .collect()
    }

    /// Entries missing from `self` and present in `self` but not in `want`, for messages.
    pub fn difference(&self, want: &VxlanEntries) -> (usize, usize) {
        let missing = want.routes.difference(&self.routes).count()
            + want.neighs.difference(&self.neighs).count()
            + want.fdbs.difference(&self.fdbs).count();
        let extra = self.routes.difference(&want.routes).count()
            + self.neighs.difference(&want.neighs).count()
            + self.fdbs.difference(&want.fdbs).count();
        (missing, extra)
    }
}

/// flannel.1's entries in `ns`, read over netlink.
pub fn vxlan_entries(ns: &Netns) -> VxlanEntries {
    ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let k = RtNetlink::new().expect("netlink");
            let mut out = VxlanEntries::default();
            let Ok(Some(dev)) = k.link_by_name("flannel.1").await else {
                return out;
            };
            // Routes inside the pod network (not the kernel's fe80::/64 on the device).
            let pods: ipnet::IpNet = NETWORK.parse().expect("pod network");
            for r in k.routes().await.unwrap_or_default() {
                if r.oif == Some(dev.index) && pods.contains(&r.dst) {
                    let gw = r.gateway.map(|g| g.to_string()).unwrap_or_default();
                    out.routes.insert(format!("{} via {gw}", r.dst));
                }
            }
            for n in k.neighs(dev.index).await.unwrap_or_default() {
                if n.state & flanneld::kernel::NUD_PERMANENT != 0 {
                    let mac = n.mac.map(|m| m.to_string()).unwrap_or_default();
                    out.neighs.insert(format!("{} {mac}", n.ip));
                }
            }
            for f in k.fdbs(dev.index).await.unwrap_or_default() {
                if let Some(dst) = f.dst {
                    out.fdbs.insert(format!("{} {dst}", f.mac));
                }
            }
            out
        })
    })
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// CPU time (user + system) a process has used so far.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// iperf3 TCP for `seconds` from node `from`'s pod to node `to`'s pod; Gbit/s received (0 when
/// iperf3 printed no result).
pub fn pod_iperf(tb: &Testbed, from: usize, to: usize, seconds: u32) -> f64 {
    let server_pod = tb.nodes[to].pod.as_ref().expect("server pod");
    let mut server = server_pod
        .spawn_cmd(&["iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting iperf3 -s (install iperf3)");
    std::thread::sleep(Duration::from_millis(300));
    let ip = tb.nodes[to].pod_ip().expect("server pod address").to_string();
    let client = tb.nodes[from].pod.as_ref().expect("client pod");
    let out = client.exec(&["iperf3", "-c", &ip, "-t", &seconds.to_string(), "-J"]);
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9
}
