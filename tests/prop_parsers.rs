//! Property tests of every parser of outside input (flags and env, net-conf.json, lease JSON and
//! subnet keys, kube annotations, subnet.env): arbitrary input never panics, what we write reads
//! back the same, and errors name the input. Fixed seed and case count, so `make test` is
//! repeatable; raise `PROP_CASES` to search longer (`PROP_CASES=20000 cargo test --test prop_parsers`).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use flanneld::cli;
use flanneld::lease::{LeaseAttrs, SubnetKey};
use flanneld::netconf::NetConf;
use flanneld::subnet::env_file::{parse_cidr_list, parse_env};
use flanneld::subnet::kube::annotations::{AnnotationNames, NodeInfo, node_lease, normalise_prefix};
use ipnet::{Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

fn config() -> Config {
    let cases = std::env::var("PROP_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x5eed_f1a2),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Text that looks like what the parser expects, mixed with noise.
fn texty() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        "[0-9a-fA-F.:/\\-&x]{0,40}",
        Just(String::new()),
        Just("\u{0}\u{feff}\u{2028}".to_string()),
    ]
}

const FLAGS: &[&str] = &[
    "etcd-endpoints",
    "etcd-prefix",
    "iface",
    "iface-regex",
    "iface-can-reach",
    "public-ip",
    "public-ipv6",
    "subnet-lease-renew-margin",
    "ip-masq",
    "kube-subnet-mgr",
    "healthz-port",
    "iptables-resync",
    "v",
    "version",
    "help",
];

fn arg() -> impl Strategy<Value = String> {
    let flag = (prop::sample::select(FLAGS), 0..2usize, prop::option::of(texty())).prop_map(
        |(name, dashes, value)| {
            let dashes = "-".repeat(dashes + 1);
            match value {
                Some(v) => format!("{dashes}{name}={v}"),
                None => format!("{dashes}{name}"),
            }
        },
    );
    prop_oneof![flag, texty()]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn flags_and_env_never_panic_and_errors_name_the_argument(
        args in prop::collection::vec(arg(), 0..6),
        env in prop::collection::btree_map(prop::sample::select(FLAGS), texty(), 0..4),
    ) {
        let lookup = |name: &str| {
            env.iter()
                .find(|(flag, _)| format!("FLANNELD_{}", flag.to_uppercase().replace('-', "_")) == name)
                .map(|(_, v)| v.clone())
        };
        if let Err(e) = cli::parse(&args, &lookup) {
            let text = e.to_string();
            prop_assert!(!text.is_empty());
            let named = args.iter().any(|a| {
                let a = a.trim_start_matches('-');
                let name = a.split('=').next().unwrap_or(a);
                (!name.is_empty() && text.contains(name)) || (!a.is_empty() && text.contains(a))
            });
            prop_assert!(named, "error {text:?} names none of {args:?}");
        }
    }

    #[test]
    fn net_conf_never_panics_and_errors_name_a_key_or_the_json(json in netconf_json()) {
        if let Err(e) = NetConf::parse_and_check(&json) {
            let text = e.to_string();
            let named = ["Network", "network", "SubnetLen", "SubnetMin", "SubnetMax", "EnableIPv6",
                "EnableIPv4", "IPv6Network", "IPv6SubnetLen", "EnableNFTables", "Backend", "backend",
                "JSON", "json", "IPv6", "stack"]
                .iter()
                .any(|k| text.contains(k));
            prop_assert!(named, "error {text:?} names no key of {json}");
        }
    }

    #[test]
    fn net_conf_of_any_text_never_panics(text in texty()) {
        let _ = NetConf::parse_and_check(&text);
    }

    #[test]
    fn a_valid_network_gets_upstreams_subnet_len(a in any::<u32>(), len in 8u8..=28) {
        let net = Ipv4Net::new(Ipv4Addr::from(a), len).unwrap().trunc();
        let json = format!(r#"{{"Network": "{net}"}}"#);
        let conf = NetConf::parse_and_check(&json).expect("a valid network");
        let want = if len <= 22 { 24 } else { len + 2 };
        prop_assert_eq!(conf.subnet_len, want);
        prop_assert_eq!(conf.network, Some(net));
    }

    #[test]
    fn subnet_keys_round_trip(a in any::<u32>(), len in 0u8..=31, v6 in prop::option::of((any::<u128>(), 1u8..=127))) {
        let v4 = Ipv4Net::new(Ipv4Addr::from(a), len).unwrap().trunc();
        let v6 = v6.map(|(b, l)| Ipv6Net::new(Ipv6Addr::from(b), l).unwrap().trunc());
        let key = SubnetKey { v4, v6 };
        let text = key.to_string();
        prop_assert_eq!(SubnetKey::parse(&text).expect("our own key text"), key);
    }

    #[test]
    fn subnet_key_errors_name_the_key(text in texty()) {
        if let Err(e) = SubnetKey::parse(&text) {
            prop_assert!(e.to_string().contains(&format!("{text:?}")), "{e}");
        }
    }

    #[test]
    fn lease_json_round_trips(
        ip in any::<u32>(),
        ip6 in prop::option::of(any::<u128>()),
        backend_type in "[a-z-]{0,10}",
        data in prop::option::of(r#"\{"VNI":[1-9][0-9]{0,2},"VtepMAC":"[0-9a-f:]{17}"\}"#),
    ) {
        let attrs = LeaseAttrs {
            public_ip: Ipv4Addr::from(ip),
            public_ipv6: ip6.map(Ipv6Addr::from),
            backend_type,
            backend_data: data,
            backend_v6_data: None,
        };
        let json = attrs.to_json();
        prop_assert_eq!(LeaseAttrs::from_json(&json).expect("our own JSON"), attrs);
    }

    #[test]
    fn lease_json_errors_name_the_json(text in texty()) {
        if let Err(e) = LeaseAttrs::from_json(&text) {
            prop_assert!(e.to_string().contains(&format!("{text:?}")), "{e}");
        }
    }

    #[test]
    fn annotations_never_panic_and_errors_name_node_and_annotation(
        values in prop::collection::vec(texty(), 6),
        cidrs in prop::collection::vec(texty(), 0..3),
        prefix in texty(),
    ) {
        let _ = normalise_prefix(&prefix);
        let names = AnnotationNames::new("flannel.alpha.coreos.com").unwrap();
        let keys = [
            &names.backend_data, &names.backend_v6_data, &names.backend_type,
            &names.backend_public_ip, &names.backend_public_ipv6, &names.subnet_kube_managed,
        ];
        let annotations: BTreeMap<String, String> =
            keys.iter().zip(&values).map(|(k, v)| (k.to_string(), v.clone())).collect();
        let node = NodeInfo {
            name: "node-x".into(),
            resource_version: "1".into(),
            annotations,
            pod_cidr: cidrs.first().cloned().unwrap_or_default(),
            pod_cidrs: cidrs.clone(),
        };
        for (v4, v6) in [(true, false), (false, true), (true, true)] {
            if let Err(e) = node_lease(&names, &node, v4, v6) {
                prop_assert!(e.to_string().contains("node-x"), "{e}");
            }
        }
    }

    #[test]
    fn subnet_env_never_panics(text in ".{0,200}") {
        match parse_env(&text) {
            Ok(vars) => for value in vars.values() {
                let _ = parse_cidr_list(value);
            },
            Err(e) => prop_assert!(e.contains("entry"), "{e}"),
        }
    }

    #[test]
    fn subnet_env_reads_back_what_we_write(a in any::<u32>(), len in 16u8..=28, mtu in 68u32..9000, masq in any::<bool>()) {
        let net = Ipv4Net::new(Ipv4Addr::from(a), len).unwrap().trunc();
        let text = format!(
            "FLANNEL_NETWORK={net}\nFLANNEL_SUBNET={}/{len}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={masq}\n",
            Ipv4Addr::from(u32::from(net.addr()).wrapping_add(1))
        );
        let vars = parse_env(&text).expect("our own format");
        prop_assert_eq!(vars.get("FLANNEL_MTU").cloned(), Some(mtu.to_string()));
        let subnet = parse_cidr_list(&vars["FLANNEL_SUBNET"]);
        prop_assert_eq!(subnet.len(), 1);
        prop_assert_eq!(subnet[0].network(), std::net::IpAddr::V4(net.network()));
    }
}

/// net-conf.json objects with upstream's keys (any case) and arbitrary values.
fn netconf_json() -> impl Strategy<Value = String> {
    const KEYS: &[&str] = &[
        "Network",
        "network",
        "SubnetLen",
        "SubnetMin",
        "SubnetMax",
        "EnableIPv6",
        "EnableIPv4",
        "IPv6Network",
        "IPv6SubnetLen",
        "EnableNFTables",
        "Backend",
    ];
    let value = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        texty().prop_map(|s| serde_json::to_string(&s).unwrap()),
        Just(r#""10.3.0.0/16""#.to_string()),
        Just(r#""fc00::/48""#.to_string()),
        Just(r#"{"Type": "vxlan", "VNI": 5}"#.to_string()),
        Just(r#"{"Type": "wireguard", "PSK": "bad"}"#.to_string()),
        Just(r#"{"Type": 7}"#.to_string()),
    ];
    prop::collection::vec((prop::sample::select(KEYS), value), 0..6).prop_map(|pairs| {
        let body: Vec<String> = pairs.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
        format!("{{{}}}", body.join(", "))
    })
}
