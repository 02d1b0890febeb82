//! `make bench` (churn section): a vxlan node holding 5,000 leases takes 100 new leases and loses
//! 100 old ones every second for 60 s while its pod pings a pod on another node over the
//! overlay. Afterwards the node's flannel.1 entries must equal exactly what the leases in etcd
//! prescribe. Prints the time to that exact state after the last change, RSS at start and end,
//! the CPU time the churn cost, and the pings; exits 1 when the state is not exact, memory grew
//! (a leak), or pings were lost.
//!
//! Usage: churn <path to flanneld> [leases] [seconds] [changes per second]

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use common::{
    Change, EtcdWriter, NETWORK, SUBNET_LEN, VxlanEntries, cpu_time, rss_kib, synthetic_lease, vxlan_entries,
};
use support::testbed::{Testbed, TestbedOptions};

/// What node 0's flannel.1 must carry for the leases now in etcd (every lease but its own).
fn expected(tb: &Testbed) -> VxlanEntries {
    let own = tb.nodes[0]
        .subnet_env()
        .and_then(|env| env.get("FLANNEL_SUBNET").cloned())
        .unwrap_or_default();
    let own_network = own.split('/').next().unwrap_or_default().to_string();
    let mut want = VxlanEntries::default();
    // `Testbed::leases` gives the keys without the `<prefix>/subnets/` part.
    for (sn, value) in tb.leases() {
        let subnet = sn.replace('-', "/");
        let network = subnet.split('/').next().unwrap_or_default().to_string();
        // FLANNEL_SUBNET is the network address + 1.
        let own_net_addr: Option<std::net::Ipv4Addr> = own_network.parse().ok();
        let this: Option<std::net::Ipv4Addr> = network.parse().ok();
        if let (Some(own), Some(this)) = (own_net_addr, this)
            && u32::from(own) == u32::from(this) + 1
        {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&value).expect("lease JSON");
        let mac = v["BackendData"]["VtepMAC"].as_str().unwrap_or_default();
        let public = v["PublicIP"].as_str().unwrap_or_default();
        want.routes.insert(format!("{subnet} via {network}"));
        want.neighs.insert(format!("{network} {mac}"));
        want.fdbs.insert(format!("{mac} {public}"));
    }
    want
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flanneld = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "target/release/flanneld".into());
    let arg = |i: usize, default: u32| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (leases, seconds, per_second) = (arg(2, 5000), arg(3, 60), arg(4, 100));
    if !support::is_root() {
        eprintln!("churn: needs root (network namespaces)");
        std::process::exit(1);
    }
    println!(
        "\nflanneld churn benchmark ({flanneld}): {leases} leases, {per_second} adds + {per_second} removes per second for {seconds} s"
    );
    let mut tb = Testbed::new(TestbedOptions {
        nodes: 2,
        flanneld: flanneld.into(),
        tag: "churn".into(),
    });
    tb.put_config(&format!(
        r#"{{"Network": "{NETWORK}", "SubnetLen": {SUBNET_LEN}, "Backend": {{"Type": "vxlan"}}}}"#
    ));
    for node in &mut tb.nodes {
        node.args = vec!["--iface=eth0".into()];
    }
    let writer = EtcdWriter::new(&tb.etcd_ns);
    let mut current: VecDeque<u32> = (0..leases).collect();
    writer.apply(
        current
            .iter()
            .map(|&i| {
                let l = synthetic_lease(i);
                Change::Put(l.key, l.value)
            })
            .collect(),
    );
    let started = Instant::now();
    tb.start_daemon(0);
    tb.start_daemon(1);
    tb.wait_subnet_env(0, Duration::from_secs(60));
    tb.wait_subnet_env(1, Duration::from_secs(60));
    let want = expected(&tb);
    let deadline = started + Duration::from_secs(180);
    while vxlan_entries(&tb.nodes[0].ns) != want {
        if Instant::now() > deadline {
            let have = vxlan_entries(&tb.nodes[0].ns);
            let (missing, extra) = have.difference(&want);
            eprintln!(
                "FAIL: the initial {leases} leases did not converge ({missing} entries missing, {extra} extra: {:?}); log:\n{}",
                have.extra_sample(&want),
                tb.nodes[0].log()
            );
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "initial convergence: {:.2} s for {} leases",
        started.elapsed().as_secs_f64(),
        want.routes.len()
    );
    let pid = tb.nodes[0].daemon.as_ref().expect("daemon").id();
    tb.add_pod(0, "churn");
    let pod1 = tb.add_pod(1, "churn");
    // The synthetic ids whose subnets the two real nodes hold: never written during the churn.
    let reserved: Vec<u32> = (0..2)
        .filter_map(|i| {
            let env = tb.nodes[i].subnet_env()?;
            let first: std::net::Ipv4Addr = env.get("FLANNEL_SUBNET")?.split('/').next()?.parse().ok()?;
            let base = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0));
            (u32::from(first) - 1 - base).checked_div(16)?.checked_sub(1)
        })
        .collect();
    // Pings every 200 ms across the whole churn (and 2 s more).
    let pings = u64::from(seconds) * 5 + 10;
    let pinger = tb.pinger_count(0, pod1, "0.2", pings);
    std::thread::sleep(Duration::from_secs(1));
    let rss_start = rss_kib(pid);
    let cpu_start = cpu_time(pid);

    let churn_start = Instant::now();
    let mut next_id = leases;
    for second in 0..seconds {
        let mut changes = Vec::with_capacity(2 * per_second as usize);
        for _ in 0..per_second {
            if let Some(old) = current.pop_front() {
                changes.push(Change::Delete(synthetic_lease(old).key));
            }
            // Ids cycle through the 8000 /28s after the window of current ones (no overlap).
            let mut id = next_id % 8000;
            while reserved.contains(&id) {
                next_id += 1;
                id = next_id % 8000;
            }
            next_id += 1;
            current.push_back(id);
            let new = synthetic_lease(id);
            changes.push(Change::Put(new.key, new.value));
        }
        writer.apply(changes);
        let next = churn_start + Duration::from_secs(u64::from(second) + 1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let last_change = Instant::now();
    let want = expected(&tb);
    let mut exact = None;
    while last_change.elapsed() < Duration::from_secs(60) {
        let have = vxlan_entries(&tb.nodes[0].ns);
        if have == want {
            exact = Some(last_change.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu = cpu_time(pid).saturating_sub(cpu_start);
    let rss_end = rss_kib(pid);
    let (sent, received) = pinger.wait(Duration::from_secs(30));

    let mut failed = Vec::new();
    match exact {
        Some(t) => println!(
            "converged to exactly the desired state {:.0} ms after the last change ({} routes, neighbours and FDB entries each)",
            t.as_secs_f64() * 1e3,
            want.routes.len()
        ),
        None => {
            let (missing, extra) = vxlan_entries(&tb.nodes[0].ns).difference(&want);
            failed.push(format!(
                "kernel state not exact 60 s after the churn: {missing} entries missing, {extra} extra"
            ));
        }
    }
    println!(
        "RSS {:.1} MB at start, {:.1} MB at end; CPU time of the churn {:.2} s over {} s ({:.1}% of one core)",
        rss_start as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        cpu.as_secs_f64(),
        seconds,
        100.0 * cpu.as_secs_f64() / f64::from(seconds.max(1))
    );
    println!("pod-to-pod pings during the churn: {received}/{sent} answered");
    // A leak shows as steady growth: allow allocator slack, not a trend.
    if rss_end > rss_start + rss_start / 4 + 4096 {
        failed.push(format!("memory grew from {rss_start} KiB to {rss_end} KiB"));
    }
    if sent == 0 || received < sent {
        failed.push(format!("pings lost during the churn: {received}/{sent}"));
    }
    if failed.is_empty() {
        println!("churn: PASS");
    } else {
        for f in &failed {
            println!("churn: FAIL: {f}");
        }
        std::process::exit(1);
    }
}
