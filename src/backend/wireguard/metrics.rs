//! /metrics of the wireguard backend: per-peer handshake age and bytes (from the last read of the
//! devices, for both implementations) and the userspace data path's counters.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::backend::DataPathMetrics;

use super::device::PeerInfo;

/// Counters of the userspace data path (all monotonic).
#[derive(Debug, Default)]
pub struct DataPathCounters {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Datagrams that are not WireGuard, fail authentication, or name no known peer.
    pub rx_invalid: AtomicU64,
    /// Decrypted packets whose source address is not an allowed IP of the sending peer.
    pub rx_not_allowed: AtomicU64,
    /// Packets from the TUN device for which no peer has an allowed IP.
    pub tx_no_peer: AtomicU64,
    /// Handshakes answered with a cookie because of load.
    pub cookies_sent: AtomicU64,
    pub handshakes: AtomicU64,
    /// System call errors on the TUN device or the UDP sockets.
    pub io_errors: AtomicU64,
}

impl DataPathCounters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
pub struct WgMetrics {
    pub data_path: DataPathCounters,
    /// Set when the userspace implementation runs (its counters are then rendered).
    pub userspace: std::sync::atomic::AtomicBool,
    peers: Mutex<Vec<(String, PeerInfo)>>,
}

impl WgMetrics {
    pub fn set_peers(&self, peers: Vec<(String, PeerInfo)>) {
        *self.peers.lock().unwrap_or_else(|p| p.into_inner()) = peers;
    }
}

impl DataPathMetrics for WgMetrics {
    fn render(&self, out: &mut String) {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let now = SystemTime::now();
        let _ = writeln!(
            out,
            "# HELP flannel_wireguard_peers WireGuard peers of the cluster on the device."
        );
        let _ = writeln!(out, "# TYPE flannel_wireguard_peers gauge");
        let mut devices: Vec<&str> = peers.iter().map(|(d, _)| d.as_str()).collect();
        devices.dedup();
        for d in &devices {
            let n = peers.iter().filter(|(name, _)| name == d).count();
            let _ = writeln!(out, "flannel_wireguard_peers{{device=\"{d}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP flannel_wireguard_peer_handshake_age_seconds Seconds since the peer's last handshake (absent: none yet)."
        );
        let _ = writeln!(out, "# TYPE flannel_wireguard_peer_handshake_age_seconds gauge");
        for (d, p) in &peers {
            if let Some(age) = p.last_handshake.and_then(|t| now.duration_since(t).ok()) {
                let _ = writeln!(
                    out,
                    "flannel_wireguard_peer_handshake_age_seconds{{device=\"{d}\",public_key=\"{}\"}} {}",
                    p.public_key,
                    age.as_secs()
                );
            }
        }
        for (name, help, pick) in [
            (
                "flannel_wireguard_peer_rx_bytes",
                "Bytes received from the peer.",
                0,
            ),
            ("flannel_wireguard_peer_tx_bytes", "Bytes sent to the peer.", 1),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for (d, p) in &peers {
                let v = if pick == 0 { p.rx_bytes } else { p.tx_bytes };
                let _ = writeln!(
                    out,
                    "{name}{{device=\"{d}\",public_key=\"{}\"}} {v}",
                    p.public_key
                );
            }
        }
        if !self.userspace.load(Ordering::Relaxed) {
            return;
        }
        let c = &self.data_path;
        for (name, help, v) in [
            (
                "flannel_wireguard_userspace_tx_packets_total",
                "Packets encrypted and sent.",
                &c.tx_packets,
            ),
            (
                "flannel_wireguard_userspace_tx_bytes_total",
                "Bytes of plaintext packets sent.",
                &c.tx_bytes,
            ),
            (
                "flannel_wireguard_userspace_rx_packets_total",
                "Packets received and decrypted.",
                &c.rx_packets,
            ),
            (
                "flannel_wireguard_userspace_rx_bytes_total",
                "Bytes of plaintext packets received.",
                &c.rx_bytes,
            ),
            (
                "flannel_wireguard_userspace_rx_invalid_total",
                "Datagrams dropped: not WireGuard, not authentic, or for no known peer.",
                &c.rx_invalid,
            ),
            (
                "flannel_wireguard_userspace_rx_not_allowed_total",
                "Decrypted packets dropped: source not an allowed IP of the peer.",
                &c.rx_not_allowed,
            ),
            (
                "flannel_wireguard_userspace_tx_no_peer_total",
                "Packets dropped: no peer for the destination.",
                &c.tx_no_peer,
            ),
            (
                "flannel_wireguard_userspace_cookies_sent_total",
                "Handshakes answered with a cookie (under load).",
                &c.cookies_sent,
            ),
            (
                "flannel_wireguard_userspace_handshakes_total",
                "Handshake messages processed.",
                &c.handshakes,
            ),
            (
                "flannel_wireguard_userspace_io_errors_total",
                "Failed system calls on the TUN device or UDP sockets.",
                &c.io_errors,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::peers::WgKey;

    #[test]
    fn renders_peers_and_userspace_counters_in_prometheus_text() {
        let m = WgMetrics::default();
        m.set_peers(vec![(
            "flannel-wg".into(),
            PeerInfo {
                public_key: WgKey([1; 32]),
                last_handshake: Some(SystemTime::now()),
                rx_bytes: 7,
                ..PeerInfo::default()
            },
        )]);
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains("flannel_wireguard_peers{device=\"flannel-wg\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("flannel_wireguard_peer_rx_bytes{device=\"flannel-wg\",public_key=\"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\"} 7\n"), "{out}");
        assert!(
            out.contains("flannel_wireguard_peer_handshake_age_seconds{"),
            "{out}"
        );
        assert!(
            !out.contains("userspace"),
            "kernel implementation: no data-path counters"
        );
        m.userspace.store(true, std::sync::atomic::Ordering::Relaxed);
        DataPathCounters::add(&m.data_path.rx_invalid, 3);
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains("flannel_wireguard_userspace_rx_invalid_total 3\n"),
            "{out}"
        );
        assert!(
            out.lines()
                .all(|l| l.starts_with('#') || l.starts_with("flannel_")),
            "{out}"
        );
    }
}
