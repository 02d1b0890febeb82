//! `flanneld diag`, now an alias of `flanneld doctor` (issue 13), run inside a test network
//! namespace without a datastore or daemon: every error it shows makes it exit 1 (issue 12 item 8),
//! bad arguments exit 2, and the old `-subnet-file`/`-healthz` flags still work. The checks of a
//! real cluster are in doctor_e2e.rs.

mod support;

use support::netns::Netns;

fn run(ns: &Netns, word: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut argv = vec![env!("CARGO_BIN_EXE_flanneld"), word];
    argv.extend_from_slice(args);
    let out = ns.exec(&argv);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn diag_is_doctor_and_exits_1_on_every_error_it_shows() {
    if !support::is_root() {
        return support::skip("diag_is_doctor", "needs root for a network namespace");
    }
    let ns = Netns::new("diag");
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("subnet.env");
    let missing_conf = dir.path().join("net-conf.json");
    let common = [
        "-subnet-file",
        env_file.to_str().unwrap(),
        "--kube-subnet-mgr",
        "--net-config-path",
        missing_conf.to_str().unwrap(),
        "-healthz",
        "127.0.0.1:1",
    ];
    for word in ["diag", "doctor"] {
        let (code, text) = run(&ns, word, &common);
        assert_eq!(code, Some(1), "{word}: {text}");
        assert!(
            text.contains("reading the network config file") && text.contains("net-conf.json"),
            "{word} names the missing net-conf.json: {text}"
        );
        assert!(
            text.contains("flanneld does not answer on http://127.0.0.1:1/readyz"),
            "{word} names the unreachable daemon: {text}"
        );
        assert!(text.trim_end().ends_with("2 problems found"), "{text}");
    }
    let (code, text) = run(&ns, "doctor", &[&common[..], &["--json"]].concat());
    assert_eq!(code, Some(1), "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).expect("--json prints JSON");
    assert_eq!(json["ok"], false);
    assert_eq!(json["problems"], 2);
    assert_eq!(json["findings"][0]["check"], "datastore");

    let (code, text) = run(&ns, "diag", &["-nope"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("unknown flag -nope"), "{text}");
}
