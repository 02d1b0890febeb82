//! The receiving side of the offloads: consecutive TCP segments of one flow among the packets of a
//! receive batch are coalesced into one super-packet that the TUN device takes with a GSO header
//! (TCPv4, NEEDS_CSUM), so the kernel handles one large packet instead of dozens. The rules follow
//! the kernel's own TCP GRO: same addresses, ports, TOS, TTL, DF, ACK number and TCP options, no
//! IP options, only ACK/PSH flags, in-order sequence numbers, every segment the size of the first
//! except a shorter last one, at most 64 KiB and 64 segments. A segment whose TCP checksum is wrong
//! is never merged (it is written alone and the kernel drops it). Everything else is written as it
//! came, in order: packets of one flow never overtake each other. Pure and allocation-free once the
//! caller's buffers have grown to a batch's size.

use std::net::Ipv4Addr;
use std::ops::Range;

use super::checksum;
use super::gso::{F_DATA_VALID, F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, VNET_HDR_LEN, VnetHdr};
use super::ipv4::PROTO_TCP;

const MAX_SEGMENTS: usize = 64;
const MAX_SUPER_PACKET: usize = 65535;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_URG: u8 = 0x20;
const TCP_ECE: u8 = 0x40;
const TCP_CWR: u8 = 0x80;
const NONE: usize = usize::MAX;

/// What a coalescable TCP segment looks like (all offsets assume a 20-byte IPv4 header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TcpSegment {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ports: u32,
    tcp_hdr_len: usize,
    seq: u32,
    ack: u32,
    flags: u8,
    payload_len: usize,
}

/// A TCP segment that may be merged: IPv4 without options, not a fragment, TCP with ACK and at most
/// PSH besides, some payload, and a correct checksum.
fn coalescable(pkt: &[u8]) -> Option<TcpSegment> {
    if pkt.len() < 40 || pkt[0] != 0x45 || pkt[9] != PROTO_TCP {
        return None;
    }
    if u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0 {
        return None; // a fragment
    }
    if usize::from(u16::from_be_bytes([pkt[2], pkt[3]])) != pkt.len() {
        return None;
    }
    let tcp_hdr_len = usize::from(pkt[32] >> 4) * 4;
    if tcp_hdr_len < 20 || 20 + tcp_hdr_len >= pkt.len() {
        return None;
    }
    let flags = pkt[33];
    if flags & TCP_ACK == 0 || flags & (TCP_FIN | TCP_SYN | TCP_RST | TCP_URG | TCP_ECE | TCP_CWR) != 0 {
        return None;
    }
    let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
    let tcp_len = (pkt.len() - 20) as u32;
    if !checksum::verifies(&pkt[20..], checksum::pseudo_header(src, dst, PROTO_TCP, tcp_len)) {
        return None;
    }
    let be32 = |i: usize| u32::from_be_bytes([pkt[i], pkt[i + 1], pkt[i + 2], pkt[i + 3]]);
    Some(TcpSegment {
        src,
        dst,
        ports: be32(20),
        tcp_hdr_len,
        seq: be32(24),
        ack: be32(28),
        flags,
        payload_len: pkt.len() - 20 - tcp_hdr_len,
    })
}

/// One output packet being built: a list of input packets (linked through `Coalescer::next`).
#[derive(Debug, Clone, Copy)]
struct Group {
    first: usize,
    last: usize,
    count: usize,
    seg: Option<TcpSegment>,
    /// Size of the first segment's payload (the GSO size).
    gso_size: usize,
    next_seq: u32,
    total_len: usize,
    open: bool,
}

/// Reusable state of the coalescing (kept by each worker so batches do not allocate).
#[derive(Debug, Default)]
pub struct Coalescer {
    groups: Vec<Group>,
    next: Vec<usize>,
}

/// True when `p` may follow the group's last segment.
fn fits(g: &Group, head: &[u8], p: &[u8], s: &TcpSegment) -> bool {
    let Some(gs) = &g.seg else { return false };
    g.open
        && s.seq == g.next_seq
        && s.ack == gs.ack
        && s.tcp_hdr_len == gs.tcp_hdr_len
        && s.payload_len <= g.gso_size
        && g.count < MAX_SEGMENTS
        && g.total_len + s.payload_len <= MAX_SUPER_PACKET
        && p[1] == head[1] // TOS
        && p[8] == head[8] // TTL
        && (p[6] & 0xe0) == (head[6] & 0xe0) // DF and the reserved bit
        && p[40..20 + s.tcp_hdr_len] == head[40..20 + s.tcp_hdr_len] // TCP options
}

impl Coalescer {
    /// Coalesce `packets` (complete, validated IPv4 packets, in arrival order) into `out`: each
    /// output packet is a virtio-net header followed by the packet; `items` receives their byte
    /// ranges in `out`, in an order that keeps every flow's packets in sequence. `out` and `items`
    /// are cleared first.
    pub fn coalesce(&mut self, packets: &[&[u8]], out: &mut Vec<u8>, items: &mut Vec<Range<usize>>) {
        self.groups.clear();
        self.next.clear();
        self.next.resize(packets.len(), NONE);
        out.clear();
        items.clear();
        for (i, p) in packets.iter().enumerate() {
            let seg = coalescable(p);
            let key = seg.map(|s| (s.src, s.dst, s.ports)).or_else(|| tcp_key(p));
            let mut joined = false;
            // The newest group of the same flow decides: join it or close it.
            if let Some(key) = key {
                if let Some(gi) = self
                    .groups
                    .iter()
                    .rposition(|g| g.open && g.seg.is_some_and(|gs| (gs.src, gs.dst, gs.ports) == key))
                {
                    let g = self.groups[gi];
                    match &seg {
                        Some(s) if fits(&g, packets[g.first], p, s) => {
                            self.next[g.last] = i;
                            let g = &mut self.groups[gi];
                            g.last = i;
                            g.count += 1;
                            g.total_len += s.payload_len;
                            g.next_seq = s.seq.wrapping_add(s.payload_len as u32);
                            g.open = s.payload_len == g.gso_size && s.flags & TCP_PSH == 0;
                            if let Some(gs) = &mut g.seg {
                                gs.flags |= s.flags & TCP_PSH;
                            }
                            joined = true;
                        }
                        _ => self.groups[gi].open = false,
                    }
                }
            }
            if !joined {
                self.groups.push(Group {
                    first: i,
                    last: i,
                    count: 1,
                    seg,
                    gso_size: seg.map_or(0, |s| s.payload_len),
                    next_seq: seg.map_or(0, |s| s.seq.wrapping_add(s.payload_len as u32)),
                    total_len: p.len(),
                    open: seg.is_some_and(|s| s.flags & TCP_PSH == 0),
                });
            }
        }
        for g in &self.groups {
            let start = out.len();
            if g.count == 1 {
                let hdr = VnetHdr {
                    // A segment whose checksum we verified needs no second check by the kernel.
                    flags: if g.seg.is_some() { F_DATA_VALID } else { 0 },
                    gso_type: GSO_NONE,
                    ..VnetHdr::default()
                };
                out.resize(start + VNET_HDR_LEN, 0);
                hdr.encode(&mut out[start..]);
                out.extend_from_slice(packets[g.first]);
                items.push(start..out.len());
                continue;
            }
            let Some(s) = g.seg else { continue };
            let head = packets[g.first];
            let hdr_len = 20 + s.tcp_hdr_len;
            let hdr = VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                hdr_len: hdr_len as u16,
                gso_size: g.gso_size as u16,
                csum_start: 20,
                csum_offset: 16,
            };
            out.resize(start + VNET_HDR_LEN, 0);
            hdr.encode(&mut out[start..]);
            let pkt_start = out.len();
            out.extend_from_slice(&head[..hdr_len]);
            let mut i = g.first;
            let mut last = i;
            while i != NONE {
                out.extend_from_slice(&packets[i][hdr_len..]);
                last = i;
                i = self.next[i];
            }
            let pkt = &mut out[pkt_start..];
            let total = pkt.len();
            pkt[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            super::ipv4::set_header_checksum(pkt);
            pkt[33] |= s.flags & TCP_PSH;
            // The newest window the receiver advertised.
            pkt[34..36].copy_from_slice(&packets[last][34..36]);
            // NEEDS_CSUM: the field holds the folded pseudo-header sum, not its complement.
            let partial = checksum::fold(checksum::pseudo_header(
                s.src,
                s.dst,
                PROTO_TCP,
                (total - 20) as u32,
            ));
            pkt[36..38].copy_from_slice(&partial.to_be_bytes());
            items.push(start..out.len());
        }
    }
}

/// The flow key of any IPv4 TCP packet whose ports can be read (for ordering against groups).
fn tcp_key(p: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, u32)> {
    if p.len() < 20 || p[0] >> 4 != 4 || p[9] != PROTO_TCP {
        return None;
    }
    let hl = usize::from(p[0] & 0x0f) * 4;
    let ports = p.get(hl..hl + 4)?;
    Some((
        Ipv4Addr::new(p[12], p[13], p[14], p[15]),
        Ipv4Addr::new(p[16], p[17], p[18], p[19]),
        u32::from_be_bytes([ports[0], ports[1], ports[2], ports[3]]),
    ))
}
