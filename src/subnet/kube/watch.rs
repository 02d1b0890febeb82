//! The node watch behind `watch_leases` (spec 6.3): list every node, then watch from the listing's
//! resource version; a watch the server ends is resumed from the last version seen; an expired
//! version (HTTP 410) lists again, which sends a new snapshot. Errors retry with backoff (200 ms
//! doubling to 10 s) and never end the stream; a watch that stays silent longer than its server
//! timeout plus a margin is assumed dead and reopened.
//!
//! A background task feeds a `LeaseView` (coalescing per node, no bounded queue); the stream hands
//! out whatever accumulated whenever it is polled. The task also keeps this node's annotations as
//! published (a `public-ip-overwrite` set or removed later is applied at once; an annotation
//! deleted by someone is restored), patching only when something differs.
//! Dropping the stream stops the task.
//!
//! It must not filter the own lease (the `LeaseWatcher` does) or decide anything about routes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::annotations::{self, NodeInfo};
use super::client::NodeWatchItem;
use super::view::LeaseView;
use crate::lease::LeaseBatch;
use crate::subnet::etcd::Backoff;

/// How long the server keeps one watch open.
const WATCH_TIMEOUT_SECS: u32 = 290;
/// Silence beyond the server timeout after which the connection is presumed dead.
const WATCH_IDLE_MARGIN: Duration = Duration::from_secs(30);
/// A watch the server ends sooner than this is reopened only after a backoff pause.
const QUICK_CLOSE: Duration = Duration::from_secs(1);
/// Pause between attempts to restore this node's annotations.
const UPKEEP_RETRY: Duration = Duration::from_secs(3);

fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(200), Duration::from_secs(10))
}

fn lock(view: &Mutex<LeaseView>) -> std::sync::MutexGuard<'_, LeaseView> {
    view.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct StreamState {
    shared: Arc<Shared>,
    view: Arc<Mutex<LeaseView>>,
    changed: Arc<Notify>,
    /// Stops the background task when the stream is dropped.
    stop: Option<tokio_util::sync::DropGuard>,
}

/// The stream behind `SubnetManager::watch_leases`: a snapshot once the first listing completed,
/// then coalesced events, and a new snapshot after every re-list. It ends only when dropped.
pub(crate) fn lease_stream(shared: Arc<Shared>) -> BoxStream<'static, LeaseBatch> {
    let view = LeaseView::new(
        shared.names.clone(),
        shared.netconf.enable_ipv4,
        shared.netconf.enable_ipv6,
    );
    let state = StreamState {
        shared,
        view: Arc::new(Mutex::new(view)),
        changed: Arc::new(Notify::new()),
        stop: None,
    };
    futures::stream::unfold(state, |mut state| async move {
        if state.stop.is_none() {
            let stop = CancellationToken::new();
            tokio::spawn(run(
                state.shared.clone(),
                state.view.clone(),
                state.changed.clone(),
                stop.clone(),
            ));
            state.stop = Some(stop.drop_guard());
        }
        loop {
            // Bind first: the guard must be gone before awaiting.
            let batch = lock(&state.view).take_batch();
            if let Some(batch) = batch {
                return Some((batch, state));
            }
            state.changed.notified().await;
        }
    })
    .boxed()
}

async fn run(
    shared: Arc<Shared>,
    view: Arc<Mutex<LeaseView>>,
    changed: Arc<Notify>,
    stop: CancellationToken,
) {
    let (own_tx, own_rx) = watch::channel(None);
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = follow(&shared, &view, &changed, &own_tx) => {}
        _ = keep_own_annotations(&shared, own_rx) => {}
    }
}

/// List and watch forever.
async fn follow(
    shared: &Shared,
    view: &Mutex<LeaseView>,
    changed: &Notify,
    own: &watch::Sender<Option<NodeInfo>>,
) {
    let mut backoff = backoff();
    let see_own = |node: &NodeInfo| {
        if node.name == shared.node_name {
            own.send_replace(Some(node.clone()));
        }
    };
    loop {
        let listing = match shared.client.list_nodes().await {
            Ok(listing) => listing,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "listing nodes failed; retrying");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        backoff.reset();
        tracing::info!(
            nodes = listing.nodes.len(),
            resource_version = %listing.resource_version,
            "listed the cluster's nodes"
        );
        lock(view).relist(&listing.nodes);
        changed.notify_one();
        listing.nodes.iter().for_each(see_own);
        let mut version = listing.resource_version;

        // Watch until the version expires; then list again.
        'watch: loop {
            let mut events = match shared.client.watch_nodes(&version, WATCH_TIMEOUT_SECS).await {
                Ok(events) => events,
                Err(e) if e.status() == Some(410) => {
                    tracing::info!(error = %e, "the node watch's resource version expired; listing again");
                    break 'watch;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "opening the node watch failed; retrying");
                    tokio::time::sleep(delay).await;
                    continue 'watch;
                }
            };
            let idle = Duration::from_secs(u64::from(WATCH_TIMEOUT_SECS)) + WATCH_IDLE_MARGIN;
            let opened = tokio::time::Instant::now();
            loop {
                let item = match tokio::time::timeout(idle, events.next()).await {
                    Err(_) => {
                        tracing::warn!(silent_for = ?idle, "the node watch went silent; reopening it");
                        continue 'watch;
                    }
                    Ok(None) => {
                        // The server closed the watch (its timeout): resume. A server that closes
                        // every watch at once gets a pause, not a busy loop.
                        if opened.elapsed() < QUICK_CLOSE {
                            tokio::time::sleep(backoff.next_delay()).await;
                        }
                        continue 'watch;
                    }
                    Ok(Some(item)) => item,
                };
                match item {
                    NodeWatchItem::Applied(node) => {
                        backoff.reset();
                        remember(&mut version, &node.resource_version);
                        lock(view).apply(&node);
                        changed.notify_one();
                        see_own(&node);
                    }
                    NodeWatchItem::Deleted(node) => {
                        backoff.reset();
                        remember(&mut version, &node.resource_version);
                        tracing::info!(node = %node.name, "node deleted");
                        lock(view).remove(&node.name);
                        changed.notify_one();
                    }
                    NodeWatchItem::Bookmark(at) => remember(&mut version, &at),
                    NodeWatchItem::Expired(message) => {
                        tracing::info!(
                            resource_version = %version,
                            reason = %message,
                            "the node watch's resource version expired; listing again"
                        );
                        break 'watch;
                    }
                    NodeWatchItem::Failed(e) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(error = %e, retry_in = ?delay, "the node watch failed; reopening it");
                        tokio::time::sleep(delay).await;
                        continue 'watch;
                    }
                }
            }
        }
    }
}

fn remember(version: &mut String, seen: &str) {
    if !seen.is_empty() {
        *version = seen.to_string();
    }
}

/// Re-apply this node's annotations whenever the watch shows them differing from what this
/// daemon published (after `acquire_lease`).
async fn keep_own_annotations(shared: &Shared, mut own: watch::Receiver<Option<NodeInfo>>) {
    while own.changed().await.is_ok() {
        loop {
            let node = own.borrow_and_update().clone();
            let (Some(node), Some(attrs)) = (node, shared.published()) else {
                break;
            };
            let update = annotations::annotation_update(&shared.names, &node.annotations, &attrs);
            if update.changes.is_empty() {
                break;
            }
            match shared.patch_annotations(&update).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?UPKEEP_RETRY, "restoring this node's annotations failed");
                    tokio::time::sleep(UPKEEP_RETRY).await;
                }
            }
        }
    }
    // The sender lives as long as `follow`, which never ends: keep this branch pending.
    std::future::pending::<()>().await;
}
