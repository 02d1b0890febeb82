//! iptables mode, the part that runs the tools (spec 10.1): detect the version (for
//! `--random-fully` and `--wait`), read the rules with one `iptables-save` per family, and apply
//! one `iptables-restore --noflush` per family and change (one `*table ... COMMIT` transaction per
//! table). Decisions come from `iptables.rs`.
//!
//! Startup always re-installs the sets (upstream's bootstrap: the jump moves to the end of its
//! built-in chain, quirk 7) in one atomic transaction per table, so a restart drops no packet.
//! When the Network or the subnet differs from the previous subnet.env, the old set's rules are
//! logged and removed in that same transaction (the jump is deleted and re-added, the chain is
//! rewritten): the net effect of upstream's separate teardown.

use tracing::{error, info, warn};

use super::exec::Runner;
use super::iptables::{self, IptablesVersion, SavedTables};
use super::rules::{self, Family, FamilyNets, IptRuleSet};
use super::{IptablesTools, TrafficError, TrafficSettings, previous_nets};
use crate::subnet::env_file::PreviousSubnets;

struct IptFamily {
    family: Family,
    tools: IptablesTools,
    /// `iptables-restore --wait` is supported (iptables >= 1.6.2).
    wait: bool,
    sets: Vec<IptRuleSet>,
    /// The `iptables-save` arguments: `-t <table>` when every set lives in one table, else none
    /// (all tables in one process). Derived once; every resync lists with them.
    save_args: Vec<&'static str>,
}

pub(super) struct IptablesMode {
    families: Vec<IptFamily>,
    runner: Runner,
}

impl IptablesMode {
    pub(super) async fn start(
        settings: &TrafficSettings,
        families: &[(Family, FamilyNets)],
        previous: &PreviousSubnets,
    ) -> Result<IptablesMode, TrafficError> {
        let runner = settings.tools.runner.clone();
        info!("starting the traffic manager in iptables mode");
        let mut mode = IptablesMode {
            families: Vec::new(),
            runner,
        };
        for (family, nets) in families {
            let tools = settings.tools.ipt(*family).clone();
            let version = mode.version(&tools).await;
            let modern = version.as_ref().is_some_and(IptablesVersion::at_least_1_6_2);
            let mut choice = settings.choice;
            choice.random_fully &= modern;
            if settings.choice.masquerade && settings.choice.random_fully && !modern {
                info!(%family, tool = %tools.iptables, "MASQUERADE rules without --random-fully (needs iptables 1.6.2 or later)");
            }
            let sets = rules::ipt_sets(nets, &choice);
            let entry = IptFamily {
                family: *family,
                tools,
                wait: modern,
                save_args: save_args(&sets),
                sets,
            };
            let masquerade = entry.sets.iter().any(|s| s.chain == rules::MASQ_CHAIN);
            match mode.bootstrap(&entry, nets, previous).await {
                Ok(()) => {}
                Err(e) if masquerade => return Err(e),
                Err(e) => error!("{e}; retrying every resync period"),
            }
            mode.families.push(entry);
        }
        Ok(mode)
    }

    /// `iptables --version`; `None` (logged) when it cannot be run or read.
    async fn version(&self, tools: &IptablesTools) -> Option<IptablesVersion> {
        match self.runner.run(&tools.iptables, &["--version"], None).await {
            Ok(text) => {
                let version = IptablesVersion::parse(&text);
                match &version {
                    Some(v) => info!(
                        tool = %tools.iptables, version = %format!("{}.{}.{}", v.major, v.minor, v.patch),
                        backend = %v.backend, "found iptables"
                    ),
                    None => {
                        warn!(tool = %tools.iptables, output = %text.trim(), "cannot read the iptables version")
                    }
                }
                version
            }
            Err(e) => {
                warn!("{e}");
                None
            }
        }
    }

    /// Startup install of one family: log the recycling of a previous Network/subnet, then one
    /// restore with every set of the family.
    async fn bootstrap(
        &self,
        entry: &IptFamily,
        nets: &FamilyNets,
        previous: &PreviousSubnets,
    ) -> Result<(), TrafficError> {
        if entry.sets.is_empty() {
            return Ok(());
        }
        let tables = self.list(entry).await?;
        if let Some(masq) = entry.sets.iter().find(|s| s.chain == rules::MASQ_CHAIN) {
            let (old_network, old_subnet) = previous_nets(previous, entry.family);
            if old_network != Some(nets.network) || old_subnet != nets.subnet {
                let unspecified = unspecified(entry.family);
                let old = rules::masq_rules(
                    old_network.unwrap_or(unspecified),
                    old_subnet.unwrap_or(unspecified),
                    masq.rules
                        .iter()
                        .any(|r| r.spec.iter().any(|t| t == "--random-fully")),
                );
                let found = iptables::teardown_payload(&old, &tables)
                    .map(|p| p.lines().filter(|l| l.starts_with("-D ")).count())
                    .unwrap_or(0);
                info!(
                    family = %entry.family, network = %nets.network, subnet = ?nets.subnet,
                    previous_network = ?old_network, previous_subnet = ?old_subnet, old_rules_found = found,
                    "network or subnet differs from the previous run; replacing the old masquerade rules"
                );
            }
            info!(family = %entry.family, network = %nets.network, subnet = ?nets.subnet, "setting up masquerade rules");
        }
        if entry.sets.iter().any(|s| s.chain == rules::FORWARD_CHAIN) {
            info!(
                family = %entry.family, network = %nets.network,
                "setting up FORWARD accept rules for the flannel network (the chain policy is not changed)"
            );
        }
        let sets: Vec<&IptRuleSet> = entry.sets.iter().collect();
        self.restore(entry, &iptables::install_payload(&sets, &tables))
            .await?;
        info!(family = %entry.family, tool = %entry.tools.restore, "iptables rules installed");
        Ok(())
    }

    /// One upkeep pass over every family: one listing each, one restore for those that drifted.
    pub(super) async fn resync(&mut self) -> usize {
        let mut repaired = 0;
        for entry in &self.families {
            if entry.sets.is_empty() {
                continue;
            }
            let tables = match self.list(entry).await {
                Ok(tables) => tables,
                Err(e) => {
                    error!("{e}");
                    continue;
                }
            };
            let mut drifted: Vec<&IptRuleSet> = Vec::new();
            let mut reasons: Vec<String> = Vec::new();
            for set in &entry.sets {
                let drift = iptables::drift(set, &tables);
                if !drift.is_empty() {
                    drifted.push(set);
                    reasons.extend(drift.iter().map(ToString::to_string));
                }
            }
            if drifted.is_empty() {
                continue;
            }
            warn!(family = %entry.family, reasons = %reasons.join("; "), "iptables rules drifted; re-installing them");
            match self
                .restore(entry, &iptables::install_payload(&drifted, &tables))
                .await
            {
                Ok(()) => {
                    repaired += 1;
                    info!(family = %entry.family, "iptables rules repaired");
                }
                Err(e) => error!("{e}"),
            }
        }
        repaired
    }

    /// One `iptables-save` for the tables the family's sets use.
    async fn list(&self, entry: &IptFamily) -> Result<SavedTables, TrafficError> {
        let listing_error = |reason: String| TrafficError::Listing {
            family: entry.family,
            tool: entry.tools.save.clone(),
            reason,
        };
        let text = self
            .runner
            .run(&entry.tools.save, &entry.save_args, None)
            .await
            .map_err(|e| listing_error(e.to_string()))?;
        iptables::parse_save(&text).map_err(|e| listing_error(e.to_string()))
    }

    async fn restore(&self, entry: &IptFamily, payload: &str) -> Result<(), TrafficError> {
        let mut args = vec!["--noflush"];
        if entry.wait {
            args.push("--wait");
        }
        tracing::debug!(family = %entry.family, %payload, "running iptables-restore");
        let masquerade = entry.sets.iter().any(|s| s.chain == rules::MASQ_CHAIN);
        self.runner
            .run(&entry.tools.restore, &args, Some(payload))
            .await
            .map(drop)
            .map_err(|source| {
                if masquerade {
                    TrafficError::Masquerade {
                        family: entry.family,
                        tool: entry.tools.restore.clone(),
                        source,
                    }
                } else {
                    TrafficError::Apply {
                        family: entry.family,
                        tool: entry.tools.restore.clone(),
                        source,
                    }
                }
            })
    }
}

/// Removes flannel's iptables chains and jumps from both tables of both families (when switching
/// to nftables). Never fails: a missing binary or a failing tool is logged.
pub(super) async fn remove_chains(tools: &super::Tools) {
    for family in [Family::V4, Family::V6] {
        let ipt = tools.ipt(family);
        let unspecified = unspecified(family);
        let masq = rules::masq_rules(unspecified, unspecified, false);
        let fwd = rules::forward_rules(unspecified);
        let text = match tools.runner.run(&ipt.save, &[], None).await {
            Ok(text) => text,
            Err(e) if e.is_not_found() => {
                info!(tool = %ipt.save, "no iptables binary; no iptables rules to clean up");
                continue;
            }
            Err(e) => {
                tracing::debug!("cleaning up iptables rules: {e}");
                continue;
            }
        };
        let tables = match iptables::parse_save(&text) {
            Ok(tables) => tables,
            Err(e) => {
                warn!("cleaning up iptables rules: {e}");
                continue;
            }
        };
        let Some(payload) = iptables::removal_payload(&[&masq, &fwd], &tables) else {
            continue;
        };
        match tools
            .runner
            .run(&ipt.restore, &["--noflush"], Some(&payload))
            .await
        {
            Ok(_) => {
                info!(%family, tool = %ipt.restore, "removed the iptables-mode rules (nftables mode is selected)")
            }
            Err(e) => warn!("removing the iptables-mode rules: {e}"),
        }
    }
}

/// `-t <table>` when all `sets` live in one table; no arguments (every table) otherwise.
fn save_args(sets: &[IptRuleSet]) -> Vec<&'static str> {
    let mut tables: Vec<&'static str> = sets.iter().map(|s| s.table).collect();
    tables.dedup();
    match tables.as_slice() {
        [one] => vec!["-t", one],
        _ => Vec::new(),
    }
}

fn unspecified(family: Family) -> ipnet::IpNet {
    match family {
        Family::V4 => ipnet::IpNet::V4(ipnet::Ipv4Net::default()),
        Family::V6 => ipnet::IpNet::V6(ipnet::Ipv6Net::default()),
    }
}
