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
