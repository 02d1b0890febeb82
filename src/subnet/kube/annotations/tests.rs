//! Unit tests of annotation names, the annotations to publish and the stored values, with
//! upstream's reference values (spec 6.2, 6.4 step 4, 6.6).

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
