//! Applying a pass's plan: kernel ops in one netlink call, then peer ops in one `PeerTable` call,
//! and the per-op bookkeeping (what failed, what was repaired, what a repeat warning may skip).

use std::collections::{HashMap, HashSet};

use super::plan::{self, EntryKey, Plan};
use crate::backend::{Entry, PeerOp, PeerTable};
use crate::kernel::{KernelError, Netlink};

/// The result of one op, kernel or peer.
pub(super) struct Outcome {
    pub text: String,
    pub key: EntryKey,
    pub delete: bool,
    pub error: Option<String>,
}

/// Apply `plan` and return one outcome per op (kernel ops first, in plan order). A delete that
/// finds nothing counts as done.
pub(super) async fn apply_plan(
    netlink: &dyn Netlink,
    peer_table: Option<&dyn PeerTable>,
    plan: &Plan,
) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(plan.len());
    if !plan.kernel.is_empty() {
        let results = netlink.apply(&plan.kernel).await;
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
        let results = match peer_table {
            Some(table) => table.apply(&plan.peers).await,
            None => Vec::new(),
        };
        for (i, op) in plan.peers.iter().enumerate() {
            let delete = matches!(op, PeerOp::Delete(_));
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
    outcomes
}

/// Counts of one applied plan.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Applied {
    pub replaced: usize,
    pub deleted: usize,
    pub failed: usize,
    pub repaired: u64,
    /// Owned entries installed afterwards.
    pub installed: usize,
}

/// Ops failing now, op text -> error text: a repeat of the same failure is logged at debug only,
/// and the map holds only ops the last pass still needed (bounded by the desired state).
#[derive(Debug, Default)]
pub(super) struct FailingOps(HashMap<String, String>);

impl FailingOps {
    /// Log and account `outcomes`; `installed` is what the pass read, `repairing` says whether the
    /// changes are drift repairs. Returns the counts and the last error text.
    pub fn account(
        &mut self,
        outcomes: Vec<Outcome>,
        installed: &[Entry],
        repairing: bool,
    ) -> (Applied, Option<String>) {
        let had: HashSet<EntryKey> = installed.iter().map(EntryKey::of).collect();
        let mut applied = Applied {
            installed: installed.len(),
            ..Applied::default()
        };
        let mut last_error = None;
        let mut planned = HashSet::with_capacity(outcomes.len());
        for o in outcomes {
            planned.insert(o.text.clone());
            if let Some(err) = o.error {
                applied.failed += 1;
                if self.0.get(&o.text) == Some(&err) {
                    tracing::debug!(op = %o.text, error = %err, "op still failing");
                } else {
                    tracing::warn!(op = %o.text, error = %err, "op failed; will retry");
                }
                last_error = Some(format!("{}: {err}", o.text));
                self.0.insert(o.text, err);
                continue;
            }
            self.0.remove(&o.text);
            if o.delete {
                applied.deleted += 1;
                applied.installed = applied.installed.saturating_sub(1);
            } else {
                applied.replaced += 1;
                if !had.contains(&o.key) {
                    applied.installed += 1;
                }
            }
            if repairing {
                applied.repaired += 1;
                tracing::info!(op = %o.text, "repaired drift");
            } else if o.delete {
                tracing::info!(op = %o.text, "removed an entry no lease wants");
            } else {
                tracing::debug!(op = %o.text, "applied");
            }
        }
        // Forget failures of ops this pass no longer needed.
        self.0.retain(|k, _| planned.contains(k));
        (applied, last_error)
    }

    /// Nothing was planned: no op is failing any more.
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// Warnings given once while their cause lasts: a key seen in a pass stays remembered; a key not
/// seen in a pass is forgotten at its end (so the set is bounded by the current state, and a cause
/// that comes back is named again).
#[derive(Debug, Default)]
pub(super) struct WarnedOnce {
    remembered: HashSet<String>,
    seen: HashSet<String>,
}

impl WarnedOnce {
    /// True when `key` was not warned about in the previous pass (warn now).
    pub fn first(&mut self, key: String) -> bool {
        let new = !self.remembered.contains(&key);
        self.seen.insert(key);
        new
    }

    pub fn end_pass(&mut self) {
        self.remembered = std::mem::take(&mut self.seen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_repeat_only_after_their_cause_went_away() {
        let mut w = WarnedOnce::default();
        assert!(w.first("a".into()));
        w.end_pass();
        assert!(!w.first("a".into()));
        w.end_pass();
        w.end_pass(); // "a" not seen in this pass: forgotten
        assert!(w.first("a".into()));
        assert!(w.remembered.len() <= 1 && w.seen.len() == 1);
    }
}
