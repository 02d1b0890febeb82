//! Subnet managers: where this node's lease comes from and where the cluster's leases are read.
//! Two implementations: etcd (`etcd`) and Kubernetes node annotations (`kube`).
//!
//! Also the pure pieces shared by both: allocation (`alloc`) and subnet.env (`env_file`).
//! Spec: flanneld-behaviour.md sections 4, 5, 6.

use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;

use crate::lease::{Lease, LeaseAttrs, LeaseBatch};
use crate::netconf::{NetConf, NetConfError};

pub mod alloc;
pub mod env_file;
pub mod etcd;
pub mod kube;

/// Errors of a subnet manager; each names the key or object involved.
#[derive(Debug, thiserror::Error)]
pub enum SubnetError {
    /// The network config is missing; the daemon keeps waiting.
    #[error(
        "network config not found at {key} (create it with the etcd v3 API, e.g. etcdctl put {key} '{{\"Network\": \"10.244.0.0/16\", \"Backend\": {{\"Type\": \"vxlan\"}}}}')"
    )]
    ConfigNotFound { key: String },
    /// The network config is present but invalid; the daemon keeps waiting (etcd) or exits (file).
    #[error("network config at {key} is invalid: {source}")]
    BadConfig { key: String, source: NetConfError },
    #[error(
        "out of subnets: the network config allows {total} subnets between {min} and {max}, and every one is leased"
    )]
    OutOfSubnets { total: u128, min: String, max: String },
    #[error("{0}")]
    Datastore(String),
    #[error("{0}")]
    Fatal(String),
}

impl SubnetError {
    /// Whether waiting and retrying may help.
    pub fn is_retriable(&self) -> bool {
        !matches!(self, SubnetError::Fatal(_))
    }
}

/// How `complete_lease` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// The daemon is shutting down.
    Shutdown,
    /// Nothing more to do (kube: NetworkUnavailable patched).
    Done,
    /// Someone else deleted our lease: shut down cleanly as upstream does.
    Revoked,
    /// Our lease expired and another node now holds the subnet: it is never overwritten; the
    /// daemon exits non-zero so that its restart acquires a new subnet.
    TakenOver { holder: String },
}

/// A source of this node's lease and of the cluster's leases.
#[async_trait::async_trait]
pub trait SubnetManager: Send + Sync {
    /// For logs, e.g. `etcd subnet manager (previous subnet 10.5.72.0/24)`.
    fn name(&self) -> String;

    /// One attempt to read the network config. `ConfigNotFound`/`BadConfig` make the daemon wait.
    async fn network_config(&self) -> Result<NetConf, SubnetError>;

    /// Read the network config until it is present and valid, retrying every second and saying
    /// why at most every ~10 s (or at once when the reason changes). `Ok(None)` when `shutdown`
    /// fires first; `Err` only for errors that waiting cannot fix (`Fatal`).
    async fn wait_for_config(&self, shutdown: &CancellationToken) -> Result<Option<NetConf>, SubnetError> {
        const RETRY: std::time::Duration = std::time::Duration::from_secs(1);
        const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
        let mut last_logged: Option<(std::time::Instant, String)> = None;
        loop {
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                attempt = self.network_config() => attempt,
            };
            match attempt {
                Ok(config) => return Ok(Some(config)),
                Err(e) if !e.is_retriable() => return Err(e),
                Err(e) => {
                    let reason = e.to_string();
                    let due = last_logged
                        .as_ref()
                        .is_none_or(|(at, previous)| *previous != reason || at.elapsed() >= LOG_EVERY);
                    if due {
                        tracing::warn!(error = %reason, "waiting for the network config");
                        last_logged = Some((std::time::Instant::now(), reason));
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    /// Public IPs stored for this node by the operator (kube `node-public-ip(v6)` annotations).
    async fn stored_public_ips(&self) -> Result<(Option<String>, Option<String>), SubnetError> {
        Ok((None, None))
    }

    /// The VTEP MACs (IPv4, IPv6 device) this node published in an earlier run (kube
    /// `backend-data`/`backend-v6-data`), reused when the vxlan devices are created so peers' FDB
    /// entries stay valid across a restart.
    async fn stored_vtep_macs(
        &self,
    ) -> Result<(Option<crate::kernel::MacAddr>, Option<crate::kernel::MacAddr>), SubnetError> {
        Ok((None, None))
    }

    /// Acquire (or reuse) this node's lease with these attributes.
    async fn acquire_lease(&self, config: &NetConf, attrs: &LeaseAttrs) -> Result<Lease, SubnetError>;

    /// The cluster's leases: a `Snapshot` first, then `Events`, then a new `Snapshot` after any
    /// re-list. Reconnects internally; ends only when dropped.
    fn watch_leases(&self) -> BoxStream<'static, LeaseBatch>;

    /// Keep the lease alive until `shutdown` (etcd renewal) or mark the node ready (kube).
    async fn complete_lease(
        &self,
        lease: &Lease,
        shutdown: CancellationToken,
    ) -> Result<LeaseOutcome, SubnetError>;
}
