//! nftables mode against the real `nft`, each test in its own network namespace (spec 10.2):
//! exact chain listings, drift repair (flushed chain, extra rule, deleted table), only the periodic
//! listing in steady state, restart, and switching between iptables and nftables modes.

mod support;
mod traffic_common;

use flanneld::subnet::env_file::PreviousSubnets;
use flanneld::traffic::Tools;
use support::netns::Netns;
use traffic_common::*;

fn tools() -> Tools {
    Tools::variant(Some("nft"))
}

/// Both chains of the IPv4 table list exactly as upstream's.
fn assert_v4_chains(ns: &str, context: &str) {
    assert_eq!(
        sh(ns, "nft list chain ip flannel-ipv4 postrtg"),
        NFT_POSTRTG,
        "{context}"
    );
    assert_eq!(
        sh(ns, "nft list chain ip flannel-ipv4 forward"),
        NFT_FORWARD,
        "{context}"
    );
}

#[test]
fn chain_listings_equal_upstream() {
    let ns = Netns::new("trf-nft");
    in_ns(&ns, |ns| async move {
        start_first_run(true, true, tools()).await;
        assert_v4_chains(&ns, "first run");
        let v6 = sh(&ns, "nft list chain ip6 flannel-ipv6 postrtg");
        assert!(
            v6.contains("\t\tip6 saddr != 2001:db8:0:1::/64 ip6 daddr 2001:db8::/48 return\n"),
            "{v6}"
        );
        assert!(
            v6.contains("\t\tip6 saddr 2001:db8::/48 ip6 daddr != ff00::/8 masquerade fully-random\n"),
            "{v6}"
        );
        let tables = sh(&ns, "nft list tables");
        assert!(
            tables.contains("table ip flannel-ipv4\n") && tables.contains("table ip6 flannel-ipv6\n"),
            "{tables}"
        );
        // Restart: the same listing again.
        start_first_run(true, true, tools()).await;
        assert_eq!(sh(&ns, "nft list chain ip flannel-ipv4 postrtg"), NFT_POSTRTG);
    });
}

#[test]
fn drift_is_repaired_and_steady_state_only_lists() {
    let ns = Netns::new("trf-nft");
    in_ns(&ns, |ns| async move {
        let mut manager = start_first_run(true, false, tools()).await;
        let before = manager.spawned_processes();
        assert_eq!(manager.resync().await, 0);
        assert_eq!(
            manager.spawned_processes() - before,
            1,
            "one `nft list table` per resync"
        );
        let drifts = [
            "nft flush chain ip flannel-ipv4 postrtg",
            "nft add rule ip flannel-ipv4 forward ip saddr 203.0.113.0/24 drop",
            "nft delete table ip flannel-ipv4",
            "nft add chain ip flannel-ipv4 extra",
            "nft delete rule ip flannel-ipv4 postrtg handle $(nft -a list chain ip flannel-ipv4 postrtg | awk '/meta mark/ {print $NF}')",
        ];
        for drift in drifts {
            sh(&ns, drift);
            assert_eq!(manager.resync().await, 1, "repaired after {drift}");
            assert_v4_chains(&ns, &format!("after {drift}"));
            assert!(!sh(&ns, "nft list table ip flannel-ipv4").contains("extra"));
            let before = manager.spawned_processes();
            assert_eq!(manager.resync().await, 0, "steady after {drift}");
            assert_eq!(manager.spawned_processes() - before, 1);
        }
    });
}

#[test]
fn switching_modes_removes_the_other_modes_rules() {
    let ns = Netns::new("trf-nft");
    in_ns(&ns, |ns| async move {
        start_first_run(false, true, tools()).await;
        assert_eq!(sh(&ns, "iptables-nft -w -t nat -S"), NAT_LISTING);

        start_first_run(true, true, tools()).await;
        for cmd in [
            "iptables-nft -w -t nat -S",
            "iptables-nft -w -S",
            "ip6tables-nft -w -t nat -S",
            "ip6tables-nft -w -S",
        ] {
            let listing = sh(&ns, cmd);
            assert!(
                !listing.contains("FLANNEL"),
                "{cmd} still lists flannel rules:\n{listing}"
            );
        }
        assert_eq!(sh(&ns, "nft list chain ip flannel-ipv4 postrtg"), NFT_POSTRTG);

        start_first_run(false, true, tools()).await;
        let tables = sh(&ns, "nft list tables");
        assert!(
            !tables.contains("flannel-ipv4") && !tables.contains("flannel-ipv6"),
            "{tables}"
        );
        assert_eq!(sh(&ns, "iptables-nft -w -t nat -S"), NAT_LISTING);
        assert_eq!(sh(&ns, "iptables-nft -w -S"), FILTER_LISTING);
    });
}

#[test]
fn nftables_mode_needs_no_iptables_binaries_and_honours_random_fully_disable() {
    let ns = Netns::new("trf-nft");
    in_ns(&ns, |ns| async move {
        let mut absent = tools();
        for ipt in [&mut absent.v4, &mut absent.v6] {
            ipt.iptables = "flanneld-absent-iptables".into();
            ipt.save = "flanneld-absent-iptables-save".into();
            ipt.restore = "flanneld-absent-iptables-restore".into();
        }
        let mut s = settings(true, false, absent);
        s.choice.random_fully = false;
        start(s, &lease(false), &PreviousSubnets::default())
            .await
            .expect("nftables mode starts without iptables binaries (a documented deviation)");
        assert_eq!(
            sh(&ns, "nft list chain ip flannel-ipv4 postrtg"),
            NFT_POSTRTG.replace(" fully-random", "")
        );
    });
}

#[test]
fn missing_nft_is_a_clear_fatal_error_for_masquerade() {
    let ns = Netns::new("trf-nft");
    in_ns(&ns, |_ns| async move {
        let mut broken = tools();
        broken.nft = "flanneld-absent-nft".into();
        let err = start(
            settings(true, false, broken),
            &lease(false),
            &PreviousSubnets::default(),
        )
        .await
        .err()
        .expect("masquerade rules cannot be installed without nft");
        let text = err.to_string();
        assert!(
            text.contains("flanneld-absent-nft") && text.contains("not found"),
            "{text}"
        );
    });
}

#[test]
fn nothing_to_keep_means_no_process_in_steady_state() {
    let ns = Netns::new("trf-nft");
    in_ns(&ns, |ns| async move {
        let mut s = settings(true, false, tools());
        s.choice.masquerade = false;
        s.choice.forward = false;
        let mut manager = start(s, &lease(false), &PreviousSubnets::default())
            .await
            .unwrap();
        // Upstream creates both tables anyway.
        let tables = sh(&ns, "nft list tables");
        assert!(
            tables.contains("table ip flannel-ipv4\n") && tables.contains("table ip6 flannel-ipv6\n"),
            "{tables}"
        );
        let before = manager.spawned_processes();
        assert_eq!(manager.resync().await, 0);
        assert_eq!(manager.spawned_processes(), before);
    });
}
