//! The renewal loop (upstream CompleteLease): renew this node's lease at expiration minus the
//! renew margin (retrying every minute on failure), and watch the own key so that a deletion by
//! someone else shuts the daemon down cleanly, as upstream does.
//!
//! It must not create the key again once it is gone, and it never writes over a key that is no
//! longer ours: renewal is conditional on the modification revision of our last write, and a
//! write by anyone else with another value (another node took the subnet after our lease
//! expired) ends the loop with `TakenOver`. Spec: flanneld-behaviour.md sections 5.5 (own-lease
//! watch) and 5.6.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::entries::expiration_after;
use super::registry::{KeyValue, PutOutcome, WatchEvent, WatchMessage};
use super::{Backoff, LEASE_TTL_SECS, Shared};
use crate::lease::Lease;
use crate::subnet::{LeaseOutcome, SubnetError};

/// Upstream retries a failed renewal after one minute.
const RENEW_RETRY: Duration = Duration::from_secs(60);
/// Never renew more often than this, even with a renew margin as long as the TTL.
const MIN_RENEW_WAIT: Duration = Duration::from_secs(1);

/// What the own-key watch reports.
#[derive(Debug)]
enum OwnKey {
    /// The key was written (by our renewal or anyone) at `revision`; `expiration` None: it has no
    /// etcd lease.
    Written {
        expiration: Option<SystemTime>,
        revision: i64,
        holder: Holder,
    },
    /// The key is gone (deleted, or its lease expired).
    Gone,
}

/// Whose lease a value of our key is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Holder {
    /// Exactly what we wrote.
    Us,
    /// This node's lease (its PublicIP), with other attributes: someone edited it; the value this
    /// node publishes is written back.
    UsEdited,
    /// Another node's (named by its PublicIP), or an unreadable value.
    Other(String),
}

fn holder_of(found: &[u8], ours: &str) -> Holder {
    if found == ours.as_bytes() {
        return Holder::Us;
    }
    let ip_of = |text: &str| {
        crate::lease::LeaseAttrs::from_json(text)
            .ok()
            .map(|a| a.public_ip)
    };
    let theirs = std::str::from_utf8(found).ok().and_then(ip_of);
    match theirs {
        Some(ip) if Some(ip) == ip_of(ours) => Holder::UsEdited,
        Some(ip) => Holder::Other(ip.to_string()),
        None => Holder::Other(format!("an unreadable value of {} bytes", found.len())),
    }
}

/// How long to wait before renewing a lease that expires at `expiration`.
pub(crate) fn renew_wait(expiration: SystemTime, margin: Duration, now: SystemTime) -> Duration {
    let left = expiration.duration_since(now).unwrap_or_default();
    left.saturating_sub(margin).max(MIN_RENEW_WAIT)
}

/// Aborts the own-key watch task when the renewal loop returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn schedule(expiration: Option<SystemTime>, margin: Duration) -> Option<Instant> {
    let wait = renew_wait(expiration?, margin, SystemTime::now());
    tracing::info!(wait = ?wait, "waiting to renew the lease");
    Some(Instant::now() + wait)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

pub(crate) async fn complete_lease(
    shared: Arc<Shared>,
    lease: Lease,
    shutdown: CancellationToken,
) -> Result<LeaseOutcome, SubnetError> {
    let Some(key) = shared.layout.lease_key(&lease) else {
        return Err(SubnetError::Fatal(
            "cannot renew a lease without an IPv4 subnet in etcd mode".into(),
        ));
    };
    let value = lease.attrs.to_json();
    let (events_tx, mut events) = mpsc::channel(8);
    let _watch = AbortOnDrop(tokio::spawn(watch_own_key(
        shared.clone(),
        key.clone(),
        value.clone(),
        events_tx,
    )));
    let margin = shared.renew_margin;
    let mut next_renewal = schedule(lease.expiration, margin);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(LeaseOutcome::Shutdown),
            event = events.recv() => match event {
                Some(OwnKey::Gone) | None => {
                    tracing::warn!(key = %key, "this node's lease was deleted from etcd; shutting down");
                    return Ok(LeaseOutcome::Revoked);
                }
                Some(OwnKey::Written { expiration, revision, holder }) => match holder {
                    _ if shared.own_revision() == Some(revision) => {
                        tracing::debug!(key = %key, expiration = ?expiration, "this node's lease was written");
                        next_renewal = schedule(expiration, margin);
                    }
                    Holder::Us => {
                        shared.set_own_revision(revision);
                        next_renewal = schedule(expiration, margin);
                    }
                    Holder::UsEdited => {
                        shared.set_own_revision(revision);
                        tracing::warn!(key = %key, "this node's lease was edited in etcd; writing back what this node publishes");
                        next_renewal = Some(Instant::now() + MIN_RENEW_WAIT);
                    }
                    Holder::Other(holder) => return Ok(taken_over(&key, holder)),
                },
            },
            _ = sleep_until(next_renewal) => {
                let Some(revision) = shared.own_revision() else {
                    return Err(SubnetError::Fatal(format!(
                        "renewing {key}: the revision of this node's lease is unknown"
                    )));
                };
                let renewal = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(LeaseOutcome::Shutdown),
                    renewal = shared.registry.put_if_unchanged(&key, &value, Some(LEASE_TTL_SECS), revision) => renewal,
                };
                match renewal {
                    Ok(PutOutcome::Written { ttl, revision }) => {
                        shared.set_own_revision(revision);
                        let expiration = ttl.map(|t| expiration_after(SystemTime::now(), t));
                        tracing::info!(key = %key, expiration = ?expiration, "renewed the lease");
                        next_renewal = schedule(expiration, margin);
                    }
                    Ok(PutOutcome::Conflict) => match shared.registry.get(&key).await {
                        Ok((_, None)) => {
                            tracing::warn!(key = %key, "this node's lease is gone from etcd; shutting down");
                            return Ok(LeaseOutcome::Revoked);
                        }
                        Ok((_, Some(entry))) => match holder_of(&entry.value, &value) {
                            Holder::Other(holder) => return Ok(taken_over(&key, holder)),
                            // Rewritten by someone, still this node's: renew over that write.
                            Holder::Us | Holder::UsEdited => {
                                shared.set_own_revision(entry.mod_revision);
                                next_renewal = Some(Instant::now() + MIN_RENEW_WAIT);
                            }
                        },
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in = ?RENEW_RETRY, "reading this node's lease after a failed renewal");
                            next_renewal = Some(Instant::now() + RENEW_RETRY);
                        }
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?RENEW_RETRY, "renewing the lease failed");
                        next_renewal = Some(Instant::now() + RENEW_RETRY);
                    }
                }
            }
        }
    }
}

fn taken_over(key: &str, holder: String) -> LeaseOutcome {
    tracing::error!(key = %key, holder = %holder,
        "this node's subnet is now held by another node (our lease had expired); it is left alone, and flanneld exits to acquire a new subnet");
    LeaseOutcome::TakenOver { holder }
}

/// Read the own key, then watch it from the next revision; re-read after a compaction.
/// Reports every write and ends after reporting `Gone`.
async fn watch_own_key(shared: Arc<Shared>, key: String, value: String, events: mpsc::Sender<OwnKey>) {
    let registry = &shared.registry;
    let mut backoff = Backoff::watch();
    let mut from: Option<i64> = None;
    loop {
        let start = match from {
            Some(revision) => revision,
            None => match registry.get(&key).await {
                Ok((_, None)) => {
                    let _ = events.send(OwnKey::Gone).await;
                    return;
                }
                Ok((revision, Some(entry))) => {
                    // At start and after a compaction: is the key still ours? (Events may
                    // have been missed.) Ours: keep the renewal schedule; another value: report it.
                    match holder_of(&entry.value, &value) {
                        Holder::Us => shared.set_own_revision(entry.mod_revision),
                        Holder::UsEdited => {
                            if events.send(written(&entry, &value, None)).await.is_err() {
                                return;
                            }
                        }
                        Holder::Other(_) => {
                            let _ = events.send(written(&entry, &value, None)).await;
                            return;
                        }
                    }
                    revision + 1
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading this node's lease failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            },
        };
        from = Some(start);
        let mut watch = match registry.watch(&key, start, false).await {
            Ok(watch) => watch,
            Err(e) => {
                tracing::warn!(error = %e, from_revision = start, "watching this node's lease failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        loop {
            match watch.next().await {
                Ok(WatchMessage::Changes {
                    events: changes,
                    next_revision,
                }) => {
                    backoff.reset();
                    from = Some(next_revision);
                    for change in changes {
                        let report = match change {
                            WatchEvent::Delete { .. } => OwnKey::Gone,
                            WatchEvent::Put(entry)
                                if entry.lease_id == 0 || entry.value != value.as_bytes() =>
                            {
                                written(&entry, &value, None)
                            }
                            WatchEvent::Put(entry) => match registry.time_to_live(&key, entry.lease_id).await
                            {
                                Ok(Some(ttl)) => {
                                    written(&entry, &value, Some(expiration_after(SystemTime::now(), ttl)))
                                }
                                // Expiring now: the deletion event follows.
                                Ok(None) => continue,
                                Err(e) => {
                                    tracing::debug!(error = %e, "could not read the TTL of this node's lease");
                                    continue;
                                }
                            },
                        };
                        let gone = matches!(report, OwnKey::Gone);
                        if events.send(report).await.is_err() || gone {
                            return;
                        }
                    }
                }
                Ok(WatchMessage::Compacted { .. }) => {
                    tracing::warn!(key = %key, "the watch of this node's lease fell behind compaction; re-reading");
                    from = None;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the watch of this node's lease was interrupted; reconnecting");
                    tokio::time::sleep(backoff.next_delay()).await;
                    break;
                }
            }
        }
    }
}

/// An own-key write as the loop sees it.
fn written(entry: &KeyValue, value: &str, expiration: Option<SystemTime>) -> OwnKey {
    OwnKey::Written {
        expiration,
        revision: entry.mod_revision,
        holder: holder_of(&entry.value, value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_ours_edited_or_another_nodes() {
        let ours = r#"{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}}"#;
        assert_eq!(holder_of(ours.as_bytes(), ours), Holder::Us);
        let edited = ours.replace("02:00:00:00:00:01", "02:de:ad:be:ef:01");
        assert_eq!(holder_of(edited.as_bytes(), ours), Holder::UsEdited);
        let theirs = ours.replace("192.0.2.1", "192.0.2.77");
        assert_eq!(
            holder_of(theirs.as_bytes(), ours),
            Holder::Other("192.0.2.77".into())
        );
        assert_eq!(
            holder_of(b"\xff garbage", ours),
            Holder::Other("an unreadable value of 9 bytes".into())
        );
    }

    #[test]
    fn renewal_waits_until_expiration_minus_margin() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = now + Duration::from_secs(86_400);
        assert_eq!(
            renew_wait(day, Duration::from_secs(3600), now),
            Duration::from_secs(82_800)
        );
    }

    #[test]
    fn an_overdue_renewal_waits_the_minimum_not_zero() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            renew_wait(now + Duration::from_secs(10), Duration::from_secs(3600), now),
            MIN_RENEW_WAIT
        );
        assert_eq!(
            renew_wait(now - Duration::from_secs(10), Duration::ZERO, now),
            MIN_RENEW_WAIT
        );
    }
}
