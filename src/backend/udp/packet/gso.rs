//! The TUN device's offload header (`struct virtio_net_hdr`, IFF_VNET_HDR) and the sending side of
//! the offloads: a TSO (TCPv4) or USO (UDP over IPv4) super-packet read from the TUN device is cut
//! into MTU-sized IPv4 packets, each a complete packet with its own lengths, IP ID, TCP sequence
//! number and checksums, and its TTL decremented, laid out back to back so that one `UDP_SEGMENT`
//! send carries them all (each segment the same size except the last). A single packet that still
//! needs its checksum (NEEDS_CSUM) gets it completed in place. Pure; never panics on any input.

use super::checksum;
use super::ipv4::{self, DropReason, PROTO_TCP, PROTO_UDP, PacketError};

/// `sizeof(struct virtio_net_hdr)`: the header the TUN device puts before (and expects before)
/// every packet with IFF_VNET_HDR.
pub const VNET_HDR_LEN: usize = 10;
pub const F_NEEDS_CSUM: u8 = 1;
pub const F_DATA_VALID: u8 = 2;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
pub const GSO_ECN: u8 = 0x80;

/// `struct virtio_net_hdr`. The TUN driver uses the host's byte order (legacy virtio; we never
/// set TUNSETVNETLE/BE), so the fields are native-endian on every architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn decode(b: &[u8]) -> Option<VnetHdr> {
        let b = b.get(..VNET_HDR_LEN)?;
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    pub fn encode(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
    }
}

fn bad(len: usize, detail: impl Into<String>) -> PacketError {
    PacketError {
        reason: DropReason::BadOffload,
        len,
        detail: detail.into(),
    }
}

/// Complete a partial checksum (NEEDS_CSUM): the 16-bit field at `csum_start + csum_offset`
/// holds the pseudo-header sum; the checksum covers everything from `csum_start` to the end.
pub fn complete_checksum(hdr: &VnetHdr, pkt: &mut [u8]) -> Result<(), PacketError> {
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    if field + 2 > pkt.len() {
        return Err(bad(
            pkt.len(),
            format!("checksum field at {field} lies outside the packet"),
        ));
    }
    let c = checksum::checksum(&pkt[start..], 0);
    pkt[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// A packet read from the TUN device without GSO: complete its checksum if asked and decrement
/// its TTL, in place.
pub fn prepare_single(hdr: &VnetHdr, pkt: &mut [u8]) -> Result<ipv4::Ipv4Header, PacketError> {
    let h = ipv4::parse(pkt)?;
    if hdr.flags & F_NEEDS_CSUM != 0 {
        complete_checksum(hdr, pkt)?;
    }
    let len = pkt.len();
    ipv4::decrement_ttl(pkt).map_err(|ttl| PacketError {
        reason: DropReason::TtlExpired,
        len,
        detail: format!("TTL {ttl}"),
    })?;
    Ok(h)
}

/// The layout of segments written by `segment`: `count` packets back to back, each `seg_len`
/// bytes except the last, `total` bytes in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub seg_len: usize,
    pub count: usize,
    pub total: usize,
}

/// Cut the super-packet `pkt` (described by `hdr`) into complete IPv4 packets in `out`, TTL
/// decremented. TCPv4 (TSO) and UDP over IPv4 (USO); anything else is an error.
pub fn segment(hdr: &VnetHdr, pkt: &[u8], out: &mut [u8]) -> Result<Segments, PacketError> {
    let len = pkt.len();
    let h = ipv4::parse(pkt)?;
    let l4 = h.header_len;
    let (proto, l4_hdr_len) = match hdr.gso_type & !GSO_ECN {
        GSO_TCPV4 => {
            let off = pkt
                .get(l4 + 12)
                .ok_or_else(|| bad(len, "TSO packet without a TCP header"))?;
            (PROTO_TCP, usize::from(off >> 4) * 4)
        }
        GSO_UDP_L4 => (PROTO_UDP, 8),
        other => return Err(bad(len, format!("GSO type {other} is not TCPv4 or UDP_L4"))),
    };
    if h.protocol != proto {
        return Err(bad(
            len,
            format!(
                "GSO type {} on a packet of IP protocol {}",
                hdr.gso_type, h.protocol
            ),
        ));
    }
    if h.frag_offset != 0 || h.more_fragments {
        return Err(bad(len, "GSO on a fragment"));
    }
    if l4_hdr_len < 8 || (proto == PROTO_TCP && l4_hdr_len < 20) {
        return Err(bad(len, format!("L4 header length {l4_hdr_len}")));
    }
    let hdr_len = l4 + l4_hdr_len;
    if hdr_len > len {
        return Err(bad(len, format!("headers of {hdr_len} bytes exceed the packet")));
    }
    let mss = usize::from(hdr.gso_size);
    if mss == 0 {
        return Err(bad(len, "GSO size 0"));
    }
    if h.ttl <= 1 {
        return Err(PacketError {
            reason: DropReason::TtlExpired,
            len,
            detail: format!("TTL {}", h.ttl),
        });
    }
    let payload = &pkt[hdr_len..];
    if payload.is_empty() {
        return Err(bad(len, "GSO packet without payload"));
    }
    let count = payload.len().div_ceil(mss);
    let total = count * hdr_len + payload.len();
    if total > out.len() || hdr_len + mss > usize::from(u16::MAX) {
        return Err(bad(
            len,
            format!(
                "{count} segments of {} bytes do not fit the buffer",
                hdr_len + mss
            ),
        ));
    }
    let id = u16::from_be_bytes([pkt[4], pkt[5]]);
    let seq = if proto == PROTO_TCP {
        u32::from_be_bytes([pkt[l4 + 4], pkt[l4 + 5], pkt[l4 + 6], pkt[l4 + 7]])
    } else {
        0
    };
    let mut at = 0;
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let seg_len = hdr_len + chunk.len();
        let seg = &mut out[at..at + seg_len];
        seg[..hdr_len].copy_from_slice(&pkt[..hdr_len]);
        seg[hdr_len..].copy_from_slice(chunk);
        seg[2..4].copy_from_slice(&(seg_len as u16).to_be_bytes());
        seg[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
        seg[8] = h.ttl - 1;
        ipv4::set_header_checksum(seg);
        let l4_len = (seg_len - l4) as u32;
        if proto == PROTO_TCP {
            let s = seq.wrapping_add((i * mss) as u32);
            seg[l4 + 4..l4 + 8].copy_from_slice(&s.to_be_bytes());
            let last = i + 1 == count;
            if !last {
                seg[l4 + 13] &= !(0x01 | 0x08); // FIN, PSH only on the last segment
            }
            if i > 0 {
                seg[l4 + 13] &= !0x80; // CWR only on the first
            }
            seg[l4 + 16] = 0;
            seg[l4 + 17] = 0;
            let c = checksum::checksum(
                &seg[l4..],
                checksum::pseudo_header(h.src, h.dst, PROTO_TCP, l4_len),
            );
            seg[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        } else {
            seg[l4 + 4..l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            seg[l4 + 6] = 0;
            seg[l4 + 7] = 0;
            let c = checksum::checksum(
                &seg[l4..],
                checksum::pseudo_header(h.src, h.dst, PROTO_UDP, l4_len),
            );
            let c = if c == 0 { 0xffff } else { c };
            seg[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
        }
        at += seg_len;
    }
    let seg_len = if count == 1 { total } else { hdr_len + mss };
    Ok(Segments {
        seg_len,
        count,
        total,
    })
}
