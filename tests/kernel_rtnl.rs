//! The real kernel seam (`RtNetlink`) against real kernel objects in throwaway network namespaces,
//! checked against the kernel's own listings (`ip -j`, `bridge -j`).

mod support;

#[path = "kernel_rtnl/apply.rs"]
mod apply;
#[path = "kernel_rtnl/events.rs"]
mod events;

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use flanneld::kernel::rtnl::RtNetlink;
use flanneld::kernel::{
    Addr, AddrFlags, Fdb, KernelEvent, Link, MacAddr, NUD_PERMANENT, Neigh, Netlink, Op, Route, VxlanSpec,
};
use futures::StreamExt;
use serde_json::Value;
use support::netns::{Netns, veth};

const MAC: MacAddr = MacAddr([0x0e, 0x42, 0x00, 0x00, 0x00, 0x02]);

/// Runs `f` with an `RtNetlink` opened inside `ns`, on a current-thread runtime of a thread that
/// lives in that namespace.
fn with_nl<T, F, Fut>(ns: &Netns, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce(RtNetlink) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let nl = RtNetlink::new().expect("opening rtnetlink");
            f(nl).await
        })
    })
}

/// Two namespaces joined by a veth pair `eth0`<->`eth0`: 192.0.2.1/24 and 192.0.2.2/24.
fn pair(tag: &str) -> (Netns, Netns) {
    let a = Netns::new(tag);
    let b = Netns::new(tag);
    veth(&a, "eth0", &b, "eth0");
    a.sh("ip addr add 192.0.2.1/24 dev eth0");
    b.sh("ip addr add 192.0.2.2/24 dev eth0");
    (a, b)
}

fn json(ns: &Netns, cmd: &str) -> Value {
    let out = ns.sh(cmd);
    serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out })
        .unwrap_or_else(|e| panic!("{cmd}: not JSON ({e}): {out}"))
}

fn ifindex(ns: &Netns, name: &str) -> u32 {
    let v = json(ns, &format!("ip -j link show {name}"));
    v[0]["ifindex"].as_u64().expect("ifindex") as u32
}

fn vxlan_spec(name: &str, vni: u32, local: &str, dev_index: u32) -> VxlanSpec {
    VxlanSpec {
        name: name.into(),
        vni,
        port: 0,
        local: local.parse().unwrap(),
        dev_index,
        learning: false,
        gbp: false,
        mtu: 1450,
        mac: MAC,
    }
}

fn peer_mac(i: u32) -> MacAddr {
    let b = i.to_be_bytes();
    MacAddr([0x0e, 0x99, b[0], b[1], b[2], b[3]])
}

/// The three entries flannel's vxlan backend installs for one remote subnet.
fn triple(index: u32, subnet: &str, mac: MacAddr, public_ip: &str) -> [Op; 3] {
    let net: ipnet::IpNet = subnet.parse().unwrap();
    let mut route = Route::unicast(net, Some(net.network()), Some(index));
    route.onlink = true;
    [
        Op::ReplaceNeigh(Neigh {
            index,
            ip: net.network(),
            mac: Some(mac),
            state: NUD_PERMANENT,
        }),
        Op::ReplaceFdb(Fdb {
            index,
            mac,
            dst: Some(public_ip.parse().unwrap()),
            self_flag: true,
            permanent: true,
        }),
        Op::ReplaceRoute(route),
    ]
}

fn all_ok(results: &[Result<(), flanneld::kernel::KernelError>]) {
    for (i, r) in results.iter().enumerate() {
        assert!(r.is_ok(), "op {i} failed: {r:?}");
    }
}
#[test]
fn netns_support_runs_code_inside_and_cleans_up() {
    let (a, _b) = pair("rt");
    let name = a.name.clone();
    let inner = a.run(|| std::fs::read_to_string("/proc/thread-self/net/dev").unwrap());
    assert!(inner.contains("eth0:"));
    let out = a.exec(&["ip", "-br", "addr", "show", "dev", "eth0"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("192.0.2.1/24"));
    assert!(a.try_sh("exit 3").is_err());
    drop(a);
    assert!(!std::path::Path::new(&format!("/run/netns/{name}")).exists());
}

#[test]
fn netns_is_deleted_when_the_test_panics_and_stale_ones_are_swept() {
    let mut name = String::new();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ns = Netns::new("rtpanic");
        name = ns.name.clone();
        ns.run(|| panic!("failing inside the namespace"));
    }));
    assert!(caught.is_err());
    assert!(!name.is_empty() && !std::path::Path::new(&format!("/run/netns/{name}")).exists());

    // A namespace left by a process that no longer runs (no pid is this large).
    let stale = "fl-rt-stale-4294967295-0";
    let st = std::process::Command::new("ip")
        .args(["netns", "add", stale])
        .status()
        .unwrap();
    assert!(st.success());
    support::netns::sweep_stale();
    assert!(!std::path::Path::new(&format!("/run/netns/{stale}")).exists());
}

#[test]
fn links_addrs_and_routes_match_ip_json() {
    let (a, _b) = pair("rt");
    a.sh("ip addr add 192.0.2.11/24 dev eth0"); // a secondary address
    a.sh("ip -6 addr add 2001:db8::1/64 dev eth0 nodad");
    a.sh("ip -6 addr add 2001:db8:5::1/64 dev eth0 nodad valid_lft 600 preferred_lft 0");
    a.sh("ip route add default via 192.0.2.2");
    a.sh("ip -6 route add default via 2001:db8::2");
    a.sh("ip route add 198.51.100.0/24 nexthop via 192.0.2.2 nexthop via 192.0.2.3");
    a.sh("ip route add 203.0.113.0/24 via 192.0.2.2 table 100");
    let (links, addrs, routes) = with_nl(&a, |nl| async move {
        let snap = nl.snapshot().await.expect("snapshot");
        (snap.links, snap.addrs, snap.routes)
    });

    let ip_links = json(&a, "ip -d -j link show");
    assert_eq!(links.len(), ip_links.as_array().unwrap().len());
    for l in ip_links.as_array().unwrap() {
        let ours = links
            .iter()
            .find(|x| x.index as u64 == l["ifindex"].as_u64().unwrap())
            .expect("link");
        assert_eq!(ours.name, l["ifname"].as_str().unwrap());
        assert_eq!(ours.mtu as u64, l["mtu"].as_u64().unwrap());
        let up = l["flags"].as_array().unwrap().iter().any(|f| f == "UP");
        assert_eq!(ours.up, up, "{}", ours.name);
        assert_eq!(
            ours.kind.as_deref(),
            l["linkinfo"]["info_kind"].as_str(),
            "{}",
            ours.name
        );
        if ours.name == "eth0" {
            assert_eq!(ours.mac.map(|m| m.to_string()).as_deref(), l["address"].as_str());
        }
    }

    let eth0 = ifindex(&a, "eth0");
    let mut expected = Vec::new();
    for l in json(&a, "ip -j addr show").as_array().unwrap() {
        for ai in l["addr_info"].as_array().unwrap() {
            let ip: IpAddr = ai["local"].as_str().unwrap().parse().unwrap();
            expected.push((
                l["ifindex"].as_u64().unwrap() as u32,
                ip,
                ai["prefixlen"].as_u64().unwrap() as u8,
            ));
        }
    }
    let mut got: Vec<_> = addrs.iter().map(|x| (x.index, x.ip, x.prefix_len)).collect();
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
    let flags_of = |ip: &str| {
        addrs
            .iter()
            .find(|x| x.ip == ip.parse::<IpAddr>().unwrap())
            .unwrap()
            .flags
    };
    assert_eq!(
        flags_of("192.0.2.1"),
        AddrFlags {
            permanent: true,
            deprecated: false,
            temporary: false
        }
    );
    assert!(
        flags_of("192.0.2.11").temporary,
        "IPv4 secondary shares the IFA_F_TEMPORARY bit"
    );
    assert!(flags_of("2001:db8::1").permanent);
    let dynamic = flags_of("2001:db8:5::1");
    assert!(dynamic.deprecated && !dynamic.permanent);

    // Main table only, both families: compare destinations and devices with ip's listing.
    let mut expected = Vec::new();
    for cmd in ["ip -4 -j route show table main", "ip -6 -j route show table main"] {
        for r in json(&a, cmd).as_array().unwrap() {
            let dst = r["dst"].as_str().unwrap().to_string();
            expected.push((dst, r["dev"].as_str().map(|d| d.to_string())));
        }
    }
    let name_of = |i: u32| links.iter().find(|l| l.index == i).map(|l| l.name.clone());
    let mut got: Vec<_> = routes
        .iter()
        .map(|r| {
            let dst = if r.dst.prefix_len() == 0 {
                "default".to_string()
            } else {
                r.dst.to_string()
            };
            (dst, r.oif.and_then(name_of))
        })
        .collect();
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
    assert!(routes.iter().all(|r| r.table == 254));
    let default4 = routes
        .iter()
        .find(|r| r.dst == "0.0.0.0/0".parse::<ipnet::IpNet>().unwrap())
        .unwrap();
    assert_eq!(
        (default4.oif, default4.gateway),
        (Some(eth0), Some("192.0.2.2".parse().unwrap()))
    );
    let multi = routes
        .iter()
        .find(|r| r.dst.to_string() == "198.51.100.0/24")
        .unwrap();
    assert!(multi.multipath && multi.oif.is_none());
    let connected = routes
        .iter()
        .find(|r| r.dst.to_string() == "192.0.2.0/24")
        .unwrap();
    assert_eq!((connected.protocol, connected.scope), (2, 253));
    assert_eq!(connected.prefsrc, Some("192.0.2.1".parse().unwrap()));
    assert!(
        routes
            .iter()
            .any(|r| r.dst.to_string() == "2001:db8::/64" && r.oif == Some(eth0))
    );
}

fn vxlan_details(ns: &Netns, name: &str) -> Value {
    json(ns, &format!("ip -d -j link show {name}"))[0].clone()
}

#[test]
fn create_vxlan_matches_ip_details() {
    let (a, _b) = pair("rt");
    let eth0 = ifindex(&a, "eth0");
    let spec = vxlan_spec("flannel.1", 1, "192.0.2.1", eth0);
    let mut gbp = vxlan_spec("flannel.2", 2, "192.0.2.1", eth0);
    gbp.port = 4789;
    gbp.gbp = true;
    gbp.learning = true;
    let (made, made_gbp, again, by_name, missing) = with_nl(&a, move |nl| async move {
        let made = nl.create_vxlan(&spec).await.expect("create flannel.1");
        let made_gbp = nl.create_vxlan(&gbp).await.expect("create flannel.2");
        let again = nl.create_vxlan(&spec).await;
        let by_name = nl.link_by_name("flannel.1").await.expect("lookup");
        let missing = nl
            .link_by_name("flannel.404")
            .await
            .expect("lookup of a missing link");
        (made, made_gbp, again, by_name, missing)
    });
    let d = vxlan_details(&a, "flannel.1");
    let info = &d["linkinfo"]["info_data"];
    assert_eq!(d["linkinfo"]["info_kind"], "vxlan");
    assert_eq!(info["id"], 1);
    assert_eq!(info["local"], "192.0.2.1");
    assert_eq!(info["link"], "eth0");
    assert_eq!(info["port"], 8472, "kernel default port when none is sent");
    assert_eq!(info["learning"], false);
    assert_eq!(info["ttl"], 0);
    assert!(info.get("proxy").is_none() && info.get("l2miss").is_none() && info.get("l3miss").is_none());
    assert_eq!(info["udp_zero_csum6_tx"], false);
    assert_eq!(d["mtu"], 1450);
    assert_eq!(d["address"], MAC.to_string());
    assert_eq!(a.sh("cat /sys/class/net/flannel.1/tx_queue_len").trim(), "0");

    assert_eq!(made.name, "flannel.1");
    assert_eq!(made.index, d["ifindex"].as_u64().unwrap() as u32);
    assert_eq!((made.mtu, made.mac, made.up), (1450, Some(MAC), false));
    let vx = made.vxlan.clone().expect("vxlan info read back");
    assert_eq!(
        (vx.vni, vx.port, vx.dev_index, vx.learning, vx.gbp),
        (1, 8472, eth0, false, false)
    );
    assert_eq!(vx.local, Some("192.0.2.1".parse().unwrap()));
    assert_eq!(by_name, Some(made));
    assert_eq!(missing, None);

    let d2 = vxlan_details(&a, "flannel.2");
    assert_eq!(d2["linkinfo"]["info_data"]["port"], 4789);
    assert_eq!(d2["linkinfo"]["info_data"]["learning"], true);
    assert_eq!(d2["linkinfo"]["info_data"]["gbp"], true);
    let vx2 = made_gbp.vxlan.expect("vxlan info");
    assert!(vx2.gbp && vx2.learning && vx2.port == 4789);

    let err = again.expect_err("creating an existing device fails");
    assert!(err.is_exists(), "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with("creating vxlan device flannel.1: File exists"),
        "{text}"
    );
    assert_eq!(
        vxlan_details(&a, "flannel.1")["ifindex"],
        d["ifindex"],
        "existing device untouched"
    );
}

#[test]
fn device_and_address_changes_report_clear_errors() {
    let (a, _b) = pair("rt");
    let eth0 = ifindex(&a, "eth0");
    let spec = vxlan_spec("flannel.1", 1, "192.0.2.1", eth0);
    let out = with_nl(&a, move |nl| async move {
        let link = nl.create_vxlan(&spec).await.unwrap();
        let own = Addr {
            index: link.index,
            ip: "198.18.1.0".parse().unwrap(),
            prefix_len: 32,
            flags: AddrFlags::default(),
        };
        nl.add_addr(&own).await.expect("add address");
        let dup = nl.add_addr(&own).await;
        nl.set_link_mtu(link.index, 1400).await.expect("mtu");
        nl.set_link_up(link.index).await.expect("up");
        let after = nl.link_by_name("flannel.1").await.unwrap().unwrap();
        let on_missing = nl
            .add_addr(&Addr {
                index: 9999,
                ..own.clone()
            })
            .await;
        nl.del_addr(&own).await.expect("del address");
        let del_again = nl.del_addr(&own).await;
        let bad_dev = nl
            .create_vxlan(&vxlan_spec("flannel.9", 9, "192.0.2.1", 9999))
            .await;
        nl.delete_link(link.index).await.expect("delete");
        let delete_again = nl.delete_link(link.index).await;
        let gone = nl.link_by_name("flannel.1").await.unwrap();
        (dup, after, on_missing, del_again, bad_dev, delete_again, gone)
    });
    let (dup, after, on_missing, del_again, bad_dev, delete_again, gone): (_, Link, _, _, _, _, _) = out;
    let dup = dup.expect_err("duplicate address");
    assert!(dup.is_exists(), "{dup}");
    assert!(
        dup.to_string()
            .starts_with("adding address 198.18.1.0/32 on link #"),
        "{dup}"
    );
    assert_eq!((after.mtu, after.up), (1400, true));
    let e = on_missing.expect_err("no such link");
    assert_eq!(e.errno(), Some(libc::ENODEV), "{e}");
    assert!(del_again.is_err());
    let e = bad_dev.expect_err("vxlan on a missing underlay device");
    assert!(
        e.to_string().starts_with("creating vxlan device flannel.9: "),
        "{e}"
    );
    assert!(delete_again.expect_err("already deleted").is_not_found());
    assert_eq!(gone, None);
    assert!(
        a.try_sh("ip link show flannel.9").is_err(),
        "nothing half-created"
    );
}

#[test]
fn route_get_reports_interface_gateway_and_source() {
    let (a, _b) = pair("rt");
    let eth0 = ifindex(&a, "eth0");
    let direct = with_nl(&a, |nl| async move {
        nl.route_get("192.0.2.2".parse().unwrap()).await
    });
    let direct = direct.expect("direct route");
    assert_eq!(direct.len(), 1);
    assert_eq!((direct[0].oif, direct[0].gateway), (Some(eth0), None));
    assert_eq!(direct[0].prefsrc, Some("192.0.2.1".parse().unwrap()));
    let unreachable = with_nl(&a, |nl| async move {
        nl.route_get("203.0.113.5".parse().unwrap()).await
    });
    let err = unreachable.expect_err("no default route");
    assert_eq!(err.errno(), Some(libc::ENETUNREACH), "{err}");
    assert!(
        err.to_string().starts_with("looking up route to 203.0.113.5: "),
        "{err}"
    );
    a.sh("ip route add default via 192.0.2.2");
    let via = with_nl(&a, |nl| async move {
        nl.route_get("203.0.113.5".parse().unwrap()).await
    })
    .unwrap();
    assert_eq!(
        (via[0].oif, via[0].gateway),
        (Some(eth0), Some("192.0.2.2".parse().unwrap()))
    );
}
