//! The reconciler's loop state and one pass: lease map upkeep, kernel event triage, device check,
//! read, plan, apply, and the bookkeeping of failures, repairs and backoff.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use ipnet::{Ipv4Net, Ipv6Net};
use tokio::sync::watch;
use tokio::time::Instant;

use super::installed::{self, Trigger, classify, underlay_from};
use super::plan::{self, DesiredSet, EntryKey, Plan, is_foreign_route_in_network, is_owned};
use super::{ReconcileStatus, ReconcileTiming, Reconciler};
use crate::backend::{Backend, Entry, Ownership, PeerTable, Underlay};
use crate::kernel::{KernelError, KernelEvent, Netlink, Route};
use crate::lease::{Lease, LeaseEvent};

type LeaseId = (Option<Ipv4Net>, Option<Ipv6Net>);

/// The same ops, all applied fine, needed again within this time without a lease change: someone
/// (or the kernel's own view of our entries) keeps undoing them.
const FIGHT_WINDOW: Duration = Duration::from_secs(1);
/// After this many such repeats in a row kernel-event passes wait for the backoff timer.
const FIGHT_REPEATS: u32 = 2;

/// The reconciler's loop state.
pub(super) struct Worker {
    netlink: Arc<dyn Netlink>,
    backend: Box<dyn Backend>,
    /// Where the backend's peer entries live (udp table, WireGuard device, extension record).
    pub(super) peer_table: Option<Arc<dyn PeerTable>>,
    own: Lease,
    timing: ReconcileTiming,
    status_tx: watch::Sender<ReconcileStatus>,
    status: ReconcileStatus,
    leases: BTreeMap<LeaseId, Lease>,
    pub(super) synced: bool,
    /// Desired entries of the last pass, by key (to classify kernel events).
    desired: BTreeMap<EntryKey, Entry>,
    ownership: Ownership,
    device_names: Vec<String>,
    pub(super) need_pass: bool,
    pub(super) need_devices: bool,
    /// The lease map changed since the last pass.
    lease_dirty: bool,
    /// A pass converged and no lease changed since: ops needed now are drift repairs.
    baseline: bool,
    backoff: Duration,
    pub(super) retry_at: Option<Instant>,
    /// Kernel-event passes wait for `retry_at` (set while fighting over entries).
    hold: bool,
    /// The timer just ended a hold: the next pass continues the fight count whatever the time.
    released: bool,
    /// Fingerprint and end time of the last pass that applied ops, and how often in a row the
    /// same ops were needed again quickly.
    last_ops: Option<(u64, Instant)>,
    repeats: u32,
    /// Op text -> error text of ops failing now (repeats are logged at debug only).
    failing_ops: HashMap<String, String>,
    /// Errors of other steps (device check, reading) of the last pass.
    failing_steps: HashSet<String>,
    /// Warnings already given (conflicting or unowned desired entries, fights).
    warned: HashSet<String>,
}

impl Worker {
    pub(super) fn new(r: Reconciler) -> Worker {
        let ownership = r.backend.ownership(&r.own);
        let device_names = r.backend.device_names();
        let peer_table = r.backend.peer_table();
        Worker {
            netlink: r.netlink,
            backend: r.backend,
            peer_table,
            own: r.own,
            timing: r.timing,
            status_tx: r.status,
            status: ReconcileStatus::default(),
            leases: BTreeMap::new(),
            synced: false,
            desired: BTreeMap::new(),
            ownership,
            device_names,
            need_pass: false,
            need_devices: false,
            lease_dirty: false,
            baseline: false,
            backoff: r.timing.backoff_min,
            retry_at: None,
            hold: false,
            released: false,
            last_ops: None,
            repeats: 0,
            failing_ops: HashMap::new(),
            failing_steps: HashSet::new(),
            warned: HashSet::new(),
        }
    }

    /// Whether a pass should run now.
    pub(super) fn ready(&self) -> bool {
        self.synced && self.need_pass && (!self.hold || self.lease_dirty)
    }

    /// The retry/backoff timer fired.
    pub(super) fn on_timer(&mut self) {
        self.retry_at = None;
        self.released = std::mem::take(&mut self.hold);
        self.need_pass = true;
        self.need_devices = true;
    }

    pub(super) async fn subscribe(&self) -> Option<BoxStream<'static, KernelEvent>> {
        match self.netlink.subscribe().await {
            Ok(stream) => Some(stream),
            Err(e) => {
                tracing::warn!(error = %e, "subscribing to kernel events failed; relying on the periodic check");
                None
            }
        }
    }

    /// The kernel event stream ended: resubscribe on the next tick, check everything now.
    pub(super) fn events_lost(&mut self, events: &mut Option<BoxStream<'static, KernelEvent>>) {
        tracing::warn!("the kernel event stream ended; resubscribing at the next periodic check");
        *events = None;
        self.need_pass = true;
        self.need_devices = true;
    }

    pub(super) fn on_leases(&mut self, batch: Vec<LeaseEvent>) {
        let mut changed = false;
        for event in batch {
            match event {
                LeaseEvent::Added(lease) => {
                    if lease.subnets() == self.own.subnets() {
                        continue;
                    }
                    // A renewal only moves the expiration: no pass for that.
                    let unchanged = self.leases.get(&lease.subnets()).is_some_and(|old| {
                        Lease {
                            expiration: old.expiration,
                            ..lease.clone()
                        } == *old
                    });
                    if !unchanged {
                        tracing::debug!(subnet = %lease.key(), public_ip = %lease.attrs.public_ip, "lease added");
                        self.leases.insert(lease.subnets(), lease);
                        changed = true;
                    }
                }
                LeaseEvent::Removed(lease) => {
                    if self.leases.remove(&lease.subnets()).is_some() {
                        tracing::debug!(subnet = %lease.key(), "lease removed");
                        changed = true;
                    }
                }
            }
        }
        if !self.synced {
            self.synced = true;
            self.need_pass = true;
            self.lease_dirty = true;
        }
        if changed {
            self.need_pass = true;
            self.lease_dirty = true;
            self.baseline = false;
        }
    }

    pub(super) fn on_kernel_event(&mut self, event: &KernelEvent) {
        match classify(event, &self.ownership, &self.device_names, &self.desired) {
            Trigger::Nothing => {}
            Trigger::Pass => {
                tracing::debug!(?event, "kernel event asks for a pass");
                self.need_pass = true;
            }
            Trigger::Devices => {
                tracing::debug!(?event, "kernel event asks for a device check");
                self.need_pass = true;
                self.need_devices = true;
            }
        }
    }

    fn record_error(&mut self, errors: &mut Vec<String>, text: String) {
        if self.failing_steps.contains(&text) {
            tracing::debug!(error = %text, "reconcile step still failing");
        } else {
            tracing::warn!(error = %text, "reconcile step failed; will retry");
        }
        errors.push(text);
    }

    /// One pass: device check when asked, read, plan, apply, account.
    pub(super) async fn pass(&mut self) {
        self.need_pass = false;
        let check_devices = std::mem::take(&mut self.need_devices);
        let lease_dirty = std::mem::take(&mut self.lease_dirty);
        self.status.passes += 1;
        let repairing = self.baseline;
        let mut errors: Vec<String> = Vec::new();

        if check_devices {
            match self.backend.ensure_devices(&*self.netlink, &self.own).await {
                Ok(true) => {
                    tracing::info!(devices = ?self.backend.device_names(), "recreated backend device; replaying entries");
                    if repairing {
                        self.status.repairs += 1;
                    }
                }
                Ok(false) => {}
                Err(e) => self.record_error(&mut errors, format!("checking backend devices: {e}")),
            }
            self.device_names = self.backend.device_names();
        }
        self.ownership = self.backend.ownership(&self.own);
        self.ownership.peer_gateways = self.peer_gateways();

        let (installed, underlay, routes) = match self.read().await {
            Ok(read) => read,
            Err(e) => {
                self.record_error(&mut errors, e);
                self.finish(errors, 0, false);
                return;
            }
        };
        let mut desired: Vec<Entry> = self.backend.own_entries(&self.own);
        desired.extend(
            self.leases
                .values()
                .flat_map(|l| self.backend.entries_for(l, &underlay)),
        );
        // Keyed once per pass: for the conflict warnings, the plan, and event triage.
        let desired_set = DesiredSet::new(&desired);
        self.check_desired(&desired, &desired_set.conflicts);
        self.note_foreign_routes(&routes, &desired_set);
        drop(routes);
        let plan = plan::plan_desired(&desired_set, &installed);
        self.desired = desired_set
            .by_key
            .into_iter()
            .map(|(k, e)| (k, e.clone()))
            .collect();
        self.status.desired = self.desired.len();
        self.status.leases = self.leases.len();

        self.status.installed = installed.len();
        let failed_ops = if plan.is_empty() {
            0
        } else {
            self.apply(&plan, &installed, repairing).await
        };
        let fighting = self.note_repeats(&plan, failed_ops == 0 && errors.is_empty() && !lease_dirty);
        let bulk = plan.len() >= crate::memory::BULK_OPS;
        drop(plan);
        drop(desired);
        drop(installed);
        self.finish(errors, failed_ops, fighting);
        if bulk {
            crate::memory::release_free_memory();
        }
    }

    /// The public IPs of the current leases (see `Ownership::peer_gateways`).
    fn peer_gateways(&self) -> Vec<std::net::IpAddr> {
        let mut ips: Vec<std::net::IpAddr> = self
            .leases
            .values()
            .flat_map(|l| {
                let v4 = Some(l.attrs.public_ip)
                    .filter(|ip| !ip.is_unspecified())
                    .map(std::net::IpAddr::V4);
                v4.into_iter()
                    .chain(l.attrs.public_ipv6.map(std::net::IpAddr::V6))
            })
            .collect();
        ips.sort_unstable();
        ips.dedup();
        ips
    }

    /// Owned kernel entries, peer entries, the underlay, and the route dump, read once per pass.
    async fn read(&self) -> Result<(Vec<Entry>, Underlay, Vec<Route>), String> {
        let routes = self
            .netlink
            .routes()
            .await
            .map_err(|e| format!("reading installed entries: {e}"))?;
        let mut installed = installed::read_installed(&*self.netlink, &self.ownership, &routes)
            .await
            .map_err(|e| format!("reading installed entries: {e}"))?;
        if let Some(table) = &self.peer_table {
            let peers = table
                .installed()
                .await
                .map_err(|e| format!("reading installed peers: {e}"))?;
            installed.extend(peers.into_iter().map(Entry::Peer));
        }
        let underlay = underlay_from(&routes, &self.ownership);
        Ok((installed, underlay, routes))
    }

    /// Name (once each) protocol-boot routes inside the cluster network that are not ours and that
    /// no lease wants: an operator's, or upstream's leftover for a node that is gone.
    fn note_foreign_routes(&mut self, routes: &[Route], desired: &DesiredSet<'_>) {
        for r in routes
            .iter()
            .filter(|r| is_foreign_route_in_network(&self.ownership, r))
        {
            if desired.by_key.contains_key(&EntryKey::Route(r.table, r.dst)) {
                continue; // a lease wants this destination: the plan adopts the route
            }
            if self.warned.insert(format!("foreign {r:?}")) {
                let via = r.gateway.map(|g| g.to_string()).unwrap_or_default();
                tracing::warn!(route = %r.dst, via = %via,
                    "a route inside the cluster network that no lease explains and that flanneld did not write is left in place; delete it if it is stale");
            }
        }
    }

    /// Apply the plan (kernel ops in one netlink call, then peer ops in one table call); log and
    /// count each result. Returns how many failed.
    async fn apply(&mut self, plan: &Plan, installed: &[Entry], repairing: bool) -> usize {
        let had: HashSet<EntryKey> = installed.iter().map(EntryKey::of).collect();
        let mut installed_count = installed.len();
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(plan.len());
        if !plan.kernel.is_empty() {
            let results = self.netlink.apply(&plan.kernel).await;
            for (i, op) in plan.kernel.iter().enumerate() {
                let text = op.to_string();
                let result = results.get(i).cloned().unwrap_or_else(|| {
                    Err(KernelError::Failed {
                        op: "applying".into(),
                        object: text.clone(),
                        message: "the kernel seam returned no result".into(),
                        errno: None,
                    })
                });
                let delete = plan::is_delete(op);
                outcomes.push(Outcome {
                    key: EntryKey::of(&plan::op_entry(op)),
                    delete,
                    error: match result {
                        Ok(()) => None,
                        Err(e) if delete && e.is_not_found() => None,
                        Err(e) => Some(e.to_string()),
                    },
                    text,
                });
            }
        }
        if !plan.peers.is_empty() {
            let results = match &self.peer_table {
                Some(table) => table.apply(&plan.peers).await,
                None => Vec::new(),
            };
            for (i, op) in plan.peers.iter().enumerate() {
                let delete = matches!(op, crate::backend::PeerOp::Delete(_));
                outcomes.push(Outcome {
                    key: EntryKey::Peer(op.entry().key()),
                    delete,
                    error: match results.get(i) {
                        Some(Ok(())) => None,
                        Some(Err(e)) if delete && e.not_found => None,
                        Some(Err(e)) => Some(e.to_string()),
                        None => Some("the backend has no peer table for this entry".to_string()),
                    },
                    text: op.to_string(),
                });
            }
        }
        let (mut replaced, mut deleted, mut failed) = (0usize, 0usize, 0usize);
        for o in outcomes {
            if let Some(err) = o.error {
                failed += 1;
                if self.failing_ops.get(&o.text) == Some(&err) {
                    tracing::debug!(op = %o.text, error = %err, "kernel op still failing");
                } else {
                    tracing::warn!(op = %o.text, error = %err, "kernel op failed; will retry");
                }
                self.status.last_error = Some(format!("{}: {err}", o.text));
                self.failing_ops.insert(o.text, err);
                continue;
            }
            self.failing_ops.remove(&o.text);
            if o.delete {
                deleted += 1;
                installed_count = installed_count.saturating_sub(1);
            } else {
                replaced += 1;
                if !had.contains(&o.key) {
                    installed_count += 1;
                }
            }
            if repairing {
                self.status.repairs += 1;
                tracing::info!(op = %o.text, "repaired drift");
            } else if o.delete {
                tracing::info!(op = %o.text, "removed an entry no lease wants");
            } else {
                tracing::debug!(op = %o.text, "applied");
            }
        }
        tracing::info!(
            replaced,
            deleted,
            failed,
            leases = self.leases.len(),
            "reconciled"
        );
        // Forget failures of ops this pass no longer needed (texts are only built when some are kept).
        if !self.failing_ops.is_empty() {
            let planned: HashSet<String> = plan
                .kernel
                .iter()
                .map(|o| o.to_string())
                .chain(plan.peers.iter().map(|o| o.to_string()))
                .collect();
            self.failing_ops.retain(|k, _| planned.contains(k));
        }
        self.status.installed = installed_count;
        failed
    }

    /// Track the same ops being needed again and again; true when kernel-event passes should
    /// slow down (a fight with another program, or the kernel reporting our entries differently
    /// from how we write them).
    fn note_repeats(&mut self, ops: &Plan, clean: bool) -> bool {
        let released = std::mem::take(&mut self.released);
        if ops.is_empty() {
            self.last_ops = None;
            self.repeats = 0;
            return false;
        }
        let mut h = DefaultHasher::new();
        ops.hash(&mut h);
        let fingerprint = h.finish();
        let now = Instant::now();
        let again = self
            .last_ops
            .is_some_and(|(f, at)| f == fingerprint && (released || now.duration_since(at) < FIGHT_WINDOW));
        self.repeats = if clean && again { self.repeats + 1 } else { 0 };
        self.last_ops = Some((fingerprint, now));
        if self.repeats < FIGHT_REPEATS {
            return false;
        }
        if self.warned.insert(format!("fight {fingerprint}")) {
            let first = (ops.kernel.first().map(|o| o.to_string()))
                .or_else(|| ops.peers.first().map(|o| o.to_string()))
                .unwrap_or_default();
            tracing::warn!(ops = ops.len(), first = %first,
                "the same kernel entries keep needing repair; slowing down repairs of them");
        }
        true
    }

    /// Warn (once each) about desired entries the reconciler could never see as installed, and
    /// about two leases wanting different objects under one key.
    fn check_desired(&mut self, desired: &[Entry], conflicts: &[&Entry]) {
        for e in desired.iter().filter(|e| !is_owned(&self.ownership, e)) {
            if self.warned.insert(format!("unowned {e:?}")) {
                tracing::error!(entry = ?e, "backend wants an entry outside its ownership; it is reapplied on every pass");
            }
        }
        for e in conflicts {
            if self.warned.insert(format!("conflict {e:?}")) {
                tracing::warn!(entry = ?e, "two leases want different kernel objects under one key; the first lease wins");
            }
        }
    }

    fn finish(&mut self, errors: Vec<String>, failed_ops: usize, fighting: bool) {
        self.failing_steps = errors.iter().cloned().collect();
        self.status.synced = self.synced;
        self.status.failed_ops = failed_ops;
        if let Some(e) = errors.first() {
            self.status.last_error = Some(e.clone());
        }
        self.status.converged = errors.is_empty() && failed_ops == 0;
        if self.status.converged && !fighting {
            if !self.baseline {
                tracing::info!(
                    leases = self.status.leases,
                    entries = self.status.desired,
                    "kernel state converged"
                );
            }
            self.baseline = true;
            self.backoff = self.timing.backoff_min;
            self.retry_at = None;
            self.hold = false;
        } else {
            if self.status.converged {
                self.baseline = true;
            }
            self.hold = fighting;
            self.retry_at = Some(Instant::now() + self.backoff);
            self.backoff = (self.backoff * 2).min(self.timing.backoff_max);
        }
        self.status_tx.send_replace(self.status.clone());
    }
}

/// The result of one op of a pass, kernel or peer, for logging and counting.
struct Outcome {
    text: String,
    key: EntryKey,
    delete: bool,
    error: Option<String>,
}
