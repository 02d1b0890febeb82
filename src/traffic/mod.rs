//! The traffic manager (spec section 10, 11.1 step 10; quirks 7, 8, 14): keeps the ip-masq and
//! forward rules (iptables or nftables) and the optional blackhole route for the own subnet, and
//! repairs them when someone else changes them.
//!
//! Shape: `rules` says what is wanted (pure data), `iptables` / `nftables` compare a listing
//! with it and build one transaction (pure), `ipt_mode` / `nft_mode` run the tools through
//! `exec`, `blackhole` goes through the kernel seam. `TrafficManager::start` does the startup
//! work (fatal errors are returned), `run` does the upkeep every `--iptables-resync` seconds:
//! read the rules once (one `iptables-save` / `nft list table` per family), apply only when
//! something drifted. Rules are never removed at shutdown (hitless restart). With the ipip
//! backend's `PeerFilter`, `ipip_filter` keeps the rules that drop IPIP from non-peers, its allowed
//! set fed by the daemon's lease watcher and applied by the same upkeep.
//!
//! Deviations from upstream (README compatibility notes): drift includes duplicated and
//! out-of-order rules, not just missing ones; nftables mode is also kept in shape (upstream never
//! re-checks it); switching to nftables removes the iptables chains from both tables, and is
//! skipped with a log line when the iptables binaries are absent (upstream exits 1 and looks for
//! FLANNEL-FWD in the nat table, quirk 14); the blackhole route is really installed (upstream's
//! check never adds it) and, for IPv4, only while no other route serves the own subnet.

use std::sync::Arc;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::kernel::Netlink;
use crate::lease::Lease;
use crate::netconf::NetConf;
use crate::subnet::env_file::PreviousSubnets;

pub mod blackhole;
pub mod exec;
pub mod ipip_filter;
mod ipt_mode;
pub mod iptables;
mod nft_mode;
pub mod nftables;
pub mod rules;

use exec::{ExecError, Runner};
use rules::{Family, FamilyNets, RuleChoice};

/// Fatal traffic-manager errors; each names the step, the tool and its stderr.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TrafficError {
    #[error("setting up the {family} masquerade rules with {tool}: {source}")]
    Masquerade {
        family: Family,
        tool: String,
        source: ExecError,
    },
    #[error("reading the {family} rules with {tool}: {reason}")]
    Listing {
        family: Family,
        tool: String,
        reason: String,
    },
    #[error("applying the {family} rules with {tool}: {source}")]
    Apply {
        family: Family,
        tool: String,
        source: ExecError,
    },
    #[error("setting up the nftables tables flannel-ipv4/flannel-ipv6 with {tool}: {source}")]
    Nftables { tool: String, source: ExecError },
}

/// The programs to run for one family in iptables mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptablesTools {
    pub iptables: String,
    pub save: String,
    pub restore: String,
}

impl IptablesTools {
    /// `iptables`, `iptables-save`, `iptables-restore` (or `ip6tables...`); with a variant
    /// (`legacy`, `nft`) `iptables-legacy`, `iptables-legacy-save`, `iptables-legacy-restore`.
    pub fn new(family: Family, variant: Option<&str>) -> IptablesTools {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let stem = match variant {
            Some(v) => format!("{base}-{v}"),
            None => base.to_owned(),
        };
        IptablesTools {
            save: format!("{stem}-save"),
            restore: format!("{stem}-restore"),
            iptables: stem,
        }
    }
}

/// Every program the traffic manager may run, and the runner that counts the spawns.
#[derive(Debug, Clone)]
pub struct Tools {
    pub v4: IptablesTools,
    pub v6: IptablesTools,
    pub nft: String,
    pub runner: Runner,
}

impl Tools {
    /// The programs found in PATH under their plain names (as upstream).
    pub fn system() -> Tools {
        Tools::variant(None)
    }

    /// A specific iptables variant (`legacy` or `nft`), or the plain names with `None`.
    pub fn variant(variant: Option<&str>) -> Tools {
        Tools {
            v4: IptablesTools::new(Family::V4, variant),
            v6: IptablesTools::new(Family::V6, variant),
            nft: "nft".to_owned(),
            runner: Runner::new(),
        }
    }

    pub fn ipt(&self, family: Family) -> &IptablesTools {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }
}

/// What the traffic manager is asked to keep, from the flags and the network config.
#[derive(Debug, Clone)]
pub struct TrafficSettings {
    /// `EnableNFTables`.
    pub nftables: bool,
    /// `--ip-masq`, `--iptables-forward-rules`, and `random_fully` = not
    /// `--ip-masq-fully-random-disable` (the tool's support is checked at start).
    pub choice: RuleChoice,
    /// `--ip-blackhole-route`.
    pub blackhole: bool,
    /// `--iptables-resync`.
    pub resync: Duration,
    pub network: Option<Ipv4Net>,
    pub ipv6_network: Option<Ipv6Net>,
    pub tools: Tools,
}

impl TrafficSettings {
    pub fn new(config: &Config, netconf: &NetConf) -> TrafficSettings {
        TrafficSettings {
            nftables: netconf.enable_nftables,
            choice: RuleChoice {
                masquerade: config.ip_masq,
                forward: config.iptables_forward_rules,
                random_fully: !config.ip_masq_fully_random_disable,
            },
            blackhole: config.ip_blackhole_route,
            resync: config.iptables_resync,
            network: netconf.network,
            ipv6_network: netconf.ipv6_network,
            tools: Tools::system(),
        }
    }

    /// The families with a configured network (v4 rules iff Network is set, v6 iff IPv6Network),
    /// each with the lease's subnet of that family.
    fn families(&self, lease: &Lease) -> Vec<(Family, FamilyNets)> {
        let mut out = Vec::new();
        if let Some(network) = self.network {
            let subnet = lease.subnet.map(IpNet::V4);
            out.push((
                Family::V4,
                FamilyNets {
                    network: IpNet::V4(network),
                    subnet,
                },
            ));
        }
        if let Some(network) = self.ipv6_network {
            let subnet = lease.ipv6_subnet.map(IpNet::V6);
            out.push((
                Family::V6,
                FamilyNets {
                    network: IpNet::V6(network),
                    subnet,
                },
            ));
        }
        out
    }
}

/// The Network and subnet a previous run wrote to subnet.env, per family.
fn previous_nets(previous: &PreviousSubnets, family: Family) -> (Option<IpNet>, Option<IpNet>) {
    match family {
        Family::V4 => (previous.network.map(IpNet::V4), previous.subnet.map(IpNet::V4)),
        Family::V6 => (
            previous.ipv6_network.map(IpNet::V6),
            previous.ipv6_subnet.map(IpNet::V6),
        ),
    }
}

enum Driver {
    Iptables(ipt_mode::IptablesMode),
    Nftables(nft_mode::NftablesMode),
}

/// The running traffic manager: startup done, upkeep pending.
pub struct TrafficManager {
    driver: Driver,
    runner: Runner,
    resync: Duration,
    netlink: Arc<dyn Netlink>,
    blackholes: Vec<IpNet>,
    /// The ipip peer filter, when the ipip backend asks for it (`ipip_filter`).
    ipip: Option<ipip_filter::IpipFilter>,
}

impl TrafficManager {
    /// Startup (spec 11.1 step 10): remove the other mode's rules, then install the masquerade
    /// and forward rules and the blackhole route. A masquerade failure is fatal (as upstream); a
    /// forward-rule or blackhole failure is logged and retried by the upkeep.
    pub async fn start(
        settings: TrafficSettings,
        lease: &Lease,
        previous: &PreviousSubnets,
        netlink: Arc<dyn Netlink>,
    ) -> Result<TrafficManager, TrafficError> {
        let families = settings.families(lease);
        let runner = settings.tools.runner.clone();
        // Mode switching lives here: first the other mode's rules go (spec 11.1 step 10,
        // "Cleaning-up unused traffic manager rules"), then the chosen mode starts. The two modes
        // never call each other.
        let driver = if settings.nftables {
            ipt_mode::remove_chains(&settings.tools).await;
            Driver::Nftables(nft_mode::NftablesMode::start(&settings, &families).await?)
        } else {
            nft_mode::remove_tables(&settings.tools).await;
            Driver::Iptables(ipt_mode::IptablesMode::start(&settings, &families, previous).await?)
        };
        let mut blackholes = Vec::new();
        if settings.blackhole {
            blackholes.extend(lease.subnet.map(IpNet::V4));
            blackholes.extend(lease.ipv6_subnet.map(IpNet::V6));
        }
        let manager = TrafficManager {
            driver,
            runner,
            resync: settings.resync,
            netlink,
            blackholes,
            ipip: None,
        };
        manager.ensure_blackholes().await;
        Ok(manager)
    }

    /// Starts (or, when off, cleans up) the ipip peer filter; it is kept by the upkeep from then on.
    pub async fn start_ipip_filter(
        &mut self,
        settings: &TrafficSettings,
        request: ipip_filter::FilterRequest,
    ) {
        self.ipip = ipip_filter::IpipFilter::start(settings, request).await;
    }

    /// One upkeep pass: read the rules once per family and repair what drifted; keep the
    /// blackhole routes. Returns how many repairs were applied.
    pub async fn resync(&mut self) -> usize {
        let repaired = match &mut self.driver {
            Driver::Iptables(mode) => mode.resync().await,
            Driver::Nftables(mode) => mode.resync().await,
        };
        self.ensure_blackholes().await;
        if let Some(filter) = &mut self.ipip {
            return repaired + filter.resync().await;
        }
        repaired
    }

    /// Processes started so far (startup included).
    pub fn spawned_processes(&self) -> u64 {
        self.runner.spawned()
    }

    /// Upkeep every resync period until `shutdown`; the rules are left in place afterwards. The
    /// blackhole routes are also re-checked at once when a route to the own subnet comes or goes
    /// (cni0's route appearing must not stay shadowed for a whole period).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut route_events = if self.blackholes.is_empty() {
            None
        } else {
            match self.netlink.subscribe().await {
                Ok(events) => Some(events),
                Err(e) => {
                    warn!(
                        "watching routes for the blackhole route failed; checking it every resync period only: {e}"
                    );
                    None
                }
            }
        };
        let mut next_resync = tokio::time::Instant::now() + self.resync;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(next_resync) => {
                    next_resync = tokio::time::Instant::now() + self.resync;
                    self.resync().await;
                }
                // A new allowed set for the ipip peer filter is applied at once.
                _ = ipip_changed(&mut self.ipip) => {
                    if let Some(filter) = &mut self.ipip {
                        filter.resync().await;
                    }
                }
                event = next_route_event(&mut route_events) => match event {
                    Some(event) => {
                        let mut check = blackhole::concerns(&event, &self.blackholes);
                        // Take the rest of a burst (a link going away) before one check.
                        while let Some(more) = ready_route_event(&mut route_events) {
                            check |= blackhole::concerns(&more, &self.blackholes);
                        }
                        if check {
                            self.ensure_blackholes().await;
                        }
                    }
                    None => route_events = None,
                },
            }
        }
        info!("traffic manager stopped; firewall rules and blackhole routes are left in place");
    }

    async fn ensure_blackholes(&self) {
        if self.blackholes.is_empty() {
            return;
        }
        blackhole::ensure(self.netlink.as_ref(), &self.blackholes).await;
    }
}

async fn next_route_event(
    events: &mut Option<futures::stream::BoxStream<'static, crate::kernel::KernelEvent>>,
) -> Option<crate::kernel::KernelEvent> {
    use futures::StreamExt;
    match events {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

async fn ipip_changed(filter: &mut Option<ipip_filter::IpipFilter>) {
    match filter {
        Some(filter) => filter.changed().await,
        None => std::future::pending().await,
    }
}

/// An event already queued, without waiting.
fn ready_route_event(
    events: &mut Option<futures::stream::BoxStream<'static, crate::kernel::KernelEvent>>,
) -> Option<crate::kernel::KernelEvent> {
    use futures::{FutureExt, StreamExt};
    events.as_mut()?.next().now_or_never().flatten()
}

/// The daemon's entry point: start the manager (fatal errors returned) and the ipip peer filter
/// as asked, and return the upkeep, to be run (and watched) by the caller until `shutdown`.
pub async fn start(
    config: &Config,
    netconf: &NetConf,
    lease: &Lease,
    previous: &PreviousSubnets,
    netlink: Arc<dyn Netlink>,
    shutdown: CancellationToken,
    ipip: ipip_filter::FilterRequest,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static, TrafficError> {
    let settings = TrafficSettings::new(config, netconf);
    let mut manager = TrafficManager::start(settings.clone(), lease, previous, netlink).await?;
    manager.start_ipip_filter(&settings, ipip).await;
    debug!(spawned = manager.spawned_processes(), "traffic manager started");
    Ok(manager.run(shutdown))
}
