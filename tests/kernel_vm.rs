//! The VM testbed's host side (`make test-vm`; also part of `make test`): the kernel features this
//! machine lacks (ipip, kernel WireGuard) are tested inside a QEMU VM with a Debian kernel.
//!
//! Builds every `tests/vm_*.rs` test binary (team convention: all their tests are
//! `#[ignore = "runs inside the VM testbed (make test-vm)"]`), hands them with the flanneld binary
//! to scripts/vm-testbed.sh (which installs QEMU and friends, fetches and caches the kernel, builds
//! and caches the initramfs, boots it with TCG), streams the VM's console, and fails when any
//! binary failed or the VM did not finish. Each scenario that ran is listed with its result.
//!
//! Skips (failing under FLANNEL_TEST_STRICT=1) when QEMU or the kernel cannot be had, or when
//! FLANNEL_SKIP_VM=1 asks for it.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TEST: &str = "kernel_scenarios_pass_in_the_vm";

/// The `vm_*` integration test targets in tests/.
fn vm_targets(manifest: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(manifest.join("tests"))
        .expect("listing tests/")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".rs")?;
            (stem.starts_with("vm_") && e.path().is_file()).then(|| stem.to_string())
        })
        .collect();
    names.sort();
    names
}

/// Builds the targets (`cargo test --no-run`) and returns each one's executable.
fn build(manifest: &Path, targets: &[String]) -> BTreeMap<String, PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(manifest)
        .args(["test", "--no-run", "--message-format=json"]);
    // What cargo sets for a running test must not reach the inner build: build scripts that watch
    // such variables (ring's watches CARGO_MANIFEST_DIR) would otherwise rebuild half the tree.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let set_for_tests = key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_EXE_")
            || matches!(
                key.as_str(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "LD_LIBRARY_PATH"
                    | "OUT_DIR"
            );
        if set_for_tests {
            cmd.env_remove(&key);
        }
    }
    for t in targets {
        cmd.args(["--test", t]);
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .expect("running cargo test --no-run");
    assert!(out.status.success(), "building the VM test binaries failed");
    let mut found = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(name), Some(exe)) = (msg["target"]["name"].as_str(), msg["executable"].as_str()) else {
            continue;
        };
        if targets.iter().any(|t| t == name) {
            found.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    for t in targets {
        assert!(found.contains_key(t), "cargo reported no executable for {t}");
    }
    found
}

/// One test binary's outcome, read from the console.
#[derive(Debug, Default)]
struct BinaryResult {
    rc: Option<i32>,
    /// (test name, "ok" / "FAILED" / ...)
    tests: Vec<(String, String)>,
    seconds: Option<f64>,
}

/// Parses the console log written by the VM's /init (markers in scripts/vm-testbed.sh).
fn parse_console(text: &str) -> (BTreeMap<String, BinaryResult>, bool) {
    let mut results: BTreeMap<String, BinaryResult> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut done = false;
    for raw in text.lines() {
        let line = raw.trim_end_matches('\r');
        if let Some(name) = line.strip_prefix("=== VMTEST BEGIN ") {
            current = Some(name.trim().to_string());
            results.entry(name.trim().to_string()).or_default();
        } else if let Some(rest) = line.strip_prefix("=== VMTEST END ") {
            let mut words = rest.split_whitespace();
            let name = words.next().unwrap_or_default().to_string();
            let field = |key: &str, words: &[&str]| {
                words.iter().find_map(|w| w.strip_prefix(key)).map(str::to_string)
            };
            let words: Vec<&str> = words.collect();
            let entry = results.entry(name).or_default();
            entry.rc = field("rc=", &words).and_then(|v| v.parse().ok());
            let start: Option<f64> = field("start=", &words).and_then(|v| v.parse().ok());
            let end: Option<f64> = field("end=", &words).and_then(|v| v.parse().ok());
            entry.seconds = start.zip(end).map(|(s, e)| e - s);
            current = None;
        } else if line.starts_with("=== VMTEST DONE") {
            done = true;
        } else if let Some(name) = &current
            && let Some(rest) = line.strip_prefix("test ")
            && let Some((test, outcome)) = rest.rsplit_once(" ... ")
            && !outcome.is_empty()
        {
            let outcome = outcome.split_whitespace().next().unwrap_or_default().to_string();
            if let Some(entry) = results.get_mut(name) {
                entry.tests.push((test.to_string(), outcome));
            }
        }
    }
    (results, done)
}

/// Copies what the VM printed since `pos` to our stdout, prefixed.
fn stream(log: &Path, pos: &mut u64) {
    let Ok(mut f) = std::fs::File::open(log) else {
        return;
    };
    if f.seek(std::io::SeekFrom::Start(*pos)).is_err() {
        return;
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return;
    }
    // Only whole lines; the rest is printed next time.
    let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
        return;
    };
    for line in BufReader::new(&buf[..=end]).lines().map_while(Result::ok) {
        println!("vm| {}", line.trim_end_matches('\r'));
    }
    *pos += (end + 1) as u64;
}

#[test]
fn kernel_scenarios_pass_in_the_vm() {
    if std::env::var("FLANNEL_SKIP_VM").as_deref() == Ok("1") {
        return support::skip(TEST, "FLANNEL_SKIP_VM=1");
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let targets = vm_targets(&manifest);
    assert!(!targets.is_empty(), "no tests/vm_*.rs");
    let started = Instant::now();
    let binaries = build(&manifest, &targets);
    let flanneld = PathBuf::from(env!("CARGO_BIN_EXE_flanneld"));
    let target_dir = flanneld
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.join("target"));
    let cache = target_dir.join("vm-cache");
    std::fs::create_dir_all(&cache).expect("creating the VM cache dir");
    let log = cache.join("console.log");
    let _ = std::fs::remove_file(&log);

    let mut cmd = Command::new("bash");
    cmd.arg(manifest.join("scripts/vm-testbed.sh"))
        .arg("--cache")
        .arg(&cache)
        .arg("--flanneld")
        .arg(&flanneld)
        .arg("--log")
        .arg(&log)
        // Inside the VM every prerequisite is there by construction: a skip is a failure.
        .args([
            "--env",
            "FLANNEL_TEST_STRICT=1",
            "--env",
            "VMTEST_ARGS=--show-output",
        ])
        .args(binaries.values())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("running scripts/vm-testbed.sh");
    let stderr = child.stderr.take().expect("stderr");
    // The script's own messages (and the reason for a missing prerequisite) pass through.
    let echo = std::thread::spawn(move || {
        let mut last = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            last = line;
        }
        last
    });
    let mut pos = 0;
    let status = loop {
        stream(&log, &mut pos);
        if let Some(status) = child.try_wait().expect("waiting for vm-testbed.sh") {
            break status;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    stream(&log, &mut pos);
    let last = echo.join().unwrap_or_default();
    if status.code() == Some(2) {
        return support::skip(TEST, &last);
    }
    assert!(status.success(), "vm-testbed.sh failed ({status}): {last}");

    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let (results, done) = parse_console(&text);
    println!(
        "== VM scenarios (wall time {:.0?} including build and boot) ==",
        started.elapsed()
    );
    let mut problems = Vec::new();
    for name in &targets {
        let Some(r) = results.get(name) else {
            problems.push(format!("{name}: never started in the VM"));
            continue;
        };
        for (test, outcome) in &r.tests {
            println!("  {name}::{test} ... {outcome}");
        }
        let secs = r.seconds.map(|s| format!(" in {s:.1} s")).unwrap_or_default();
        match r.rc {
            Some(0) if !r.tests.is_empty() => {
                println!("  {name}: {} scenario(s) passed{secs}", r.tests.len())
            }
            Some(0) => problems.push(format!("{name}: ran no scenario (are its tests #[ignore]d?)")),
            Some(rc) => problems.push(format!("{name}: exited with status {rc}{secs}")),
            None => problems.push(format!("{name}: did not finish (the VM died or timed out)")),
        }
        problems.extend(
            r.tests
                .iter()
                .filter(|(_, o)| o != "ok")
                .map(|(t, o)| format!("{name}::{t}: {o}")),
        );
    }
    if !done {
        problems.push("the VM did not reach the end of its test list".into());
    }
    assert!(
        problems.is_empty(),
        "VM scenarios failed:\n  {}\n(console log: {})",
        problems.join("\n  "),
        log.display()
    );
}

#[test]
fn console_markers_are_parsed_per_binary() {
    let text = "noise\n=== VMTEST BEGIN vm_a\nrunning 2 tests\ntest one ... ok\ntest two ... FAILED\n\
                test result: FAILED.\n=== VMTEST END vm_a rc=101 start=5.0 end=17.5\n\
                === VMTEST BEGIN vm_b\ntest three ... ok\n=== VMTEST END vm_b rc=0 start=18 end=20\n\
                === VMTEST DONE\n";
    let (r, done) = parse_console(text);
    assert!(done);
    assert_eq!(r["vm_a"].rc, Some(101));
    assert_eq!(
        r["vm_a"].tests,
        vec![
            ("one".to_string(), "ok".to_string()),
            ("two".to_string(), "FAILED".to_string())
        ]
    );
    assert_eq!(r["vm_a"].seconds, Some(12.5));
    assert_eq!((r["vm_b"].rc, r["vm_b"].tests.len()), (Some(0), 1));
    let (r, done) = parse_console("=== VMTEST BEGIN vm_a\ntest one ... ok\n");
    assert!(!done && r["vm_a"].rc.is_none());
}
