//! The ipip peer filter (`PeerFilter`) against the real `iptables` and `nft` in network namespaces:
//! the rules follow the allowed set, IPIP packets (sent through a raw socket, so no ipip module is
//! needed) from a peer pass and from anyone else are dropped, drift is repaired, the previous
//! run's rules are kept until the peers are known, and switching modes or turning the filter off
//! removes what an earlier run installed.

mod support;
mod traffic_common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};

use flanneld::subnet::env_file::PreviousSubnets;
use flanneld::traffic::ipip_filter::{FilterRequest, PeersSender};
use flanneld::traffic::{Tools, TrafficManager, TrafficSettings};
use support::netns::{Netns, veth};
use tokio::sync::watch;
use traffic_common::*;

const LOCAL: &str = "192.0.2.1";
const PEER: &str = "192.0.2.2";
const STRANGER: &str = "192.0.2.9";

fn ready(test: &str) -> bool {
    if !support::is_root() {
        support::skip(test, "needs root (network namespaces, iptables, nft)");
        return false;
    }
    true
}

/// The node (192.0.2.1) and a sender owning a peer's and a stranger's address, on one veth; the
/// node counts, after every raw-priority hook, the IPIP packets that got through.
fn pair() -> (Netns, Netns) {
    let node = Netns::new("trf-ipip");
    let sender = Netns::new("trf-ipip-tx");
    veth(&node, "eth0", &sender, "eth0");
    node.sh(&format!("ip addr add {LOCAL}/24 dev eth0"));
    sender.sh(&format!(
        "ip addr add {PEER}/24 dev eth0 && ip addr add {STRANGER}/24 dev eth0"
    ));
    node.sh("nft add table ip probe && \
         nft add chain ip probe pre '{ type filter hook prerouting priority -200 ; }' && \
         nft add rule ip probe pre ip protocol 4 ip saddr 192.0.2.2 counter comment peer && \
         nft add rule ip probe pre ip protocol 4 ip saddr 192.0.2.9 counter comment stranger");
    (node, sender)
}

/// Sends one IPIP packet (protocol 4, a dummy inner header) from `source` to the node.
fn send_ipip(sender: &Netns, source: &'static str) {
    sender.run(move || {
        // SAFETY: plain socket calls on a descriptor this closure owns and closes.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, 4);
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let bind = sockaddr(source.parse().unwrap());
            let rc = libc::bind(fd, (&bind as *const libc::sockaddr_in).cast(), size_of_sockaddr());
            assert_eq!(rc, 0, "bind {source}: {}", std::io::Error::last_os_error());
            let to = sockaddr(LOCAL.parse().unwrap());
            let inner = [
                0x45u8, 0, 0, 20, 0, 0, 0, 0, 64, 1, 0, 0, 198, 18, 9, 9, 198, 18, 1, 2,
            ];
            let n = libc::sendto(
                fd,
                inner.as_ptr().cast(),
                inner.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                size_of_sockaddr(),
            );
            assert_eq!(
                n,
                inner.len() as isize,
                "sendto: {}",
                std::io::Error::last_os_error()
            );
            libc::close(fd);
        }
    });
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr_in {
    let addr = SocketAddrV4::new(ip, 0);
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn size_of_sockaddr() -> libc::socklen_t {
    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
}

/// Packets of `who` ("peer" / "stranger") that passed the raw hooks on the node.
fn passed(node: &str, who: &str) -> u64 {
    let listing = sh(node, "nft list chain ip probe pre");
    listing
        .lines()
        .find(|l| l.contains(&format!("comment \"{who}\"")))
        .and_then(|l| {
            let rest = l.split("packets ").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no counter for {who} in {listing}"))
}

fn filter_settings(nftables: bool) -> TrafficSettings {
    let mut s = settings(nftables, false, Tools::variant(Some("nft")));
    s.choice.masquerade = false;
    s
}

fn set(list: &[&str]) -> BTreeSet<Ipv4Addr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

/// A traffic manager for the filter settings of `nftables` mode, with the filter not requested yet.
async fn started_manager(nftables: bool) -> TrafficManager {
    TrafficManager::start(
        filter_settings(nftables),
        &lease(false),
        &PreviousSubnets::default(),
        fake_kernel(),
    )
    .await
    .expect("starting the traffic manager")
}

/// A new run with the option off: removes what an earlier run installed.
async fn turn_filter_off(nftables: bool) {
    let mut off = started_manager(nftables).await;
    off.start_ipip_filter(&filter_settings(nftables), FilterRequest::Off)
        .await;
}

async fn manager_with_filter(nftables: bool) -> (TrafficManager, PeersSender) {
    let mut manager = started_manager(nftables).await;
    let (tx, peers) = watch::channel(None);
    manager
        .start_ipip_filter(
            &filter_settings(nftables),
            FilterRequest::On {
                local: LOCAL.parse().unwrap(),
                peers,
            },
        )
        .await;
    (manager, tx)
}

fn raw_rules(node: &str) -> Vec<String> {
    sh(node, "iptables-nft -w -t raw -S")
        .lines()
        .filter(|l| l.contains("FLANNEL-IPIP"))
        .map(str::to_string)
        .collect()
}

#[test]
fn iptables_mode_drops_ipip_from_strangers_and_follows_the_peers() {
    if !ready("iptables_mode_drops_ipip_from_strangers_and_follows_the_peers") {
        return;
    }
    let (node, sender) = pair();
    in_ns(&node, move |ns| async move {
        let (mut manager, peers) = manager_with_filter(false).await;
        assert!(raw_rules(&ns).is_empty(), "nothing before the peers are known");

        peers.send_replace(Some(set(&[PEER])));
        assert_eq!(manager.resync().await, 1);
        let want = vec![
            "-N FLANNEL-IPIP".to_string(),
            format!(
                "-A PREROUTING -d {LOCAL}/32 -p ipencap -m comment --comment \"flanneld ipip\" -j FLANNEL-IPIP"
            ),
            format!("-A FLANNEL-IPIP -s {PEER}/32 -m comment --comment \"flanneld ipip\" -j RETURN"),
            "-A FLANNEL-IPIP -m comment --comment \"flanneld ipip\" -j DROP".to_string(),
        ];
        let got = raw_rules(&ns);
        // iptables-save prints protocol 4 as `ipencap` when /etc/protocols names it.
        assert_eq!(
            got.iter()
                .map(|l| l.replace("-p 4 ", "-p ipencap "))
                .collect::<Vec<_>>(),
            want
        );
        assert_eq!(manager.resync().await, 0, "in shape: nothing to do");

        send_ipip(&sender, PEER);
        send_ipip(&sender, STRANGER);
        assert_eq!(passed(&ns, "peer"), 1, "the peer's IPIP passes");
        assert_eq!(passed(&ns, "stranger"), 0, "the stranger's IPIP is dropped");

        // Drift: the jump deleted by hand comes back first in PREROUTING.
        sh(&ns, "iptables-nft -w -t raw -A PREROUTING -p icmp -j ACCEPT");
        sh(
            &ns,
            "iptables-nft -w -t raw -D PREROUTING -d 192.0.2.1/32 -p 4 -m comment --comment 'flanneld ipip' -j FLANNEL-IPIP",
        );
        assert_eq!(manager.resync().await, 1);
        let prerouting = sh(&ns, "iptables-nft -w -t raw -S PREROUTING");
        let first = prerouting.lines().nth(1).unwrap_or_default();
        assert!(
            first.contains("FLANNEL-IPIP"),
            "jump inserted first: {prerouting}"
        );

        // A new peer (the stranger's address joins the cluster) is allowed after one resync.
        peers.send_replace(Some(set(&[PEER, STRANGER])));
        assert_eq!(manager.resync().await, 1);
        send_ipip(&sender, STRANGER);
        assert_eq!(passed(&ns, "stranger"), 1);
        // No peer left: all IPIP to the node is dropped.
        peers.send_replace(Some(BTreeSet::new()));
        manager.resync().await;
        send_ipip(&sender, PEER);
        assert_eq!(passed(&ns, "peer"), 1, "dropped now");

        // Restart: until the new run knows the peers, the old rules stay as they are.
        let (mut again, peers) = manager_with_filter(false).await;
        assert_eq!(again.resync().await, 0);
        assert_eq!(
            raw_rules(&ns).len(),
            3,
            "previous rules kept: {:?}",
            raw_rules(&ns)
        );
        peers.send_replace(Some(set(&[PEER])));
        assert_eq!(again.resync().await, 1);

        // Turning the option off removes the chain and its jump, and nothing else.
        turn_filter_off(false).await;
        assert!(raw_rules(&ns).is_empty(), "{:?}", raw_rules(&ns));
        assert!(sh(&ns, "iptables-nft -w -t raw -S PREROUTING").contains("-p icmp -j ACCEPT"));
    });
}

#[test]
fn nftables_mode_uses_its_own_table_and_switching_modes_cleans_up() {
    if !ready("nftables_mode_uses_its_own_table_and_switching_modes_cleans_up") {
        return;
    }
    let (node, sender) = pair();
    in_ns(&node, move |ns| async move {
        // An iptables-mode run first, then nftables mode: the iptables chain goes.
        let (mut ipt, peers) = manager_with_filter(false).await;
        peers.send_replace(Some(set(&[PEER])));
        ipt.resync().await;
        assert!(!raw_rules(&ns).is_empty());

        let (mut nft, peers) = manager_with_filter(true).await;
        assert!(
            raw_rules(&ns).is_empty(),
            "iptables filter removed: {:?}",
            raw_rules(&ns)
        );
        peers.send_replace(Some(set(&[PEER])));
        assert_eq!(nft.resync().await, 1);
        let table = sh(&ns, "nft list table ip flannel-ipip");
        assert!(table.contains("elements = { 192.0.2.2 }"), "{table}");
        // nft names protocol 4 after /etc/protocols (`ipencap`) when it can.
        let rule = table.replace("ip protocol ipencap", "ip protocol 4");
        assert!(
            rule.contains("ip daddr 192.0.2.1 ip protocol 4 ip saddr != @peers drop"),
            "{table}"
        );
        assert!(
            sh(&ns, "nft list table ip flannel-ipv4").contains("chain forward"),
            "upstream's table untouched"
        );
        assert_eq!(nft.resync().await, 0, "in shape");

        send_ipip(&sender, PEER);
        send_ipip(&sender, STRANGER);
        assert_eq!((passed(&ns, "peer"), passed(&ns, "stranger")), (1, 0));

        // Drift (a rule added by hand) is repaired; a new peer is applied.
        sh(&ns, "nft add rule ip flannel-ipip prerouting accept");
        assert_eq!(nft.resync().await, 1);
        let table = sh(&ns, "nft list table ip flannel-ipip");
        assert!(!table.lines().any(|l| l.trim() == "accept"), "{table}");
        peers.send_replace(Some(set(&[PEER, STRANGER])));
        assert_eq!(nft.resync().await, 1);
        send_ipip(&sender, STRANGER);
        assert_eq!(passed(&ns, "stranger"), 1);

        // Off: the table goes, upstream's stays.
        turn_filter_off(true).await;
        let tables = sh(&ns, "nft list tables");
        assert!(
            !tables.contains("flannel-ipip") && tables.contains("flannel-ipv4"),
            "{tables}"
        );
    });
}
