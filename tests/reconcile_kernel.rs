//! The reconciler with the vxlan backend against the real kernel (RtNetlink) in throwaway network
//! namespaces: what it installs is what upstream installs, a restart changes nothing (not a
//! single netlink change), and drift — a deleted route, neighbour, FDB entry or flannel.1 — is
//! repaired. Checked with the kernel's own listings (`ip -j`, `bridge -j`).

mod support;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use flanneld::backend::reconcile::{ReconcileStatus, Reconciler};
use flanneld::backend::vxlan::VxlanBackend;
use flanneld::backend::{Backend, ExternalInterface};
use flanneld::kernel::rtnl::RtNetlink;
use flanneld::kernel::{
    Addr, Fdb, KResult, KernelEvent, Link, MacAddr, Neigh, NetSnapshot, Netlink, Op, Route, VxlanSpec,
};
use flanneld::lease::{Lease, LeaseAttrs, LeaseEvent, vxlan_backend_data};
use flanneld::netconf::{BackendConfig, NetConf, VxlanConfig};
use futures::stream::BoxStream;
use serde_json::Value;
use support::netns::{Netns, veth};
use support::testbed::ROUTE_PROTO;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Counts every call that may change kernel state.
struct Counting {
    inner: RtNetlink,
    mutations: AtomicUsize,
}

impl Counting {
    fn bump(&self, n: usize) {
        self.mutations.fetch_add(n, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl Netlink for Counting {
    async fn links(&self) -> KResult<Vec<Link>> {
        self.inner.links().await
    }
    async fn link_by_name(&self, name: &str) -> KResult<Option<Link>> {
        self.inner.link_by_name(name).await
    }
    async fn addrs(&self) -> KResult<Vec<Addr>> {
        self.inner.addrs().await
    }
    async fn routes(&self) -> KResult<Vec<Route>> {
        self.inner.routes().await
    }
    async fn neighs(&self, index: u32) -> KResult<Vec<Neigh>> {
        self.inner.neighs(index).await
    }
    async fn fdbs(&self, index: u32) -> KResult<Vec<Fdb>> {
        self.inner.fdbs(index).await
    }
    async fn route_get(&self, dst: IpAddr) -> KResult<Vec<Route>> {
        self.inner.route_get(dst).await
    }
    async fn create_vxlan(&self, spec: &VxlanSpec) -> KResult<Link> {
        self.bump(1);
        self.inner.create_vxlan(spec).await
    }
    async fn create_ipip(&self, spec: &flanneld::kernel::IpipSpec) -> KResult<Link> {
        self.bump(1);
        self.inner.create_ipip(spec).await
    }
    async fn delete_link(&self, index: u32) -> KResult<()> {
        self.bump(1);
        self.inner.delete_link(index).await
    }
    async fn set_link_up(&self, index: u32) -> KResult<()> {
        self.bump(1);
        self.inner.set_link_up(index).await
    }
    async fn set_link_mtu(&self, index: u32, mtu: u32) -> KResult<()> {
        self.bump(1);
        self.inner.set_link_mtu(index, mtu).await
    }
    async fn add_addr(&self, addr: &Addr) -> KResult<()> {
        self.bump(1);
        self.inner.add_addr(addr).await
    }
    async fn del_addr(&self, addr: &Addr) -> KResult<()> {
        self.bump(1);
        self.inner.del_addr(addr).await
    }
    async fn apply(&self, ops: &[Op]) -> Vec<KResult<()>> {
        self.bump(ops.len());
        self.inner.apply(ops).await
    }
    async fn subscribe(&self) -> KResult<BoxStream<'static, KernelEvent>> {
        self.inner.subscribe().await
    }
    async fn snapshot(&self) -> KResult<NetSnapshot> {
        self.inner.snapshot().await
    }
}

fn vxlan_available() -> bool {
    let ns = Netns::new("rkprobe");
    let ok = ns
        .try_sh("ip link add probe0 type vxlan id 9 dstport 0 nolearning")
        .is_ok();
    if !ok {
        support::skip(
            &support::current_test(),
            "this kernel cannot create vxlan devices",
        );
    }
    ok
}

/// Two namespaces joined by a veth pair `eth0`<->`eth0` (192.0.2.1/24 on the node, 192.0.2.2/24
/// on the peer); runs `f` with the node's namespace name on a current-thread runtime of a thread
/// inside the node's namespace.
fn on_node_with_peer<F, Fut>(tag: &str, f: F)
where
    F: FnOnce(String) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let node = Netns::new(tag);
    let peer = Netns::new(&format!("{tag}peer"));
    veth(&node, "eth0", &peer, "eth0");
    node.sh("ip addr add 192.0.2.1/24 dev eth0");
    peer.sh("ip addr add 192.0.2.2/24 dev eth0");
    let name = node.name.clone();
    node.run(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f(name))
    });
}

fn json(ns: &str, cmd: &str) -> Value {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", cmd])
        .output()
        .expect("running a command in the namespace");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(if text.trim().is_empty() { "[]" } else { &text })
        .unwrap_or_else(|e| panic!("{cmd}: not JSON ({e}): {text}"))
}

/// Runs `cmd` in the namespace and returns its stdout (panics when it fails).
fn sh(ns: &str, cmd: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", cmd])
        .output()
        .expect("running a command in the namespace");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mac(n: u8) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, 0, n])
}

fn conf() -> (VxlanConfig, NetConf) {
    let cfg = VxlanConfig {
        vni: 1,
        port: 0,
        mtu: 0,
        gbp: false,
        learning: false,
        direct_routing: false,
    };
    let conf = NetConf {
        enable_ipv4: true,
        enable_ipv6: false,
        enable_nftables: false,
        network: Some("198.18.0.0/15".parse().unwrap()),
        subnet_len: 24,
        subnet_min: None,
        subnet_max: None,
        ipv6_network: None,
        ipv6_subnet_len: 64,
        ipv6_subnet_min: None,
        ipv6_subnet_max: None,
        backend_type: "vxlan".into(),
        backend: BackendConfig::Vxlan(cfg.clone()),
    };
    (cfg, conf)
}

fn lease(n: u8, public: &str, data: Option<String>) -> Lease {
    Lease {
        enable_ipv4: true,
        enable_ipv6: false,
        subnet: Some(format!("198.18.{n}.0/24").parse().unwrap()),
        ipv6_subnet: None,
        attrs: LeaseAttrs {
            public_ip: public.parse().unwrap(),
            backend_type: "vxlan".into(),
            backend_data: data,
            ..LeaseAttrs::default()
        },
        expiration: None,
    }
}

fn peers() -> Vec<LeaseEvent> {
    vec![
        LeaseEvent::Added(lease(2, "192.0.2.2", Some(vxlan_backend_data(1, &mac(2))))),
        LeaseEvent::Added(lease(3, "198.51.100.3", Some(vxlan_backend_data(1, &mac(3))))),
    ]
}

async fn wait(
    status: &mut watch::Receiver<ReconcileStatus>,
    what: &str,
    pred: impl FnMut(&ReconcileStatus) -> bool,
) -> ReconcileStatus {
    let result = match tokio::time::timeout(Duration::from_secs(30), status.wait_for(pred)).await {
        Ok(Ok(s)) => Some(s.clone()),
        Ok(Err(_)) => panic!("the reconciler ended while waiting for {what}"),
        Err(_) => None,
    };
    result.unwrap_or_else(|| panic!("timed out waiting for {what}; status {:?}", *status.borrow()))
}

/// The node's external interface: eth0 with 192.0.2.1 as interface and public address.
async fn eth0_ext(nl: &dyn Netlink) -> ExternalInterface {
    let eth0 = nl.link_by_name("eth0").await.unwrap().expect("eth0");
    ExternalInterface {
        name: "eth0".into(),
        index: eth0.index,
        mtu: eth0.mtu,
        iface_addr: Some("192.0.2.1".parse().unwrap()),
        iface_v6_addr: None,
        ext_addr: Some("192.0.2.1".parse().unwrap()),
        ext_v6_addr: None,
    }
}

/// One daemon life: prepare, configure, reconcile the two peers, run `then`, stop.
async fn life<F, Fut>(nl: Arc<Counting>, then: F)
where
    F: FnOnce(watch::Receiver<ReconcileStatus>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (cfg, conf) = conf();
    let ext = eth0_ext(&*nl).await;
    let mut backend = VxlanBackend::new(&cfg, &ext, &conf, None)
        .unwrap()
        .with_sysctl_root(None);
    backend.prepare(&*nl).await.unwrap();
    let own = lease(1, "192.0.2.1", None);
    assert_eq!(backend.configure(&*nl, &own).await.unwrap(), 1450);
    let reconciler = Reconciler::new(nl.clone(), Box::new(backend), own);
    let mut status = reconciler.status();
    let (tx, rx) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(reconciler.run(rx, shutdown.clone()));
    tx.send(peers()).unwrap();
    wait(&mut status, "convergence", |s| s.converged && s.passes >= 1).await;
    then(status).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

fn has_onlink_route(ns: &str, n: u8) -> bool {
    let routes = json(ns, "ip -d -j route show table main");
    routes.as_array().unwrap().iter().any(|r| {
        r["dst"] == format!("198.18.{n}.0/24")
            && r["gateway"] == format!("198.18.{n}.0")
            && r["dev"] == "flannel.1"
            && r["protocol"] == ROUTE_PROTO
            && r["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "onlink"))
    })
}

fn has_neigh_and_fdb(ns: &str, n: u8, public: &str) -> bool {
    let neighs = json(ns, "ip -j neigh show dev flannel.1");
    let neigh = neighs.as_array().unwrap().iter().any(|e| {
        e["dst"] == format!("198.18.{n}.0")
            && e["lladdr"] == mac(n).to_string()
            && e["state"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x == "PERMANENT"))
    });
    let fdbs = json(ns, "bridge -j fdb show dev flannel.1");
    let fdb = fdbs.as_array().unwrap().iter().any(|e| {
        e["mac"] == mac(n).to_string()
            && e["dst"] == public
            && e["state"] == "permanent"
            && e["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "self"))
    });
    neigh && fdb
}

#[test]
fn installs_like_upstream_restarts_without_changes_and_repairs_drift() {
    if !vxlan_available() {
        return;
    }
    on_node_with_peer("rk", |name| async move {
        let nl = Arc::new(Counting {
            inner: RtNetlink::new().unwrap(),
            mutations: AtomicUsize::new(0),
        });
        // First life: everything is created.
        life(nl.clone(), |_| async {}).await;
        for (n, public) in [(2, "192.0.2.2"), (3, "198.51.100.3")] {
            assert!(has_onlink_route(&name, n), "route of peer {n}");
            assert!(
                has_neigh_and_fdb(&name, n, public),
                "neighbour and fdb of peer {n}"
            );
        }
        let link = json(&name, "ip -d -j link show flannel.1");
        let mac_before = link[0]["address"].clone();

        // Second life: a restart changes nothing at all; then drift is repaired.
        nl.mutations.store(0, Ordering::SeqCst);
        let (nl2, name2) = (nl.clone(), name.clone());
        life(nl.clone(), move |mut status| async move {
            assert_eq!(
                nl2.mutations.load(Ordering::SeqCst),
                0,
                "restart changed the kernel"
            );
            sh(&name2, "ip route del 198.18.2.0/24");
            wait(&mut status, "route repair", |s| s.repairs >= 1 && s.converged).await;
            assert!(has_onlink_route(&name2, 2));
            sh(&name2, "ip neigh del 198.18.3.0 dev flannel.1");
            sh(
                &name2,
                "bridge fdb del 02:00:00:00:00:03 dev flannel.1 dst 198.51.100.3 self",
            );
            wait(&mut status, "neighbour and fdb repair", |s| {
                s.repairs >= 3 && s.converged
            })
            .await;
            assert!(has_neigh_and_fdb(&name2, 3, "198.51.100.3"));
            sh(&name2, "ip link del flannel.1");
            wait(&mut status, "device recreation", |s| {
                s.repairs >= 10 && s.converged
            })
            .await;
            assert!(has_onlink_route(&name2, 2) && has_onlink_route(&name2, 3));
            assert!(has_neigh_and_fdb(&name2, 2, "192.0.2.2"));
            let link = json(&name2, "ip -d -j link show flannel.1");
            assert_eq!(link[0]["address"], mac_before, "recreated with the same MAC");
            let addrs = json(&name2, "ip -j -4 addr show dev flannel.1");
            assert_eq!(addrs[0]["addr_info"][0]["local"], "198.18.1.0");
            assert_eq!(addrs[0]["addr_info"][0]["prefixlen"], 32);
        })
        .await;
    });
}

/// A running host-gw reconciler on `nl` (eth0 192.0.2.1) with peer 2 (192.0.2.2) known.
struct HostGwRun {
    status: watch::Receiver<ReconcileStatus>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), flanneld::backend::reconcile::ReconcileError>>,
    _leases: mpsc::UnboundedSender<Vec<LeaseEvent>>,
}

async fn start_hostgw(nl: Arc<dyn Netlink>) -> HostGwRun {
    let ext = eth0_ext(&*nl).await;
    let (_, mut conf) = conf();
    conf.backend = BackendConfig::HostGw;
    conf.backend_type = "host-gw".into();
    let mut backend = flanneld::backend::build(&conf, &ext, None).unwrap();
    backend.prepare(&*nl).await.unwrap();
    let mut own = lease(1, "192.0.2.1", None);
    own.attrs.backend_type = "host-gw".into();
    let reconciler = Reconciler::new(nl.clone(), backend, own);
    let mut status = reconciler.status();
    let (tx, rx) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(reconciler.run(rx, shutdown.clone()));
    let mut peer = lease(2, "192.0.2.2", None);
    peer.attrs.backend_type = "host-gw".into();
    tx.send(vec![LeaseEvent::Added(peer)]).unwrap();
    wait(&mut status, "convergence", |s| s.converged && s.passes >= 1).await;
    HostGwRun {
        status,
        shutdown,
        task,
        _leases: tx,
    }
}

impl HostGwRun {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// The host-gw route to peer 2, as flanneld writes it.
fn has_hostgw_route(ns: &str) -> bool {
    json(ns, "ip -d -j route show table main")
        .as_array()
        .unwrap()
        .iter()
        .any(|r| {
            r["dst"] == "198.18.2.0/24"
                && r["gateway"] == "192.0.2.2"
                && r["dev"] == "eth0"
                && r["protocol"] == ROUTE_PROTO
        })
}

#[test]
fn host_gw_routes_come_back_after_the_nic_restarts() {
    on_node_with_peer("rkhg", |name| async move {
        let nl: Arc<dyn Netlink> = Arc::new(RtNetlink::new().unwrap());
        let mut run = start_hostgw(nl).await;
        assert!(has_hostgw_route(&name));
        // The NIC restarts: the kernel flushes the route without telling anyone about it.
        sh(&name, "ip link set eth0 down && ip link set eth0 up");
        wait(&mut run.status, "the route back", |s| {
            s.repairs >= 1 && s.converged
        })
        .await;
        assert!(has_hostgw_route(&name));
        run.stop().await;
    });
}

#[test]
fn an_operators_route_stays_and_upstreams_leftover_goes() {
    on_node_with_peer("rkown", |name| async move {
        // Before flanneld starts: an operator's static route inside the cluster network through
        // eth0, and upstream host-gw's route for node 2's previous subnet (protocol boot).
        sh(&name, "ip route add 198.18.9.0/24 via 192.0.2.254 dev eth0");
        sh(&name, "ip route add 198.18.10.0/24 dev eth0 proto static");
        sh(
            &name,
            "ip route add 198.18.7.0/24 via 192.0.2.2 dev eth0 proto boot",
        );
        let nl: Arc<dyn Netlink> = Arc::new(RtNetlink::new().unwrap());
        let run = start_hostgw(nl).await;
        let routes = sh(&name, "ip route show root 198.18.0.0/15");
        assert!(
            routes.contains("198.18.9.0/24 via 192.0.2.254 dev eth0"),
            "{routes}"
        );
        assert!(
            routes.contains("198.18.10.0/24 dev eth0 proto static"),
            "{routes}"
        );
        assert!(
            !routes.contains("198.18.7.0/24"),
            "upstream's leftover is cleaned: {routes}"
        );
        assert!(has_hostgw_route(&name), "{routes}");
        run.stop().await;
    });
}

#[test]
fn a_stalled_netlink_socket_is_reopened_and_the_pass_recovers() {
    on_node_with_peer("rkstall", |name| async move {
        let rt = Arc::new(RtNetlink::new().unwrap().with_timeout(Duration::from_millis(300)));
        let nl: Arc<dyn Netlink> = rt.clone();
        let mut run = start_hostgw(nl).await;
        // From now on no request is answered: the next pass times out, the socket is reopened
        // (in this namespace, from whichever thread notices) and the retry repairs the route.
        rt.stall_requests().unwrap();
        sh(&name, "ip route del 198.18.2.0/24");
        let failed = wait(&mut run.status, "a pass that timed out", |s| !s.converged).await;
        assert!(
            failed
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("no answer from the kernel")),
            "{failed:?}"
        );
        wait(&mut run.status, "recovery", |s| s.converged).await;
        assert!(has_hostgw_route(&name));
        run.stop().await;
    });
}
