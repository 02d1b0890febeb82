//! What the daemon reports on /readyz and /metrics: startup progress plus the reconciler's status;
//! and the backend's peer table, which /peers lists.
//!
//! Ready means: subnet.env is written (as upstream) **and** a reconcile pass over the first
//! complete view of the cluster's leases left every desired entry installed **and** passes have
//! not kept failing for `NOT_READY_AFTER` since (stricter than upstream, whose /readyz says
//! nothing about peers). A single failed pass does not flip readiness (the retry usually fixes
//! it within a second); a failure that lasts does.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::backend::reconcile::ReconcileStatus;
use crate::backend::{DataPathMetrics, PeerTable};
use crate::http::StatusSource;

/// Passes failing for this long make the node not ready.
pub const NOT_READY_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Default)]
pub struct DaemonStatus {
    subnet_file_written: AtomicBool,
    reconcile: Mutex<Option<watch::Receiver<ReconcileStatus>>>,
    data_path: Mutex<Option<Arc<dyn DataPathMetrics>>>,
    peer_table: Mutex<Option<Arc<dyn PeerTable>>>,
}

impl DaemonStatus {
    pub fn set_subnet_file_written(&self, written: bool) {
        self.subnet_file_written.store(written, Ordering::SeqCst);
    }

    pub fn set_reconcile(&self, rx: watch::Receiver<ReconcileStatus>) {
        if let Ok(mut slot) = self.reconcile.lock() {
            *slot = Some(rx);
        }
    }

    /// The backend's data-path counters, shown on /metrics from now on.
    pub fn set_data_path_metrics(&self, metrics: Arc<dyn DataPathMetrics>) {
        if let Ok(mut slot) = self.data_path.lock() {
            *slot = Some(metrics);
        }
    }

    /// The backend's peer table, listed on /peers from now on.
    pub fn set_peer_table(&self, table: Arc<dyn PeerTable>) {
        if let Ok(mut slot) = self.peer_table.lock() {
            *slot = Some(table);
        }
    }

    fn reconcile_status(&self) -> Option<ReconcileStatus> {
        let slot = self.reconcile.lock().ok()?;
        slot.as_ref().map(|rx| rx.borrow().clone())
    }
}

impl StatusSource for DaemonStatus {
    fn ready(&self) -> bool {
        self.subnet_file_written.load(Ordering::SeqCst)
            && self
                .reconcile_status()
                .is_some_and(|s| s.synced && s.converged_once && s.failing_for < NOT_READY_AFTER)
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, value: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        gauge(
            "flannel_ready",
            "1 when subnet.env is written and the peers are programmed.",
            "gauge",
            f64::from(u8::from(self.ready())),
        );
        let s = self.reconcile_status().unwrap_or_default();
        gauge("flannel_leases", "Remote leases known.", "gauge", s.leases as f64);
        gauge(
            "flannel_desired_entries",
            "Kernel entries the known leases need.",
            "gauge",
            s.desired as f64,
        );
        gauge(
            "flannel_installed_entries",
            "Owned kernel entries installed.",
            "gauge",
            s.installed as f64,
        );
        gauge(
            "flannel_failed_ops",
            "Kernel changes of the last pass that failed.",
            "gauge",
            s.failed_ops as f64,
        );
        gauge(
            "flannel_converged",
            "1 when the last reconcile pass succeeded.",
            "gauge",
            f64::from(u8::from(s.converged)),
        );
        gauge(
            "flannel_reconcile_failing_seconds",
            "How long reconcile passes have kept failing (0 after a converged pass).",
            "gauge",
            s.failing_for.as_secs_f64(),
        );
        gauge(
            "flannel_reconcile_passes_total",
            "Reconcile passes run.",
            "counter",
            s.passes as f64,
        );
        gauge(
            "flannel_drift_repairs_total",
            "Kernel objects put back after someone else changed them.",
            "counter",
            s.repairs as f64,
        );
        gauge(
            "process_resident_memory_bytes",
            "Resident memory of flanneld.",
            "gauge",
            resident_bytes() as f64,
        );
        if let Some(data_path) = self.data_path.lock().ok().and_then(|slot| slot.clone()) {
            data_path.render(&mut out);
        }
        out
    }

    fn peer_table(&self) -> Option<Arc<dyn PeerTable>> {
        self.peer_table.lock().ok().and_then(|slot| slot.clone())
    }
}

fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_subnet_file_and_a_programmed_view() {
        let status = DaemonStatus::default();
        assert!(!status.ready());
        status.set_subnet_file_written(true);
        assert!(!status.ready(), "no reconciler yet");
        let (tx, rx) = watch::channel(ReconcileStatus::default());
        status.set_reconcile(rx);
        assert!(!status.ready(), "first batch not programmed");
        tx.send_modify(|s| {
            s.synced = true;
            s.passes = 1;
        });
        assert!(!status.ready(), "a pass ran but did not install everything");
        tx.send_modify(|s| {
            s.passes = 2;
            s.converged = true;
            s.converged_once = true;
        });
        assert!(status.ready());
        assert!(status.metrics().contains("flannel_ready 1"));
        // One failed pass does not flip readiness; passes failing for long do.
        tx.send_modify(|s| {
            s.converged = false;
            s.failing_for = std::time::Duration::from_secs(1);
        });
        assert!(status.ready());
        tx.send_modify(|s| s.failing_for = NOT_READY_AFTER);
        assert!(!status.ready());
        assert!(status.metrics().contains("flannel_ready 0"));
    }
}
