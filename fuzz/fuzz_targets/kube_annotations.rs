//! Kubernetes node annotations and podCIDRs of other nodes: turning a node into a lease never
//! panics (NUL-separated fields).
#![no_main]
use flanneld::subnet::kube::annotations::{AnnotationNames, NodeInfo, node_lease, normalise_prefix};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let fields: Vec<&str> = text.split('\0').collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or("").to_string();
    let _ = normalise_prefix(&field(0));
    let names = AnnotationNames::new("flannel.alpha.coreos.com").expect("default prefix");
    let keys = [
        &names.backend_data,
        &names.backend_v6_data,
        &names.backend_type,
        &names.backend_public_ip,
        &names.backend_public_ipv6,
        &names.subnet_kube_managed,
    ];
    let node = NodeInfo {
        name: "fuzz".into(),
        resource_version: "1".into(),
        annotations: keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.to_string(), field(i + 1)))
            .collect(),
        pod_cidr: field(7),
        pod_cidrs: vec![field(7), field(8)],
    };
    for (v4, v6) in [(true, false), (false, true), (true, true)] {
        let _ = node_lease(&names, &node, v4, v6);
    }
});
