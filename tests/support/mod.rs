//! Shared test fixtures: network namespaces, a real etcd, the multi-node testbed.
#![allow(dead_code)]
pub mod apiserver;
pub mod etcd;
pub mod netns;
pub mod testbed;
pub mod testbed_v6;
pub mod udp_peer;
pub mod wggo;

/// Skip a test whose prerequisite is missing (root, a binary, a kernel feature), saying why.
///
/// The line `SKIPPED <test>: <reason>` goes to stderr and, when `FLANNEL_TEST_SKIP_LOG` names a
/// file (`make test` sets it), is appended there so `make test` can list every skip at the end.
/// Under `FLANNEL_TEST_STRICT=1` (set by `.ci/run`) a skip is a failure: this panics instead.
/// Call it and return: `if !ready { return support::skip("my_test", "why"); }`.
pub fn skip(test: &str, reason: &str) {
    if std::env::var("FLANNEL_TEST_STRICT").as_deref() == Ok("1") {
        panic!("{test}: a prerequisite is missing and FLANNEL_TEST_STRICT=1 forbids skipping: {reason}");
    }
    let line = format!("SKIPPED {test}: {reason}");
    eprintln!("{line}");
    if let Ok(path) = std::env::var("FLANNEL_TEST_SKIP_LOG") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// The name of the running test (cargo's test harness names each test's thread after it).
pub fn current_test() -> String {
    std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("a test")
        .to_string()
}

/// Whether the test process runs as root (network namespaces need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
