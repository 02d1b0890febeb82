//! iptables mode against the real tools, for iptables-nft and iptables-legacy, each test in its own
//! network namespace (spec 10.1): exact listings, drift repair, one process per steady-state
//! resync, restart without changes, recycling of a previous Network, mode switches, clear errors.

mod support;
mod traffic_common;

use std::future::Future;

use flanneld::subnet::env_file::PreviousSubnets;
use flanneld::traffic::{Tools, TrafficError, TrafficManager};
use support::netns::Netns;
use traffic_common::*;

const VARIANTS: [&str; 2] = ["nft", "legacy"];

fn tools(variant: &str) -> Tools {
    Tools::variant(Some(variant))
}

/// Runs `body(namespace, variant)` for each iptables variant, each in a fresh namespace.
fn for_each_variant<F>(body: impl Fn(String, String) -> F + Clone + Send + 'static)
where
    F: Future<Output = ()>,
{
    for variant in VARIANTS {
        let ns = Netns::new("trf-ipt");
        let body = body.clone();
        in_ns(&ns, move |ns| body(ns, variant.to_owned()));
    }
}

/// The nat and filter listings of variant `v` equal upstream's.
fn assert_listings(ns: &str, v: &str, context: &str) {
    assert_eq!(
        sh(ns, &format!("iptables-{v} -w -t nat -S")),
        NAT_LISTING,
        "{v} nat: {context}"
    );
    assert_eq!(
        sh(ns, &format!("iptables-{v} -w -S")),
        FILTER_LISTING,
        "{v} filter: {context}"
    );
}

/// Starts a manager with the standard settings and lease after a run with `previous`.
async fn restart(tools: Tools, previous: &PreviousSubnets) -> TrafficManager {
    start(settings(false, false, tools), &lease(false), previous)
        .await
        .unwrap_or_else(|e| panic!("restarting the traffic manager: {e}"))
}

fn previous_same() -> PreviousSubnets {
    PreviousSubnets {
        network: Some(NETWORK.parse().unwrap()),
        subnet: Some(SUBNET.parse().unwrap()),
        ipv6_network: Some(NETWORK6.parse().unwrap()),
        ipv6_subnet: Some(SUBNET6.parse().unwrap()),
    }
}

#[test]
fn listings_equal_upstream_for_both_variants() {
    for_each_variant(|ns, v| async move {
        let manager = start_first_run(false, true, tools(&v)).await;
        assert_listings(&ns, &v, "first run");
        let nat6 = sh(&ns, &format!("ip6tables-{v} -w -t nat -S"));
        assert!(nat6.contains(
            "-A FLANNEL-POSTRTG -s 2001:db8::/48 ! -d ff00::/8 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully\n"
        ), "{v}: {nat6}");
        assert!(
            nat6.contains("-A FLANNEL-POSTRTG -s 2001:db8:0:1::/64 -d 2001:db8::/48 -m comment"),
            "{v}: {nat6}"
        );
        let filter6 = sh(&ns, &format!("ip6tables-{v} -w -S"));
        assert!(
            filter6.contains(
                "-A FLANNEL-FWD -d 2001:db8::/48 -m comment --comment \"flanneld forward\" -j ACCEPT"
            )
        );
        // Startup: version x2, nft cleanup listing, save + restore per family.
        assert!(
            manager.spawned_processes() <= 7,
            "{v}: {} processes at startup",
            manager.spawned_processes()
        );
    });
}

#[test]
fn drift_is_repaired_and_steady_state_costs_one_listing() {
    for_each_variant(|ns, v| async move {
        let mut manager = restart(tools(&v), &previous_same()).await;
        let before = manager.spawned_processes();
        assert_eq!(manager.resync().await, 0, "{v}: nothing drifted");
        assert_eq!(
            manager.spawned_processes() - before,
            1,
            "{v}: one iptables-save per steady resync"
        );

        let drifts = [
            format!("iptables-{v} -w -t nat -F FLANNEL-POSTRTG"),
            format!(
                "iptables-{v} -w -t nat -D POSTROUTING -m comment --comment 'flanneld masq' -j FLANNEL-POSTRTG"
            ),
            format!(
                "iptables-{v} -w -t nat -A POSTROUTING -m comment --comment 'flanneld masq' -j FLANNEL-POSTRTG"
            ),
            format!(
                "iptables-{v} -w -I FLANNEL-FWD 2 -s 198.18.0.0/16 -m comment --comment 'flanneld forward' -j ACCEPT"
            ),
            format!(
                "iptables-{v} -w -D FLANNEL-FWD 1 && iptables-{v} -w -A FLANNEL-FWD -s 198.18.0.0/16 -m comment --comment 'flanneld forward' -j ACCEPT"
            ),
            format!(
                "iptables-{v} -w -t nat -I POSTROUTING 1 -j ACCEPT && iptables-{v} -w -t nat -D POSTROUTING -m comment --comment 'flanneld masq' -j FLANNEL-POSTRTG && iptables-{v} -w -t nat -F FLANNEL-POSTRTG && iptables-{v} -w -t nat -X FLANNEL-POSTRTG"
            ),
        ];
        for drift in &drifts {
            sh(&ns, drift);
            assert_eq!(manager.resync().await, 1, "{v}: repaired after {drift}");
            let nat = sh(&ns, &format!("iptables-{v} -w -t nat -S"));
            let expected_nat = if drift.contains("-I POSTROUTING 1 -j ACCEPT") {
                NAT_LISTING.replace(
                    "-P POSTROUTING ACCEPT\n-N FLANNEL-POSTRTG\n",
                    "-P POSTROUTING ACCEPT\n-N FLANNEL-POSTRTG\n-A POSTROUTING -j ACCEPT\n",
                )
            } else {
                NAT_LISTING.to_owned()
            };
            assert_eq!(nat, expected_nat, "{v}: after {drift}");
            assert_eq!(
                sh(&ns, &format!("iptables-{v} -w -S")),
                FILTER_LISTING,
                "{v}: after {drift}"
            );
            let before = manager.spawned_processes();
            assert_eq!(manager.resync().await, 0, "{v}: steady after repairing {drift}");
            assert_eq!(manager.spawned_processes() - before, 1);
        }
    });
}

#[test]
fn restart_keeps_rules_and_network_change_recycles_old_rules() {
    for_each_variant(|ns, v| async move {
        // A previous run with another Network and subnet left its rules.
        let mut old = settings(false, false, tools(&v));
        old.network = Some("198.19.0.0/16".parse().unwrap());
        let mut old_lease = lease(false);
        old_lease.subnet = Some("198.19.7.0/24".parse().unwrap());
        start(old, &old_lease, &PreviousSubnets::default()).await.unwrap();
        assert!(sh(&ns, &format!("iptables-{v} -w -t nat -S")).contains("198.19.7.0/24"));

        let previous = PreviousSubnets {
            network: Some("198.19.0.0/16".parse().unwrap()),
            subnet: Some("198.19.7.0/24".parse().unwrap()),
            ..PreviousSubnets::default()
        };
        restart(tools(&v), &previous).await;
        assert_listings(&ns, &v, "old rules recycled and old forward rules replaced");

        // Restart with the same network: same rules, one jump each.
        restart(tools(&v), &previous_same()).await;
        assert_listings(&ns, &v, "restart");
    });
}

#[test]
fn random_fully_can_be_disabled_and_masquerade_can_be_off() {
    let ns = Netns::new("trf-ipt");
    in_ns(&ns, |ns| async move {
        let mut s = settings(false, false, tools("nft"));
        s.choice.random_fully = false;
        start(s, &lease(false), &previous_same()).await.unwrap();
        assert_eq!(
            sh(&ns, "iptables-nft -w -t nat -S"),
            NAT_LISTING.replace(" --random-fully", "")
        );

        let mut s = settings(false, false, tools("nft"));
        s.choice.masquerade = false;
        s.choice.forward = false;
        let mut manager = start(s, &lease(false), &previous_same()).await.unwrap();
        let before = manager.spawned_processes();
        assert_eq!(manager.resync().await, 0);
        assert_eq!(
            manager.spawned_processes(),
            before,
            "nothing to keep: no process at all"
        );
    });
}

#[test]
fn missing_or_failing_tools_give_clear_errors_and_keep_existing_rules() {
    let ns = Netns::new("trf-ipt");
    in_ns(&ns, |ns| async move {
        restart(tools("nft"), &previous_same()).await;
        let mut missing = tools("nft");
        missing.v4.save = "flanneld-no-such-iptables-save".into();
        let err = start(settings(false, false, missing), &lease(false), &previous_same())
            .await
            .err()
            .expect("masquerade setup must fail without iptables-save");
        let text = err.to_string();
        assert!(matches!(err, TrafficError::Listing { .. }), "{err:?}");
        assert!(
            text.contains("flanneld-no-such-iptables-save") && text.contains("not found"),
            "{text}"
        );

        // A restore that fails reports the tool and its stderr.
        let dir = tempfile::tempdir().unwrap();
        let failing = dir.path().join("failing-restore");
        std::fs::write(
            &failing,
            "#!/bin/sh\ncat >/dev/null\necho 'iptables-restore: line 3 failed' >&2\nexit 1\n",
        )
        .unwrap();
        sh(&ns, &format!("chmod 755 {}", failing.display()));
        let mut broken = tools("nft");
        broken.v4.restore = failing.display().to_string();
        let mut other_lease = lease(false);
        other_lease.subnet = Some("198.18.9.0/24".parse().unwrap());
        let err = start(settings(false, false, broken), &other_lease, &previous_same())
            .await
            .err()
            .expect("a failing iptables-restore is fatal for masquerade rules");
        assert!(matches!(err, TrafficError::Masquerade { .. }), "{err:?}");
        assert!(err.to_string().contains("line 3 failed"), "{err}");
        // Nothing already programmed was lost.
        assert_listings(&ns, "nft", "after the failed restarts");
    });
}
