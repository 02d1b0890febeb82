//! The sending side of the offloads: a TSO (TCP over IPv4 or IPv6) or USO (UDP) super-packet read
//! from the TUN device is cut into packets of at most `gso_size` bytes of payload, each a complete
//! packet with its own lengths, IPv4 ID, TCP sequence number, flags and checksums. `segment` lays
//! them out back to back (one `UDP_SEGMENT` send carries them all; each segment the same size
//! except the last); `split` builds them one at a time in a scratch buffer and hands each to the
//! caller (to encrypt it, for example), and passes a packet without GSO through, its partial
//! checksum completed. Both check the request the same way (`plan`).

use super::vnet::{F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VnetHdr};
use super::{OffloadError, PROTO_TCP, PROTO_UDP, checksum, complete_checksum};

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// How a data path segments; each backend states its own and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segmenting {
    /// The GSO types (the ECN bit aside) this data path takes: the ones its TUN device was offered
    /// with TUNSETOFFLOAD. The kernel hands us no others, so any other is refused as
    /// `OffloadError::Unsupported`.
    pub gso_types: &'static [u8],
    /// The data path is a router hop of its own and decrements the TTL (IPv4) or hop limit (IPv6)
    /// of every segment; a super-packet whose TTL would run out is `OffloadError::TtlExpired`.
    pub decrement_ttl: bool,
}

/// The layout of segments written by `segment`: `count` packets back to back, each `seg_len`
/// bytes except the last, `total` bytes in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub seg_len: usize,
    pub count: usize,
    pub total: usize,
}

/// A checked segmentation request: where the headers are and how the segments are cut.
#[derive(Debug, Clone, Copy)]
struct Plan {
    v6: bool,
    /// Start of the L4 header (the IP header length).
    l4: usize,
    proto: u8,
    /// IP plus L4 header length, copied into every segment.
    hdr_len: usize,
    mss: usize,
    count: usize,
    /// `count` segments back to back.
    total: usize,
    /// The first segment's IPv4 ID (each next one counts up).
    id: u16,
    /// The first segment's TCP sequence number.
    seq: u32,
    /// The TTL or hop limit to write into every segment, when it is decremented.
    ttl: Option<u8>,
}

fn plan(hdr: &VnetHdr, pkt: &[u8], how: &Segmenting) -> Result<Plan, OffloadError> {
    let len = pkt.len();
    let gso_type = hdr.gso_type & !GSO_ECN;
    if !how.gso_types.contains(&gso_type) {
        return Err(OffloadError::Unsupported(gso_type));
    }
    let version = pkt.first().ok_or(OffloadError::Truncated)? >> 4;
    let (v6, l4, protocol) = match version {
        4 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            if ihl < 20 || len < ihl {
                return Err(OffloadError::Truncated);
            }
            (false, ihl, pkt[9])
        }
        6 if len >= 40 => (true, 40, pkt[6]),
        6 => return Err(OffloadError::Truncated),
        other => return Err(OffloadError::NotIp(other)),
    };
    let (proto, l4_hdr_len) = match gso_type {
        GSO_TCPV4 | GSO_TCPV6 => {
            if v6 != (gso_type == GSO_TCPV6) {
                return Err(OffloadError::FamilyMismatch {
                    gso_type: hdr.gso_type,
                    version,
                });
            }
            let off = pkt.get(l4 + 12).ok_or(OffloadError::NoTcpHeader)?;
            (PROTO_TCP, usize::from(off >> 4) * 4)
        }
        GSO_UDP_L4 => (PROTO_UDP, 8),
        other => return Err(OffloadError::Unsupported(other)),
    };
    if protocol != proto {
        return Err(OffloadError::ProtocolMismatch {
            gso_type: hdr.gso_type,
            protocol,
        });
    }
    if !v6 && u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0 {
        return Err(OffloadError::Fragment);
    }
    if l4_hdr_len < 8 || (proto == PROTO_TCP && l4_hdr_len < 20) {
        return Err(OffloadError::L4HeaderLength(l4_hdr_len));
    }
    let hdr_len = l4 + l4_hdr_len;
    if hdr_len > len {
        return Err(OffloadError::HeadersExceedPacket(hdr_len));
    }
    let mss = usize::from(hdr.gso_size);
    if mss == 0 {
        return Err(OffloadError::GsoSizeZero);
    }
    let ttl = if how.decrement_ttl {
        let ttl = pkt[if v6 { 7 } else { 8 }];
        if ttl <= 1 {
            return Err(OffloadError::TtlExpired(ttl));
        }
        Some(ttl - 1)
    } else {
        None
    };
    let payload = len - hdr_len;
    if payload == 0 {
        return Err(OffloadError::NoPayload);
    }
    let count = payload.div_ceil(mss);
    if hdr_len + mss > usize::from(u16::MAX) {
        return Err(OffloadError::DoesNotFit {
            count,
            seg_len: hdr_len + mss,
        });
    }
    let seq = if proto == PROTO_TCP {
        u32::from_be_bytes([pkt[l4 + 4], pkt[l4 + 5], pkt[l4 + 6], pkt[l4 + 7]])
    } else {
        0
    };
    Ok(Plan {
        v6,
        l4,
        proto,
        hdr_len,
        mss,
        count,
        total: count * hdr_len + payload,
        id: if v6 {
            0
        } else {
            u16::from_be_bytes([pkt[4], pkt[5]])
        },
        seq,
        ttl,
    })
}

/// Build segment `i` (its payload `chunk`) in `seg`, exactly `hdr_len + chunk.len()` bytes.
fn write_segment(p: &Plan, pkt: &[u8], i: usize, chunk: &[u8], seg: &mut [u8]) {
    let (l4, hdr_len) = (p.l4, p.hdr_len);
    let seg_len = seg.len();
    seg[..hdr_len].copy_from_slice(&pkt[..hdr_len]);
    seg[hdr_len..].copy_from_slice(chunk);
    if p.v6 {
        seg[4..6].copy_from_slice(&((seg_len - 40) as u16).to_be_bytes());
        if let Some(hops) = p.ttl {
            seg[7] = hops;
        }
    } else {
        seg[2..4].copy_from_slice(&(seg_len as u16).to_be_bytes());
        seg[4..6].copy_from_slice(&p.id.wrapping_add(i as u16).to_be_bytes());
        if let Some(ttl) = p.ttl {
            seg[8] = ttl;
        }
        checksum::set_ipv4_header(seg);
    }
    let l4_len = seg_len - l4;
    let pseudo = checksum::pseudo_header_of(seg, p.v6, p.proto, l4_len);
    if p.proto == PROTO_TCP {
        let s = p.seq.wrapping_add((i * p.mss) as u32);
        seg[l4 + 4..l4 + 8].copy_from_slice(&s.to_be_bytes());
        if i + 1 != p.count {
            seg[l4 + 13] &= !(TCP_FIN | TCP_PSH); // FIN, PSH only on the last segment
        }
        if i > 0 {
            seg[l4 + 13] &= !TCP_CWR; // CWR only on the first
        }
        seg[l4 + 16] = 0;
        seg[l4 + 17] = 0;
        let c = checksum::checksum(&seg[l4..], pseudo);
        seg[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
    } else {
        seg[l4 + 4..l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        seg[l4 + 6] = 0;
        seg[l4 + 7] = 0;
        let c = checksum::checksum(&seg[l4..], pseudo);
        let c = if c == 0 { 0xffff } else { c };
        seg[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
    }
}

/// Cut the super-packet `pkt` (described by `hdr`) into complete packets laid out back to back
/// in `out`; anything `how` does not take, or that does not fit `out`, is an error.
pub fn segment(
    hdr: &VnetHdr,
    pkt: &[u8],
    out: &mut [u8],
    how: &Segmenting,
) -> Result<Segments, OffloadError> {
    let p = plan(hdr, pkt, how)?;
    if p.total > out.len() {
        return Err(OffloadError::DoesNotFit {
            count: p.count,
            seg_len: p.hdr_len + p.mss,
        });
    }
    let mut at = 0;
    for (i, chunk) in pkt[p.hdr_len..].chunks(p.mss).enumerate() {
        let seg_len = p.hdr_len + chunk.len();
        write_segment(&p, pkt, i, chunk, &mut out[at..at + seg_len]);
        at += seg_len;
    }
    let seg_len = if p.count == 1 { p.total } else { p.hdr_len + p.mss };
    Ok(Segments {
        seg_len,
        count: p.count,
        total: p.total,
    })
}

/// Turn one TUN read (`hdr` and the packet after it) into plain packets handed to `emit` one at a
/// time: a super-packet is cut into segments built in `scratch` (one segment at a time, so
/// `MAX_SUPER_PACKET` bytes always suffice); a packet without GSO is passed on in place, its
/// partial checksum completed when the header asks for it.
pub fn split(
    hdr: &VnetHdr,
    pkt: &mut [u8],
    scratch: &mut [u8],
    how: &Segmenting,
    mut emit: impl FnMut(&mut [u8]),
) -> Result<(), OffloadError> {
    if hdr.gso_type & !GSO_ECN == GSO_NONE {
        if hdr.flags & F_NEEDS_CSUM != 0 {
            complete_checksum(pkt, usize::from(hdr.csum_start), usize::from(hdr.csum_offset))?;
        }
        emit(pkt);
        return Ok(());
    }
    let p = plan(hdr, pkt, how)?;
    for (i, chunk) in pkt[p.hdr_len..].chunks(p.mss).enumerate() {
        let seg_len = p.hdr_len + chunk.len();
        let seg = scratch.get_mut(..seg_len).ok_or(OffloadError::DoesNotFit {
            count: p.count,
            seg_len: p.hdr_len + p.mss,
        })?;
        write_segment(&p, pkt, i, chunk, seg);
        emit(seg);
    }
    Ok(())
}
