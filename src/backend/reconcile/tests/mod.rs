//! The reconciler task against the fake kernel with the real vxlan and host-gw backends
//! (tokio's paused clock: timers fire as soon as the task is idle, so no test waits for real).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::backend::hostgw::HostGwBackend;
use crate::backend::testutil::*;
use crate::backend::vxlan::peer_entries;
use crate::backend::{Backend, Entry, ExternalInterface};
use crate::kernel::fake::{FakeCall, FakeKernel};
use crate::kernel::{Fdb, NUD_PERMANENT, NUD_REACHABLE, Neigh, Op, RT_SCOPE_LINK, RTPROT_KERNEL, Route};
use crate::lease::LeaseEvent::{Added, Removed};
use crate::netconf::BackendConfig;

mod ownership;
mod peers;
mod resilience;

struct Running {
    status: watch::Receiver<ReconcileStatus>,
    leases: mpsc::UnboundedSender<Vec<LeaseEvent>>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ReconcileError>>,
}

impl Running {
    fn send(&self, batch: Vec<LeaseEvent>) {
        self.leases.send(batch).unwrap();
    }

    async fn wait(&mut self, what: &str, pred: impl FnMut(&ReconcileStatus) -> bool) -> ReconcileStatus {
        let result = match tokio::time::timeout(Duration::from_secs(120), self.status.wait_for(pred)).await {
            Ok(Ok(s)) => Some(s.clone()),
            Ok(Err(_)) => panic!("reconciler ended while waiting for {what}"),
            Err(_) => None,
        };
        result.unwrap_or_else(|| panic!("timed out waiting for {what}; status {:?}", *self.status.borrow()))
    }

    /// Wait for a converged pass after the current one.
    async fn next_converged(&mut self) -> ReconcileStatus {
        let after = self.status.borrow().passes;
        self.wait("a converged pass", |s| s.passes > after && s.converged)
            .await
    }

    async fn stop(self) -> Result<(), ReconcileError> {
        self.shutdown.cancel();
        self.task.await.unwrap()
    }
}

fn start(k: &Arc<FakeKernel>, backend: Box<dyn Backend>, own: Lease) -> Running {
    let reconciler = Reconciler::new(k.clone(), backend, own);
    let status = reconciler.status();
    let (tx, rx) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(reconciler.run(rx, shutdown.clone()));
    Running {
        status,
        leases: tx,
        shutdown,
        task,
    }
}

/// A vxlan node with the reconciler running; returns the kernel, the device index and eth0.
async fn vxlan_node(direct_routing: bool) -> (Arc<FakeKernel>, u32, ExternalInterface, Running) {
    let (k, ext) = kernel_with_eth0();
    let backend = prepared_vxlan(&k, &ext, direct_routing, Some(OWN_MAC)).await;
    let dev = k.link("flannel.1").unwrap().index;
    let running = start(&k, Box::new(backend), own_lease("vxlan"));
    (k, dev, ext, running)
}

fn triple(dev: u32, ext: &ExternalInterface, n: u16) -> Vec<Entry> {
    peer_entries(
        dev,
        ext.index,
        subnet_of(n).into(),
        peer_mac(n),
        public_ip_of(n).into(),
        false,
    )
}

fn has_entry(k: &FakeKernel, e: &Entry) -> bool {
    match e {
        Entry::Neigh(n) => k.all_neighs().contains(n),
        Entry::Fdb(f) => k.all_fdbs().contains(f),
        Entry::Route(r) => k.all_routes().contains(r),
        Entry::Peer(_) => unreachable!("vxlan has no peer entries"),
    }
}

fn has_all(k: &FakeKernel, entries: &[Entry]) -> bool {
    entries.iter().all(|e| has_entry(k, e))
}

fn has_none(k: &FakeKernel, entries: &[Entry]) -> bool {
    entries.iter().all(|e| !has_entry(k, e))
}

fn route_in(entries: &[Entry]) -> Route {
    entries
        .iter()
        .find_map(|e| {
            if let Entry::Route(r) = e {
                Some(r.clone())
            } else {
                None
            }
        })
        .unwrap()
}

/// Put entries into the kernel as a previous run would have (not counted afterwards).
async fn preinstall(k: &FakeKernel, entries: &[Entry]) {
    let ops: Vec<Op> = entries
        .iter()
        .map(|e| match e {
            Entry::Neigh(n) => Op::ReplaceNeigh(n.clone()),
            Entry::Fdb(f) => Op::ReplaceFdb(f.clone()),
            Entry::Route(r) => Op::ReplaceRoute(r.clone()),
            Entry::Peer(_) => unreachable!("vxlan has no peer entries"),
        })
        .collect();
    assert!(k.apply(&ops).await.iter().all(|r| r.is_ok()));
}

#[tokio::test(start_paused = true)]
async fn leases_added_and_removed() {
    let (k, dev, ext, mut r) = vxlan_node(false).await;
    r.send(vec![Added(vxlan_peer(2)), Added(vxlan_peer(3))]);
    let s = r.next_converged().await;
    assert!(has_all(&k, &triple(dev, &ext, 2)) && has_all(&k, &triple(dev, &ext, 3)));
    assert_eq!((s.leases, s.desired, s.installed, s.repairs), (2, 6, 6, 0));
    assert!(s.synced && s.last_error.is_none());

    r.send(vec![Removed(vxlan_peer(3))]);
    let s = r.next_converged().await;
    assert!(has_all(&k, &triple(dev, &ext, 2)));
    assert!(has_none(&k, &triple(dev, &ext, 3)));
    assert_eq!((s.leases, s.desired, s.installed, s.repairs), (1, 3, 3, 0));
    // Own lease events are never programmed.
    r.send(vec![Added(own_lease("vxlan"))]);
    r.send(vec![Added(vxlan_peer(4))]);
    let s = r.next_converged().await;
    assert_eq!(s.leases, 2);
    r.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn restart_with_everything_in_place_changes_nothing() {
    let (k, dev, ext, mut r) = vxlan_node(false).await;
    let peers: Vec<LeaseEvent> = (2..20).map(|n| Added(vxlan_peer(n))).collect();
    r.send(peers.clone());
    r.next_converged().await;
    r.stop().await.unwrap();
    let mac = k.link("flannel.1").unwrap().mac;

    // A new daemon: no stored MAC, the device is adopted as it is.
    k.reset_counters();
    let backend = prepared_vxlan(&k, &ext, false, None).await;
    let mut r = start(&k, Box::new(backend), own_lease("vxlan"));
    r.send(peers);
    let s = r.next_converged().await;
    assert_eq!(s.installed, 18 * 3);
    assert_eq!(k.link("flannel.1").unwrap().index, dev);
    assert_eq!(k.link("flannel.1").unwrap().mac, mac);
    // The periodic check (with its device check) also changes nothing.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let s = r.next_converged().await;
    assert!(s.passes >= 3);
    let c = k.counters();
    assert_eq!((c.mutations, c.apply_calls), (0, 0), "{c:?}");
    assert_eq!(s.repairs, 0);
    r.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn drift_is_repaired_and_counted() {
    let (k, dev, ext, mut r) = vxlan_node(false).await;
    r.send(vec![Added(vxlan_peer(2)), Added(vxlan_peer(3))]);
    r.next_converged().await;
    let t = triple(dev, &ext, 2);
    for e in &t {
        let removed = match e {
            Entry::Neigh(n) => k.remove_neigh(n),
            Entry::Fdb(f) => k.remove_fdb(f),
            Entry::Route(rt) => k.remove_route(rt),
            Entry::Peer(_) => unreachable!("vxlan has no peer entries"),
        };
        assert!(removed);
        let s = r.next_converged().await;
        assert!(has_entry(&k, e), "{e:?} restored");
        assert!(s.repairs >= 1);
    }
    let s = r.wait("three repairs", |s| s.repairs == 3).await;
    assert!(s.converged);
    // Someone turns our permanent neighbour into a dynamic one: put right too.
    if let Entry::Neigh(n) = &t[0] {
        k.insert_neigh(Neigh {
            state: NUD_REACHABLE,
            ..n.clone()
        });
    }
    r.wait("four repairs", |s| s.repairs == 4 && s.converged).await;
    assert!(has_all(&k, &t));
    r.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn deleted_device_is_recreated_with_the_same_mac_and_everything_replayed() {
    let (k, dev, ext, mut r) = vxlan_node(false).await;
    r.send(vec![Added(vxlan_peer(2)), Added(vxlan_peer(3))]);
    r.next_converged().await;
    assert!(k.remove_link(dev));
    let s = r
        .wait("device recreated", |s| s.repairs >= 7 && s.converged)
        .await;
    let link = k.link("flannel.1").expect("flannel.1 recreated");
    assert_ne!(link.index, dev);
    assert_eq!(link.mac, Some(OWN_MAC));
    assert!(link.up);
    assert!(
        k.all_addrs()
            .iter()
            .any(|a| a.index == link.index && a.ip == ip("198.18.1.0") && a.prefix_len == 32)
    );
    assert!(has_all(&k, &triple(link.index, &ext, 2)) && has_all(&k, &triple(link.index, &ext, 3)));
    assert_eq!(s.installed, 6);
    r.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn stale_entries_go_at_the_first_pass_and_foreign_objects_stay() {
    let (k, ext) = kernel_with_eth0();
    let backend = prepared_vxlan(&k, &ext, false, Some(OWN_MAC)).await;
    let dev = k.link("flannel.1").unwrap().index;
    // Left over from a peer that went away while we were down.
    let stale = triple(dev, &ext, 9);
    preinstall(&k, &stale).await;
    // Objects that are not ours.
    let outside = Route {
        onlink: true,
        ..Route::unicast(net("203.0.113.0/24"), Some(ip("203.0.113.0")), Some(dev))
    };
    let kernel_proto = Route {
        protocol: RTPROT_KERNEL,
        scope: RT_SCOPE_LINK,
        ..Route::unicast(net("198.18.77.0/24"), None, Some(dev))
    };
    let other_table = Route {
        table: 100,
        ..route_in(&triple(dev, &ext, 8))
    };
    let neigh_on_eth0 = Neigh {
        index: ext.index,
        ip: ip("192.0.2.50"),
        mac: Some(peer_mac(50)),
        state: NUD_PERMANENT,
    };
    let dynamic_neigh = Neigh {
        index: dev,
        ip: ip("198.18.66.0"),
        mac: Some(peer_mac(66)),
        state: NUD_REACHABLE,
    };
    let learned_fdb = Fdb {
        index: dev,
        mac: peer_mac(67),
        dst: Some(ip("192.0.2.67")),
        self_flag: true,
        permanent: false,
    };
    k.insert_route(outside.clone());
    k.insert_route(kernel_proto.clone());
    k.insert_route(other_table.clone());
    k.insert_neigh(neigh_on_eth0.clone());
    k.insert_neigh(dynamic_neigh.clone());
    k.insert_fdb(learned_fdb.clone());

    let mut r = start(&k, Box::new(backend), own_lease("vxlan"));
    // Nothing happens before the first lease batch, even at the periodic check.
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert!(has_all(&k, &stale));
    assert_eq!(r.status.borrow().passes, 0);

    r.send(vec![Added(vxlan_peer(2))]);
    let s = r.next_converged().await;
    assert!(has_none(&k, &stale), "the departed peer's entries are gone");
    assert!(has_all(&k, &triple(dev, &ext, 2)));
    assert_eq!(s.repairs, 0, "initial clean-up is not drift");
    tokio::time::sleep(Duration::from_secs(25)).await;
    r.next_converged().await;
    for route in [&outside, &kernel_proto, &other_table] {
        assert!(k.all_routes().contains(route), "{route:?} untouched");
    }
    assert!(k.all_neighs().contains(&neigh_on_eth0) && k.all_neighs().contains(&dynamic_neigh));
    assert!(k.all_fdbs().contains(&learned_fdb));
    r.stop().await.unwrap();
}
