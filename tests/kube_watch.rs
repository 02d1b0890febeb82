//! The kube manager's node watch (spec 6.3, 6.5) with the real `kube` client against the test API
//! server: snapshot after the first list, events for changes that matter only, deletions, nodes
//! that cannot be leases, re-list on 410, API failures, bursts, and this node's annotation upkeep.

mod support;

use std::time::Duration;

use flanneld::lease::{Lease, LeaseAttrs, LeaseBatch, LeaseEvent};
use flanneld::netconf::NetConf;
use flanneld::subnet::SubnetManager;
use flanneld::subnet::kube::{KubeEnv, KubeOptions, KubeSubnetManager};
use futures::StreamExt;
use futures::stream::BoxStream;
use support::apiserver::ApiServer;

const NETCONF: &str = r#"{"Network": "198.18.0.0/16", "Backend": {"Type": "vxlan"}}"#;
const P: &str = "flannel.alpha.coreos.com/";
const WAIT: Duration = Duration::from_secs(20);

fn data(mac_last: u8) -> String {
    format!(r#"{{"VNI":1,"VtepMAC":"96:59:b2:3f:04:{mac_last:02x}"}}"#)
}

/// A node as a flanneld of its own would have annotated it (one update per call).
fn managed_node(api: &ApiServer, name: &str, cidr: &str, ip: &str) {
    if api.node(name).is_none() {
        api.add_node(name, &[cidr]);
    }
    let last: u8 = ip.rsplit('.').next().and_then(|b| b.parse().ok()).unwrap();
    let keys =
        ["kube-subnet-manager", "backend-type", "backend-data", "public-ip"].map(|k| format!("{P}{k}"));
    let values = ["true".to_string(), "vxlan".into(), data(last), ip.into()];
    let changes: Vec<(&str, Option<&str>)> = keys
        .iter()
        .zip(&values)
        .map(|(k, v)| (k.as_str(), Some(v.as_str())))
        .collect();
    api.annotate_many(name, &changes);
}

struct Fixture {
    api: ApiServer,
    _dir: tempfile::TempDir,
    manager: KubeSubnetManager,
}

async fn fixture(setup: impl FnOnce(&ApiServer)) -> Fixture {
    let api = ApiServer::start();
    setup(&api);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("net-conf.json"), NETCONF).unwrap();
    let options = KubeOptions {
        api_url: Some(api.url.clone()),
        kubeconfig_file: None,
        annotation_prefix: "flannel.alpha.coreos.com".into(),
        net_config_path: dir.path().join("net-conf.json"),
        set_node_network_unavailable: true,
    };
    let env = KubeEnv {
        node_name: Some("flannel1".into()),
        ..KubeEnv::default()
    };
    let manager = KubeSubnetManager::new(options, env).await.unwrap();
    Fixture {
        api,
        _dir: dir,
        manager,
    }
}

async fn next(stream: &mut BoxStream<'static, LeaseBatch>) -> LeaseBatch {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("a batch in time")
        .expect("stream never ends")
}

fn describe(batch: &LeaseBatch) -> Vec<String> {
    let show = |l: &Lease| {
        format!(
            "{} {}",
            l.subnet.map(|s| s.to_string()).unwrap_or_default(),
            l.attrs.public_ip
        )
    };
    match batch {
        LeaseBatch::Snapshot(leases) => leases.iter().map(|l| format!("S {}", show(l))).collect(),
        LeaseBatch::Events(events) => events
            .iter()
            .map(|e| match e {
                LeaseEvent::Added(l) => format!("+ {}", show(l)),
                LeaseEvent::Removed(l) => format!("- {}", show(l)),
            })
            .collect(),
    }
}

#[tokio::test]
async fn snapshot_then_changes_that_matter_then_deletion() {
    let fx = fixture(|api| {
        managed_node(api, "flannel1", "198.18.1.0/24", "192.0.2.1");
        managed_node(api, "flannel2", "198.18.2.0/24", "192.0.2.2");
        api.add_node("not-flannel", &["198.18.3.0/24"]);
    })
    .await;
    let mut leases = fx.manager.watch_leases();
    let first = next(&mut leases).await;
    assert_eq!(
        describe(&first),
        ["S 198.18.1.0/24 192.0.2.1", "S 198.18.2.0/24 192.0.2.2"]
    );
    if let LeaseBatch::Snapshot(all) = &first {
        let l2 = &all[1];
        assert_eq!(l2.attrs.backend_type, "vxlan");
        assert_eq!(l2.attrs.backend_data.as_deref(), Some(data(2).as_str()));
        assert!(l2.enable_ipv4 && !l2.enable_ipv6 && l2.expiration.is_none());
    }

    // Changes that do not matter produce nothing: the next batch holds only the real change.
    fx.api.annotate("flannel2", "unrelated/annotation", Some("x"));
    fx.api
        .annotate("not-flannel", &format!("{P}public-ip"), Some("192.0.2.3"));
    fx.api
        .annotate("flannel2", &format!("{P}public-ip"), Some("192.0.2.22"));
    assert_eq!(describe(&next(&mut leases).await), ["+ 198.18.2.0/24 192.0.2.22"]);

    // A node that starts being managed appears; deleted or unmanaged nodes go.
    managed_node(&fx.api, "not-flannel", "198.18.3.0/24", "192.0.2.3");
    assert_eq!(describe(&next(&mut leases).await), ["+ 198.18.3.0/24 192.0.2.3"]);
    fx.api.delete_node("flannel2");
    assert_eq!(describe(&next(&mut leases).await), ["- 198.18.2.0/24 192.0.2.22"]);
    fx.api
        .annotate("not-flannel", &format!("{P}kube-subnet-manager"), None);
    assert_eq!(describe(&next(&mut leases).await), ["- 198.18.3.0/24 192.0.2.3"]);
}

#[tokio::test]
async fn an_empty_cluster_still_sends_its_snapshot() {
    let fx = fixture(|_| {}).await;
    let mut leases = fx.manager.watch_leases();
    assert_eq!(next(&mut leases).await, LeaseBatch::Snapshot(vec![]));
}

#[tokio::test]
async fn garbage_backend_data_is_skipped_and_others_are_unaffected() {
    let fx = fixture(|api| {
        managed_node(api, "flannel2", "198.18.2.0/24", "192.0.2.2");
        managed_node(api, "bad", "198.18.4.0/24", "192.0.2.4");
        api.annotate("bad", &format!("{P}backend-data"), Some("{garbage"));
    })
    .await;
    let mut leases = fx.manager.watch_leases();
    assert_eq!(describe(&next(&mut leases).await), ["S 198.18.2.0/24 192.0.2.2"]);
    // A good node turning bad keeps its last good lease; others keep flowing.
    fx.api
        .annotate("flannel2", &format!("{P}backend-data"), Some("not json"));
    managed_node(&fx.api, "flannel5", "198.18.5.0/24", "192.0.2.5");
    let batch = describe(&next(&mut leases).await);
    assert_eq!(
        batch.last().map(String::as_str),
        Some("+ 198.18.5.0/24 192.0.2.5"),
        "{batch:?}"
    );
    assert!(!batch.iter().any(|e| e.contains("198.18.2.0")), "{batch:?}");
    // Fixed: it appears.
    fx.api
        .annotate("bad", &format!("{P}backend-data"), Some(&data(4)));
    assert_eq!(describe(&next(&mut leases).await), ["+ 198.18.4.0/24 192.0.2.4"]);
}

#[tokio::test]
async fn an_expired_watch_lists_again_and_sends_a_new_snapshot() {
    let fx = fixture(|api| managed_node(api, "flannel2", "198.18.2.0/24", "192.0.2.2")).await;
    let mut leases = fx.manager.watch_leases();
    next(&mut leases).await;
    let lists = |api: &ApiServer| {
        api.requests()
            .iter()
            .filter(|r| r.path == "/api/v1/nodes" && !r.query.contains("watch=true"))
            .count()
    };
    assert_eq!(lists(&fx.api), 1);
    // Wait until the watch is open, so the expiry hits it.
    let deadline = std::time::Instant::now() + WAIT;
    while !fx.api.requests().iter().any(|r| r.query.contains("watch=true")) {
        assert!(std::time::Instant::now() < deadline, "no watch opened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fx.api.expire_watches();
    assert_eq!(describe(&next(&mut leases).await), ["S 198.18.2.0/24 192.0.2.2"]);
    assert_eq!(lists(&fx.api), 2);
    // And the new watch follows on.
    managed_node(&fx.api, "flannel3", "198.18.3.0/24", "192.0.2.3");
    let added = describe(&next(&mut leases).await);
    assert_eq!(
        added.last().map(String::as_str),
        Some("+ 198.18.3.0/24 192.0.2.3"),
        "{added:?}"
    );
    let watches: Vec<String> = fx
        .api
        .requests()
        .iter()
        .filter(|r| r.query.contains("watch=true"))
        .map(|r| r.query.clone())
        .collect();
    assert!(
        watches.iter().all(|q| q.contains("resourceVersion=")),
        "{watches:?}"
    );
}

#[tokio::test]
async fn api_failures_are_retried() {
    let fx = fixture(|api| {
        managed_node(api, "flannel2", "198.18.2.0/24", "192.0.2.2");
        api.fail_next(3, 500);
    })
    .await;
    let mut leases = fx.manager.watch_leases();
    assert_eq!(describe(&next(&mut leases).await), ["S 198.18.2.0/24 192.0.2.2"]);
}

#[tokio::test]
async fn a_burst_coalesces_to_the_latest_state() {
    let fx = fixture(|api| managed_node(api, "flannel2", "198.18.2.0/24", "192.0.2.2")).await;
    let mut leases = fx.manager.watch_leases();
    next(&mut leases).await;
    for i in 10..60 {
        fx.api.annotate(
            "flannel2",
            &format!("{P}public-ip"),
            Some(&format!("192.0.2.{i}")),
        );
    }
    // Everything that arrives adds up to the final state; the last event is the latest one.
    let mut last = String::new();
    while last != "+ 198.18.2.0/24 192.0.2.59" {
        let batch = describe(&next(&mut leases).await);
        assert!(
            batch.len() <= 1,
            "at most one event per node per batch: {batch:?}"
        );
        last = batch.last().cloned().unwrap_or_default();
    }
}

// Multi-threaded: `wait_node` blocks its thread while the watch task runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_nodes_annotations_are_kept_as_published() {
    let fx = fixture(|api| {
        api.add_node("flannel1", &["198.18.1.0/24"]);
    })
    .await;
    let attrs = LeaseAttrs {
        public_ip: "192.0.2.1".parse().unwrap(),
        backend_type: "vxlan".into(),
        backend_data: Some(data(1)),
        ..LeaseAttrs::default()
    };
    let conf = NetConf::parse(NETCONF).unwrap();
    fx.manager.acquire_lease(&conf, &attrs).await.unwrap();
    let mut leases = fx.manager.watch_leases();
    assert_eq!(describe(&next(&mut leases).await), ["S 198.18.1.0/24 192.0.2.1"]);

    let public_ip = format!("{P}public-ip");
    fx.api
        .annotate("flannel1", &format!("{P}public-ip-overwrite"), Some("172.18.0.2"));
    fx.api.wait_node("flannel1", WAIT, |n| {
        n["metadata"]["annotations"][&public_ip] == "172.18.0.2"
    });
    fx.api
        .annotate("flannel1", &format!("{P}public-ip-overwrite"), None);
    fx.api.wait_node("flannel1", WAIT, |n| {
        n["metadata"]["annotations"][&public_ip] == "192.0.2.1"
    });
    let managed = format!("{P}kube-subnet-manager");
    fx.api.annotate("flannel1", &managed, None);
    fx.api.wait_node("flannel1", WAIT, |n| {
        n["metadata"]["annotations"][&managed] == "true"
    });
    // Every write went to the status subresource.
    assert!(fx.api.patches("/api/v1/nodes/flannel1").is_empty());
    drop(leases);
}
