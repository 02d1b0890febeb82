//! `make bench`, wireguard section: iperf3 TCP pod to pod (5 s) through our userspace WireGuard
//! (two flanneld nodes; this kernel has no WireGuard module) and through two wireguard-go nodes
//! configured as upstream flanneld configures the kernel device, in one 4-node testbed, one
//! after the other. Prints both rates and their ratio (goal: ours >= 1.5x wireguard-go).

use std::time::Duration;

use crate::common::pod_iperf;
use crate::support::testbed::{Testbed, TestbedOptions};
use crate::support::wggo::{self, GoNode};

const NETWORK: &str = "198.18.0.0/16";

pub fn run(flanneld: &str) {
    if let Some(why) = wggo::missing() {
        println!("\nwireguard throughput: skipped ({why})");
        return;
    }
    let mut tb = Testbed::new(TestbedOptions {
        nodes: 4,
        flanneld: flanneld.into(),
        tag: "benchwg".into(),
    });
    tb.put_config(&format!(
        r#"{{"Network": "{NETWORK}", "Backend": {{"Type": "wireguard"}}}}"#
    ));
    let go: Vec<GoNode> = [2usize, 3]
        .iter()
        .enumerate()
        .map(|(n, &i)| GoNode::start(&tb, i, &format!("198.18.{}.0/24", 200 + n), NETWORK))
        .collect();
    for i in [0, 1] {
        let key = tb.nodes[i].dir.join("wgkey");
        tb.nodes[i].args = vec!["--iface=eth0".into()];
        tb.start_daemon_with_env(i, &[("WIREGUARD_KEY_FILE".into(), key.display().to_string())]);
    }
    for i in [0, 1] {
        tb.wait_subnet_env(i, Duration::from_secs(60));
    }
    for g in &go {
        g.mesh(&tb, 0);
    }
    for i in 0..4 {
        tb.add_pod(i, "benchwg");
    }
    for (from, to) in [(0, 1), (2, 3)] {
        let ip = tb.nodes[to].pod_ip().unwrap();
        assert!(
            tb.ping_until(from, ip, Duration::from_secs(20)),
            "no ping {from} -> {to}; log:\n{}",
            tb.nodes[0].log()
        );
    }
    let ours = pod_iperf(&tb, 0, 1, 5);
    let theirs = pod_iperf(&tb, 2, 3, 5);
    println!("\nwireguard pod to pod, iperf3 TCP 5 s (4-node netns testbed, one pair at a time):");
    println!("  flanneld userspace WireGuard : {ours:>6.2} Gbit/s");
    println!("  wireguard-go (Debian)        : {theirs:>6.2} Gbit/s");
    if theirs > 0.0 {
        println!(
            "  ratio                        : {:>6.2}x (goal >= 1.5x)",
            ours / theirs
        );
    }
}
