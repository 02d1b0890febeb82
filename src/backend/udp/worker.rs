//! The packet workers: one OS thread per TUN queue (one per core, IFF_MULTI_QUEUE), each with its
//! own UDP socket (SO_REUSEPORT). A worker waits in `poll` on its queue, its socket and a stop
//! pipe, and moves packets both ways in batches:
//! - TUN -> peers: read packets (TSO/USO super-packets cut into MTU-sized packets), decrement the
//!   TTL, look the destination up in the forwarding table snapshot, and send them with `sendmmsg`
//!   and UDP_SEGMENT; a destination no lease covers gets an ICMP net unreachable (rate-limited);
//! - peers -> TUN: `recvmmsg` with UDP_GRO, validate every datagram (`packet::ipv4::accept`),
//!   coalesce TCP segments (the shared `backend::offload`, with `packet::offload`'s parameters)
//!   and write them to the TUN device.
//!
//! Workers never lock and never wait on the control plane: they read the table through `ArcSwap`
//! and count through atomics. All buffers are allocated when a worker starts; nothing a peer sends
//! makes them grow. A worker whose TUN queue fails for good (the device was deleted) exits; the
//! backend notices (`Workers::all_alive`) and the next device check starts new ones.

use std::io;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::metrics::UdpMetrics;
use super::packet::ipv4::{self, DropReason, ReceivePolicy};
use super::packet::offload::{self as packet_offload, INTEGRITY};
use super::socket::{Outgoing, RecvBatch, SendBatch, UdpSock};
use super::table::ForwardingTable;
use crate::backend::offload::{Coalescer, GSO_NONE, Segments, VNET_HDR_LEN, VnetHdr};
use crate::backend::tun::TunQueue;

/// Packets read from the TUN device per wake-up before turning to the socket.
const TUN_BATCH: usize = 64;
/// Messages per `recvmmsg`, and rounds per wake-up.
const RECV_BATCH: usize = 8;
const RECV_ROUNDS: usize = 4;
/// A receive buffer holds the largest UDP payload (and a UDP_GRO run).
const RECV_BUF: usize = 65536;
/// The send buffer: room for several segmented super-packets.
const SEND_BUF: usize = 4 * 72 * 1024;
/// The most bytes one UDP_SEGMENT message carries (below the 65507-byte UDP payload limit).
const GSO_MSG_MAX: usize = 65000;
/// The kernel's limit of segments per UDP_SEGMENT message.
const GSO_MAX_SEGMENTS: usize = 64;
/// ICMP errors per worker per second.
const ICMP_PER_SECOND: u32 = 100;

/// What every worker needs to know.
#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    pub policy: ReceivePolicy,
    /// The destination port of every datagram (the local Port, as upstream).
    pub port: u16,
    /// The source of our ICMP errors (`packet::ipv4::icmp_source`).
    pub icmp_source: Ipv4Addr,
    /// The queues carry virtio-net headers (offloads on).
    pub vnet_hdr: bool,
}

/// The running workers; dropping this stops and joins them.
pub struct Workers {
    stop: Option<OwnedFd>,
    handles: Vec<JoinHandle<()>>,
    alive: Arc<AtomicUsize>,
}

impl Workers {
    /// Start one worker per queue; worker i uses socket i (modulo their number).
    pub fn start(
        queues: Vec<TunQueue>,
        sockets: &[Arc<UdpSock>],
        table: Arc<ForwardingTable>,
        metrics: Arc<UdpMetrics>,
        cfg: WorkerConfig,
    ) -> io::Result<Workers> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 fills two fds; the result is checked.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds were just created and are owned here.
        let (stop_rx, stop_tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let stop_rx = Arc::new(stop_rx);
        let alive = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for (i, tun) in queues.into_iter().enumerate() {
            let w = Worker::new(
                i,
                tun,
                sockets[i % sockets.len()].clone(),
                table.clone(),
                metrics.clone(),
                cfg,
                stop_rx.clone(),
            );
            alive.fetch_add(1, Ordering::SeqCst);
            let alive = alive.clone();
            let h = std::thread::Builder::new()
                .name(format!("flannel-udp-{i}"))
                .spawn(move || {
                    let _guard = AliveGuard(alive);
                    w.run();
                })?;
            handles.push(h);
        }
        Ok(Workers {
            stop: Some(stop_tx),
            handles,
            alive,
        })
    }

    /// True while every worker still runs.
    pub fn all_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst) == self.handles.len()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Closing the write end wakes every worker's poll (POLLHUP on the read end).
        self.stop.take();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

struct AliveGuard(Arc<AtomicUsize>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Worker {
    id: usize,
    tun: TunQueue,
    sock: Arc<UdpSock>,
    table: Arc<ForwardingTable>,
    metrics: Arc<UdpMetrics>,
    cfg: WorkerConfig,
    stop: Arc<OwnedFd>,
    tun_buf: Vec<u8>,
    send_buf: Vec<u8>,
    send_used: usize,
    outgoing: Vec<Outgoing>,
    send: SendBatch,
    recv: RecvBatch,
    accepted: Vec<(usize, Range<usize>)>,
    gro: Coalescer,
    gro_out: Vec<u8>,
    gro_items: Vec<Range<usize>>,
    icmp: Vec<u8>,
    icmp_window: Instant,
    icmp_in_window: u32,
}

impl Worker {
    fn new(
        id: usize,
        tun: TunQueue,
        sock: Arc<UdpSock>,
        table: Arc<ForwardingTable>,
        metrics: Arc<UdpMetrics>,
        cfg: WorkerConfig,
        stop: Arc<OwnedFd>,
    ) -> Worker {
        Worker {
            id,
            tun,
            sock,
            table,
            metrics,
            cfg,
            stop,
            tun_buf: vec![0; VNET_HDR_LEN + 65536],
            send_buf: vec![0; SEND_BUF],
            send_used: 0,
            outgoing: Vec::with_capacity(256),
            send: SendBatch::default(),
            recv: RecvBatch::new(RECV_BATCH, RECV_BUF),
            accepted: Vec::with_capacity(RECV_BATCH * 64),
            gro: Coalescer::new(INTEGRITY),
            gro_out: Vec::with_capacity(RECV_BATCH * (RECV_BUF + 64 * VNET_HDR_LEN)),
            gro_items: Vec::with_capacity(RECV_BATCH * 64),
            icmp: Vec::with_capacity(VNET_HDR_LEN + 128),
            icmp_window: Instant::now(),
            icmp_in_window: 0,
        }
    }

    fn run(mut self) {
        tracing::debug!(
            worker = self.id,
            gso = self.sock.gso,
            gro = self.sock.gro,
            "udp worker started"
        );
        let fds = [self.tun.as_raw_fd(), self.sock.as_raw_fd(), self.stop.as_raw_fd()];
        loop {
            let mut p = fds.map(|fd: RawFd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            // SAFETY: three valid pollfds.
            let rc = unsafe { libc::poll(p.as_mut_ptr(), 3, -1) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(worker = self.id, error = %e, "udp worker: poll failed; stopping");
                return;
            }
            if p[2].revents != 0 {
                return;
            }
            if p[0].revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
                tracing::warn!(worker = self.id, device = %self.tun.name(), "udp worker: the TUN queue failed; stopping");
                return;
            }
            if p[0].revents & libc::POLLIN != 0 {
                if let Err(e) = self.tun_to_peers() {
                    tracing::warn!(worker = self.id, device = %self.tun.name(), error = %e,
                        "udp worker: reading the TUN device failed (device deleted?); stopping");
                    return;
                }
            }
            if p[1].revents & libc::POLLIN != 0 {
                if let Err(e) = self.peers_to_tun() {
                    tracing::warn!(worker = self.id, device = %self.tun.name(), error = %e,
                        "udp worker: writing to the TUN device failed (device deleted?); stopping");
                    return;
                }
            }
        }
    }

    /// Read a batch from the TUN device and send it to the peers.
    fn tun_to_peers(&mut self) -> io::Result<()> {
        let snap = self.table.load_full();
        let off = if self.cfg.vnet_hdr { VNET_HDR_LEN } else { 0 };
        for _ in 0..TUN_BATCH {
            let n = match self.tun.read(&mut self.tun_buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n < off {
                self.metrics.count_drop(DropReason::BadOffload, 1);
                continue;
            }
            let hdr = if self.cfg.vnet_hdr {
                VnetHdr::decode(&self.tun_buf).unwrap_or_default()
            } else {
                VnetHdr::default()
            };
            let h = match ipv4::parse(&self.tun_buf[off..n]) {
                Ok(h) => h,
                Err(e) => {
                    self.metrics.count_drop(e.reason, 1);
                    continue;
                }
            };
            let Some(peer) = snap.lookup(h.dst) else {
                self.metrics.count_drop(DropReason::NoRoute, 1);
                self.unreachable(off, n);
                continue;
            };
            let to = std::net::SocketAddrV4::new(*peer.ip(), self.cfg.port);
            if hdr.gso_type == GSO_NONE {
                if let Err(e) = packet_offload::prepare_single(&hdr, &mut self.tun_buf[off..n]) {
                    self.metrics.count_drop(e.reason, 1);
                    continue;
                }
                let len = n - off;
                if self.send_used + len > self.send_buf.len() {
                    self.flush();
                }
                let start = self.send_used;
                self.send_buf[start..start + len].copy_from_slice(&self.tun_buf[off..n]);
                self.outgoing.push(Outgoing {
                    start,
                    len,
                    to,
                    segment: 0,
                });
                self.send_used += len;
                UdpMetrics::add(&self.metrics.tx_packets, 1);
                UdpMetrics::add(&self.metrics.tx_bytes, len as u64);
            } else {
                if self.send_buf.len() - self.send_used < 72 * 1024 {
                    self.flush();
                }
                let start = self.send_used;
                match packet_offload::segment(&hdr, &self.tun_buf[off..n], &mut self.send_buf[start..]) {
                    Ok(s) => {
                        self.queue_segments(start, s, to);
                        self.send_used += s.total;
                        UdpMetrics::add(&self.metrics.tx_packets, s.count as u64);
                        UdpMetrics::add(&self.metrics.tx_bytes, s.total as u64);
                    }
                    Err(e) => self.metrics.count_drop(e.reason, 1),
                }
            }
            if self.outgoing.len() >= 64 {
                self.flush();
            }
        }
        self.flush();
        Ok(())
    }

    /// Queue `s.count` segments at `start` as UDP_SEGMENT messages (or one datagram each when the
    /// socket cannot segment).
    fn queue_segments(&mut self, start: usize, s: Segments, to: std::net::SocketAddrV4) {
        let per_msg = if self.sock.gso {
            (GSO_MSG_MAX / s.seg_len).clamp(1, GSO_MAX_SEGMENTS)
        } else {
            1
        };
        let mut at = start;
        let end = start + s.total;
        let mut left = s.count;
        while left > 0 {
            let k = per_msg.min(left);
            let len = if k == left { end - at } else { k * s.seg_len };
            let segment = if k > 1 { s.seg_len as u16 } else { 0 };
            self.outgoing.push(Outgoing {
                start: at,
                len,
                to,
                segment,
            });
            at += len;
            left -= k;
        }
    }

    fn flush(&mut self) {
        if !self.outgoing.is_empty() {
            let (failed, err) = self.send.send(&self.sock, &self.send_buf, &self.outgoing);
            if failed > 0 {
                UdpMetrics::add(&self.metrics.send_errors, failed as u64);
                if let Some(e) = err {
                    tracing::debug!(worker = self.id, failed, error = %e, "udp worker: the kernel refused datagrams");
                }
            }
        }
        self.outgoing.clear();
        self.send_used = 0;
    }

    /// Answer the packet in `tun_buf[off..n]` with an ICMP net unreachable (rate-limited).
    fn unreachable(&mut self, off: usize, n: usize) {
        let now = Instant::now();
        if now.duration_since(self.icmp_window) >= Duration::from_secs(1) {
            self.icmp_window = now;
            self.icmp_in_window = 0;
        }
        if self.icmp_in_window >= ICMP_PER_SECOND {
            return;
        }
        let mut pkt = std::mem::take(&mut self.icmp);
        if ipv4::icmp_net_unreachable(&self.tun_buf[off..n], self.cfg.icmp_source, &mut pkt).is_some() {
            if self.cfg.vnet_hdr {
                pkt.splice(0..0, [0u8; VNET_HDR_LEN]);
            }
            self.icmp_in_window += 1;
            match self.tun.write(&pkt) {
                Ok(_) => UdpMetrics::add(&self.metrics.icmp_sent, 1),
                Err(_) => UdpMetrics::add(&self.metrics.tun_write_errors, 1),
            }
        }
        self.icmp = pkt;
    }

    /// Receive batches of datagrams, validate them and write them to the TUN device.
    fn peers_to_tun(&mut self) -> io::Result<()> {
        let snap = self.table.load_full();
        for _ in 0..RECV_ROUNDS {
            let got = match self.recv.recv(&self.sock) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(worker = self.id, error = %e, "udp worker: recvmmsg failed");
                    break;
                }
            };
            self.accepted.clear();
            for i in 0..got {
                let r = self.recv.received[i];
                if r.len == 0 {
                    self.metrics.count_drop(DropReason::Empty, 1);
                    continue;
                }
                let seg = if r.gso_size > 0 { r.gso_size } else { r.len };
                if r.truncated {
                    self.metrics.count_drop(DropReason::TooBig, 1);
                    continue;
                }
                if !snap.is_peer(*r.from.ip()) {
                    self.metrics
                        .count_drop(DropReason::NotPeer, r.len.div_ceil(seg) as u64);
                    continue;
                }
                let buf = &mut self.recv.bufs[i][..r.len];
                let mut start = 0;
                while start < r.len {
                    let end = (start + seg).min(r.len);
                    match ipv4::accept(&mut buf[start..end], &self.cfg.policy) {
                        Ok(_) => self.accepted.push((i, start..end)),
                        Err(e) => {
                            tracing::trace!(worker = self.id, from = %r.from, error = %e, "udp worker: dropped a datagram");
                            self.metrics.count_drop(e.reason, 1);
                        }
                    }
                    start = end;
                }
            }
            self.write_accepted()?;
            if got < RECV_BATCH {
                break;
            }
        }
        Ok(())
    }

    fn write_accepted(&mut self) -> io::Result<()> {
        if self.accepted.is_empty() {
            return Ok(());
        }
        let bufs = &self.recv.bufs;
        let packets: Vec<&[u8]> = self.accepted.iter().map(|(i, r)| &bufs[*i][r.clone()]).collect();
        let bytes: usize = packets.iter().map(|p| p.len()).sum();
        UdpMetrics::add(&self.metrics.rx_packets, packets.len() as u64);
        UdpMetrics::add(&self.metrics.rx_bytes, bytes as u64);
        if !self.cfg.vnet_hdr {
            for p in &packets {
                write_tun(&self.tun, p, &self.metrics)?;
            }
            return Ok(());
        }
        self.gro
            .coalesce(&packets, &mut self.gro_out, &mut self.gro_items);
        for r in &self.gro_items {
            write_tun(&self.tun, &self.gro_out[r.clone()], &self.metrics)?;
        }
        Ok(())
    }
}

/// Write one packet to the TUN device; errors that mean the device is gone are returned, others
/// counted.
fn write_tun(tun: &TunQueue, pkt: &[u8], metrics: &UdpMetrics) -> io::Result<()> {
    match tun.write(pkt) {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EBADFD) | Some(libc::ENODEV) | Some(libc::EBADF)
            ) =>
        {
            Err(e)
        }
        Err(_) => {
            UdpMetrics::add(&metrics.tun_write_errors, 1);
            Ok(())
        }
    }
}
