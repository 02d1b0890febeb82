//! The renewal loop of the etcd subnet manager against a real etcd (spec 5.6, and issue 12): the
//! key is rewritten with a new 24 h lease, a deletion revokes, shutdown stops it, a subnet taken
//! over by another node is never overwritten, and this node's lease edited by someone is written
//! back rather than mistaken for another node's.

mod support;

use std::time::Duration;

use flanneld::lease::{Lease, LeaseAttrs};
use flanneld::subnet::env_file::PreviousSubnets;
use flanneld::subnet::etcd::EtcdSubnetManager;
use flanneld::subnet::{LeaseOutcome, SubnetManager};
use ipnet::Ipv4Net;
use support::etcd::Etcd;
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "/coreos.com/network";
const CONFIG_KEY: &str = "/coreos.com/network/config";
const DAY: Duration = Duration::from_secs(86_400);

fn attrs(public_ip: &str) -> LeaseAttrs {
    LeaseAttrs {
        public_ip: public_ip.parse().expect("test IP"),
        ..LeaseAttrs::default()
    }
}

fn subnet_key(subnet: Ipv4Net) -> String {
    format!("{PREFIX}/subnets/{}-{}", subnet.addr(), subnet.prefix_len())
}

/// The network config, a manager renewing `margin` before expiry (`DAY - 2 s`: the first renewal
/// is due after ~2 s), and this node's lease for `public_ip`.
async fn node_with_lease(etcd: &Etcd, margin: Duration, public_ip: &str) -> (EtcdSubnetManager, Lease) {
    etcd.put(CONFIG_KEY, r#"{ "Network": "198.18.0.0/16" }"#);
    let m = EtcdSubnetManager::connect(&etcd.client_config(PREFIX), PreviousSubnets::default(), margin)
        .await
        .expect("manager connects");
    let config = m.network_config().await.expect("config");
    let lease = m.acquire_lease(&config, &attrs(public_ip)).await.expect("lease");
    (m, lease)
}

#[tokio::test]
async fn renewal_rewrites_the_key_and_a_deletion_revokes() {
    let Some(etcd) = Etcd::start_or_skip() else { return };
    // A margin just under the TTL makes the first renewal due after ~2 s.
    let (m, lease) = node_with_lease(&etcd, DAY - Duration::from_secs(2), "192.0.2.30").await;
    let key = subnet_key(lease.subnet.expect("v4"));
    let first_lease_id = etcd.lease_id(&key).expect("key exists");

    let shutdown = CancellationToken::new();
    let renewing = m.complete_lease(&lease, shutdown.clone());
    let observer = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while etcd.lease_id(&key) == Some(first_lease_id) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the lease was never renewed"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            etcd.get(&key).as_deref(),
            Some(r#"{"PublicIP":"192.0.2.30","PublicIPv6":null}"#),
            "attrs kept"
        );
        let ttl = etcd.ttl_of(&key).expect("renewed key has a lease");
        assert!(ttl > 86_000, "renewed for a day: {ttl}");
        etcd.etcdctl(&["del", &key]);
    };
    let (outcome, ()) = tokio::join!(renewing, observer);
    assert_eq!(outcome.expect("renewal loop"), LeaseOutcome::Revoked);
    assert_eq!(etcd.get(&key), None, "a revoked lease is not recreated");
}

#[tokio::test]
async fn a_subnet_taken_over_by_another_node_is_never_overwritten() {
    let Some(etcd) = Etcd::start_or_skip() else { return };
    // Renewal due after ~2 s: it must not write over the other node's value.
    let (m, lease) = node_with_lease(&etcd, DAY - Duration::from_secs(2), "192.0.2.32").await;
    let key = subnet_key(lease.subnet.expect("v4"));
    let theirs = r#"{"PublicIP":"192.0.2.77","PublicIPv6":null}"#;
    let shutdown = CancellationToken::new();
    let renewing = m.complete_lease(&lease, shutdown.clone());
    let takeover = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Our lease expired while we were cut off, and node .77 took the subnet.
        etcd.put_with_ttl(&key, theirs, 600);
    };
    let (outcome, ()) = tokio::join!(renewing, takeover);
    assert_eq!(
        outcome.expect("renewal loop"),
        LeaseOutcome::TakenOver {
            holder: "192.0.2.77".into()
        }
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        etcd.get(&key).as_deref(),
        Some(theirs),
        "the other node's lease stays"
    );
}

#[tokio::test]
async fn the_renewal_loop_stops_on_shutdown() {
    let Some(etcd) = Etcd::start_or_skip() else { return };
    let (m, lease) = node_with_lease(&etcd, Duration::from_secs(3600), "192.0.2.31").await;
    let shutdown = CancellationToken::new();
    let cancel = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cancel.cancel();
    });
    assert_eq!(
        m.complete_lease(&lease, shutdown).await.expect("loop"),
        LeaseOutcome::Shutdown
    );
    assert!(
        etcd.get(&subnet_key(lease.subnet.expect("v4"))).is_some(),
        "the lease stays on shutdown"
    );
}

#[tokio::test]
async fn this_nodes_lease_edited_by_someone_is_written_back() {
    let Some(etcd) = Etcd::start_or_skip() else { return };
    let (m, lease) = node_with_lease(&etcd, Duration::from_secs(3600), "192.0.2.33").await;
    let key = subnet_key(lease.subnet.expect("v4"));
    let ours = r#"{"PublicIP":"192.0.2.33","PublicIPv6":null}"#;
    let edited = r#"{"PublicIP":"192.0.2.33","PublicIPv6":null,"BackendType":"bogus"}"#;
    let shutdown = CancellationToken::new();
    let renewing = m.complete_lease(&lease, shutdown.clone());
    let editor = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        etcd.put_with_ttl(&key, edited, 600);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while etcd.get(&key).as_deref() != Some(ours) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "our value was never written back"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        shutdown.cancel();
    };
    let (outcome, ()) = tokio::join!(renewing, editor);
    assert_eq!(
        outcome.expect("renewal loop"),
        LeaseOutcome::Shutdown,
        "not mistaken for another node"
    );
    assert!(
        etcd.ttl_of(&key).expect("leased") > 86_000,
        "written back with a fresh day"
    );
}
