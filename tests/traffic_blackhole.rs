//! `--ip-blackhole-route` against the real kernel, in a network namespace (spec 10.3): the
//! blackhole route for the own subnet is installed at start and put back by the upkeep when
//! deleted; for IPv4 it steps aside while a local bridge route serves the subnet.

mod support;
mod traffic_common;

use std::sync::Arc;

use flanneld::kernel::Netlink;
use flanneld::kernel::rtnl::RtNetlink;
use flanneld::subnet::env_file::PreviousSubnets;
use flanneld::traffic::{Tools, TrafficManager};
use support::netns::Netns;
use traffic_common::*;

fn blackholes(ns: &str) -> String {
    sh(
        ns,
        "ip route show type blackhole; ip -6 route show type blackhole",
    )
}

#[test]
fn blackhole_route_is_installed_kept_and_yields_to_a_bridge_route() {
    let ns = Netns::new("trf-bh");
    in_ns(&ns, |ns| async move {
        let netlink: Arc<dyn Netlink> = Arc::new(RtNetlink::new().expect("netlink socket"));
        let mut s = settings(true, true, Tools::variant(Some("nft")));
        s.choice.masquerade = false;
        s.choice.forward = false;
        s.blackhole = true;
        let mut manager = TrafficManager::start(s, &lease(true), &PreviousSubnets::default(), netlink)
            .await
            .unwrap();
        let listed = blackholes(&ns);
        assert!(listed.contains("blackhole 198.18.1.0/24"), "{listed}");
        assert!(listed.contains("blackhole 2001:db8:0:1::/64"), "{listed}");

        sh(&ns, "ip route del blackhole 198.18.1.0/24");
        manager.resync().await;
        assert!(
            blackholes(&ns).contains("blackhole 198.18.1.0/24"),
            "put back by the upkeep"
        );

        // A bridge for the subnet appears (as the CNI plugin creates cni0): the IPv4 blackhole
        // must not shadow it.
        sh(
            &ns,
            "ip link add cni0 type bridge && ip addr add 198.18.1.1/24 dev cni0 && ip link set cni0 up",
        );
        manager.resync().await;
        let listed = blackholes(&ns);
        assert!(
            !listed.contains("198.18.1.0/24"),
            "withdrawn for the bridge route: {listed}"
        );
        assert!(listed.contains("blackhole 2001:db8:0:1::/64"), "{listed}");
        let route = sh(&ns, "ip route get 198.18.1.7");
        assert!(route.contains("dev cni0"), "{route}");
        manager.resync().await;
        assert!(
            !blackholes(&ns).contains("198.18.1.0/24"),
            "not re-added while the bridge route exists"
        );
    });
}

/// Polls `cond` every 20 ms for up to 10 s.
fn eventually(cond: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

#[test]
fn the_blackhole_follows_route_events_not_only_the_resync_period() {
    let ns = Netns::new("trf-bhev");
    in_ns(&ns, |ns| async move {
        let netlink: Arc<dyn Netlink> = Arc::new(RtNetlink::new().expect("netlink socket"));
        let mut s = settings(true, false, Tools::variant(Some("nft")));
        s.choice.masquerade = false;
        s.choice.forward = false;
        s.blackhole = true;
        // A period far longer than the test: only route events can explain a change.
        s.resync = std::time::Duration::from_secs(3600);
        let manager = TrafficManager::start(s, &lease(false), &PreviousSubnets::default(), netlink)
            .await
            .unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let upkeep = tokio::spawn(manager.run(shutdown.clone()));
        let ns2 = ns.clone();
        let withdrawn = tokio::task::spawn_blocking(move || {
            sh(
                &ns2,
                "ip link add cni0 type bridge && ip addr add 198.18.1.1/24 dev cni0 && ip link set cni0 up",
            );
            eventually(|| !blackholes(&ns2).contains("198.18.1.0/24"))
        })
        .await
        .unwrap();
        assert!(
            withdrawn,
            "the blackhole steps aside when cni0's route appears: {}",
            blackholes(&ns)
        );
        let ns2 = ns.clone();
        let back = tokio::task::spawn_blocking(move || {
            sh(&ns2, "ip link del cni0");
            eventually(|| blackholes(&ns2).contains("blackhole 198.18.1.0/24"))
        })
        .await
        .unwrap();
        assert!(back, "the blackhole returns when cni0 goes: {}", blackholes(&ns));
        shutdown.cancel();
        upkeep.await.unwrap();
    });
}
