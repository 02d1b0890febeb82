//! The cluster watch against a real etcd, through the `LeaseWatcher` as the daemon uses it: the
//! own lease is never reported, new keys are Added, expired keys Removed; the watch recovers after
//! a compaction and after etcd is killed and restarted, ending with exactly etcd's content.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use flanneld::lease::{Lease, LeaseAttrs, LeaseBatch, LeaseEvent, LeaseWatcher};
use flanneld::subnet::SubnetManager;
use flanneld::subnet::env_file::PreviousSubnets;
use flanneld::subnet::etcd::EtcdSubnetManager;
use futures::StreamExt;
use futures::stream::BoxStream;
use support::etcd::Etcd;
use tokio::sync::mpsc;

const PREFIX: &str = "/coreos.com/network";
const SUBNETS: &str = "/coreos.com/network/subnets/";
/// Generous bound so a broken watch fails the test instead of hanging it; never a timing assertion.
const PATIENCE: Duration = Duration::from_secs(60);

fn peer_value(public_ip: &str) -> String {
    format!(r#"{{"PublicIP":"{public_ip}","PublicIPv6":null}}"#)
}

fn put_peer(etcd: &Etcd, key: &str, public_ip: &str) {
    etcd.put_with_ttl(&format!("{SUBNETS}{key}"), &peer_value(public_ip), 3600);
}

/// A manager and this node's lease (public IP 192.0.2.100) in 198.18.0.0/16. The own subnet is
/// allocated at random, so it comes from 198.18.128.0-198.18.255.0: the peers the tests write
/// (198.18.1.0 to 198.18.70.0) can then never be the own key, which the watcher ignores.
async fn own_node(etcd: &Etcd) -> (EtcdSubnetManager, Lease) {
    etcd.put(
        &format!("{PREFIX}/config"),
        r#"{ "Network": "198.18.0.0/16", "SubnetMin": "198.18.128.0", "SubnetMax": "198.18.255.0" }"#,
    );
    let m = EtcdSubnetManager::connect(
        &etcd.client_config(PREFIX),
        PreviousSubnets::default(),
        Duration::from_secs(3600),
    )
    .await
    .expect("manager");
    let config = m.network_config().await.expect("config");
    let attrs = LeaseAttrs {
        public_ip: "192.0.2.100".parse().expect("ip"),
        ..LeaseAttrs::default()
    };
    let own = m.acquire_lease(&config, &attrs).await.expect("own lease");
    (m, own)
}

fn key_of(lease: &Lease) -> String {
    lease.key().to_string()
}

/// etcd's leases other than ours: subnet key -> PublicIP.
fn etcd_view(etcd: &Etcd, own: &Lease) -> BTreeMap<String, String> {
    etcd.list(SUBNETS)
        .into_iter()
        .filter_map(|(key, value)| {
            let subnet = key.strip_prefix(SUBNETS)?.to_string();
            let json: serde_json::Value = serde_json::from_str(&value).ok()?;
            Some((subnet, json.get("PublicIP")?.as_str()?.to_string()))
        })
        .filter(|(subnet, _)| *subnet != key_of(own))
        .collect()
}

fn watcher_view(watcher: &LeaseWatcher) -> BTreeMap<String, String> {
    watcher
        .known()
        .iter()
        .map(|l| (key_of(l), l.attrs.public_ip.to_string()))
        .collect()
}

/// Poll the stream on its own task so it keeps running while the test blocks on etcdctl.
fn spawn_pump(mut stream: BoxStream<'static, LeaseBatch>) -> mpsc::UnboundedReceiver<LeaseBatch> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(batch) = stream.next().await {
            if tx.send(batch).is_err() {
                return;
            }
        }
    });
    rx
}

/// Apply batches until `done` holds; returns every event forwarded meanwhile.
async fn apply_until(
    batches: &mut mpsc::UnboundedReceiver<LeaseBatch>,
    watcher: &mut LeaseWatcher,
    what: &str,
    done: impl Fn(&LeaseWatcher, &[LeaseEvent]) -> bool,
) -> Vec<LeaseEvent> {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done(watcher, &events) {
        match tokio::time::timeout_at(deadline, batches.recv()).await {
            Ok(Some(batch)) => events.extend(watcher.apply(batch)),
            Ok(None) => panic!("the lease stream ended while waiting for {what}"),
            Err(_) => panic!(
                "gave up waiting for {what}; known: {:?}; events: {events:?}",
                watcher_view(watcher)
            ),
        }
    }
    events
}

fn added(events: &[LeaseEvent], key: &str) -> bool {
    events
        .iter()
        .any(|e| matches!(e, LeaseEvent::Added(l) if key_of(l) == key))
}

fn removed(events: &[LeaseEvent], key: &str) -> bool {
    events
        .iter()
        .any(|e| matches!(e, LeaseEvent::Removed(l) if key_of(l) == key))
}

fn mentions(events: &[LeaseEvent], key: &str) -> bool {
    added(events, key) || removed(events, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_reports_peers_but_never_the_own_lease() {
    let Some(etcd) = Etcd::start_or_skip() else { return };
    put_peer(&etcd, "198.18.1.0-24", "192.0.2.1");
    let (m, own) = own_node(&etcd).await;
    let own_key = key_of(&own);
    let mut stream = m.watch_leases();
    let first = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("first batch")
        .expect("stream");
    let LeaseBatch::Snapshot(snapshot) = &first else {
        panic!("the first batch is a snapshot: {first:?}")
    };
    assert_eq!(
        snapshot.len(),
        2,
        "the peer and our own lease are in etcd: {snapshot:?}"
    );
    let mut watcher = LeaseWatcher::new(own.clone());
    let mut all = watcher.apply(first);
    assert!(added(&all, "198.18.1.0-24"), "{all:?}");
    let mut batches = spawn_pump(stream);

    put_peer(&etcd, "198.18.50.0-24", "192.0.2.50");
    let events = apply_until(&mut batches, &mut watcher, "Added 198.18.50.0/24", |_, ev| {
        added(ev, "198.18.50.0-24")
    })
    .await;
    let Some(LeaseEvent::Added(new_peer)) = events
        .iter()
        .find(|e| mentions(std::slice::from_ref(e), "198.18.50.0-24"))
    else {
        panic!("{events:?}")
    };
    assert_eq!(new_peer.attrs.public_ip.to_string(), "192.0.2.50");
    assert!(new_peer.enable_ipv4 && !new_peer.enable_ipv6);
    all.extend(events);

    // A peer with a 3 s lease comes and goes.
    etcd.put_with_ttl(&format!("{SUBNETS}198.18.60.0-24"), &peer_value("192.0.2.60"), 3);
    let events = apply_until(&mut batches, &mut watcher, "Removed 198.18.60.0/24", |_, ev| {
        removed(ev, "198.18.60.0-24")
    })
    .await;
    assert!(
        added(&events, "198.18.60.0-24"),
        "added before removed: {events:?}"
    );
    let Some(LeaseEvent::Removed(gone)) = events.iter().find(|e| matches!(e, LeaseEvent::Removed(_))) else {
        panic!("{events:?}")
    };
    assert_eq!(
        gone.attrs.public_ip.to_string(),
        "192.0.2.60",
        "Removed carries the cached attrs"
    );
    all.extend(events);

    // Our own key being rewritten (a renewal) is never reported.
    etcd.put(&format!("{SUBNETS}{own_key}"), &peer_value("192.0.2.100"));
    put_peer(&etcd, "198.18.70.0-24", "192.0.2.70");
    all.extend(
        apply_until(&mut batches, &mut watcher, "Added 198.18.70.0/24", |_, ev| {
            added(ev, "198.18.70.0-24")
        })
        .await,
    );
    assert!(
        !mentions(&all, &own_key),
        "the own lease {own_key} was reported: {all:?}"
    );
    assert_eq!(watcher_view(&watcher), etcd_view(&etcd, &own));
}

#[tokio::test]
async fn the_watch_recovers_after_compaction_with_a_new_snapshot() {
    let Some(etcd) = Etcd::start_or_skip() else { return };
    put_peer(&etcd, "198.18.1.0-24", "192.0.2.1");
    put_peer(&etcd, "198.18.2.0-24", "192.0.2.2");
    let (m, own) = own_node(&etcd).await;
    let mut stream = m.watch_leases();
    let mut watcher = LeaseWatcher::new(own.clone());
    let first = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("first batch")
        .expect("stream");
    assert!(matches!(first, LeaseBatch::Snapshot(_)), "{first:?}");
    watcher.apply(first);

    // The stream is not polled: its watch is not open yet, so it falls behind the compaction.
    etcd.etcdctl(&["del", &format!("{SUBNETS}198.18.1.0-24")]);
    put_peer(&etcd, "198.18.3.0-24", "192.0.2.3");
    put_peer(&etcd, "198.18.2.0-24", "192.0.2.22");
    let revision = etcd.revision();
    etcd.etcdctl(&["compact", &revision.to_string()]);

    let second = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("second batch")
        .expect("stream");
    assert!(
        matches!(second, LeaseBatch::Snapshot(_)),
        "a compaction re-lists: {second:?}"
    );
    let events = watcher.apply(second);
    assert!(removed(&events, "198.18.1.0-24"), "{events:?}");
    assert!(added(&events, "198.18.3.0-24"), "{events:?}");
    assert_eq!(watcher_view(&watcher), etcd_view(&etcd, &own));

    // And it keeps following afterwards.
    let mut batches = spawn_pump(stream);
    put_peer(&etcd, "198.18.4.0-24", "192.0.2.4");
    apply_until(&mut batches, &mut watcher, "Added 198.18.4.0/24", |_, ev| {
        added(ev, "198.18.4.0-24")
    })
    .await;
    assert_eq!(watcher_view(&watcher), etcd_view(&etcd, &own));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_survives_an_etcd_restart_without_losing_events() {
    let Some(mut etcd) = Etcd::start_or_skip() else {
        return;
    };
    put_peer(&etcd, "198.18.1.0-24", "192.0.2.1");
    put_peer(&etcd, "198.18.2.0-24", "192.0.2.2");
    let (m, own) = own_node(&etcd).await;
    let mut watcher = LeaseWatcher::new(own.clone());
    let mut batches = spawn_pump(m.watch_leases());
    put_peer(&etcd, "198.18.3.0-24", "192.0.2.3");
    apply_until(&mut batches, &mut watcher, "Added 198.18.3.0/24", |_, ev| {
        added(ev, "198.18.3.0-24")
    })
    .await;

    etcd.stop();
    // Let the watch notice the outage and back off for a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    etcd.restart();
    // Changes right after the restart, most likely before the watch has reconnected.
    etcd.etcdctl(&["del", &format!("{SUBNETS}198.18.1.0-24")]);
    put_peer(&etcd, "198.18.4.0-24", "192.0.2.4");
    put_peer(&etcd, "198.18.2.0-24", "192.0.2.22");
    put_peer(&etcd, "198.18.5.0-24", "192.0.2.5");

    let expected = etcd_view(&etcd, &own);
    let events = apply_until(
        &mut batches,
        &mut watcher,
        "etcd's content after the restart",
        |w, _| watcher_view(w) == expected,
    )
    .await;
    assert!(removed(&events, "198.18.1.0-24"), "{events:?}");
    assert!(
        added(&events, "198.18.4.0-24") && added(&events, "198.18.5.0-24"),
        "{events:?}"
    );
    assert!(!mentions(&events, &key_of(&own)), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_events_never_remove_valid_leases() {
    let Some(etcd) = Etcd::start_or_skip() else { return };
    put_peer(&etcd, "198.18.1.0-24", "192.0.2.1");
    put_peer(&etcd, "198.18.2.0-24", "192.0.2.2");
    // Garbage already present at snapshot time.
    etcd.put(&format!("{SUBNETS}garbage"), &peer_value("192.0.2.9"));
    let (m, own) = own_node(&etcd).await;
    let mut watcher = LeaseWatcher::new(own.clone());
    let mut batches = spawn_pump(m.watch_leases());
    apply_until(&mut batches, &mut watcher, "the snapshot", |w, _| {
        w.known().len() == 2
    })
    .await;

    // Garbage arriving as events: bad key, bad JSON, wrong types, a deleted bad key.
    etcd.put(&format!("{SUBNETS}10.0.0.300-24"), &peer_value("192.0.2.10"));
    etcd.put(&format!("{SUBNETS}198.18.8.0-24"), "{ not json");
    etcd.put(
        &format!("{SUBNETS}198.18.9.0-24"),
        r#"{"PublicIP":[1,2],"PublicIPv6":null}"#,
    );
    etcd.put(
        &format!("{SUBNETS}198.18.2.0-24"),
        "null-ish garbage over a valid lease",
    );
    etcd.etcdctl(&["del", &format!("{SUBNETS}garbage")]);
    put_peer(&etcd, "198.18.7.0-24", "192.0.2.7");
    let events = apply_until(&mut batches, &mut watcher, "Added 198.18.7.0/24", |_, ev| {
        added(ev, "198.18.7.0-24")
    })
    .await;
    assert!(
        events.iter().all(|e| matches!(e, LeaseEvent::Added(_))),
        "no removals: {events:?}"
    );
    let known = watcher_view(&watcher);
    assert_eq!(known.get("198.18.1.0-24").map(String::as_str), Some("192.0.2.1"));
    assert_eq!(
        known.get("198.18.2.0-24").map(String::as_str),
        Some("192.0.2.2"),
        "last valid value kept"
    );
    assert_eq!(known.len(), 3, "{known:?}");
}
