//! A small Kubernetes API server for tests: real HTTP/1.1 (plain http) speaking the API's JSON for
//! what flanneld uses (spec 6.6 RBAC): nodes list, watch (with resourceVersion, bookmarks ignored,
//! timeoutSeconds honoured, an expired version answered with a 410 ERROR event), get, strategic
//! merge and JSON merge PATCH on nodes and nodes/status (conditions merged by type; the status
//! subresource keeps spec, the main resource keeps status), and pods get. The real `kube` client
//! in the daemon talks to it.
//!
//! Tests drive it directly (add, annotate, delete nodes; expire watches; fail requests) and read
//! the recorded requests. It runs on its own thread and runtime; drop stops it.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

/// One request as received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: String,
}

#[derive(Default)]
struct State {
    rv: u64,
    nodes: BTreeMap<String, Value>,
    pods: BTreeMap<(String, String), Value>,
    /// (resource version, event type, object) of every node change since `compacted`.
    history: Vec<(u64, &'static str, Value)>,
    /// Watches from a version below this get 410.
    compacted: u64,
    /// Bumped by `expire_watches`: open watches end with 410.
    expiry: u64,
    requests: Vec<RecordedRequest>,
    /// Statuses for the next non-watch requests.
    failures: VecDeque<u16>,
}

impl State {
    fn record(&mut self, kind: &'static str, object: Value) {
        self.history.push((self.rv, kind, object));
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Store a node (new or changed) and record the event; an unchanged node keeps its version.
    fn store_node(&mut self, mut node: Value) -> Value {
        let name = node["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let old = self.nodes.get(&name).cloned();
        if let Some(old) = &old {
            let mut same = node.clone();
            same["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
            if same == *old {
                return old.clone();
            }
        }
        let rv = self.next_rv();
        node["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.nodes.insert(name, node.clone());
        self.record(if old.is_some() { "MODIFIED" } else { "ADDED" }, node.clone());
        node
    }
}

struct Shared {
    state: Mutex<State>,
    /// Bumped on every change; watches wait on it.
    generation: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn changed(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

pub struct ApiServer {
    pub url: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

impl ApiServer {
    /// On 127.0.0.1, a free port.
    pub fn start() -> ApiServer {
        ApiServer::start_on(std::net::TcpListener::bind("127.0.0.1:0").expect("binding the test API server"))
    }

    /// On a listener bound by the caller (e.g. inside a network namespace with `Netns::run`).
    pub fn start_on(listener: std::net::TcpListener) -> ApiServer {
        let addr = listener.local_addr().expect("listener address");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let (generation, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            generation,
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server_shared = shared.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("test API server runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let accept = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let shared = server_shared.clone();
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |req| handle(req, shared.clone()));
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await;
                        });
                    }
                };
                tokio::select! { _ = accept => {}, _ = stopped => {} }
            });
        });
        ApiServer {
            url: format!("http://{addr}"),
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Add (or replace) a node with these pod CIDRs (`spec.podCIDR` is the first).
    pub fn add_node(&self, name: &str, pod_cidrs: &[&str]) -> Value {
        let mut spec = json!({});
        if let Some(first) = pod_cidrs.first() {
            spec = json!({ "podCIDR": first, "podCIDRs": pod_cidrs });
        }
        self.put_node(json!({
            "kind": "Node",
            "apiVersion": "v1",
            "metadata": { "name": name, "uid": format!("uid-{name}"), "annotations": {} },
            "spec": spec,
            "status": { "conditions": [
                { "type": "Ready", "status": "True", "reason": "KubeletReady" },
                { "type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated" },
            ] },
        }))
    }

    /// Store a node object as given (name from metadata.name).
    pub fn put_node(&self, node: Value) -> Value {
        let stored = self.shared.state().store_node(node);
        self.shared.changed();
        stored
    }

    pub fn node(&self, name: &str) -> Option<Value> {
        self.shared.state().nodes.get(name).cloned()
    }

    pub fn annotations(&self, name: &str) -> BTreeMap<String, String> {
        let node = self.node(name).unwrap_or(Value::Null);
        serde_json::from_value(node["metadata"]["annotations"].clone()).unwrap_or_default()
    }

    /// Set (`Some`) or remove (`None`) an annotation, as `kubectl annotate` does.
    pub fn annotate(&self, name: &str, key: &str, value: Option<&str>) {
        self.annotate_many(name, &[(key, value)]);
    }

    /// Several annotation changes in one update of the node (one watch event).
    pub fn annotate_many(&self, name: &str, changes: &[(&str, Option<&str>)]) {
        let mut node = self.node(name).unwrap_or_else(|| panic!("no node {name}"));
        for (key, value) in changes {
            match value {
                Some(v) => node["metadata"]["annotations"][*key] = json!(v),
                None => {
                    if let Some(map) = node["metadata"]["annotations"].as_object_mut() {
                        map.remove(*key);
                    }
                }
            }
        }
        self.put_node(node);
    }

    pub fn delete_node(&self, name: &str) {
        let mut state = self.shared.state();
        if let Some(mut node) = state.nodes.remove(name) {
            let rv = state.next_rv();
            node["metadata"]["resourceVersion"] = json!(rv.to_string());
            state.record("DELETED", node);
        }
        drop(state);
        self.shared.changed();
    }

    pub fn add_pod(&self, namespace: &str, name: &str, node_name: Option<&str>) {
        let mut state = self.shared.state();
        let rv = state.next_rv();
        let pod = json!({
            "kind": "Pod", "apiVersion": "v1",
            "metadata": { "name": name, "namespace": namespace, "resourceVersion": rv.to_string() },
            "spec": { "containers": [{ "name": "flannel" }], "nodeName": node_name },
        });
        state.pods.insert((namespace.to_string(), name.to_string()), pod);
    }

    /// Forget the change history and end every open watch with 410 Gone: clients must list again.
    pub fn expire_watches(&self) {
        let mut state = self.shared.state();
        state.history.clear();
        state.compacted = state.rv + 1;
        state.expiry += 1;
        drop(state);
        self.shared.changed();
    }

    /// Answer the next `count` non-watch requests with `status` (and a Status body).
    pub fn fail_next(&self, count: usize, status: u16) {
        self.shared
            .state()
            .failures
            .extend(std::iter::repeat_n(status, count));
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.state().requests.clone()
    }

    /// PATCH requests to `path` so far.
    pub fn patches(&self, path: &str) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "PATCH" && r.path == path)
            .collect()
    }

    /// Polls `check` on the node until it holds; panics with the node when it does not in time.
    pub fn wait_node(&self, name: &str, timeout: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let node = self.node(name).unwrap_or(Value::Null);
            if check(&node) {
                return node;
            }
            assert!(
                Instant::now() < deadline,
                "node {name} did not reach the expected state: {node:#}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn full(status: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed_unsync())
        .expect("response")
}

fn status(code: u16, reason: &str, message: String) -> Response<Body> {
    full(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code }),
    )
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body = String::from_utf8_lossy(&body).into_owned();
    let watching = query_param(&query, "watch") == Some("true");
    {
        let mut state = shared.state();
        state.requests.push(RecordedRequest {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            content_type: content_type.clone(),
            body: body.clone(),
        });
        if !watching && let Some(code) = state.failures.pop_front() {
            return Ok(status(code, "InternalError", format!("injected failure {code}")));
        }
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let response = match (&method, parts.as_slice()) {
        (&Method::GET, ["api", "v1", "nodes"]) if watching => watch(&shared, &query),
        (&Method::GET, ["api", "v1", "nodes"]) => {
            let state = shared.state();
            full(
                StatusCode::OK,
                json!({ "kind": "NodeList", "apiVersion": "v1",
                        "metadata": { "resourceVersion": state.rv.to_string() },
                        "items": state.nodes.values().collect::<Vec<_>>() }),
            )
        }
        (&Method::GET, ["api", "v1", "nodes", name]) => match shared.state().nodes.get(*name) {
            Some(node) => full(StatusCode::OK, node.clone()),
            None => status(404, "NotFound", format!("nodes \"{name}\" not found")),
        },
        (&Method::PATCH, ["api", "v1", "nodes", name, rest @ ..])
            if rest.is_empty() || rest == ["status"] =>
        {
            patch_node(&shared, name, rest == ["status"], &content_type, &body)
        }
        (&Method::GET, ["api", "v1", "namespaces", ns, "pods", name]) => {
            match shared.state().pods.get(&(ns.to_string(), name.to_string())) {
                Some(pod) => full(StatusCode::OK, pod.clone()),
                None => status(404, "NotFound", format!("pods \"{name}\" not found")),
            }
        }
        _ => status(
            404,
            "NotFound",
            format!("the server could not find the requested resource {method} {path}"),
        ),
    };
    Ok(response)
}

fn patch_node(
    shared: &Shared,
    name: &str,
    status_subresource: bool,
    content_type: &str,
    body: &str,
) -> Response<Body> {
    let strategic = match content_type {
        "application/strategic-merge-patch+json" => true,
        "application/merge-patch+json" => false,
        other => {
            return status(
                415,
                "UnsupportedMediaType",
                format!("the body of the request was in an unknown format: {other}"),
            );
        }
    };
    let Ok(patch) = serde_json::from_str::<Value>(body) else {
        return status(400, "BadRequest", format!("the patch is not JSON: {body}"));
    };
    let mut state = shared.state();
    let Some(old) = state.nodes.get(name).cloned() else {
        return status(404, "NotFound", format!("nodes \"{name}\" not found"));
    };
    let mut merged = old.clone();
    merge(&mut merged, &patch, "", strategic);
    // The status subresource changes metadata and status only; the main resource keeps status.
    let mut new = old.clone();
    new["metadata"] = merged["metadata"].clone();
    new["metadata"]["name"] = json!(name);
    if status_subresource {
        new["status"] = merged["status"].clone();
    } else {
        new["spec"] = merged["spec"].clone();
    }
    let stored = state.store_node(new);
    drop(state);
    shared.changed();
    full(StatusCode::OK, stored)
}

/// JSON merge patch (RFC 7386); `strategic` also merges the list `status.conditions` by `type`.
fn merge(target: &mut Value, patch: &Value, path: &str, strategic: bool) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (key, value) in fields {
        let child = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        let Some(object) = target.as_object_mut() else {
            return;
        };
        if value.is_null() {
            object.remove(key);
        } else if strategic && child == "status.conditions" && value.is_array() {
            let list = object.entry(key.clone()).or_insert_with(|| json!([]));
            if !list.is_array() {
                *list = json!([]);
            }
            for item in value.as_array().into_iter().flatten() {
                let items = list.as_array_mut().expect("checked above");
                match items.iter_mut().find(|i| i["type"] == item["type"]) {
                    Some(existing) => merge(existing, item, &child, strategic),
                    None => items.push(item.clone()),
                }
            }
        } else {
            merge(
                object.entry(key.clone()).or_insert(Value::Null),
                value,
                &child,
                strategic,
            );
        }
    }
}

fn watch(shared: &Arc<Shared>, query: &str) -> Response<Body> {
    let from: u64 = query_param(query, "resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = query_param(query, "timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1800u64);
    let (tx, rx) = tokio::sync::mpsc::channel::<Value>(64);
    let shared = shared.clone();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut generation = shared.generation.subscribe();
        let (mut cursor, expiry, initial) = {
            let state = shared.state();
            // Version 0 means "any": start with the current nodes as ADDED.
            let initial: Vec<Value> = if from == 0 {
                state.nodes.values().cloned().collect()
            } else {
                vec![]
            };
            (if from == 0 { state.rv } else { from }, state.expiry, initial)
        };
        for node in initial {
            if tx.send(json!({ "type": "ADDED", "object": node })).await.is_err() {
                return;
            }
        }
        loop {
            let (events, gone) = {
                let state = shared.state();
                let gone = cursor + 1 < state.compacted || state.expiry != expiry;
                let events: Vec<(u64, &'static str, Value)> = state
                    .history
                    .iter()
                    .filter(|(rv, _, _)| *rv > cursor)
                    .cloned()
                    .collect();
                (events, gone)
            };
            if gone {
                let expired = json!({ "type": "ERROR", "object": {
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("too old resource version: {cursor}"), "reason": "Expired", "code": 410 } });
                let _ = tx.send(expired).await;
                return;
            }
            for (rv, kind, object) in events {
                cursor = rv;
                if tx.send(json!({ "type": kind, "object": object })).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
                changed = generation.changed() => if changed.is_err() { return },
            }
        }
    });
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        Some((
            Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{event}\n")))),
            rx,
        ))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed_unsync(StreamBody::new(frames.boxed())))
        .expect("watch response")
}
