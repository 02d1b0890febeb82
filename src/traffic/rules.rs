//! The firewall rules flanneld wants, as pure data (spec 10.1 and 10.2; quirks 7 and 8): the
//! masquerade set and the forward set for iptables (chain names, comments and order exactly as
//! upstream) and their nftables equivalents (upstream's tables, chains, priorities and rules,
//! including its different 4th masquerade rule and its exact, unmasked mark).
//!
//! No I/O and no decisions about when to apply anything: `iptables.rs` and `nftables.rs` turn these
//! sets into payloads and compare them with what the kernel lists.

use std::fmt;

use ipnet::IpNet;

/// The kube-proxy masquerade mark: packets carrying it are left to kube-proxy (no double NAT).
pub const KUBE_PROXY_MARK: &str = "0x4000/0x4000";
/// The same mark as upstream's nftables rule matches it: the exact value, not masked (quirk 8).
pub const NFT_KUBE_PROXY_MARK: &str = "0x4000";

pub const MASQ_CHAIN: &str = "FLANNEL-POSTRTG";
pub const FORWARD_CHAIN: &str = "FLANNEL-FWD";
pub const MASQ_COMMENT: &str = "flanneld masq";
pub const FORWARD_COMMENT: &str = "flanneld forward";

pub const NFT_TABLE_V4: &str = "flannel-ipv4";
pub const NFT_TABLE_V6: &str = "flannel-ipv6";
pub const NFT_MASQ_CHAIN: &str = "postrtg";
pub const NFT_FORWARD_CHAIN: &str = "forward";

/// An address family: selects the tool (`iptables` or `ip6tables`), the nft family and the
/// multicast range that is never masqueraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn multicast(self) -> &'static str {
        match self {
            Family::V4 => "224.0.0.0/4",
            Family::V6 => "ff00::/8",
        }
    }

    /// The nftables family keyword (`ip` / `ip6`), also the address match prefix in rules.
    pub fn nft_family(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    pub fn nft_table(self) -> &'static str {
        match self {
            Family::V4 => NFT_TABLE_V4,
            Family::V6 => NFT_TABLE_V6,
        }
    }

    pub fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// One iptables rule: the chain it lives in and its specification tokens (what follows
/// `-A <chain>`), e.g. `["-s", "10.244.0.0/16", "-m", "comment", "--comment", "flanneld masq", ...]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IptRule {
    pub chain: String,
    pub spec: Vec<String>,
}

impl IptRule {
    fn new(chain: &str, spec: &[&str]) -> IptRule {
        IptRule {
            chain: chain.to_owned(),
            spec: spec.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    /// `<head> -m comment --comment <comment> <tail>` in `chain`: every rule we write carries
    /// its set's comment between the match and the target.
    fn commented(chain: &str, head: &[&str], comment: &str, tail: &[&str]) -> IptRule {
        let tokens: Vec<&str> = head
            .iter()
            .copied()
            .chain(["-m", "comment", "--comment", comment])
            .chain(tail.iter().copied())
            .collect();
        IptRule::new(chain, &tokens)
    }

    /// `<action> <chain> <spec>` as one iptables-restore line: tokens joined by single spaces,
    /// the token after `--comment` in double quotes (as upstream's payload builder).
    pub fn line(&self, action: &str) -> String {
        let mut out = format!("{action} {}", self.chain);
        let mut previous = "";
        for token in &self.spec {
            out.push(' ');
            if previous == "--comment" {
                out.push('"');
                out.push_str(token);
                out.push('"');
            } else {
                out.push_str(token);
            }
            previous = token;
        }
        out
    }
}

/// One flannel chain in one table, with the jump that leads to it from a built-in chain.
/// `rules[0]` is that jump (in `parent`); the others live in `chain`, in order. The list is the
/// same as upstream's rule list (masquerade: 7 rules; forward: 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptRuleSet {
    pub family: Family,
    pub table: &'static str,
    /// The flannel-owned chain (`FLANNEL-POSTRTG`, `FLANNEL-FWD`).
    pub chain: &'static str,
    /// The built-in chain holding the jump (`POSTROUTING`, `FORWARD`).
    pub parent: &'static str,
    pub rules: Vec<IptRule>,
}

impl IptRuleSet {
    /// The jump rule (in `parent`).
    pub fn jump(&self) -> Option<&IptRule> {
        self.rules.iter().find(|r| r.chain == self.parent)
    }

    /// The rules of the flannel chain, in order.
    pub fn chain_rules(&self) -> impl Iterator<Item = &IptRule> {
        self.rules.iter().filter(|r| r.chain == self.chain)
    }
}

/// The masquerade set for cluster network `cluster` and own lease subnet `pod` (spec 10.1):
/// the POSTROUTING jump, the kube-proxy mark RETURN, three RETURN rules and two MASQUERADE rules,
/// the latter with `--random-fully` when `random_fully`.
pub fn masq_rules(cluster: IpNet, pod: IpNet, random_fully: bool) -> IptRuleSet {
    let family = Family::of(&cluster);
    let c = cluster.trunc().to_string();
    let p = pod.trunc().to_string();
    let with = |head: &[&str], tail: &[&str]| IptRule::commented(MASQ_CHAIN, head, MASQ_COMMENT, tail);
    let masquerade: &[&str] = if random_fully {
        &["-j", "MASQUERADE", "--random-fully"]
    } else {
        &["-j", "MASQUERADE"]
    };
    let mut jump = with(&[], &["-j", MASQ_CHAIN]);
    jump.chain = "POSTROUTING".to_owned();
    let rules = vec![
        jump,
        with(&["-m", "mark", "--mark", KUBE_PROXY_MARK], &["-j", "RETURN"]),
        with(&["-s", &p, "-d", &c], &["-j", "RETURN"]),
        with(&["-s", &c, "-d", &p], &["-j", "RETURN"]),
        with(&["!", "-s", &c, "-d", &p], &["-j", "RETURN"]),
        with(&["-s", &c, "!", "-d", family.multicast()], masquerade),
        with(&["!", "-s", &c, "-d", &c], masquerade),
    ];
    IptRuleSet {
        family,
        table: "nat",
        chain: MASQ_CHAIN,
        parent: "POSTROUTING",
        rules,
    }
}

/// The forward set for network `network` (spec 10.1): the FORWARD jump and ACCEPT for traffic
/// from and to the network.
pub fn forward_rules(network: IpNet) -> IptRuleSet {
    let n = network.trunc().to_string();
    let rule = |chain: &str, head: &[&str], target: &str| {
        IptRule::commented(chain, head, FORWARD_COMMENT, &["-j", target])
    };
    IptRuleSet {
        family: Family::of(&network),
        table: "filter",
        chain: FORWARD_CHAIN,
        parent: "FORWARD",
        rules: vec![
            rule("FORWARD", &[], FORWARD_CHAIN),
            rule(FORWARD_CHAIN, &["-s", &n], "ACCEPT"),
            rule(FORWARD_CHAIN, &["-d", &n], "ACCEPT"),
        ],
    }
}

/// One nftables base chain of a flannel table, with its rules (spec 10.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftChain {
    pub name: &'static str,
    /// `nat` or `filter`.
    pub kind: &'static str,
    pub hook: &'static str,
    pub priority: i32,
    pub comment: &'static str,
    /// Rule bodies, in order (`meta mark 0x4000 return`, ...).
    pub rules: Vec<String>,
}

/// The nftables masquerade chain for cluster network `cluster` and own subnet `pod`. Unlike the
/// iptables set, the 4th rule is `saddr != P daddr C return` and the mark match is exact (quirk 8).
pub fn nft_masq_chain(cluster: IpNet, pod: IpNet, fully_random: bool) -> NftChain {
    let family = Family::of(&cluster);
    let f = family.nft_family();
    let c = cluster.trunc();
    let p = pod.trunc();
    let masquerade = if fully_random {
        "masquerade fully-random"
    } else {
        "masquerade"
    };
    let multicast = family.multicast();
    NftChain {
        name: NFT_MASQ_CHAIN,
        kind: "nat",
        hook: "postrouting",
        priority: 100,
        comment: "chain to manage traffic masquerading by flannel",
        rules: vec![
            format!("meta mark {NFT_KUBE_PROXY_MARK} return"),
            format!("{f} saddr {p} {f} daddr {c} return"),
            format!("{f} saddr {c} {f} daddr {p} return"),
            format!("{f} saddr != {p} {f} daddr {c} return"),
            format!("{f} saddr {c} {f} daddr != {multicast} {masquerade}"),
            format!("{f} saddr != {c} {f} daddr {c} {masquerade}"),
        ],
    }
}

/// The nftables forward chain for `network` (spec 10.2).
pub fn nft_forward_chain(network: IpNet) -> NftChain {
    let f = Family::of(&network).nft_family();
    let n = network.trunc();
    NftChain {
        name: NFT_FORWARD_CHAIN,
        kind: "filter",
        hook: "forward",
        priority: 0,
        comment: "chain to accept flannel traffic",
        rules: vec![format!("{f} saddr {n} accept"), format!("{f} daddr {n} accept")],
    }
}

/// Everything flanneld wants for one family: inputs of both rule sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyNets {
    /// The cluster network (`Network` / `IPv6Network`).
    pub network: IpNet,
    /// The own lease subnet of that family, if the lease has one.
    pub subnet: Option<IpNet>,
}

/// What is enabled (flags `--ip-masq`, `--iptables-forward-rules`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleChoice {
    pub masquerade: bool,
    pub forward: bool,
    /// `--random-fully` / `fully-random` on the MASQUERADE rules.
    pub random_fully: bool,
}

/// The iptables rule sets for one family, masquerade first (as upstream installs them).
/// Masquerading needs an own subnet of that family; without one the set is left out.
pub fn ipt_sets(nets: &FamilyNets, choice: &RuleChoice) -> Vec<IptRuleSet> {
    let mut sets = Vec::new();
    if choice.masquerade
        && let Some(subnet) = nets.subnet
    {
        sets.push(masq_rules(nets.network, subnet, choice.random_fully));
    }
    if choice.forward {
        sets.push(forward_rules(nets.network));
    }
    sets
}

/// The nftables chains for one family (masquerade, then forward).
pub fn nft_chains(nets: &FamilyNets, choice: &RuleChoice) -> Vec<NftChain> {
    let mut chains = Vec::new();
    if choice.masquerade
        && let Some(subnet) = nets.subnet
    {
        chains.push(nft_masq_chain(nets.network, subnet, choice.random_fully));
    }
    if choice.forward {
        chains.push(nft_forward_chain(nets.network));
    }
    chains
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;

/// The chain (table `raw`) of the ipip peer filter (our `PeerFilter` option, flannel #961).
pub const IPIP_CHAIN: &str = "FLANNEL-IPIP";
pub const IPIP_COMMENT: &str = "flanneld ipip";
/// The nftables table of the ipip peer filter (its own table, so the flannel-ipv4 table stays
/// exactly upstream's).
pub const NFT_IPIP_TABLE: &str = "flannel-ipip";

/// The iptables ipip peer filter: IPIP (protocol 4) to the tunnel address `local` jumps from
/// `raw PREROUTING` (before conntrack and routing) to `FLANNEL-IPIP`, which returns for each
/// allowed source (the peers' public IPs) and drops the rest. Tokens are in the form
/// `iptables-save` lists them (`-d x/32 -p 4`; protocol names are canonicalised when comparing).
pub fn ipip_filter_rules(
    local: std::net::Ipv4Addr,
    peers: &std::collections::BTreeSet<std::net::Ipv4Addr>,
) -> IptRuleSet {
    let rule = |chain: &str, head: &[&str], target: &str| {
        IptRule::commented(chain, head, IPIP_COMMENT, &["-j", target])
    };
    let dst = format!("{local}/32");
    let mut rules = vec![rule("PREROUTING", &["-d", &dst, "-p", "4"], IPIP_CHAIN)];
    for peer in peers {
        let src = format!("{peer}/32");
        rules.push(rule(IPIP_CHAIN, &["-s", &src], "RETURN"));
    }
    rules.push(rule(IPIP_CHAIN, &[], "DROP"));
    IptRuleSet {
        family: Family::V4,
        table: "raw",
        chain: IPIP_CHAIN,
        parent: "PREROUTING",
        rules,
    }
}
