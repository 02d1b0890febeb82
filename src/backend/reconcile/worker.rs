//! The reconciler's loop state and one pass: lease map upkeep, kernel event triage, device check,
//! read, plan, apply, and the bookkeeping of failures and repairs. The state machine itself
//! (phases, backoff, fights) is `phase`; applying and per-op accounting is `apply`.

use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use futures::stream::BoxStream;
use ipnet::{Ipv4Net, Ipv6Net};
use tokio::sync::watch;
use tokio::time::Instant;

use super::apply::{FailingOps, WarnedOnce, apply_plan};
use super::installed::{self, Trigger, classify, underlay_from};
use super::phase::{FightDetector, PassResult, Pending, Phase};
use super::plan::{self, DesiredSet, EntryKey, Plan, is_foreign_route_in_network, is_owned};
use super::{ReconcileStatus, ReconcileTiming, Reconciler};
use crate::backend::{Backend, Entry, Ownership, PeerTable, Underlay};
use crate::kernel::{KernelEvent, Netlink, Route};
use crate::lease::{Lease, LeaseEvent};

type LeaseId = (Option<Ipv4Net>, Option<Ipv6Net>);

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
    /// Desired entries of the last pass, by key (to classify kernel events).
    desired: BTreeMap<EntryKey, Entry>,
    ownership: Ownership,
    device_names: Vec<String>,
    pub(super) phase: Phase,
    pub(super) pending: Pending,
    fights: FightDetector,
    failing_ops: FailingOps,
    /// Errors of other steps (device check, reading) of the last pass.
    failing_steps: Vec<String>,
    /// Conflicting, unowned or foreign entries and fights already named.
    warned: WarnedOnce,
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
            desired: BTreeMap::new(),
            ownership,
            device_names,
            phase: Phase::Unsynced,
            pending: Pending::default(),
            fights: FightDetector::default(),
            failing_ops: FailingOps::default(),
            failing_steps: Vec::new(),
            warned: WarnedOnce::default(),
        }
    }

    /// Whether a pass should run now.
    pub(super) fn ready(&self) -> bool {
        self.phase.synced() && self.pending.pass && (self.phase.events_run_passes() || self.pending.leases)
    }

    /// The retry/backoff timer fired.
    pub(super) fn on_timer(&mut self) {
        self.phase.on_timer();
        self.pending = Pending {
            leases: self.pending.leases,
            ..Pending::everything()
        };
    }

    /// The periodic full check.
    pub(super) fn on_tick(&mut self) {
        self.pending.pass = true;
        self.pending.devices = true;
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
        self.on_tick();
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
        // The first batch (even an empty one) completes the cluster view: programming starts.
        if changed || !self.phase.synced() {
            self.phase.on_leases_changed();
            self.pending.pass = true;
            self.pending.leases = true;
        }
    }

    pub(super) fn on_kernel_event(&mut self, event: &KernelEvent) {
        match classify(event, &self.ownership, &self.device_names, &self.desired) {
            Trigger::Nothing => {}
            Trigger::Pass => {
                tracing::debug!(?event, "kernel event asks for a pass");
                self.pending.pass = true;
            }
            Trigger::Devices => {
                tracing::debug!(?event, "kernel event asks for a device check");
                self.pending.pass = true;
                self.pending.devices = true;
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
        let work = self.pending.take();
        let repairing = self.phase.drift();
        let mut errors: Vec<String> = Vec::new();
        let mut repaired = 0u64;

        if work.devices {
            match self.backend.ensure_devices(&*self.netlink, &self.own).await {
                Ok(true) => {
                    tracing::info!(devices = ?self.backend.device_names(), "recreated backend device; replaying entries");
                    if repairing {
                        repaired += 1;
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
                self.finish(errors, 0, repaired, None, work);
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

        let mut failed_ops = 0;
        if plan.is_empty() {
            self.failing_ops.clear();
        } else {
            let peer_table = self.peer_table.clone();
            let outcomes = apply_plan(&*self.netlink, peer_table.as_deref(), &plan).await;
            let (applied, last_error) = self.failing_ops.account(outcomes, &installed, repairing);
            tracing::info!(
                replaced = applied.replaced,
                deleted = applied.deleted,
                failed = applied.failed,
                leases = self.leases.len(),
                "reconciled"
            );
            failed_ops = applied.failed;
            repaired += applied.repaired;
            self.status.installed = applied.installed;
            if last_error.is_some() {
                self.status.last_error = last_error;
            }
        }
        let bulk = plan.len() >= crate::memory::BULK_OPS;
        self.finish(errors, failed_ops, repaired, Some(&plan), work);
        drop(plan);
        drop(desired);
        drop(installed);
        if bulk {
            crate::memory::release_free_memory();
        }
    }

    /// The public IPs of the current leases (see `Ownership::peer_gateways`).
    fn peer_gateways(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self
            .leases
            .values()
            .flat_map(|l| {
                let v4 = Some(l.attrs.public_ip)
                    .filter(|ip| !ip.is_unspecified())
                    .map(IpAddr::V4);
                v4.into_iter().chain(l.attrs.public_ipv6.map(IpAddr::V6))
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

    /// Name (once while it lasts) each protocol-boot route inside the cluster network that is not
    /// ours and that no lease wants: an operator's, or upstream's leftover for a node that is gone.
    fn note_foreign_routes(&mut self, routes: &[Route], desired: &DesiredSet<'_>) {
        for r in routes
            .iter()
            .filter(|r| is_foreign_route_in_network(&self.ownership, r))
        {
            if desired.by_key.contains_key(&EntryKey::Route(r.table, r.dst)) {
                continue; // a lease wants this destination: the plan adopts the route
            }
            if self.warned.first(format!("foreign {r:?}")) {
                let via = r.gateway.map(|g| g.to_string()).unwrap_or_default();
                tracing::warn!(route = %r.dst, via = %via,
                    "a route inside the cluster network that no lease explains and that flanneld did not write is left in place; delete it if it is stale");
            }
        }
    }

    /// Warn (once while it lasts) about desired entries the reconciler could never see as
    /// installed, and about two leases wanting different objects under one key.
    fn check_desired(&mut self, desired: &[Entry], conflicts: &[&Entry]) {
        for e in desired.iter().filter(|e| !is_owned(&self.ownership, e)) {
            if self.warned.first(format!("unowned {e:?}")) {
                tracing::error!(entry = ?e, "backend wants an entry outside its ownership; it is reapplied on every pass");
            }
        }
        for e in conflicts {
            if self.warned.first(format!("conflict {e:?}")) {
                tracing::warn!(entry = ?e, "two leases want different kernel objects under one key; the first lease wins");
            }
        }
    }

    /// Close a pass: fight detection, the phase transition, the status.
    fn finish(
        &mut self,
        errors: Vec<String>,
        failed_ops: usize,
        repaired: u64,
        plan: Option<&Plan>,
        work: Pending,
    ) {
        let now = Instant::now();
        let converged = errors.is_empty() && failed_ops == 0;
        let fingerprint = plan.filter(|p| !p.is_empty()).map(|p| {
            let mut h = DefaultHasher::new();
            p.hash(&mut h);
            h.finish()
        });
        let fighting = self
            .fights
            .note(fingerprint, converged && !work.leases, self.phase.released(), now);
        if fighting
            && let (Some(plan), Some(fingerprint)) = (plan, fingerprint)
            && self.warned.first(format!("fight {fingerprint}"))
        {
            let first = (plan.kernel.first().map(|o| o.to_string()))
                .or_else(|| plan.peers.first().map(|o| o.to_string()))
                .unwrap_or_default();
            tracing::warn!(ops = plan.len(), first = %first,
                "the same kernel entries keep needing repair; slowing down repairs of them");
        }
        let was_behind = !self.phase.drift();
        self.phase
            .after_pass(PassResult { converged, fighting }, now, &self.timing);
        self.warned.end_pass();

        self.failing_steps = errors;
        self.status.passes += 1;
        self.status.repairs += repaired;
        self.status.synced = self.phase.synced();
        self.status.failed_ops = failed_ops;
        if let Some(e) = self.failing_steps.first() {
            self.status.last_error = Some(e.clone());
        }
        self.status.converged = converged;
        self.status.converged_once |= converged;
        self.status.failing_for = self.phase.failing_for(now);
        if converged && was_behind {
            tracing::info!(
                leases = self.status.leases,
                entries = self.status.desired,
                "kernel state converged"
            );
        }
        self.status_tx.send_replace(self.status.clone());
    }
}
