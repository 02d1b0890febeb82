//! This node's side: which lease is ours, subnet.env against what the daemon writes for that
//! lease (`env_file::render`, the daemon's own function), and the lease's published attributes
//! (etcd value, or kube annotations through `annotation_update`, the kube manager's own rule)
//! against what this node's interface and devices say. Pure.

use std::collections::{BTreeMap, HashMap};

use ipnet::IpNet;

use super::leases::StoredLease;
use super::report::{Check, Finding, THIS_NODE};
use crate::backend::ExternalInterface;
use crate::lease::{Lease, LeaseAttrs};
use crate::netconf::NetConf;
use crate::subnet::env_file;
use crate::subnet::kube::annotations::{AnnotationNames, NodeInfo, annotation_update};

/// etcd: this node's lease is the one with subnet.env's subnet (what this node's daemon wrote),
/// else the one with this node's public IP (how the etcd manager finds it again, spec 5.4).
pub fn own_etcd_lease(
    leases: &[StoredLease],
    subnet_env: Option<&HashMap<String, String>>,
    ext: Option<&ExternalInterface>,
) -> Option<usize> {
    let env_net =
        |key: &str| -> Option<IpNet> { subnet_env?.get(key)?.parse::<IpNet>().ok().map(|n| n.trunc()) };
    let (v4, v6) = (env_net("FLANNEL_SUBNET"), env_net("FLANNEL_IPV6_SUBNET"));
    let by_env = leases.iter().position(|l| {
        (v4.is_some() || v6.is_some())
            && v4.is_none_or(|n| l.lease.subnet.map(IpNet::V4) == Some(n))
            && v6.is_none_or(|n| l.lease.ipv6_subnet.map(IpNet::V6) == Some(n))
    });
    by_env.or_else(|| {
        let ip = ext?.ext_addr?;
        leases.iter().position(|l| l.lease.attrs.public_ip == ip)
    })
}

/// subnet.env against what the daemon writes for `own` (every line but FLANNEL_MTU when the
/// backend's MTU is not known here).
pub fn subnet_env_findings(
    path: &str,
    subnet_env: &Result<HashMap<String, String>, String>,
    netconf: &NetConf,
    own: Option<&Lease>,
    mtu: Option<u32>,
    ip_masq: bool,
) -> Vec<Finding> {
    let vars = match subnet_env {
        Ok(vars) => vars,
        Err(e) => {
            return vec![Finding::problem(
                Check::SubnetEnv,
                THIS_NODE,
                path,
                format!(
                    "{path} is missing or unreadable ({e}): the CNI plugin cannot set up pods until flanneld writes it"
                ),
            )];
        }
    };
    let Some(own) = own else { return Vec::new() };
    let wanted_text = env_file::render(netconf, own, mtu.unwrap_or(0), ip_masq);
    let wanted = env_file::parse_env(&wanted_text).unwrap_or_default();
    let mut out = Vec::new();
    let mut keys: Vec<&String> = wanted.keys().chain(vars.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        if key == "FLANNEL_MTU" && mtu.is_none() {
            continue;
        }
        let (have, want) = (vars.get(key), wanted.get(key));
        if have != want {
            let show = |v: Option<&String>| v.map_or_else(|| "nothing".to_string(), |v| format!("{key}={v}"));
            out.push(Finding::problem(
                Check::SubnetEnv,
                THIS_NODE,
                path,
                format!(
                    "{path} says {}, but this node's lease and config give {}",
                    show(have),
                    show(want)
                ),
            ));
        }
    }
    if out.is_empty() {
        out.push(Finding::ok(
            Check::SubnetEnv,
            THIS_NODE,
            path,
            format!("{path} is what flanneld writes for this node's lease"),
        ));
    }
    out
}

/// etcd: the stored value's public IPs and backend type against this node's (the devices' MACs
/// are the backend's device check).
pub fn lease_value_findings(
    own: &StoredLease,
    expected: &LeaseAttrs,
    ext: &ExternalInterface,
) -> Vec<Finding> {
    let have = &own.lease.attrs;
    let mut out = Vec::new();
    let mut differs = |what: &str, stored: String, ours: String| {
        out.push(Finding::problem(
            Check::OwnLease,
            THIS_NODE,
            &own.lease.key().to_string(),
            format!(
                "this node's {} says {what} {stored}, but this node's is {ours} (interface {})",
                own.label, ext.name
            ),
        ));
    };
    if have.public_ip != expected.public_ip {
        differs(
            "PublicIP",
            have.public_ip.to_string(),
            expected.public_ip.to_string(),
        );
    }
    if have.public_ipv6 != expected.public_ipv6 {
        let show = |ip: Option<std::net::Ipv6Addr>| ip.map_or_else(|| "none".into(), |ip| ip.to_string());
        differs("PublicIPv6", show(have.public_ipv6), show(expected.public_ipv6));
    }
    if have.backend_type != expected.backend_type {
        differs(
            "BackendType",
            format!("{:?}", have.backend_type),
            format!("{:?}", expected.backend_type),
        );
    }
    if out.is_empty() {
        out.push(Finding::ok(
            Check::OwnLease,
            THIS_NODE,
            &own.lease.key().to_string(),
            format!("this node's {} has its public IPs and backend type", own.label),
        ));
    }
    out
}

/// kube: the node's annotations against what this node publishes (`annotation_update`, including
/// `public-ip(v6)-overwrite`); each annotation that differs is one sentence.
pub fn annotation_findings(names: &AnnotationNames, node: &NodeInfo, expected: &LeaseAttrs) -> Vec<Finding> {
    let update = annotation_update(names, &node.annotations, expected);
    let current: &BTreeMap<String, String> = &node.annotations;
    let mut out: Vec<Finding> = update
        .changes
        .iter()
        .map(|(name, want)| {
            let have = current.get(name).map_or_else(|| "absent".to_string(), |v| format!("{v:?}"));
            Finding::problem(
                Check::OwnLease,
                THIS_NODE,
                name,
                format!(
                    "node {}'s annotation {name} is {have}, but this node's interface and devices say {want:?}",
                    node.name
                ),
            )
        })
        .collect();
    if out.is_empty() {
        out.push(Finding::ok(
            Check::OwnLease,
            THIS_NODE,
            &format!("node {}", node.name),
            format!(
                "node {}'s flannel annotations are what this node publishes",
                node.name
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subnet::kube::annotations::DEFAULT_PREFIX;

    fn stored(subnet: &str, ip: &str) -> StoredLease {
        let lease = Lease {
            enable_ipv4: true,
            enable_ipv6: false,
            subnet: Some(subnet.parse().unwrap()),
            ipv6_subnet: None,
            attrs: LeaseAttrs {
                public_ip: ip.parse().unwrap(),
                backend_type: "vxlan".into(),
                ..LeaseAttrs::default()
            },
            expiration: None,
        };
        StoredLease {
            label: super::super::leases::etcd_label(&lease),
            lease,
            ttl_secs: None,
        }
    }

    fn ext() -> ExternalInterface {
        ExternalInterface {
            name: "eth0".into(),
            index: 2,
            mtu: 1500,
            iface_addr: Some("192.0.2.1".parse().unwrap()),
            iface_v6_addr: None,
            ext_addr: Some("192.0.2.1".parse().unwrap()),
            ext_v6_addr: None,
        }
    }

    fn netconf() -> NetConf {
        NetConf::parse_and_check(r#"{"Network": "198.18.0.0/16", "Backend": {"Type": "vxlan"}}"#).unwrap()
    }

    #[test]
    fn own_lease_by_subnet_env_then_public_ip() {
        let leases = [
            stored("198.18.2.0/24", "192.0.2.2"),
            stored("198.18.1.0/24", "192.0.2.1"),
        ];
        let env: HashMap<String, String> =
            [("FLANNEL_SUBNET".to_string(), "198.18.2.1/24".to_string())].into();
        assert_eq!(own_etcd_lease(&leases, Some(&env), Some(&ext())), Some(0));
        assert_eq!(own_etcd_lease(&leases, None, Some(&ext())), Some(1));
        assert_eq!(own_etcd_lease(&leases, None, None), None);
    }

    #[test]
    fn subnet_env_lines_are_compared_with_what_the_daemon_writes() {
        let own = stored("198.18.1.0/24", "192.0.2.1").lease;
        let good = env_file::parse_env(&env_file::render(&netconf(), &own, 1450, false)).unwrap();
        let found = subnet_env_findings(
            "/run/flannel/subnet.env",
            &Ok(good.clone()),
            &netconf(),
            Some(&own),
            Some(1450),
            false,
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].severity, super::super::report::Severity::Ok);
        let mut bad = good;
        bad.insert("FLANNEL_SUBNET".into(), "198.18.9.1/24".into());
        let found = subnet_env_findings("s.env", &Ok(bad), &netconf(), Some(&own), Some(1450), false);
        assert_eq!(
            found[0].message,
            "s.env says FLANNEL_SUBNET=198.18.9.1/24, but this node's lease and config give FLANNEL_SUBNET=198.18.1.1/24"
        );
        let missing = subnet_env_findings(
            "s.env",
            &Err("No such file".into()),
            &netconf(),
            Some(&own),
            None,
            false,
        );
        assert!(
            missing[0]
                .message
                .starts_with("s.env is missing or unreadable (No such file)")
        );
    }

    #[test]
    fn a_stale_public_ip_in_the_lease_is_named() {
        let own = stored("198.18.1.0/24", "192.0.2.7");
        let expected = LeaseAttrs {
            public_ip: "192.0.2.1".parse().unwrap(),
            backend_type: "vxlan".into(),
            ..LeaseAttrs::default()
        };
        let found = lease_value_findings(&own, &expected, &ext());
        assert_eq!(
            found[0].message,
            "this node's lease 198.18.1.0-24 (192.0.2.7) says PublicIP 192.0.2.7, but this node's is 192.0.2.1 (interface eth0)"
        );
    }

    #[test]
    fn annotations_that_differ_are_named_one_by_one() {
        let names = AnnotationNames::new(DEFAULT_PREFIX).unwrap();
        let expected = LeaseAttrs {
            public_ip: "192.0.2.1".parse().unwrap(),
            backend_type: "host-gw".into(),
            ..LeaseAttrs::default()
        };
        let mut node = NodeInfo {
            name: "flannel1".into(),
            ..NodeInfo::default()
        };
        for (k, v) in annotation_update(&names, &node.annotations, &expected).changes {
            node.annotations.insert(k, v);
        }
        assert_eq!(
            annotation_findings(&names, &node, &expected).len(),
            1,
            "all published: one ok"
        );
        node.annotations
            .insert(names.backend_public_ip.clone(), "192.0.2.9".into());
        let found = annotation_findings(&names, &node, &expected);
        assert_eq!(
            found[0].message,
            "node flannel1's annotation flannel.alpha.coreos.com/public-ip is \"192.0.2.9\", but this \
             node's interface and devices say \"192.0.2.1\""
        );
    }
}
