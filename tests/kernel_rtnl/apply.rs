//! Applying route, neighbour and FDB changes: what the kernel then lists, idempotence, deletion,
//! per-op errors, IPv6, and a bulk batch.

use super::*;

#[test]
fn ipv6_vxlan_addresses_and_routes() {
    let (a, b) = pair("rt6");
    a.sh("ip -6 addr add 2001:db8::1/64 dev eth0 nodad");
    b.sh("ip -6 addr add 2001:db8::2/64 dev eth0 nodad");
    let eth0 = ifindex(&a, "eth0");
    let spec = vxlan_spec("flannel-v6.1", 1, "2001:db8::1", eth0);
    let (link, results, addrs, routes, fdbs) = with_nl(&a, move |nl| async move {
        let link = nl.create_vxlan(&spec).await.expect("create v6 device");
        nl.set_link_up(link.index).await.expect("up");
        let own = Addr {
            index: link.index,
            ip: "2001:db8:ff::".parse().unwrap(),
            prefix_len: 128,
            flags: AddrFlags::default(),
        };
        nl.add_addr(&own).await.expect("add v6 address");
        let results = nl
            .apply(&triple(
                link.index,
                "2001:db8:ff:1::/64",
                peer_mac(1),
                "2001:db8::2",
            ))
            .await;
        let addrs = nl.addrs().await.expect("addrs");
        let routes = nl.routes().await.expect("routes");
        let fdbs = nl.fdbs(link.index).await.expect("fdbs");
        (link, results, addrs, routes, fdbs)
    });
    all_ok(&results);
    assert_eq!(
        vxlan_details(&a, "flannel-v6.1")["linkinfo"]["info_data"]["local6"],
        "2001:db8::1"
    );
    assert_eq!(link.vxlan.unwrap().local, Some("2001:db8::1".parse().unwrap()));
    assert!(
        addrs
            .iter()
            .any(|x| x.index == link.index && x.ip == "2001:db8:ff::".parse::<IpAddr>().unwrap())
    );
    let r = json(&a, "ip -6 -j route show 2001:db8:ff:1::/64");
    assert_eq!(r[0]["gateway"], "2001:db8:ff:1::");
    assert_eq!(r[0]["dev"], "flannel-v6.1");
    assert!(r[0]["flags"].as_array().unwrap().iter().any(|f| f == "onlink"));
    let ours = routes
        .iter()
        .find(|x| x.dst.to_string() == "2001:db8:ff:1::/64")
        .expect("route read back");
    assert!(ours.onlink && ours.oif == Some(link.index));
    let n = json(&a, "ip -6 -j neigh show dev flannel-v6.1");
    assert_eq!(n[0]["dst"], "2001:db8:ff:1::");
    assert_eq!(n[0]["lladdr"], peer_mac(1).to_string());
    assert_eq!(
        fdbs.iter().find(|f| f.mac == peer_mac(1)).unwrap().dst,
        Some("2001:db8::2".parse().unwrap())
    );
}

#[test]
fn apply_installs_route_neighbour_and_fdb_idempotently_and_deletes_them() {
    let (a, _b) = pair("rt");
    let eth0 = ifindex(&a, "eth0");
    let spec = vxlan_spec("flannel.1", 1, "192.0.2.1", eth0);
    let dev = with_nl(&a, move |nl| async move {
        let link = nl.create_vxlan(&spec).await.expect("create");
        nl.set_link_up(link.index).await.expect("up");
        link.index
    });
    let ops = triple(dev, "198.18.2.0/24", peer_mac(2), "192.0.2.2");
    let ops2 = ops.clone();
    let (first, second, routes, neighs, fdbs) = with_nl(&a, move |nl| async move {
        let first = nl.apply(&ops2).await;
        let second = nl.apply(&ops2).await;
        (
            first,
            second,
            nl.routes().await.unwrap(),
            nl.neighs(dev).await.unwrap(),
            nl.fdbs(dev).await.unwrap(),
        )
    });
    all_ok(&first);
    all_ok(&second);

    let r = json(&a, "ip -d -j route show 198.18.2.0/24");
    assert_eq!(
        r.as_array().unwrap().len(),
        1,
        "replace twice leaves one route: {r}"
    );
    assert_eq!(r[0]["gateway"], "198.18.2.0");
    assert_eq!(r[0]["dev"], "flannel.1");
    assert_eq!(r[0]["protocol"], "70");
    assert!(r[0]["flags"].as_array().unwrap().iter().any(|f| f == "onlink"));
    let n = json(&a, "ip -j neigh show dev flannel.1");
    assert_eq!(n.as_array().unwrap().len(), 1);
    assert_eq!(n[0]["dst"], "198.18.2.0");
    assert_eq!(n[0]["lladdr"], peer_mac(2).to_string());
    assert_eq!(n[0]["state"][0], "PERMANENT");
    let f = json(&a, "bridge -j fdb show dev flannel.1");
    let entry = f
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["mac"] == peer_mac(2).to_string())
        .expect("fdb entry");
    assert_eq!(entry["dst"], "192.0.2.2");
    assert_eq!(entry["state"], "permanent");
    assert!(entry["flags"].as_array().unwrap().iter().any(|x| x == "self"));

    let Op::ReplaceRoute(want_route) = &ops[2] else {
        unreachable!()
    };
    assert!(
        routes.contains(want_route),
        "route read back as applied: {routes:?}"
    );
    let Op::ReplaceNeigh(want_neigh) = &ops[0] else {
        unreachable!()
    };
    let v4: Vec<_> = neighs.into_iter().filter(|n| n.ip.is_ipv4()).collect();
    assert_eq!(v4, vec![want_neigh.clone()]);
    let Op::ReplaceFdb(want_fdb) = &ops[1] else {
        unreachable!()
    };
    assert!(fdbs.contains(want_fdb), "{fdbs:?}");

    let deletes: Vec<Op> = ops
        .iter()
        .rev()
        .map(|op| match op.clone() {
            Op::ReplaceRoute(r) => Op::DeleteRoute(r),
            Op::ReplaceNeigh(n) => Op::DeleteNeigh(n),
            Op::ReplaceFdb(f) => Op::DeleteFdb(f),
            other => other,
        })
        .collect();
    let (gone, again) = with_nl(&a, move |nl| async move {
        (nl.apply(&deletes).await, nl.apply(&deletes).await)
    });
    all_ok(&gone);
    assert_eq!(
        json(&a, "ip -j route show 198.18.2.0/24")
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        json(&a, "ip -j neigh show dev flannel.1")
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert!(
        !a.sh("bridge fdb show dev flannel.1")
            .contains(&peer_mac(2).to_string())
    );
    for (i, r) in again.iter().enumerate() {
        let err = r.as_ref().expect_err("deleting a missing object fails");
        assert!(err.is_not_found(), "op {i}: {err}");
    }
}

#[test]
fn a_bad_op_fails_alone_with_a_clear_error() {
    let (a, _b) = pair("rt");
    let eth0 = ifindex(&a, "eth0");
    a.sh("ip route add 198.18.7.0/24 via 192.0.2.2");
    let good = Route::unicast(
        "198.18.8.0/24".parse().unwrap(),
        Some("192.0.2.2".parse().unwrap()),
        Some(eth0),
    );
    // No onlink and a gateway outside every connected network: the kernel refuses it.
    let bad = Route::unicast(
        "198.18.9.0/24".parse().unwrap(),
        Some("203.0.113.9".parse().unwrap()),
        Some(eth0),
    );
    let ops = vec![
        Op::ReplaceRoute(good.clone()),
        Op::ReplaceRoute(bad),
        Op::ReplaceRoute(good),
    ];
    let results = with_nl(&a, move |nl| async move { nl.apply(&ops).await });
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    let err = results[1].as_ref().expect_err("unreachable gateway");
    assert_eq!(err.errno(), Some(libc::ENETUNREACH), "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with("replacing route 198.18.9.0/24 via 203.0.113.9 dev #"),
        "{text}"
    );
    assert!(text.contains("Network is unreachable"), "{text}");
    let table = a.sh("ip route show");
    assert!(
        table.contains("198.18.7.0/24 via 192.0.2.2") && table.contains("198.18.8.0/24"),
        "{table}"
    );
}

#[test]
fn apply_of_a_thousand_triples_installs_them_all() {
    let (a, _b) = pair("rtbulk");
    let eth0 = ifindex(&a, "eth0");
    let spec = vxlan_spec("flannel.1", 1, "192.0.2.1", eth0);
    const N: u32 = 1000;
    let (results, routes, neighs, fdbs) = with_nl(&a, move |nl| async move {
        let link = nl.create_vxlan(&spec).await.unwrap();
        nl.set_link_up(link.index).await.unwrap();
        let mut ops = Vec::new();
        for i in 0..N {
            // 198.18.0.0/15 holds 2048 /26 subnets.
            let base = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + i * 64;
            let subnet = format!("{}/26", std::net::Ipv4Addr::from(base));
            let public_ip = format!("203.0.113.{}", i % 250 + 1);
            ops.extend(triple(link.index, &subnet, peer_mac(i), &public_ip));
        }
        let results = nl.apply(&ops).await;
        // Bringing the device up also adds IPv6 link-local entries: count the IPv4 ones.
        let routes = nl.routes().await.unwrap();
        let routes = routes
            .iter()
            .filter(|r| r.oif == Some(link.index) && r.dst.addr().is_ipv4())
            .count();
        let neighs = nl
            .neighs(link.index)
            .await
            .unwrap()
            .into_iter()
            .filter(|n| n.ip.is_ipv4())
            .count();
        let fdbs = nl
            .fdbs(link.index)
            .await
            .unwrap()
            .into_iter()
            .filter(|f| f.dst.is_some())
            .count();
        (results, routes, neighs, fdbs)
    });
    assert_eq!(results.len(), 3 * N as usize);
    all_ok(&results);
    assert_eq!((routes, neighs, fdbs), (N as usize, N as usize, N as usize));
    let count = |cmd: &str| a.sh(cmd).lines().count();
    assert_eq!(count("ip route show dev flannel.1"), N as usize);
    assert_eq!(count("ip neigh show dev flannel.1 nud permanent"), N as usize);
    assert_eq!(count("bridge fdb show dev flannel.1 | grep ' dst '"), N as usize);
}
