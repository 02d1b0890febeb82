//! The packet threads of one userspace device. Each thread owns one TUN queue and one UDP
//! socket (the kernel spreads flows over TUN queues and peers over SO_REUSEPORT sockets, so
//! encryption and decryption run on every core) and loops: poll, read a batch from the TUN
//! (super-packets split by the shared `backend::offload`), encrypt, send in GSO batches; receive
//! a batch of datagrams (GRO), authenticate and decrypt, coalesce (`backend::offload` again) and
//! write to the TUN. A timer thread drives handshake retries, keepalives and the handshake rate
//! limiter.
//!
//! The threads read the device's `Snapshot` once per batch and never wait on the control plane.
//! Every buffer is allocated once per thread; nothing from the network grows memory: the state
//! machine's queue for packets waiting on a handshake is bounded, and handshakes beyond the rate
//! limit are answered with cookies.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, TunnResult};

use crate::backend::offload::{
    self, Coalescer, GSO_TCPV4, GSO_TCPV6, Integrity, MAX_SUPER_PACKET, Segmenting, VNET_HDR_LEN, VnetHdr,
};
use crate::backend::peers::WgKey;
use crate::backend::tun::TunQueue;

use super::super::metrics::{DataPathCounters, WgMetrics};
use super::peer::{Peer, Snapshot};
use super::udp::{SendBatch, UdpSock};
use super::waker::Waker;

/// WireGuard adds 32 bytes to each packet; a handshake initiation is 148 bytes.
const WG_OVERHEAD: usize = 32;
const MIN_OUT: usize = 148;
/// TUN reads and UDP receive calls per round, so one direction cannot starve the other.
const TUN_READS_PER_ROUND: usize = 16;
const UDP_MESSAGES: usize = 16;
const RECV_BUFFER: usize = 65_536;
/// Decrypted packets waiting to be coalesced: they are written once a super-packet's worth is
/// there (as soon as the old one-flow coalescer wrote), and there is always room for one whole
/// datagram (or a handshake reply) more.
const PLAIN_BUFFER: usize = MAX_SUPER_PACKET + RECV_BUFFER + MIN_OUT;

/// The device is offered TSO over IPv4 and IPv6 (`open_tun`), so those are the super-packets the
/// kernel hands us. The TTL is left alone: the device is an ordinary interface, and the kernel
/// decremented the TTL when it routed the packet into it.
pub const SEGMENTING: Segmenting = Segmenting {
    gso_types: &[GSO_TCPV4, GSO_TCPV6],
    decrement_ttl: false,
};

/// Every received packet was authenticated (ChaCha20-Poly1305) before it is coalesced: no bit
/// changed since the sender computed its checksums, so they are not verified a second time.
pub const INTEGRITY: Integrity = Integrity::Authenticated;
/// How often the timer thread runs the state machines' timers.
pub const TIMER_TICK: Duration = Duration::from_millis(250);

/// What the control plane shares with the packet threads.
pub struct Shared {
    pub snapshot: RwLock<Arc<Snapshot>>,
    pub metrics: Arc<WgMetrics>,
}

impl Shared {
    pub fn load(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn counters(&self) -> &DataPathCounters {
        &self.metrics.data_path
    }
}

fn add(c: &std::sync::atomic::AtomicU64, n: u64) {
    DataPathCounters::add(c, n);
}

/// The destination address of a plain IP packet.
fn dst_ip(pkt: &[u8]) -> Option<IpAddr> {
    match pkt.first()? >> 4 {
        4 if pkt.len() >= 20 => Some(IpAddr::from(<[u8; 4]>::try_from(&pkt[16..20]).ok()?)),
        6 if pkt.len() >= 40 => Some(IpAddr::from(<[u8; 16]>::try_from(&pkt[24..40]).ok()?)),
        _ => None,
    }
}

fn send_one(sock: &UdpSock, dst: SocketAddr, bytes: &[u8], scratch: &mut SendBatch) {
    scratch.clear();
    let slot = scratch.reserve(bytes.len());
    slot.copy_from_slice(bytes);
    scratch.commit(Some(dst), bytes.len());
    sock.send_batch(scratch);
    scratch.clear();
}

/// Decrypted packets of a receive round, back to back, until they are coalesced and written to
/// the TUN device.
struct Plaintexts {
    buf: Vec<u8>,
    used: usize,
    packets: Vec<Range<usize>>,
    coalescer: Coalescer,
    out: Vec<u8>,
    items: Vec<Range<usize>>,
}

impl Plaintexts {
    fn new() -> Plaintexts {
        Plaintexts {
            buf: vec![0; PLAIN_BUFFER],
            used: 0,
            packets: Vec::new(),
            coalescer: Coalescer::new(INTEGRITY),
            out: Vec::new(),
            items: Vec::new(),
        }
    }

    /// Where the next datagram is decrypted (or a handshake reply built).
    fn tail(&mut self) -> &mut [u8] {
        &mut self.buf[self.used..]
    }

    fn room(&self) -> usize {
        self.buf.len() - self.used
    }

    /// Keep the `len` bytes at the start of `tail()` (boringtun decrypts to the start of the
    /// buffer it is given) as one packet for the TUN device.
    fn keep(&mut self, len: usize) {
        self.packets.push(self.used..self.used + len);
        self.used += len;
    }

    /// Coalesce the packets kept so far and write them to the TUN device.
    fn write(&mut self, tun: &TunQueue, c: &DataPathCounters) {
        if !self.packets.is_empty() {
            let (buf, packets) = (&self.buf, &self.packets);
            self.coalescer.coalesce_by(
                packets.len(),
                |i| &buf[packets[i].clone()],
                &mut self.out,
                &mut self.items,
            );
            for r in &self.items {
                if tun.write(&self.out[r.clone()]).is_err() {
                    add(&c.io_errors, 1);
                }
            }
        }
        self.packets.clear();
        self.used = 0;
    }
}

/// One packet thread's buffers.
struct Buffers {
    tun_read: Vec<u8>,
    scratch: Vec<u8>,
    out: SendBatch,
    control: SendBatch,
    recv: Vec<Vec<u8>>,
    recv_meta: Vec<(SocketAddr, usize, usize)>,
    plain: Plaintexts,
    cookie: Vec<u8>,
}

impl Buffers {
    fn new() -> Buffers {
        Buffers {
            tun_read: vec![0; VNET_HDR_LEN + MAX_SUPER_PACKET],
            scratch: vec![0; MAX_SUPER_PACKET],
            out: SendBatch::default(),
            control: SendBatch::default(),
            recv: (0..UDP_MESSAGES).map(|_| vec![0; RECV_BUFFER]).collect(),
            recv_meta: Vec::with_capacity(UDP_MESSAGES),
            plain: Plaintexts::new(),
            cookie: vec![0; 256],
        }
    }
}

/// The loop of one packet thread; returns when `stop` is set (and `waker` rung).
pub fn run(
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    tun: Arc<TunQueue>,
    sock: Arc<UdpSock>,
    waker: Arc<Waker>,
) {
    let mut b = Buffers::new();
    let mut tun_alive = true;
    loop {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let mut fds = [
            libc::pollfd {
                fd: if tun_alive { tun.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sock.raw(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: waker.raw(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
        if n <= 0 {
            continue;
        }
        if fds[2].revents != 0 {
            let mut v = 0u64;
            // SAFETY: reads 8 bytes into a u64 (drains the eventfd).
            let _ = unsafe { libc::read(waker.raw(), (&mut v as *mut u64).cast(), 8) };
        }
        let snapshot = shared.load();
        if fds[0].revents & libc::POLLIN != 0 {
            tun_alive = tun_round(&shared, &snapshot, &tun, &sock, &mut b);
        } else if fds[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            // The device was deleted; the control plane recreates it and restarts the threads.
            tun_alive = false;
        }
        if fds[1].revents & libc::POLLIN != 0 {
            udp_round(&shared, &snapshot, &tun, &sock, &mut b);
        }
    }
}

/// Read, split, encrypt and send one round of TUN packets. False when the TUN device is gone.
fn tun_round(shared: &Shared, snap: &Snapshot, tun: &TunQueue, sock: &UdpSock, b: &mut Buffers) -> bool {
    let c = shared.counters();
    let mut alive = true;
    b.out.clear();
    for _ in 0..TUN_READS_PER_ROUND {
        let n = match tun.read(&mut b.tun_read) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                add(&c.io_errors, 1);
                alive = e.raw_os_error() != Some(libc::EBADFD);
                break;
            }
        };
        let Some(hdr) = VnetHdr::decode(&b.tun_read[..n]) else {
            continue;
        };
        let (_, pkt) = b.tun_read[..n].split_at_mut(VNET_HDR_LEN);
        let out = &mut b.out;
        let result = offload::split(&hdr, pkt, &mut b.scratch, &SEGMENTING, |seg| {
            encrypt(snap, c, seg, out)
        });
        if result.is_err() {
            add(&c.tx_no_peer, 1);
        }
        if out.msgs.len() >= 256 {
            flush_out(c, sock, out);
        }
    }
    flush_out(c, sock, &mut b.out);
    alive
}

fn flush_out(c: &DataPathCounters, sock: &UdpSock, out: &mut SendBatch) {
    if !out.is_empty() {
        let failed = sock.send_batch(out);
        add(&c.io_errors, failed as u64);
        out.clear();
    }
}

/// Encrypt one plain packet for the peer its destination belongs to, into the send batch.
fn encrypt(snap: &Snapshot, c: &DataPathCounters, seg: &mut [u8], out: &mut SendBatch) {
    let Some(peer) = dst_ip(seg).and_then(|ip| snap.allowed.lookup(ip)) else {
        add(&c.tx_no_peer, 1);
        return;
    };
    let endpoint = peer.endpoint();
    let slot = out.reserve((seg.len() + WG_OVERHEAD).max(MIN_OUT));
    let len = match peer.lock_tunn().encapsulate(seg, slot) {
        TunnResult::WriteToNetwork(p) => p.len(),
        _ => 0,
    };
    if len > 0 && endpoint.is_some() {
        peer.add_tx(seg.len());
        add(&c.tx_packets, 1);
        add(&c.tx_bytes, seg.len() as u64);
    }
    out.commit(endpoint, len);
}

/// Receive, authenticate, decrypt and write to the TUN one round of datagrams.
fn udp_round(shared: &Shared, snap: &Snapshot, tun: &TunQueue, sock: &UdpSock, b: &mut Buffers) {
    let c = shared.counters();
    let got = match sock.recv_batch(&mut b.recv, &mut b.recv_meta) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
        Err(_) => {
            add(&c.io_errors, 1);
            return;
        }
    };
    for i in 0..got {
        let (src, len, seg) = b.recv_meta[i];
        let mut off = 0;
        while off < len {
            let end = (off + seg).min(len);
            if b.plain.room() < RECV_BUFFER + MIN_OUT {
                b.plain.write(tun, c);
            }
            let datagram = &b.recv[i][off..end];
            off = end;
            let parts = (&mut b.plain, &mut b.cookie[..], &mut b.control);
            handle_datagram(snap, c, sock, src, datagram, parts);
        }
    }
    b.plain.write(tun, c);
}

/// A packet thread's buffers for one datagram: plaintexts for the TUN device, cookie reply,
/// control sends.
type Parts<'a> = (&'a mut Plaintexts, &'a mut [u8], &'a mut SendBatch);

/// Which peer a verified message is for.
fn peer_for<'s>(snap: &'s Snapshot, packet: &Packet<'_>) -> Option<&'s Arc<Peer>> {
    match packet {
        Packet::HandshakeInit(p) => {
            let (private, public) = snap.keys.as_ref()?;
            let half = parse_handshake_anon(private, public, p).ok()?;
            snap.by_key.get(&WgKey(half.peer_static_public))
        }
        Packet::HandshakeResponse(p) => snap.peer_by_session(p.receiver_idx),
        Packet::PacketCookieReply(p) => snap.peer_by_session(p.receiver_idx),
        Packet::PacketData(p) => snap.peer_by_session(p.receiver_idx),
    }
}

fn handle_datagram(
    snap: &Snapshot,
    c: &DataPathCounters,
    sock: &UdpSock,
    src: SocketAddr,
    datagram: &[u8],
    (plain, cookie, control): Parts<'_>,
) {
    if snap.keys.is_none() {
        add(&c.rx_invalid, 1);
        return;
    }
    let packet = match snap.rate_limiter.verify_packet(Some(src.ip()), datagram, cookie) {
        Ok(p) => p,
        Err(TunnResult::WriteToNetwork(reply)) => {
            add(&c.cookies_sent, 1);
            let reply = reply.to_vec();
            send_one(sock, src, &reply, control);
            return;
        }
        Err(_) => {
            add(&c.rx_invalid, 1);
            return;
        }
    };
    let is_data = matches!(packet, Packet::PacketData(_));
    let Some(peer) = peer_for(snap, &packet) else {
        add(&c.rx_invalid, 1);
        return;
    };
    if !is_data {
        add(&c.handshakes, 1);
    }
    let result = peer
        .lock_tunn()
        .decapsulate(Some(src.ip()), datagram, plain.tail());
    let kept = match result {
        TunnResult::WriteToNetwork(reply) => {
            peer.set_endpoint(src);
            let reply = reply.to_vec();
            send_one(sock, src, &reply, control);
            // Packets queued while the handshake ran go out now.
            loop {
                let queued = peer.lock_tunn().decapsulate(None, &[], plain.tail());
                match queued {
                    TunnResult::WriteToNetwork(p) => {
                        let p = p.to_vec();
                        send_one(sock, src, &p, control);
                    }
                    _ => break,
                }
            }
            None
        }
        TunnResult::WriteToTunnelV4(p, ip) => deliver(snap, c, peer, src, IpAddr::V4(ip), p),
        TunnResult::WriteToTunnelV6(p, ip) => deliver(snap, c, peer, src, IpAddr::V6(ip), p),
        TunnResult::Done => {
            peer.set_endpoint(src);
            None
        }
        TunnResult::Err(WireGuardError::DuplicateCounter) => None,
        TunnResult::Err(_) => {
            add(&c.rx_invalid, 1);
            None
        }
    };
    if let Some(len) = kept {
        plain.keep(len);
    }
}

/// Account a decrypted packet from `peer`; its length when it goes to the TUN device, `None`
/// when cryptokey routing refuses it.
fn deliver(
    snap: &Snapshot,
    c: &DataPathCounters,
    peer: &Arc<Peer>,
    src: SocketAddr,
    inner_src: IpAddr,
    pkt: &[u8],
) -> Option<usize> {
    peer.set_endpoint(src);
    // Cryptokey routing: the inner source must be one of the sending peer's allowed IPs.
    match snap.allowed.lookup(inner_src) {
        Some(owner) if Arc::ptr_eq(owner, peer) => {}
        _ => {
            add(&c.rx_not_allowed, 1);
            return None;
        }
    }
    peer.add_rx(pkt.len());
    add(&c.rx_packets, 1);
    add(&c.rx_bytes, pkt.len() as u64);
    Some(pkt.len())
}

/// The timer thread: state machine timers every `TIMER_TICK`, rate limiter reset every second.
pub fn run_timers(shared: Arc<Shared>, stop: Arc<AtomicBool>, sock: Arc<UdpSock>) {
    let mut buf = vec![0u8; 2048];
    let mut control = SendBatch::default();
    let mut last_reset = Instant::now();
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(TIMER_TICK);
        let snap = shared.load();
        if last_reset.elapsed() >= Duration::from_secs(1) {
            snap.rate_limiter.reset_count();
            last_reset = Instant::now();
        }
        for peer in snap.by_key.values() {
            let result = peer.lock_tunn().update_timers(&mut buf);
            if let TunnResult::WriteToNetwork(p) = result
                && let Some(ep) = peer.endpoint()
            {
                let p = p.to_vec();
                send_one(&sock, ep, &p, &mut control);
            }
        }
    }
}
