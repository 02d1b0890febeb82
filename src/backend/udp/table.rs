//! The udp forwarding table: remote subnet -> peer endpoint (PublicIP:Port), the desired state the
//! reconciler applies through `PeerTable` (design.md 4b). The packet workers read an immutable
//! snapshot published with `ArcSwap`: a lookup never locks and never waits on the control plane;
//! `apply` builds a new snapshot and swaps it in. The snapshot also answers "is this datagram's
//! source the PublicIP of a current lease" for the receive validation.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use ipnet::Ipv4Net;

use crate::backend::peers::UdpPeer;
use crate::backend::{PeerEntry, PeerError, PeerKey, PeerOp, PeerTable};

/// One immutable version of the table.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Per prefix length (longest first): network address -> endpoint.
    by_len: Vec<(u8, HashMap<u32, SocketAddrV4>)>,
    /// The endpoints' addresses, sorted.
    peers: Vec<Ipv4Addr>,
}

impl Snapshot {
    fn build(routes: &BTreeMap<Ipv4Net, SocketAddrV4>) -> Snapshot {
        let mut by_len: BTreeMap<u8, HashMap<u32, SocketAddrV4>> = BTreeMap::new();
        for (net, ep) in routes {
            by_len
                .entry(net.prefix_len())
                .or_default()
                .insert(u32::from(net.network()), *ep);
        }
        let mut peers: Vec<Ipv4Addr> = routes.values().map(|e| *e.ip()).collect();
        peers.sort_unstable();
        peers.dedup();
        Snapshot {
            by_len: by_len.into_iter().rev().collect(),
            peers,
        }
    }

    /// The endpoint of the longest prefix holding `dst`.
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<SocketAddrV4> {
        let d = u32::from(dst);
        self.by_len.iter().find_map(|(len, map)| {
            let mask = if *len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(*len))
            };
            map.get(&(d & mask)).copied()
        })
    }

    /// True when `ip` is the PublicIP of a current lease.
    pub fn is_peer(&self, ip: Ipv4Addr) -> bool {
        self.peers.binary_search(&ip).is_ok()
    }

    pub fn len(&self) -> usize {
        self.by_len.iter().map(|(_, m)| m.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The table: the control side's map (behind a mutex only the reconciler takes) and the snapshot
/// the data path reads.
#[derive(Debug, Default)]
pub struct ForwardingTable {
    routes: Mutex<BTreeMap<Ipv4Net, SocketAddrV4>>,
    snapshot: ArcSwap<Snapshot>,
}

impl ForwardingTable {
    pub fn new() -> ForwardingTable {
        ForwardingTable::default()
    }

    /// The current snapshot (cheap; for the packet workers).
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// The current snapshot as an owned `Arc` (a worker keeps it for a whole batch).
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    fn entries(routes: &BTreeMap<Ipv4Net, SocketAddrV4>) -> Vec<PeerEntry> {
        routes
            .iter()
            .map(|(subnet, endpoint)| {
                PeerEntry::Udp(UdpPeer {
                    subnet: *subnet,
                    endpoint: *endpoint,
                })
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl PeerTable for ForwardingTable {
    async fn installed(&self) -> Result<Vec<PeerEntry>, PeerError> {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        Ok(Self::entries(&routes))
    }

    async fn apply(&self, ops: &[PeerOp]) -> Vec<Result<(), PeerError>> {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let results = ops
            .iter()
            .map(|op| match op {
                PeerOp::Replace(PeerEntry::Udp(p)) => {
                    routes.insert(p.subnet.trunc(), p.endpoint);
                    Ok(())
                }
                PeerOp::Delete(PeerEntry::Udp(p)) => match routes.remove(&p.subnet.trunc()) {
                    Some(_) => Ok(()),
                    None => Err(PeerError {
                        not_found: true,
                        ..PeerError::new(op, "no such udp route")
                    }),
                },
                other => Err(PeerError::new(
                    other,
                    "the udp forwarding table holds only udp routes",
                )),
            })
            .collect();
        self.snapshot.store(Arc::new(Snapshot::build(&routes)));
        tracing::debug!(routes = routes.len(), "published the udp forwarding table");
        results
    }
}

/// The key of a udp route (for tests and logs).
pub fn key_of(subnet: Ipv4Net) -> PeerKey {
    PeerKey::Udp(subnet)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(subnet: &str, ep: &str) -> PeerEntry {
        PeerEntry::Udp(UdpPeer {
            subnet: subnet.parse().unwrap(),
            endpoint: ep.parse().unwrap(),
        })
    }

    #[tokio::test]
    async fn apply_publishes_a_snapshot_with_longest_prefix_lookup() {
        let t = ForwardingTable::new();
        assert!(t.load().is_empty());
        let ops = vec![
            PeerOp::Replace(peer("198.18.2.0/24", "192.0.2.2:8285")),
            PeerOp::Replace(peer("198.18.0.0/16", "192.0.2.9:8285")),
            PeerOp::Replace(peer("198.18.3.0/24", "192.0.2.3:8285")),
        ];
        assert!(t.apply(&ops).await.iter().all(|r| r.is_ok()));
        let s = t.load();
        assert_eq!(
            s.lookup("198.18.2.77".parse().unwrap()),
            Some("192.0.2.2:8285".parse().unwrap())
        );
        assert_eq!(
            s.lookup("198.18.9.1".parse().unwrap()),
            Some("192.0.2.9:8285".parse().unwrap())
        );
        assert_eq!(s.lookup("10.0.0.1".parse().unwrap()), None);
        assert!(s.is_peer("192.0.2.3".parse().unwrap()));
        assert!(!s.is_peer("192.0.2.4".parse().unwrap()));
        assert_eq!(t.installed().await.unwrap().len(), 3);

        // A reader holding the old snapshot keeps it; the new one lacks the deleted route.
        let old = t.load_full();
        let r = t
            .apply(&[PeerOp::Delete(peer("198.18.2.0/24", "192.0.2.2:8285"))])
            .await;
        assert!(r[0].is_ok());
        assert!(old.lookup("198.18.2.1".parse().unwrap()).is_some());
        assert_eq!(
            t.load().lookup("198.18.2.1".parse().unwrap()),
            Some("192.0.2.9:8285".parse().unwrap())
        );
        assert!(!t.load().is_peer("192.0.2.2".parse().unwrap()));

        let r = t
            .apply(&[PeerOp::Delete(peer("198.18.2.0/24", "192.0.2.2:8285"))])
            .await;
        assert!(r[0].as_ref().unwrap_err().not_found);
        assert_eq!(
            key_of("198.18.3.0/24".parse().unwrap()),
            peer("198.18.3.0/24", "1.2.3.4:1").key()
        );
    }

    #[test]
    fn a_zero_length_prefix_matches_everything() {
        let mut m = BTreeMap::new();
        m.insert("0.0.0.0/0".parse().unwrap(), "192.0.2.1:8285".parse().unwrap());
        assert!(
            Snapshot::build(&m)
                .lookup("203.0.113.5".parse().unwrap())
                .is_some()
        );
    }
}
