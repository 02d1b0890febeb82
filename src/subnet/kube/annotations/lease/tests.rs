//! Unit tests of pod CIDRs, the own lease and remote nodes as leases (spec 6.4, 6.5, 13.1
//! containsCIDR), with upstream's reference values.

use std::net::Ipv4Addr;

use ipnet::IpNet;

use super::*;
use crate::netconf::NetConf;
use crate::subnet::kube::annotations::{DEFAULT_PREFIX, is_managed};

fn names() -> AnnotationNames {
    AnnotationNames::new(DEFAULT_PREFIX).unwrap()
}

fn node(name: &str, pod_cidr: &str, pod_cidrs: &[&str], annotations: &[(&str, &str)]) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        resource_version: "1".into(),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        pod_cidr: pod_cidr.into(),
        pod_cidrs: pod_cidrs.iter().map(|s| s.to_string()).collect(),
    }
}

fn netconf(json: &str) -> NetConf {
    NetConf::parse(json).unwrap()
}

const VXLAN_DATA: &str = r#"{"VNI":1,"VtepMAC":"96:59:b2:3f:04:ee"}"#;

fn vxlan_attrs(ip: &str) -> LeaseAttrs {
    LeaseAttrs {
        public_ip: ip.parse().unwrap(),
        backend_type: "vxlan".into(),
        backend_data: Some(VXLAN_DATA.into()),
        ..LeaseAttrs::default()
    }
}

#[test]
fn contains_cidr_reference_values() {
    let net: IpNet = "10.244.0.0/16".parse().unwrap();
    assert!(contains_cidr(&net, &net));
    assert!(contains_cidr(&net, &"10.244.0.0/24".parse().unwrap()));
    assert!(contains_cidr(&net, &"10.244.255.0/24".parse().unwrap()));
    assert!(!contains_cidr(&net, &"10.244.0.0/15".parse().unwrap()));
    assert!(!contains_cidr(&net, &"192.168.0.0/24".parse().unwrap()));
    let net6: IpNet = "2001:0db8:1234::/48".parse().unwrap();
    assert!(contains_cidr(&net6, &net6));
    assert!(contains_cidr(&net6, &"2001:db8:1234:1::/64".parse().unwrap()));
    assert!(!contains_cidr(&net6, &"2001:db8:1234::/47".parse().unwrap()));
    assert!(!contains_cidr(&net6, &"2001:db8:1235::/64".parse().unwrap()));
    assert!(!contains_cidr(&net, &net6));
}

#[test]
fn pod_cidrs_single_dual_and_legacy_field() {
    let v4 = pod_cidrs(&node("n", "198.18.1.0/24", &[], &[])).unwrap();
    assert_eq!(
        v4,
        PodCidrs {
            v4: Some("198.18.1.0/24".parse().unwrap()),
            v6: None
        }
    );
    let dual = pod_cidrs(&node(
        "n",
        "198.18.1.0/24",
        &["198.18.1.0/24", "2001:db8:1::/64"],
        &[],
    ))
    .unwrap();
    assert_eq!(dual.v4, Some("198.18.1.0/24".parse().unwrap()));
    assert_eq!(dual.v6, Some("2001:db8:1::/64".parse().unwrap()));
    let v6 = pod_cidrs(&node("n", "2001:db8:1::/64", &[], &[])).unwrap();
    assert_eq!(
        v6,
        PodCidrs {
            v4: None,
            v6: Some("2001:db8:1::/64".parse().unwrap())
        }
    );
    // Host bits are cleared as Go's ParseCIDR does.
    let host = pod_cidrs(&node("n", "198.18.1.7/24", &[], &[])).unwrap();
    assert_eq!(host.v4, Some("198.18.1.0/24".parse().unwrap()));
}

#[test]
fn pod_cidr_errors() {
    let err = pod_cidrs(&node("worker-1", "", &[], &[])).unwrap_err();
    assert_eq!(
        err,
        AnnotationError::NoPodCidr {
            node: "worker-1".into()
        }
    );
    let text = err.to_string();
    assert!(
        text.contains("worker-1")
            && text.contains("--allocate-node-cidrs")
            && text.contains("--cluster-cidr"),
        "{text}"
    );

    let three = ["198.18.1.0/24", "2001:db8:1::/64", "198.18.9.0/24"];
    let err = pod_cidrs(&node("n3", "198.18.1.0/24", &three, &[])).unwrap_err();
    assert!(matches!(err, AnnotationError::TooManyPodCidrs { .. }), "{err}");
    assert!(
        err.to_string().contains("3 entries") && err.to_string().contains("n3"),
        "{err}"
    );

    let err = pod_cidrs(&node("n", "garbage", &[], &[])).unwrap_err();
    assert_eq!(
        err,
        AnnotationError::BadPodCidr {
            node: "n".into(),
            field: "spec.podCIDR",
            value: "garbage".into()
        }
    );
}

#[test]
fn own_lease_v4_dual_and_checks() {
    let attrs = vxlan_attrs("192.0.2.1");
    let conf = netconf(r#"{"Network": "198.18.0.0/16", "Backend": {"Type": "vxlan"}}"#);
    let lease = own_lease(&node("flannel1", "198.18.1.0/24", &[], &[]), &conf, &attrs).unwrap();
    assert_eq!(lease.subnet, Some("198.18.1.0/24".parse().unwrap()));
    assert_eq!(lease.ipv6_subnet, None);
    assert!(lease.enable_ipv4 && !lease.enable_ipv6);
    assert_eq!(lease.attrs, attrs);
    assert_eq!(lease.expiration, None);

    let err = own_lease(&node("flannel1", "10.10.1.0/24", &[], &[]), &conf, &attrs).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, AnnotationError::NotInNetwork { .. }));
    assert!(
        text.contains("198.18.0.0/16") && text.contains("10.10.1.0/24") && text.contains("flannel1"),
        "{text}"
    );

    // Kube mode does no CheckNetworkConfig: a config without Network parses, then the lease fails.
    let no_net = netconf(r#"{"Backend": {"Type": "vxlan"}}"#);
    let err = own_lease(&node("flannel1", "198.18.1.0/24", &[], &[]), &no_net, &attrs).unwrap_err();
    assert!(err.to_string().contains("unset"), "{err}");

    let dual_conf = netconf(
        r#"{"Network": "198.18.0.0/16", "EnableIPv6": true, "IPv6Network": "2001:db8::/48", "Backend": {"Type": "vxlan"}}"#,
    );
    let dual = node("d", "198.18.3.0/24", &["198.18.3.0/24", "2001:db8:0:3::/64"], &[]);
    let lease = own_lease(&dual, &dual_conf, &attrs).unwrap();
    assert_eq!(lease.ipv6_subnet, Some("2001:db8:0:3::/64".parse().unwrap()));
    assert!(lease.enable_ipv4 && lease.enable_ipv6);

    let err = own_lease(&node("d", "198.18.3.0/24", &[], &[]), &dual_conf, &attrs).unwrap_err();
    assert!(
        matches!(err, AnnotationError::MissingPodCidr { family: "IPv6", .. }),
        "{err}"
    );
    let outside = node("d", "198.18.3.0/24", &["198.18.3.0/24", "2001:db9::/64"], &[]);
    let err = own_lease(&outside, &dual_conf, &attrs).unwrap_err();
    assert!(err.to_string().contains("IPv6Network"), "{err}");
}

fn remote(name: &str, cidr: &str, data: &str) -> NodeInfo {
    node(
        name,
        cidr,
        &[],
        &[
            ("flannel.alpha.coreos.com/kube-subnet-manager", "true"),
            ("flannel.alpha.coreos.com/backend-type", "vxlan"),
            ("flannel.alpha.coreos.com/backend-data", data),
            ("flannel.alpha.coreos.com/public-ip", "192.0.2.2"),
        ],
    )
}

#[test]
fn remote_node_as_a_lease() {
    let n = names();
    let lease = node_lease(&n, &remote("flannel2", "198.18.2.0/24", VXLAN_DATA), true, false).unwrap();
    assert!(is_managed(&n, &remote("x", "198.18.2.0/24", VXLAN_DATA)));
    assert_eq!(lease.subnet, Some("198.18.2.0/24".parse().unwrap()));
    assert_eq!(lease.attrs.public_ip, "192.0.2.2".parse::<Ipv4Addr>().unwrap());
    assert_eq!(lease.attrs.backend_type, "vxlan");
    assert_eq!(lease.attrs.backend_data.as_deref(), Some(VXLAN_DATA));
    assert_eq!(lease.attrs.public_ipv6, None);
    assert!(lease.enable_ipv4 && !lease.enable_ipv6 && lease.expiration.is_none());
    // The same JSON as an etcd lease would carry.
    assert_eq!(
        lease.attrs.to_json(),
        r#"{"PublicIP":"192.0.2.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"96:59:b2:3f:04:ee"}}"#
    );
    let mut unmanaged = remote("x", "198.18.2.0/24", VXLAN_DATA);
    unmanaged
        .annotations
        .insert(n.subnet_kube_managed.clone(), "True".into());
    assert!(!is_managed(&n, &unmanaged));
}

#[test]
fn remote_dual_stack_and_host_gw_null_data() {
    let n = names();
    let mut dual = remote("d", "198.18.2.0/24", VXLAN_DATA);
    dual.pod_cidrs = vec!["198.18.2.0/24".into(), "2001:db8:2::/64".into()];
    dual.annotations
        .insert(n.backend_public_ipv6.clone(), "2001:db8::2".into());
    dual.annotations
        .insert(n.backend_v6_data.clone(), VXLAN_DATA.into());
    let lease = node_lease(&n, &dual, true, true).unwrap();
    assert_eq!(lease.ipv6_subnet, Some("2001:db8:2::/64".parse().unwrap()));
    assert_eq!(lease.attrs.public_ipv6, Some("2001:db8::2".parse().unwrap()));
    assert_eq!(lease.attrs.backend_v6_data.as_deref(), Some(VXLAN_DATA));
    // v6 only: the v4 side is not read at all.
    let mut v6_only = dual.clone();
    v6_only.annotations.remove(&n.backend_public_ip);
    let lease = node_lease(&n, &v6_only, false, true).unwrap();
    assert_eq!(lease.subnet, None);
    assert_eq!(lease.attrs.public_ip, Ipv4Addr::UNSPECIFIED);

    let mut hg = remote("h", "198.18.4.0/24", "null");
    hg.annotations.insert(n.backend_type.clone(), "host-gw".into());
    let lease = node_lease(&n, &hg, true, false).unwrap();
    assert_eq!(lease.attrs.backend_data, None);
}

#[test]
fn remote_node_errors_name_node_and_annotation() {
    let n = names();
    for (data, needle) in [("{not json", "not JSON"), (r#"{"VNI":1}"#, "VtepMAC is missing")] {
        let err = node_lease(&n, &remote("bad", "198.18.2.0/24", data), true, false).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("\"bad\"") && text.contains(&n.backend_data) && text.contains(needle),
            "{text}"
        );
    }
    let mut no_ip = remote("noip", "198.18.2.0/24", VXLAN_DATA);
    no_ip
        .annotations
        .insert(n.backend_public_ip.clone(), "2001:db8::1".into());
    let err = node_lease(&n, &no_ip, true, false).unwrap_err();
    assert!(
        err.to_string().contains("not an IPv4 address") && err.to_string().contains("public-ip"),
        "{err}"
    );
    no_ip.annotations.remove(&n.backend_public_ip);
    assert!(
        node_lease(&n, &no_ip, true, false)
            .unwrap_err()
            .to_string()
            .contains("missing")
    );
    // v6 enabled, node has no v6 CIDR.
    let mut v6 = remote("v4only", "198.18.2.0/24", VXLAN_DATA);
    v6.annotations
        .insert(n.backend_public_ipv6.clone(), "2001:db8::2".into());
    let err = node_lease(&n, &v6, true, true).unwrap_err();
    assert!(
        matches!(err, AnnotationError::MissingPodCidr { family: "IPv6", .. }),
        "{err}"
    );
    let err = node_lease(&n, &remote("nocidr", "", VXLAN_DATA), true, false).unwrap_err();
    assert!(matches!(err, AnnotationError::NoPodCidr { .. }), "{err}");
}
