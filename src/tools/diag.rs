//! `flanneld diag`: what an operator needs on one screen when a node misbehaves — the subnet.env
//! the CNI plugin reads, the flannel devices and how many routes, neighbour and FDB entries the
//! kernel holds for the overlay, and (with `-healthz`) the running daemon's readiness and metrics.
//!
//! Read-only: it never changes the kernel or any file. Exit status 0 when subnet.env is valid
//! (and, with `-healthz`, the daemon reports ready), 1 otherwise, 2 for bad arguments.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::kernel::rtnl::RtNetlink;
use crate::kernel::{NUD_PERMANENT, Netlink, RTPROT_BOOT, RTPROT_FLANNEL};
use crate::subnet::env_file;

const USAGE: &str = "usage: flanneld diag [-subnet-file PATH] [-healthz IP:PORT]\n";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagOptions {
    pub subnet_file: PathBuf,
    pub healthz: Option<SocketAddr>,
}

/// Parses `-subnet-file PATH`, `-healthz IP:PORT` (one or two dashes, `=` or a separate value).
pub fn parse_args(args: &[String]) -> Result<DiagOptions, String> {
    let mut opts = DiagOptions {
        subnet_file: PathBuf::from("/run/flannel/subnet.env"),
        healthz: None,
    };
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let name = arg.trim_start_matches('-');
        let (name, inline) = match name.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (name, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| rest.next().cloned())
                .ok_or(format!("flag -{name} needs a value"))
        };
        match name {
            "subnet-file" => opts.subnet_file = PathBuf::from(value()?),
            "healthz" => {
                let v = value()?;
                opts.healthz = Some(
                    v.parse()
                        .map_err(|_| format!("invalid value {v:?} for flag -healthz: expected IP:PORT"))?,
                );
            }
            _ => return Err(format!("unknown flag {arg}")),
        }
    }
    Ok(opts)
}

/// `args[0]` is the invoked name.
pub fn diag_main(args: &[String]) -> i32 {
    let opts = match parse_args(args.get(1..).unwrap_or_default()) {
        Ok(opts) => opts,
        Err(e) => {
            eprint!("flanneld diag: {e}\n{USAGE}");
            return 2;
        }
    };
    let (report, healthy) = report(&opts);
    print!("{report}");
    if healthy { 0 } else { 1 }
}

fn report(opts: &DiagOptions) -> (String, bool) {
    let mut out = String::new();
    let mut healthy = true;
    let path = opts.subnet_file.display();
    let env = std::fs::read_to_string(&opts.subnet_file)
        .map_err(|e| e.to_string())
        .and_then(|text| env_file::parse_env(&text).map(|vars| (text, vars)));
    let mut networks: Vec<IpNet> = Vec::new();
    match env {
        Ok((text, vars)) => {
            let _ = writeln!(out, "subnet.env ({path}):");
            for line in text.lines() {
                let _ = writeln!(out, "  {line}");
            }
            for key in ["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"] {
                if let Some(net) = vars.get(key).and_then(|v| v.parse::<IpNet>().ok()) {
                    networks.push(net.trunc());
                }
            }
            if !vars.contains_key("FLANNEL_SUBNET") && !vars.contains_key("FLANNEL_IPV6_SUBNET") {
                let _ = writeln!(
                    out,
                    "  problem: no FLANNEL_SUBNET or FLANNEL_IPV6_SUBNET: the CNI plugin cannot set up pods"
                );
                healthy = false;
            }
        }
        Err(e) => {
            let _ = writeln!(out, "subnet.env ({path}): missing or unreadable: {e}");
            let _ = writeln!(
                out,
                "  problem: pods on this node cannot start until flanneld writes it"
            );
            healthy = false;
        }
    }
    match kernel_summary(&networks) {
        Ok(text) => out.push_str(&text),
        Err(e) => {
            let _ = writeln!(out, "kernel: cannot read: {e}");
        }
    }
    if let Some(addr) = opts.healthz {
        match (http_get(addr, "/readyz"), http_get(addr, "/metrics")) {
            (Ok((code, body)), metrics) => {
                let _ = writeln!(out, "daemon at {addr}: /readyz {code} {}", body.trim());
                healthy &= code == 200;
                if let Ok((_, metrics)) = metrics {
                    for line in metrics.lines().filter(|l| l.starts_with("flannel_")) {
                        let _ = writeln!(out, "  {line}");
                    }
                }
            }
            (Err(e), _) => {
                let _ = writeln!(out, "daemon at {addr}: not reachable: {e}");
                healthy = false;
            }
        }
    }
    (out, healthy)
}

fn kernel_summary(networks: &[IpNet]) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let k = RtNetlink::new().map_err(|e| e.to_string())?;
        let links = k.links().await.map_err(|e| e.to_string())?;
        let routes = k.routes().await.map_err(|e| e.to_string())?;
        let mut out = String::from("kernel:\n");
        for link in links.iter().filter(|l| l.name.starts_with("flannel")) {
            let neighs = k.neighs(link.index).await.unwrap_or_default();
            let fdbs = k.fdbs(link.index).await.unwrap_or_default();
            let _ = writeln!(
                out,
                "  {} ({}): {} mtu {} mac {}; {} permanent neighbours, {} FDB entries with a destination",
                link.name,
                link.kind.as_deref().unwrap_or("device"),
                if link.up { "up" } else { "DOWN" },
                link.mtu,
                link.mac.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
                neighs.iter().filter(|n| n.state & NUD_PERMANENT != 0).count(),
                fdbs.iter().filter(|f| f.dst.is_some()).count(),
            );
        }
        for net in networks {
            let ours = routes
                .iter()
                .filter(|r| {
                    matches!(r.protocol, RTPROT_BOOT | RTPROT_FLANNEL)
                        && net.contains(&r.dst)
                        && r.dst != *net
                })
                .count();
            let _ = writeln!(
                out,
                "  routes inside {net} (protocol 70 or boot, as flanneld installs them): {ours}"
            );
        }
        Ok(out)
    })
}

fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_go_style_flags() {
        let o = parse_args(&args(&["-subnet-file", "/x.env", "--healthz=127.0.0.1:8081"])).unwrap();
        assert_eq!(o.subnet_file, PathBuf::from("/x.env"));
        assert_eq!(o.healthz, Some("127.0.0.1:8081".parse().unwrap()));
        assert_eq!(
            parse_args(&[]).unwrap().subnet_file,
            PathBuf::from("/run/flannel/subnet.env")
        );
    }

    #[test]
    fn bad_arguments_are_named() {
        assert_eq!(parse_args(&args(&["-nope"])).unwrap_err(), "unknown flag -nope");
        assert!(
            parse_args(&args(&["-healthz", "localhost"]))
                .unwrap_err()
                .contains("\"localhost\"")
        );
        assert!(
            parse_args(&args(&["-subnet-file"]))
                .unwrap_err()
                .contains("needs a value")
        );
    }
}
