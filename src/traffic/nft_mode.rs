//! nftables mode, the part that runs `nft` (spec 10.2): remove the iptables-mode rules, probe
//! `fully-random`, install both tables in one `nft -f -` transaction, remember each table's
//! listing, and on every upkeep pass list each table once and re-install it only when the
//! listing changed (rules flushed, edited or added, table deleted).

use tracing::{debug, error, info, warn};

use super::exec::Runner;
use super::nftables;
use super::rules::{self, Family, FamilyNets};
use super::{Tools, TrafficError, TrafficSettings};

struct NftFamily {
    family: Family,
    transaction: String,
    /// The listing right after the last successful install; `None` until one succeeded.
    recorded: Option<String>,
}

/// The `nft` program and the runner that counts its spawns.
struct Nft {
    program: String,
    runner: Runner,
}

impl Nft {
    async fn apply(&self, transaction: &str) -> Result<(), TrafficError> {
        debug!(%transaction, "running nft -f -");
        self.runner
            .run(&self.program, &["-f", "-"], Some(transaction))
            .await
            .map(drop)
            .map_err(|source| TrafficError::Nftables {
                tool: self.program.clone(),
                source,
            })
    }

    /// `nft list table <family> <table>`; `None` when it fails (the table is gone).
    async fn list(&self, family: Family) -> Option<String> {
        let args = ["list", "table", family.nft_family(), family.nft_table()];
        match self.runner.run(&self.program, &args, None).await {
            Ok(text) => Some(text),
            Err(e) => {
                debug!("{e}");
                None
            }
        }
    }
}

pub(super) struct NftablesMode {
    nft: Nft,
    /// Families with a configured network and at least one chain: their tables are kept in shape.
    watched: Vec<NftFamily>,
}

impl NftablesMode {
    pub(super) async fn start(
        settings: &TrafficSettings,
        families: &[(Family, FamilyNets)],
    ) -> Result<NftablesMode, TrafficError> {
        info!("starting the traffic manager in nftables mode");
        let nft = Nft {
            program: settings.tools.nft.clone(),
            runner: settings.tools.runner.clone(),
        };
        let mut choice = settings.choice;
        if choice.masquerade && choice.random_fully {
            let probe = nft
                .runner
                .run(
                    &nft.program,
                    &["--check", "-f", "-"],
                    Some(&nftables::random_fully_probe()),
                )
                .await;
            if let Err(e) = probe {
                warn!("nftables: masquerade fully-random is not supported, masquerading without it: {e}");
                choice.random_fully = false;
            }
        }
        let mut mode = NftablesMode {
            nft,
            watched: Vec::new(),
        };
        // Both tables always exist, as upstream creates them; only configured families get chains.
        let mut all = String::new();
        for family in [Family::V4, Family::V6] {
            let chains = match families.iter().find(|(f, _)| *f == family) {
                Some((_, nets)) => {
                    if choice.masquerade && nets.subnet.is_some() {
                        info!(%family, network = %nets.network, subnet = ?nets.subnet, "nftables: setting up masquerade rules");
                    }
                    if choice.forward {
                        info!(%family, network = %nets.network, "nftables: setting up forward accept rules");
                    }
                    rules::nft_chains(nets, &choice)
                }
                None => Vec::new(),
            };
            let transaction = nftables::install_transaction(family, &chains);
            all.push_str(&transaction);
            if !chains.is_empty() {
                mode.watched.push(NftFamily {
                    family,
                    transaction,
                    recorded: None,
                });
            }
        }
        match mode.nft.apply(&all).await {
            Ok(()) => {
                for entry in &mut mode.watched {
                    entry.recorded = mode.nft.list(entry.family).await;
                }
                info!("nftables rules installed");
            }
            Err(e) if choice.masquerade => return Err(e),
            Err(e) => error!("{e}; retrying every resync period"),
        }
        Ok(mode)
    }

    /// One upkeep pass: one listing per watched table; re-install those that changed.
    pub(super) async fn resync(&mut self) -> usize {
        let mut repaired = 0;
        for entry in &mut self.watched {
            let family = entry.family;
            let listing = self.nft.list(family).await;
            let reason = match &entry.recorded {
                Some(recorded) => nftables::listing_drift(recorded, listing.as_deref()),
                None => Some("the last install failed".to_owned()),
            };
            let Some(reason) = reason else { continue };
            warn!(%family, table = family.nft_table(), %reason, "nftables table drifted; re-installing it");
            match self.nft.apply(&entry.transaction).await {
                Ok(()) => {
                    repaired += 1;
                    entry.recorded = self.nft.list(family).await;
                    info!(%family, table = family.nft_table(), "nftables table repaired");
                }
                Err(e) => error!("{e}"),
            }
        }
        repaired
    }
}

/// Removes flannel's nftables tables (when iptables mode is selected). Never fails: errors,
/// including a missing `nft` binary or no nftables support, are logged at debug level.
pub(super) async fn remove_tables(tools: &Tools) {
    let listing = match tools.runner.run(&tools.nft, &["list", "tables"], None).await {
        Ok(listing) => listing,
        Err(e) => {
            debug!("looking for nftables-mode tables to clean up: {e}");
            return;
        }
    };
    let present = nftables::listed_tables(&listing);
    if present.is_empty() {
        return;
    }
    let names: Vec<&str> = present.iter().map(|f| f.nft_table()).collect();
    match tools
        .runner
        .run(
            &tools.nft,
            &["-f", "-"],
            Some(&nftables::removal_transaction(&present)),
        )
        .await
    {
        Ok(_) => {
            info!(tables = %names.join(","), "removed the nftables-mode tables (iptables mode is selected)")
        }
        Err(e) => debug!("removing the nftables-mode tables: {e}"),
    }
}
