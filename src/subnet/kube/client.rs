//! All Kubernetes API I/O of the kube subnet manager: the only file that uses `kube` and
//! `k8s-openapi`. It builds the client (spec 6.1: `--kubeconfig-file`, `--kube-api-url`, else the
//! in-cluster service account; `KUBECONFIG` is not consulted), and offers exactly the calls flannel
//! is allowed by its RBAC (6.6): get/list/watch nodes, patch `nodes/<n>/status`, get pods. Nodes
//! leave this file as `NodeInfo`; patches arrive as JSON values.
//!
//! It must not decide anything (no retries, no lease logic): every call is one request with a
//! timeout, and every error names the request and the object.

use std::path::Path;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use super::annotations::NodeInfo;

/// Longest wait for one non-watch request (connect + response).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading --kubeconfig-file {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error("--kube-api-url {url:?} is not a usable URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(
        "neither --kubeconfig-file nor --kube-api-url is set, and the in-cluster configuration \
         (KUBERNETES_SERVICE_HOST/PORT and the service-account files) is not usable: {reason}"
    )]
    InCluster { reason: String },
    #[error("creating the Kubernetes client for {url}: {reason}")]
    Client { url: String, reason: String },
    /// A request failed; `status` is the HTTP status when the API server answered.
    #[error("{action}: {reason}")]
    Request {
        action: String,
        status: Option<u16>,
        reason: String,
    },
}

impl ClientError {
    /// The HTTP status of a request the API server answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Request { status, .. } => *status,
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

/// A listing of every node and the resource version to watch from.
#[derive(Debug, Clone)]
pub struct NodeListing {
    pub resource_version: String,
    pub nodes: Vec<NodeInfo>,
}

/// One item of a node watch.
#[derive(Debug)]
pub enum NodeWatchItem {
    Applied(NodeInfo),
    Deleted(NodeInfo),
    /// Nothing changed up to this resource version.
    Bookmark(String),
    /// The resource version is too old (HTTP 410): list again.
    Expired(String),
    Failed(ClientError),
}

/// The Kubernetes API, as flannel uses it.
#[derive(Clone)]
pub struct KubeClient {
    client: Client,
    nodes: Api<Node>,
    /// Where the client connects, for logs.
    url: String,
}

fn request_error(action: impl Into<String>, err: kube::Error) -> ClientError {
    let action = action.into();
    match err {
        kube::Error::Api(status) => {
            let code = (status.code != 0).then_some(status.code);
            let reason = match (status.reason.is_empty(), status.message.is_empty()) {
                (false, false) => format!("{} ({})", status.message, status.reason),
                (true, false) => status.message.clone(),
                (false, true) => status.reason.clone(),
                (true, true) => format!("HTTP {}", status.code),
            };
            ClientError::Request {
                action,
                status: code,
                reason,
            }
        }
        other => ClientError::Request {
            action,
            status: None,
            reason: error_chain(&other),
        },
    }
}

/// An error with its sources, so "connection refused" is not hidden behind "service error".
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

async fn timed<T>(
    action: impl Into<String>,
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, ClientError> {
    let action = action.into();
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(result) => result.map_err(|e| request_error(action, e)),
        Err(_) => Err(ClientError::Request {
            action,
            status: None,
            reason: format!("no answer within {REQUEST_TIMEOUT:?}"),
        }),
    }
}

fn node_info(node: Node) -> NodeInfo {
    let spec = node.spec.unwrap_or_default();
    NodeInfo {
        name: node.metadata.name.unwrap_or_default(),
        resource_version: node.metadata.resource_version.unwrap_or_default(),
        annotations: node.metadata.annotations.unwrap_or_default(),
        pod_cidr: spec.pod_cidr.unwrap_or_default(),
        pod_cidrs: spec.pod_cidrs.unwrap_or_default(),
    }
}

impl KubeClient {
    /// Build the client: `--kubeconfig-file` (its server replaced by `--kube-api-url` when both are
    /// given), else `--kube-api-url` alone (no credentials), else the in-cluster configuration.
    /// Nothing is sent yet.
    pub async fn connect(
        api_url: Option<&str>,
        kubeconfig: Option<&Path>,
    ) -> Result<KubeClient, ClientError> {
        let bad_url = |url: &str, reason: String| ClientError::BadUrl {
            url: url.to_string(),
            reason,
        };
        let config = match (kubeconfig, api_url) {
            (Some(path), url) => {
                let kubeconfig_err = |reason: String| ClientError::Kubeconfig {
                    path: path.display().to_string(),
                    reason,
                };
                let file = Kubeconfig::read_from(path).map_err(|e| kubeconfig_err(error_chain(&e)))?;
                let mut config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| kubeconfig_err(error_chain(&e)))?;
                if let Some(url) = url {
                    config.cluster_url = url.parse().map_err(|e| bad_url(url, format!("{e}")))?;
                }
                config
            }
            (None, Some(url)) => {
                let uri = url.parse().map_err(|e| bad_url(url, format!("{e}")))?;
                Config::new(uri)
            }
            (None, None) => Config::incluster().map_err(|e| ClientError::InCluster {
                reason: error_chain(&e),
            })?,
        };
        let url = config.cluster_url.to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(bad_url(
                &url,
                "the URL must start with http:// or https://".into(),
            ));
        }
        let client = Client::try_from(config).map_err(|e| ClientError::Client {
            url: url.clone(),
            reason: error_chain(&e),
        })?;
        Ok(KubeClient {
            nodes: Api::all(client.clone()),
            client,
            url,
        })
    }

    /// The API server's URL, for logs.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// GET the node; `Ok(None)` when it does not exist.
    pub async fn get_node(&self, name: &str) -> Result<Option<NodeInfo>, ClientError> {
        timed(
            format!("getting node {name:?} from {}", self.url),
            self.nodes.get_opt(name),
        )
        .await
        .map(|node| node.map(node_info))
    }

    /// GET the pod and return its `spec.nodeName` (`None` when unset).
    pub async fn pod_node_name(&self, namespace: &str, name: &str) -> Result<Option<String>, ClientError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod = timed(
            format!("getting pod {namespace}/{name} from {}", self.url),
            pods.get(name),
        )
        .await?;
        Ok(pod.spec.and_then(|s| s.node_name).filter(|n| !n.is_empty()))
    }

    /// LIST every node.
    pub async fn list_nodes(&self) -> Result<NodeListing, ClientError> {
        let list = timed(
            format!("listing nodes from {}", self.url),
            self.nodes.list(&ListParams::default()),
        )
        .await?;
        Ok(NodeListing {
            resource_version: list.metadata.resource_version.unwrap_or_default(),
            nodes: list.items.into_iter().map(node_info).collect(),
        })
    }

    /// WATCH nodes from `resource_version`; the server ends the stream after `timeout_secs`.
    pub async fn watch_nodes(
        &self,
        resource_version: &str,
        timeout_secs: u32,
    ) -> Result<BoxStream<'static, NodeWatchItem>, ClientError> {
        let params = WatchParams::default().timeout(timeout_secs);
        let action = format!(
            "watching nodes at {} from resource version {resource_version}",
            self.url
        );
        let events = timed(action.clone(), self.nodes.watch(&params, resource_version)).await?;
        Ok(events
            .map(move |event| match event {
                Ok(WatchEvent::Added(node) | WatchEvent::Modified(node)) => {
                    NodeWatchItem::Applied(node_info(node))
                }
                Ok(WatchEvent::Deleted(node)) => NodeWatchItem::Deleted(node_info(node)),
                Ok(WatchEvent::Bookmark(bookmark)) => {
                    NodeWatchItem::Bookmark(bookmark.metadata.resource_version)
                }
                Ok(WatchEvent::Error(status)) if status.code == 410 => NodeWatchItem::Expired(status.message),
                Ok(WatchEvent::Error(status)) => {
                    NodeWatchItem::Failed(request_error(action.clone(), kube::Error::Api(status)))
                }
                Err(e) => NodeWatchItem::Failed(request_error(action.clone(), e)),
            })
            .boxed())
    }

    /// PATCH `nodes/<name>/status` with a strategic merge patch (annotations and conditions).
    pub async fn patch_node_status(&self, name: &str, patch: &serde_json::Value) -> Result<(), ClientError> {
        let params = PatchParams::default();
        timed(
            format!("patching node {name:?} status at {}", self.url),
            self.nodes.patch_status(name, &params, &Patch::Strategic(patch)),
        )
        .await
        .map(|_| ())
    }
}
