//! iptables mode, the pure part (spec 10.1; quirk 7): parse an `iptables-save` listing, decide
//! whether a rule set drifted (missing, duplicated, changed or out-of-order rules, a missing or
//! duplicated jump), and build the `iptables-restore --noflush` payloads that repair it or remove
//! it. No process is run here; `ipt_mode.rs` runs the tools.
//!
//! A repair payload declares the flannel chain (`:FLANNEL-POSTRTG - [0:0]`), which with
//! `--noflush` creates it or flushes it, deletes every listed jump to it, appends the jump (so it
//! ends up last in its built-in chain, as upstream's bootstrap does) and appends the chain's
//! rules: one atomic transaction per table, so no packet ever sees a half-written chain.

use std::collections::BTreeMap;
use std::fmt;

use super::rules::{IptRule, IptRuleSet};

/// A listing that cannot be read; names the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListingError {
    #[error("iptables-save listing line {line}: unterminated quote in {text:?}")]
    Unterminated { line: usize, text: String },
}

/// One table as `iptables-save` lists it: every chain (built-in and user-defined) with its rules'
/// specification tokens (what follows `-A <chain>`), in order, quotes removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedTable {
    pub chains: BTreeMap<String, Vec<Vec<String>>>,
}

impl SavedTable {
    fn rules(&self, chain: &str) -> &[Vec<String>] {
        self.chains.get(chain).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Tables by name (`nat`, `filter`, ...).
pub type SavedTables = BTreeMap<String, SavedTable>;

/// Parses `iptables-save` output. Comments, counters and `COMMIT` lines are skipped.
pub fn parse_save(text: &str) -> Result<SavedTables, ListingError> {
    let mut tables = SavedTables::new();
    let mut current: Option<String> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(name) = line.strip_prefix('*') {
            tables.entry(name.to_owned()).or_default();
            current = Some(name.to_owned());
            continue;
        }
        let Some(table) = current.as_ref().and_then(|name| tables.get_mut(name)) else {
            continue;
        };
        if let Some(decl) = line.strip_prefix(':') {
            if let Some(chain) = decl.split_whitespace().next() {
                table.chains.entry(chain.to_owned()).or_default();
            }
        } else if line.starts_with("-A ") {
            let tokens = tokenize(line).ok_or_else(|| ListingError::Unterminated {
                line: index + 1,
                text: raw.to_owned(),
            })?;
            if let [_, chain, spec @ ..] = tokens.as_slice() {
                table.chains.entry(chain.clone()).or_default().push(spec.to_vec());
            }
        } else if line == "COMMIT" {
            current = None;
        }
    }
    Ok(tables)
}

/// Splits a listing line into tokens: whitespace separates, double quotes group (with `\"` and
/// `\\` escapes inside), as iptables-save writes comments. `None` on an unterminated quote.
fn tokenize(line: &str) -> Option<Vec<String>> {
    let mut tokens = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(&first) = chars.peek() else {
            return Some(tokens);
        };
        let mut token = String::new();
        if first == '"' {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => token.push(chars.next()?),
                    c => token.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                token.push(c);
            }
        }
        tokens.push(token);
    }
}

/// One way a rule set differs from the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    ChainMissing {
        table: &'static str,
        chain: &'static str,
    },
    /// The chain's rules are not exactly the desired ones in the desired order.
    ChainDiffers {
        table: &'static str,
        chain: &'static str,
        expected: usize,
        found: usize,
    },
    JumpMissing {
        table: &'static str,
        parent: &'static str,
    },
    JumpDuplicated {
        table: &'static str,
        parent: &'static str,
        count: usize,
    },
    JumpDiffers {
        table: &'static str,
        parent: &'static str,
    },
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::ChainMissing { table, chain } => write!(f, "chain {chain} is missing from table {table}"),
            Drift::ChainDiffers {
                table,
                chain,
                expected,
                found,
            } => write!(
                f,
                "chain {chain} in table {table} differs from the desired {expected} rules (found {found} rules, \
                 missing, changed, duplicated or out of order)"
            ),
            Drift::JumpMissing { table, parent } => {
                write!(f, "the jump from {parent} is missing in table {table}")
            }
            Drift::JumpDuplicated { table, parent, count } => {
                write!(f, "{count} jumps from {parent} in table {table} (want one)")
            }
            Drift::JumpDiffers { table, parent } => {
                write!(f, "the jump from {parent} in table {table} was changed")
            }
        }
    }
}

/// The listed rules of `parent` that jump (or go) to `chain`.
fn listed_jumps<'a>(table: &'a SavedTable, parent: &str, chain: &str) -> Vec<&'a Vec<String>> {
    table
        .rules(parent)
        .iter()
        .filter(|spec| {
            spec.windows(2)
                .any(|w| (w[0] == "-j" || w[0] == "-g") && w[1] == chain)
        })
        .collect()
}

/// How the listing differs from `set`; empty when nothing needs to be applied. The position of
/// the jump inside the built-in chain is not checked, so that another tool appending its own rules
/// there does not make flanneld and that tool move their jumps in turn forever.
pub fn drift(set: &IptRuleSet, tables: &SavedTables) -> Vec<Drift> {
    let (table, chain, parent) = (set.table, set.chain, set.parent);
    let empty = SavedTable::default();
    let saved = tables.get(table).unwrap_or(&empty);
    let mut out = Vec::new();
    match saved.chains.get(chain) {
        None => out.push(Drift::ChainMissing { table, chain }),
        Some(listed) => {
            let desired: Vec<&Vec<String>> = set.chain_rules().map(|r| &r.spec).collect();
            if listed.iter().collect::<Vec<_>>() != desired {
                out.push(Drift::ChainDiffers {
                    table,
                    chain,
                    expected: desired.len(),
                    found: listed.len(),
                });
            }
        }
    }
    let jumps = listed_jumps(saved, parent, chain);
    match (jumps.as_slice(), set.jump()) {
        ([], _) => out.push(Drift::JumpMissing { table, parent }),
        ([one], Some(want)) if **one != want.spec => out.push(Drift::JumpDiffers { table, parent }),
        ([_], _) => {}
        (many, _) => out.push(Drift::JumpDuplicated {
            table,
            parent,
            count: many.len(),
        }),
    }
    out
}

/// The `iptables-restore --noflush` payload that (re)installs `sets` (all of one family), one
/// `*table ... COMMIT` block per table, in the order the tables first appear in `sets`.
/// Existing jumps (as listed in `tables`) are deleted first, so the result has exactly one jump,
/// appended last.
pub fn install_payload(sets: &[&IptRuleSet], tables: &SavedTables) -> String {
    let empty = SavedTable::default();
    let mut out = String::new();
    for table in table_order(sets.iter().map(|s| s.table)) {
        let saved = tables.get(table).unwrap_or(&empty);
        out.push_str(&format!("*{table}\n"));
        for set in sets.iter().filter(|s| s.table == table) {
            out.push_str(&format!(":{} - [0:0]\n", set.chain));
        }
        for set in sets.iter().filter(|s| s.table == table) {
            for listed in listed_jumps(saved, set.parent, set.chain) {
                out.push_str(&listed_rule(set.parent, listed).line("-D"));
                out.push('\n');
            }
            for rule in &set.rules {
                out.push_str(&rule.line("-A"));
                out.push('\n');
            }
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// The payload that removes `sets` entirely: every listed jump to the flannel chain, then the
/// chain itself (flushed, then deleted). Chains that are not listed are skipped; `None` when
/// nothing of `sets` is present.
pub fn removal_payload(sets: &[&IptRuleSet], tables: &SavedTables) -> Option<String> {
    let mut out = String::new();
    for table in table_order(sets.iter().map(|s| s.table)) {
        let Some(saved) = tables.get(table) else { continue };
        let mut block = String::new();
        for set in sets.iter().filter(|s| s.table == table) {
            for listed in listed_jumps(saved, set.parent, set.chain) {
                block.push_str(&listed_rule(set.parent, listed).line("-D"));
                block.push('\n');
            }
        }
        for set in sets.iter().filter(|s| s.table == table) {
            if saved.chains.contains_key(set.chain) {
                block.push_str(&format!("-F {0}\n-X {0}\n", set.chain));
            }
        }
        if !block.is_empty() {
            out.push_str(&format!("*{table}\n{block}COMMIT\n"));
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The payload that deletes those rules of `old` that are listed (upstream's teardown when the
/// Network or subnet changed; spec 10.1 step 1). `None` when none of them exists.
pub fn teardown_payload(old: &IptRuleSet, tables: &SavedTables) -> Option<String> {
    let saved = tables.get(old.table)?;
    let mut block = String::new();
    for rule in &old.rules {
        let present = saved
            .rules(&rule.chain)
            .iter()
            .filter(|spec| **spec == rule.spec)
            .count();
        for _ in 0..present {
            block.push_str(&rule.line("-D"));
            block.push('\n');
        }
    }
    (!block.is_empty()).then(|| format!("*{}\n{block}COMMIT\n", old.table))
}

fn listed_rule(chain: &str, spec: &[String]) -> IptRule {
    IptRule {
        chain: chain.to_owned(),
        spec: spec.to_vec(),
    }
}

fn table_order<'a>(tables: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut order: Vec<&str> = Vec::new();
    for t in tables {
        if !order.contains(&t) {
            order.push(t);
        }
    }
    order
}

/// The payload that (re)installs `set` with its jump INSERTED first in the built-in chain (a
/// filter that must see packets before anyone's ACCEPT), unlike `install_payload`'s append.
pub fn insert_first_payload(set: &IptRuleSet, tables: &SavedTables) -> String {
    let empty = SavedTable::default();
    let saved = tables.get(set.table).unwrap_or(&empty);
    let mut out = format!("*{}\n:{} - [0:0]\n", set.table, set.chain);
    for listed in listed_jumps(saved, set.parent, set.chain) {
        out.push_str(&listed_rule(set.parent, listed).line("-D"));
        out.push('\n');
    }
    if let Some(jump) = set.jump() {
        // `-I <parent> 1 <spec>`: the position rides along with the chain name.
        out.push_str(&listed_rule(&format!("{} 1", set.parent), &jump.spec).line("-I"));
        out.push('\n');
    }
    for rule in set.chain_rules() {
        out.push_str(&rule.line("-A"));
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}

/// The listing with protocol names after `-p` replaced by their numbers (`ipencap` -> `4`):
/// `iptables-save` prints names when /etc/protocols knows them, numbers otherwise.
pub fn with_protocol_numbers(mut tables: SavedTables) -> SavedTables {
    for table in tables.values_mut() {
        for rules in table.chains.values_mut() {
            for spec in rules.iter_mut() {
                for i in 1..spec.len() {
                    if spec[i - 1] == "-p" {
                        let number = match spec[i].as_str() {
                            "ipencap" | "ipip" | "ip-encap" => Some("4"),
                            "icmp" => Some("1"),
                            "tcp" => Some("6"),
                            "udp" => Some("17"),
                            _ => None,
                        };
                        if let Some(n) = number {
                            spec[i] = n.to_owned();
                        }
                    }
                }
            }
        }
    }
    tables
}

/// What `iptables --version` tells: the version and the backend (`nf_tables` or `legacy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptablesVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    /// `nf_tables`, `legacy`, or empty for old versions that do not say.
    pub backend: String,
}

impl IptablesVersion {
    /// Parses `iptables v1.8.9 (nf_tables)`; `None` when no `vX.Y.Z` is found.
    pub fn parse(text: &str) -> Option<IptablesVersion> {
        let start = text.find(" v")? + 2;
        let rest = text.get(start..)?;
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let mut parts = rest.get(..end)?.split('.').map(|p| p.parse::<u32>().ok());
        let (major, minor, patch) = (parts.next()??, parts.next()??, parts.next()??);
        let backend = rest
            .get(end..)
            .and_then(|tail| {
                let open = tail.find('(')?;
                let close = tail.find(')')?;
                tail.get(open + 1..close)
            })
            .unwrap_or("")
            .to_owned();
        Some(IptablesVersion {
            major,
            minor,
            patch,
            backend,
        })
    }

    /// `--random-fully` and `iptables-restore --wait` both need iptables 1.6.2 or later.
    pub fn at_least_1_6_2(&self) -> bool {
        (self.major, self.minor, self.patch) >= (1, 6, 2)
    }
}

#[cfg(test)]
#[path = "iptables_tests.rs"]
mod tests;
