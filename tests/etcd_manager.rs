//! The etcd subnet manager against a real etcd: upstream's etcd cases (spec 13.1), reservations,
//! renewal and revocation, races for the last subnet, and garbage under `subnets/`.

mod support;

use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use flanneld::lease::{Lease, LeaseAttrs};
use flanneld::subnet::env_file::PreviousSubnets;
use flanneld::subnet::etcd::EtcdSubnetManager;
use flanneld::subnet::{SubnetError, SubnetManager};
use ipnet::Ipv4Net;
use support::etcd::Etcd;
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "/coreos.com/network";
const CONFIG_KEY: &str = "/coreos.com/network/config";
const UPSTREAM_CONFIG: &str =
    r#"{ "Network": "10.3.0.0/16", "SubnetMin": "10.3.1.0", "SubnetMax": "10.3.25.0" }"#;
const DAY: Duration = Duration::from_secs(86_400);

fn net(s: &str) -> Ipv4Net {
    s.parse().expect("test CIDR")
}

fn attrs(public_ip: &str) -> LeaseAttrs {
    LeaseAttrs {
        public_ip: public_ip.parse().expect("test IP"),
        ..LeaseAttrs::default()
    }
}

fn subnet_key(subnet: Ipv4Net) -> String {
    format!("{PREFIX}/subnets/{}-{}", subnet.addr(), subnet.prefix_len())
}

/// Upstream's fixture: the config and leases 10.3.{1,2,4,5,31}.0/24 owned by 1.1.1.1.
fn upstream_fixture(etcd: &Etcd) {
    etcd.put(CONFIG_KEY, UPSTREAM_CONFIG);
    for third in [1, 2, 4, 5, 31] {
        etcd.put_with_ttl(
            &format!("{PREFIX}/subnets/10.3.{third}.0-24"),
            r#"{"PublicIP":"1.1.1.1","PublicIPv6":null}"#,
            3600,
        );
    }
}

async fn manager(etcd: &Etcd, previous: PreviousSubnets) -> EtcdSubnetManager {
    EtcdSubnetManager::connect(&etcd.client_config(PREFIX), previous, Duration::from_secs(3600))
        .await
        .expect("manager connects")
}

fn previous(subnet: &str) -> PreviousSubnets {
    PreviousSubnets {
        subnet: Some(net(subnet)),
        ..PreviousSubnets::default()
    }
}

fn in_upstream_range(subnet: Ipv4Net) -> bool {
    subnet.prefix_len() == 24
        && subnet.addr() >= Ipv4Addr::new(10, 3, 1, 0)
        && subnet.addr() <= Ipv4Addr::new(10, 3, 25, 0)
}

fn assert_about_a_day_left(lease: &Lease) {
    let left = lease
        .expiration
        .expect("a leased key expires")
        .duration_since(SystemTime::now())
        .expect("in the future");
    assert!(
        left > DAY - Duration::from_secs(120) && left <= DAY,
        "expiration {left:?} from now"
    );
}

#[tokio::test]
async fn acquires_a_free_subnet_in_range_and_reuses_it_on_reacquire() {
    let Some(etcd) = Etcd::start_or_skip() else { return };
    upstream_fixture(&etcd);
    let m = manager(&etcd, PreviousSubnets::default()).await;
    let config = m.network_config().await.expect("config");
    let lease = m.acquire_lease(&config, &attrs("1.2.3.4")).await.expect("lease");
    let subnet = lease.subnet.expect("v4 subnet");
    assert!(in_upstream_range(subnet), "{subnet}");
    assert!(
        ![1, 2, 4, 5].contains(&subnet.addr().octets()[2]),
        "{subnet} was already leased"
    );
    assert!(lease.enable_ipv4 && !lease.enable_ipv6 && lease.ipv6_subnet.is_none());
    assert_about_a_day_left(&lease);
    // Stored byte for byte as upstream does, with a 24 h etcd lease.
    let key = subnet_key(subnet);
    assert_eq!(
        etcd.get(&key).as_deref(),
        Some(r#"{"PublicIP":"1.2.3.4","PublicIPv6":null}"#)
    );
    let ttl = etcd.ttl_of(&key).expect("key has a lease");
    assert!(ttl > 86_000 && ttl <= 86_400, "ttl {ttl}");

    // A restarted node (new manager, no subnet.env) finds its lease by public IP.
    let again = manager(&etcd, PreviousSubnets::default()).await;
    let relisted = again
        .acquire_lease(&config, &attrs("1.2.3.4"))
        .await
        .expect("lease again");
    assert_eq!(relisted.subnet, Some(subnet));
    assert_about_a_day_left(&relisted);
    assert_eq!(
        etcd.list(&format!("{PREFIX}/subnets/")).len(),
        6,
        "no second key for the same node"
    );
}

#[tokio::test]
async fn a_compatible_previous_subnet_is_reused() {
    let Some(etcd) = Etcd::start_or_skip() else { return };
    upstream_fixture(&etcd);
    let m = manager(&etcd, previous("10.3.6.0/24")).await;
    assert!(m.name().contains("10.3.6.0/24"), "{}", m.name());
    let config = m.network_config().await.expect("config");
    let lease = m.acquire_lease(&config, &attrs("1.2.3.4")).await.expect("lease");
    assert_eq!(lease.subnet, Some(net("10.3.6.0/24")));
    assert_eq!(
        etcd.get(&subnet_key(net("10.3.6.0/24"))).as_deref(),
        Some(r#"{"PublicIP":"1.2.3.4","PublicIPv6":null}"#)
    );
}

#[tokio::test]
async fn an_incompatible_previous_subnet_is_not_reused() {
    let Some(etcd) = Etcd::start_or_skip() else { return };
    upstream_fixture(&etcd);
    let m = manager(&etcd, previous("10.4.1.0/24")).await;
    let config = m.network_config().await.expect("config");
    let lease = m.acquire_lease(&config, &attrs("1.2.3.4")).await.expect("lease");
    let subnet = lease.subnet.expect("v4 subnet");
    assert_ne!(subnet, net("10.4.1.0/24"));
    assert!(in_upstream_range(subnet), "{subnet}");
}

#[tokio::test]
async fn a_config_change_gives_a_compatible_lease_and_drops_the_old_one() {
    let Some(etcd) = Etcd::start_or_skip() else { return };
    upstream_fixture(&etcd);
    let m = manager(&etcd, PreviousSubnets::default()).await;
    let config = m.network_config().await.expect("config");
    let old = m
        .acquire_lease(&config, &attrs("1.2.3.4"))
        .await
        .expect("lease")
        .subnet
        .expect("v4");

    etcd.put(CONFIG_KEY, r#"{ "Network": "10.4.0.0/16" }"#);
    let config = m.network_config().await.expect("new config");
    assert_eq!(config.network, Some(net("10.4.0.0/16")));
    let lease = m
        .acquire_lease(&config, &attrs("1.2.3.4"))
        .await
        .expect("lease in the new network");
    let subnet = lease.subnet.expect("v4 subnet");
    assert!(
        net("10.4.0.0/16").contains(&subnet) && subnet.prefix_len() == 24,
        "{subnet}"
    );
    assert_ne!(
        subnet.addr(),
        Ipv4Addr::new(10, 4, 0, 0),
        "the first subnet is skipped by default"
    );
    assert_eq!(
        etcd.get(&subnet_key(old)),
        None,
        "the incompatible lease of this IP was deleted"
    );
    assert!(etcd.get(&subnet_key(subnet)).is_some());
}

#[tokio::test]
async fn a_missing_or_bad_config_is_reported_with_its_key() {
    let Some(etcd) = Etcd::start_or_skip() else { return };
    let m = manager(&etcd, PreviousSubnets::default()).await;
    match m.network_config().await {
        Err(SubnetError::ConfigNotFound { key }) => assert_eq!(key, CONFIG_KEY),
        other => panic!("expected ConfigNotFound, got {other:?}"),
    }
    etcd.put(CONFIG_KEY, r#"{ "Network": "10.3.0.0/30" }"#);
    match m.network_config().await {
        Err(e @ SubnetError::BadConfig { .. }) => assert!(e.to_string().contains(CONFIG_KEY), "{e}"),
        other => panic!("expected BadConfig, got {other:?}"),
    }
    etcd.put(CONFIG_KEY, "{ not json");
    assert!(matches!(
        m.network_config().await,
        Err(SubnetError::BadConfig { .. })
    ));
    etcd.put(
        CONFIG_KEY,
        r#"{ "EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "2001:db8::/48" }"#,
    );
    match m.network_config().await {
        Err(e @ SubnetError::BadConfig { .. }) => assert!(e.to_string().contains("IPv6-only"), "{e}"),
        other => panic!("expected BadConfig for IPv6-only, got {other:?}"),
    }
}

#[tokio::test]
async fn waiting_for_the_config_ends_when_it_appears_or_on_shutdown() {
    let Some(etcd) = Etcd::start_or_skip() else { return };
    let m = manager(&etcd, PreviousSubnets::default()).await;
    let shutdown = CancellationToken::new();
    let cancel = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cancel.cancel();
    });
    assert_eq!(
        m.wait_for_config(&shutdown).await.expect("waiting is not fatal"),
        None,
        "shutdown ends the wait"
    );

    let shutdown = CancellationToken::new();
    let waiting = async { m.wait_for_config(&shutdown).await.expect("waiting is not fatal") };
    let writer = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        etcd.put(
            CONFIG_KEY,
            r#"{ "Network": "198.18.0.0/16", "Backend": { "Type": "host-gw" } }"#,
        );
    };
    let (config, ()) = tokio::join!(waiting, writer);
    let config = config.expect("config appears");
    assert_eq!(config.network, Some(net("198.18.0.0/16")));
    assert_eq!(config.backend_type, "host-gw");
}

#[tokio::test]
async fn a_reservation_is_reused_and_stays_a_reservation() {
    let Some(etcd) = Etcd::start_or_skip() else { return };
    etcd.put(CONFIG_KEY, r#"{ "Network": "198.18.0.0/16" }"#);
    let key = format!("{PREFIX}/subnets/198.18.7.0-24");
    etcd.put(&key, r#"{"PublicIP":"192.0.2.7","PublicIPv6":null}"#);
    let m = manager(&etcd, PreviousSubnets::default()).await;
    let config = m.network_config().await.expect("config");
    let mine = LeaseAttrs {
        backend_type: "host-gw".into(),
        ..attrs("192.0.2.7")
    };
    let lease = m.acquire_lease(&config, &mine).await.expect("reserved lease");
    assert_eq!(lease.subnet, Some(net("198.18.7.0/24")));
    assert_eq!(lease.expiration, None, "a reservation does not expire");
    assert_eq!(etcd.lease_id(&key), Some(0), "still no etcd lease on the key");
    assert_eq!(
        etcd.get(&key).as_deref(),
        Some(r#"{"PublicIP":"192.0.2.7","PublicIPv6":null,"BackendType":"host-gw"}"#),
        "our attributes were published"
    );
}

#[tokio::test]
async fn two_managers_racing_for_the_last_subnet_never_share_it() {
    let Some(etcd) = Etcd::start_or_skip() else { return };
    etcd.put(
        CONFIG_KEY,
        r#"{ "Network": "198.18.0.0/16", "SubnetMin": "198.18.1.0", "SubnetMax": "198.18.2.0" }"#,
    );
    etcd.put_with_ttl(
        &format!("{PREFIX}/subnets/198.18.1.0-24"),
        r#"{"PublicIP":"192.0.2.1","PublicIPv6":null}"#,
        3600,
    );
    let a = manager(&etcd, PreviousSubnets::default()).await;
    let b = manager(&etcd, PreviousSubnets::default()).await;
    let config = a.network_config().await.expect("config");
    let (attrs_a, attrs_b) = (attrs("192.0.2.10"), attrs("192.0.2.11"));
    let (ra, rb) = tokio::join!(
        a.acquire_lease(&config, &attrs_a),
        b.acquire_lease(&config, &attrs_b)
    );
    let (won, lost) = match (ra, rb) {
        (Ok(l), Err(e)) | (Err(e), Ok(l)) => (l, e),
        other => panic!("exactly one manager gets the last subnet, got {other:?}"),
    };
    assert_eq!(won.subnet, Some(net("198.18.2.0/24")));
    match &lost {
        SubnetError::OutOfSubnets { total, .. } => assert_eq!(*total, 2),
        other => panic!("the loser is out of subnets, got {other:?}"),
    }
    assert!(lost.to_string().contains("2 subnets"), "{lost}");

    // Eight nodes racing for exactly eight free subnets (random picks collide, and the losers
    // retry): all end with distinct subnets, and a ninth is out of subnets.
    etcd.put(
        CONFIG_KEY,
        r#"{ "Network": "198.18.0.0/16", "SubnetMin": "198.18.1.0", "SubnetMax": "198.18.10.0" }"#,
    );
    let config = a.network_config().await.expect("config");
    let mut managers = Vec::new();
    for _ in 0..8 {
        managers.push(manager(&etcd, PreviousSubnets::default()).await);
    }
    let all_attrs: Vec<LeaseAttrs> = (0..8).map(|i| attrs(&format!("192.0.2.{}", 20 + i))).collect();
    let racing = managers
        .iter()
        .zip(&all_attrs)
        .map(|(m, a)| m.acquire_lease(&config, a));
    let results = futures::future::join_all(racing).await;
    let mut subnets: Vec<Ipv4Net> = results
        .into_iter()
        .map(|r| r.expect("room for everyone").subnet.expect("v4"))
        .collect();
    subnets.sort();
    subnets.dedup();
    assert_eq!(subnets.len(), 8, "distinct subnets: {subnets:?}");
    let ninth = b.acquire_lease(&config, &attrs("192.0.2.99")).await;
    assert!(
        matches!(ninth, Err(SubnetError::OutOfSubnets { total: 10, .. })),
        "{ninth:?}"
    );
}

#[tokio::test]
async fn garbage_under_subnets_leaves_every_valid_lease_in_place() {
    let Some(etcd) = Etcd::start_or_skip() else { return };
    etcd.put(
        CONFIG_KEY,
        r#"{ "Network": "198.18.0.0/16", "SubnetMin": "198.18.1.0", "SubnetMax": "198.18.4.0" }"#,
    );
    let valid = ["198.18.1.0-24", "198.18.2.0-24"];
    for (i, key) in valid.iter().enumerate() {
        etcd.put(
            &format!("{PREFIX}/subnets/{key}"),
            &format!(r#"{{"PublicIP":"192.0.2.{}","PublicIPv6":null}}"#, i + 1),
        );
    }
    etcd.put(
        &format!("{PREFIX}/subnets/not-a-subnet"),
        r#"{"PublicIP":"192.0.2.9","PublicIPv6":null}"#,
    );
    etcd.put(&format!("{PREFIX}/subnets/198.18.3.0-24"), "{ this is not json");
    etcd.put(
        &format!("{PREFIX}/subnets/198.18.4.0-24"),
        r#"{"PublicIP": 5, "PublicIPv6": null}"#,
    );

    let m = manager(&etcd, PreviousSubnets::default()).await;
    let config = m.network_config().await.expect("config");
    // Every slot is taken by a valid lease or by garbage: nothing may be overwritten.
    let got = m.acquire_lease(&config, &attrs("192.0.2.50")).await;
    assert!(
        matches!(got, Err(SubnetError::OutOfSubnets { total: 4, .. })),
        "{got:?}"
    );
    assert_eq!(
        etcd.get(&format!("{PREFIX}/subnets/198.18.3.0-24")).as_deref(),
        Some("{ this is not json")
    );
    for key in valid {
        assert!(
            etcd.get(&format!("{PREFIX}/subnets/{key}")).is_some(),
            "{key} is still there"
        );
    }
}

#[tokio::test]
async fn dual_stack_leases_use_the_combined_key() {
    let Some(etcd) = Etcd::start_or_skip() else { return };
    etcd.put(
        CONFIG_KEY,
        r#"{ "Network": "198.18.0.0/16", "EnableIPv6": true, "IPv6Network": "2001:db8:12::/48" }"#,
    );
    let m = manager(&etcd, PreviousSubnets::default()).await;
    let config = m.network_config().await.expect("config");
    let mine = LeaseAttrs {
        public_ipv6: Some("2001:db8::7".parse().expect("v6")),
        ..attrs("192.0.2.7")
    };
    let lease = m.acquire_lease(&config, &mine).await.expect("dual-stack lease");
    assert!(lease.enable_ipv4 && lease.enable_ipv6);
    let (v4, v6) = (lease.subnet.expect("v4"), lease.ipv6_subnet.expect("v6"));
    assert_eq!(v6.prefix_len(), 64);
    assert!(
        "2001:db8:12::/48"
            .parse::<ipnet::Ipv6Net>()
            .expect("net")
            .contains(&v6),
        "{v6}"
    );
    let key = format!("{PREFIX}/subnets/{}-24&{}-64", v4.addr(), v6.addr());
    assert_eq!(
        etcd.get(&key).as_deref(),
        Some(r#"{"PublicIP":"192.0.2.7","PublicIPv6":"2001:db8::7"}"#),
        "stored at {key}"
    );
    let again = manager(&etcd, PreviousSubnets::default()).await;
    let relisted = again.acquire_lease(&config, &mine).await.expect("lease again");
    assert_eq!((relisted.subnet, relisted.ipv6_subnet), (Some(v4), Some(v6)));
}
