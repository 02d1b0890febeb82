//! Counters of the udp data path, shared by the workers (relaxed atomics, no locks) and rendered
//! into /metrics: packets and bytes each way, ICMP errors sent, I/O errors, and every dropped
//! packet or datagram by reason (`flannel_udp_dropped_total{reason="..."}`).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use super::packet::ipv4::DropReason;
use crate::backend::DataPathMetrics;

#[derive(Debug, Default)]
pub struct UdpMetrics {
    drops: [AtomicU64; DropReason::ALL.len()],
    /// Datagrams sent to peers, and their bytes.
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Packets written to the TUN device (after coalescing: segments counted one by one).
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub icmp_sent: AtomicU64,
    pub send_errors: AtomicU64,
    pub tun_write_errors: AtomicU64,
}

impl UdpMetrics {
    pub fn count_drop(&self, reason: DropReason, n: u64) {
        self.drops[reason.index()].fetch_add(n, Ordering::Relaxed);
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()].load(Ordering::Relaxed)
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl DataPathMetrics for UdpMetrics {
    fn render(&self, out: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            "flannel_udp_tx_packets_total",
            "Datagrams the udp backend sent to peers.",
            get(&self.tx_packets),
        );
        counter(
            "flannel_udp_tx_bytes_total",
            "Bytes of inner packets the udp backend sent to peers.",
            get(&self.tx_bytes),
        );
        counter(
            "flannel_udp_rx_packets_total",
            "Inner packets the udp backend wrote to flannel0.",
            get(&self.rx_packets),
        );
        counter(
            "flannel_udp_rx_bytes_total",
            "Bytes of inner packets the udp backend wrote to flannel0.",
            get(&self.rx_bytes),
        );
        counter(
            "flannel_udp_icmp_unreachable_sent_total",
            "ICMP net-unreachable errors sent for destinations no lease covers.",
            get(&self.icmp_sent),
        );
        counter(
            "flannel_udp_send_errors_total",
            "Datagrams the kernel refused to send.",
            get(&self.send_errors),
        );
        counter(
            "flannel_udp_tun_write_errors_total",
            "Packets flannel0 refused.",
            get(&self.tun_write_errors),
        );
        let _ = writeln!(
            out,
            "# HELP flannel_udp_dropped_total Packets and datagrams the udp backend dropped, by reason."
        );
        let _ = writeln!(out, "# TYPE flannel_udp_dropped_total counter");
        for r in DropReason::ALL {
            let _ = writeln!(
                out,
                "flannel_udp_dropped_total{{reason=\"{}\"}} {}",
                r.label(),
                self.dropped(r)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_reason() {
        let m = UdpMetrics::default();
        m.count_drop(DropReason::NotPeer, 3);
        UdpMetrics::add(&m.tx_packets, 2);
        let mut s = String::new();
        m.render(&mut s);
        assert!(
            s.contains("flannel_udp_dropped_total{reason=\"not_peer\"} 3"),
            "{s}"
        );
        assert!(
            s.contains("flannel_udp_dropped_total{reason=\"ttl_expired\"} 0"),
            "{s}"
        );
        assert!(s.contains("flannel_udp_tx_packets_total 2"), "{s}");
    }
}
