//! `make bench`, data-path section (issue 9): iperf3 TCP pod to pod for 5 s across two nodes,
//! through our udp backend and through kernel vxlan, in the same run, printed as Gbit/s and their
//! ratio; then the forwarding gap across a restart of a udp node's daemon (longest run of lost
//! replies of a 10 ms ping, times 10 ms). Figures only: nothing here asserts a speed.

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::pod_iperf;
use crate::support::testbed::{Testbed, TestbedOptions};

const SECONDS: u32 = 5;

fn testbed(flanneld: &str, tag: &str, config: &str) -> Testbed {
    let mut tb = Testbed::new(TestbedOptions {
        nodes: 2,
        flanneld: flanneld.into(),
        tag: tag.into(),
    });
    tb.put_config(config);
    for i in 0..2 {
        tb.start_daemon(i);
    }
    for i in 0..2 {
        tb.wait_subnet_env(i, Duration::from_secs(60));
    }
    for i in 0..2 {
        tb.add_pod(i, tag);
    }
    let to = tb.nodes[1].pod_ip().unwrap();
    assert!(
        tb.ping_until(0, to, Duration::from_secs(30)),
        "pods do not ping through {tag}:\n{}",
        tb.nodes[0].log()
    );
    tb
}

/// The longest run of unanswered pings (10 ms apart) from node 2's pod to node 1's pod while node
/// 1's daemon restarts, as a duration.
fn restart_gap(tb: &mut Testbed) -> (Duration, u64, u64) {
    let to: Ipv4Addr = tb.nodes[0].pod_ip().unwrap();
    let pod = tb.nodes[1].pod.as_ref().unwrap();
    let ping = pod
        .spawn_cmd(&["ping", "-i", "0.01", "-c", "500", "-W", "1", &to.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting ping");
    std::thread::sleep(Duration::from_millis(1000));
    let started = Instant::now();
    tb.stop_daemon(0, "TERM");
    tb.start_daemon(0);
    let env_deadline = Instant::now() + Duration::from_secs(30);
    while tb.nodes[0].log().matches("kernel state converged").count() < 2 && Instant::now() < env_deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let restarted = started.elapsed();
    let out = ping.wait_with_output().expect("ping output");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut seqs: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|s| s.split_whitespace().next()?.parse().ok())
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    let longest = seqs.windows(2).map(|w| w[1] - w[0] - 1).max().unwrap_or(0);
    println!(
        "  (daemon stopped and started again in {:.0} ms; {} of 500 pings answered)",
        restarted.as_secs_f64() * 1e3,
        seqs.len()
    );
    (Duration::from_millis(longest * 10), longest, seqs.len() as u64)
}

pub fn run(flanneld: &str) {
    println!("\ndata path: iperf3 TCP pod to pod, {SECONDS} s, 2 nodes");
    let mut udp = testbed(flanneld, "bdpudp", r#"{"Network": "198.18.0.0/16"}"#);
    let udp_gbps = pod_iperf(&udp, 0, 1, SECONDS);
    let (gap, lost_run, _) = restart_gap(&mut udp);
    drop(udp);
    let vxlan = testbed(
        flanneld,
        "bdpvx",
        r#"{"Network": "198.18.0.0/16", "Backend": {"Type": "vxlan"}}"#,
    );
    let vxlan_gbps = pod_iperf(&vxlan, 0, 1, SECONDS);
    drop(vxlan);
    println!("  udp backend (ours):  {udp_gbps:>7.2} Gbit/s");
    println!("  kernel vxlan:        {vxlan_gbps:>7.2} Gbit/s");
    println!(
        "  ratio udp / vxlan:   {:>7.1} % (goal >= 25 %)",
        if vxlan_gbps > 0.0 {
            udp_gbps / vxlan_gbps * 100.0
        } else {
            0.0
        }
    );
    println!(
        "  udp restart gap:     {:>7.0} ms ({lost_run} consecutive pings lost at 10 ms; goal <= 1000 ms)",
        gap.as_secs_f64() * 1e3
    );
}
