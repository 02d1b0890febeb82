//! Unit tests of the pure kube pieces, with upstream's reference values (spec 6.2, 6.4-6.6, 13.1).

use std::time::Duration;

use super::*;

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
fn prefix_normalisation_matches_upstream() {
    for (prefix, backend_type) in [
        (
            "flannel.alpha.coreos.com",
            "flannel.alpha.coreos.com/backend-type",
        ),
        (
            "flannel.alpha.coreos.com/",
            "flannel.alpha.coreos.com/backend-type",
        ),
        (
            "flannel.alpha.coreos.com/prefix",
            "flannel.alpha.coreos.com/prefix-backend-type",
        ),
        (
            "flannel.alpha.coreos.com/prefix-",
            "flannel.alpha.coreos.com/prefix-backend-type",
        ),
        ("org.com/9", "org.com/9-backend-type"),
        // Unanchored at the start, as Go's MatchString: only the tail is checked.
        ("Upper.org.com", "Upper.org.com/backend-type"),
    ] {
        let names = AnnotationNames::new(prefix).unwrap_or_else(|e| panic!("{prefix}: {e}"));
        assert_eq!(names.backend_type, backend_type, "{prefix}");
    }
}

#[test]
fn prefix_errors_name_the_prefix() {
    for prefix in [
        "org",
        "org/",
        "org/prefix",
        "org.COM",
        "org.com/PREFIX",
        "",
        "org.com/-",
        "a.b/",
    ] {
        if prefix == "a.b/" {
            assert!(normalise_prefix(prefix).is_ok());
            continue;
        }
        let err = normalise_prefix(prefix).unwrap_err();
        assert!(
            matches!(err, AnnotationError::PrefixFormat { .. }),
            "{prefix}: {err}"
        );
        assert!(err.to_string().contains(&format!("{prefix:?}")), "{err}");
    }
    let err = normalise_prefix("a.com/b/c").unwrap_err();
    assert_eq!(
        err,
        AnnotationError::PrefixSlashes {
            prefix: "a.com/b/c".into()
        }
    );
    assert!(err.to_string().contains("at most one '/'"), "{err}");
}

#[test]
fn every_annotation_name() {
    let n = AnnotationNames::new("example.com/net").unwrap();
    let all = [
        (&n.subnet_kube_managed, "kube-subnet-manager"),
        (&n.backend_data, "backend-data"),
        (&n.backend_v6_data, "backend-v6-data"),
        (&n.backend_type, "backend-type"),
        (&n.backend_public_ip, "public-ip"),
        (&n.backend_public_ipv6, "public-ipv6"),
        (&n.backend_public_ip_overwrite, "public-ip-overwrite"),
        (&n.backend_public_ipv6_overwrite, "public-ipv6-overwrite"),
        (&n.node_public_ip, "node-public-ip"),
        (&n.node_public_ipv6, "node-public-ipv6"),
    ];
    for (name, suffix) in all {
        assert_eq!(*name, format!("example.com/net-{suffix}"));
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

#[test]
fn first_annotation_of_a_vxlan_node_matches_upstream() {
    let n = names();
    let update = annotation_update(&n, &BTreeMap::new(), &vxlan_attrs("192.168.77.17"));
    let expected: BTreeMap<String, String> = [
        ("flannel.alpha.coreos.com/backend-data", VXLAN_DATA),
        ("flannel.alpha.coreos.com/backend-type", "vxlan"),
        ("flannel.alpha.coreos.com/kube-subnet-manager", "true"),
        ("flannel.alpha.coreos.com/public-ip", "192.168.77.17"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(update.changes, expected);
    assert!(update.overrides.is_empty());
    assert_eq!(
        annotations_patch(&update.changes).to_string(),
        r#"{"metadata":{"annotations":{"flannel.alpha.coreos.com/backend-data":"{\"VNI\":1,\"VtepMAC\":\"96:59:b2:3f:04:ee\"}","flannel.alpha.coreos.com/backend-type":"vxlan","flannel.alpha.coreos.com/kube-subnet-manager":"true","flannel.alpha.coreos.com/public-ip":"192.168.77.17"}}}"#
    );
    // Once written, nothing differs: no patch.
    let mut current = expected.clone();
    current.insert("other/annotation".into(), "kept".into());
    assert!(
        annotation_update(&n, &current, &vxlan_attrs("192.168.77.17"))
            .changes
            .is_empty()
    );
    // Only what differs is sent.
    let moved = annotation_update(&n, &current, &vxlan_attrs("192.168.77.18"));
    assert_eq!(
        moved.changes.into_iter().collect::<Vec<_>>(),
        vec![(
            "flannel.alpha.coreos.com/public-ip".to_string(),
            "192.168.77.18".to_string()
        )]
    );
}

#[test]
fn public_ip_overwrite_wins_and_is_reported() {
    let n = names();
    let mut current = annotation_update(&n, &BTreeMap::new(), &vxlan_attrs("192.0.2.1")).changes;
    current.insert(n.backend_public_ip_overwrite.clone(), "172.18.0.2".into());
    let update = annotation_update(&n, &current, &vxlan_attrs("192.0.2.1"));
    assert_eq!(
        update.changes.get(&n.backend_public_ip).map(String::as_str),
        Some("172.18.0.2")
    );
    assert_eq!(update.changes.len(), 1);
    assert_eq!(
        update.overrides,
        vec![(n.backend_public_ip_overwrite.clone(), "172.18.0.2".into())]
    );
    // Applied: stable.
    current.extend(update.changes);
    let again = annotation_update(&n, &current, &vxlan_attrs("192.0.2.1"));
    assert!(
        again.changes.is_empty() && again.overrides.is_empty(),
        "{again:?}"
    );
    // Overwrite removed: back to our own address.
    current.remove(&n.backend_public_ip_overwrite);
    let back = annotation_update(&n, &current, &vxlan_attrs("192.0.2.1"));
    assert_eq!(
        back.changes.get(&n.backend_public_ip).map(String::as_str),
        Some("192.0.2.1")
    );
}

#[test]
fn host_gw_writes_null_backend_data_and_v6_when_it_has_a_v6_address() {
    let n = names();
    let attrs = LeaseAttrs {
        public_ip: "192.0.2.1".parse().unwrap(),
        public_ipv6: Some("2001:db8::1".parse().unwrap()),
        backend_type: "host-gw".into(),
        ..LeaseAttrs::default()
    };
    let c = annotation_update(&n, &BTreeMap::new(), &attrs).changes;
    assert_eq!(c.get(&n.backend_data).map(String::as_str), Some("null"));
    assert_eq!(c.get(&n.backend_v6_data).map(String::as_str), Some("null"));
    assert_eq!(
        c.get(&n.backend_public_ipv6).map(String::as_str),
        Some("2001:db8::1")
    );
    assert_eq!(c.get(&n.backend_type).map(String::as_str), Some("host-gw"));

    // udp/alloc publish an empty backend type; v6 is not written for them.
    let udp = LeaseAttrs {
        public_ipv6: Some("2001:db8::1".parse().unwrap()),
        ..LeaseAttrs::default()
    };
    let c = annotation_update(&n, &BTreeMap::new(), &udp).changes;
    assert_eq!(c.get(&n.backend_type).map(String::as_str), Some(""));
    assert_eq!(c.get(&n.backend_public_ip).map(String::as_str), Some("0.0.0.0"));
    assert!(!c.contains_key(&n.backend_v6_data));
}

#[test]
fn vxlan_v6_only_skips_v4_data_and_dual_writes_both() {
    let n = names();
    let v6_only = LeaseAttrs {
        public_ipv6: Some("2001:db8::1".parse().unwrap()),
        backend_type: "vxlan".into(),
        backend_v6_data: Some(VXLAN_DATA.into()),
        ..LeaseAttrs::default()
    };
    let c = annotation_update(&n, &BTreeMap::new(), &v6_only).changes;
    assert!(!c.contains_key(&n.backend_data) && !c.contains_key(&n.backend_public_ip));
    assert_eq!(c.get(&n.backend_v6_data).map(String::as_str), Some(VXLAN_DATA));
    assert_eq!(
        c.get(&n.backend_public_ipv6).map(String::as_str),
        Some("2001:db8::1")
    );

    let mut dual = vxlan_attrs("192.0.2.1");
    dual.public_ipv6 = Some("2001:db8::1".parse().unwrap());
    dual.backend_v6_data = Some(VXLAN_DATA.into());
    let mut current = annotation_update(&n, &BTreeMap::new(), &dual).changes;
    assert_eq!(current.len(), 6);
    current.insert(n.backend_public_ipv6_overwrite.clone(), "2001:db8::99".into());
    let update = annotation_update(&n, &current, &dual);
    assert_eq!(update.changes.len(), 1);
    assert_eq!(
        update.overrides,
        vec![(n.backend_public_ipv6_overwrite.clone(), "2001:db8::99".into())]
    );
}

#[test]
fn wireguard_v6_data_needs_a_v6_address() {
    let n = names();
    let wg = LeaseAttrs {
        public_ip: "192.0.2.1".parse().unwrap(),
        backend_type: "wireguard".into(),
        backend_data: Some(r#"{"PublicKey":"k=","Port":51820}"#.into()),
        backend_v6_data: Some(r#"{"PublicKey":"k=","Port":51821}"#.into()),
        ..LeaseAttrs::default()
    };
    let c = annotation_update(&n, &BTreeMap::new(), &wg).changes;
    assert!(c.contains_key(&n.backend_data) && !c.contains_key(&n.backend_v6_data));
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

#[test]
fn stored_values() {
    let n = names();
    let mut nd = node("n", "198.18.1.0/24", &[], &[]);
    assert_eq!(stored_public_ips(&n, &nd).unwrap(), (None, None));
    nd.annotations
        .insert(n.node_public_ip.clone(), "203.0.113.9".into());
    nd.annotations
        .insert(n.node_public_ipv6.clone(), "2001:db8::9".into());
    assert_eq!(
        stored_public_ips(&n, &nd).unwrap(),
        (
            Some("203.0.113.9".parse().unwrap()),
            Some("2001:db8::9".parse().unwrap())
        )
    );
    nd.annotations
        .insert(n.node_public_ip.clone(), "203.0.113".into());
    let err = stored_public_ips(&n, &nd).unwrap_err();
    assert!(
        err.to_string().contains("node-public-ip") && err.to_string().contains("203.0.113"),
        "{err}"
    );

    let (v4, v6) = stored_vtep_macs(&n, &nd);
    assert_eq!((v4.unwrap(), v6.unwrap()), (None, None));
    nd.annotations.insert(
        n.backend_data.clone(),
        r#"{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e3"}"#.into(),
    );
    nd.annotations.insert(n.backend_v6_data.clone(), "garbage".into());
    let (v4, v6) = stored_vtep_macs(&n, &nd);
    assert_eq!(v4.unwrap(), Some("12:c6:65:89:b4:e3".parse().unwrap()));
    assert!(v6.unwrap_err().to_string().contains("backend-v6-data"));
}

#[test]
fn network_unavailable_patch_matches_upstream() {
    let at = UNIX_EPOCH + Duration::from_secs(1_719_671_315);
    assert_eq!(
        network_unavailable_patch(at).to_string(),
        r#"{"status":{"conditions":[{"type":"NetworkUnavailable","status":"False","lastHeartbeatTime":"2024-06-29T14:28:35Z","lastTransitionTime":"2024-06-29T14:28:35Z","reason":"FlannelIsUp","message":"Flannel is running on this node"}]}}"#
    );
}

#[test]
fn rfc3339_reference_dates() {
    for (secs, text) in [
        (0, "1970-01-01T00:00:00Z"),
        (951_782_400, "2000-02-29T00:00:00Z"),
        (1_709_251_199, "2024-02-29T23:59:59Z"),
        (4_102_444_800, "2100-01-01T00:00:00Z"),
    ] {
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(secs)), text);
    }
}
