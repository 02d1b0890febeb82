//! Interface selection against the real kernel: two namespaces joined by two veth pairs, the
//! node side read through `RtNetlink` (snapshot and `ip route get`).

mod support;

use std::net::{Ipv4Addr, Ipv6Addr};

use flanneld::backend::ExternalInterface;
use flanneld::iface::{IfaceError, IfaceRequest, discover};
use flanneld::kernel::rtnl::RtNetlink;
use support::netns::{Netns, veth};

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().expect("test IPv4")
}

fn ip6(s: &str) -> Ipv6Addr {
    s.parse().expect("test IPv6")
}

/// Runs `discover` for each request inside `ns`, on one `RtNetlink` opened there.
fn discover_in(ns: &Netns, reqs: Vec<IfaceRequest>) -> Vec<Result<ExternalInterface, IfaceError>> {
    ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async move {
            let k = RtNetlink::new().expect("opening rtnetlink in the node namespace");
            let mut out = Vec::with_capacity(reqs.len());
            for req in &reqs {
                out.push(discover(req, &k).await);
            }
            out
        })
    })
}

#[test]
fn selection_reads_the_real_kernel() {
    let ipv6 = std::path::Path::new("/proc/sys/net/ipv6").exists();
    if !ipv6 {
        support::skip(
            "selection_reads_the_real_kernel (its IPv6 cases)",
            "this kernel has no IPv6 (/proc/sys/net/ipv6 is missing)",
        );
    }
    let node = Netns::new("iface");
    let peer = Netns::new("iface");
    veth(&node, "ext0", &peer, "gw0");
    veth(&node, "lan0", &peer, "lan-gw0");
    node.sh(
        "ip addr add 192.0.2.1/24 dev ext0 && ip addr add 192.0.2.5/24 dev ext0 \
         && ip addr add 198.51.100.1/24 dev lan0 && ip link set lan0 mtu 1400 \
         && ip route add default via 192.0.2.2",
    );
    peer.sh("ip addr add 192.0.2.2/24 dev gw0 && ip addr add 198.51.100.2/24 dev lan-gw0");
    if ipv6 {
        node.sh("ip -6 addr add 2001:db8::1/64 dev ext0 nodad && ip -6 route add default via 2001:db8::2 dev ext0");
        peer.sh("ip -6 addr add 2001:db8::2/64 dev gw0 nodad");
    }

    let v4 = IfaceRequest {
        ipv4: true,
        ..IfaceRequest::default()
    };
    let mut reqs = vec![
        // 0: default route.
        v4.clone(),
        // 1: regex on addresses.
        IfaceRequest {
            iface_regex: vec![r"^198\.51\.".into()],
            ..v4.clone()
        },
        // 2: ip route get, through the peer's directly connected network.
        IfaceRequest {
            iface_can_reach: Some("198.51.100.2".parse().expect("ip")),
            ..v4.clone()
        },
        // 3: ip route get, through the default route.
        IfaceRequest {
            iface_can_reach: Some("203.0.113.9".parse().expect("ip")),
            ..v4.clone()
        },
        // 4: quirk 9, --public-ip alone selects its owner.
        IfaceRequest {
            public_ip: Some(ip4("192.0.2.5")),
            ..v4.clone()
        },
        // 5: nothing matches.
        IfaceRequest {
            iface: vec!["nope0".into()],
            ..v4.clone()
        },
    ];
    if ipv6 {
        // 6: dual stack over the default routes.
        reqs.push(IfaceRequest {
            ipv6: true,
            ..v4.clone()
        });
    }
    let results = discover_in(&node, reqs);

    let ext = results[0].as_ref().expect("default route");
    assert_eq!(
        (ext.name.as_str(), ext.iface_addr, ext.ext_addr),
        ("ext0", Some(ip4("192.0.2.1")), Some(ip4("192.0.2.1")))
    );
    assert_eq!(ext.mtu, 1500);
    let ext0_index = ext.index;

    let ext = results[1].as_ref().expect("regex");
    assert_eq!(
        (ext.name.as_str(), ext.iface_addr, ext.mtu),
        ("lan0", Some(ip4("198.51.100.1")), 1400)
    );
    assert_ne!(ext.index, ext0_index);

    let ext = results[2].as_ref().expect("can-reach on link");
    assert_eq!(
        (ext.name.as_str(), ext.iface_addr),
        ("lan0", Some(ip4("198.51.100.1")))
    );

    let ext = results[3].as_ref().expect("can-reach via gateway");
    assert_eq!(
        (ext.name.as_str(), ext.iface_addr),
        ("ext0", Some(ip4("192.0.2.1")))
    );

    let ext = results[4].as_ref().expect("public ip owner");
    assert_eq!(
        (ext.name.as_str(), ext.iface_addr, ext.ext_addr),
        ("ext0", Some(ip4("192.0.2.5")), Some(ip4("192.0.2.5")))
    );

    let err = results[5].as_ref().expect_err("no such interface").to_string();
    assert!(
        err.contains("--iface \"nope0\": no interface is named \"nope0\""),
        "{err}"
    );
    assert!(err.contains("ext0:[192.0.2.1 192.0.2.5]"), "{err}");
    assert!(err.contains("lan0:[198.51.100.1]"), "{err}");
    assert!(err.contains("lo:[]"), "{err}");

    if ipv6 {
        let ext = results[6].as_ref().expect("dual stack");
        assert_eq!(ext.name, "ext0");
        assert_eq!(
            (ext.iface_addr, ext.iface_v6_addr),
            (Some(ip4("192.0.2.1")), Some(ip6("2001:db8::1")))
        );
        assert_eq!(ext.ext_v6_addr, Some(ip6("2001:db8::1")));
    }
}
