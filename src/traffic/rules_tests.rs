use super::*;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn lines(set: &IptRuleSet) -> Vec<String> {
    set.rules.iter().map(|r| r.line("-A")).collect()
}

#[test]
fn masq_rules_match_upstream_listing_v4() {
    let set = masq_rules(net("10.244.0.0/16"), net("10.244.1.0/24"), true);
    assert_eq!(set.rules.len(), 7, "upstream's masqRules has 7 rules");
    assert_eq!(
        lines(&set),
        [
            r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#,
            r#"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN"#,
            r#"-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN"#,
            r#"-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN"#,
            r#"-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN"#,
            r#"-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#,
            r#"-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#,
        ]
    );
    assert_eq!(
        (set.table, set.chain, set.parent),
        ("nat", "FLANNEL-POSTRTG", "POSTROUTING")
    );
    assert_eq!(set.jump().map(|r| r.chain.as_str()), Some("POSTROUTING"));
    assert_eq!(set.chain_rules().count(), 6);
}

#[test]
fn masq_rules_without_random_fully() {
    let set = masq_rules(net("10.244.0.0/16"), net("10.244.1.0/24"), false);
    let all = lines(&set);
    assert!(all.iter().all(|l| !l.contains("--random-fully")));
    assert!(all[5].ends_with(r#"--comment "flanneld masq" -j MASQUERADE"#));
    assert!(all[6].ends_with(r#"--comment "flanneld masq" -j MASQUERADE"#));
}

#[test]
fn masq_rules_v6_use_ff00_multicast_and_mask_inputs() {
    // Inputs with host bits are masked as Go's IP6Net.String() would show the network.
    let set = masq_rules(net("2001:db8::1/48"), net("2001:db8:0:1::1/64"), true);
    assert_eq!(set.family, Family::V6);
    let all = lines(&set);
    assert_eq!(
        all[2],
        r#"-A FLANNEL-POSTRTG -s 2001:db8:0:1::/64 -d 2001:db8::/48 -m comment --comment "flanneld masq" -j RETURN"#
    );
    assert_eq!(
        all[5],
        r#"-A FLANNEL-POSTRTG -s 2001:db8::/48 ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#
    );
}

#[test]
fn forward_rules_match_upstream() {
    let set = forward_rules(net("10.244.0.0/16"));
    assert_eq!(
        lines(&set),
        [
            r#"-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD"#,
            r#"-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#,
            r#"-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#,
        ]
    );
    assert_eq!((set.table, set.parent), ("filter", "FORWARD"));
    let v6 = forward_rules(net("2001:db8::/48"));
    assert_eq!(v6.family, Family::V6);
    assert!(lines(&v6)[1].contains("-s 2001:db8::/48"));
}

#[test]
fn rule_line_quotes_only_the_comment_token() {
    let rule = IptRule::new("X", &["-m", "comment", "--comment", "a b", "-j", "RETURN"]);
    assert_eq!(rule.line("-D"), r#"-D X -m comment --comment "a b" -j RETURN"#);
}

#[test]
fn nft_masq_chain_has_upstream_fourth_rule_and_exact_mark() {
    let chain = nft_masq_chain(net("10.244.0.0/16"), net("10.244.1.0/24"), true);
    assert_eq!(
        (chain.kind, chain.hook, chain.priority),
        ("nat", "postrouting", 100)
    );
    assert_eq!(chain.comment, "chain to manage traffic masquerading by flannel");
    assert_eq!(
        chain.rules,
        [
            "meta mark 0x4000 return",
            "ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return",
            "ip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return",
            "ip saddr != 10.244.1.0/24 ip daddr 10.244.0.0/16 return",
            "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
            "ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random",
        ]
    );
    let plain = nft_masq_chain(net("2001:db8::/48"), net("2001:db8:0:1::/64"), false);
    assert_eq!(
        plain.rules[4],
        "ip6 saddr 2001:db8::/48 ip6 daddr != ff00::/8 masquerade"
    );
    assert_eq!(
        plain.rules[3],
        "ip6 saddr != 2001:db8:0:1::/64 ip6 daddr 2001:db8::/48 return"
    );
}

#[test]
fn nft_forward_chain_matches_upstream() {
    let chain = nft_forward_chain(net("10.244.0.0/16"));
    assert_eq!((chain.kind, chain.hook, chain.priority), ("filter", "forward", 0));
    assert_eq!(chain.comment, "chain to accept flannel traffic");
    assert_eq!(
        chain.rules,
        ["ip saddr 10.244.0.0/16 accept", "ip daddr 10.244.0.0/16 accept"]
    );
}

#[test]
fn sets_follow_the_flags() {
    let nets = FamilyNets {
        network: net("10.244.0.0/16"),
        subnet: Some(net("10.244.1.0/24")),
    };
    let both = RuleChoice {
        masquerade: true,
        forward: true,
        random_fully: true,
    };
    let sets = ipt_sets(&nets, &both);
    assert_eq!(
        sets.iter().map(|s| s.chain).collect::<Vec<_>>(),
        [MASQ_CHAIN, FORWARD_CHAIN]
    );
    let fwd_only = RuleChoice {
        masquerade: false,
        ..both
    };
    assert_eq!(ipt_sets(&nets, &fwd_only).len(), 1);
    let none = RuleChoice {
        masquerade: false,
        forward: false,
        random_fully: false,
    };
    assert!(ipt_sets(&nets, &none).is_empty());
    assert!(nft_chains(&nets, &none).is_empty());
    // No own subnet of that family: no masquerade set, the forward set stays.
    let no_subnet = FamilyNets { subnet: None, ..nets };
    assert_eq!(ipt_sets(&no_subnet, &both).len(), 1);
    assert_eq!(nft_chains(&no_subnet, &both).len(), 1);
}
