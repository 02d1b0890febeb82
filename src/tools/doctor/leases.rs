//! The cluster's leases as doctor reads them, and the checks that need nothing but the leases:
//! leases that overlap, leases that expire soon (their node stopped renewing), and leases of
//! another backend type than this node's (the daemon ignores them: no route, no tunnel). Pure.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::report::{Check, Finding, THIS_NODE};
use crate::lease::Lease;

/// One lease of the datastore with what people know it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLease {
    pub lease: Lease,
    /// `lease 198.18.2.0-24 (192.0.2.2)` (etcd) or `node flannel2 (198.18.2.0/24, 192.0.2.2)`.
    pub label: String,
    /// etcd: seconds left on the key's etcd lease; `None` for a reservation (no TTL) or kube.
    pub ttl_secs: Option<i64>,
}

/// The public IPs of a lease, for labels and probes: IPv4 unless unset, then IPv6.
pub fn public_ips(lease: &Lease) -> Vec<IpAddr> {
    let v4 = Some(lease.attrs.public_ip)
        .filter(|ip| !ip.is_unspecified())
        .map(IpAddr::V4);
    v4.into_iter()
        .chain(lease.attrs.public_ipv6.map(IpAddr::V6))
        .collect()
}

fn joined<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `lease <key> (<public ips>)`, the name of an etcd lease in sentences.
pub fn etcd_label(lease: &Lease) -> String {
    format!("lease {} ({})", lease.key(), joined(public_ips(lease)))
}

/// `node <name> (<subnets>, <public ips>)`, the name of a kube node's lease in sentences.
pub fn node_label(node: &str, lease: &Lease) -> String {
    let subnets = lease
        .subnet
        .map(|s| s.to_string())
        .into_iter()
        .chain(lease.ipv6_subnet.map(|s| s.to_string()));
    format!(
        "node {node} ({})",
        joined(subnets.chain(public_ips(lease).iter().map(|ip| ip.to_string())))
    )
}

fn subnets(lease: &Lease) -> Vec<IpNet> {
    lease
        .subnet
        .map(IpNet::V4)
        .into_iter()
        .chain(lease.ipv6_subnet.map(IpNet::V6))
        .collect()
}

/// Whether two backend type names mean the same backend (udp leases carry no type, spec 3.2).
fn same_type(lease_type: &str, ours: &str) -> bool {
    lease_type == ours || (lease_type.is_empty() && matches!(ours, "udp" | "alloc"))
}

/// Overlaps, leases that expire within `renew_margin` (their node renews that long before
/// expiry, so it has stopped), and leases of another backend type. `own` is this node's lease
/// (an index into `leases`), named as `this node's lease` in sentences.
pub fn lease_findings(
    leases: &[StoredLease],
    own: Option<usize>,
    backend_type: &str,
    renew_margin: Duration,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let who = |i: usize| {
        if Some(i) == own {
            format!("this node's {}", leases[i].label)
        } else {
            leases[i].label.clone()
        }
    };
    let subject = |i: usize| {
        if Some(i) == own {
            THIS_NODE.to_string()
        } else {
            leases[i].label.clone()
        }
    };
    for (i, a) in leases.iter().enumerate() {
        for (j, b) in leases.iter().enumerate().skip(i + 1) {
            for x in subnets(&a.lease) {
                for y in subnets(&b.lease)
                    .into_iter()
                    .filter(|y| x.contains(y) || y.contains(&x))
                {
                    out.push(Finding::problem(
                        Check::Leases,
                        &subject(i),
                        &format!("{x} {y}"),
                        format!(
                            "{} and {} overlap ({x} and {y}): two nodes claim the same pod addresses",
                            who(i),
                            who(j)
                        ),
                    ));
                }
            }
        }
        if let Some(ttl) = a.ttl_secs
            && u64::try_from(ttl).unwrap_or(0) < renew_margin.as_secs()
        {
            out.push(Finding::problem(
                Check::Leases,
                &subject(i),
                &a.lease.key().to_string(),
                format!(
                    "{} expires in {}s although flanneld renews a lease {}s before it expires: \
                     flanneld on that node has stopped or cannot reach etcd",
                    who(i),
                    ttl.max(0),
                    renew_margin.as_secs()
                ),
            ));
        }
        let theirs = a.lease.attrs.backend_type.as_str();
        if !same_type(theirs, backend_type) {
            out.push(Finding::problem(
                Check::Leases,
                &subject(i),
                &a.lease.key().to_string(),
                format!(
                    "{} names backend type {theirs:?}, this node runs {backend_type:?}: no route or \
                     tunnel to it is programmed",
                    who(i)
                ),
            ));
        }
    }
    if out.is_empty() {
        out.push(Finding::ok(
            Check::Leases,
            THIS_NODE,
            "leases",
            format!(
                "no lease overlaps another, expires soon or names another backend type than {backend_type} ({} leases)",
                leases.len()
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;

    fn lease(subnet: &str, ip: &str, kind: &str, ttl: Option<i64>) -> StoredLease {
        let lease = Lease {
            enable_ipv4: true,
            enable_ipv6: false,
            subnet: Some(subnet.parse().unwrap()),
            ipv6_subnet: None,
            attrs: LeaseAttrs {
                public_ip: ip.parse().unwrap(),
                backend_type: kind.into(),
                ..LeaseAttrs::default()
            },
            expiration: None,
        };
        StoredLease {
            label: etcd_label(&lease),
            lease,
            ttl_secs: ttl,
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn healthy_leases_give_one_ok_line() {
        let leases = [
            lease("198.18.1.0/24", "192.0.2.1", "vxlan", Some(86_000)),
            lease("198.18.2.0/24", "192.0.2.2", "vxlan", None),
        ];
        let found = lease_findings(&leases, Some(0), "vxlan", HOUR);
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].message,
            "no lease overlaps another, expires soon or names another backend type than vxlan (2 leases)"
        );
    }

    #[test]
    fn overlap_expiry_and_backend_type_are_named() {
        let leases = [
            lease("198.18.2.0/24", "192.0.2.1", "vxlan", Some(86_000)),
            lease("198.18.2.0/23", "192.0.2.2", "vxlan", Some(600)),
            lease("198.18.9.0/24", "192.0.2.3", "host-gw", None),
        ];
        let found: Vec<String> = lease_findings(&leases, Some(0), "vxlan", HOUR)
            .into_iter()
            .map(|f| f.message)
            .collect();
        assert_eq!(
            found,
            [
                "this node's lease 198.18.2.0-24 (192.0.2.1) and lease 198.18.2.0-23 (192.0.2.2) \
                 overlap (198.18.2.0/24 and 198.18.2.0/23): two nodes claim the same pod addresses",
                "lease 198.18.2.0-23 (192.0.2.2) expires in 600s although flanneld renews a lease \
                 3600s before it expires: flanneld on that node has stopped or cannot reach etcd",
                "lease 198.18.9.0-24 (192.0.2.3) names backend type \"host-gw\", this node runs \
                 \"vxlan\": no route or tunnel to it is programmed",
            ]
        );
    }

    #[test]
    fn udp_leases_carry_no_type() {
        let leases = [lease("198.18.1.0/24", "192.0.2.1", "", None)];
        let found = lease_findings(&leases, None, "udp", HOUR);
        assert_eq!(found[0].severity, super::super::report::Severity::Ok);
    }

    #[test]
    fn labels_name_key_subnets_and_public_ips() {
        let mut l = lease("198.18.2.0/24", "192.0.2.2", "vxlan", None).lease;
        l.enable_ipv6 = true;
        l.ipv6_subnet = Some("2001:db8:1:2::/64".parse().unwrap());
        l.attrs.public_ipv6 = Some("2001:db8::2".parse().unwrap());
        assert_eq!(
            etcd_label(&l),
            "lease 198.18.2.0-24&2001:db8:1:2::-64 (192.0.2.2, 2001:db8::2)"
        );
        assert_eq!(
            node_label("flannel2", &l),
            "node flannel2 (198.18.2.0/24, 2001:db8:1:2::/64, 192.0.2.2, 2001:db8::2)"
        );
    }
}
