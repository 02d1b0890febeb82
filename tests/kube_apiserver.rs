//! Self-checks of the test Kubernetes API server (tests/support/apiserver.rs) with plain `curl`,
//! for the parts the daemon does not exercise: JSON merge patch on the node itself, the split
//! between the main resource and the status subresource, unsupported patch types, and watches
//! from an expired resource version.

mod support;

use std::process::Command;

use serde_json::{Value, json};
use support::apiserver::ApiServer;

fn curl(args: &[&str]) -> Option<(u16, String)> {
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_string()))
}

fn patch(api: &ApiServer, path: &str, content_type: &str, body: &Value) -> (u16, Value) {
    let url = format!("{}{path}", api.url);
    let header = format!("Content-Type: {content_type}");
    let data = body.to_string();
    let (code, text) = curl(&["-X", "PATCH", "-H", &header, "--data", &data, &url]).expect("curl runs");
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn have_curl() -> bool {
    let ok = Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        support::skip(
            &support::current_test(),
            "the `curl` command is missing (install curl)",
        );
    }
    ok
}

#[test]
fn merge_patches_respect_the_status_subresource() {
    if !have_curl() {
        return;
    }
    let api = ApiServer::start();
    api.add_node("n1", &["198.18.1.0/24"]);
    // Main resource: metadata and spec change, status does not.
    let (code, node) = patch(
        &api,
        "/api/v1/nodes/n1",
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {"a": "b"}}, "spec": {"unschedulable": true}, "status": {"conditions": []}}),
    );
    assert_eq!(code, 200, "{node}");
    assert_eq!(node["metadata"]["labels"]["a"], "b");
    assert_eq!(node["spec"]["unschedulable"], true);
    assert_eq!(node["status"]["conditions"].as_array().map(Vec::len), Some(2));
    // Status subresource, strategic merge: conditions merged by type, spec untouched.
    let (code, node) = patch(
        &api,
        "/api/v1/nodes/n1/status",
        "application/strategic-merge-patch+json",
        &json!({"spec": {"podCIDR": "10.0.0.0/8"},
                "status": {"conditions": [{"type": "NetworkUnavailable", "status": "False"},
                                          {"type": "MemoryPressure", "status": "False"}]}}),
    );
    assert_eq!(code, 200, "{node}");
    assert_eq!(node["spec"]["podCIDR"], "198.18.1.0/24");
    let conditions: Vec<(String, String)> = node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        conditions,
        [
            ("Ready".to_string(), "True".to_string()),
            ("NetworkUnavailable".into(), "False".into()),
            ("MemoryPressure".into(), "False".into())
        ]
    );
    // Merge patch replaces lists; null removes keys.
    let (_, node) = patch(
        &api,
        "/api/v1/nodes/n1/status",
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {"a": null}}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
    );
    assert_eq!(node["metadata"]["labels"], json!({}));
    assert_eq!(
        node["status"]["conditions"],
        json!([{"type": "Ready", "status": "False"}])
    );

    let (code, status) = patch(
        &api,
        "/api/v1/nodes/n1",
        "application/json-patch+json",
        &json!([]),
    );
    assert_eq!((code, status["code"].clone()), (415, json!(415)));
    let (code, status) = patch(
        &api,
        "/api/v1/nodes/nope/status",
        "application/merge-patch+json",
        &json!({}),
    );
    assert_eq!((code, status["reason"].clone()), (404, json!("NotFound")));
}

#[test]
fn watch_replays_from_a_version_and_expires_old_ones() {
    if !have_curl() {
        return;
    }
    let api = ApiServer::start();
    api.add_node("n1", &["198.18.1.0/24"]);
    api.annotate("n1", "k", Some("v"));
    api.delete_node("n1");
    let url = format!(
        "{}/api/v1/nodes?watch=true&resourceVersion=1&timeoutSeconds=1",
        api.url
    );
    let (code, body) = curl(&[&url]).expect("curl runs");
    assert_eq!(code, 200);
    let kinds: Vec<String> = body
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kinds, ["MODIFIED", "DELETED"]);

    api.expire_watches();
    let (_, body) = curl(&[&url]).expect("curl runs");
    let event: Value = serde_json::from_str(body.lines().next().unwrap_or("null")).unwrap();
    assert_eq!(event["type"], "ERROR");
    assert_eq!(event["object"]["code"], 410);
    let list = format!("{}/api/v1/nodes", api.url);
    let (code, body) = curl(&[&list]).expect("curl runs");
    let listed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (code, listed["metadata"]["resourceVersion"].clone()),
        (200, json!("3"))
    );
}
