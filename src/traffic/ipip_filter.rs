//! The ipip peer filter (our `PeerFilter` option of the ipip backend; flannel #961, where upstream
//! accepts IPIP from any host): drop protocol-4 packets to the tunnel address whose source is not
//! a current peer's PublicIP. iptables mode: chain `FLANNEL-IPIP` in table `raw`, jumped to first
//! from `PREROUTING`; nftables mode: its own table `ip flannel-ipip` (a set of peers and one rule).
//!
//! The allowed set comes from the lease watcher through a `watch` channel the daemon fills; `None`
//! means "the cluster is not known yet", and then nothing is changed (a restart keeps the previous
//! run's rules until the first lease snapshot, so no peer's packets are dropped meanwhile). It is
//! applied level-triggered like the other rules: on every resync of the traffic manager (listing,
//! comparing, re-installing on drift) and right away when the set changes. No loop of its own.
//!
//! Off by default: it can cut a working cluster, because a peer's IPIP packets leave from its
//! interface address, which differs from its PublicIP with `--public-ip`, the kube
//! `public-ip-overwrite` annotation or NAT. With the option off, startup removes a filter a
//! previous run left (in both modes); with it on, startup removes the other mode's.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::iptables::{self, IptablesVersion};
use super::rules::{self, Family};
use super::{IptablesTools, Tools, TrafficSettings, nftables};

/// The peers' public IPs as the lease watcher sees them; `None` until the first snapshot.
pub type AllowedPeers = watch::Receiver<Option<BTreeSet<Ipv4Addr>>>;

/// What the daemon asks of the traffic manager about IPIP.
#[derive(Debug)]
pub enum FilterRequest {
    /// No filter; one left by a previous run is removed.
    Off,
    /// Drop IPIP to `local` (the tunnel's address) from every source not in `peers`.
    On { local: Ipv4Addr, peers: AllowedPeers },
}

#[derive(Debug)]
enum Mode {
    Iptables { tools: IptablesTools, wait: bool },
    Nftables { nft: String },
}

/// The running filter, kept by the traffic manager.
#[derive(Debug)]
pub struct IpipFilter {
    mode: Mode,
    runner: super::exec::Runner,
    local: Ipv4Addr,
    peers: AllowedPeers,
    /// The sender is gone: no more changes will come.
    closed: bool,
    /// The set installed by the last successful apply, and (nftables) the table's listing then.
    applied: Option<BTreeSet<Ipv4Addr>>,
    recorded: Option<String>,
}

impl IpipFilter {
    /// Startup: remove what should not be there (a disabled filter, the other mode's filter);
    /// returns the filter to keep when it is on. Never fails: errors are logged and the upkeep
    /// retries the install.
    pub async fn start(settings: &TrafficSettings, request: FilterRequest) -> Option<IpipFilter> {
        let tools = &settings.tools;
        let (local, peers) = match request {
            FilterRequest::Off => {
                remove_iptables(tools).await;
                remove_nftables(tools).await;
                return None;
            }
            FilterRequest::On { local, peers } => (local, peers),
        };
        let mode = if settings.nftables {
            remove_iptables(tools).await;
            Mode::Nftables {
                nft: tools.nft.clone(),
            }
        } else {
            remove_nftables(tools).await;
            let ipt = tools.ipt(Family::V4).clone();
            let wait = match tools.runner.run(&ipt.iptables, &["--version"], None).await {
                Ok(text) => IptablesVersion::parse(&text).is_some_and(|v| v.at_least_1_6_2()),
                Err(e) => {
                    warn!("ipip peer filter: {e}");
                    false
                }
            };
            Mode::Iptables { tools: ipt, wait }
        };
        info!(%local, nftables = settings.nftables, "ipip peer filter on: IPIP to the tunnel address only from current peers");
        let mut filter = IpipFilter {
            mode,
            runner: tools.runner.clone(),
            local,
            peers,
            closed: false,
            applied: None,
            recorded: None,
        };
        filter.resync().await;
        Some(filter)
    }

    /// Waits until the allowed set changes; never returns once the sender is gone.
    pub async fn changed(&mut self) {
        if !self.closed && self.peers.changed().await.is_ok() {
            return;
        }
        self.closed = true;
        std::future::pending::<()>().await;
    }

    /// One upkeep pass: list, compare with the wanted rules for the current set, re-install when
    /// they differ. Returns 1 when something was applied.
    pub async fn resync(&mut self) -> usize {
        let Some(peers) = self.peers.borrow_and_update().clone() else {
            debug!("ipip peer filter: the peers are not known yet; leaving the rules as they are");
            return 0;
        };
        let result = match &self.mode {
            Mode::Iptables { tools, wait } => self.resync_iptables(tools, *wait, &peers).await,
            Mode::Nftables { nft } => self.resync_nftables(nft, &peers).await,
        };
        match result {
            Ok(None) => 0,
            Ok(Some(recorded)) => {
                if self.applied.as_ref() == Some(&peers) {
                    warn!(
                        peers = peers.len(),
                        "ipip peer filter rules drifted; re-installed them"
                    );
                } else {
                    info!(peers = peers.len(), local = %self.local, "ipip peer filter: allowed sources updated");
                }
                self.applied = Some(peers);
                self.recorded = recorded;
                1
            }
            Err(e) => {
                warn!("ipip peer filter: {e}; retrying at the next resync");
                0
            }
        }
    }

    /// `Ok(None)`: nothing to do; `Ok(Some(_))`: applied.
    async fn resync_iptables(
        &self,
        tools: &IptablesTools,
        wait: bool,
        peers: &BTreeSet<Ipv4Addr>,
    ) -> Result<Option<Option<String>>, String> {
        let set = rules::ipip_filter_rules(self.local, peers);
        let text = self
            .runner
            .run(&tools.save, &["-t", "raw"], None)
            .await
            .map_err(|e| e.to_string())?;
        let tables = iptables::with_protocol_numbers(iptables::parse_save(&text).map_err(|e| e.to_string())?);
        let drift = iptables::drift(&set, &tables);
        if drift.is_empty() {
            return Ok(None);
        }
        debug!(drift = %drift.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "), "ipip peer filter differs");
        let mut args = vec!["--noflush"];
        if wait {
            args.push("--wait");
        }
        let payload = iptables::insert_first_payload(&set, &tables);
        self.runner
            .run(&tools.restore, &args, Some(&payload))
            .await
            .map_err(|e| e.to_string())?;
        Ok(Some(None))
    }

    async fn resync_nftables(
        &self,
        nft: &str,
        peers: &BTreeSet<Ipv4Addr>,
    ) -> Result<Option<Option<String>>, String> {
        let listing = self.list_nft(nft).await;
        if self.applied.as_ref() == Some(peers) && listing.is_some() && listing == self.recorded {
            return Ok(None);
        }
        let transaction = nftables::ipip_filter_transaction(self.local, peers);
        self.runner
            .run(nft, &["-f", "-"], Some(&transaction))
            .await
            .map_err(|e| e.to_string())?;
        Ok(Some(self.list_nft(nft).await))
    }

    async fn list_nft(&self, nft: &str) -> Option<String> {
        self.runner
            .run(nft, &["list", "table", "ip", rules::NFT_IPIP_TABLE], None)
            .await
            .ok()
    }
}

/// Removes the iptables filter chain and its jump (when present). Logs, never fails.
async fn remove_iptables(tools: &Tools) {
    let ipt = tools.ipt(Family::V4);
    let text = match tools.runner.run(&ipt.save, &["-t", "raw"], None).await {
        Ok(text) => text,
        Err(e) => {
            debug!("looking for an ipip peer filter to remove: {e}");
            return;
        }
    };
    let Ok(tables) = iptables::parse_save(&text) else {
        return;
    };
    let set = rules::ipip_filter_rules(Ipv4Addr::UNSPECIFIED, &BTreeSet::new());
    let Some(payload) = iptables::removal_payload(&[&set], &tables) else {
        return;
    };
    match tools
        .runner
        .run(&ipt.restore, &["--noflush"], Some(&payload))
        .await
    {
        Ok(_) => info!(chain = rules::IPIP_CHAIN, "removed the iptables ipip peer filter"),
        Err(e) => warn!("removing the iptables ipip peer filter: {e}"),
    }
}

/// Removes the nftables filter table (when present). Logs, never fails.
async fn remove_nftables(tools: &Tools) {
    let listing = match tools.runner.run(&tools.nft, &["list", "tables"], None).await {
        Ok(listing) => listing,
        Err(e) => {
            debug!("looking for an nftables ipip peer filter to remove: {e}");
            return;
        }
    };
    if !nftables::lists_ipip_filter(&listing) {
        return;
    }
    let transaction = format!("delete table ip {}\n", rules::NFT_IPIP_TABLE);
    match tools
        .runner
        .run(&tools.nft, &["-f", "-"], Some(&transaction))
        .await
    {
        Ok(_) => info!(
            table = rules::NFT_IPIP_TABLE,
            "removed the nftables ipip peer filter"
        ),
        Err(e) => warn!("removing the nftables ipip peer filter: {e}"),
    }
}

/// Where the daemon publishes the allowed set (`None`: no filter wanted).
pub type PeersSender = watch::Sender<Option<BTreeSet<Ipv4Addr>>>;

/// The filter the network config asks for: on with the ipip backend's `PeerFilter` (and a tunnel
/// address `local`), off otherwise. With it on, the daemon feeds the returned sender.
pub fn request_for(
    netconf: &crate::netconf::NetConf,
    local: Option<Ipv4Addr>,
) -> (Option<PeersSender>, FilterRequest) {
    match (&netconf.backend, local) {
        (crate::netconf::BackendConfig::Ipip(cfg), Some(local)) if cfg.peer_filter => {
            let (tx, peers) = watch::channel(None);
            (Some(tx), FilterRequest::On { local, peers })
        }
        _ => (None, FilterRequest::Off),
    }
}

/// Publishes the allowed set for `leases` (the watcher's known remote leases) when it changed.
pub fn publish(sender: &PeersSender, leases: &[crate::lease::Lease]) {
    let set = allowed_peers(leases);
    sender.send_if_modified(|current| {
        if current.as_ref() == Some(&set) {
            return false;
        }
        *current = Some(set);
        true
    });
}

/// The allowed set for the filter: the public IPs of the known remote leases of type `ipip`.
pub fn allowed_peers(leases: &[crate::lease::Lease]) -> BTreeSet<Ipv4Addr> {
    leases
        .iter()
        .filter(|l| l.attrs.backend_type == "ipip" && !l.attrs.public_ip.is_unspecified())
        .map(|l| l.attrs.public_ip)
        .collect()
}

#[cfg(test)]
#[path = "ipip_filter_tests.rs"]
mod tests;
