//! The Kubernetes subnet manager with the real `kube` client against the test API server
//! (tests/support/apiserver.rs) on loopback: client configuration and node name (spec 6.1),
//! the lease and its annotations (6.4), stored values and NetworkUnavailable (6.6), and failures.
//! The node watch has its own file (kube_watch.rs).

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use flanneld::lease::LeaseAttrs;
use flanneld::netconf::NetConf;
use flanneld::subnet::kube::{KubeEnv, KubeError, KubeOptions, KubeSubnetManager};
use flanneld::subnet::{LeaseOutcome, SubnetError, SubnetManager};
use support::apiserver::ApiServer;
use tokio_util::sync::CancellationToken;

pub const NETCONF: &str = r#"{"Network": "198.18.0.0/16", "Backend": {"Type": "vxlan"}}"#;
const DATA: &str = r#"{"VNI":1,"VtepMAC":"96:59:b2:3f:04:ee"}"#;

struct Fixture {
    api: ApiServer,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("net-conf.json"), NETCONF).unwrap();
        Fixture {
            api: ApiServer::start(),
            dir,
        }
    }

    fn options(&self) -> KubeOptions {
        KubeOptions {
            api_url: Some(self.api.url.clone()),
            kubeconfig_file: None,
            annotation_prefix: "flannel.alpha.coreos.com".into(),
            net_config_path: self.dir.path().join("net-conf.json"),
            set_node_network_unavailable: true,
        }
    }

    async fn manager(&self, node: &str) -> KubeSubnetManager {
        KubeSubnetManager::new(self.options(), env(node))
            .await
            .expect("manager")
    }
}

fn env(node: &str) -> KubeEnv {
    KubeEnv {
        node_name: Some(node.into()),
        ..KubeEnv::default()
    }
}

fn vxlan_attrs(ip: &str) -> LeaseAttrs {
    LeaseAttrs {
        public_ip: ip.parse().unwrap(),
        backend_type: "vxlan".into(),
        backend_data: Some(DATA.into()),
        ..LeaseAttrs::default()
    }
}

fn conf() -> NetConf {
    NetConf::parse(NETCONF).unwrap()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn acquire_publishes_exactly_upstreams_annotations_once() {
    let fx = Fixture::new();
    fx.api.add_node("flannel1", &["198.18.1.0/24"]);
    let m = fx.manager("flannel1").await;
    assert_eq!(m.name(), "Kubernetes subnet manager for node flannel1");
    assert_eq!(m.network_config().await.unwrap(), conf());

    let lease = m.acquire_lease(&conf(), &vxlan_attrs("192.0.2.1")).await.unwrap();
    assert_eq!(lease.subnet, Some("198.18.1.0/24".parse().unwrap()));
    assert_eq!(lease.ipv6_subnet, None);
    assert_eq!(
        fx.api.annotations("flannel1"),
        map(&[
            ("flannel.alpha.coreos.com/backend-data", DATA),
            ("flannel.alpha.coreos.com/backend-type", "vxlan"),
            ("flannel.alpha.coreos.com/kube-subnet-manager", "true"),
            ("flannel.alpha.coreos.com/public-ip", "192.0.2.1"),
        ])
    );
    let patches = fx.api.patches("/api/v1/nodes/flannel1/status");
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert_eq!(patches[0].content_type, "application/strategic-merge-patch+json");
    let body: serde_json::Value = serde_json::from_str(&patches[0].body).unwrap();
    assert_eq!(
        body["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ip"],
        "192.0.2.1"
    );

    // A restart with the same attributes patches nothing.
    let again = fx.manager("flannel1").await;
    again
        .acquire_lease(&conf(), &vxlan_attrs("192.0.2.1"))
        .await
        .unwrap();
    assert_eq!(fx.api.patches("/api/v1/nodes/flannel1/status").len(), 1);
    // No write ever goes to the node itself (RBAC grants nodes/status patch only).
    assert!(fx.api.patches("/api/v1/nodes/flannel1").is_empty());
}

#[tokio::test]
async fn public_ip_overwrite_at_startup() {
    let fx = Fixture::new();
    fx.api.add_node("flannel1", &["198.18.1.0/24"]);
    fx.api.annotate(
        "flannel1",
        "flannel.alpha.coreos.com/public-ip-overwrite",
        Some("172.18.0.2"),
    );
    let m = fx.manager("flannel1").await;
    let lease = m.acquire_lease(&conf(), &vxlan_attrs("192.0.2.1")).await.unwrap();
    assert_eq!(
        fx.api.annotations("flannel1")["flannel.alpha.coreos.com/public-ip"],
        "172.18.0.2"
    );
    // The own lease keeps the daemon's address, as upstream.
    assert_eq!(lease.attrs.public_ip.to_string(), "192.0.2.1");
}

#[tokio::test]
async fn node_without_pod_cidr_waits_with_a_hint_then_succeeds() {
    let fx = Fixture::new();
    fx.api.add_node("flannel1", &[]);
    let m = fx.manager("flannel1").await;
    let err = m
        .acquire_lease(&conf(), &vxlan_attrs("192.0.2.1"))
        .await
        .unwrap_err();
    assert!(err.is_retriable(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("flannel1")
            && text.contains("--allocate-node-cidrs")
            && text.contains("--cluster-cidr"),
        "{text}"
    );
    assert!(
        fx.api.patches("/api/v1/nodes/flannel1/status").is_empty(),
        "nothing published without a lease"
    );
    fx.api.add_node("flannel1", &["198.18.7.0/24"]);
    let lease = m.acquire_lease(&conf(), &vxlan_attrs("192.0.2.1")).await.unwrap();
    assert_eq!(lease.subnet, Some("198.18.7.0/24".parse().unwrap()));
}

#[tokio::test]
async fn missing_node_is_retriable_and_named() {
    let fx = Fixture::new();
    let m = fx.manager("ghost").await;
    let err = m
        .acquire_lease(&conf(), &vxlan_attrs("192.0.2.1"))
        .await
        .unwrap_err();
    assert!(
        err.is_retriable() && err.to_string().contains("\"ghost\""),
        "{err}"
    );
}

#[tokio::test]
async fn bad_pod_cidrs_are_fatal_and_clear() {
    let fx = Fixture::new();
    fx.api
        .add_node("three", &["198.18.1.0/24", "2001:db8:1::/64", "198.18.2.0/24"]);
    fx.api.add_node("outside", &["10.10.1.0/24"]);
    for (node, needle) in [("three", "3 entries"), ("outside", "does not contain")] {
        let m = fx.manager(node).await;
        let err = m
            .acquire_lease(&conf(), &vxlan_attrs("192.0.2.1"))
            .await
            .unwrap_err();
        assert!(matches!(err, SubnetError::Fatal(_)), "{err}");
        assert!(
            err.to_string().contains(needle) && err.to_string().contains(node),
            "{err}"
        );
        assert!(
            fx.api.annotations(node).is_empty(),
            "nothing published for {node}"
        );
    }
}

#[tokio::test]
async fn api_errors_are_retriable_and_name_the_request() {
    let fx = Fixture::new();
    fx.api.add_node("flannel1", &["198.18.1.0/24"]);
    let m = fx.manager("flannel1").await;
    fx.api.fail_next(1, 500);
    let err = m
        .acquire_lease(&conf(), &vxlan_attrs("192.0.2.1"))
        .await
        .unwrap_err();
    assert!(err.is_retriable(), "{err}");
    assert!(
        err.to_string().contains("getting node \"flannel1\"") && err.to_string().contains("500"),
        "{err}"
    );
    m.acquire_lease(&conf(), &vxlan_attrs("192.0.2.1")).await.unwrap();

    // An unreachable API server: the error names the request and the URL.
    let mut options = fx.options();
    options.api_url = Some("http://127.0.0.1:1".into());
    let m = KubeSubnetManager::new(options, env("flannel1")).await.unwrap();
    let err = m
        .acquire_lease(&conf(), &vxlan_attrs("192.0.2.1"))
        .await
        .unwrap_err();
    assert!(err.is_retriable(), "{err}");
    assert!(
        err.to_string()
            .contains("getting node \"flannel1\" from http://127.0.0.1:1/"),
        "{err}"
    );
}

#[tokio::test]
async fn complete_lease_sets_network_unavailable_false_merged_by_type() {
    let fx = Fixture::new();
    fx.api.add_node("flannel1", &["198.18.1.0/24"]);
    let m = fx.manager("flannel1").await;
    let lease = m.acquire_lease(&conf(), &vxlan_attrs("192.0.2.1")).await.unwrap();
    fx.api.fail_next(1, 500);
    let outcome = m.complete_lease(&lease, CancellationToken::new()).await.unwrap();
    assert_eq!(outcome, LeaseOutcome::Done);
    let node = fx.api.node("flannel1").unwrap();
    let conditions = node["status"]["conditions"].as_array().unwrap();
    assert_eq!(conditions.len(), 2, "{conditions:?}");
    let ready = conditions.iter().find(|c| c["type"] == "Ready").unwrap();
    assert_eq!(ready["status"], "True");
    let net = conditions
        .iter()
        .find(|c| c["type"] == "NetworkUnavailable")
        .unwrap();
    assert_eq!(net["status"], "False");
    assert_eq!(net["reason"], "FlannelIsUp");
    assert_eq!(net["message"], "Flannel is running on this node");
    assert!(net["lastTransitionTime"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn complete_lease_can_leave_the_condition_alone_and_stops_on_shutdown() {
    let fx = Fixture::new();
    fx.api.add_node("flannel1", &["198.18.1.0/24"]);
    let mut options = fx.options();
    options.set_node_network_unavailable = false;
    let m = KubeSubnetManager::new(options, env("flannel1")).await.unwrap();
    let lease = m.acquire_lease(&conf(), &vxlan_attrs("192.0.2.1")).await.unwrap();
    assert_eq!(
        m.complete_lease(&lease, CancellationToken::new()).await.unwrap(),
        LeaseOutcome::Done
    );
    assert_eq!(
        fx.api.patches("/api/v1/nodes/flannel1/status").len(),
        1,
        "only the annotations"
    );

    let m = fx.manager("flannel1").await;
    fx.api.fail_next(1000, 500);
    let shutdown = CancellationToken::new();
    let stopper = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stopper.cancel();
    });
    assert_eq!(
        m.complete_lease(&lease, shutdown).await.unwrap(),
        LeaseOutcome::Shutdown
    );
}

#[tokio::test]
async fn stored_public_ips_and_vtep_mac() {
    let fx = Fixture::new();
    fx.api.add_node("flannel1", &["198.18.1.0/24"]);
    let m = fx.manager("flannel1").await;
    assert_eq!(m.stored_public_ips().await.unwrap(), (None, None));
    assert_eq!(m.stored_vtep_macs().await.unwrap(), (None, None));
    fx.api.annotate(
        "flannel1",
        "flannel.alpha.coreos.com/node-public-ip",
        Some("203.0.113.5"),
    );
    fx.api.annotate(
        "flannel1",
        "flannel.alpha.coreos.com/backend-data",
        Some(r#"{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e3"}"#),
    );
    // A manager reads its node once at startup: the next run sees the new annotations.
    let m = fx.manager("flannel1").await;
    assert_eq!(
        m.stored_public_ips().await.unwrap(),
        (Some("203.0.113.5".into()), None)
    );
    assert_eq!(
        m.stored_vtep_macs().await.unwrap(),
        (Some("12:c6:65:89:b4:e3".parse().unwrap()), None)
    );
    // A typo in the operator's annotation is an error naming it; a bad stored MAC is ignored.
    fx.api.annotate(
        "flannel1",
        "flannel.alpha.coreos.com/node-public-ip",
        Some("203.0.113"),
    );
    fx.api.annotate(
        "flannel1",
        "flannel.alpha.coreos.com/backend-data",
        Some("garbage"),
    );
    let m = fx.manager("flannel1").await;
    let err = m.stored_public_ips().await.unwrap_err();
    assert!(
        err.to_string().contains("node-public-ip") && err.to_string().contains("203.0.113"),
        "{err}"
    );
    assert_eq!(m.stored_vtep_macs().await.unwrap(), (None, None));
}

#[tokio::test]
async fn startup_reads_the_node_once_and_a_retried_acquire_reads_it_again() {
    let fx = Fixture::new();
    fx.api.add_node("flannel1", &["198.18.1.0/24"]);
    fx.api.annotate(
        "flannel1",
        "flannel.alpha.coreos.com/node-public-ip",
        Some("203.0.113.5"),
    );
    let node_gets = || {
        fx.api
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == "/api/v1/nodes/flannel1")
            .count()
    };
    let m = fx.manager("flannel1").await;
    assert_eq!(
        m.stored_public_ips().await.unwrap(),
        (Some("203.0.113.5".into()), None)
    );
    assert_eq!(m.stored_vtep_macs().await.unwrap(), (None, None));
    let lease = m
        .acquire_lease(&conf(), &vxlan_attrs("203.0.113.5"))
        .await
        .unwrap();
    assert_eq!(lease.subnet, Some("198.18.1.0/24".parse().unwrap()));
    assert_eq!(node_gets(), 1, "{:?}", fx.api.requests());
    // A later acquisition (the daemon's retry) reads the node anew.
    m.acquire_lease(&conf(), &vxlan_attrs("203.0.113.5"))
        .await
        .unwrap();
    assert_eq!(node_gets(), 2, "{:?}", fx.api.requests());
}

#[tokio::test]
async fn stored_values_wait_for_the_node() {
    let fx = Fixture::new();
    let m = fx.manager("late").await;
    let waiting = tokio::time::timeout(Duration::from_millis(500), m.stored_public_ips()).await;
    assert!(waiting.is_err(), "keeps waiting while the node does not exist");
    fx.api.add_node("late", &["198.18.1.0/24"]);
    assert_eq!(m.stored_public_ips().await.unwrap(), (None, None));
}

#[tokio::test]
async fn node_name_from_the_pod() {
    let fx = Fixture::new();
    fx.api
        .add_pod("kube-flannel", "kube-flannel-ds-abcde", Some("flannel2"));
    fx.api.add_pod("kube-flannel", "unscheduled", None);
    let pod_env = |pod: &str| KubeEnv {
        pod_name: Some(pod.into()),
        pod_namespace: Some("kube-flannel".into()),
        ..KubeEnv::default()
    };
    let m = KubeSubnetManager::new(fx.options(), pod_env("kube-flannel-ds-abcde"))
        .await
        .unwrap();
    assert_eq!(m.node_name(), "flannel2");

    let err = KubeSubnetManager::new(fx.options(), pod_env("unscheduled"))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, KubeError::PodWithoutNode { .. }), "{err}");
    assert!(err.to_string().contains("kube-flannel/unscheduled"), "{err}");
    let err = KubeSubnetManager::new(fx.options(), pod_env("missing"))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, KubeError::PodLookup { .. }), "{err}");
    assert!(
        err.to_string().contains("kube-flannel/missing") && err.to_string().contains("not found"),
        "{err}"
    );
    let err = KubeSubnetManager::new(fx.options(), KubeEnv::default())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, KubeError::NoNodeName), "{err}");
    assert!(
        err.to_string().contains("NODE_NAME") && err.to_string().contains("POD_NAME"),
        "{err}"
    );
}

#[tokio::test]
async fn setup_errors_say_what_was_tried() {
    let fx = Fixture::new();
    let mut bad_prefix = fx.options();
    bad_prefix.annotation_prefix = "org.COM".into();
    let err = KubeSubnetManager::new(bad_prefix, env("n")).await.err().unwrap();
    assert!(
        err.to_string().contains("--kube-annotation-prefix \"org.COM\""),
        "{err}"
    );

    let mut no_file = fx.options();
    no_file.net_config_path = PathBuf::from("/nonexistent/net-conf.json");
    let err = KubeSubnetManager::new(no_file, env("n")).await.err().unwrap();
    assert!(
        err.to_string().contains("/nonexistent/net-conf.json")
            && err.to_string().contains("--net-config-path"),
        "{err}"
    );

    let bad_json = fx.dir.path().join("bad.json");
    std::fs::write(
        &bad_json,
        r#"{"Network": "198.18.0.0/16", "Backend": {"Type": "nope"}}"#,
    )
    .unwrap();
    let mut bad_conf = fx.options();
    bad_conf.net_config_path = bad_json.clone();
    let err = KubeSubnetManager::new(bad_conf, env("n")).await.err().unwrap();
    assert!(
        err.to_string().contains(&bad_json.display().to_string()) && err.to_string().contains("nope"),
        "{err}"
    );

    // Kube mode does no CheckNetworkConfig: no Network and a tiny SubnetLen still parse.
    let loose = fx.dir.path().join("loose.json");
    std::fs::write(&loose, r#"{"SubnetLen": 30, "Backend": {"Type": "host-gw"}}"#).unwrap();
    let mut loose_conf = fx.options();
    loose_conf.net_config_path = loose;
    assert!(KubeSubnetManager::new(loose_conf, env("n")).await.is_ok());

    let env_depth = KubeEnv {
        event_queue_depth: Some("lots".into()),
        ..env("n")
    };
    let err = KubeSubnetManager::new(fx.options(), env_depth)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("EVENT_QUEUE_DEPTH=\"lots\""), "{err}");
    let accepted = KubeEnv {
        event_queue_depth: Some("10".into()),
        cont_when_cache_not_ready: Some("true".into()),
        ..env("n")
    };
    assert!(KubeSubnetManager::new(fx.options(), accepted).await.is_ok());

    let mut bad_url = fx.options();
    bad_url.api_url = Some("not a url".into());
    let err = KubeSubnetManager::new(bad_url, env("n")).await.err().unwrap();
    assert!(err.to_string().contains("--kube-api-url \"not a url\""), "{err}");

    let mut no_kubeconfig = fx.options();
    no_kubeconfig.kubeconfig_file = Some("/nonexistent/kubeconfig".into());
    let err = KubeSubnetManager::new(no_kubeconfig, env("n"))
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("--kubeconfig-file /nonexistent/kubeconfig"),
        "{err}"
    );

    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
        let mut in_cluster = fx.options();
        in_cluster.api_url = None;
        let err = KubeSubnetManager::new(in_cluster, env("n")).await.err().unwrap();
        let text = err.to_string();
        assert!(
            text.contains("--kubeconfig-file")
                && text.contains("--kube-api-url")
                && text.contains("in-cluster"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn kubeconfig_file_with_and_without_api_url_override() {
    let fx = Fixture::new();
    fx.api.add_node("flannel1", &["198.18.1.0/24"]);
    let write = |server: &str| {
        let path = fx.dir.path().join(format!("kubeconfig-{}", server.len()));
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: flannel\n\
             current-context: test\nusers:\n- name: flannel\n  user:\n    token: secret-token\n"
        );
        std::fs::write(&path, yaml).unwrap();
        path
    };
    let mut options = fx.options();
    options.api_url = None;
    options.kubeconfig_file = Some(write(&fx.api.url));
    let m = KubeSubnetManager::new(options, env("flannel1")).await.unwrap();
    m.acquire_lease(&conf(), &vxlan_attrs("192.0.2.1")).await.unwrap();

    // --kube-api-url replaces the kubeconfig's server.
    let mut options = fx.options();
    options.kubeconfig_file = Some(write("http://192.0.2.254:1"));
    let m = KubeSubnetManager::new(options, env("flannel1")).await.unwrap();
    assert_eq!(m.stored_public_ips().await.unwrap(), (None, None));
}

#[tokio::test]
async fn annotation_prefix_is_used_everywhere() {
    let fx = Fixture::new();
    fx.api.add_node("flannel1", &["198.18.1.0/24"]);
    let mut options = fx.options();
    options.annotation_prefix = "example.com/net".into();
    let m = KubeSubnetManager::new(options, env("flannel1")).await.unwrap();
    m.acquire_lease(&conf(), &vxlan_attrs("192.0.2.1")).await.unwrap();
    let keys: Vec<String> = fx.api.annotations("flannel1").into_keys().collect();
    assert_eq!(
        keys,
        [
            "example.com/net-backend-data",
            "example.com/net-backend-type",
            "example.com/net-kube-subnet-manager",
            "example.com/net-public-ip"
        ]
    );
}
