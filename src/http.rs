//! The health endpoint server: `/healthz`, `/readyz` and `/metrics` on `--healthz-ip:--healthz-port`,
//! plus `/peers` (ours, not upstream's): the backend's installed peer entries as JSON
//! (`backend::peers_json`, never a secret), for `flanneld doctor` and other tools.
//!
//! A deliberately tiny HTTP/1.1 responder on tokio (one request per connection, `Connection: close`):
//! the daemon needs three fixed GET answers, not a web framework. Bodies and status codes follow
//! spec 11.2 (`flanneld is running`, `flanneld is ready`, 503 `flanneld is not ready yet`, 404
//! `404 page not found` for other paths, any method accepted).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::backend::{PeerTable, peers_json};

/// What the endpoints report; implemented by the daemon.
pub trait StatusSource: Send + Sync {
    fn ready(&self) -> bool;
    /// Prometheus text exposition format.
    fn metrics(&self) -> String;
    /// The backend's peer table (udp, wireguard, extension), for `/peers`; `None` before the
    /// backend is prepared and for backends whose peers are kernel entries only.
    fn peer_table(&self) -> Option<Arc<dyn PeerTable>> {
        None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("health server: invalid listen address {addr:?}: {reason}")]
    BadAddress { addr: String, reason: String },
    #[error("health server: listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// `ip:port` with IPv6 hosts bracketed, as upstream formats the listen address.
pub fn listen_addr(ip: &str, port: u16) -> Result<SocketAddr, HttpError> {
    let ip_addr: std::net::IpAddr = ip.parse().map_err(|_| HttpError::BadAddress {
        addr: ip.to_string(),
        reason: "not an IP address".into(),
    })?;
    Ok(SocketAddr::new(ip_addr, port))
}

/// Bind now (so a bad address fails startup with a clear error) and serve until `shutdown`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

pub async fn serve(listener: TcpListener, status: Arc<dyn StatusSource>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: the error repeats at once, so
                        // pause instead of spinning on it.
                        tracing::warn!("health server: accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let status = status.clone();
                tokio::spawn(async move {
                    // A slow or stuck client must not keep a task forever.
                    let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream, status)).await;
                });
            }
        }
    }
}

/// The response for a request path: (status line, content type, body).
pub fn respond(path: &str, status: &dyn StatusSource) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match path {
        "/healthz" => ("200 OK", TEXT, "flanneld is running".into()),
        "/readyz" if status.ready() => ("200 OK", TEXT, "flanneld is ready".into()),
        "/readyz" => (
            "503 Service Unavailable",
            TEXT,
            "flanneld is not ready yet".into(),
        ),
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            status.metrics(),
        ),
        _ => ("404 Not Found", TEXT, "404 page not found\n".into()),
    }
}

/// The response for `/peers`: the peer table's installed entries as JSON.
pub async fn respond_peers(status: &dyn StatusSource) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let Some(table) = status.peer_table() else {
        return (
            "404 Not Found",
            TEXT,
            "flanneld keeps no peer table: its backend's peers are kernel routes, neighbours and FDB entries, or it is not running yet\n".into(),
        );
    };
    match table.installed().await {
        Ok(entries) => ("200 OK", "application/json", peers_json::render(&entries)),
        Err(e) => (
            "503 Service Unavailable",
            TEXT,
            format!("reading the peer table: {e}\n"),
        ),
    }
}

/// The path of an HTTP request head (`GET /readyz?x=1 HTTP/1.1` -> `/readyz`).
pub fn request_path(head: &str) -> Option<&str> {
    let line = head.lines().next()?;
    let mut parts = line.split_whitespace();
    let _method = parts.next()?;
    let target = parts.next()?;
    Some(target.split('?').next().unwrap_or(target))
}

async fn answer(mut stream: TcpStream, status: Arc<dyn StatusSource>) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // Read until the end of the request head (or 8 KiB, enough for any probe).
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let (code, ctype, body) = match request_path(&head) {
        Some("/peers") => respond_peers(status.as_ref()).await,
        Some(path) => respond(path, status.as_ref()),
        None => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n".into(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(bool);
    impl StatusSource for Fixed {
        fn ready(&self) -> bool {
            self.0
        }
        fn metrics(&self) -> String {
            "flannel_ready 1\n".into()
        }
    }

    #[test]
    fn paths_map_to_upstream_answers() {
        assert_eq!(respond("/healthz", &Fixed(false)).2, "flanneld is running");
        assert_eq!(respond("/readyz", &Fixed(false)).0, "503 Service Unavailable");
        assert_eq!(respond("/readyz", &Fixed(false)).2, "flanneld is not ready yet");
        assert_eq!(respond("/readyz", &Fixed(true)).0, "200 OK");
        assert_eq!(respond("/readyz", &Fixed(true)).2, "flanneld is ready");
        assert_eq!(respond("/nope", &Fixed(true)).0, "404 Not Found");
        assert_eq!(respond("/metrics", &Fixed(true)).2, "flannel_ready 1\n");
    }

    /// A peer table that reports fixed entries.
    struct Installed(Vec<crate::backend::PeerEntry>);
    #[async_trait::async_trait]
    impl PeerTable for Installed {
        async fn installed(&self) -> Result<Vec<crate::backend::PeerEntry>, crate::backend::PeerError> {
            Ok(self.0.clone())
        }
        async fn apply(&self, ops: &[crate::backend::PeerOp]) -> Vec<Result<(), crate::backend::PeerError>> {
            ops.iter().map(|_| Ok(())).collect()
        }
    }

    struct WithTable(Arc<dyn PeerTable>);
    impl StatusSource for WithTable {
        fn ready(&self) -> bool {
            true
        }
        fn metrics(&self) -> String {
            String::new()
        }
        fn peer_table(&self) -> Option<Arc<dyn PeerTable>> {
            Some(self.0.clone())
        }
    }

    #[tokio::test]
    async fn peers_are_served_as_json_without_the_preshared_key() {
        use crate::backend::peers::{PresharedKey, WgKey, WgPeer, base64_std_encode};
        let (code, _, body) = respond_peers(&Fixed(true)).await;
        assert_eq!(code, "404 Not Found");
        assert!(body.contains("no peer table"), "{body}");
        let psk = [0x5cu8; 32];
        let table = Installed(vec![crate::backend::PeerEntry::Wireguard(WgPeer {
            device: 4,
            public_key: WgKey([9; 32]),
            preshared_key: Some(PresharedKey(WgKey(psk))),
            endpoint: None,
            allowed_ips: vec!["198.18.2.0/24".parse().unwrap()],
            persistent_keepalive: 0,
        })]);
        let (code, ctype, body) = respond_peers(&WithTable(Arc::new(table))).await;
        assert_eq!((code, ctype), ("200 OK", "application/json"));
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["peers"][0]["public_key"], base64_std_encode(&[9; 32]));
        assert_eq!(value["peers"][0]["has_preshared_key"], true);
        assert!(!body.contains(&base64_std_encode(&psk)), "{body}");
        let hex: String = psk.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!body.contains(&hex), "{body}");
    }

    #[test]
    fn request_path_handles_queries_and_garbage() {
        assert_eq!(
            request_path("GET /readyz?verbose HTTP/1.1\r\n\r\n"),
            Some("/readyz")
        );
        assert_eq!(request_path("HEAD /healthz HTTP/1.0\r\n"), Some("/healthz"));
        assert_eq!(request_path(""), None);
        assert_eq!(request_path("GARBAGE"), None);
    }

    #[test]
    fn listen_addr_rejects_names_and_brackets_v6() {
        assert!(listen_addr("localhost", 1).is_err());
        assert_eq!(listen_addr("::1", 8081).unwrap().to_string(), "[::1]:8081");
        assert_eq!(listen_addr("0.0.0.0", 8081).unwrap().to_string(), "0.0.0.0:8081");
    }

    #[tokio::test]
    async fn serves_over_tcp_on_loopback() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, Arc::new(Fixed(true)), shutdown.clone()));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.ends_with("flanneld is ready"), "{out}");
        shutdown.cancel();
        server.await.unwrap();
    }
}
