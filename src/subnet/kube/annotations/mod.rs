//! The pure half of the Kubernetes subnet manager: annotation names from `--kube-annotation-prefix`
//! (spec 6.2), the annotations this node must carry for its lease (6.4 step 4), a node's pod CIDRs
//! and this node's lease (6.4 steps 2, 3, 5), a remote node as a lease (6.5), the values stored by
//! an operator or an earlier run (6.6), and the NetworkUnavailable condition patch (6.6).
//!
//! No I/O and no kube types: nodes arrive as `NodeInfo`, patches leave as JSON values. The client
//! (`client.rs`) translates. Every error names the node, the field or annotation and the value.
//! Files: this one (names, annotations to publish, stored values, patches) and `lease` (pod CIDRs,
//! the own lease, remote nodes as leases).
//!
//! Deviations (stricter or clearer, never a different result for valid input):
//! - a node with two pod CIDRs of one family uses the first (upstream: the first for remote nodes,
//!   the last for its own);
//! - an own IPv4 (IPv6) lease without an IPv4 (IPv6) pod CIDR is an error (upstream leaves the
//!   subnet empty);
//! - a remote node whose backend data is not JSON (or, for vxlan, has no usable VTEP MAC) is not
//!   turned into a lease (upstream hands it to the backend, which drops it);
//! - the stored VTEP MAC is read from the normalised annotation name (upstream: raw prefix + `/`,
//!   identical for the default prefix) and decoded as JSON.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::kernel::MacAddr;
use crate::lease::{LeaseAttrs, parse_vxlan_backend_data};

/// The default `--kube-annotation-prefix`.
pub const DEFAULT_PREFIX: &str = "flannel.alpha.coreos.com";

/// How an operator gets pod CIDRs assigned; part of the "no pod CIDR" message.
const POD_CIDR_HINT: &str = "pod CIDRs are assigned by kube-controller-manager when it runs with \
     --allocate-node-cidrs=true and --cluster-cidr=<the Network of net-conf.json> (kubeadm: \
     --pod-network-cidr); or set spec.podCIDR on the node";

/// Problems with the prefix, a node's pod CIDRs or a node's annotations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    #[error("--kube-annotation-prefix {prefix:?}: a prefix may contain at most one '/'")]
    PrefixSlashes { prefix: String },
    #[error(
        "--kube-annotation-prefix {prefix:?} (normalised to {normalised:?}) must have the form \
         fqdn/[0-9a-z-_]* in lower case, e.g. flannel.alpha.coreos.com or example.com/net"
    )]
    PrefixFormat { prefix: String, normalised: String },
    #[error("node {node:?} has no pod CIDR yet (spec.podCIDR and spec.podCIDRs are empty); {POD_CIDR_HINT}")]
    NoPodCidr { node: String },
    #[error(
        "node {node:?}: spec.podCIDRs {cidrs:?} has {count} entries; flannel supports one IPv4 \
         and/or one IPv6 CIDR",
        count = cidrs.len()
    )]
    TooManyPodCidrs { node: String, cidrs: Vec<String> },
    #[error("node {node:?}: {field} entry {value:?} is not a CIDR")]
    BadPodCidr {
        node: String,
        field: &'static str,
        value: String,
    },
    #[error(
        "node {node:?}: {family} is enabled in the net config but the node has no {family} pod CIDR (spec.podCIDRs {cidrs:?})"
    )]
    MissingPodCidr {
        node: String,
        family: &'static str,
        cidrs: Vec<String>,
    },
    #[error(
        "node {node:?}: the net config's {key} ({network}) does not contain the node's {family} pod \
         CIDR {cidr}; make {key} cover the cluster CIDR"
    )]
    NotInNetwork {
        node: String,
        family: &'static str,
        key: &'static str,
        network: String,
        cidr: String,
    },
    #[error("node {node:?}: annotation {annotation} = {value:?}: {reason}")]
    BadAnnotation {
        node: String,
        annotation: String,
        value: String,
        reason: String,
    },
}

/// The names of every annotation flannel reads or writes (spec 6.2), for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationNames {
    pub subnet_kube_managed: String,
    pub backend_data: String,
    pub backend_v6_data: String,
    pub backend_type: String,
    pub backend_public_ip: String,
    pub backend_public_ipv6: String,
    pub backend_public_ip_overwrite: String,
    pub backend_public_ipv6_overwrite: String,
    pub node_public_ip: String,
    pub node_public_ipv6: String,
}

/// Upstream's normalisation of `--kube-annotation-prefix`: at most one `/`; none -> append `/`;
/// then, unless it ends with `/` or `-`, append `-`. The result must match upstream's regular
/// expression (unanchored at the start, so only its tail is checked).
pub fn normalise_prefix(prefix: &str) -> Result<String, AnnotationError> {
    let slashes = prefix.matches('/').count();
    if slashes > 1 {
        return Err(AnnotationError::PrefixSlashes {
            prefix: prefix.to_string(),
        });
    }
    let mut normalised = prefix.to_string();
    if slashes == 0 {
        normalised.push('/');
    }
    if !normalised.ends_with('/') && !normalised.ends_with('-') {
        normalised.push('-');
    }
    if !prefix_format_ok(&normalised) {
        return Err(AnnotationError::PrefixFormat {
            prefix: prefix.to_string(),
            normalised,
        });
    }
    Ok(normalised)
}

/// Upstream's check `(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$`, unanchored at the start
/// (Go `MatchString`), so only the tail of the prefix is checked.
fn prefix_format_ok(normalised: &str) -> bool {
    static FORMAT: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$")
            .expect("the prefix pattern is a valid constant regex")
    });
    FORMAT.is_match(normalised)
}

impl AnnotationNames {
    /// The names for `--kube-annotation-prefix` (normalised as upstream).
    pub fn new(prefix: &str) -> Result<AnnotationNames, AnnotationError> {
        let p = normalise_prefix(prefix)?;
        let name = |suffix: &str| format!("{p}{suffix}");
        Ok(AnnotationNames {
            subnet_kube_managed: name("kube-subnet-manager"),
            backend_data: name("backend-data"),
            backend_v6_data: name("backend-v6-data"),
            backend_type: name("backend-type"),
            backend_public_ip: name("public-ip"),
            backend_public_ipv6: name("public-ipv6"),
            backend_public_ip_overwrite: name("public-ip-overwrite"),
            backend_public_ipv6_overwrite: name("public-ipv6-overwrite"),
            node_public_ip: name("node-public-ip"),
            node_public_ipv6: name("node-public-ipv6"),
        })
    }
}

/// What the manager needs of a Node object (the client converts from the API type).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub resource_version: String,
    pub annotations: BTreeMap<String, String>,
    /// `spec.podCIDR` ("" when unset).
    pub pod_cidr: String,
    /// `spec.podCIDRs`.
    pub pod_cidrs: Vec<String>,
}

impl NodeInfo {
    /// An annotation's value, "" when absent (as a Go map lookup).
    pub fn annotation(&self, name: &str) -> &str {
        self.annotations.get(name).map(String::as_str).unwrap_or("")
    }

    /// The pod CIDRs as the node lists them (`spec.podCIDRs`, else `spec.podCIDR`), for messages.
    pub fn listed_pod_cidrs(&self) -> Vec<String> {
        if self.pod_cidrs.is_empty() {
            vec![self.pod_cidr.clone()]
        } else {
            self.pod_cidrs.clone()
        }
    }
}

/// The annotation changes that make a node publish `attrs` (spec 6.4 step 4), and the public IPs
/// taken from a `public-ip(v6)-overwrite` annotation (for the log).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnnotationUpdate {
    /// Only the annotations whose value differs from the node's; empty: nothing to patch.
    pub changes: BTreeMap<String, String>,
    /// (overwrite annotation, value) for each public IP taken from an overwrite annotation.
    pub overrides: Vec<(String, String)>,
}

/// Backend data as upstream marshals a `json.RawMessage`: the text, or `null` when absent.
fn raw_or_null(data: &Option<String>) -> &str {
    data.as_deref().filter(|d| !d.is_empty()).unwrap_or("null")
}

/// What upstream would write for this node's lease, reduced to what actually changes.
pub fn annotation_update(
    names: &AnnotationNames,
    current: &BTreeMap<String, String>,
    attrs: &LeaseAttrs,
) -> AnnotationUpdate {
    let get = |name: &str| current.get(name).map(String::as_str).unwrap_or("");
    let kind = attrs.backend_type.as_str();
    let mut wanted: Vec<(String, String)> = vec![(names.backend_type.clone(), kind.to_string())];
    let mut overrides = Vec::new();

    let mut public_ip = |ip_name: &str, overwrite_name: &str, ours: String| -> (String, String) {
        let overwrite = get(overwrite_name);
        let value = if overwrite.is_empty() {
            ours
        } else {
            overrides.push((overwrite_name.to_string(), overwrite.to_string()));
            overwrite.to_string()
        };
        (ip_name.to_string(), value)
    };

    let data = raw_or_null(&attrs.backend_data);
    if kind != "vxlan" || data != "null" {
        wanted.push((names.backend_data.clone(), data.to_string()));
        wanted.push(public_ip(
            &names.backend_public_ip,
            &names.backend_public_ip_overwrite,
            attrs.public_ip.to_string(),
        ));
    }
    let v6_data = raw_or_null(&attrs.backend_v6_data);
    let has_v6 = attrs.public_ipv6.is_some();
    let write_v6 = match kind {
        "vxlan" => v6_data != "null",
        "wireguard" => v6_data != "null" && has_v6,
        "host-gw" | "extension" => has_v6,
        _ => false,
    };
    if write_v6 {
        wanted.push((names.backend_v6_data.clone(), v6_data.to_string()));
        if let Some(ipv6) = attrs.public_ipv6 {
            wanted.push(public_ip(
                &names.backend_public_ipv6,
                &names.backend_public_ipv6_overwrite,
                ipv6.to_string(),
            ));
        }
    }
    wanted.push((names.subnet_kube_managed.clone(), "true".to_string()));

    // Exact comparison: an absent annotation differs from an empty one (upstream writes `""`).
    let changes = wanted
        .into_iter()
        .filter(|(name, value)| current.get(name) != Some(value))
        .collect();
    // Only report an override when it is applied now.
    let changes_ref: &BTreeMap<String, String> = &changes;
    overrides.retain(|(overwrite_name, _)| {
        let ip_name = if *overwrite_name == names.backend_public_ip_overwrite {
            &names.backend_public_ip
        } else {
            &names.backend_public_ipv6
        };
        changes_ref.contains_key(ip_name)
    });
    AnnotationUpdate { changes, overrides }
}

/// The strategic-merge patch body for annotation changes (sent to `nodes/<n>/status`).
pub fn annotations_patch(changes: &BTreeMap<String, String>) -> serde_json::Value {
    json!({ "metadata": { "annotations": changes } })
}

/// Whether flannel manages the node (`<prefix>kube-subnet-manager` is exactly `true`).
pub fn is_managed(names: &AnnotationNames, node: &NodeInfo) -> bool {
    node.annotation(&names.subnet_kube_managed) == "true"
}

/// The operator's public IPs for this node (`node-public-ip`, `node-public-ipv6`), non-empty only,
/// checked so a typo is reported with the annotation's name.
pub fn stored_public_ips(
    names: &AnnotationNames,
    node: &NodeInfo,
) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), AnnotationError> {
    let bad = |annotation: &str, reason: &str| AnnotationError::BadAnnotation {
        node: node.name.clone(),
        annotation: annotation.to_string(),
        value: node.annotation(annotation).to_string(),
        reason: reason.to_string(),
    };
    let v4 = match node.annotation(&names.node_public_ip) {
        "" => None,
        text => Some(
            text.parse::<Ipv4Addr>()
                .map_err(|_| bad(&names.node_public_ip, "not an IPv4 address"))?,
        ),
    };
    let v6 = match node.annotation(&names.node_public_ipv6) {
        "" => None,
        text => Some(
            text.parse::<Ipv6Addr>()
                .map_err(|_| bad(&names.node_public_ipv6, "not an IPv6 address"))?,
        ),
    };
    Ok((v4, v6))
}

/// The VTEP MAC this node published in an earlier run (vxlan `backend-data`, `backend-v6-data`).
pub fn stored_vtep_macs(
    names: &AnnotationNames,
    node: &NodeInfo,
) -> (
    Result<Option<MacAddr>, AnnotationError>,
    Result<Option<MacAddr>, AnnotationError>,
) {
    let mac = |annotation: &str| match node.annotation(annotation) {
        "" | "null" => Ok(None),
        text => parse_vxlan_backend_data(text)
            .map(|(_, mac)| Some(mac))
            .map_err(|e| AnnotationError::BadAnnotation {
                node: node.name.clone(),
                annotation: annotation.to_string(),
                value: text.to_string(),
                reason: e.to_string(),
            }),
    };
    (mac(&names.backend_data), mac(&names.backend_v6_data))
}

/// The strategic-merge status patch that sets NetworkUnavailable=False (spec 6.6).
pub fn network_unavailable_patch(now: SystemTime) -> serde_json::Value {
    let time = rfc3339(now);
    json!({
        "status": {
            "conditions": [{
                "type": "NetworkUnavailable",
                "status": "False",
                "lastHeartbeatTime": time,
                "lastTransitionTime": time,
                "reason": "FlannelIsUp",
                "message": "Flannel is running on this node",
            }]
        }
    })
}

/// `2006-01-02T15:04:05Z` in UTC, as Kubernetes serialises `metav1.Time` (whole seconds).
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

mod lease;

pub use lease::{PodCidrs, contains_cidr, node_lease, own_lease, pod_cidrs};

#[cfg(test)]
mod tests;
