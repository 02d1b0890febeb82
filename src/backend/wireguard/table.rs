//! The `PeerTable` of the wireguard backend: WireGuard peers as desired state of the one
//! reconciler, installed on the backend's devices through the `WireguardDevice` seam, and read
//! back from them ("installed" is what the device reports, as for routes).
//!
//! Ownership: a peer is ours when it has allowed IPs and all of them lie inside the cluster
//! networks; any other peer (an operator's) is never reported, so never touched. A peer whose
//! allowed IPs were emptied is no longer reported either: if a lease still wants it, the next
//! pass re-adds it in full.
//!
//! Roaming: WireGuard moves a peer's endpoint to wherever its authenticated packets come from
//! (NAT rebinding). The table remembers the endpoint it wrote per peer and reports that one while
//! the device shows another, so roaming is not drift to be undone every pass; a lease whose
//! endpoint changes is still applied.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use ipnet::IpNet;

use crate::backend::peers::{PeerEntry, PeerError, PeerOp, PeerTable, WgKey, WgPeer};

use super::device::{DeviceInfo, DeviceUpdate, PeerInfo, PeerUpdate, WireguardDevice};
use super::metrics::WgMetrics;

/// How often devices without change notifications (the kernel module) are read to notice a
/// `wg set` behind our back.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The backend's devices as the table knows them: name -> interface index (0 while missing).
pub type DeviceSlots = Arc<RwLock<Vec<(String, u32)>>>;

/// Whether a device peer is ours: it has allowed IPs and all of them lie inside `networks`.
pub fn is_owned_peer(networks: &[IpNet], peer: &PeerInfo) -> bool {
    !peer.allowed_ips.is_empty()
        && peer
            .allowed_ips
            .iter()
            .all(|ip| networks.iter().any(|n| n.contains(ip)))
}

/// The update that makes a device peer exactly `peer` (replacing allowed IPs and PSK in place,
/// so an established session survives a change).
pub fn replace_update(peer: &WgPeer) -> PeerUpdate {
    PeerUpdate {
        public_key: peer.public_key,
        remove: false,
        update_only: false,
        preshared_key: Some(peer.preshared_key),
        endpoint: peer.endpoint,
        persistent_keepalive: Some(peer.persistent_keepalive),
        replace_allowed_ips: true,
        allowed_ips: peer.allowed_ips.clone(),
    }
}

pub fn remove_update(key: WgKey) -> PeerUpdate {
    PeerUpdate {
        public_key: key,
        remove: true,
        ..PeerUpdate::default()
    }
}

pub struct WgPeerTable {
    device: Arc<dyn WireguardDevice>,
    slots: DeviceSlots,
    networks: Vec<IpNet>,
    /// Endpoint last written per (device index, key).
    written: Mutex<HashMap<(u32, WgKey), Option<SocketAddr>>>,
    metrics: Arc<WgMetrics>,
}

impl WgPeerTable {
    pub fn new(
        device: Arc<dyn WireguardDevice>,
        slots: DeviceSlots,
        networks: Vec<IpNet>,
        metrics: Arc<WgMetrics>,
    ) -> WgPeerTable {
        WgPeerTable {
            device,
            slots,
            networks,
            written: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    fn slots(&self) -> Vec<(String, u32)> {
        self.slots.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The owned peers of one device as reconciler entries.
    fn owned(&self, index: u32, info: &DeviceInfo) -> Vec<WgPeer> {
        let written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        info.peers
            .iter()
            .filter(|p| is_owned_peer(&self.networks, p))
            .map(|p| {
                let mut allowed_ips: Vec<IpNet> = p.allowed_ips.iter().map(|n| n.trunc()).collect();
                allowed_ips.sort();
                allowed_ips.dedup();
                let endpoint = match written.get(&(index, p.public_key)) {
                    Some(w) if *w != p.endpoint => *w,
                    _ => p.endpoint,
                };
                WgPeer {
                    device: index,
                    public_key: p.public_key,
                    preshared_key: p.preshared_key,
                    endpoint,
                    allowed_ips,
                    persistent_keepalive: p.persistent_keepalive,
                }
            })
            .collect()
    }

    /// Apply the ops of one device in one update; on failure, one update per op so that each
    /// result names its own error.
    async fn apply_device(
        &self,
        name: &str,
        ops: &[(usize, &PeerOp, &WgPeer)],
        results: &mut [Result<(), PeerError>],
    ) {
        let update_for = |op: &PeerOp, peer: &WgPeer| match op {
            PeerOp::Replace(_) => replace_update(peer),
            PeerOp::Delete(_) => remove_update(peer.public_key),
        };
        let all = DeviceUpdate {
            peers: ops.iter().map(|(_, op, p)| update_for(op, p)).collect(),
            ..DeviceUpdate::default()
        };
        if self.device.set(name, &all).await.is_ok() {
            for (i, op, p) in ops {
                self.note_written(op, p);
                results[*i] = Ok(());
            }
            return;
        }
        for (i, op, p) in ops {
            let one = DeviceUpdate {
                peers: vec![update_for(op, p)],
                ..DeviceUpdate::default()
            };
            results[*i] = match self.device.set(name, &one).await {
                Ok(()) => {
                    self.note_written(op, p);
                    Ok(())
                }
                Err(e) => Err(PeerError::new(op, e)),
            };
        }
    }

    fn note_written(&self, op: &PeerOp, peer: &WgPeer) {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        match op {
            PeerOp::Replace(_) => {
                written.insert((peer.device, peer.public_key), peer.endpoint);
            }
            PeerOp::Delete(_) => {
                written.remove(&(peer.device, peer.public_key));
            }
        }
    }
}

#[async_trait::async_trait]
impl PeerTable for WgPeerTable {
    async fn installed(&self) -> Result<Vec<PeerEntry>, PeerError> {
        let mut out = Vec::new();
        let mut stats = Vec::new();
        for (name, index) in self.slots().into_iter().filter(|(_, i)| *i > 0) {
            let info = self
                .device
                .get(&name)
                .await
                .map_err(|e| PeerError::new(format!("reading WireGuard device {name}"), e))?;
            // A missing device has no peers; the device check recreates it.
            let Some(info) = info else { continue };
            stats.extend(
                info.peers
                    .iter()
                    .filter(|p| is_owned_peer(&self.networks, p))
                    .map(|p| (name.clone(), p.clone())),
            );
            out.extend(self.owned(index, &info).into_iter().map(PeerEntry::Wireguard));
        }
        self.metrics.set_peers(stats);
        Ok(out)
    }

    async fn apply(&self, ops: &[PeerOp]) -> Vec<Result<(), PeerError>> {
        let slots = self.slots();
        let mut results: Vec<Result<(), PeerError>> = ops
            .iter()
            .map(|op| Err(PeerError::new(op, "not a WireGuard peer of this backend")))
            .collect();
        let mut by_device: BTreeMap<String, Vec<(usize, &PeerOp, &WgPeer)>> = BTreeMap::new();
        for (i, op) in ops.iter().enumerate() {
            let PeerEntry::Wireguard(peer) = op.entry() else {
                continue;
            };
            match slots.iter().find(|(_, idx)| *idx == peer.device && *idx > 0) {
                Some((name, _)) => by_device.entry(name.clone()).or_default().push((i, op, peer)),
                None => {
                    let mut err = PeerError::new(
                        op,
                        format!("WireGuard device #{} does not exist (any more)", peer.device),
                    );
                    // Deleting a peer of a device that is gone: nothing left to delete.
                    err.not_found = matches!(op, PeerOp::Delete(_));
                    results[i] = Err(err);
                }
            }
        }
        for (name, ops) in by_device {
            self.apply_device(&name, &ops, &mut results).await;
        }
        results
    }

    fn changes(&self) -> Option<BoxStream<'static, ()>> {
        if let Some(native) = self.device.changes() {
            return Some(native);
        }
        // Poll: one pass when the owned peers' configuration (endpoints and counters aside)
        // changed since the last look.
        let device = self.device.clone();
        let slots = self.slots.clone();
        let networks = self.networks.clone();
        let state = (device, slots, networks, None::<u64>);
        let stream = futures::stream::unfold(state, |(device, slots, networks, mut last)| async move {
            loop {
                tokio::time::sleep(POLL_INTERVAL).await;
                let names: Vec<String> = slots
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|(n, _)| n.clone())
                    .collect();
                let mut h = std::collections::hash_map::DefaultHasher::new();
                for name in &names {
                    name.hash(&mut h);
                    match device.get(name).await {
                        Ok(Some(info)) => {
                            let mut peers: Vec<_> = info
                                .peers
                                .iter()
                                .filter(|p| is_owned_peer(&networks, p))
                                .map(|p| {
                                    (
                                        p.public_key,
                                        p.preshared_key,
                                        p.persistent_keepalive,
                                        p.allowed_ips.clone(),
                                    )
                                })
                                .collect();
                            peers.sort();
                            peers.hash(&mut h);
                            info.listen_port.hash(&mut h);
                        }
                        Ok(None) => 0u8.hash(&mut h),
                        Err(_) => 1u8.hash(&mut h),
                    }
                }
                let now = h.finish();
                let changed = last.is_some_and(|l| l != now);
                last = Some(now);
                if changed {
                    return Some(((), (device, slots, networks, last)));
                }
            }
        });
        Some(stream.boxed())
    }
}
