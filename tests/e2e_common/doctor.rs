//! `flanneld doctor` run inside a testbed node with that node's own flags.

use crate::support::testbed::{ETCD_IP, Testbed};

/// Runs `flanneld doctor` in node `i` with the node's own flags (etcd, subnet file, the test's
/// extra daemon arguments) plus `extra`; returns the exit status and stdout+stderr.
pub fn doctor(tb: &Testbed, i: usize, extra: &[&str]) -> (i32, String) {
    doctor_with_env(tb, i, extra, &[])
}

/// `doctor` with extra environment variables (e.g. NODE_NAME in kube mode).
pub fn doctor_with_env(tb: &Testbed, i: usize, extra: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let node = &tb.nodes[i];
    let mut argv: Vec<String> = vec![
        env!("CARGO_BIN_EXE_flanneld").into(),
        "doctor".into(),
        format!("--etcd-endpoints=http://{ETCD_IP}:2379"),
        format!("--subnet-file={}", node.subnet_file().display()),
    ];
    argv.extend(node.args.iter().cloned());
    argv.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = node
        .ns
        .spawn_cmd(&refs)
        .envs(env.iter().copied())
        .output()
        .expect("running flanneld doctor");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}
