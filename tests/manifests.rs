//! The shipped manifests (spec 12, 6.6 RBAC, 11.2 probes): kube-flannel.yml deserializes into
//! Kubernetes objects with no field lost and keeps upstream's names, keys, mounts, probes and
//! arguments. The host-install files (systemd unit, env example, net-conf.json) are in `host`.

#[path = "manifests/host.rs"]
mod host;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use k8s_openapi::Resource;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, PodSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use flanneld::cli::{self, CliOutcome};
use flanneld::netconf::NetConf;

const IMAGE: &str = "ghcr.io/flanneld-rs/flanneld";
const CNI_PLUGIN_IMAGE: &str = "ghcr.io/flannel-io/flannel-cni-plugin:v1.9.1-flannel3";

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every document of the manifest as JSON, in file order.
fn documents() -> Vec<serde_json::Value> {
    let text = read("manifests/kube-flannel.yml");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            let value = serde_yaml_ng::Value::deserialize(doc).expect("a YAML document");
            serde_json::to_value(value).expect("YAML that maps to JSON")
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The single document of `T`'s kind, deserialized; also checks that serializing it back gives the
/// document unchanged, so a misspelt or misplaced field (which deserialization would skip) fails.
fn object<T: Resource + DeserializeOwned + Serialize>() -> T {
    let docs: Vec<_> = documents()
        .into_iter()
        .filter(|doc| doc["kind"] == T::KIND)
        .collect();
    assert_eq!(docs.len(), 1, "exactly one {} in the manifest", T::KIND);
    let doc = docs.into_iter().next().expect("one document");
    assert_eq!(doc["apiVersion"], T::API_VERSION, "{}", T::KIND);
    let typed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{}: {e}", T::KIND));
    let back = serde_json::to_value(&typed).expect("serializable");
    assert_eq!(back, doc, "{} lost or changed fields in a round trip", T::KIND);
    typed
}

#[test]
fn every_document_is_a_known_kubernetes_object_that_round_trips() {
    let kinds: Vec<String> = documents()
        .iter()
        .map(|doc| doc["kind"].as_str().expect("kind").to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet"
        ]
    );
    object::<Namespace>();
    object::<ServiceAccount>();
    object::<ClusterRole>();
    object::<ClusterRoleBinding>();
    object::<ConfigMap>();
    object::<DaemonSet>();
}

#[test]
fn namespace_and_service_account_keep_upstreams_names() {
    let ns = object::<Namespace>();
    assert_eq!(ns.metadata.name.as_deref(), Some("kube-flannel"));
    let labels = ns.metadata.labels.expect("labels");
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "privileged");
    let sa = object::<ServiceAccount>();
    assert_eq!(sa.metadata.name.as_deref(), Some("flannel"));
    assert_eq!(sa.metadata.namespace.as_deref(), Some("kube-flannel"));
}

#[test]
fn rbac_grants_only_node_reads_and_status_patches() {
    let role = object::<ClusterRole>();
    assert_eq!(role.metadata.name.as_deref(), Some("flannel"));
    let mut grants: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for rule in role.rules.expect("rules") {
        assert_eq!(
            rule.api_groups.as_deref(),
            Some(&[String::new()][..]),
            "core group only"
        );
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for resource in rule.resources.expect("resources") {
            grants
                .entry(resource)
                .or_default()
                .extend(rule.verbs.iter().cloned());
        }
    }
    let want: BTreeMap<String, BTreeSet<String>> = [
        ("nodes", &["get", "list", "watch"][..]),
        ("nodes/status", &["patch"]),
    ]
    .into_iter()
    .map(|(r, verbs)| (r.to_string(), verbs.iter().map(|v| v.to_string()).collect()))
    .collect();
    // Upstream also grants `pods: get`, needed only when NODE_NAME is unset (see the DaemonSet).
    assert_eq!(grants, want);

    let binding = object::<ClusterRoleBinding>();
    assert_eq!(binding.metadata.name.as_deref(), Some("flannel"));
    assert_eq!(
        (binding.role_ref.kind.as_str(), binding.role_ref.name.as_str()),
        ("ClusterRole", "flannel")
    );
    let subjects = binding.subjects.expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (
            subjects[0].kind.as_str(),
            subjects[0].name.as_str(),
            subjects[0].namespace.as_deref()
        ),
        ("ServiceAccount", "flannel", Some("kube-flannel"))
    );
}

#[test]
fn config_map_keeps_upstreams_keys_and_contents() {
    let cm = object::<ConfigMap>();
    assert_eq!(cm.metadata.name.as_deref(), Some("kube-flannel-cfg"));
    assert_eq!(cm.metadata.namespace.as_deref(), Some("kube-flannel"));
    let data = cm.data.expect("data");
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["cni-conf.json", "net-conf.json"]
    );

    let cni: serde_json::Value = serde_json::from_str(&data["cni-conf.json"]).expect("cni-conf.json is JSON");
    assert_eq!(
        cni,
        serde_json::json!({
            "name": "cbr0",
            "cniVersion": "0.3.1",
            "plugins": [
                {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        })
    );
    let net: serde_json::Value = serde_json::from_str(&data["net-conf.json"]).expect("net-conf.json is JSON");
    assert_eq!(
        net,
        serde_json::json!({"Network": "10.244.0.0/16", "EnableNFTables": false, "Backend": {"Type": "vxlan"}})
    );
    // Kube mode parses it without the etcd-mode checks (spec 6.1); it must pass those too.
    let conf = NetConf::parse_and_check(&data["net-conf.json"]).expect("a valid network config");
    assert_eq!(conf.backend_type, "vxlan");
}

fn pod_spec() -> PodSpec {
    let ds = object::<DaemonSet>();
    assert_eq!(ds.metadata.name.as_deref(), Some("kube-flannel-ds"));
    assert_eq!(ds.metadata.namespace.as_deref(), Some("kube-flannel"));
    let spec = ds.spec.expect("spec");
    let selector = spec.selector.match_labels.expect("matchLabels");
    let template_labels = spec
        .template
        .metadata
        .expect("template metadata")
        .labels
        .expect("labels");
    for (key, value) in &selector {
        assert_eq!(
            template_labels.get(key),
            Some(value),
            "selector {key} matches the template"
        );
    }
    assert_eq!(template_labels["app"], "flannel");
    assert_eq!(template_labels["tier"], "node");
    spec.template.spec.expect("pod spec")
}

fn env_of(container: &Container) -> BTreeMap<String, String> {
    container
        .env
        .iter()
        .flatten()
        .map(|var| {
            let value = match (&var.value, &var.value_from) {
                (Some(value), None) => value.clone(),
                (None, Some(from)) => {
                    format!(
                        "fieldRef:{}",
                        from.field_ref.as_ref().expect("fieldRef").field_path
                    )
                }
                other => panic!("env {}: {other:?}", var.name),
            };
            (var.name.clone(), value)
        })
        .collect()
}

fn mounts_of(container: &Container) -> Vec<(String, String)> {
    container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.clone(), m.mount_path.clone()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn daemonset_pod_keeps_upstreams_scheduling_and_volumes() {
    let pod = pod_spec();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("flannel"));
    assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"));
    let tolerations = pod.tolerations.expect("tolerations");
    assert_eq!(tolerations.len(), 1);
    assert_eq!(
        (
            tolerations[0].operator.as_deref(),
            tolerations[0].effect.as_deref()
        ),
        (Some("Exists"), Some("NoSchedule"))
    );
    let volumes: Vec<(String, String)> = pod
        .volumes
        .expect("volumes")
        .into_iter()
        .map(|v| {
            let source = match (&v.host_path, &v.config_map) {
                (Some(host), None) => {
                    format!("hostPath:{}:{}", host.path, host.type_.as_deref().unwrap_or(""))
                }
                (None, Some(cm)) => format!("configMap:{}", cm.name),
                other => panic!("volume {}: {other:?}", v.name),
            };
            (v.name, source)
        })
        .collect();
    assert_eq!(
        volumes,
        pairs(&[
            ("run", "hostPath:/run/flannel:"),
            ("cni-plugin", "hostPath:/opt/cni/bin:"),
            ("cni", "hostPath:/etc/cni/net.d:"),
            ("flannel-cfg", "configMap:kube-flannel-cfg"),
            ("xtables-lock", "hostPath:/run/xtables.lock:FileOrCreate"),
        ])
    );
}

#[test]
fn init_containers_install_the_plugin_as_upstream_and_the_config_with_install_conf() {
    let pod = pod_spec();
    let init = pod.init_containers.expect("init containers");
    let names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["install-cni-plugin", "install-cni"]);

    let plugin = &init[0];
    assert_eq!(plugin.image.as_deref(), Some(CNI_PLUGIN_IMAGE));
    assert_eq!(plugin.command.as_deref(), Some(&["cp".to_string()][..]));
    assert_eq!(
        plugin.args.as_deref(),
        Some(&["-f".to_string(), "/flannel".into(), "/opt/cni/bin/flannel".into()][..])
    );
    assert_eq!(mounts_of(plugin), pairs(&[("cni-plugin", "/opt/cni/bin")]));

    let conf = &init[1];
    assert_eq!(conf.image.as_deref(), Some(our_image().as_str()));
    assert_eq!(
        conf.command.as_deref(),
        Some(&["/opt/bin/install-conf".to_string()][..])
    );
    assert_eq!(
        conf.args.as_deref(),
        Some(
            &[
                "/etc/kube-flannel/cni-conf.json".to_string(),
                "/etc/cni/net.d/10-flannel.conflist".into()
            ][..]
        )
    );
    assert_eq!(
        mounts_of(conf),
        pairs(&[("cni", "/etc/cni/net.d"), ("flannel-cfg", "/etc/kube-flannel/")])
    );
}

/// The flanneld image, tagged with this crate's version.
fn our_image() -> String {
    format!("{IMAGE}:v{}", env!("CARGO_PKG_VERSION"))
}

#[test]
fn flanneld_container_keeps_upstreams_args_env_mounts_and_capabilities() {
    let pod = pod_spec();
    let containers = pod.containers;
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c.name, "kube-flannel");
    assert_eq!(c.image.as_deref(), Some(our_image().as_str()));
    assert_eq!(c.command.as_deref(), Some(&["/opt/bin/flanneld".to_string()][..]));
    let args = c.args.clone().expect("args");
    assert_eq!(args, ["--ip-masq", "--kube-subnet-mgr", "--healthz-port=8081"]);

    // The arguments mean to our parser what they mean to upstream's.
    match cli::parse(&args, &|_| None) {
        Ok(CliOutcome::Run { flags, env_warnings }) => {
            assert!(env_warnings.is_empty());
            assert!(flags.ip_masq && flags.kube_subnet_mgr);
            assert_eq!(flags.healthz_port, 8081);
            assert_eq!(flags.net_config_path, "/etc/kube-flannel/net-conf.json");
            assert_eq!(flags.subnet_file, "/run/flannel/subnet.env");
        }
        other => panic!("args {args:?}: {other:?}"),
    }

    let env = env_of(c);
    let want: BTreeMap<String, String> = [
        ("NODE_NAME", "fieldRef:spec.nodeName"),
        ("POD_NAME", "fieldRef:metadata.name"),
        ("POD_NAMESPACE", "fieldRef:metadata.namespace"),
        ("EVENT_QUEUE_DEPTH", "5000"),
        ("CONT_WHEN_CACHE_NOT_READY", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(env, want);

    assert_eq!(
        mounts_of(c),
        pairs(&[
            ("run", "/run/flannel"),
            ("flannel-cfg", "/etc/kube-flannel/"),
            ("xtables-lock", "/run/xtables.lock"),
        ])
    );
    let security = c.security_context.clone().expect("securityContext");
    assert_eq!(security.privileged, Some(false));
    let caps = security.capabilities.expect("capabilities").add.expect("add");
    assert_eq!(caps, ["NET_ADMIN", "NET_RAW"]);

    let resources = c.resources.clone().expect("resources");
    assert!(
        resources.limits.is_none(),
        "no limits: they OOM-kill flanneld on big clusters"
    );
    let requests = resources.requests.expect("requests");
    assert_eq!(requests["cpu"].0, "100m");
    assert_eq!(requests["memory"].0, "50Mi");
}

#[test]
fn probes_use_the_healthz_port_as_upstream() {
    let pod = pod_spec();
    let c = &pod.containers[0];
    let ports = c.ports.clone().expect("ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(
        (
            ports[0].container_port,
            ports[0].name.as_deref(),
            ports[0].protocol.as_deref()
        ),
        (8081, Some("healthz"), Some("TCP"))
    );
    let check = |probe: Option<&k8s_openapi::api::core::v1::Probe>, path: &str, delay: i32, period: i32| {
        let probe = probe.expect("probe");
        let get = probe.http_get.as_ref().expect("httpGet");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::String("healthz".into()));
        assert_eq!(probe.initial_delay_seconds, Some(delay));
        assert_eq!(probe.period_seconds, Some(period));
    };
    check(c.liveness_probe.as_ref(), "/healthz", 10, 30);
    check(c.readiness_probe.as_ref(), "/readyz", 5, 10);
}
