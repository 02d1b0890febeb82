//! Kernel WireGuard, inside the VM testbed (a real Debian kernel with the wireguard module; this
//! machine's kernel has none). Every test here is ignored in a normal run; the VM harness runs
//! the `vm_*` test binaries with `--ignored --test-threads=1`.
//!
//! Two "nodes" as network namespaces joined by a veth pair, each with a pod namespace behind a
//! cni0 bridge; each node runs the real wireguard backend (kernel implementation: the device over
//! rtnetlink, its configuration over generic netlink) and the real reconciler in a thread inside
//! its namespace, fed leases in-process (as tests/reconcile_kernel.rs does, no etcd needed).
//! Checks: the device is a kernel `wireguard` link with our key and port; peers are exactly the
//! other node; pods ping each other over kernel WireGuard; a departed node's peer is removed
//! within 5 s; a device deleted by hand is recreated with the same key and its peer and route
//! replayed; a restart adopts the device without changing it.

mod support;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flanneld::backend::reconcile::Reconciler;
use flanneld::backend::wireguard::device::{DeviceInfo, Implementation};
use flanneld::backend::wireguard::{WgPaths, WireguardBackend};
use flanneld::backend::{Backend, ExternalInterface};
use flanneld::kernel::Netlink;
use flanneld::kernel::rtnl::RtNetlink;
use flanneld::kernel::wireguard::{GenlError, GenlWireguard};
use flanneld::lease::{Lease, LeaseEvent};
use flanneld::netconf::{BackendConfig, NetConf, WireguardConfig, WireguardImplementation, WireguardMode};
use support::netns::{Netns, veth};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const NETWORK: &str = "198.18.0.0/16";

fn ping_bin() -> &'static str {
    ["/usr/bin/ping", "/bin/ping"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("ping")
}

fn wg_config(implementation: WireguardImplementation) -> (WireguardConfig, NetConf) {
    let cfg = WireguardConfig {
        listen_port: 51820,
        listen_port_v6: 51821,
        mtu: 0,
        psk: None,
        persistent_keepalive: 25,
        mode: WireguardMode::Separate,
        implementation,
    };
    let conf = NetConf {
        enable_ipv4: true,
        enable_ipv6: false,
        enable_nftables: false,
        network: Some(NETWORK.parse().unwrap()),
        subnet_len: 24,
        subnet_min: None,
        subnet_max: None,
        ipv6_network: None,
        ipv6_subnet_len: 64,
        ipv6_subnet_min: None,
        ipv6_subnet_max: None,
        backend_type: "wireguard".into(),
        backend: BackendConfig::Wireguard(cfg.clone()),
    };
    (cfg, conf)
}

/// Whether this kernel has WireGuard (probed in a throwaway namespace).
fn kernel_has_wireguard() -> bool {
    let ns = Netns::new("vmwgprobe");
    ns.run(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async { !matches!(GenlWireguard::connect().await, Err(GenlError::Unavailable)) })
    })
}

/// One node: its namespace, underlay address, lease subnet, key file, and a pod.
struct Node {
    ns: Netns,
    pod: Netns,
    ip: Ipv4Addr,
    subnet: &'static str,
    key: PathBuf,
}

fn sh(ns: &Netns, script: &str) -> String {
    ns.sh(script)
}

fn build_nodes(tag: &str, dir: &std::path::Path) -> (Node, Node) {
    let a = Netns::new(&format!("{tag}a"));
    let b = Netns::new(&format!("{tag}b"));
    veth(&a, "eth0", &b, "eth0");
    let mut nodes = Vec::new();
    for (n, (ns, ip, subnet)) in [
        (a, "192.0.2.1", "198.18.1.0/24"),
        (b, "192.0.2.2", "198.18.2.0/24"),
    ]
    .into_iter()
    .enumerate()
    {
        sh(
            &ns,
            &format!(
                "ip addr add {ip}/24 dev eth0 && ip link set eth0 up && ip link set lo up && sysctl -qw net.ipv4.ip_forward=1"
            ),
        );
        let gw = subnet.replace(".0/24", ".1");
        let pod_ip = subnet.replace(".0/24", ".2");
        sh(
            &ns,
            &format!(
                "ip link add cni0 type bridge && ip addr add {gw}/24 dev cni0 && ip link set cni0 mtu 1420 up"
            ),
        );
        let pod = Netns::new(&format!("{tag}p{n}"));
        veth(&ns, "veth0", &pod, "eth0");
        sh(&ns, "ip link set veth0 master cni0 && ip link set veth0 up");
        sh(
            &pod,
            &format!(
                "ip link set eth0 mtu 1420 && ip addr add {pod_ip}/24 dev eth0 && ip link set eth0 up && ip route add default via {gw}"
            ),
        );
        nodes.push(Node {
            ns,
            pod,
            ip: ip.parse().unwrap(),
            subnet,
            key: dir.join(format!("wgkey{n}")),
        });
    }
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    (a, b)
}

enum Cmd {
    Leases(Vec<LeaseEvent>),
    Stop,
}

enum Evt {
    Prepared(Box<Lease>, Implementation),
}

/// Runs the backend and reconciler of `node` in a thread inside its namespace until `Cmd::Stop`
/// (the first lease batch is the reconciler's snapshot: send one even when empty).
fn spawn_node(
    node: &Node,
) -> (
    mpsc::UnboundedSender<Cmd>,
    std::sync::mpsc::Receiver<Evt>,
    std::thread::JoinHandle<()>,
) {
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel::<Cmd>();
    let (evt_tx, evt_rx) = std::sync::mpsc::channel::<Evt>();
    let path = format!("/run/netns/{}", node.ns.name);
    let (ip, subnet, key) = (node.ip, node.subnet, node.key.clone());
    let handle = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(&path).expect("opening the node's netns");
        // SAFETY: setns changes only this thread's network namespace.
        assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let k = Arc::new(RtNetlink::new().expect("rtnetlink"));
            let eth0 = k.link_by_name("eth0").await.unwrap().expect("eth0");
            let ext = ExternalInterface {
                name: "eth0".into(),
                index: eth0.index,
                mtu: eth0.mtu,
                iface_addr: Some(ip),
                iface_v6_addr: None,
                ext_addr: Some(ip),
                ext_v6_addr: None,
            };
            let (cfg, conf) = wg_config(WireguardImplementation::Kernel);
            let paths = WgPaths {
                key_file: key,
                uapi_dir: "/run/wireguard".into(),
            };
            let mut backend = WireguardBackend::new(&cfg, &ext, &conf, paths).expect("backend");
            let attrs = backend.prepare(&*k).await.expect("prepare");
            let own = Lease {
                enable_ipv4: true,
                enable_ipv6: false,
                subnet: Some(subnet.parse().unwrap()),
                ipv6_subnet: None,
                attrs,
                expiration: None,
            };
            backend.configure(&*k, &own).await.expect("configure");
            let implementation = backend.implementation().expect("chosen");
            let _ = evt_tx.send(Evt::Prepared(Box::new(own.clone()), implementation));
            let reconciler = Reconciler::new(k.clone(), Box::new(backend), own);
            let (lease_tx, lease_rx) = mpsc::unbounded_channel();
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(reconciler.run(lease_rx, shutdown.clone()));
            while let Some(Cmd::Leases(batch)) = cmd_rx.recv().await {
                let _ = lease_tx.send(batch);
            }
            shutdown.cancel();
            let _ = task.await;
        });
    });
    (cmd_tx, evt_rx, handle)
}

fn prepared(rx: &std::sync::mpsc::Receiver<Evt>) -> (Lease, Implementation) {
    let Evt::Prepared(l, i) = rx.recv_timeout(Duration::from_secs(60)).expect("node prepared");
    (*l, i)
}

/// The device as the kernel reports it over generic netlink, read from inside `ns`.
fn device(ns: &Netns) -> Option<DeviceInfo> {
    ns.run(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                GenlWireguard::connect()
                    .await
                    .ok()?
                    .get_device("flannel-wg")
                    .await
                    .ok()?
            })
    })
}

fn until(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn pings(from: &Netns, to: &str) -> bool {
    from.try_sh(&format!("{} -c 1 -W 1 {to}", ping_bin())).is_ok()
}

fn peer_keys(ns: &Netns) -> Vec<String> {
    let mut keys: Vec<String> = device(ns)
        .map(|d| d.peers.iter().map(|p| p.public_key.to_string()).collect())
        .unwrap_or_default();
    keys.sort();
    keys
}

fn public_key_of(lease: &Lease) -> String {
    let v: serde_json::Value = serde_json::from_str(lease.attrs.backend_data.as_deref().unwrap()).unwrap();
    v["PublicKey"].as_str().unwrap().to_string()
}

#[test]
#[ignore = "runs inside the VM testbed (make test-vm)"]
fn kernel_wireguard_peers_pods_departure_recreation_and_restart() {
    if !support::is_root() {
        return support::skip("vm_wireguard", "needs root (network namespaces)");
    }
    if !kernel_has_wireguard() {
        return support::skip(
            "vm_wireguard",
            "this kernel has no WireGuard (generic netlink family missing)",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = build_nodes("vmwg", dir.path());
    let (a_cmd, a_evt, a_thread) = spawn_node(&a);
    let (b_cmd, b_evt, b_thread) = spawn_node(&b);
    let (a_lease, a_impl) = prepared(&a_evt);
    let (b_lease, b_impl) = prepared(&b_evt);
    assert_eq!((a_impl, b_impl), (Implementation::Kernel, Implementation::Kernel));

    // The device: a kernel wireguard link, our key and port, our address, the network route.
    let link = sh(&a.ns, "ip -d -j link show flannel-wg");
    assert!(link.contains("\"info_kind\":\"wireguard\""), "{link}");
    let dev = device(&a.ns).expect("device readable over generic netlink");
    assert_eq!(dev.listen_port, 51820);
    assert_eq!(
        dev.private_key.expect("key set").public_key().to_string(),
        public_key_of(&a_lease)
    );
    assert!(sh(&a.ns, "ip -4 addr show dev flannel-wg").contains("198.18.1.0/32"));

    a_cmd
        .send(Cmd::Leases(vec![LeaseEvent::Added(b_lease.clone())]))
        .unwrap();
    b_cmd
        .send(Cmd::Leases(vec![LeaseEvent::Added(a_lease.clone())]))
        .unwrap();
    let want_a = vec![public_key_of(&b_lease)];
    assert!(
        until(Duration::from_secs(20), || peer_keys(&a.ns) == want_a).is_some(),
        "peers of a: {:?}",
        peer_keys(&a.ns)
    );
    let peer = &device(&a.ns).unwrap().peers[0];
    assert_eq!(peer.endpoint, Some("192.0.2.2:51820".parse().unwrap()));
    assert_eq!(peer.allowed_ips, vec!["198.18.2.0/24".parse().unwrap()]);
    assert_eq!(peer.persistent_keepalive, 25);
    let route = sh(&a.ns, &format!("ip route show {NETWORK} dev flannel-wg"));
    assert!(
        route.contains("scope link") && route.contains("proto 70"),
        "{route}"
    );

    // Pods ping each other over kernel WireGuard.
    assert!(
        until(Duration::from_secs(20), || pings(&a.pod, "198.18.2.2")).is_some(),
        "pod a -> pod b"
    );
    assert!(pings(&b.pod, "198.18.1.2"), "pod b -> pod a");
    assert!(
        device(&a.ns).unwrap().peers[0].last_handshake.is_some(),
        "a handshake happened"
    );

    // A departed node's peer is removed within 5 s.
    a_cmd
        .send(Cmd::Leases(vec![LeaseEvent::Removed(b_lease.clone())]))
        .unwrap();
    let gone = until(Duration::from_secs(5), || peer_keys(&a.ns).is_empty());
    assert!(
        gone.is_some(),
        "departed peer still on the device: {:?}",
        peer_keys(&a.ns)
    );

    // A device deleted by hand is recreated with the same key; peer and route replayed.
    a_cmd
        .send(Cmd::Leases(vec![LeaseEvent::Added(b_lease.clone())]))
        .unwrap();
    assert!(until(Duration::from_secs(10), || peer_keys(&a.ns) == want_a).is_some());
    sh(&a.ns, "ip link del flannel-wg");
    let back = until(Duration::from_secs(20), || {
        device(&a.ns).is_some_and(|d| {
            d.private_key.as_ref().map(|k| k.public_key().to_string()) == Some(public_key_of(&a_lease))
                && d.peers.len() == 1
        })
    });
    assert!(back.is_some(), "device not recreated with key and peer");
    assert!(
        until(Duration::from_secs(20), || pings(&a.pod, "198.18.2.2")).is_some(),
        "pods after recreation"
    );

    // A restart adopts the device: same index, same peers, traffic keeps flowing.
    let index_before = sh(&a.ns, "ip -j link show flannel-wg");
    a_cmd.send(Cmd::Stop).unwrap();
    a_thread.join().unwrap();
    assert_eq!(
        sh(&a.ns, "ip -j link show flannel-wg"),
        index_before,
        "device left in place at shutdown"
    );
    assert_eq!(peer_keys(&a.ns), want_a, "peers left in place at shutdown");
    let (a_cmd, a_evt, a_thread) = spawn_node(&a);
    let (a_lease2, _) = prepared(&a_evt);
    assert_eq!(
        public_key_of(&a_lease2),
        public_key_of(&a_lease),
        "same key after restart"
    );
    a_cmd.send(Cmd::Leases(vec![LeaseEvent::Added(b_lease)])).unwrap();
    assert!(until(Duration::from_secs(10), || pings(&a.pod, "198.18.2.2")).is_some());
    assert_eq!(peer_keys(&a.ns), want_a);

    a_cmd.send(Cmd::Stop).unwrap();
    b_cmd.send(Cmd::Stop).unwrap();
    a_thread.join().unwrap();
    b_thread.join().unwrap();
}

/// The generic netlink codec against the real kernel: what we set is what the kernel reports,
/// for a device with many peers (split requests and split dumps), IPv6 endpoints and PSKs.
#[test]
#[ignore = "runs inside the VM testbed (make test-vm)"]
fn generic_netlink_set_and_get_roundtrip_through_the_kernel() {
    use flanneld::backend::peers::{PresharedKey, WgKey};
    use flanneld::backend::wireguard::device::{DeviceUpdate, PeerUpdate};
    use flanneld::backend::wireguard::key::PrivateKey;
    if !support::is_root() {
        return support::skip("vm_wireguard_genl", "needs root (network namespaces)");
    }
    if !kernel_has_wireguard() {
        return support::skip("vm_wireguard_genl", "this kernel has no WireGuard");
    }
    let ns = Netns::new("vmwggenl");
    ns.run(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let k = RtNetlink::new().unwrap();
                k.create_wireguard("flannel-wg", 1420)
                    .await
                    .expect("ip link add type wireguard");
                let genl = GenlWireguard::connect().await.expect("genl");
                let peers: Vec<PeerUpdate> = (0..300u32)
                    .map(|i| PeerUpdate {
                        public_key: {
                            // Bytes 1 and 2 carry the index (clamping touches bytes 0 and 31).
                            let mut k = [7u8; 32];
                            k[1] = i as u8;
                            k[2] = (i >> 8) as u8;
                            PrivateKey::from_bytes(k).public_key()
                        },
                        preshared_key: Some(Some(PresharedKey(WgKey([9; 32])))).filter(|_| i % 2 == 0),
                        endpoint: Some(if i % 3 == 0 {
                            format!("[2001:db8::{:x}]:51820", i + 1).parse().unwrap()
                        } else {
                            format!("192.0.2.{}:51820", i % 250 + 1).parse().unwrap()
                        }),
                        persistent_keepalive: Some(25),
                        replace_allowed_ips: true,
                        allowed_ips: vec![format!("198.18.{}.{}/30", i / 64, (i % 64) * 4).parse().unwrap()],
                        ..PeerUpdate::default()
                    })
                    .collect();
                let update = DeviceUpdate {
                    private_key: Some(Some(PrivateKey::generate())),
                    listen_port: Some(51820),
                    peers: peers.clone(),
                    ..DeviceUpdate::default()
                };
                genl.set_device("flannel-wg", &update).await.expect("set");
                let got = genl.get_device("flannel-wg").await.expect("get").expect("device");
                assert_eq!(got.listen_port, 51820);
                assert_eq!(got.private_key, update.private_key.clone().unwrap());
                let wg_count = std::process::Command::new("wg")
                    .args(["show", "flannel-wg", "peers"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).lines().count().to_string())
                    .unwrap_or_else(|e| format!("wg: {e}"));
                assert_eq!(got.peers.len(), 300, "wg show lists {wg_count} peers");
                for want in &peers {
                    let have = got
                        .peers
                        .iter()
                        .find(|p| p.public_key == want.public_key)
                        .expect("peer");
                    assert_eq!(have.endpoint, want.endpoint);
                    assert_eq!(have.allowed_ips, want.allowed_ips);
                    assert_eq!(have.preshared_key, want.preshared_key.flatten());
                    assert_eq!(have.persistent_keepalive, 25);
                }
                // Remove half, the rest stays.
                let remove = DeviceUpdate {
                    peers: peers
                        .iter()
                        .step_by(2)
                        .map(|p| PeerUpdate {
                            public_key: p.public_key,
                            remove: true,
                            ..PeerUpdate::default()
                        })
                        .collect(),
                    ..DeviceUpdate::default()
                };
                genl.set_device("flannel-wg", &remove).await.expect("remove");
                assert_eq!(
                    genl.get_device("flannel-wg").await.unwrap().unwrap().peers.len(),
                    150
                );
                assert!(genl.get_device("no-such-dev").await.unwrap().is_none());
            })
    });
}
