//! A node's pod CIDRs (spec 6.4 step 3), this node's lease from them (6.4 step 5) and a remote
//! node as a lease (6.5). Pure.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{AnnotationError, AnnotationNames, NodeInfo};
use crate::lease::{Lease, LeaseAttrs, parse_vxlan_backend_data};
use crate::netconf::NetConf;

/// A node's pod CIDRs by family (network addresses, host bits cleared as Go's ParseCIDR does).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodCidrs {
    pub v4: Option<Ipv4Net>,
    pub v6: Option<Ipv6Net>,
}

/// The node's pod CIDRs: `spec.podCIDRs` (1 or 2 entries), else `spec.podCIDR` (spec 6.4 step 3).
pub fn pod_cidrs(node: &NodeInfo) -> Result<PodCidrs, AnnotationError> {
    let (field, entries): (&'static str, Vec<&str>) = if node.pod_cidrs.is_empty() {
        (
            "spec.podCIDR",
            vec![node.pod_cidr.as_str()]
                .into_iter()
                .filter(|c| !c.is_empty())
                .collect(),
        )
    } else {
        (
            "spec.podCIDRs",
            node.pod_cidrs.iter().map(String::as_str).collect(),
        )
    };
    if entries.is_empty() {
        return Err(AnnotationError::NoPodCidr {
            node: node.name.clone(),
        });
    }
    if entries.len() > 2 {
        return Err(AnnotationError::TooManyPodCidrs {
            node: node.name.clone(),
            cidrs: node.pod_cidrs.clone(),
        });
    }
    let mut out = PodCidrs::default();
    for entry in entries {
        let bad = || AnnotationError::BadPodCidr {
            node: node.name.clone(),
            field,
            value: entry.to_string(),
        };
        match entry.parse::<IpNet>().map_err(|_| bad())? {
            IpNet::V4(net) => {
                out.v4.get_or_insert(net.trunc());
            }
            IpNet::V6(net) => {
                out.v6.get_or_insert(net.trunc());
            }
        }
    }
    Ok(out)
}

/// Upstream's containsCIDR: `inner` lies inside `outer` (same family, at least as long a prefix).
pub fn contains_cidr(outer: &IpNet, inner: &IpNet) -> bool {
    outer.contains(inner)
}

/// This node's lease from its pod CIDRs, checked against the net config (spec 6.4 step 5). Kube
/// leases do not expire (`expiration` is `None`).
pub fn own_lease(node: &NodeInfo, config: &NetConf, attrs: &LeaseAttrs) -> Result<Lease, AnnotationError> {
    let cidrs = pod_cidrs(node)?;
    let subnet = if config.enable_ipv4 {
        let cidr = cidrs.v4.ok_or_else(|| AnnotationError::MissingPodCidr {
            node: node.name.clone(),
            family: "IPv4",
            cidrs: node.listed_pod_cidrs(),
        })?;
        check_inside(
            node,
            "IPv4",
            "Network",
            config.network.map(IpNet::V4),
            IpNet::V4(cidr),
        )?;
        Some(cidr)
    } else {
        None
    };
    let ipv6_subnet = if config.enable_ipv6 {
        let cidr = cidrs.v6.ok_or_else(|| AnnotationError::MissingPodCidr {
            node: node.name.clone(),
            family: "IPv6",
            cidrs: node.listed_pod_cidrs(),
        })?;
        check_inside(
            node,
            "IPv6",
            "IPv6Network",
            config.ipv6_network.map(IpNet::V6),
            IpNet::V6(cidr),
        )?;
        Some(cidr)
    } else {
        None
    };
    Ok(Lease {
        enable_ipv4: config.enable_ipv4,
        enable_ipv6: config.enable_ipv6,
        subnet,
        ipv6_subnet,
        attrs: attrs.clone(),
        expiration: None,
    })
}

fn check_inside(
    node: &NodeInfo,
    family: &'static str,
    key: &'static str,
    network: Option<IpNet>,
    cidr: IpNet,
) -> Result<(), AnnotationError> {
    match network {
        Some(network) if contains_cidr(&network, &cidr) => Ok(()),
        network => Err(AnnotationError::NotInNetwork {
            node: node.name.clone(),
            family,
            key,
            network: network.map_or_else(|| "unset".to_string(), |n| n.to_string()),
            cidr: cidr.to_string(),
        }),
    }
}

/// A remote node as a lease (spec 6.5); `enable_ipv4`/`enable_ipv6` come from the local config.
pub fn node_lease(
    names: &AnnotationNames,
    node: &NodeInfo,
    enable_ipv4: bool,
    enable_ipv6: bool,
) -> Result<Lease, AnnotationError> {
    let bad = |annotation: &str, reason: String| AnnotationError::BadAnnotation {
        node: node.name.clone(),
        annotation: annotation.to_string(),
        value: node.annotation(annotation).to_string(),
        reason,
    };
    let backend_type = node.annotation(&names.backend_type).to_string();
    let checked_data = |annotation: &str| -> Result<Option<String>, AnnotationError> {
        let text = node.annotation(annotation);
        if text.is_empty() || text == "null" {
            return Ok(None);
        }
        serde_json::from_str::<&serde_json::value::RawValue>(text)
            .map_err(|e| bad(annotation, format!("not JSON: {e}")))?;
        if backend_type == "vxlan" {
            parse_vxlan_backend_data(text).map_err(|e| bad(annotation, e.to_string()))?;
        }
        Ok(Some(text.to_string()))
    };
    let cidrs = pod_cidrs(node)?;
    let mut attrs = LeaseAttrs {
        backend_type: backend_type.clone(),
        ..LeaseAttrs::default()
    };
    let mut lease = Lease {
        enable_ipv4,
        enable_ipv6,
        subnet: None,
        ipv6_subnet: None,
        attrs: LeaseAttrs::default(),
        expiration: None,
    };
    if enable_ipv4 {
        let text = node.annotation(&names.backend_public_ip);
        attrs.public_ip = match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => ip,
            Ok(IpAddr::V6(ip)) => ip
                .to_ipv4_mapped()
                .ok_or_else(|| bad(&names.backend_public_ip, "not an IPv4 address".into()))?,
            Err(_) if text.is_empty() => return Err(bad(&names.backend_public_ip, "missing".into())),
            Err(_) => return Err(bad(&names.backend_public_ip, "not an IPv4 address".into())),
        };
        attrs.backend_data = checked_data(&names.backend_data)?;
        lease.subnet = Some(cidrs.v4.ok_or_else(|| AnnotationError::MissingPodCidr {
            node: node.name.clone(),
            family: "IPv4",
            cidrs: node.listed_pod_cidrs(),
        })?);
    }
    if enable_ipv6 {
        let text = node.annotation(&names.backend_public_ipv6);
        attrs.public_ipv6 = Some(match text.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => ip,
            Ok(IpAddr::V4(ip)) => ip.to_ipv6_mapped(),
            Err(_) if text.is_empty() => return Err(bad(&names.backend_public_ipv6, "missing".into())),
            Err(_) => return Err(bad(&names.backend_public_ipv6, "not an IPv6 address".into())),
        });
        attrs.backend_v6_data = checked_data(&names.backend_v6_data)?;
        lease.ipv6_subnet = Some(cidrs.v6.ok_or_else(|| AnnotationError::MissingPodCidr {
            node: node.name.clone(),
            family: "IPv6",
            cidrs: node.listed_pod_cidrs(),
        })?);
    }
    lease.attrs = attrs;
    Ok(lease)
}

#[cfg(test)]
mod tests;
