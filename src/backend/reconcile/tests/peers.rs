//! Peer entries (udp table, WireGuard peers, extension commands) go through the same reconciler:
//! a fake `PeerTable` stands in for the data path; the backend's own entries are reconciled too.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::*;
use crate::backend::peers::UdpPeer;
use crate::backend::{BackendError, Ownership, PeerEntry, PeerError, PeerKey, PeerOp, PeerTable, Underlay};
use crate::kernel::Netlink;
use crate::lease::LeaseAttrs;
use futures::StreamExt;
use futures::stream::BoxStream;

/// An in-memory peer table: state, a count of applied ops, injectable failures, and a change feed.
#[derive(Default)]
struct FakePeerTable {
    state: Mutex<BTreeMap<PeerKey, PeerEntry>>,
    applied: Mutex<usize>,
    fail_next: Mutex<usize>,
    changes: Mutex<Option<mpsc::UnboundedReceiver<()>>>,
}

impl FakePeerTable {
    fn entries(&self) -> Vec<PeerEntry> {
        self.state.lock().unwrap().values().cloned().collect()
    }
}

#[async_trait::async_trait]
impl PeerTable for FakePeerTable {
    async fn installed(&self) -> Result<Vec<PeerEntry>, PeerError> {
        Ok(self.entries())
    }

    async fn apply(&self, ops: &[PeerOp]) -> Vec<Result<(), PeerError>> {
        ops.iter()
            .map(|op| {
                let mut fail = self.fail_next.lock().unwrap();
                if *fail > 0 {
                    *fail -= 1;
                    return Err(PeerError::new(op, "injected failure"));
                }
                *self.applied.lock().unwrap() += 1;
                let mut state = self.state.lock().unwrap();
                match op {
                    PeerOp::Replace(e) => {
                        state.insert(e.key(), e.clone());
                    }
                    PeerOp::Delete(e) => {
                        if state.remove(&e.key()).is_none() {
                            return Err(PeerError {
                                not_found: true,
                                ..PeerError::new(op, "no such peer")
                            });
                        }
                    }
                }
                Ok(())
            })
            .collect()
    }

    fn changes(&self) -> Option<BoxStream<'static, ()>> {
        let rx = self.changes.lock().unwrap().take()?;
        Some(tokio_stream_of(rx))
    }
}

fn tokio_stream_of(mut rx: mpsc::UnboundedReceiver<()>) -> BoxStream<'static, ()> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// A backend whose per-peer state is a udp-style forwarding table, plus one own route.
struct TableBackend {
    table: Arc<FakePeerTable>,
    ext: ExternalInterface,
}

#[async_trait::async_trait]
impl Backend for TableBackend {
    fn kind(&self) -> &'static str {
        "udp"
    }
    async fn prepare(&mut self, _k: &dyn Netlink) -> Result<LeaseAttrs, BackendError> {
        Ok(LeaseAttrs::default())
    }
    async fn configure(&mut self, _k: &dyn Netlink, _own: &Lease) -> Result<u32, BackendError> {
        Ok(1472)
    }
    fn entries_for(&self, remote: &Lease, _underlay: &Underlay) -> Vec<Entry> {
        let Some(subnet) = remote.subnet else {
            return Vec::new();
        };
        vec![Entry::Peer(PeerEntry::Udp(UdpPeer {
            subnet,
            endpoint: std::net::SocketAddrV4::new(remote.attrs.public_ip, 8285),
        }))]
    }
    fn own_entries(&self, _own: &Lease) -> Vec<Entry> {
        vec![Entry::Route(network_route(self.ext.index))]
    }
    fn ownership(&self, _own: &Lease) -> Ownership {
        Ownership {
            networks: vec![net("198.18.0.0/15")],
            route_oifs: vec![self.ext.index],
            ..Ownership::default()
        }
    }
    fn peer_table(&self) -> Option<Arc<dyn PeerTable>> {
        Some(self.table.clone())
    }
}

fn network_route(oif: u32) -> Route {
    Route::unicast(net("198.18.0.0/15"), None, Some(oif))
}

fn udp_entry(n: u16) -> PeerEntry {
    PeerEntry::Udp(UdpPeer {
        subnet: subnet_of(n),
        endpoint: std::net::SocketAddrV4::new(public_ip_of(n), 8285),
    })
}

fn table_node() -> (
    Arc<FakeKernel>,
    Arc<FakePeerTable>,
    mpsc::UnboundedSender<()>,
    u32,
    Running,
) {
    let (k, ext) = kernel_with_eth0();
    let (tx, rx) = mpsc::unbounded_channel();
    let table = Arc::new(FakePeerTable {
        changes: Mutex::new(Some(rx)),
        ..FakePeerTable::default()
    });
    let eth0 = ext.index;
    let backend = TableBackend {
        table: table.clone(),
        ext,
    };
    let running = start(&k, Box::new(backend), own_lease("udp"));
    (k, table, tx, eth0, running)
}

#[tokio::test(start_paused = true)]
async fn peer_entries_follow_the_leases_and_own_entries_are_installed() {
    let (k, table, _tx, eth0, mut r) = table_node();
    r.send(vec![Added(lease_of(2, "", None)), Added(lease_of(3, "", None))]);
    let s = r.next_converged().await;
    assert_eq!(table.entries(), vec![udp_entry(2), udp_entry(3)]);
    assert!(k.all_routes().contains(&network_route(eth0)));
    assert_eq!(s.desired, 3);
    assert_eq!(s.installed, 3);

    // A changed endpoint is replaced in place; a removed lease's entry goes.
    let mut moved = lease_of(2, "", None);
    moved.attrs.public_ip = "192.0.2.22".parse().unwrap();
    r.send(vec![Added(moved), Removed(lease_of(3, "", None))]);
    r.next_converged().await;
    let want = PeerEntry::Udp(UdpPeer {
        subnet: subnet_of(2),
        endpoint: "192.0.2.22:8285".parse().unwrap(),
    });
    assert_eq!(table.entries(), vec![want]);
    r.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_peer_changed_behind_our_back_is_put_right_at_once() {
    let (_k, table, tx, _eth0, mut r) = table_node();
    r.send(vec![Added(lease_of(2, "", None))]);
    r.next_converged().await;
    // Someone edits the table (e.g. `wg set ... remove`) and the table reports it.
    table.state.lock().unwrap().clear();
    tx.send(()).unwrap();
    let s = r.wait("peer restored", |s| s.repairs >= 1 && s.converged).await;
    assert_eq!(table.entries(), vec![udp_entry(2)]);
    assert_eq!(s.installed, 2);
    // A stale entry the table reports is removed.
    table
        .state
        .lock()
        .unwrap()
        .insert(udp_entry(9).key(), udp_entry(9));
    tx.send(()).unwrap();
    r.wait("stale peer removed", |s| s.repairs >= 2 && s.converged)
        .await;
    assert_eq!(table.entries(), vec![udp_entry(2)]);
    r.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn failed_peer_ops_are_retried() {
    let (_k, table, _tx, _eth0, mut r) = table_node();
    *table.fail_next.lock().unwrap() = 1;
    r.send(vec![Added(lease_of(2, "", None))]);
    let failed = r.wait("a failed pass", |s| s.passes >= 1).await;
    assert!(!failed.converged);
    assert_eq!(failed.failed_ops, 1);
    assert!(
        failed
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("198.18.2.0/24") && e.contains("injected failure")),
        "{failed:?}"
    );
    r.wait("retried", |s| s.converged).await;
    assert_eq!(table.entries(), vec![udp_entry(2)]);
    assert!(*table.applied.lock().unwrap() >= 1);
    r.stop().await.unwrap();
}
