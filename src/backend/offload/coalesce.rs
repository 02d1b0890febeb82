//! The receiving side of the offloads: consecutive TCP segments of one flow among the packets of a
//! receive batch are coalesced into one super-packet that the TUN device takes with a GSO header
//! (TCPv4 or TCPv6, NEEDS_CSUM), so the kernel handles one large packet instead of dozens. The
//! rules follow the kernel's own TCP GRO: same addresses, ports, TOS/traffic class, TTL/hop limit,
//! DF, ACK number, data offset and TCP options, no IPv4 options or IPv6 extension headers, only
//! ACK/PSH flags, in-order sequence numbers, every segment the size of the first except a shorter
//! last one, at most 64 KiB and 64 segments. With `Integrity::Plain` a segment whose TCP checksum
//! is wrong is never merged (it is written alone and the kernel drops it). Everything else is
//! written as it came, in order: packets of one flow never overtake each other. Allocation-free
//! once the caller's buffers have grown to a batch's size.

use std::net::IpAddr;
use std::ops::Range;

use super::vnet::{F_DATA_VALID, F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6, VNET_HDR_LEN, VnetHdr};
use super::{MAX_SUPER_PACKET, PROTO_TCP, checksum};

const MAX_SEGMENTS: usize = 64;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_URG: u8 = 0x20;
const TCP_ECE: u8 = 0x40;
const TCP_CWR: u8 = 0x80;
const NONE: usize = usize::MAX;

/// What vouches for the bytes of a received packet; each backend states its own and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    /// Nothing does: every TCP checksum is verified before a segment is merged (the merged
    /// packet gets a fresh partial checksum the kernel trusts, which would hide a corrupted
    /// segment), and only verified segments are marked DATA_VALID.
    Plain,
    /// The transport authenticated every byte since the sender computed its checksums: nothing is
    /// verified again, and every packet is marked DATA_VALID.
    Authenticated,
}

type FlowKey = (IpAddr, IpAddr, u32);

/// What a coalescable TCP segment looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TcpSegment {
    key: FlowKey,
    v6: bool,
    /// IP header length: 20 (no options) or 40 (no extension headers).
    iphl: usize,
    tcp_hdr_len: usize,
    seq: u32,
    ack: u32,
    flags: u8,
    payload_len: usize,
}

fn addrs(p: &[u8], v6: bool) -> (IpAddr, IpAddr) {
    if v6 {
        let (mut src, mut dst) = ([0u8; 16], [0u8; 16]);
        src.copy_from_slice(&p[8..24]);
        dst.copy_from_slice(&p[24..40]);
        (IpAddr::from(src), IpAddr::from(dst))
    } else {
        (
            IpAddr::from([p[12], p[13], p[14], p[15]]),
            IpAddr::from([p[16], p[17], p[18], p[19]]),
        )
    }
}

/// A TCP segment that may be merged: IPv4 without options and not a fragment, or IPv6 without
/// extension headers; lengths that match the packet; TCP with ACK and at most PSH besides, some
/// payload, and (with `Integrity::Plain`) a correct checksum.
fn coalescable(pkt: &[u8], integrity: Integrity) -> Option<TcpSegment> {
    let (v6, iphl) = match pkt.first()? >> 4 {
        4 => {
            if pkt.len() < 40 || pkt[0] != 0x45 || pkt[9] != PROTO_TCP {
                return None;
            }
            if u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0 {
                return None; // a fragment
            }
            if usize::from(u16::from_be_bytes([pkt[2], pkt[3]])) != pkt.len() {
                return None;
            }
            (false, 20)
        }
        6 => {
            if pkt.len() < 60 || pkt[6] != PROTO_TCP {
                return None;
            }
            if 40 + usize::from(u16::from_be_bytes([pkt[4], pkt[5]])) != pkt.len() {
                return None;
            }
            (true, 40)
        }
        _ => return None,
    };
    let tcp_hdr_len = usize::from(pkt[iphl + 12] >> 4) * 4;
    if tcp_hdr_len < 20 || iphl + tcp_hdr_len >= pkt.len() {
        return None;
    }
    let flags = pkt[iphl + 13];
    if flags & TCP_ACK == 0 || flags & (TCP_FIN | TCP_SYN | TCP_RST | TCP_URG | TCP_ECE | TCP_CWR) != 0 {
        return None;
    }
    let tcp_len = pkt.len() - iphl;
    if integrity == Integrity::Plain
        && !checksum::verifies(
            &pkt[iphl..],
            checksum::pseudo_header_of(pkt, v6, PROTO_TCP, tcp_len),
        )
    {
        return None;
    }
    let be32 = |i: usize| u32::from_be_bytes([pkt[i], pkt[i + 1], pkt[i + 2], pkt[i + 3]]);
    let (src, dst) = addrs(pkt, v6);
    Some(TcpSegment {
        key: (src, dst, be32(iphl)),
        v6,
        iphl,
        tcp_hdr_len,
        seq: be32(iphl + 4),
        ack: be32(iphl + 8),
        flags,
        payload_len: tcp_len - tcp_hdr_len,
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

/// Reusable state of the coalescing (kept by each packet thread so batches do not allocate).
#[derive(Debug)]
pub struct Coalescer {
    integrity: Integrity,
    groups: Vec<Group>,
    next: Vec<usize>,
}

/// True when `p` may follow the group's last segment.
fn fits(g: &Group, head: &[u8], p: &[u8], s: &TcpSegment) -> bool {
    let Some(gs) = &g.seg else { return false };
    let t = gs.iphl;
    let same_ip = if gs.v6 {
        p[..4] == head[..4] // version, traffic class, flow label
            && p[7] == head[7] // hop limit
    } else {
        p[1] == head[1] // TOS
            && p[8] == head[8] // TTL
            && (p[6] & 0xe0) == (head[6] & 0xe0) // DF and the reserved bit
    };
    g.open
        && s.seq == g.next_seq
        && s.ack == gs.ack
        && s.v6 == gs.v6
        && s.tcp_hdr_len == gs.tcp_hdr_len
        && s.payload_len <= g.gso_size
        && g.count < MAX_SEGMENTS
        && g.total_len + s.payload_len <= MAX_SUPER_PACKET
        && same_ip
        && p[t + 12] == head[t + 12] // data offset and the reserved bits
        && p[t + 20..t + s.tcp_hdr_len] == head[t + 20..t + s.tcp_hdr_len] // TCP options
}

impl Coalescer {
    pub fn new(integrity: Integrity) -> Coalescer {
        Coalescer {
            integrity,
            groups: Vec::new(),
            next: Vec::new(),
        }
    }

    /// Coalesce `packets` (complete IP packets, in arrival order) into `out`: each output packet
    /// is a virtio-net header followed by the packet; `items` receives their byte ranges in `out`,
    /// in an order that keeps every flow's packets in sequence. `out` and `items` are cleared
    /// first.
    pub fn coalesce(&mut self, packets: &[&[u8]], out: &mut Vec<u8>, items: &mut Vec<Range<usize>>) {
        self.coalesce_by(packets.len(), |i| packets[i], out, items);
    }

    /// `coalesce` over `count` packets that `packet(i)` returns (packets kept back to back in one
    /// buffer need no list of slices).
    pub fn coalesce_by<'p>(
        &mut self,
        count: usize,
        packet: impl Fn(usize) -> &'p [u8],
        out: &mut Vec<u8>,
        items: &mut Vec<Range<usize>>,
    ) {
        self.groups.clear();
        self.next.clear();
        self.next.resize(count, NONE);
        out.clear();
        items.clear();
        for i in 0..count {
            let p = packet(i);
            let seg = coalescable(p, self.integrity);
            let key = seg.map(|s| s.key).or_else(|| tcp_key(p));
            let mut joined = false;
            // The newest group of the same flow decides: join it or close it.
            if let Some(key) = key
                && let Some(gi) = self
                    .groups
                    .iter()
                    .rposition(|g| g.open && g.seg.is_some_and(|gs| gs.key == key))
            {
                let g = self.groups[gi];
                match &seg {
                    Some(s) if fits(&g, packet(g.first), p, s) => {
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
                let valid = match self.integrity {
                    // A segment whose checksum we verified needs no second check by the kernel.
                    Integrity::Plain => g.seg.is_some(),
                    Integrity::Authenticated => true,
                };
                let hdr = VnetHdr {
                    flags: if valid { F_DATA_VALID } else { 0 },
                    gso_type: GSO_NONE,
                    ..VnetHdr::default()
                };
                out.resize(start + VNET_HDR_LEN, 0);
                hdr.encode(&mut out[start..]);
                out.extend_from_slice(packet(g.first));
                items.push(start..out.len());
                continue;
            }
            let Some(s) = g.seg else { continue };
            let head = packet(g.first);
            let iphl = s.iphl;
            let hdr_len = iphl + s.tcp_hdr_len;
            let hdr = VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: if s.v6 { GSO_TCPV6 } else { GSO_TCPV4 },
                hdr_len: hdr_len as u16,
                gso_size: g.gso_size as u16,
                csum_start: iphl as u16,
                csum_offset: 16,
            };
            out.resize(start + VNET_HDR_LEN, 0);
            hdr.encode(&mut out[start..]);
            let pkt_start = out.len();
            out.extend_from_slice(&head[..hdr_len]);
            let mut i = g.first;
            let mut last = i;
            while i != NONE {
                out.extend_from_slice(&packet(i)[hdr_len..]);
                last = i;
                i = self.next[i];
            }
            let pkt = &mut out[pkt_start..];
            let total = pkt.len();
            if s.v6 {
                pkt[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
            } else {
                pkt[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                checksum::set_ipv4_header(pkt);
            }
            pkt[iphl + 13] |= s.flags & TCP_PSH;
            // The newest window the receiver advertised.
            pkt[iphl + 14..iphl + 16].copy_from_slice(&packet(last)[iphl + 14..iphl + 16]);
            // NEEDS_CSUM: the field holds the folded pseudo-header sum, not its complement.
            let partial = checksum::fold(checksum::pseudo_header_of(pkt, s.v6, PROTO_TCP, total - iphl));
            pkt[iphl + 16..iphl + 18].copy_from_slice(&partial.to_be_bytes());
            items.push(start..out.len());
        }
    }
}

/// The flow key of any TCP packet (IPv4, or IPv6 without extension headers) whose ports can be
/// read (for ordering against groups).
fn tcp_key(p: &[u8]) -> Option<FlowKey> {
    let (v6, hl) = match p.first()? >> 4 {
        4 if p.len() >= 20 && p[9] == PROTO_TCP => (false, usize::from(p[0] & 0x0f) * 4),
        6 if p.len() >= 40 && p[6] == PROTO_TCP => (true, 40),
        _ => return None,
    };
    let ports = p.get(hl..hl + 4)?;
    let (src, dst) = addrs(p, v6);
    Some((
        src,
        dst,
        u32::from_be_bytes([ports[0], ports[1], ports[2], ports[3]]),
    ))
}
