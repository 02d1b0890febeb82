//! The etcd v3 subnet manager: reads the network config from `<prefix>/config`, acquires and
//! renews this node's lease under `<prefix>/subnets/`, and streams the cluster's leases.
//!
//! Files: `registry` (all etcd I/O, the only user of etcd-client), `transport` (plain text or
//! TLS per endpoint, PEM files), `entries` (pure key/value <-> lease conversion), `watch` (the
//! cluster watch), `renew` (the renewal loop). The decisions of lease acquisition are pure, in
//! `subnet::alloc`; this module executes them.
//! It must not touch the kernel or write files. Spec: flanneld-behaviour.md section 5 (and 8).
//!
//! Deviations from upstream (documented for the README's compatibility notes):
//! - a lost create race retries with another subnet (upstream dies: quirk 11);
//! - reusing a reservation (a key without etcd lease) keeps it a reservation (upstream attaches a
//!   24 h lease: quirk 11);
//! - a malformed key or value under `subnets/` is skipped with a warning naming the key; it never
//!   empties the watcher's view (quirk 12);
//! - waiting for the config logs the reason at most every ~10 s and never prints `timed out` to
//!   stdout (quirk 17);
//! - an IPv6-only config is reported as a bad config (upstream loops allocating /0: quirk 11),
//!   naming the two ways that work: dual stack, or the Kubernetes subnet manager (README);
//! - requests have a timeout and retry with backoff instead of blocking forever;
//! - renewal rewrites the key only if it still exists, so a deleted lease is never recreated;
//!   reusing a listed lease or deleting a stale one is guarded by the key's revision;
//! - a key with an unreadable value still occupies its subnet (never allocated over);
//! - listed and watched leases of other nodes carry no expiration (`None`): upstream reads each
//!   key's lease TTL (one TimeToLive request per key, per listing), but nothing uses it;
//! - a previous subnet is reused only if no lease *overlaps* it (upstream: none *equal*);
//! - `--etcd-cafile` is also used for `https://` endpoints without a client certificate;
//!   a mix of plain-text and TLS endpoints is refused with a clear error.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;

use crate::config::EtcdConfig;
use crate::lease::{Lease, LeaseAttrs, LeaseBatch, SubnetKey};
use crate::netconf::{NetConf, NetConfError};
use crate::subnet::alloc::{self, AcquireAction, AllocError, NewSubnetSource};
use crate::subnet::env_file::PreviousSubnets;
use crate::subnet::{LeaseOutcome, SubnetError, SubnetManager};

mod dual_race;
pub mod entries;
pub mod registry;
mod renew;
pub mod transport;
mod watch;

use entries::{EntryError, KeyLayout, lease_of_entry};
use registry::{CreateOutcome, KeyValue, PutOutcome, Registry, RegistryError};

/// TTL of every etcd lease we create (upstream `Grant(86400)`).
pub const LEASE_TTL_SECS: i64 = 86_400;
/// Upstream gives up after this many lost races in one acquisition.
const MAX_CONFLICTS: u32 = 10;

/// Exponential backoff for reconnects and retries: doubling from `min` up to `max`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max, next: min }
    }

    /// Upstream's watch backoff: 100 ms doubling to 5 s.
    pub(crate) fn watch() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

/// A lease as listed, with what is needed to change its key safely.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub lease: Lease,
    pub key: String,
    pub mod_revision: i64,
    /// Attached to an etcd lease (false: a reservation).
    pub leased: bool,
}

/// State shared by the manager, its watch streams and its renewal loop.
pub(crate) struct Shared {
    pub registry: Registry,
    pub layout: KeyLayout,
    pub previous: PreviousSubnets,
    pub renew_margin: Duration,
    /// The modification revision of this node's key as we last wrote it: renewal writes only
    /// over exactly that (a key another node took over after our lease expired is never
    /// overwritten).
    pub own_revision: std::sync::Mutex<Option<i64>>,
}

impl Shared {
    pub(crate) fn set_own_revision(&self, revision: i64) {
        if let Ok(mut slot) = self.own_revision.lock() {
            *slot = Some(revision);
        }
    }

    pub(crate) fn own_revision(&self) -> Option<i64> {
        self.own_revision.lock().ok().and_then(|slot| *slot)
    }

    /// An entry as a lease, or why it is not one.
    ///
    /// No lease TTL is read (that would be one TimeToLive request per key): nobody needs other
    /// nodes' expirations, and whether a key is leased is in the entry itself.
    pub(crate) fn listed(&self, entry: &KeyValue) -> Result<Listed, EntryError> {
        let lease = lease_of_entry(&self.layout, &entry.key, &entry.value, None, SystemTime::now())?;
        Ok(Listed {
            lease,
            key: entry.key.clone(),
            mod_revision: entry.mod_revision,
            leased: entry.lease_id != 0,
        })
    }

    /// Every valid lease, the subnets of keys whose value is unreadable (still occupied), and the
    /// revision of the listing. Malformed entries are skipped with a warning naming the key.
    pub(crate) async fn list_leases(&self) -> Result<LeaseListing, RegistryError> {
        let listing = self.registry.list(&self.layout.subnets).await?;
        let mut leases = Vec::with_capacity(listing.entries.len());
        let mut occupied = Vec::new();
        for entry in &listing.entries {
            match self.listed(entry) {
                Ok(lease) => leases.push(lease),
                Err(e) => {
                    warn_malformed(&e);
                    if let Ok(key) = self.layout.parse_key(&entry.key) {
                        occupied.push(key);
                    }
                }
            }
        }
        Ok(LeaseListing {
            revision: listing.revision,
            leases,
            occupied,
        })
    }
}

/// The result of `Shared::list_leases`.
pub(crate) struct LeaseListing {
    pub revision: i64,
    pub leases: Vec<Listed>,
    pub occupied: Vec<SubnetKey>,
}

/// The etcd subnet manager.
pub struct EtcdSubnetManager {
    shared: Arc<Shared>,
}

/// The one warning for an entry under `subnets/` that is not a lease (it names the key).
pub(crate) fn warn_malformed(error: &EntryError) {
    tracing::warn!(error = %error, "ignoring a malformed subnet entry in etcd");
}

fn datastore(err: RegistryError) -> SubnetError {
    SubnetError::Datastore(err.to_string())
}

impl EtcdSubnetManager {
    /// Set up the client (no request is sent without auth; with auth the client authenticates on
    /// first use), so an unreachable etcd never blocks here. Errors are setup errors: no endpoints,
    /// mixed schemes, unreadable TLS files.
    pub async fn connect(
        cfg: &EtcdConfig,
        previous: PreviousSubnets,
        renew_margin: Duration,
    ) -> Result<EtcdSubnetManager, SubnetError> {
        let registry = Registry::new(cfg)
            .await
            .map_err(|e| SubnetError::Fatal(e.to_string()))?;
        let layout = KeyLayout::new(&cfg.prefix);
        tracing::info!(
            endpoints = %registry.endpoints(),
            config_key = %layout.config,
            previous_subnet = ?previous.subnet,
            "using the etcd subnet manager"
        );
        Ok(EtcdSubnetManager {
            shared: Arc::new(Shared {
                registry,
                layout,
                previous,
                renew_margin,
                own_revision: std::sync::Mutex::new(None),
            }),
        })
    }

    /// The key of the network config, e.g. `/coreos.com/network/config`.
    pub fn config_key(&self) -> &str {
        &self.shared.layout.config
    }

    async fn read_config(&self) -> Result<NetConf, SubnetError> {
        let key = self.shared.layout.config.clone();
        let (_, entry) = self.shared.registry.get(&key).await.map_err(datastore)?;
        let Some(entry) = entry else {
            return Err(SubnetError::ConfigNotFound { key });
        };
        let bad = |source| SubnetError::BadConfig {
            key: key.clone(),
            source,
        };
        let text = std::str::from_utf8(&entry.value)
            .map_err(|e| bad(NetConfError::Json(format!("not UTF-8: {e}"))))?;
        let config = NetConf::parse_and_check(text).map_err(bad)?;
        if !config.enable_ipv4 {
            return Err(bad(NetConfError::Invalid(
                "EnableIPv4 is false, but the etcd subnet manager needs an IPv4 Network: IPv6-only is \
                 not supported with etcd (etcd keys and upstream's lease lookup are IPv4-based); use dual \
                 stack (EnableIPv4 with a Network) or the Kubernetes subnet manager (--kube-subnet-mgr)"
                    .into(),
            )));
        }
        Ok(config)
    }

    async fn acquire(&self, config: &NetConf, attrs: &LeaseAttrs) -> Result<Lease, SubnetError> {
        let value = attrs.to_json();
        let mut conflicts = 0;
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        loop {
            match self.try_acquire(config, attrs, &value).await {
                Ok(Some(lease)) => return Ok(lease),
                Ok(None) => {
                    conflicts += 1;
                    if conflicts >= MAX_CONFLICTS {
                        return Err(SubnetError::Datastore(format!(
                            "gave up acquiring a subnet under {} after {MAX_CONFLICTS} lost races with other nodes",
                            self.shared.layout.subnets
                        )));
                    }
                }
                Err(AcquireError::Subnet(e)) => return Err(e),
                Err(AcquireError::Registry(e)) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "acquiring a lease failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One attempt of spec 5.4. `Ok(None)`: another node changed the key first; try again.
    async fn try_acquire(
        &self,
        config: &NetConf,
        attrs: &LeaseAttrs,
        value: &str,
    ) -> Result<Option<Lease>, AcquireError> {
        let shared = &self.shared;
        let LeaseListing {
            leases: listed,
            occupied,
            ..
        } = shared.list_leases().await?;
        let leases: Vec<Lease> = listed.iter().map(|l| l.lease.clone()).collect();
        let plan = {
            let mut rng = rand::rng();
            alloc::plan_acquire(
                config,
                &leases,
                &occupied,
                attrs.public_ip,
                &shared.previous,
                &mut rng,
            )
        };
        if let Some(stale) = &plan.stale {
            let found = listed.iter().find(|l| l.lease.subnets() == stale.subnets());
            if let Some(stale) = found {
                tracing::info!(
                    key = %stale.key,
                    public_ip = %attrs.public_ip,
                    "the lease of this node's public IP does not fit the network config; deleting it"
                );
                if !shared
                    .registry
                    .delete_if_unchanged(&stale.key, stale.mod_revision)
                    .await?
                {
                    return Ok(None);
                }
            }
        }
        if let Some(previous) = plan.previous_incompatible {
            tracing::error!(
                previous_subnet = %previous,
                config_key = %shared.layout.config,
                "the subnet in the previous subnet file does not fit the network config; ignoring it"
            );
        }
        match plan.action {
            Err(AllocError::OutOfSubnets { total, min, max, .. }) => {
                Err(AcquireError::Subnet(SubnetError::OutOfSubnets {
                    total,
                    min,
                    max,
                }))
            }
            Err(e @ AllocError::NoRange { .. }) => {
                Err(AcquireError::Subnet(SubnetError::Fatal(e.to_string())))
            }
            Ok(AcquireAction::Reuse(own)) => {
                let Some(listed) = listed.iter().find(|l| l.lease.subnets() == own.subnets()) else {
                    return Ok(None);
                };
                // A reservation (no etcd lease) stays one; a leased key gets a fresh 24 h lease.
                let ttl = listed.leased.then_some(LEASE_TTL_SECS);
                match shared
                    .registry
                    .put_if_unchanged(&listed.key, value, ttl, listed.mod_revision)
                    .await?
                {
                    PutOutcome::Conflict => Ok(None),
                    PutOutcome::Written { ttl, revision } => {
                        shared.set_own_revision(revision);
                        tracing::info!(
                            subnet = ?own.subnet,
                            ipv6_subnet = ?own.ipv6_subnet,
                            public_ip = %attrs.public_ip,
                            reservation = ttl.is_none(),
                            "reusing the lease of this node's public IP"
                        );
                        Ok(Some(self.own_lease(own.subnet, own.ipv6_subnet, attrs, ttl)))
                    }
                }
            }
            Ok(AcquireAction::Create {
                subnet,
                ipv6_subnet,
                source,
            }) => {
                let key = shared.layout.subnet_key(&crate::lease::SubnetKey {
                    v4: subnet,
                    v6: ipv6_subnet,
                });
                match source {
                    NewSubnetSource::Previous => {
                        tracing::info!(subnet = %subnet, "reusing the subnet of the previous subnet file")
                    }
                    NewSubnetSource::Random => tracing::info!(
                        subnet_min = ?config.subnet_min,
                        subnet_max = ?config.subnet_max,
                        ipv6_subnet_min = ?config.ipv6_subnet_min,
                        ipv6_subnet_max = ?config.ipv6_subnet_max,
                        "picked a free subnet in the configured range"
                    ),
                }
                match shared
                    .registry
                    .create_with_lease(&key, value, LEASE_TTL_SECS)
                    .await?
                {
                    CreateOutcome::Exists => {
                        tracing::info!(key = %key, "another node took this subnet first; trying another one");
                        Ok(None)
                    }
                    CreateOutcome::Created { ttl, revision } => {
                        if self.lost_create_race(&key).await? {
                            return Ok(None);
                        }
                        shared.set_own_revision(revision);
                        tracing::info!(
                            subnet = %subnet,
                            ipv6_subnet = ?ipv6_subnet,
                            public_ip = %attrs.public_ip,
                            key = %key,
                            "allocated a lease to this node"
                        );
                        Ok(Some(self.own_lease(Some(subnet), ipv6_subnet, attrs, Some(ttl))))
                    }
                }
            }
        }
    }

    /// After creating `key`: whether an earlier lease overlaps one of its subnets (a dual-stack
    /// race the create transaction cannot see, `dual_race`); then our key is deleted again.
    async fn lost_create_race(&self, key: &str) -> Result<bool, RegistryError> {
        let listing = self.shared.list_leases().await?;
        let Some(earlier) = dual_race::earlier_overlapping(key, &listing.leases) else {
            return Ok(false);
        };
        tracing::info!(key = %key, earlier = %earlier,
            "another node took an overlapping subnet just before us; trying another one");
        if let Some(ours) = listing.leases.iter().find(|l| l.key == key) {
            self.shared
                .registry
                .delete_if_unchanged(key, ours.mod_revision)
                .await?;
        }
        Ok(true)
    }

    fn own_lease(
        &self,
        subnet: Option<ipnet::Ipv4Net>,
        ipv6_subnet: Option<ipnet::Ipv6Net>,
        attrs: &LeaseAttrs,
        ttl: Option<i64>,
    ) -> Lease {
        Lease {
            enable_ipv4: true,
            enable_ipv6: ipv6_subnet.is_some(),
            subnet,
            ipv6_subnet,
            attrs: attrs.clone(),
            expiration: ttl.map(|t| entries::expiration_after(SystemTime::now(), t)),
        }
    }
}

/// Why one acquisition attempt failed: final (`Subnet`) or transient (`Registry`, retried).
enum AcquireError {
    Subnet(SubnetError),
    Registry(RegistryError),
}

impl From<RegistryError> for AcquireError {
    fn from(e: RegistryError) -> Self {
        AcquireError::Registry(e)
    }
}

#[async_trait::async_trait]
impl SubnetManager for EtcdSubnetManager {
    fn name(&self) -> String {
        match self.shared.previous.subnet {
            Some(previous) => format!("etcd subnet manager (previous subnet {previous})"),
            None => "etcd subnet manager (no previous subnet)".to_string(),
        }
    }

    async fn network_config(&self) -> Result<NetConf, SubnetError> {
        self.read_config().await
    }

    async fn acquire_lease(&self, config: &NetConf, attrs: &LeaseAttrs) -> Result<Lease, SubnetError> {
        self.acquire(config, attrs).await
    }

    fn watch_leases(&self) -> BoxStream<'static, LeaseBatch> {
        watch::cluster_watch(self.shared.clone())
    }

    async fn complete_lease(
        &self,
        lease: &Lease,
        shutdown: CancellationToken,
    ) -> Result<LeaseOutcome, SubnetError> {
        renew::complete_lease(self.shared.clone(), lease.clone(), shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::watch();
        let delays: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
