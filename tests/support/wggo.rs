//! WireGuard nodes we did not write, for interop tests and the benchmark: `wireguard-go` on a
//! testbed node (its own mount namespace, so its `/run/wireguard/flannel-wg.sock` does not clash
//! with another node's), configured with `wg` the way upstream flanneld configures the kernel
//! device: private key and listen port, one peer per other lease (public key, endpoint,
//! allowed IPs, persistent keepalive), the lease subnet's network address /32 on the device, MTU,
//! and the route `<Network> dev flannel-wg scope link`. Its lease goes into etcd as upstream
//! writes it, and a subnet.env lets `Testbed::add_pod` build its pod.
//!
//! `wg_in` runs `wg` inside another process's mount and network namespace (our daemon's private
//! /run), which is how a test looks at our userspace device with the standard tool.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::testbed::{ETCD_PREFIX, Testbed};

pub const PORT: u16 = 51820;
pub const MTU: u32 = 1420;

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// Why interop tests cannot run here, if they cannot.
pub fn missing() -> Option<String> {
    for tool in ["wg", "wireguard-go", "nsenter", "unshare"] {
        if !on_path(tool) {
            return Some(format!(
                "the `{tool}` command is missing (apt-get install --no-install-recommends wireguard-tools wireguard-go; see scripts/deps.sh)"
            ));
        }
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing".into());
    }
    None
}

/// `wg <args>` in the mount and network namespaces of process `pid`.
pub fn wg_in(pid: u32, args: &[&str]) -> Result<String, String> {
    let pid = pid.to_string();
    let mut argv = vec!["-t", pid.as_str(), "-m", "-n", "wg"];
    argv.extend_from_slice(args);
    let out = std::process::Command::new("nsenter")
        .args(&argv)
        .output()
        .map_err(|e| format!("running nsenter: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The public keys `wg show <dev> peers` lists in process `pid`'s namespaces, sorted.
pub fn peers_in(pid: u32, dev: &str) -> Result<Vec<String>, String> {
    let mut keys: Vec<String> = wg_in(pid, &["show", dev, "peers"])?
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    keys.sort();
    Ok(keys)
}

/// `wg genkey` and `wg pubkey`.
pub fn genkey() -> (String, String) {
    let private = std::process::Command::new("wg")
        .arg("genkey")
        .output()
        .expect("wg genkey");
    let private = String::from_utf8_lossy(&private.stdout).trim().to_string();
    let mut child = std::process::Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("wg pubkey");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(private.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (private, String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A lease value as upstream flanneld's wireguard backend writes it.
pub fn lease_value(public_ip: &str, public_key: &str) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{public_key}","Port":{PORT}}}}}"#
    )
}

/// A wireguard-go node on testbed node `index`.
pub struct GoNode {
    pub index: usize,
    pub pid: u32,
    child: Child,
    pub public_key: String,
    /// `198.18.200.0/24`
    pub subnet: String,
    /// Where the lease lives in etcd.
    pub lease_key: String,
}

impl Drop for GoNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GoNode {
    /// Starts wireguard-go on node `index` for `subnet` (e.g. `198.18.200.0/24`) inside
    /// `network`, configures key, port, address, MTU and route, writes its lease (TTL 1 h) and
    /// a subnet.env. Peers come later (`mesh`).
    pub fn start(tb: &Testbed, index: usize, subnet: &str, network: &str) -> GoNode {
        let node = &tb.nodes[index];
        let (private, public_key) = genkey();
        let key_file: PathBuf = node.dir.join("wg-go.key");
        std::fs::write(&key_file, &private).unwrap();
        let log = std::fs::File::create(node.dir.join("wireguard-go.log")).unwrap();
        let child = node
            .ns
            .spawn_cmd(&[
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                "mount -t tmpfs tmpfs /run && exec wireguard-go -f flannel-wg",
            ])
            .env("WG_PROCESS_FOREGROUND", "1")
            .env("LOG_LEVEL", "error")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting wireguard-go");
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(20);
        while wg_in(pid, &["show", "flannel-wg"]).is_err() {
            assert!(
                Instant::now() < deadline,
                "wireguard-go on {} did not come up",
                node.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        wg_in(
            pid,
            &[
                "set",
                "flannel-wg",
                "private-key",
                key_file.to_str().unwrap(),
                "listen-port",
                &PORT.to_string(),
            ],
        )
        .expect("wg set private-key listen-port");
        let net_addr = subnet.split('/').next().unwrap();
        node.ns.sh(&format!(
            "ip addr add {net_addr}/32 dev flannel-wg && ip link set flannel-wg mtu {MTU} up && \
             ip route replace {network} dev flannel-wg scope link"
        ));
        let lease_key = format!("{ETCD_PREFIX}/subnets/{}", subnet.replace('/', "-"));
        let grant = tb.etcdctl(&["lease", "grant", "3600"]);
        let id = grant.split_whitespace().nth(1).expect("lease id").to_string();
        tb.etcdctl(&[
            "put",
            &format!("--lease={id}"),
            &lease_key,
            &lease_value(&node.ip.to_string(), &public_key),
        ]);
        let gw = {
            let mut o: Vec<u8> = net_addr.split('.').map(|p| p.parse().unwrap()).collect();
            o[3] += 1;
            format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3])
        };
        let len = subnet.split('/').nth(1).unwrap();
        std::fs::write(
            node.subnet_file(),
            format!("FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={gw}/{len}\nFLANNEL_MTU={MTU}\nFLANNEL_IPMASQ=false\n"),
        )
        .unwrap();
        GoNode {
            index,
            pid,
            child,
            public_key,
            subnet: subnet.to_string(),
            lease_key,
        }
    }

    /// Configure one peer per lease in etcd other than our own (as upstream does on `Added`).
    pub fn mesh(&self, tb: &Testbed, keepalive: u16) {
        let own = self.lease_key.rsplit('/').next().unwrap().to_string();
        for (key, value) in tb.leases() {
            if key == own {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&value).expect("lease JSON");
            let (Some(ip), Some(pk)) = (v["PublicIP"].as_str(), v["BackendData"]["PublicKey"].as_str())
            else {
                continue;
            };
            let port = v["BackendData"]["Port"].as_u64().unwrap_or(u64::from(PORT));
            let subnet = key.replace('-', "/");
            wg_in(
                self.pid,
                &[
                    "set",
                    "flannel-wg",
                    "peer",
                    pk,
                    "endpoint",
                    &format!("{ip}:{port}"),
                    "persistent-keepalive",
                    &keepalive.to_string(),
                    "allowed-ips",
                    &subnet,
                ],
            )
            .expect("wg set peer");
        }
    }

    /// `wg set flannel-wg peer <key> remove` (upstream's `Removed`).
    pub fn remove_peer(&self, key: &str) {
        wg_in(self.pid, &["set", "flannel-wg", "peer", key, "remove"]).expect("wg set peer remove");
    }
}
