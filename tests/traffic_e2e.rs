//! End to end, traffic manager (spec 10, 11.1 step 10): real flanneld daemons in the netns
//! testbed. A pod reaches an "outside" host (no route back to the pod network) only through a node
//! with --ip-masq; pod-to-pod traffic keeps its source address; node listings equal spec 10.1 /
//! 10.2 exactly; drift (flushed chain, deleted jump, duplicate, deleted nft table) is repaired; the
//! steady state runs only the periodic listing (counted through wrapper scripts first in PATH);
//! a restart keeps the rules.

mod e2e_common;
mod support;
mod traffic_common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e_common::*;
use support::testbed::Testbed;

const OUTSIDE: &str = "203.0.113.5";
/// --iptables-resync for these tests, in seconds.
const RESYNC: u64 = 1;

/// A directory of wrappers that log each call to `calls.log` and exec the real tool; with a
/// `variant` (`legacy`) the iptables tools run that variant (`iptables` -> `iptables-legacy`).
fn wrapper_dir(root: &Path, variant: Option<&str>) -> PathBuf {
    let dir = root.join("wrap");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("calls.log");
    for tool in [
        "iptables",
        "iptables-save",
        "iptables-restore",
        "ip6tables",
        "ip6tables-save",
        "ip6tables-restore",
        "nft",
    ] {
        let target = match (variant, tool.split_once('-')) {
            (Some(v), _) if tool == "iptables" || tool == "ip6tables" => format!("{tool}-{v}"),
            (Some(v), Some((base, action))) if base.ends_with("tables") => format!("{base}-{v}-{action}"),
            _ => tool.to_owned(),
        };
        let real = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {target}")])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        assert!(!real.is_empty(), "{tool} is not installed");
        let script = format!(
            "#!/bin/sh\necho \"{tool} $*\" >> {}\nexec {real} \"$@\"\n",
            log.display()
        );
        let path = dir.join(tool);
        std::fs::write(&path, script).unwrap();
        std::process::Command::new("chmod")
            .args(["755", path.to_str().unwrap()])
            .status()
            .unwrap();
    }
    dir
}

fn calls(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().to_owned())
        .collect()
}

fn path_env(dir: &Path) -> Vec<(String, String)> {
    let path = std::env::var("PATH").unwrap_or_default();
    vec![("PATH".to_owned(), format!("{}:{path}", dir.display()))]
}

/// The own subnet (network address) of node `i`, from its subnet.env.
fn own_subnet(tb: &Testbed, i: usize) -> String {
    let env = tb.nodes[i].subnet_env().expect("subnet.env");
    let first = env.get("FLANNEL_SUBNET").expect("FLANNEL_SUBNET");
    let net: ipnet::Ipv4Net = first.parse().expect("FLANNEL_SUBNET is a CIDR");
    net.trunc().to_string()
}

fn wait_for(tb: &Testbed, i: usize, what: &str, mut done: impl FnMut() -> bool) {
    assert!(
        time_until(CONVERGE, &mut done).is_some(),
        "{what} on {} did not happen; log:\n{}",
        tb.nodes[i].name,
        tb.nodes[i].log()
    );
}

/// The ICMP packets pod `i` accepted from `source` (an INPUT rule counts them).
fn packets_from(tb: &Testbed, i: usize, source: Ipv4Addr) -> u64 {
    let pod = tb.nodes[i].pod.as_ref().expect("pod");
    let listing = pod.sh("iptables-nft -w -L INPUT -v -n -x");
    listing
        .lines()
        .filter(|l| l.contains(&source.to_string()))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Waits `periods` resync periods and returns the tool calls made meanwhile.
fn steady_calls(dir: &Path, periods: u64) -> (Vec<String>, Duration) {
    std::fs::write(dir.join("calls.log"), "").unwrap();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(RESYNC * periods));
    (calls(dir), start.elapsed())
}

#[test]
fn iptables_mode_masquerades_repairs_drift_and_survives_restart() {
    let Some(_serial) = serial_or_skip("traffic_iptables_e2e") else {
        return;
    };
    let mut tb = testbed("trfe", 2, "vxlan");
    let wrap = wrapper_dir(tb.path(), None);
    tb.nodes[0]
        .args
        .extend(["--ip-masq".into(), format!("--iptables-resync={RESYNC}")]);
    tb.nodes[1].args.push(format!("--iptables-resync={RESYNC}"));
    let _outside = tb.add_outside("trfe", OUTSIDE);
    tb.start_daemon_with_env(0, &path_env(&wrap));
    tb.start_daemon(1);
    for i in 0..2 {
        tb.wait_subnet_env(i, STARTUP);
        wait_ready(&mut tb, i, STARTUP);
    }
    let pod0 = tb.add_pod(0, "trfe");
    let pod1 = tb.add_pod(1, "trfe");

    // Exact listings (spec 10.1) on the masquerading node; no masquerade chain on the other.
    let subnet = own_subnet(&tb, 0);
    let nat = traffic_common::NAT_LISTING.replace("198.18.1.0/24", &subnet);
    let node0 = &tb.nodes[0].ns;
    assert_eq!(node0.sh("iptables -w -t nat -S"), nat);
    assert_eq!(node0.sh("iptables -w -S"), traffic_common::FILTER_LISTING);
    assert!(
        !tb.nodes[1]
            .ns
            .sh("iptables -w -t nat -S")
            .contains("FLANNEL-POSTRTG")
    );
    assert_eq!(
        tb.nodes[1].ns.sh("iptables -w -S"),
        traffic_common::FILTER_LISTING
    );

    // Masquerading: only the --ip-masq node's pod gets answers from outside.
    let outside: Ipv4Addr = OUTSIDE.parse().unwrap();
    assert!(
        tb.ping_until(0, outside, CONVERGE),
        "pod on node1 (--ip-masq) cannot reach {OUTSIDE}"
    );
    assert!(
        !tb.ping(1, outside),
        "pod on node2 (no --ip-masq) reached {OUTSIDE}: not masqueraded traffic must not come back"
    );
    // Pod to pod keeps the real source address.
    tb.nodes[1]
        .pod
        .as_ref()
        .unwrap()
        .sh(&format!("iptables-nft -w -I INPUT -s {pod0} -p icmp -j ACCEPT"));
    assert!(tb.ping_until(0, pod1, CONVERGE), "pod to pod");
    assert!(
        packets_from(&tb, 1, pod0) > 0,
        "the peer pod did not see the real source {pod0}"
    );

    // Drift is repaired within a resync period or so.
    let drifts = [
        "iptables -w -t nat -F FLANNEL-POSTRTG",
        "iptables -w -t nat -D POSTROUTING -m comment --comment 'flanneld masq' -j FLANNEL-POSTRTG",
        "iptables -w -t nat -I FLANNEL-POSTRTG 1 -m mark --mark 0x4000/0x4000 -m comment --comment 'flanneld masq' -j RETURN",
        "iptables -w -D FORWARD -m comment --comment 'flanneld forward' -j FLANNEL-FWD",
    ];
    for drift in drifts {
        tb.nodes[0].ns.sh(drift);
        wait_for(&tb, 0, &format!("repair after {drift}"), || {
            tb.nodes[0].ns.sh("iptables -w -t nat -S") == nat
                && tb.nodes[0].ns.sh("iptables -w -S") == traffic_common::FILTER_LISTING
        });
    }
    assert!(
        tb.nodes[0].log().contains("re-installing"),
        "the repair is logged"
    );

    // Steady state: only the periodic `iptables-save`, at most one per period.
    let periods = 5;
    let (steady, took) = steady_calls(&wrap, periods);
    let bound = took.as_secs() / RESYNC + 1;
    println!(
        "steady state, iptables mode: {} processes in {took:?} (resync {RESYNC} s): {steady:?}",
        steady.len()
    );
    assert!(
        steady.iter().all(|c| c == "iptables-save"),
        "only listings in steady state: {steady:?}"
    );
    assert!(
        !steady.is_empty() && steady.len() as u64 <= bound,
        "{} processes in {took:?}",
        steady.len()
    );

    // Restart: SIGTERM leaves the rules; the new daemon keeps them exactly.
    tb.stop_daemon(0, "TERM");
    assert_eq!(
        tb.nodes[0].ns.sh("iptables -w -t nat -S"),
        nat,
        "rules left in place at shutdown"
    );
    tb.start_daemon_with_env(0, &path_env(&wrap));
    wait_ready(&mut tb, 0, STARTUP);
    assert_eq!(tb.nodes[0].ns.sh("iptables -w -t nat -S"), nat);
    assert_eq!(
        tb.nodes[0].ns.sh("iptables -w -S"),
        traffic_common::FILTER_LISTING
    );
    assert!(tb.ping_until(0, outside, CONVERGE));
}

#[test]
fn nftables_mode_masquerades_and_recreates_a_deleted_table() {
    let Some(_serial) = serial_or_skip("traffic_nftables_e2e") else {
        return;
    };
    let mut tb = testbed("trfn", 1, "vxlan");
    tb.put_config(&format!(
        r#"{{"Network": "{NETWORK}", "EnableNFTables": true, "Backend": {{"Type": "vxlan"}}}}"#
    ));
    let wrap = wrapper_dir(tb.path(), None);
    tb.nodes[0]
        .args
        .extend(["--ip-masq".into(), format!("--iptables-resync={RESYNC}")]);
    let _outside = tb.add_outside("trfn", OUTSIDE);
    tb.start_daemon_with_env(0, &path_env(&wrap));
    tb.wait_subnet_env(0, STARTUP);
    wait_ready(&mut tb, 0, STARTUP);
    tb.add_pod(0, "trfn");

    let subnet = own_subnet(&tb, 0);
    let postrtg = traffic_common::NFT_POSTRTG.replace("198.18.1.0/24", &subnet);
    let node = &tb.nodes[0].ns;
    assert_eq!(node.sh("nft list chain ip flannel-ipv4 postrtg"), postrtg);
    assert_eq!(
        node.sh("nft list chain ip flannel-ipv4 forward"),
        traffic_common::NFT_FORWARD
    );
    assert!(
        !node.sh("iptables -w -t nat -S").contains("FLANNEL"),
        "no iptables-mode rules in nftables mode"
    );
    assert!(
        tb.ping_until(0, OUTSIDE.parse().unwrap(), CONVERGE),
        "masquerade through nftables"
    );

    for drift in [
        "nft delete table ip flannel-ipv4",
        "nft flush chain ip flannel-ipv4 postrtg",
    ] {
        tb.nodes[0].ns.sh(drift);
        wait_for(&tb, 0, &format!("repair after {drift}"), || {
            tb.nodes[0]
                .ns
                .try_sh("nft list chain ip flannel-ipv4 postrtg")
                .is_ok_and(|l| l == postrtg)
        });
    }

    let (steady, took) = steady_calls(&wrap, 5);
    println!(
        "steady state, nftables mode: {} processes in {took:?} (resync {RESYNC} s): {steady:?}",
        steady.len()
    );
    assert!(
        steady.iter().all(|c| c == "nft list table ip flannel-ipv4"),
        "only the periodic listing in steady state: {steady:?}"
    );
    assert!(steady.len() as u64 <= took.as_secs() / RESYNC + 1);
}

#[test]
fn iptables_legacy_listing_and_masquerade() {
    let Some(_serial) = serial_or_skip("traffic_legacy_e2e") else {
        return;
    };
    let mut tb = testbed("trfl", 1, "vxlan");
    let wrap = wrapper_dir(tb.path(), Some("legacy"));
    tb.nodes[0]
        .args
        .extend(["--ip-masq".into(), format!("--iptables-resync={RESYNC}")]);
    let _outside = tb.add_outside("trfl", OUTSIDE);
    tb.start_daemon_with_env(0, &path_env(&wrap));
    tb.wait_subnet_env(0, STARTUP);
    wait_ready(&mut tb, 0, STARTUP);
    tb.add_pod(0, "trfl");

    let nat = traffic_common::NAT_LISTING.replace("198.18.1.0/24", &own_subnet(&tb, 0));
    let node = &tb.nodes[0].ns;
    assert_eq!(node.sh("iptables-legacy -w -t nat -S"), nat);
    assert_eq!(node.sh("iptables-legacy -w -S"), traffic_common::FILTER_LISTING);
    assert!(
        !node.sh("iptables-nft -w -t nat -S").contains("FLANNEL"),
        "nothing in the nft variant"
    );
    assert!(
        tb.ping_until(0, OUTSIDE.parse().unwrap(), CONVERGE),
        "masquerade through iptables-legacy"
    );

    tb.nodes[0].ns.sh("iptables-legacy -w -t nat -F FLANNEL-POSTRTG");
    wait_for(&tb, 0, "repair of the flushed chain", || {
        tb.nodes[0].ns.sh("iptables-legacy -w -t nat -S") == nat
    });
}
