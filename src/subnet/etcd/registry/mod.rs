//! The etcd I/O of the subnet manager, and the only file that imports `etcd-client`: the client
//! with upstream's per-scheme TLS rules and auth, and thin operations (get, list with revision,
//! lease TTL, create-if-absent with a lease, guarded puts, delete, prefix watch with compaction
//! detection).
//!
//! It makes no decisions about leases and never parses values: the manager does. Every request is
//! bounded by a timeout so a silent etcd cannot hang the daemon. The password is never logged
//! (`ConnectOptions` is never printed). Spec: flanneld-behaviour.md sections 5.1-5.3 and 5.5.

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions, TlsOptions,
    Txn, TxnOp, WatchOptions,
};

use super::transport::{Transport, TransportError, common_transport, read_pem};

mod watch;
use crate::config::EtcdConfig;
pub use watch::{Watch, WatchEvent, WatchMessage};

/// Upper bound for one unary request (upstream has none; a hung request would stall the daemon).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Upper bound for establishing a TCP (and TLS) connection to one endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keep-alive pings detect a dead connection under a silent watch.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Listings and watch batches of big clusters exceed gRPC's default 4 MiB message limit.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Errors of the etcd I/O; each names the operation, the key and the endpoints.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Settings(#[from] TransportError),
    #[error("setting up the etcd client for {endpoints}: {reason}")]
    Client { endpoints: String, reason: String },
    #[error("{op} {key} at etcd {endpoints}: {reason}")]
    Request {
        op: &'static str,
        key: String,
        endpoints: String,
        reason: String,
    },
    #[error("{op} {key} at etcd {endpoints}: no answer within {secs} s")]
    Timeout {
        op: &'static str,
        key: String,
        endpoints: String,
        secs: u64,
    },
    #[error("watching {key} at etcd {endpoints}: the watch stream ended ({reason})")]
    WatchClosed {
        key: String,
        endpoints: String,
        reason: String,
    },
}

/// One key as stored in etcd (not to be confused with `backend::Entry`, a kernel or peer entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key text (invalid UTF-8 replaced, so it can still be named in warnings).
    pub key: String,
    pub value: Vec<u8>,
    /// The etcd lease the key is attached to; 0 = none (a reservation).
    pub lease_id: i64,
    pub mod_revision: i64,
}

/// A consistent listing: every key under a prefix at store revision `revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub revision: i64,
    pub entries: Vec<KeyValue>,
}

/// What a create-if-absent did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOutcome {
    /// Written at store revision `revision`, attached to a new lease of `ttl` seconds.
    Created { ttl: i64, revision: i64 },
    /// Someone else holds the key (the new lease was revoked).
    Exists,
}

/// What a guarded put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Written at store revision `revision` (the key's new modification revision); `ttl` is the
    /// granted lease TTL (None: written without a lease).
    Written { ttl: Option<i64>, revision: i64 },
    /// The guard failed: the key changed or vanished since it was read.
    Conflict,
}

/// The full text of an error and its sources, e.g. `transport error: tcp connect error: ...`.
pub(super) fn describe(err: &etcd_client::Error) -> String {
    let mut text = match err {
        etcd_client::Error::GRpcStatus(status) => {
            format!("{:?}: {}", status.code(), status.message())
        }
        other => other.to_string(),
    };
    let mut source = std::error::Error::source(err);
    if let etcd_client::Error::GRpcStatus(status) = err {
        source = std::error::Error::source(status);
    }
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// The etcd client with its connection settings; connects lazily when auth is configured.
pub struct Registry {
    endpoints: Vec<String>,
    /// The password and the endpoints' userinfo: scrubbed from every error text.
    secrets: crate::redact::Secrets,
    options: ConnectOptions,
    has_auth: bool,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl Registry {
    /// Build the client settings, read the TLS files, and (without auth) create the client, which
    /// connects lazily. With auth the client is created on first use, because creating it
    /// authenticates, and an unreachable etcd must not block startup.
    pub async fn new(cfg: &EtcdConfig) -> Result<Registry, RegistryError> {
        let endpoints: Vec<String> = cfg
            .endpoints
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        let client_cert = match (&cfg.certfile, &cfg.keyfile) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (Some(_), None) | (None, Some(_)) => {
                tracing::warn!(
                    "only one of --etcd-certfile and --etcd-keyfile is set: both are needed for a client \
                     certificate, so none is used"
                );
                None
            }
            (None, None) => None,
        };
        let transport = common_transport(&endpoints, client_cert.is_some())?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
            .with_require_leader(true)
            .with_auto_token_refresh(true);
        match transport {
            Transport::Tls => {
                let mut tls = TlsOptions::new();
                match &cfg.cafile {
                    Some(ca) => tls = tls.ca_certificate(Certificate::from_pem(read_pem(ca, "CERTIFICATE")?)),
                    None => tls = tls.with_native_roots(),
                }
                if let Some((cert, key)) = &client_cert {
                    let cert_pem = read_pem(cert, "CERTIFICATE")?;
                    let key_pem = read_pem(key, "")?;
                    tls = tls.identity(Identity::from_pem(cert_pem, key_pem));
                }
                options = options.with_tls(tls);
            }
            Transport::Plain => {
                tracing::warn!(
                    endpoints = %crate::redact::urls(&endpoints.join(",")),
                    "connecting to etcd over plain-text HTTP: this is insecure"
                );
            }
        }
        let user = cfg.username.as_deref().filter(|u| !u.is_empty());
        if let Some(user) = user {
            options = options.with_user(user, cfg.password.clone().unwrap_or_default());
        }
        let mut secrets = crate::redact::Secrets::default();
        if let Some(password) = cfg.password.as_deref() {
            secrets.add(password);
        }
        for endpoint in &endpoints {
            if let Some(userinfo) = endpoint
                .split_once("://")
                .and_then(|(_, rest)| rest.split(['/', '?', '#']).next())
                .and_then(|authority| authority.rsplit_once('@'))
                .map(|(userinfo, _)| userinfo)
            {
                secrets.add(userinfo);
                if let Some((_, password)) = userinfo.split_once(':') {
                    secrets.add(password);
                }
            }
        }
        let registry = Registry {
            endpoints,
            secrets,
            options,
            has_auth: user.is_some(),
            client: tokio::sync::Mutex::new(None),
        };
        if !registry.has_auth {
            // Without auth, creating the client sends nothing; failures here are setup errors.
            let client = registry.connect().await?;
            *registry.client.lock().await = Some(client);
        }
        Ok(registry)
    }

    /// The endpoints, comma-joined, for messages (userinfo redacted).
    pub fn endpoints(&self) -> String {
        crate::redact::urls(&self.endpoints.join(","))
    }

    /// An etcd client error as text, with every secret scrubbed.
    fn reason(&self, err: &etcd_client::Error) -> String {
        self.secrets.scrub(&describe(err))
    }

    async fn connect(&self) -> Result<Client, RegistryError> {
        let connecting = Client::connect(&self.endpoints, Some(self.options.clone()));
        match tokio::time::timeout(REQUEST_TIMEOUT, connecting).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(RegistryError::Client {
                endpoints: self.endpoints(),
                reason: self.reason(&e),
            }),
            Err(_) => Err(RegistryError::Client {
                endpoints: self.endpoints(),
                reason: format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()),
            }),
        }
    }

    /// The client, created (and, with auth, authenticated) on first use.
    async fn client(&self) -> Result<Client, RegistryError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let client = self.connect().await?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Run one request with the timeout, mapping errors to name the operation and key.
    async fn call<T, F>(&self, op: &'static str, key: &str, request: F) -> Result<T, RegistryError>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(RegistryError::Request {
                op,
                key: key.to_string(),
                endpoints: self.endpoints(),
                reason: self.reason(&e),
            }),
            Err(_) => Err(RegistryError::Timeout {
                op,
                key: key.to_string(),
                endpoints: self.endpoints(),
                secs: REQUEST_TIMEOUT.as_secs(),
            }),
        }
    }

    /// The entry at `key` (if any) and the store revision of the read.
    pub async fn get(&self, key: &str) -> Result<(i64, Option<KeyValue>), RegistryError> {
        let mut kv = self.client().await?.kv_client();
        let resp = self.call("reading", key, kv.get(key, None)).await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        Ok((revision, resp.kvs().first().map(key_value_of)))
    }

    /// Every entry under `prefix`, from one consistent read.
    pub async fn list(&self, prefix: &str) -> Result<Listing, RegistryError> {
        let mut kv = self
            .client()
            .await?
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let resp = self
            .call(
                "listing",
                prefix,
                kv.get(prefix, Some(GetOptions::new().with_prefix())),
            )
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        Ok(Listing {
            revision,
            entries: resp.kvs().iter().map(key_value_of).collect(),
        })
    }

    /// The remaining TTL of a lease in seconds; `None` when the lease is gone or expiring now.
    pub async fn time_to_live(&self, key: &str, lease_id: i64) -> Result<Option<i64>, RegistryError> {
        let mut leases = self.client().await?.lease_client();
        let asked = self.call(
            "reading the lease TTL of",
            key,
            leases.time_to_live(lease_id, None),
        );
        match asked.await {
            Ok(resp) => Ok(Some(resp.ttl()).filter(|ttl| *ttl > 0)),
            Err(RegistryError::Request { reason, .. }) if reason.contains("lease not found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn grant(&self, key: &str, ttl: i64) -> Result<(i64, i64), RegistryError> {
        let mut leases = self.client().await?.lease_client();
        let resp = self
            .call("granting a lease for", key, leases.grant(ttl, None))
            .await?;
        Ok((resp.id(), resp.ttl()))
    }

    async fn revoke(&self, key: &str, lease_id: i64) {
        let revoked = async {
            let mut leases = self.client().await?.lease_client();
            self.call("revoking the unused lease of", key, leases.revoke(lease_id))
                .await
        };
        if let Err(e) = revoked.await {
            // Harmless: the lease holds no key and expires by itself.
            tracing::debug!(error = %e, "could not revoke an unused etcd lease");
        }
    }

    /// Create `key` only if it does not exist, attached to a new lease of `ttl` seconds
    /// (upstream: Grant, then Txn If(Version(key) == 0) Then(Put with lease)).
    pub async fn create_with_lease(
        &self,
        key: &str,
        value: &str,
        ttl: i64,
    ) -> Result<CreateOutcome, RegistryError> {
        let (lease_id, granted) = self.grant(key, ttl).await?;
        let txn = Txn::new()
            .when([Compare::version(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease_id)),
            )]);
        let mut kv = self.client().await?.kv_client();
        match self.call("creating", key, kv.txn(txn)).await {
            Ok(resp) if resp.succeeded() => Ok(CreateOutcome::Created {
                ttl: granted,
                revision: resp.header().map_or(0, |h| h.revision()),
            }),
            Ok(_) => {
                self.revoke(key, lease_id).await;
                Ok(CreateOutcome::Exists)
            }
            // Not revoked: the write may have been applied with only the answer lost, and
            // revoking would then delete the key. An unused lease expires by itself.
            Err(e) => Err(e),
        }
    }

    /// Put `value` at `key` if the key still has `mod_revision` (unchanged since read), with a
    /// new lease of `ttl` seconds, or with no lease when `ttl` is None (a reservation stays one).
    pub async fn put_if_unchanged(
        &self,
        key: &str,
        value: &str,
        ttl: Option<i64>,
        mod_revision: i64,
    ) -> Result<PutOutcome, RegistryError> {
        self.guarded_put(
            key,
            value,
            ttl,
            Compare::mod_revision(key, CompareOp::Equal, mod_revision),
        )
        .await
    }

    async fn guarded_put(
        &self,
        key: &str,
        value: &str,
        ttl: Option<i64>,
        guard: Compare,
    ) -> Result<PutOutcome, RegistryError> {
        let lease = match ttl {
            Some(ttl) => Some(self.grant(key, ttl).await?),
            None => None,
        };
        let options = lease.map(|(id, _)| PutOptions::new().with_lease(id));
        let txn = Txn::new()
            .when([guard])
            .and_then([TxnOp::put(key, value, options)]);
        let mut kv = self.client().await?.kv_client();
        let result = self.call("writing", key, kv.txn(txn)).await;
        match result {
            Ok(resp) if resp.succeeded() => Ok(PutOutcome::Written {
                ttl: lease.map(|(_, granted)| granted),
                revision: resp.header().map_or(0, |h| h.revision()),
            }),
            Ok(_) => {
                if let Some((id, _)) = lease {
                    self.revoke(key, id).await;
                }
                Ok(PutOutcome::Conflict)
            }
            // Not revoked: see `create_with_lease`.
            Err(e) => Err(e),
        }
    }

    /// Delete `key` if its modification revision is still `mod_revision`; false if it changed.
    pub async fn delete_if_unchanged(&self, key: &str, mod_revision: i64) -> Result<bool, RegistryError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, mod_revision)])
            .and_then([TxnOp::delete(key, None)]);
        let mut kv = self.client().await?.kv_client();
        let resp = self.call("deleting", key, kv.txn(txn)).await?;
        Ok(resp.succeeded())
    }

    /// Watch `key` (every key starting with it when `prefix`), from `revision` on.
    pub async fn watch(&self, key: &str, revision: i64, prefix: bool) -> Result<Watch, RegistryError> {
        let mut watcher = self
            .client()
            .await?
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let mut options = WatchOptions::new().with_start_revision(revision);
        if prefix {
            options = options.with_prefix();
        }
        let stream = self
            .call("watching", key, watcher.watch(key, Some(options)))
            .await?;
        Ok(Watch {
            stream,
            key: key.to_string(),
            endpoints: self.endpoints(),
            secrets: self.secrets.clone(),
            next_revision: revision,
        })
    }
}

pub(super) fn key_value_of(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        lease_id: kv.lease(),
        mod_revision: kv.mod_revision(),
    }
}
