//! Helpers shared by the traffic manager's namespace tests: run an async test body on a thread
//! inside a fresh network namespace (so every `iptables`/`nft` the manager spawns, and every
//! netlink socket it opens, belongs to that namespace), and build settings and leases.
#![allow(dead_code)]

use std::future::Future;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flanneld::kernel::Netlink;
use flanneld::kernel::fake::FakeKernel;
use flanneld::lease::{Lease, LeaseAttrs};
use flanneld::subnet::env_file::PreviousSubnets;
use flanneld::traffic::rules::RuleChoice;
use flanneld::traffic::{Tools, TrafficError, TrafficManager, TrafficSettings};

use crate::support::netns::Netns;

pub const NETWORK: &str = "198.18.0.0/16";
pub const SUBNET: &str = "198.18.1.0/24";
pub const NETWORK6: &str = "2001:db8::/48";
pub const SUBNET6: &str = "2001:db8:0:1::/64";

/// Runs `body(namespace name)` to completion on a current-thread runtime inside `ns`.
pub fn in_ns<T, F>(ns: &Netns, body: impl FnOnce(String) -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: Future<Output = T>,
{
    let name = ns.name.clone();
    ns.run(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building a tokio runtime")
            .block_on(body(name))
    })
}

/// Runs a shell script in namespace `ns` (by name) and returns stdout; panics on failure.
pub fn sh(ns: &str, script: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", script])
        .output()
        .expect("running ip netns exec");
    assert!(
        out.status.success(),
        "script {script:?} in {ns} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn lease(v6: bool) -> Lease {
    Lease {
        enable_ipv4: true,
        enable_ipv6: v6,
        subnet: Some(SUBNET.parse().unwrap()),
        ipv6_subnet: v6.then(|| SUBNET6.parse().unwrap()),
        attrs: LeaseAttrs::default(),
        expiration: Some(SystemTime::now() + Duration::from_secs(3600)),
    }
}

pub fn settings(nftables: bool, v6: bool, tools: Tools) -> TrafficSettings {
    TrafficSettings {
        nftables,
        choice: RuleChoice {
            masquerade: true,
            forward: true,
            random_fully: true,
        },
        blackhole: false,
        resync: Duration::from_secs(3600),
        network: Some(NETWORK.parse().unwrap()),
        ipv6_network: v6.then(|| NETWORK6.parse().unwrap()),
        tools,
    }
}

pub fn fake_kernel() -> Arc<dyn Netlink> {
    Arc::new(FakeKernel::new())
}

/// Starts a manager on the fake kernel (no blackhole route is asked for in these tests).
pub async fn start(
    settings: TrafficSettings,
    lease: &Lease,
    previous: &PreviousSubnets,
) -> Result<TrafficManager, TrafficError> {
    TrafficManager::start(settings, lease, previous, fake_kernel()).await
}

/// Starts a manager with the standard settings and lease (`v6`: dual stack) as a first run (no
/// previous subnet.env); panics with the error when startup fails.
pub async fn start_first_run(nftables: bool, v6: bool, tools: Tools) -> TrafficManager {
    start(
        settings(nftables, v6, tools),
        &lease(v6),
        &PreviousSubnets::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("starting the traffic manager (nftables: {nftables}, v6: {v6}): {e}"))
}

/// spec 10.1: `iptables -t nat -S` after setup, for C = 198.18.0.0/16, P = 198.18.1.0/24.
pub const NAT_LISTING: &str = r#"-P PREROUTING ACCEPT
-P INPUT ACCEPT
-P OUTPUT ACCEPT
-P POSTROUTING ACCEPT
-N FLANNEL-POSTRTG
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 198.18.1.0/24 -d 198.18.0.0/16 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 198.18.0.0/16 -d 198.18.1.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s 198.18.0.0/16 -d 198.18.1.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 198.18.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s 198.18.0.0/16 -d 198.18.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
"#;

/// spec 10.1: `iptables -S` (filter) after setup.
pub const FILTER_LISTING: &str = r#"-P INPUT ACCEPT
-P FORWARD ACCEPT
-P OUTPUT ACCEPT
-N FLANNEL-FWD
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FLANNEL-FWD -s 198.18.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d 198.18.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
"#;

/// spec 10.2: `nft list chain ip flannel-ipv4 postrtg` after setup.
pub const NFT_POSTRTG: &str = "table ip flannel-ipv4 {
\tchain postrtg {
\t\tcomment \"chain to manage traffic masquerading by flannel\"
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark 0x00004000 return
\t\tip saddr 198.18.1.0/24 ip daddr 198.18.0.0/16 return
\t\tip saddr 198.18.0.0/16 ip daddr 198.18.1.0/24 return
\t\tip saddr != 198.18.1.0/24 ip daddr 198.18.0.0/16 return
\t\tip saddr 198.18.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
\t\tip saddr != 198.18.0.0/16 ip daddr 198.18.0.0/16 masquerade fully-random
\t}
}
";

/// spec 10.2: `nft list chain ip flannel-ipv4 forward` after setup.
pub const NFT_FORWARD: &str = "table ip flannel-ipv4 {
\tchain forward {
\t\tcomment \"chain to accept flannel traffic\"
\t\ttype filter hook forward priority filter; policy accept;
\t\tip saddr 198.18.0.0/16 accept
\t\tip daddr 198.18.0.0/16 accept
\t}
}
";
