//! The multi-node testbed: N "nodes" as network namespaces joined by a bridge in a "switch"
//! namespace, a real etcd in its own namespace on the same underlay, the real `flanneld` binary
//! in each node (own subnet file, private /run), and pods built from each node's subnet.env.
//!
//! Underlay 192.0.2.0/24 (etcd .100, node i at .(i+1), a default route via .254 that nobody
//! answers); pod networks inside 198.18.0.0/15. Everything is torn down on drop, also on panic:
//! daemons and etcd are killed first, then the namespaces are deleted.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::netns::{Netns, veth};

pub const ETCD_IP: &str = "192.0.2.100";
/// How `ip` shows the protocol of the routes flanneld writes (`RTPROT_FLANNEL`).
pub const ROUTE_PROTO: &str = "70";
pub const ETCD_PREFIX: &str = "/coreos.com/network";

pub struct TestbedOptions {
    pub nodes: usize,
    /// The flanneld binary to run in each node.
    pub flanneld: PathBuf,
    /// A tag for namespace names (`fl-<tag>-...`).
    pub tag: String,
}

pub struct Node {
    pub name: String,
    pub ns: Netns,
    pub ip: Ipv4Addr,
    /// The node's private directory: subnet.env, daemon log, its /run.
    pub dir: PathBuf,
    pub daemon: Option<Child>,
    pub pod: Option<Netns>,
    /// Extra arguments for this node's daemon.
    pub args: Vec<String>,
}

impl Node {
    pub fn subnet_file(&self) -> PathBuf {
        self.dir.join("subnet.env")
    }
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("flanneld.log")
    }
    /// The daemon's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }
    /// subnet.env as a map, if it exists.
    pub fn subnet_env(&self) -> Option<BTreeMap<String, String>> {
        let text = std::fs::read_to_string(self.subnet_file()).ok()?;
        Some(
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }
    /// The pod's address: the second address of FLANNEL_SUBNET (the first is cni0's).
    pub fn pod_ip(&self) -> Option<Ipv4Addr> {
        let env = self.subnet_env()?;
        let gw: Ipv4Addr = env.get("FLANNEL_SUBNET")?.split('/').next()?.parse().ok()?;
        Some(Ipv4Addr::from(u32::from(gw) + 1))
    }
}

pub struct Testbed {
    pub switch: Netns,
    pub etcd_ns: Netns,
    pub etcd: Option<Child>,
    pub nodes: Vec<Node>,
    pub flanneld: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Testbed {
    /// Builds the switch, etcd and the nodes' namespaces and underlay; starts etcd; starts no daemon.
    pub fn new(opts: TestbedOptions) -> Testbed {
        let dir = tempfile::Builder::new()
            .prefix("flannel-testbed-")
            .tempdir()
            .expect("creating testbed dir");
        let switch = Netns::new(&format!("{}-sw", opts.tag));
        switch.sh("ip link add br0 type bridge && ip link set br0 up");
        let etcd_ns = Netns::new(&format!("{}-etcd", opts.tag));
        veth(&switch, "etcd", &etcd_ns, "eth0");
        switch.sh("ip link set etcd master br0");
        etcd_ns.sh(&format!("ip addr add {ETCD_IP}/24 dev eth0"));

        let mut nodes = Vec::new();
        for i in 0..opts.nodes {
            let name = format!("node{}", i + 1);
            let ns = Netns::new(&format!("{}-n{}", opts.tag, i + 1));
            let port = format!("p{}", i + 1);
            veth(&switch, &port, &ns, "eth0");
            switch.sh(&format!("ip link set {port} master br0"));
            let ip = Ipv4Addr::new(192, 0, 2, (i + 1) as u8);
            ns.sh(&format!(
                "ip addr add {ip}/24 dev eth0 && ip route add default via 192.0.2.254 dev eth0 && \
                 sysctl -qw net.ipv4.ip_forward=1"
            ));
            let node_dir = dir.path().join(&name);
            std::fs::create_dir_all(node_dir.join("run")).expect("creating node dir");
            nodes.push(Node {
                name,
                ns,
                ip,
                dir: node_dir,
                daemon: None,
                pod: None,
                args: Vec::new(),
            });
        }
        let mut tb = Testbed {
            switch,
            etcd_ns,
            etcd: None,
            nodes,
            flanneld: opts.flanneld,
            dir,
        };
        tb.start_etcd();
        tb
    }

    fn etcd_data_dir(&self) -> PathBuf {
        self.dir.path().join("etcd-data")
    }

    /// Starts (or restarts, keeping its data) etcd in its namespace and waits until it answers.
    pub fn start_etcd(&mut self) {
        let data = self.etcd_data_dir();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("opening etcd log");
        let client = format!("http://{ETCD_IP}:2379");
        let peer = format!("http://{ETCD_IP}:2380");
        let child = self
            .etcd_ns
            .spawn_cmd(&[
                "etcd",
                "--name",
                "testbed",
                "--data-dir",
                data.to_str().unwrap(),
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &format!("testbed={peer}"),
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting etcd (is etcd-server installed? run `make deps`)");
        self.etcd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.try_etcdctl(&["endpoint", "health"]).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("etcd did not become healthy within 30 s");
    }

    /// Kills etcd (SIGKILL), keeping its data directory.
    pub fn stop_etcd(&mut self) {
        if let Some(mut child) = self.etcd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn try_etcdctl(&self, args: &[&str]) -> Result<String, String> {
        let endpoint = format!("--endpoints=http://{ETCD_IP}:2379");
        let mut argv = vec!["env", "ETCDCTL_API=3", "etcdctl", "--dial-timeout=2s", &endpoint];
        argv.extend_from_slice(args);
        let out = self.etcd_ns.exec(&argv);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn etcdctl(&self, args: &[&str]) -> String {
        self.try_etcdctl(args)
            .unwrap_or_else(|e| panic!("etcdctl {args:?}: {e}"))
    }

    /// Writes `<prefix>/config`.
    pub fn put_config(&self, json: &str) {
        self.etcdctl(&["put", &format!("{ETCD_PREFIX}/config"), json]);
    }

    /// The subnet keys and values under `<prefix>/subnets/`.
    pub fn leases(&self) -> BTreeMap<String, String> {
        let out = self.etcdctl(&["get", "--prefix", &format!("{ETCD_PREFIX}/subnets/")]);
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .filter_map(|c| match c {
                [k, v] => Some((
                    k.trim_start_matches(&format!("{ETCD_PREFIX}/subnets/"))
                        .to_string(),
                    v.to_string(),
                )),
                _ => None,
            })
            .collect()
    }

    /// Starts flanneld on node `i` (private /run, own subnet file, log in the node dir).
    pub fn start_daemon(&mut self, i: usize) {
        self.start_daemon_with_env(i, &[]);
    }

    /// Sends `signal` (e.g. "TERM", "KILL") to node `i`'s daemon and waits for it to exit.
    pub fn stop_daemon(&mut self, i: usize, signal: &str) -> Option<std::process::ExitStatus> {
        let mut child = self.nodes[i].daemon.take()?;
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// Waits until node `i` has written its subnet.env; panics with its log when it does not.
    pub fn wait_subnet_env(&mut self, i: usize, timeout: Duration) -> BTreeMap<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(env) = self.nodes[i].subnet_env()
                && env.contains_key("FLANNEL_IPMASQ")
            {
                return env;
            }
            if let Some(child) = self.nodes[i].daemon.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "flanneld on {} exited ({status}) before writing subnet.env:\n{}",
                    self.nodes[i].name,
                    self.nodes[i].log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "no subnet.env on {} after {timeout:?}; log:\n{}",
                    self.nodes[i].name,
                    self.nodes[i].log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Builds cni0 (FLANNEL_SUBNET's first address, FLANNEL_MTU) and one pod namespace with the
    /// second address on node `i`, as a CNI bridge plugin would; with FLANNEL_IPV6_SUBNET in
    /// subnet.env the pod gets an IPv6 address as well (`add_pod_any`, testbed_v6.rs).
    pub fn add_pod(&mut self, i: usize, tag: &str) -> Ipv4Addr {
        self.add_pod_any(i, tag);
        self.nodes[i]
            .pod_ip()
            .expect("FLANNEL_SUBNET in subnet.env for an IPv4 pod")
    }

    /// One ping from node `from`'s pod to `to`; true when answered.
    pub fn ping(&self, from: usize, to: Ipv4Addr) -> bool {
        let pod = self.nodes[from].pod.as_ref().expect("pod");
        pod.exec(&["ping", "-c", "1", "-W", "1", &to.to_string()])
            .status
            .success()
    }

    /// Pings until one answer arrives or `timeout` passes.
    pub fn ping_until(&self, from: usize, to: Ipv4Addr, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.ping(from, to) {
                return true;
            }
        }
        false
    }

    /// The routes flanneld wrote (protocol 70) inside the pod network on node `i` (what flanneld programs), as
    /// `ip route` prints them.
    pub fn flannel_routes(&self, i: usize) -> Vec<String> {
        self.nodes[i]
            .ns
            .sh(&format!("ip route show root 198.18.0.0/15 proto {ROUTE_PROTO}"))
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Waits until node `i` has exactly `n` flannel routes; panics with its log when it does not.
    pub fn wait_routes(&self, i: usize, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let routes = self.flannel_routes(i);
            if routes.len() == n {
                return routes;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} has routes {routes:?}, wanted {n}; log:\n{}",
                    self.nodes[i].name,
                    self.nodes[i].log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `ip -j <args>` in node `i`, parsed.
    pub fn ip_json(&self, i: usize, args: &str) -> serde_json::Value {
        let out = self.nodes[i].ns.sh(&format!("ip -j {args}"));
        serde_json::from_str(out.trim()).unwrap_or(serde_json::Value::Null)
    }

    /// A counted ping: `count` echo requests every `interval` seconds (e.g. "0.01") from node `from`'s
    /// pod to `to`. `Pinger::wait` lets it end by itself, so ping waits for the reply to its last
    /// request and no in-flight packet is counted as lost.
    pub fn pinger_count(&self, from: usize, to: Ipv4Addr, interval: &str, count: u64) -> Pinger {
        let pod = self.nodes[from].pod.as_ref().expect("pod");
        let child = pod
            .spawn_cmd(&[
                "ping",
                "-q",
                "-i",
                interval,
                "-c",
                &count.to_string(),
                &to.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting ping");
        Pinger { child: Some(child) }
    }

    /// An "outside" host on the underlay: a namespace on the switch that owns the nodes' default
    /// gateway address 192.0.2.254 and `outside_ip` (on its loopback), with no route back to the
    /// pod network. Pod traffic reaches it and is answered only when the node masquerades it.
    pub fn add_outside(&self, tag: &str, outside_ip: &str) -> Netns {
        let outside = Netns::new(&format!("{tag}-out"));
        veth(&self.switch, "out", &outside, "eth0");
        self.switch.sh("ip link set out master br0");
        outside.sh(&format!(
            "ip addr add 192.0.2.254/24 dev eth0 && ip addr add {outside_ip}/32 dev lo"
        ));
        outside
    }

    /// Starts flanneld on node `i` like `start_daemon`, with extra environment variables (for
    /// example a PATH whose first directory wraps the firewall tools).
    pub fn start_daemon_with_env(&mut self, i: usize, env: &[(String, String)]) {
        let flanneld = self.flanneld.clone();
        let node = &mut self.nodes[i];
        assert!(node.daemon.is_none(), "daemon on {} already running", node.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.log_file())
            .expect("opening daemon log");
        let mut args = vec![
            format!("--etcd-endpoints=http://{ETCD_IP}:2379"),
            format!("--subnet-file={}", node.subnet_file().display()),
        ];
        args.extend(node.args.iter().cloned());
        // A private /run so nodes do not share lock or key files; `exec` keeps the pid the same so
        // signals reach flanneld itself.
        let script = format!(
            "mount -t tmpfs tmpfs /run && exec {} {}",
            flanneld.display(),
            args.iter()
                .map(|a| format!("'{a}'"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let child = node
            .ns
            .spawn_cmd(&["unshare", "-m", "--propagation", "private", "sh", "-c", &script])
            .env(
                "RUST_LOG",
                std::env::var("FLANNELD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting flanneld");
        node.daemon = Some(child);
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.daemon.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.stop_etcd();
        // The namespaces are deleted when the fields drop, after this.
    }
}

/// A running counted ping (`Testbed::pinger_count`); `wait` returns (sent, received).
pub struct Pinger {
    child: Option<Child>,
}

impl Drop for Pinger {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Parses `N packets transmitted, M received` from ping's summary.
pub fn parse_ping_summary(text: &str) -> (u64, u64) {
    for line in text.lines() {
        if let Some((sent, rest)) = line.split_once(" packets transmitted, ") {
            let received = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            return (sent.trim().parse().unwrap_or(0), received);
        }
    }
    (0, 0)
}

impl Pinger {
    /// Waits up to `timeout` for a counted ping (`Testbed::pinger_count`) to end by itself, then
    /// interrupts it; returns (sent, received) from its summary.
    pub fn wait(mut self, timeout: Duration) -> (u64, u64) {
        let mut child = self.child.take().expect("pinger");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Ok(None) = child.try_wait() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
        }
        let out = child.wait_with_output().expect("waiting for ping");
        parse_ping_summary(&String::from_utf8_lossy(&out.stdout))
    }
}
