//! Reading the datastore the daemon uses, with the daemon's own flags and environment: etcd
//! (`<prefix>/config` and every key under `<prefix>/subnets/`, with each key's remaining TTL) or
//! Kubernetes (`--net-config-path`, every node with its flannel annotations, this node by
//! `NODE_NAME` or `POD_NAME`/`POD_NAMESPACE`). Read-only: only GET, LIST and lease TTL requests.
//! The conversions are the subnet managers' own (`lease_of_entry`, `node_lease`), so doctor sees
//! the leases exactly as the daemon does.

use std::time::SystemTime;

use super::leases::{StoredLease, etcd_label, node_label};
use super::report::{Check, Finding, THIS_NODE};
use crate::config::Config;
use crate::netconf::NetConf;
use crate::subnet::etcd::entries::{KeyLayout, lease_of_entry};
use crate::subnet::etcd::registry::Registry;
use crate::subnet::kube::annotations::{self, AnnotationNames, NodeInfo};
use crate::subnet::kube::client::KubeClient;
use crate::subnet::kube::{KubeEnv, KubeOptions};

/// This node as the Kubernetes API has it.
#[derive(Debug, Clone)]
pub struct KubeNode {
    pub name: String,
    pub names: AnnotationNames,
    /// `None` when the API has no node of that name.
    pub node: Option<NodeInfo>,
}

/// The cluster as the datastore has it.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Where it was read, for the report header.
    pub source: String,
    pub netconf: NetConf,
    pub leases: Vec<StoredLease>,
    /// kube: this node; its lease (if annotated) is `own`.
    pub kube: Option<KubeNode>,
    /// kube: the index of this node's lease in `leases` (etcd: decided later, by subnet.env).
    pub own: Option<usize>,
    /// Entries that are no lease, and the like.
    pub findings: Vec<Finding>,
}

/// Reads the cluster from etcd or Kubernetes, as `config` (the daemon's flags) says.
pub async fn read(config: &Config) -> Result<Cluster, String> {
    if config.kube_subnet_mgr {
        read_kube(config).await
    } else {
        read_etcd(config).await
    }
}

async fn read_etcd(config: &Config) -> Result<Cluster, String> {
    let registry = Registry::new(&config.etcd).await.map_err(|e| e.to_string())?;
    let layout = KeyLayout::new(&config.etcd.prefix);
    let source = format!(
        "etcd {} (key prefix {})",
        registry.endpoints(),
        config.etcd.prefix
    );
    let (_, entry) = registry.get(&layout.config).await.map_err(|e| e.to_string())?;
    let entry = entry.ok_or_else(|| {
        format!(
            "the network config {} does not exist in {source}: flanneld waits until it is written",
            layout.config
        )
    })?;
    let text = String::from_utf8_lossy(&entry.value);
    let netconf = NetConf::parse_and_check(&text).map_err(|e| {
        format!(
            "the network config {} is invalid ({e}): flanneld waits until it is fixed",
            layout.config
        )
    })?;
    if !netconf.enable_ipv4 {
        return Err(format!(
            "the network config {} enables IPv6 only, which the etcd subnet manager refuses (flanneld \
             waits and says so): use dual stack (EnableIPv4 with a Network) or the Kubernetes subnet manager",
            layout.config
        ));
    }
    let listing = registry.list(&layout.subnets).await.map_err(|e| e.to_string())?;
    let now = SystemTime::now();
    let mut leases = Vec::new();
    let mut findings = Vec::new();
    for entry in &listing.entries {
        let ttl_secs = if entry.lease_id == 0 {
            None
        } else {
            // A key whose lease is gone is expiring now: 0 s left.
            Some(
                registry
                    .time_to_live(&entry.key, entry.lease_id)
                    .await
                    .map_err(|e| e.to_string())?
                    .unwrap_or(0),
            )
        };
        match lease_of_entry(&layout, &entry.key, &entry.value, ttl_secs, now) {
            Ok(lease) => leases.push(StoredLease {
                label: etcd_label(&lease),
                lease,
                ttl_secs,
            }),
            Err(e) => findings.push(Finding::problem(
                Check::Datastore,
                THIS_NODE,
                &entry.key,
                format!("{e}: every flanneld skips this entry, but its subnet stays taken"),
            )),
        }
    }
    Ok(Cluster {
        source,
        netconf,
        leases,
        kube: None,
        own: None,
        findings,
    })
}

async fn read_kube(config: &Config) -> Result<Cluster, String> {
    let options = KubeOptions::from_config(config);
    let env = KubeEnv::from_process();
    let names = AnnotationNames::new(&options.annotation_prefix).map_err(|e| e.to_string())?;
    let path = options.net_config_path.display().to_string();
    let text = std::fs::read_to_string(&options.net_config_path)
        .map_err(|e| format!("reading the network config file {path} (--net-config-path): {e}"))?;
    let netconf =
        NetConf::parse(&text).map_err(|e| format!("network config file {path} (--net-config-path): {e}"))?;
    let client = KubeClient::connect(options.api_url.as_deref(), options.kubeconfig_file.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let name = match (&env.node_name, &env.pod_name, &env.pod_namespace) {
        (Some(name), _, _) => name.clone(),
        (None, Some(pod), Some(namespace)) => client
            .pod_node_name(namespace, pod)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("pod {namespace}/{pod} (POD_NAMESPACE/POD_NAME) has no spec.nodeName"))?,
        _ => {
            return Err(
                "set NODE_NAME (or POD_NAME and POD_NAMESPACE) to this node's name, as for flanneld".into(),
            );
        }
    };
    let listing = client.list_nodes().await.map_err(|e| e.to_string())?;
    let mut leases = Vec::new();
    let mut findings = Vec::new();
    let mut own = None;
    for node in listing
        .nodes
        .iter()
        .filter(|n| annotations::is_managed(&names, n))
    {
        match annotations::node_lease(&names, node, netconf.enable_ipv4, netconf.enable_ipv6) {
            Ok(lease) => {
                if node.name == name {
                    own = Some(leases.len());
                }
                leases.push(StoredLease {
                    label: node_label(&node.name, &lease),
                    lease,
                    ttl_secs: None,
                });
            }
            Err(e) => findings.push(Finding::problem(
                Check::Datastore,
                if node.name == name { THIS_NODE } else { &node.name },
                &format!("node {}", node.name),
                format!(
                    "{e}: the daemons cannot turn node {} into a lease, so no peer reaches it",
                    node.name
                ),
            )),
        }
    }
    let node = listing.nodes.into_iter().find(|n| n.name == name);
    Ok(Cluster {
        source: format!("Kubernetes API {} (node {name})", client.url()),
        netconf,
        leases,
        kube: Some(KubeNode { name, names, node }),
        own,
        findings,
    })
}
