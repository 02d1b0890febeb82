//! nftables mode, the pure part (spec 10.2; quirk 8): the `nft -f -` transactions that install
//! flannel's tables `ip flannel-ipv4` / `ip6 flannel-ipv6`, remove them, or probe
//! `masquerade fully-random`, and the comparison of a table listing with the one seen right after
//! the last install. No process is run here; `nft_mode.rs` runs `nft`.
//!
//! An install transaction owns its table outright: it declares, deletes and re-creates the table
//! with exactly the wanted chains (so a rule or chain someone added, or a chain flanneld no longer
//! wants, disappears), all in one atomic transaction.

use super::rules::{Family, NftChain};

/// The statements of upstream's table creation: `add table ip flannel-ipv4 { comment ... ; }`.
fn add_table(family: Family) -> String {
    let (f, t) = (family.nft_family(), family.nft_table());
    format!("add table {f} {t} {{ comment \"rules for {t}\" ; }}\n")
}

/// The install transaction for one family: the table (re-created empty) and its chains, each
/// with upstream's `add chain` (type, hook, priority, comment), `flush chain` and `add rule` lines.
pub fn install_transaction(family: Family, chains: &[NftChain]) -> String {
    let (f, t) = (family.nft_family(), family.nft_table());
    let mut out = add_table(family);
    out.push_str(&format!("delete table {f} {t}\n"));
    out.push_str(&add_table(family));
    for chain in chains {
        let c = chain.name;
        out.push_str(&format!(
            "add chain {f} {t} {c} {{ type {} hook {} priority {} ; comment \"{}\" ; }}\n",
            chain.kind, chain.hook, chain.priority, chain.comment
        ));
        out.push_str(&format!("flush chain {f} {t} {c}\n"));
        for rule in &chain.rules {
            out.push_str(&format!("add rule {f} {t} {c} {rule}\n"));
        }
    }
    out
}

/// The families whose flannel table appears in an `nft list tables` listing.
pub fn listed_tables(listing: &str) -> Vec<Family> {
    [Family::V4, Family::V6]
        .into_iter()
        .filter(|f| {
            let want = format!("table {} {}", f.nft_family(), f.nft_table());
            listing.lines().any(|line| line.trim() == want)
        })
        .collect()
}

/// Deletes the flannel tables of `families` in one transaction.
pub fn removal_transaction(families: &[Family]) -> String {
    families
        .iter()
        .map(|f| format!("delete table {} {}\n", f.nft_family(), f.nft_table()))
        .collect()
}

/// The transaction checked (`nft --check`) to learn whether `masquerade fully-random` is supported,
/// as upstream's probe: a chain `masqueradeTest` in flannel-ipv4.
pub fn random_fully_probe() -> String {
    let f = Family::V4;
    let (fam, t) = (f.nft_family(), f.nft_table());
    format!(
        "{}add chain {fam} {t} masqueradeTest {{ type nat hook postrouting priority 100 ; \
         comment \"chain to test if masquerade random fully is supported\" ; }}\n\
         flush chain {fam} {t} masqueradeTest\n\
         add rule {fam} {t} masqueradeTest ip saddr != 127.0.0.1 masquerade fully-random\n",
        add_table(f)
    )
}

/// How a table listing differs from the one recorded after the last install; `None` when equal.
/// `listing` is `None` when the table could not be listed (deleted).
pub fn listing_drift(recorded: &str, listing: Option<&str>) -> Option<String> {
    let Some(listing) = listing else {
        return Some("the table is missing".to_owned());
    };
    if listing == recorded {
        return None;
    }
    let mut want = recorded.lines();
    let mut have = listing.lines();
    for line in 1.. {
        match (want.next(), have.next()) {
            (Some(w), Some(h)) if w == h => continue,
            (Some(w), Some(h)) => {
                return Some(format!("line {line} is {:?}, expected {:?}", h.trim(), w.trim()));
            }
            (Some(w), None) => return Some(format!("line {line} {:?} is missing", w.trim())),
            (None, Some(h)) => return Some(format!("extra line {line} {:?}", h.trim())),
            (None, None) => break,
        }
    }
    Some("the listing differs in whitespace".to_owned())
}

/// The ipip peer filter's table `ip flannel-ipip` (our `PeerFilter` option), re-created whole: a set
/// `peers` of the allowed sources and one rule, at raw priority of prerouting, that drops IPIP
/// (protocol 4) to `local` from any other source.
pub fn ipip_filter_transaction(
    local: std::net::Ipv4Addr,
    peers: &std::collections::BTreeSet<std::net::Ipv4Addr>,
) -> String {
    let t = super::rules::NFT_IPIP_TABLE;
    let table = format!("add table ip {t} {{ comment \"flanneld: IPIP only from peers\" ; }}\n");
    let mut out = format!("{table}delete table ip {t}\n{table}");
    out.push_str(&format!("add set ip {t} peers {{ type ipv4_addr ; }}\n"));
    if !peers.is_empty() {
        let list: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
        out.push_str(&format!("add element ip {t} peers {{ {} }}\n", list.join(", ")));
    }
    out.push_str(&format!(
        "add chain ip {t} prerouting {{ type filter hook prerouting priority -300 ; }}\n\
         add rule ip {t} prerouting ip daddr {local} ip protocol 4 ip saddr != @peers drop\n"
    ));
    out
}

/// Whether an `nft list tables` listing shows the ipip filter's table.
pub fn lists_ipip_filter(listing: &str) -> bool {
    let want = format!("table ip {}", super::rules::NFT_IPIP_TABLE);
    listing.lines().any(|line| line.trim() == want)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::rules::{nft_forward_chain, nft_masq_chain};

    #[test]
    fn install_transaction_has_upstream_statements() {
        let chains = [
            nft_masq_chain(
                "10.244.0.0/16".parse().unwrap(),
                "10.244.1.0/24".parse().unwrap(),
                true,
            ),
            nft_forward_chain("10.244.0.0/16".parse().unwrap()),
        ];
        let text = install_transaction(Family::V4, &chains);
        assert_eq!(
            text,
            "add table ip flannel-ipv4 { comment \"rules for flannel-ipv4\" ; }\n\
             delete table ip flannel-ipv4\n\
             add table ip flannel-ipv4 { comment \"rules for flannel-ipv4\" ; }\n\
             add chain ip flannel-ipv4 postrtg { type nat hook postrouting priority 100 ; comment \"chain to manage traffic masquerading by flannel\" ; }\n\
             flush chain ip flannel-ipv4 postrtg\n\
             add rule ip flannel-ipv4 postrtg meta mark 0x4000 return\n\
             add rule ip flannel-ipv4 postrtg ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return\n\
             add rule ip flannel-ipv4 postrtg ip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return\n\
             add rule ip flannel-ipv4 postrtg ip saddr != 10.244.1.0/24 ip daddr 10.244.0.0/16 return\n\
             add rule ip flannel-ipv4 postrtg ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random\n\
             add rule ip flannel-ipv4 postrtg ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random\n\
             add chain ip flannel-ipv4 forward { type filter hook forward priority 0 ; comment \"chain to accept flannel traffic\" ; }\n\
             flush chain ip flannel-ipv4 forward\n\
             add rule ip flannel-ipv4 forward ip saddr 10.244.0.0/16 accept\n\
             add rule ip flannel-ipv4 forward ip daddr 10.244.0.0/16 accept\n"
        );
        let v6 = install_transaction(Family::V6, &[]);
        assert_eq!(
            v6,
            "add table ip6 flannel-ipv6 { comment \"rules for flannel-ipv6\" ; }\n\
             delete table ip6 flannel-ipv6\n\
             add table ip6 flannel-ipv6 { comment \"rules for flannel-ipv6\" ; }\n"
        );
    }

    #[test]
    fn removal_and_probe_transactions() {
        assert_eq!(
            removal_transaction(&[Family::V4, Family::V6]),
            "delete table ip flannel-ipv4\ndelete table ip6 flannel-ipv6\n"
        );
        let listing = "table ip nat\ntable ip6 flannel-ipv6\ntable inet flannel-ipv4\n";
        assert_eq!(listed_tables(listing), [Family::V6]);
        assert_eq!(listed_tables(""), []);
        let probe = random_fully_probe();
        assert!(
            probe.contains(
                "add chain ip flannel-ipv4 masqueradeTest { type nat hook postrouting priority 100 ;"
            )
        );
        assert!(probe.ends_with(
            "add rule ip flannel-ipv4 masqueradeTest ip saddr != 127.0.0.1 masquerade fully-random\n"
        ));
    }

    #[test]
    fn listing_drift_names_the_first_difference() {
        let recorded =
            "table ip flannel-ipv4 {\n\tchain postrtg {\n\t\tmeta mark 0x00004000 return\n\t}\n}\n";
        assert_eq!(listing_drift(recorded, Some(recorded)), None);
        assert_eq!(
            listing_drift(recorded, None).as_deref(),
            Some("the table is missing")
        );
        let flushed = "table ip flannel-ipv4 {\n\tchain postrtg {\n\t}\n}\n";
        assert_eq!(
            listing_drift(recorded, Some(flushed)).as_deref(),
            Some("line 3 is \"}\", expected \"meta mark 0x00004000 return\"")
        );
        let extra = format!("{recorded}table x\n");
        assert_eq!(
            listing_drift(recorded, Some(&extra)).as_deref(),
            Some("extra line 6 \"table x\"")
        );
        assert_eq!(
            listing_drift(recorded, Some("table ip flannel-ipv4 {\n")).as_deref(),
            Some("line 2 \"chain postrtg {\" is missing")
        );
        assert!(listing_drift("a\n", Some("a")).is_some());
    }
}
