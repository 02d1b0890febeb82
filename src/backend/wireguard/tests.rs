//! The wireguard backend on the fake kernel and the fake WireGuard device, driven by the real
//! reconciler with a fake lease feed (tokio's paused clock).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::device::{DeviceUpdate, PeerUpdate};
use super::fake::FakeWireguard;
use super::*;
use crate::backend::peers::{PeerOp, WgKey, WgPeer};
use crate::backend::reconcile::{ReconcileStatus, Reconciler};
use crate::backend::testutil::{kernel_with_eth0, lease_of, netconf, own_lease, subnet_of};
use crate::kernel::fake::FakeKernel;
use crate::kernel::{RT_SCOPE_LINK, RTPROT_FLANNEL};
use crate::lease::LeaseEvent::{Added, Removed};
use crate::netconf::{BackendConfig, WireguardMode};

fn cfg() -> WireguardConfig {
    WireguardConfig {
        listen_port: 51820,
        listen_port_v6: 51821,
        mtu: 0,
        psk: None,
        persistent_keepalive: 25,
        mode: WireguardMode::Separate,
        implementation: WireguardImplementation::Auto,
    }
}

fn peer_key(n: u16) -> WgKey {
    PrivateKey::from_bytes([n as u8; 32]).public_key()
}

fn wg_lease(n: u16) -> Lease {
    let mut l = lease_of(n, "wireguard", Some(layout::backend_data(&peer_key(n), 51820)));
    l.attrs.backend_type = "wireguard".into();
    l
}

struct Node {
    k: Arc<FakeKernel>,
    wg: Arc<FakeWireguard>,
    dir: tempfile::TempDir,
}

async fn prepared(
    node: &Node,
    c: &WireguardConfig,
) -> Result<(WireguardBackend, LeaseAttrs, u32), BackendError> {
    let (_, ext) = (0, ext_of(&node.k));
    let mut conf = netconf(BackendConfig::Wireguard(c.clone()));
    conf.backend_type = "wireguard".into();
    let paths = WgPaths {
        key_file: node.dir.path().join("wgkey"),
        uapi_dir: node.dir.path().join("wireguard"),
    };
    let mut b = WireguardBackend::new(c, &ext, &conf, paths)?.with_device(node.wg.clone());
    let attrs = b.prepare(&*node.k).await?;
    let mtu = b.configure(&*node.k, &own_lease("wireguard")).await?;
    Ok((b, attrs, mtu))
}

fn ext_of(k: &FakeKernel) -> ExternalInterface {
    let eth0 = k.link("eth0").unwrap();
    ExternalInterface {
        name: "eth0".into(),
        index: eth0.index,
        mtu: 1500,
        iface_addr: Some("192.0.2.1".parse().unwrap()),
        iface_v6_addr: None,
        ext_addr: Some("192.0.2.1".parse().unwrap()),
        ext_v6_addr: None,
    }
}

fn node() -> Node {
    let (k, _) = kernel_with_eth0();
    let wg = Arc::new(FakeWireguard::new(k.clone()));
    Node {
        k,
        wg,
        dir: tempfile::tempdir().unwrap(),
    }
}

struct Running {
    status: tokio::sync::watch::Receiver<ReconcileStatus>,
    leases: mpsc::UnboundedSender<Vec<crate::lease::LeaseEvent>>,
    shutdown: CancellationToken,
}

impl Running {
    async fn converged(&mut self) {
        let after = self.status.borrow().passes;
        tokio::time::timeout(
            Duration::from_secs(60),
            self.status.wait_for(|s| s.passes > after && s.converged),
        )
        .await
        .expect("a converged pass")
        .unwrap();
    }
}

fn run(node: &Node, backend: WireguardBackend) -> Running {
    let reconciler = Reconciler::new(node.k.clone(), Box::new(backend), own_lease("wireguard"));
    let status = reconciler.status();
    let (tx, rx) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    tokio::spawn(reconciler.run(rx, shutdown.clone()));
    Running {
        status,
        leases: tx,
        shutdown,
    }
}

fn peers(node: &Node) -> Vec<(WgKey, Option<std::net::SocketAddr>, Vec<IpNet>)> {
    let mut out: Vec<_> = node
        .wg
        .device("flannel-wg")
        .map(|d| {
            d.peers
                .into_iter()
                .map(|p| (p.public_key, p.endpoint, p.allowed_ips))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn expect_peer(n: u16) -> (WgKey, Option<std::net::SocketAddr>, Vec<IpNet>) {
    let ip = crate::backend::testutil::public_ip_of(n);
    (
        peer_key(n),
        Some(std::net::SocketAddr::new(ip.into(), 51820)),
        vec![IpNet::V4(subnet_of(n))],
    )
}

#[tokio::test]
async fn prepare_creates_the_device_and_publishes_byte_exact_lease_attrs() {
    let n = node();
    let (b, attrs, mtu) = prepared(&n, &cfg()).await.unwrap();
    let public = b.public_key().unwrap();
    assert_eq!(attrs.backend_type, "wireguard");
    assert_eq!(attrs.public_ip.to_string(), "192.0.2.1");
    assert_eq!(
        attrs.backend_data.as_deref(),
        Some(format!("{{\"PublicKey\":\"{public}\",\"Port\":51820}}").as_str())
    );
    assert_eq!(attrs.backend_v6_data, None);
    assert_eq!(mtu, 1420);
    let link = n.k.link("flannel-wg").unwrap();
    assert_eq!(
        (link.kind.as_deref(), link.mtu, link.up),
        (Some("wireguard"), 1420, true)
    );
    let addrs: Vec<_> =
        n.k.all_addrs()
            .into_iter()
            .filter(|a| a.index == link.index)
            .map(|a| (a.ip.to_string(), a.prefix_len))
            .collect();
    assert_eq!(addrs, vec![("198.18.1.0".to_string(), 32)]);
    let dev = n.wg.device("flannel-wg").unwrap();
    assert_eq!(dev.listen_port, 51820);
    assert_eq!(dev.private_key.unwrap().public_key(), public);
    // The route the own lease needs.
    let own = b.own_entries(&own_lease("wireguard"));
    assert_eq!(own.len(), 1);
    let Entry::Route(r) = &own[0] else { panic!() };
    assert_eq!(
        (r.dst.to_string(), r.oif, r.scope, r.protocol),
        (
            "198.18.0.0/15".to_string(),
            Some(link.index),
            RT_SCOPE_LINK,
            RTPROT_FLANNEL
        )
    );
}

#[tokio::test]
async fn a_restart_adopts_the_device_with_the_same_key_and_changes_nothing() {
    let n = node();
    let (b, attrs, _) = prepared(&n, &cfg()).await.unwrap();
    let index = n.k.link("flannel-wg").unwrap().index;
    let sets = n.wg.sets();
    drop(b);
    let (b2, attrs2, _) = prepared(&n, &cfg()).await.unwrap();
    assert_eq!(attrs, attrs2);
    assert_eq!(n.k.link("flannel-wg").unwrap().index, index, "device kept");
    assert_eq!(n.wg.sets(), sets, "nothing re-set");
    drop(b2);
}

#[tokio::test]
async fn a_bad_key_file_or_psk_is_a_clear_error() {
    let n = node();
    std::fs::write(n.dir.path().join("wgkey"), "not a key").unwrap();
    let err = prepared(&n, &cfg()).await.err().unwrap().to_string();
    assert!(
        err.contains("could not parse private key from file") && err.contains("wgkey"),
        "{err}"
    );
    assert!(n.k.link("flannel-wg").is_none(), "nothing created");
    let mut c = cfg();
    c.psk = Some("c2hvcnQ=".into());
    let err = prepared(&node(), &c).await.err().unwrap().to_string();
    assert!(
        err.contains("could not parse psk") && !err.contains("c2hvcnQ="),
        "{err}"
    );
}

#[tokio::test]
async fn mtu_too_small_for_the_overhead_is_refused() {
    let mut c = cfg();
    c.mtu = 100;
    let err = prepared(&node(), &c).await.err().unwrap().to_string();
    assert!(err.contains("MTU 100") && err.contains("80 bytes"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn the_reconciler_installs_removes_and_corrects_peers() {
    let n = node();
    let (b, _, _) = prepared(&n, &cfg()).await.unwrap();
    let mut r = run(&n, b);
    r.leases
        .send(vec![Added(wg_lease(2)), Added(wg_lease(3))])
        .unwrap();
    r.converged().await;
    assert_eq!(
        peers(&n),
        vec![expect_peer(2), expect_peer(3)]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    let route =
        n.k.all_routes()
            .into_iter()
            .find(|r| r.dst.to_string() == "198.18.0.0/15")
            .expect("network route");
    assert_eq!(route.scope, RT_SCOPE_LINK);

    // A departed node's peer goes.
    r.leases.send(vec![Removed(wg_lease(3))]).unwrap();
    r.converged().await;
    assert_eq!(peers(&n), vec![expect_peer(2)]);

    // A node that comes back with a new key: the old peer is replaced.
    let mut rekeyed = wg_lease(2);
    let new_key = PrivateKey::from_bytes([99; 32]).public_key();
    rekeyed.attrs.backend_data = Some(layout::backend_data(&new_key, 51820));
    r.leases.send(vec![Added(rekeyed.clone())]).unwrap();
    r.converged().await;
    let now = peers(&n);
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].0, new_key);

    // A changed endpoint is applied.
    let mut moved = rekeyed.clone();
    moved.attrs.public_ip = "192.0.2.77".parse().unwrap();
    r.leases.send(vec![Added(moved)]).unwrap();
    r.converged().await;
    assert_eq!(peers(&n)[0].1, Some("192.0.2.77:51820".parse().unwrap()));

    // Allowed IPs changed behind our back (wg set) are corrected; an operator's peer stays.
    let operator = WgKey([0xee; 32]);
    n.wg.operator_set(
        "flannel-wg",
        &DeviceUpdate {
            peers: vec![
                PeerUpdate {
                    public_key: new_key,
                    replace_allowed_ips: true,
                    allowed_ips: vec!["198.18.2.0/25".parse().unwrap()],
                    ..PeerUpdate::default()
                },
                PeerUpdate {
                    public_key: operator,
                    allowed_ips: vec!["203.0.113.0/24".parse().unwrap()],
                    ..PeerUpdate::default()
                },
            ],
            ..DeviceUpdate::default()
        },
    );
    r.converged().await;
    r.converged().await;
    let now = peers(&n);
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(
        now.iter()
            .any(|p| p.0 == new_key && p.2 == vec![IpNet::V4(subnet_of(2))])
    );
    assert!(now.iter().any(|p| p.0 == operator), "operator's peer kept");
    r.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_deleted_device_is_recreated_with_the_same_key_and_every_peer_replayed() {
    let n = node();
    let (b, _, _) = prepared(&n, &cfg()).await.unwrap();
    let public = b.public_key().unwrap();
    let mut r = run(&n, b);
    r.leases
        .send(vec![Added(wg_lease(2)), Added(wg_lease(3))])
        .unwrap();
    r.converged().await;
    let old = n.k.link("flannel-wg").unwrap().index;
    assert!(n.k.remove_link(old));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        r.converged().await;
        if peers(&n).len() == 2 || tokio::time::Instant::now() > deadline {
            break;
        }
    }
    let link = n.k.link("flannel-wg").expect("recreated");
    assert_ne!(link.index, old);
    let dev = n.wg.device("flannel-wg").unwrap();
    assert_eq!(dev.private_key.unwrap().public_key(), public);
    assert_eq!(dev.listen_port, 51820);
    assert_eq!(peers(&n).len(), 2);
    assert!(
        n.k.all_routes()
            .iter()
            .any(|r| r.oif == Some(link.index) && r.dst.to_string() == "198.18.0.0/15")
    );
    r.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn leases_of_other_types_or_without_data_get_no_peer() {
    let n = node();
    let (b, _, _) = prepared(&n, &cfg()).await.unwrap();
    let mut r = run(&n, b);
    let mut broken = wg_lease(4);
    broken.attrs.backend_data = Some("{\"PublicKey\":\"nope\"}".into());
    r.leases
        .send(vec![
            Added(lease_of(5, "vxlan", None)),
            Added(broken),
            Added(wg_lease(2)),
        ])
        .unwrap();
    r.converged().await;
    assert_eq!(peers(&n), vec![expect_peer(2)]);
    r.shutdown.cancel();
}

#[tokio::test]
async fn the_peer_table_reports_only_owned_peers_and_keeps_roaming_endpoints() {
    let n = node();
    let (b, _, _) = prepared(&n, &cfg()).await.unwrap();
    let table = b.peer_table().unwrap();
    let index = n.k.link("flannel-wg").unwrap().index;
    let ours = WgPeer {
        device: index,
        public_key: peer_key(2),
        preshared_key: None,
        endpoint: Some("192.0.2.2:51820".parse().unwrap()),
        allowed_ips: vec![IpNet::V4(subnet_of(2))],
        persistent_keepalive: 25,
    };
    let results = table
        .apply(&[PeerOp::Replace(PeerEntry::Wireguard(ours.clone()))])
        .await;
    assert!(results.iter().all(|r| r.is_ok()));
    // The peer roams (its packets now come from another address).
    n.wg.operator_set(
        "flannel-wg",
        &DeviceUpdate {
            peers: vec![
                PeerUpdate {
                    public_key: peer_key(2),
                    endpoint: Some("198.51.100.9:4000".parse().unwrap()),
                    ..PeerUpdate::default()
                },
                PeerUpdate {
                    public_key: WgKey([1; 32]),
                    allowed_ips: vec!["198.18.9.0/24".parse().unwrap(), "10.0.0.0/8".parse().unwrap()],
                    ..PeerUpdate::default()
                },
                PeerUpdate {
                    public_key: WgKey([3; 32]),
                    ..PeerUpdate::default()
                },
            ],
            ..DeviceUpdate::default()
        },
    );
    let installed = table.installed().await.unwrap();
    assert_eq!(
        installed,
        vec![PeerEntry::Wireguard(ours.clone())],
        "roamed endpoint reported as written; foreign and empty peers hidden"
    );
    // A delete of a peer on a device that is gone counts as done.
    let mut gone = ours;
    gone.device = 999;
    let r = table.apply(&[PeerOp::Delete(PeerEntry::Wireguard(gone))]).await;
    assert!(r[0].as_ref().unwrap_err().not_found);
}

#[tokio::test]
async fn dual_stack_separate_mode_uses_two_devices() {
    let n = node();
    let mut c = cfg();
    c.mode = WireguardMode::Separate;
    let mut conf = netconf(BackendConfig::Wireguard(c.clone()));
    conf.backend_type = "wireguard".into();
    conf.enable_ipv6 = true;
    conf.ipv6_network = Some("2001:db8::/48".parse().unwrap());
    let mut ext = ext_of(&n.k);
    ext.ext_v6_addr = Some("2001:db8:ffff::1".parse().unwrap());
    let paths = WgPaths {
        key_file: n.dir.path().join("k"),
        uapi_dir: n.dir.path().join("u"),
    };
    let mut b = WireguardBackend::new(&c, &ext, &conf, paths)
        .unwrap()
        .with_device(n.wg.clone());
    let attrs = b.prepare(&*n.k).await.unwrap();
    let public = b.public_key().unwrap();
    assert_eq!(
        attrs.backend_v6_data,
        Some(format!("{{\"PublicKey\":\"{public}\",\"Port\":51821}}"))
    );
    assert_eq!(attrs.public_ipv6, ext.ext_v6_addr);
    let mut own = own_lease("wireguard");
    own.enable_ipv6 = true;
    own.ipv6_subnet = Some("2001:db8:0:1::/64".parse().unwrap());
    b.configure(&*n.k, &own).await.unwrap();
    let v6 = n.k.link("flannel-wg-v6").unwrap();
    assert_eq!(n.wg.device("flannel-wg-v6").unwrap().listen_port, 51821);
    assert!(
        n.k.all_addrs()
            .iter()
            .any(|a| a.index == v6.index && a.ip.to_string() == "2001:db8:0:1::" && a.prefix_len == 128)
    );
    let routes: Vec<String> = b
        .own_entries(&own)
        .iter()
        .map(|e| match e {
            Entry::Route(r) => format!("{} {:?}", r.dst, r.oif),
            _ => String::new(),
        })
        .collect();
    assert_eq!(routes.len(), 2);
    assert!(routes.contains(&format!("2001:db8::/48 Some({})", v6.index)));
    // Single-device mode: BackendV6Data carries the one device's port (quirk 16, deviation).
    c.mode = WireguardMode::Auto;
    let paths = WgPaths {
        key_file: n.dir.path().join("k2"),
        uapi_dir: n.dir.path().join("u"),
    };
    let n2 = node();
    let mut b = WireguardBackend::new(&c, &ext, &conf, paths)
        .unwrap()
        .with_device(n2.wg.clone());
    let attrs = b.prepare(&*n2.k).await.unwrap();
    let public = b.public_key().unwrap();
    assert_eq!(
        attrs.backend_v6_data,
        Some(format!("{{\"PublicKey\":\"{public}\",\"Port\":51820}}"))
    );
    assert!(n2.k.link("flannel-wg-v6").is_none());
}
