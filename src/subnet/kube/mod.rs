//! The Kubernetes subnet manager (`--kube-subnet-mgr`): this node's lease is its `spec.podCIDR(s)`,
//! published through node annotations (patched on `nodes/<n>/status`, quirk 10); the network config
//! is the `--net-config-path` file, parsed without etcd's checks (quirk 4); the cluster's leases
//! come from a node list + watch of the nodes annotated `kube-subnet-manager=true`.
//!
//! Files: `annotations` (pure: names, node <-> lease, patches), `view` (pure: coalesced lease
//! state), `client` (all API I/O, the only user of kube/k8s-openapi), `watch` (list + watch task).
//! It must not touch the kernel or write files.
//! Spec: flanneld-behaviour.md section 6 (and 1.4, 11.1); quirks 4, 10, 13.
//!
//! Differences from upstream (for the README's compatibility notes):
//! - a node without a pod CIDR (or missing from the API) keeps the daemon waiting, saying how to
//!   fix it, instead of exiting (pain point 1.1); API errors are retried with backoff, never fatal;
//! - no node informer is synced before startup: the own node is read directly, and the watch starts
//!   with the lease event loop, so there is no 10-minute sync wait and `CONT_WHEN_CACHE_NOT_READY`
//!   has nothing to relax (it is read and logged);
//! - lease events coalesce per node instead of passing through a queue of `EVENT_QUEUE_DEPTH`
//!   (the variable is still validated as upstream: a non-integer is a startup error);
//! - this node's annotations are kept as published while running (a later `public-ip-overwrite`
//!   applies without a restart);
//! - the NetworkUnavailable patch is retried until it succeeds (upstream: one attempt).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::kernel::MacAddr;
use crate::lease::{Lease, LeaseAttrs, LeaseBatch};
use crate::netconf::{NetConf, NetConfError};
use crate::subnet::etcd::Backoff;
use crate::subnet::{LeaseOutcome, SubnetError, SubnetManager};

pub mod annotations;
pub mod client;
mod view;
mod watch;

use annotations::{AnnotationError, AnnotationNames, AnnotationUpdate, NodeInfo};
use client::{ClientError, KubeClient};

/// Upstream's default `EVENT_QUEUE_DEPTH`.
pub const DEFAULT_EVENT_QUEUE_DEPTH: usize = 5000;
/// How long a pod lookup for the node name keeps retrying transient errors.
const POD_LOOKUP_PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("{0}")]
    Prefix(AnnotationError),
    #[error("environment variable EVENT_QUEUE_DEPTH={value:?} is not an integer")]
    EventQueueDepth { value: String },
    #[error(
        "cannot tell which node this is: NODE_NAME is not set, and POD_NAME and POD_NAMESPACE are \
         not both set (set NODE_NAME from the pod's spec.nodeName with the downward API)"
    )]
    NoNodeName,
    #[error(
        "NODE_NAME is not set; looking up the node of pod {namespace}/{pod} (POD_NAMESPACE/POD_NAME): {source}"
    )]
    PodLookup {
        namespace: String,
        pod: String,
        source: ClientError,
    },
    #[error("NODE_NAME is not set, and pod {namespace}/{pod} (POD_NAMESPACE/POD_NAME) has no spec.nodeName")]
    PodWithoutNode { namespace: String, pod: String },
    #[error("connecting to the Kubernetes API: {0}")]
    Client(ClientError),
    #[error("reading the network config file {path} (--net-config-path): {reason}")]
    ReadNetConf { path: String, reason: String },
    #[error("network config file {path} (--net-config-path): {source}")]
    ParseNetConf { path: String, source: NetConfError },
}

impl From<KubeError> for SubnetError {
    fn from(e: KubeError) -> Self {
        SubnetError::Fatal(e.to_string())
    }
}

/// The flags the kube manager uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeOptions {
    pub api_url: Option<String>,
    pub kubeconfig_file: Option<PathBuf>,
    pub annotation_prefix: String,
    pub net_config_path: PathBuf,
    pub set_node_network_unavailable: bool,
}

impl KubeOptions {
    pub fn from_config(config: &Config) -> KubeOptions {
        KubeOptions {
            api_url: config.kube_api_url.clone(),
            kubeconfig_file: config.kubeconfig_file.clone(),
            annotation_prefix: config.kube_annotation_prefix.clone(),
            net_config_path: config.net_config_path.clone(),
            set_node_network_unavailable: config.set_node_network_unavailable,
        }
    }
}

/// The environment variables the kube manager reads (spec 1.4); empty values count as unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeEnv {
    pub node_name: Option<String>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub event_queue_depth: Option<String>,
    pub cont_when_cache_not_ready: Option<String>,
}

impl KubeEnv {
    pub fn from_process() -> KubeEnv {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        KubeEnv {
            node_name: var("NODE_NAME"),
            pod_name: var("POD_NAME"),
            pod_namespace: var("POD_NAMESPACE"),
            event_queue_depth: var("EVENT_QUEUE_DEPTH"),
            cont_when_cache_not_ready: var("CONT_WHEN_CACHE_NOT_READY"),
        }
    }
}

/// `EVENT_QUEUE_DEPTH` as upstream reads it: unset or `<= 0` -> 5000, not an integer -> error.
pub fn parse_event_queue_depth(value: Option<&str>) -> Result<usize, KubeError> {
    let Some(text) = value else {
        return Ok(DEFAULT_EVENT_QUEUE_DEPTH);
    };
    let depth: i64 = text.parse().map_err(|_| KubeError::EventQueueDepth {
        value: text.to_string(),
    })?;
    Ok(usize::try_from(depth)
        .ok()
        .filter(|d| *d > 0)
        .unwrap_or(DEFAULT_EVENT_QUEUE_DEPTH))
}

/// State shared by the manager and its watch task.
pub(crate) struct Shared {
    pub client: KubeClient,
    pub names: AnnotationNames,
    pub node_name: String,
    pub netconf: NetConf,
    pub set_node_network_unavailable: bool,
    /// What `acquire_lease` published; the watch keeps the node's annotations at this.
    published: Mutex<Option<LeaseAttrs>>,
    /// This node as first read at startup, so the startup steps (stored public IPs, stored VTEP
    /// MACs, lease acquisition) share one GET; `acquire_lease` takes it, so any retry reads anew.
    startup_node: Mutex<Option<NodeInfo>>,
}

impl Shared {
    pub fn published(&self) -> Option<LeaseAttrs> {
        self.published.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Patch this node's annotations (strategic merge on nodes/<n>/status), logging overrides.
    pub async fn patch_annotations(&self, update: &AnnotationUpdate) -> Result<(), ClientError> {
        for (annotation, value) in &update.overrides {
            tracing::info!(node = %self.node_name, %annotation, public_ip = %value, "overriding the public IP from a node annotation");
        }
        let patch = annotations::annotations_patch(&update.changes);
        self.client.patch_node_status(&self.node_name, &patch).await?;
        tracing::info!(node = %self.node_name, changed = ?update.changes, "updated this node's flannel annotations");
        Ok(())
    }

    /// This node as read at startup: the kept read, or a GET retried with backoff until the node
    /// exists and the API answers (then kept for the next startup step).
    async fn startup_node_patiently(&self, purpose: &str) -> NodeInfo {
        if let Some(node) = self
            .startup_node
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return node;
        }
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let problem = match self.client.get_node(&self.node_name).await {
                Ok(Some(node)) => {
                    *self.startup_node.lock().unwrap_or_else(|p| p.into_inner()) = Some(node.clone());
                    return node;
                }
                Ok(None) => format!("node {:?} does not exist (yet)", self.node_name),
                Err(e) => e.to_string(),
            };
            let delay = backoff.next_delay();
            tracing::warn!(node = %self.node_name, error = %problem, retry_in = ?delay, "reading this node for {purpose} failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

/// The Kubernetes subnet manager.
pub struct KubeSubnetManager {
    shared: Arc<Shared>,
}

impl KubeSubnetManager {
    /// Check the prefix and environment, read the network config file, build the client and find
    /// this node's name. Every error says what was tried.
    pub async fn new(options: KubeOptions, env: KubeEnv) -> Result<KubeSubnetManager, KubeError> {
        let names = AnnotationNames::new(&options.annotation_prefix).map_err(KubeError::Prefix)?;
        let depth = parse_event_queue_depth(env.event_queue_depth.as_deref())?;
        tracing::debug!(
            event_queue_depth = depth,
            cont_when_cache_not_ready = ?env.cont_when_cache_not_ready,
            "accepted for compatibility; lease events coalesce per node and there is no informer sync to wait for"
        );
        let netconf = read_netconf(&options.net_config_path)?;
        let client = KubeClient::connect(options.api_url.as_deref(), options.kubeconfig_file.as_deref())
            .await
            .map_err(KubeError::Client)?;
        let node_name = node_name(&client, &env).await?;
        tracing::info!(
            node = %node_name,
            api = %client.url(),
            annotation_prefix = %options.annotation_prefix,
            net_config = %options.net_config_path.display(),
            "using the Kubernetes subnet manager"
        );
        Ok(KubeSubnetManager {
            shared: Arc::new(Shared {
                client,
                names,
                node_name,
                netconf,
                set_node_network_unavailable: options.set_node_network_unavailable,
                published: Mutex::new(None),
                startup_node: Mutex::new(None),
            }),
        })
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.shared.node_name
    }
}

fn read_netconf(path: &std::path::Path) -> Result<NetConf, KubeError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| KubeError::ReadNetConf {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    NetConf::parse(&text).map_err(|source| KubeError::ParseNetConf { path: shown, source })
}

/// NODE_NAME, else the `spec.nodeName` of pod POD_NAMESPACE/POD_NAME (transient API errors are
/// retried for a while: the API server may still be starting).
async fn node_name(client: &KubeClient, env: &KubeEnv) -> Result<String, KubeError> {
    if let Some(name) = &env.node_name {
        return Ok(name.clone());
    }
    let (Some(pod), Some(namespace)) = (&env.pod_name, &env.pod_namespace) else {
        return Err(KubeError::NoNodeName);
    };
    let started = std::time::Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match client.pod_node_name(namespace, pod).await {
            Ok(Some(name)) => return Ok(name),
            Ok(None) => {
                return Err(KubeError::PodWithoutNode {
                    namespace: namespace.clone(),
                    pod: pod.clone(),
                });
            }
            Err(e) => {
                let transient = matches!(e.status(), None | Some(429) | Some(500..=599));
                if !transient || started.elapsed() >= POD_LOOKUP_PATIENCE {
                    return Err(KubeError::PodLookup {
                        namespace: namespace.clone(),
                        pod: pod.clone(),
                        source: e,
                    });
                }
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "looking up this pod's node failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn datastore(e: ClientError) -> SubnetError {
    SubnetError::Datastore(e.to_string())
}

#[async_trait::async_trait]
impl SubnetManager for KubeSubnetManager {
    fn name(&self) -> String {
        format!("Kubernetes subnet manager for node {}", self.shared.node_name)
    }

    async fn network_config(&self) -> Result<NetConf, SubnetError> {
        Ok(self.shared.netconf.clone())
    }

    async fn stored_public_ips(&self) -> Result<(Option<String>, Option<String>), SubnetError> {
        let node = self.shared.startup_node_patiently("its stored public IPs").await;
        let (v4, v6) = annotations::stored_public_ips(&self.shared.names, &node)
            .map_err(|e| SubnetError::Fatal(e.to_string()))?;
        if v4.is_some() || v6.is_some() {
            tracing::info!(node = %node.name, public_ip = ?v4, public_ipv6 = ?v6, "using the public IPs stored in node annotations");
        }
        Ok((v4.map(|ip| ip.to_string()), v6.map(|ip| ip.to_string())))
    }

    async fn stored_vtep_macs(&self) -> Result<(Option<MacAddr>, Option<MacAddr>), SubnetError> {
        let node = self.shared.startup_node_patiently("its stored VTEP MAC").await;
        let (v4, v6) = annotations::stored_vtep_macs(&self.shared.names, &node);
        let usable = |mac: Result<Option<MacAddr>, AnnotationError>| {
            mac.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "ignoring the stored VTEP MAC; a new one is chosen");
                None
            })
        };
        Ok((usable(v4), usable(v6)))
    }

    async fn acquire_lease(&self, config: &NetConf, attrs: &LeaseAttrs) -> Result<Lease, SubnetError> {
        let shared = &self.shared;
        *shared.published.lock().unwrap_or_else(|p| p.into_inner()) = Some(attrs.clone());
        let kept = shared
            .startup_node
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let node = match kept {
            Some(node) => node,
            None => shared.client.get_node(&shared.node_name).await.map_err(datastore)?.ok_or_else(|| {
                SubnetError::Datastore(format!(
                    "node {:?} does not exist in the Kubernetes API (is NODE_NAME right, and has the kubelet registered the node?)",
                    shared.node_name
                ))
            })?,
        };
        let lease = annotations::own_lease(&node, config, attrs).map_err(|e| match e {
            AnnotationError::NoPodCidr { .. } => SubnetError::Datastore(e.to_string()),
            _ => SubnetError::Fatal(e.to_string()),
        })?;
        let update = annotations::annotation_update(&shared.names, &node.annotations, attrs);
        if update.changes.is_empty() {
            tracing::info!(node = %node.name, "this node's flannel annotations are already up to date");
        } else {
            shared.patch_annotations(&update).await.map_err(datastore)?;
        }
        tracing::info!(node = %node.name, subnet = ?lease.subnet, ipv6_subnet = ?lease.ipv6_subnet, "acquired the node's pod CIDR as lease");
        Ok(lease)
    }

    fn watch_leases(&self) -> BoxStream<'static, LeaseBatch> {
        watch::lease_stream(self.shared.clone())
    }

    async fn complete_lease(
        &self,
        _lease: &Lease,
        shutdown: CancellationToken,
    ) -> Result<LeaseOutcome, SubnetError> {
        let shared = &self.shared;
        if !shared.set_node_network_unavailable {
            tracing::info!(
                "not touching the node's NetworkUnavailable condition (--set-node-network-unavailable=false)"
            );
            return Ok(LeaseOutcome::Done);
        }
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            let patch = annotations::network_unavailable_patch(SystemTime::now());
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return Ok(LeaseOutcome::Shutdown),
                attempt = shared.client.patch_node_status(&shared.node_name, &patch) => attempt,
            };
            match attempt {
                Ok(()) => {
                    tracing::info!(node = %shared.node_name, "set the node condition NetworkUnavailable=False");
                    return Ok(LeaseOutcome::Done);
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "setting NetworkUnavailable=False failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(LeaseOutcome::Shutdown),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_queue_depth_as_upstream() {
        assert_eq!(parse_event_queue_depth(None).unwrap(), 5000);
        assert_eq!(parse_event_queue_depth(Some("100")).unwrap(), 100);
        assert_eq!(parse_event_queue_depth(Some("+7")).unwrap(), 7);
        assert_eq!(parse_event_queue_depth(Some("0")).unwrap(), 5000);
        assert_eq!(parse_event_queue_depth(Some("-3")).unwrap(), 5000);
        for bad in ["abc", "1.5", " 5", "99999999999999999999"] {
            let err = parse_event_queue_depth(Some(bad)).unwrap_err();
            assert!(
                err.to_string().contains(&format!("EVENT_QUEUE_DEPTH={bad:?}")),
                "{err}"
            );
        }
    }

    #[test]
    fn options_from_flags() {
        let flags = crate::cli::Flags::default();
        let mut config = Config::from_flags(&flags).unwrap();
        config.kube_api_url = Some("http://192.0.2.100:6443".into());
        let options = KubeOptions::from_config(&config);
        assert_eq!(options.api_url.as_deref(), Some("http://192.0.2.100:6443"));
        assert_eq!(options.annotation_prefix, "flannel.alpha.coreos.com");
        assert_eq!(
            options.net_config_path,
            PathBuf::from("/etc/kube-flannel/net-conf.json")
        );
        assert!(options.set_node_network_unavailable);
    }
}
