//! A real etcd for tests: Debian's `/usr/bin/etcd` on free loopback ports with a temporary data
//! directory, killed (and reaped) when the fixture is dropped, even when the test panics.
//!
//! Also generates TLS material with the `openssl` CLI for the client-certificate tests.
//! Tests call `Etcd::start_or_skip()` and return early when etcd is missing (`support::skip`: the
//! reason is listed by `make test`, and under FLANNEL_TEST_STRICT=1 it is a failure).

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub const ETCD_BIN: &str = "/usr/bin/etcd";
pub const ETCDCTL_BIN: &str = "/usr/bin/etcdctl";
pub const OPENSSL_BIN: &str = "openssl";

/// Certificates for a TLS etcd: a CA, a server pair for 127.0.0.1, a client pair, and an unrelated
/// CA (for the "wrong CA" test). All PEM files in one temporary directory.
pub struct TlsCerts {
    _dir: TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
}

fn run_openssl(dir: &Path, args: &[&str]) {
    let out = Command::new(OPENSSL_BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running openssl {args:?}: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TlsCerts {
    /// Whether the `openssl` CLI is available.
    pub fn available() -> bool {
        Command::new(OPENSSL_BIN)
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Generate a CA, a server certificate for 127.0.0.1/localhost, a client certificate, and a
    /// second unrelated CA. EC P-256 keys (fast, accepted by rustls and Go).
    pub fn generate() -> TlsCerts {
        let dir = tempfile::tempdir().expect("temp dir for certs");
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for (name, cn) in [("ca", "flanneld-test-ca"), ("other-ca", "flanneld-other-ca")] {
            let key = format!("{name}-key.pem");
            let pem = format!("{name}.pem");
            let subj = format!("/CN={cn}");
            let mut args = vec!["req", "-x509"];
            args.extend_from_slice(&ec);
            args.extend_from_slice(&["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subj]);
            run_openssl(d, &args);
        }
        std::fs::write(
            d.join("server.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .expect("write server.ext");
        std::fs::write(
            d.join("client.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
             extendedKeyUsage=clientAuth\n",
        )
        .expect("write client.ext");
        for (name, cn) in [("server", "etcd-server"), ("client", "flanneld-client")] {
            let key = format!("{name}-key.pem");
            let csr = format!("{name}.csr");
            let pem = format!("{name}.pem");
            let ext = format!("{name}.ext");
            let subj = format!("/CN={cn}");
            let mut args = vec!["req"];
            args.extend_from_slice(&ec);
            args.extend_from_slice(&["-keyout", &key, "-out", &csr, "-subj", &subj]);
            run_openssl(d, &args);
            run_openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca-key.pem",
                    "-CAcreateserial",
                    "-out",
                    &pem,
                    "-days",
                    "2",
                    "-extfile",
                    &ext,
                ],
            );
        }
        TlsCerts {
            ca: d.join("ca.pem"),
            server_cert: d.join("server.pem"),
            server_key: d.join("server-key.pem"),
            client_cert: d.join("client.pem"),
            client_key: d.join("client-key.pem"),
            other_ca: d.join("other-ca.pem"),
            _dir: dir,
        }
    }
}

/// A running (or stopped) etcd owned by one test.
pub struct Etcd {
    /// Client URL, `http://127.0.0.1:<port>` or `https://127.0.0.1:<port>`.
    pub endpoint: String,
    pub client_port: u16,
    pub peer_port: u16,
    data_dir: TempDir,
    child: Option<Child>,
    /// (ca, cert, key) of the server when TLS with client-certificate auth is on.
    server_tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// (ca, cert, key) etcdctl uses against a TLS server.
    client_tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// `user:password` etcdctl passes once auth is enabled.
    etcdctl_user: Option<String>,
}

/// Show flanneld's logs (debug) in the output of failing tests.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("flanneld=debug"))
        .with_test_writer()
        .try_init();
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    listener.local_addr().expect("local addr").port()
}

impl Etcd {
    /// Whether the etcd binaries exist on this machine.
    pub fn available() -> bool {
        Path::new(ETCD_BIN).exists() && Path::new(ETCDCTL_BIN).exists()
    }

    /// Start a plain-HTTP etcd, or skip the test (`support::skip`) and return `None`.
    pub fn start_or_skip() -> Option<Etcd> {
        init_logs();
        if !Etcd::available() {
            super::skip(
                &super::current_test(),
                &format!("{ETCD_BIN} or {ETCDCTL_BIN} is missing (install etcd-server and etcd-client)"),
            );
            return None;
        }
        Some(Etcd::start())
    }

    /// Start a plain-HTTP etcd and wait until it answers.
    pub fn start() -> Etcd {
        Etcd::start_inner(None)
    }

    /// Start an etcd that serves TLS and requires client certificates signed by `certs.ca`.
    pub fn start_tls(certs: &TlsCerts) -> Etcd {
        Etcd::start_inner(Some(certs))
    }

    fn start_inner(certs: Option<&TlsCerts>) -> Etcd {
        let data_dir = tempfile::tempdir().expect("temp dir for etcd data");
        let scheme = if certs.is_some() { "https" } else { "http" };
        let client_port = free_port();
        let peer_port = free_port();
        let mut etcd = Etcd {
            endpoint: format!("{scheme}://127.0.0.1:{client_port}"),
            client_port,
            peer_port,
            data_dir,
            child: None,
            server_tls: certs.map(|c| (c.ca.clone(), c.server_cert.clone(), c.server_key.clone())),
            client_tls: certs.map(|c| (c.ca.clone(), c.client_cert.clone(), c.client_key.clone())),
            etcdctl_user: None,
        };
        etcd.spawn_and_wait();
        etcd
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir.path().join("etcd.log")
    }

    fn spawn_and_wait(&mut self) {
        let data = self.data_dir.path().join("data");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open etcd log");
        let log_err = log.try_clone().expect("clone etcd log handle");
        let mut cmd = Command::new(ETCD_BIN);
        cmd.arg("--name")
            .arg("test")
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(&self.endpoint)
            .arg("--advertise-client-urls")
            .arg(&self.endpoint)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("test={peer}"))
            .arg("--logger")
            .arg("zap")
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if let Some((ca, cert, key)) = &self.server_tls {
            cmd.arg("--cert-file")
                .arg(cert)
                .arg("--key-file")
                .arg(key)
                .arg("--trusted-ca-file")
                .arg(ca)
                .arg("--client-cert-auth");
        }
        // SAFETY: prctl is async-signal-safe; it makes the kernel kill etcd if the test dies
        // without running Drop (e.g. SIGKILL), so no etcd outlives its test.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {ETCD_BIN}: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let exited = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                panic!("etcd exited early with {status}; log:\n{}", self.log_tail());
            }
            if self.etcdctl_result(&["endpoint", "health"]).is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "etcd at {} did not become healthy in 60 s; log:\n{}",
                    self.endpoint,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last part of etcd's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.log_path()) {
            let _ = f.read_to_string(&mut text);
        }
        let start = text.len().saturating_sub(4000);
        text.get(start..).unwrap_or_default().to_string()
    }

    /// Kill etcd (SIGKILL, like a crash) and reap it; the data directory stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start etcd again on the same ports with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn_and_wait();
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Run etcdctl (API v3) against this etcd; `Err` carries stderr.
    pub fn etcdctl_result(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new(ETCDCTL_BIN);
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(&self.endpoint)
            .arg("--dial-timeout")
            .arg("2s")
            .arg("--command-timeout")
            .arg("5s");
        if let Some((ca, cert, key)) = &self.client_tls {
            cmd.arg("--cacert")
                .arg(ca)
                .arg("--cert")
                .arg(cert)
                .arg("--key")
                .arg(key);
        }
        if let Some(user) = &self.etcdctl_user {
            cmd.arg("--user").arg(user);
        }
        let out = cmd
            .args(args)
            .output()
            .map_err(|e| format!("running etcdctl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Create the `root` user with `password` and turn authentication on; etcdctl then logs in
    /// as root.
    pub fn enable_auth(&mut self, password: &str) {
        self.etcdctl(&["user", "add", &format!("root:{password}")]);
        self.etcdctl(&["auth", "enable"]);
        self.etcdctl_user = Some(format!("root:{password}"));
    }

    /// Run etcdctl and panic with its stderr on failure.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        self.etcdctl_result(args)
            .unwrap_or_else(|e| panic!("etcdctl {args:?} failed: {e}"))
    }

    /// `etcdctl put key value`.
    pub fn put(&self, key: &str, value: &str) {
        self.etcdctl(&["put", key, value]);
    }

    /// The value at `key`, if any.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.etcdctl(&["get", key, "--print-value-only"]);
        let value = out.strip_suffix('\n').unwrap_or(&out);
        if out.is_empty() {
            None
        } else {
            Some(value.to_string())
        }
    }

    /// All (key, value) pairs under `prefix`, sorted by key.
    pub fn list(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.etcdctl(&["get", prefix, "--prefix"]);
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .filter_map(|c| match c {
                [k, v] => Some((k.to_string(), v.to_string())),
                _ => None,
            })
            .collect()
    }

    /// Grant a lease of `ttl` seconds and return its hex id (as etcdctl prints it).
    pub fn grant(&self, ttl: u32) -> String {
        let out = self.etcdctl(&["lease", "grant", &ttl.to_string()]);
        // "lease 694d7c5d8d6b8e0a granted with TTL(3s)"
        out.split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("unexpected etcdctl lease grant output: {out}"))
            .to_string()
    }

    /// `etcdctl put key value` attached to a new lease of `ttl` seconds; returns the lease id (hex).
    pub fn put_with_ttl(&self, key: &str, value: &str, ttl: u32) -> String {
        let lease = self.grant(ttl);
        self.etcdctl(&["put", "--lease", &lease, key, value]);
        lease
    }

    /// The etcd lease id `key` is attached to (0: none, a reservation); `None` if the key is absent.
    pub fn lease_id(&self, key: &str) -> Option<i64> {
        let out = self.etcdctl(&["get", key, "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("get JSON");
        let kv = v.get("kvs")?.get(0)?;
        Some(kv.get("lease").and_then(|l| l.as_i64()).unwrap_or(0))
    }

    /// The remaining TTL in seconds of the lease `key` is attached to.
    pub fn ttl_of(&self, key: &str) -> Option<i64> {
        let id = self.lease_id(key).filter(|id| *id != 0)?;
        let out = self.etcdctl(&["lease", "timetolive", &format!("{id:x}"), "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("timetolive JSON");
        v.get("ttl").and_then(|t| t.as_i64())
    }

    /// Client settings for flanneld's etcd manager against this etcd.
    pub fn client_config(&self, prefix: &str) -> flanneld::config::EtcdConfig {
        flanneld::config::EtcdConfig {
            endpoints: vec![self.endpoint.clone()],
            prefix: prefix.to_string(),
            keyfile: None,
            certfile: None,
            cafile: None,
            username: None,
            password: None,
        }
    }

    /// The current revision of the store.
    pub fn revision(&self) -> i64 {
        let out = self.etcdctl(&["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("endpoint status JSON");
        v.get(0)
            .and_then(|s| s.pointer("/Status/header/revision"))
            .and_then(|r| r.as_i64())
            .unwrap_or_else(|| panic!("no revision in endpoint status: {out}"))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
