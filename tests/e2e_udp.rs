//! End to end, udp backend (issue 9, spec 9.3, 3.2, 4.1): real flanneld daemons in network
//! namespaces with a real etcd, plus an interop peer that behaves like upstream's proxy
//! (tests/support/udp_peer.rs), in a cluster whose net-conf has no `Backend` key (so it is udp).
//! Checks every pod pair pings across the mixed cluster; the lease value, subnet.env, flannel0
//! (TUN, address, MTU, up) and the `<Network> dev flannel0` route are exactly as specified; a
//! destination no lease covers gets an ICMP net unreachable that reaches the pinging pod; a peer
//! whose lease goes away stops receiving datagrams within 5 s; injected bad datagrams reach no pod
//! and no node while the daemon stays up and counts them; deleted device, address and route come
//! back; a restart deletes nothing.

mod e2e_common;
mod support;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use e2e_common::*;
use support::testbed::{ETCD_PREFIX, Testbed};
use support::udp_peer::InteropPeer;

const PORT: u16 = 8285;
const MTU: u32 = 1472;
/// The interop peer's subnet, put into etcd before any daemon starts so none picks it.
const PEER_SUBNET: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 200, 0), 24);

/// A testbed whose net-conf has no `Backend` key: upstream's default is udp (spec 2, quirk 3).
fn udp_testbed(tag: &str, nodes: usize) -> Testbed {
    let tb = testbed(tag, nodes, "udp");
    tb.put_config(&format!(r#"{{"Network": "{NETWORK}"}}"#));
    tb
}

/// Registers the interop peer on node `i` (lease, subnet.env) and starts it; the caller then
/// gives it routes with `route_interop`.
fn start_interop(tb: &mut Testbed, i: usize) -> InteropPeer {
    let ip = tb.nodes[i].ip;
    let key = format!("{ETCD_PREFIX}/subnets/{}-{}", PEER_SUBNET.0, PEER_SUBNET.1);
    tb.etcdctl(&[
        "put",
        &key,
        &format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null}}"#),
    ]);
    let first = Ipv4Addr::from(u32::from(PEER_SUBNET.0) + 1);
    std::fs::write(
        tb.nodes[i].subnet_file(),
        format!(
            "FLANNEL_NETWORK={NETWORK}\nFLANNEL_SUBNET={first}/24\nFLANNEL_MTU={MTU}\nFLANNEL_IPMASQ=false\n"
        ),
    )
    .unwrap();
    InteropPeer::start(&tb.nodes[i].ns, ip, PEER_SUBNET, NETWORK, PORT, MTU as usize)
}

/// The interop peer's routes: every other lease in etcd (what upstream's lease events give it).
fn route_interop(tb: &Testbed, peer: &InteropPeer, peer_node: usize) {
    let own = tb.nodes[peer_node].ip;
    peer.set_routes(
        leases(tb)
            .into_iter()
            .filter(|l| l.public_ip != own)
            .map(|l| ((l.network, l.prefix_len), l.public_ip))
            .collect(),
    );
}

/// What differs on node `i` from spec 9.3: lease value, subnet.env, flannel0, its address and
/// MTU, and the flannel routes.
fn udp_problems(tb: &Testbed, i: usize) -> Vec<String> {
    let mut problems = Vec::new();
    let own = lease_of(tb, i);
    let want_value = format!(r#"{{"PublicIP":"{}","PublicIPv6":null}}"#, tb.nodes[i].ip);
    if own.value != want_value {
        problems.push(format!("lease value {:?}, want {want_value:?}", own.value));
    }
    let env = std::fs::read_to_string(tb.nodes[i].subnet_file()).unwrap_or_default();
    if env != subnet_env_text(&own, MTU) {
        problems.push(format!(
            "subnet.env {env:?}, want {:?}",
            subnet_env_text(&own, MTU)
        ));
    }
    let link = tb.ip_json(i, "-d link show flannel0");
    let link = &link[0];
    if link["linkinfo"]["info_kind"] != "tun" {
        problems.push(format!("flannel0 is not a TUN device: {link}"));
    }
    if link["mtu"] != MTU {
        problems.push(format!("flannel0 MTU {}, want {MTU}", link["mtu"]));
    }
    let flags: Vec<&str> = link["flags"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f.as_str()).collect())
        .unwrap_or_default();
    if !flags.contains(&"UP") || flags.contains(&"BROADCAST") {
        problems.push(format!(
            "flannel0 flags {flags:?}, want UP and a point-to-point TUN"
        ));
    }
    let info = &link["linkinfo"]["info_data"];
    if info["type"] != "tun" || info["pi"] != false {
        problems.push(format!("flannel0 is not IFF_TUN|IFF_NO_PI: {info}"));
    }
    let addrs = tb.ip_json(i, "-4 addr show dev flannel0");
    let got: Vec<String> = addrs[0]["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| format!("{}/{}", x["local"].as_str().unwrap_or(""), x["prefixlen"]))
                .collect()
        })
        .unwrap_or_default();
    if got != vec![format!("{}/32", own.network)] {
        problems.push(format!("flannel0 addresses {got:?}, want [{}/32]", own.network));
    }
    let routes = tb.flannel_routes(i);
    // `ip route show ... proto 70` leaves the protocol out; scope universe is not printed either.
    let want = vec![format!("{NETWORK} dev flannel0")];
    if routes != want {
        problems.push(format!("flannel routes {routes:?}, want {want:?}"));
    }
    problems
        .into_iter()
        .map(|p| format!("{}: {p}", tb.nodes[i].name))
        .collect()
}

fn metrics(tb: &Testbed, i: usize) -> String {
    tb.nodes[i]
        .ns
        .sh(&format!("curl -s -m 2 http://127.0.0.1:{HEALTHZ_PORT}/metrics"))
}

fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn dropped(text: &str, reason: &str) -> u64 {
    counter(text, &format!("flannel_udp_dropped_total{{reason=\"{reason}\"}}"))
}

#[test]
fn udp_mixed_cluster_matches_the_spec_and_every_pod_pings_every_other() {
    let Some(_serial) = serial_or_skip("udp_mixed_cluster") else {
        return;
    };
    let mut tb = udp_testbed("e2eudp", 3);
    let peer = start_interop(&mut tb, 2);
    start(&mut tb, &[0, 1]);
    route_interop(&tb, &peer, 2);
    add_pods(&mut tb, &[0, 1, 2], "e2eudp");

    let problems: Vec<String> = [0, 1].iter().flat_map(|&i| udp_problems(&tb, i)).collect();
    assert!(problems.is_empty(), "{problems:#?}\n{}", logs(&tb, &[0, 1]));
    assert!(tb.nodes[0].log().contains("udp"), "the default backend is udp");

    let failed = ping_matrix(&tb, &[0, 1, 2]);
    assert!(
        failed.is_empty(),
        "pods could not ping: {failed:?}\n{}",
        logs(&tb, &[0, 1])
    );
    assert!(peer.rx.load(Ordering::SeqCst) > 0 && peer.tx.load(Ordering::SeqCst) > 0);

    // No lease covers 198.18.250.0/24: the pod hears "Destination Net Unreachable" (spec 9.3;
    // from an address the kernel does not drop as a martian).
    let pod = tb.nodes[0].pod.as_ref().unwrap();
    let out = pod.exec(&["ping", "-c", "1", "-W", "2", "198.18.250.1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Destination Net Unreachable"),
        "ping to an uncovered address: {text}"
    );
    println!(
        "ping to an uncovered destination: {}",
        text.lines().nth(1).unwrap_or("")
    );
    assert!(counter(&metrics(&tb, 0), "flannel_udp_icmp_unreachable_sent_total") >= 1);

    // The interop peer leaves: its lease goes away, and within 5 s no more datagrams reach it.
    let to_peer = tb.nodes[2].pod_ip().unwrap();
    let initial = peer.rx.load(Ordering::SeqCst);
    let pinger = tb.pinger_count(0, to_peer, "0.05", 300);
    let flowing = time_until(Duration::from_secs(5), || {
        peer.rx.load(Ordering::SeqCst) > initial
    });
    assert!(flowing.is_some(), "the peer receives the pings before it leaves");
    let before = peer.rx.load(Ordering::SeqCst);
    let key = format!("{ETCD_PREFIX}/subnets/{}-{}", PEER_SUBNET.0, PEER_SUBNET.1);
    let gone_at = Instant::now();
    tb.etcdctl(&["del", &key]);
    let mut last = (peer.rx.load(Ordering::SeqCst), Instant::now());
    while gone_at.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(20));
        let now = peer.rx.load(Ordering::SeqCst);
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    drop(pinger);
    let stopped_after = last.1.saturating_duration_since(gone_at);
    println!(
        "departed interop peer: datagrams stopped {stopped_after:?} after its lease was deleted ({before} before, {} at the end)",
        last.0
    );
    assert!(
        stopped_after < Duration::from_secs(5),
        "datagrams kept reaching the departed peer for {stopped_after:?}"
    );
}

/// One datagram from `ns` (bound to `from`) to node `to`'s udp port.
fn inject(ns: &support::netns::Netns, from: Ipv4Addr, to: Ipv4Addr, payloads: Vec<Vec<u8>>) {
    ns.run(move || {
        let s = UdpSocket::bind(SocketAddrV4::new(from, 0)).expect("binding the injector");
        for p in payloads {
            s.send_to(&p, SocketAddrV4::new(to, PORT))
                .expect("sending an injected datagram");
        }
    });
}

fn checksum(data: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for w in data.chunks(2) {
        s += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// An ICMP echo request from `src` to `dst` with `ttl`, checksums right.
fn echo(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&28u16.to_be_bytes());
    p[8] = ttl;
    p[9] = 1;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20] = 8;
    let c = checksum(&p[20..]);
    p[22..24].copy_from_slice(&c.to_be_bytes());
    p
}

/// Echo requests a namespace received (`Icmp: InEchos`): every injected inner packet is one.
fn echo_requests_received(ns: &support::netns::Netns) -> u64 {
    let snmp = ns.sh("cat /proc/net/snmp");
    let mut lines = snmp.lines().filter(|l| l.starts_with("Icmp:"));
    let (names, values) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "InEchos")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn tun_rx_packets(tb: &Testbed, i: usize) -> u64 {
    tb.ip_json(i, "-s link show flannel0")[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn udp_bad_datagrams_are_dropped_counted_and_harmless_and_owned_objects_are_repaired() {
    let Some(_serial) = serial_or_skip("udp_bad_datagrams") else {
        return;
    };
    let mut tb = udp_testbed("e2eudpbad", 3);
    let peer = start_interop(&mut tb, 2);
    start(&mut tb, &[0, 1]);
    route_interop(&tb, &peer, 2);
    add_pods(&mut tb, &[0, 1], "e2eudpbad");
    assert!(ping_matrix(&tb, &[0, 1]).is_empty(), "{}", logs(&tb, &[0, 1]));

    let own = lease_of(&tb, 0);
    let pod0 = tb.nodes[0].pod_ip().unwrap();
    let good_src = Ipv4Addr::from(u32::from(PEER_SUBNET.0) + 2);
    let node_ip = tb.nodes[0].ip;
    let peer_ip = tb.nodes[2].ip;
    let mut truncated = echo(good_src, pod0, 64);
    truncated.truncate(12);
    let mut lying = echo(good_src, pod0, 64);
    lying.extend_from_slice(&[0; 40]); // total length says 28, the datagram is 68
    let mut short_claim = echo(good_src, pod0, 64);
    short_claim[2..4].copy_from_slice(&200u16.to_be_bytes());
    let mut ipv6 = echo(good_src, pod0, 64);
    ipv6[0] = 0x60;
    let mut big = vec![0u8; 3000];
    big[..28].copy_from_slice(&echo(good_src, pod0, 64));
    big[2..4].copy_from_slice(&3000u16.to_be_bytes());
    let c = checksum(&{
        let mut h = big[..20].to_vec();
        h[10] = 0;
        h[11] = 0;
        h
    });
    big[10..12].copy_from_slice(&c.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("foreign_source", echo(Ipv4Addr::new(192, 0, 2, 66), pod0, 64)),
        (
            "foreign_destination",
            echo(good_src, Ipv4Addr::from(u32::from(own.network) + 256 * 3 + 1), 64),
        ),
        ("foreign_destination", echo(good_src, node_ip, 64)),
        ("truncated", truncated),
        ("length_mismatch", lying),
        ("length_mismatch", short_claim),
        ("ttl_expired", echo(good_src, pod0, 0)),
        ("ttl_expired", echo(good_src, pod0, 1)),
        ("not_ipv4", ipv6),
        ("empty", Vec::new()),
        ("too_big", big),
    ];

    let pod_ns = tb.nodes[0].pod.as_ref().unwrap();
    let before_metrics = metrics(&tb, 0);
    let (pod_before, node_before, tun_before) = (
        echo_requests_received(pod_ns),
        echo_requests_received(&tb.nodes[0].ns),
        tun_rx_packets(&tb, 0),
    );
    // From a host that is no peer: even a perfect packet is dropped.
    let outsider = tb.add_outside("e2eudpbad", "203.0.113.9");
    inject(
        &outsider,
        Ipv4Addr::new(192, 0, 2, 254),
        node_ip,
        vec![echo(good_src, pod0, 64)],
    );
    // From the peer's own address, everything else.
    inject(
        &tb.nodes[2].ns,
        peer_ip,
        node_ip,
        cases.iter().map(|(_, p)| p.clone()).collect(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let after = metrics(&tb, 0);
    let mut want: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    want.insert("not_peer", 1);
    for (reason, _) in &cases {
        *want.entry(reason).or_default() += 1;
    }
    for (reason, n) in &want {
        let moved = dropped(&after, reason) - dropped(&before_metrics, reason);
        assert_eq!(
            moved, *n,
            "drop counter {reason} moved by {moved}, want {n}\n{after}"
        );
    }
    assert_eq!(
        echo_requests_received(pod_ns),
        pod_before,
        "an injected packet reached the pod"
    );
    assert_eq!(
        echo_requests_received(&tb.nodes[0].ns),
        node_before,
        "an injected packet reached the node"
    );
    assert_eq!(
        tun_rx_packets(&tb, 0),
        tun_before,
        "an injected packet was written to flannel0"
    );
    assert!(daemon_alive(&mut tb, 0), "the daemon died: {}", tb.nodes[0].log());
    assert!(
        ping_matrix(&tb, &[0, 1]).is_empty(),
        "pods stopped pinging after the injection"
    );

    // Owned objects come back: the route, the address, the device itself.
    let node = &tb.nodes[0].ns;
    for (what, script) in [
        ("route", format!("ip route del {NETWORK} dev flannel0")),
        ("address", format!("ip addr del {}/32 dev flannel0", own.network)),
        ("device", "ip link del flannel0".to_string()),
    ] {
        node.sh(&script);
        let back = time_until(CONVERGE, || udp_problems(&tb, 0).is_empty());
        let Some(took) = back else {
            panic!(
                "{what} of flannel0 deleted by hand: not repaired: {:#?}\n{}",
                udp_problems(&tb, 0),
                tb.nodes[0].log()
            );
        };
        println!(
            "flannel0 {what} deleted by hand: repaired after {took:?} (goal 1 s: {})",
            against_one_second_goal(took)
        );
        assert!(
            tb.ping_until(1, pod0, Duration::from_secs(10)),
            "pods do not ping after the {what} repair"
        );
    }

    // A restart deletes nothing: device, address and route stay; the next process re-attaches.
    let monitor = Monitor::start(&tb.nodes[0].ns, tb.path(), "node1");
    let pinger = tb.pinger_count(1, pod0, "0.01", 400);
    std::thread::sleep(Duration::from_millis(500));
    let status = tb.stop_daemon(0, "TERM").expect("daemon running");
    assert!(status.success(), "flanneld exits 0 on SIGTERM: {status}");
    // While no process is attached the kernel marks the route `linkdown` (no carrier); it stays.
    let down: Vec<String> = udp_problems(&tb, 0)
        .into_iter()
        .filter(|p| !p.contains("dev flannel0 linkdown\"]"))
        .collect();
    assert!(down.is_empty(), "state changed at shutdown: {down:#?}");
    tb.start_daemon(0);
    wait_ready(&mut tb, 0, STARTUP);
    let (sent, received) = pinger.wait(Duration::from_secs(30));
    let lines: Vec<String> = monitor
        .finish(&tb.nodes[0].ns)
        .into_iter()
        .filter(|l| l.starts_with("[ROUTE]") && (l.contains("198.18.") || l.contains("flannel0")))
        .collect();
    println!(
        "restart under a 10 ms ping: {sent} sent, {received} received ({} lost)",
        sent - received
    );
    assert!(
        lines.is_empty(),
        "the restart changed flannel's routes: {lines:#?}"
    );
    assert!(udp_problems(&tb, 0).is_empty(), "{:#?}", udp_problems(&tb, 0));
    assert!(ping_matrix(&tb, &[0, 1]).is_empty());
}
