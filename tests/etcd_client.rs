//! The etcd client settings against a real etcd: TLS with client certificates (and a wrong CA),
//! upstream's per-scheme rule (`http://` stays plain text even with TLS files), username/password
//! auth (the password never appears in logs or errors), and an unreachable etcd that must not
//! block construction.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flanneld::config::EtcdConfig;
use flanneld::lease::LeaseAttrs;
use flanneld::subnet::env_file::PreviousSubnets;
use flanneld::subnet::etcd::EtcdSubnetManager;
use flanneld::subnet::{SubnetError, SubnetManager};
use support::etcd::{Etcd, TlsCerts};

const PREFIX: &str = "/coreos.com/network";
const CONFIG_KEY: &str = "/coreos.com/network/config";
const CONFIG: &str = r#"{ "Network": "198.18.0.0/16", "Backend": { "Type": "vxlan" } }"#;

async fn connect(cfg: &EtcdConfig) -> Result<EtcdSubnetManager, SubnetError> {
    EtcdSubnetManager::connect(cfg, PreviousSubnets::default(), Duration::from_secs(3600)).await
}

fn certs_or_skip() -> Option<TlsCerts> {
    if !TlsCerts::available() {
        support::skip(
            &support::current_test(),
            "the openssl CLI is missing (install openssl)",
        );
        return None;
    }
    Some(TlsCerts::generate())
}

/// A loopback port nothing listens on (bound, then released).
fn closed_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A config for one `endpoint` as user `root` with `password`.
fn unreachable_config(endpoint: &str, password: &str) -> EtcdConfig {
    EtcdConfig {
        endpoints: vec![endpoint.to_string()],
        prefix: PREFIX.into(),
        keyfile: None,
        certfile: None,
        cafile: None,
        username: Some("root".into()),
        password: Some(password.into()),
    }
}

fn with_tls_files(mut cfg: EtcdConfig, certs: &TlsCerts, ca: &std::path::Path) -> EtcdConfig {
    cfg.cafile = Some(ca.to_path_buf());
    cfg.certfile = Some(certs.client_cert.clone());
    cfg.keyfile = Some(certs.client_key.clone());
    cfg
}

#[tokio::test]
async fn tls_with_a_client_certificate_works() {
    if !Etcd::available() {
        support::skip(
            &support::current_test(),
            "etcd is missing (install etcd-server and etcd-client)",
        );
        return;
    }
    let Some(certs) = certs_or_skip() else { return };
    support::etcd::init_logs();
    let etcd = Etcd::start_tls(&certs);
    assert!(etcd.endpoint.starts_with("https://"));
    etcd.put(CONFIG_KEY, CONFIG);
    let cfg = with_tls_files(etcd.client_config(PREFIX), &certs, &certs.ca);
    let m = connect(&cfg).await.expect("manager");
    let config = m.network_config().await.expect("config over TLS");
    assert_eq!(config.backend_type, "vxlan");
    let attrs = LeaseAttrs {
        public_ip: "192.0.2.40".parse().expect("ip"),
        ..LeaseAttrs::default()
    };
    let lease = m.acquire_lease(&config, &attrs).await.expect("lease over TLS");
    assert!(lease.subnet.is_some());

    // A scheme-less endpoint uses TLS when the client certificate is configured.
    let mut bare = cfg.clone();
    bare.endpoints = vec![etcd.endpoint.trim_start_matches("https://").to_string()];
    let m = connect(&bare).await.expect("manager");
    m.network_config()
        .await
        .expect("config over TLS without a scheme");
}

#[tokio::test]
async fn tls_with_a_wrong_ca_fails_with_a_clear_error() {
    if !Etcd::available() {
        support::skip(
            &support::current_test(),
            "etcd is missing (install etcd-server and etcd-client)",
        );
        return;
    }
    let Some(certs) = certs_or_skip() else { return };
    support::etcd::init_logs();
    let etcd = Etcd::start_tls(&certs);
    etcd.put(CONFIG_KEY, CONFIG);
    let cfg = with_tls_files(etcd.client_config(PREFIX), &certs, &certs.other_ca);
    let m = connect(&cfg).await.expect("construction does not talk to etcd");
    let err = m
        .network_config()
        .await
        .expect_err("the server certificate is not trusted");
    let text = err.to_string();
    eprintln!("wrong CA error: {text}");
    assert!(matches!(err, SubnetError::Datastore(_)), "{err:?}");
    assert!(
        text.contains(CONFIG_KEY) && text.contains(&etcd.endpoint),
        "{text}"
    );
    assert!(
        text.to_lowercase().contains("certificate"),
        "names the certificate problem: {text}"
    );

    // Without a client certificate the server refuses us.
    let mut no_client_cert = etcd.client_config(PREFIX);
    no_client_cert.cafile = Some(certs.ca.clone());
    let m = connect(&no_client_cert).await.expect("construction");
    let err = m.network_config().await.expect_err("client certificate required");
    eprintln!("no client certificate error: {err}");
}

#[tokio::test]
async fn an_http_endpoint_stays_plain_text_even_with_tls_files() {
    let Some(certs) = certs_or_skip() else { return };
    let Some(etcd) = Etcd::start_or_skip() else { return };
    assert!(etcd.endpoint.starts_with("http://"));
    etcd.put(CONFIG_KEY, CONFIG);
    let cfg = with_tls_files(etcd.client_config(PREFIX), &certs, &certs.ca);
    let m = connect(&cfg).await.expect("manager");
    m.network_config().await.expect("config over plain text");
}

#[tokio::test]
async fn bad_client_settings_are_setup_errors_naming_the_problem() {
    let Some(certs) = certs_or_skip() else { return };
    let base = EtcdConfig {
        endpoints: vec!["https://127.0.0.1:2379".into()],
        prefix: PREFIX.into(),
        keyfile: None,
        certfile: None,
        cafile: None,
        username: None,
        password: None,
    };
    let mut missing = with_tls_files(base.clone(), &certs, &certs.ca);
    missing.cafile = Some("/nonexistent/ca.pem".into());
    let err = connect(&missing).await.err().expect("missing CA file");
    assert!(
        matches!(err, SubnetError::Fatal(_)) && err.to_string().contains("/nonexistent/ca.pem"),
        "{err}"
    );

    let mut mixed = with_tls_files(base.clone(), &certs, &certs.ca);
    mixed.endpoints = vec!["http://127.0.0.1:2379".into(), "127.0.0.1:2380".into()];
    let err = connect(&mixed).await.err().expect("mixed schemes");
    assert!(
        err.to_string().contains("http://127.0.0.1:2379,127.0.0.1:2380"),
        "{err}"
    );

    let mut none = base;
    none.endpoints = vec![" ".into()];
    let err = connect(&none).await.err().expect("no endpoints");
    assert!(err.to_string().contains("--etcd-endpoints"), "{err}");
}

#[tokio::test]
async fn an_unreachable_etcd_does_not_block_construction() {
    support::etcd::init_logs();
    let port = closed_loopback_port();
    let cfg = unreachable_config(&format!("http://127.0.0.1:{port}"), "unreachable-secret");
    let m = connect(&cfg).await.expect("construction does not need etcd");
    let err = m.network_config().await.expect_err("etcd is down");
    let text = err.to_string();
    assert!(err.is_retriable(), "{err:?}");
    assert!(
        text.contains(&format!("127.0.0.1:{port}")),
        "names the endpoint: {text}"
    );
    assert!(!text.contains("unreachable-secret"), "{text}");
}

/// Collects every log line written on this thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[tokio::test]
async fn username_and_password_auth_works_and_the_password_is_never_logged() {
    let Some(mut etcd) = Etcd::start_or_skip() else {
        return;
    };
    const PASSWORD: &str = "s3cret-Pa55word-for-flannel";
    etcd.put(CONFIG_KEY, CONFIG);
    etcd.enable_auth(PASSWORD);

    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut cfg = etcd.client_config(PREFIX);
    cfg.username = Some("root".into());
    cfg.password = Some(PASSWORD.into());
    tracing::info!(config = ?cfg, "etcd settings");
    let m = connect(&cfg).await.expect("manager");
    let config = m.network_config().await.expect("config with auth");
    assert_eq!(config.backend_type, "vxlan");

    let mut wrong = cfg.clone();
    wrong.password = Some("wrong-password-xyz".into());
    let m = connect(&wrong)
        .await
        .expect("construction does not authenticate yet");
    let err = m.network_config().await.expect_err("wrong password");
    let text = err.to_string();
    eprintln!("wrong password error: {text}");
    assert!(
        text.contains("authentication failed") || text.contains("invalid"),
        "{text}"
    );
    assert!(!text.contains("wrong-password-xyz"), "{text}");

    let logged = String::from_utf8_lossy(&logs.0.lock().expect("logs")).into_owned();
    assert!(logged.contains("etcd settings"), "the capture works");
    assert!(!logged.contains(PASSWORD), "the password was logged");
    assert!(
        !logged.contains("wrong-password-xyz"),
        "the wrong password was logged"
    );
}

#[tokio::test]
async fn credentials_in_endpoint_urls_never_reach_logs_or_errors() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // A closed loopback port: every request fails, and every failure is logged or returned.
    let port = closed_loopback_port();
    let cfg = unreachable_config(
        &format!("http://root:url-s3cret-xyz@127.0.0.1:{port}"),
        "flag-s3cret-abc",
    );
    tracing::info!(config = ?cfg, "etcd settings");
    let mut texts = Vec::new();
    match connect(&cfg).await {
        Err(e) => texts.push(e.to_string()),
        Ok(m) => {
            let err = tokio::time::timeout(Duration::from_secs(30), m.network_config())
                .await
                .expect("an answer within the request timeout")
                .expect_err("nothing listens there");
            texts.push(err.to_string());
        }
    }
    texts.push(String::from_utf8_lossy(&logs.0.lock().expect("logs")).into_owned());
    for text in &texts {
        assert!(!text.contains("url-s3cret-xyz"), "{text}");
        assert!(!text.contains("flag-s3cret-abc"), "{text}");
    }
    eprintln!("error: {}", texts[0]);
    assert!(
        texts[0].contains("127.0.0.1"),
        "the error still names the endpoint: {}",
        texts[0]
    );
}
