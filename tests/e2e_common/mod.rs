//! Shared pieces of the end-to-end tests (tests/e2e_*.rs, issue 4's "Checked by"): the skip checks,
//! the lock that keeps one testbed running at a time, the exact kernel listings spec 9.1 (vxlan) and
//! 9.2 (host-gw) prescribe, the etcd values of spec 3.2, polling helpers, and `ip monitor`
//! recorders. It only builds testbeds, reads and compares; it never changes daemon code or anything
//! outside the testbed's own namespaces.
#![allow(dead_code)]

mod doctor;
mod listing;
mod monitor;
mod scenarios;

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use doctor::*;
#[allow(unused_imports)]
pub use listing::*;
#[allow(unused_imports)]
pub use monitor::Monitor;
#[allow(unused_imports)]
pub use scenarios::*;

use crate::support::testbed::{ETCD_PREFIX, Testbed, TestbedOptions};

/// The cluster network every e2e testbed configures (inside the 198.18.0.0/15 test range).
pub const NETWORK: &str = "198.18.0.0/16";
/// Where each node's daemon serves /readyz, on the node's own loopback.
pub const HEALTHZ_PORT: u16 = 8081;
/// How long a daemon may take to start, get a lease and program its peers on a loaded machine.
pub const STARTUP: Duration = Duration::from_secs(60);
/// The generous bound for anything the daemon should do "at once" (repairs, removals, joins).
pub const CONVERGE: Duration = Duration::from_secs(30);

static SERIAL: Mutex<()> = Mutex::new(());

/// Held for the whole test: several etcds and daemons at once overload a 2-core machine. The mutex
/// serializes tests of one binary; the file lock serializes test binaries run in parallel (nextest).
pub struct Serial {
    _lock: File,
    _guard: MutexGuard<'static, ()>,
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false)
}

/// Takes the e2e lock, or prints why the test cannot run here and returns `None`.
pub fn serial_or_skip(test: &str) -> Option<Serial> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        crate::support::skip(test, "needs root (it creates network namespaces)");
        return None;
    }
    for bin in ["/usr/bin/etcd", "/usr/bin/etcdctl"] {
        if !Path::new(bin).exists() {
            crate::support::skip(
                test,
                &format!("{bin} is missing (install etcd-server and etcd-client)"),
            );
            return None;
        }
    }
    for tool in ["ip", "bridge", "ping", "curl", "unshare"] {
        if !on_path(tool) {
            crate::support::skip(test, &format!("the `{tool}` command is missing"));
            return None;
        }
    }
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let path = std::env::temp_dir().join("flanneld-e2e.lock");
    let lock = File::options()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    // SAFETY: flock on a valid, open descriptor; released when the file is closed.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(
        rc,
        0,
        "locking {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    Some(Serial {
        _lock: lock,
        _guard: guard,
    })
}

/// A testbed of `nodes` nodes with the network config for `backend` in etcd and every daemon set to
/// serve /readyz on its loopback. No daemon is started.
pub fn testbed(tag: &str, nodes: usize, backend: &str) -> Testbed {
    let mut tb = Testbed::new(TestbedOptions {
        nodes,
        flanneld: env!("CARGO_BIN_EXE_flanneld").into(),
        tag: tag.into(),
    });
    tb.put_config(&format!(
        r#"{{"Network": "{NETWORK}", "Backend": {{"Type": "{backend}"}}}}"#
    ));
    for node in &mut tb.nodes {
        node.args.push("--healthz-ip=127.0.0.1".into());
        node.args.push(format!("--healthz-port={HEALTHZ_PORT}"));
    }
    tb
}

/// Starts the daemons of `nodes` and waits until each has written subnet.env and reports ready
/// (its first view of the peers is programmed).
pub fn start(tb: &mut Testbed, nodes: &[usize]) {
    for &i in nodes {
        tb.start_daemon(i);
    }
    for &i in nodes {
        tb.wait_subnet_env(i, STARTUP);
        wait_ready(tb, i, STARTUP);
    }
}

/// Whether node `i`'s daemon answers 200 on /readyz.
pub fn ready(tb: &Testbed, i: usize) -> bool {
    let url = format!("http://127.0.0.1:{HEALTHZ_PORT}/readyz");
    tb.nodes[i]
        .ns
        .try_sh(&format!("curl -s -m 2 -o /dev/null -w '%{{http_code}}' {url}"))
        .is_ok_and(|code| code.trim() == "200")
}

/// Whether node `i`'s daemon process is still running.
pub fn daemon_alive(tb: &mut Testbed, i: usize) -> bool {
    tb.nodes[i]
        .daemon
        .as_mut()
        .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
}

/// Waits until node `i`'s daemon reports ready; panics with its log when it exits or times out.
pub fn wait_ready(tb: &mut Testbed, i: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if ready(tb, i) {
            return;
        }
        assert!(
            daemon_alive(tb, i),
            "flanneld on {} exited before it was ready; log:\n{}",
            tb.nodes[i].name,
            tb.nodes[i].log()
        );
        assert!(
            Instant::now() < deadline,
            "flanneld on {} not ready after {timeout:?}; log:\n{}",
            tb.nodes[i].name,
            tb.nodes[i].log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `done` every 10 ms until it holds (returns the time it took) or `timeout` passes.
pub fn time_until(timeout: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if done() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How a repair time compares with the 1 s goal, for the printed report (tests assert only generous
/// bounds; the goal itself is a measurement, never an assertion).
pub fn against_one_second_goal(took: Duration) -> &'static str {
    if took <= Duration::from_secs(1) {
        "met"
    } else {
        "MISSED"
    }
}

/// One node's lease as stored in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The key suffix under `<prefix>/subnets/`, e.g. `198.18.76.0-24`.
    pub key: String,
    /// The subnet's network address and prefix length.
    pub network: Ipv4Addr,
    pub prefix_len: u8,
    /// The value exactly as stored.
    pub value: String,
    pub public_ip: Ipv4Addr,
    /// `BackendData.VtepMAC`, for vxlan leases.
    pub vtep_mac: Option<String>,
}

impl LeaseInfo {
    pub fn subnet(&self) -> String {
        format!("{}/{}", self.network, self.prefix_len)
    }
    pub fn full_key(&self) -> String {
        format!("{ETCD_PREFIX}/subnets/{}", self.key)
    }
}

/// Every lease in etcd, parsed; a key or value that does not parse fails the test.
pub fn leases(tb: &Testbed) -> Vec<LeaseInfo> {
    tb.leases()
        .into_iter()
        .map(|(key, value)| {
            let (net, len) = key
                .split_once('-')
                .unwrap_or_else(|| panic!("lease key {key:?} is not <ip>-<len>"));
            let attrs: serde_json::Value = serde_json::from_str(&value)
                .unwrap_or_else(|e| panic!("lease value of {key} is not JSON ({e}): {value}"));
            let public_ip = attrs["PublicIP"]
                .as_str()
                .and_then(|ip| ip.parse().ok())
                .unwrap_or_else(|| panic!("lease value of {key} has no IPv4 PublicIP: {value}"));
            LeaseInfo {
                network: net
                    .parse()
                    .unwrap_or_else(|e| panic!("lease key {key:?} has a bad address: {e}")),
                prefix_len: len
                    .parse()
                    .unwrap_or_else(|e| panic!("lease key {key:?} has a bad length: {e}")),
                vtep_mac: attrs["BackendData"]["VtepMAC"].as_str().map(str::to_string),
                key,
                value,
                public_ip,
            }
        })
        .collect()
}

/// Node `i`'s lease: the one whose PublicIP is the node's address (exactly one must exist).
pub fn lease_of(tb: &Testbed, i: usize) -> LeaseInfo {
    let all = leases(tb);
    match listing::own_and_peers(tb, i, &all) {
        Ok((own, _)) => own.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// The remaining TTL in seconds of the etcd lease `key` is attached to (None: no key or no lease).
pub fn ttl_of(tb: &Testbed, key: &str) -> Option<i64> {
    let out = tb.etcdctl(&["get", key, "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    let id = v
        .get("kvs")?
        .get(0)?
        .get("lease")?
        .as_i64()
        .filter(|id| *id != 0)?;
    let out = tb.etcdctl(&["lease", "timetolive", &format!("{id:x}"), "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v.get("ttl")?.as_i64()
}

/// Adds a pod on each of `nodes`; returns their addresses in the same order.
pub fn add_pods(tb: &mut Testbed, nodes: &[usize], tag: &str) -> Vec<Ipv4Addr> {
    nodes.iter().map(|&i| tb.add_pod(i, tag)).collect()
}

/// Pings every pod of `nodes` from every other one (each may take up to 10 s to answer); returns
/// the pairs that got no answer, as `nodeA -> nodeB (ip)`.
pub fn ping_matrix(tb: &Testbed, nodes: &[usize]) -> Vec<String> {
    let mut failed = Vec::new();
    for &from in nodes {
        for &to in nodes {
            if from == to {
                continue;
            }
            let ip = tb.nodes[to].pod_ip().expect("pod ip of a node with subnet.env");
            if !tb.ping_until(from, ip, Duration::from_secs(10)) {
                failed.push(format!("{} -> {} ({ip})", tb.nodes[from].name, tb.nodes[to].name));
            }
        }
    }
    failed
}

/// The daemon logs of `nodes`, for failure messages.
pub fn logs(tb: &Testbed, nodes: &[usize]) -> String {
    nodes
        .iter()
        .map(|&i| format!("--- {} log ---\n{}", tb.nodes[i].name, tb.nodes[i].log()))
        .collect::<Vec<_>>()
        .join("\n")
}
