//! The running daemon's own view: `/readyz` and `/metrics` on the health port the daemon's flags
//! name (`--healthz-ip`, `--healthz-port`; an unspecified address is asked on loopback). A plain
//! HTTP/1.1 GET with short timeouts: doctor must never hang on a wedged daemon.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use super::report::{Check, Finding, THIS_NODE};

const TIMEOUT: Duration = Duration::from_secs(2);

/// Where the daemon serves /readyz, from its flags; `None` when the health server is off.
pub fn health_addr(healthz_ip: &str, healthz_port: u16) -> Option<SocketAddr> {
    if healthz_port == 0 {
        return None;
    }
    let ip = match healthz_ip
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
    {
        Ok(IpAddr::V4(v4)) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Ok(IpAddr::V6(v6)) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        Ok(ip) => ip,
        Err(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    Some(SocketAddr::new(ip, healthz_port))
}

/// `GET path` -> (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| e.to_string())?;
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// A sample of the Prometheus text (`name value` lines).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Findings from the daemon's /readyz and /metrics (pure, given the two answers).
pub fn daemon_findings(
    addr: SocketAddr,
    readyz: Result<(u16, String), String>,
    metrics: Result<(u16, String), String>,
) -> Vec<Finding> {
    let object = format!("http://{addr}/readyz");
    let (code, body) = match readyz {
        Ok(answer) => answer,
        Err(e) => {
            return vec![Finding::problem(
                Check::Daemon,
                THIS_NODE,
                &object,
                format!("flanneld does not answer on {object} ({e}): is the daemon running?"),
            )];
        }
    };
    let mut out = vec![if code == 200 {
        Finding::ok(
            Check::Daemon,
            THIS_NODE,
            &object,
            format!("flanneld reports ready on {object}"),
        )
    } else {
        Finding::problem(
            Check::Daemon,
            THIS_NODE,
            &object,
            format!(
                "flanneld reports not ready on {object} ({code} {}): subnet.env is not written or its peers are not programmed yet",
                body.trim()
            ),
        )
    }];
    if let Ok((200, text)) = metrics {
        let failed = metric(&text, "flannel_failed_ops").unwrap_or(0.0);
        if metric(&text, "flannel_converged") == Some(0.0) && code == 200 {
            out.push(Finding::problem(
                Check::Daemon,
                THIS_NODE,
                &format!("http://{addr}/metrics"),
                format!(
                    "flanneld's last reconcile pass failed ({failed} kernel changes failed): see its log"
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_health_address_follows_the_daemon_flags() {
        assert_eq!(health_addr("0.0.0.0", 0), None);
        assert_eq!(
            health_addr("0.0.0.0", 8081),
            Some("127.0.0.1:8081".parse().unwrap())
        );
        assert_eq!(health_addr("::", 8081), Some("[::1]:8081".parse().unwrap()));
        assert_eq!(health_addr("192.0.2.1", 1), Some("192.0.2.1:1".parse().unwrap()));
    }

    #[test]
    fn readiness_and_convergence_become_sentences() {
        let addr: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        let ready = Ok((200, "flanneld is ready".to_string()));
        let metrics = Ok((
            200,
            "# TYPE flannel_converged gauge\nflannel_converged 0\nflannel_failed_ops 2\n".to_string(),
        ));
        let found = daemon_findings(addr, ready, metrics);
        assert_eq!(found.len(), 2);
        assert!(found[1].message.contains("2 kernel changes failed"), "{found:?}");
        let down = daemon_findings(addr, Err("Connection refused".into()), Err(String::new()));
        assert_eq!(
            down[0].message,
            "flanneld does not answer on http://127.0.0.1:8081/readyz (Connection refused): is the daemon running?"
        );
        let starting = daemon_findings(
            addr,
            Ok((503, "flanneld is not ready yet".into())),
            Err(String::new()),
        );
        assert!(starting[0].message.contains("not ready"), "{starting:?}");
        assert_eq!(
            metric("a_b 1\nflannel_converged 1", "flannel_converged"),
            Some(1.0)
        );
    }
}
