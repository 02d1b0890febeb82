//! TUN offloads, pure on byte buffers: the `virtio_net_hdr` that prefixes every packet on a TUN
//! device opened with IFF_VNET_HDR, splitting a TCP super-packet the kernel hands us (TSO) into
//! MTU-sized packets with complete checksums, completing a partial checksum, and coalescing
//! consecutive decrypted TCP segments of one flow into one super-packet for the kernel (GRO), so
//! one TUN read or write moves up to 64 KiB instead of one packet.
//!
//! Everything here treats its input as untrusted: a malformed packet is an `Err`, never a panic.

/// `struct virtio_net_hdr` (without `num_buffers`), as TUNSETVNETHDRSZ 10 expects.
pub const VNET_HDR_LEN: usize = 10;
pub const F_NEEDS_CSUM: u8 = 1;
pub const F_DATA_VALID: u8 = 2;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_ECN: u8 = 0x80;
/// The largest packet a TUN read or write carries (IPv4 total length is 16 bits).
pub const MAX_SUPER_PACKET: usize = 65535;
/// Segments merged into one super-packet at most (the kernel's GRO limit).
const MAX_SEGMENTS: usize = 64;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_URG: u8 = 0x20;
const TCP_CWR: u8 = 0x80;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    #[error("packet too short for its headers")]
    Truncated,
    #[error("unsupported offload request (gso type {0})")]
    Unsupported(u8),
    #[error("checksum offsets outside the packet")]
    BadChecksumOffset,
    #[error("not a TCP packet the offload can segment")]
    NotTcp,
}

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
    /// Little-endian fields (TUN uses the host's order; this is x86/arm64 little endian).
    pub fn parse(b: &[u8]) -> Result<VnetHdr, OffloadError> {
        if b.len() < VNET_HDR_LEN {
            return Err(OffloadError::Truncated);
        }
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Ok(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    pub fn write(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }
}

/// Ones' complement sum of `data` as big-endian 16-bit words, added to `acc` (unfolded).
pub fn sum16(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        acc += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        acc += u64::from(u16::from_be_bytes([rest[i], rest[i + 1]]));
        i += 2;
    }
    if i < rest.len() {
        acc += u64::from(rest[i]) << 8;
    }
    acc
}

pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The TCP/UDP pseudo-header sum for a packet with IP header at the start.
fn pseudo_sum(pkt: &[u8], v6: bool, proto: u8, l4_len: usize) -> u64 {
    let addrs = if v6 { &pkt[8..40] } else { &pkt[12..20] };
    sum16(addrs, u64::from(proto) + l4_len as u64)
}

/// Where the TCP header starts and how long the IP+TCP headers are; checks the packet.
fn tcp_layout(pkt: &[u8]) -> Result<(bool, usize, usize), OffloadError> {
    let version = pkt.first().ok_or(OffloadError::Truncated)? >> 4;
    let (v6, iphl) = match version {
        4 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            if ihl < 20 || pkt.len() < ihl + 20 {
                return Err(OffloadError::Truncated);
            }
            if pkt[9] != 6 {
                return Err(OffloadError::NotTcp);
            }
            (false, ihl)
        }
        6 => {
            if pkt.len() < 60 {
                return Err(OffloadError::Truncated);
            }
            if pkt[6] != 6 {
                return Err(OffloadError::NotTcp);
            }
            (true, 40)
        }
        _ => return Err(OffloadError::NotTcp),
    };
    let thl = usize::from(pkt[iphl + 12] >> 4) * 4;
    if thl < 20 || pkt.len() < iphl + thl {
        return Err(OffloadError::Truncated);
    }
    Ok((v6, iphl, iphl + thl))
}

fn ipv4_header_checksum(pkt: &mut [u8], ihl: usize) {
    pkt[10] = 0;
    pkt[11] = 0;
    let c = !fold(sum16(&pkt[..ihl], 0));
    pkt[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Fill in the full TCP checksum of a packet whose IP and TCP headers are final.
fn tcp_checksum(pkt: &mut [u8], v6: bool, iphl: usize) {
    let l4_len = pkt.len() - iphl;
    pkt[iphl + 16] = 0;
    pkt[iphl + 17] = 0;
    let c = !fold(sum16(&pkt[iphl..], pseudo_sum(pkt, v6, 6, l4_len)));
    pkt[iphl + 16..iphl + 18].copy_from_slice(&c.to_be_bytes());
}

/// Complete a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM): the field at
/// `csum_start + csum_offset` holds the pseudo-header sum; sum from `csum_start` to the end.
pub fn complete_checksum(pkt: &mut [u8], csum_start: usize, csum_offset: usize) -> Result<(), OffloadError> {
    let field = csum_start
        .checked_add(csum_offset)
        .ok_or(OffloadError::BadChecksumOffset)?;
    if field + 2 > pkt.len() || csum_start > pkt.len() {
        return Err(OffloadError::BadChecksumOffset);
    }
    let mut c = !fold(sum16(&pkt[csum_start..], 0));
    if c == 0 && pkt.first().is_some_and(|b| b >> 4 == 4) && pkt.get(9) == Some(&17) {
        c = 0xffff; // UDP over IPv4: 0 means "no checksum"
    }
    pkt[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Turn one TUN read (`hdr` and the packet after it) into plain IP packets: a TCP super-packet
/// is split at `gso_size`, a partial checksum completed. Each packet is built in `scratch`
/// (at least `MAX_SUPER_PACKET` bytes) or in `pkt` itself and handed to `emit`.
pub fn split(
    hdr: &VnetHdr,
    pkt: &mut [u8],
    scratch: &mut [u8],
    mut emit: impl FnMut(&mut [u8]),
) -> Result<(), OffloadError> {
    match hdr.gso_type & !GSO_ECN {
        GSO_NONE => {
            if hdr.flags & F_NEEDS_CSUM != 0 {
                complete_checksum(pkt, usize::from(hdr.csum_start), usize::from(hdr.csum_offset))?;
            }
            emit(pkt);
            Ok(())
        }
        GSO_TCPV4 | GSO_TCPV6 => split_tcp(pkt, usize::from(hdr.gso_size), scratch, emit),
        other => Err(OffloadError::Unsupported(other)),
    }
}

fn split_tcp(
    pkt: &[u8],
    mss: usize,
    scratch: &mut [u8],
    mut emit: impl FnMut(&mut [u8]),
) -> Result<(), OffloadError> {
    let (v6, iphl, hl) = tcp_layout(pkt)?;
    if mss == 0 {
        return Err(OffloadError::Unsupported(0));
    }
    let payload = &pkt[hl..];
    if payload.is_empty() {
        let seg = scratch.get_mut(..pkt.len()).ok_or(OffloadError::Truncated)?;
        seg.copy_from_slice(pkt);
        finish_segment(seg, v6, iphl);
        emit(seg);
        return Ok(());
    }
    let seq = u32::from_be_bytes([pkt[iphl + 4], pkt[iphl + 5], pkt[iphl + 6], pkt[iphl + 7]]);
    let id = u16::from_be_bytes([pkt[4], pkt[5]]);
    let flags = pkt[iphl + 13];
    let count = payload.len().div_ceil(mss);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let len = hl + chunk.len();
        let seg = scratch.get_mut(..len).ok_or(OffloadError::Truncated)?;
        seg[..hl].copy_from_slice(&pkt[..hl]);
        seg[hl..].copy_from_slice(chunk);
        if v6 {
            seg[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        } else {
            seg[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            seg[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
        }
        let offset = (i * mss) as u32;
        seg[iphl + 4..iphl + 8].copy_from_slice(&seq.wrapping_add(offset).to_be_bytes());
        let mut f = flags;
        if i + 1 < count {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            f &= !TCP_CWR;
        }
        seg[iphl + 13] = f;
        finish_segment(seg, v6, iphl);
        emit(seg);
    }
    Ok(())
}

fn finish_segment(seg: &mut [u8], v6: bool, iphl: usize) {
    if !v6 {
        ipv4_header_checksum(seg, iphl);
    }
    tcp_checksum(seg, v6, iphl);
}

/// The flow a super-packet under construction belongs to.
struct Flow {
    v6: bool,
    iphl: usize,
    hl: usize,
    mss: usize,
    segments: usize,
    next_seq: u32,
    /// No more segments may follow (a short one or PSH arrived).
    closed: bool,
}

/// Coalesces decrypted TCP segments into super-packets for TUN writes (with their vnet header).
pub struct Coalescer {
    buf: Vec<u8>,
    flow: Option<Flow>,
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer {
            buf: Vec::with_capacity(VNET_HDR_LEN + MAX_SUPER_PACKET),
            flow: None,
        }
    }
}

/// Header bytes two segments must share to be merged: IP (addresses, version, TOS/traffic
/// class, TTL/hop limit, protocol, DF) and TCP (ports, ack, data offset, flags but PSH,
/// options). Sequence numbers, lengths, IDs, checksums and the window may differ.
fn same_headers(a: &[u8], b: &[u8], v6: bool, iphl: usize, hl: usize) -> bool {
    let ip_same = if v6 {
        a[..4] == b[..4] && a[6..8] == b[6..8] && a[8..40] == b[8..40]
    } else {
        a[..2] == b[..2] && (a[6] & 0x40) == (b[6] & 0x40) && a[8..10] == b[8..10] && a[12..20] == b[12..20]
    };
    let t = iphl;
    ip_same
        && a[t..t + 4] == b[t..t + 4]
        && a[t + 8..t + 13] == b[t + 8..t + 13]
        && (a[t + 13] & !TCP_PSH) == (b[t + 13] & !TCP_PSH)
        && a[t + 20..hl] == b[t + 20..hl]
}

/// A segment that may start or join a super-packet: TCP with payload, no SYN/FIN/RST/URG/CWR,
/// IPv4 without options or fragmentation, IPv6 without extension headers.
fn mergeable(pkt: &[u8]) -> Option<(bool, usize, usize)> {
    let (v6, iphl, hl) = tcp_layout(pkt).ok()?;
    let ip_len = if v6 {
        40 + usize::from(u16::from_be_bytes([pkt[4], pkt[5]]))
    } else {
        if iphl != 20 || (u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff) != 0 {
            return None;
        }
        usize::from(u16::from_be_bytes([pkt[2], pkt[3]]))
    };
    let flags = pkt[iphl + 13];
    (ip_len == pkt.len() && pkt.len() > hl && flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_URG | TCP_CWR) == 0)
        .then_some((v6, iphl, hl))
}

impl Coalescer {
    /// Add one decrypted packet; whatever can no longer grow is handed to `write` first.
    pub fn push(&mut self, pkt: &[u8], write: &mut impl FnMut(&[u8])) {
        if let Some((v6, iphl, hl)) = mergeable(pkt) {
            if self.try_append(pkt, v6, iphl, hl) {
                return;
            }
            self.flush(write);
            self.start(pkt, v6, iphl, hl);
            return;
        }
        self.flush(write);
        self.buf.clear();
        self.buf.resize(VNET_HDR_LEN, 0);
        VnetHdr {
            flags: F_DATA_VALID,
            ..VnetHdr::default()
        }
        .write(&mut self.buf);
        self.buf.extend_from_slice(pkt);
        write(&self.buf);
        self.buf.clear();
    }

    fn start(&mut self, pkt: &[u8], v6: bool, iphl: usize, hl: usize) {
        self.buf.clear();
        self.buf.resize(VNET_HDR_LEN, 0);
        self.buf.extend_from_slice(pkt);
        let seq = u32::from_be_bytes([pkt[iphl + 4], pkt[iphl + 5], pkt[iphl + 6], pkt[iphl + 7]]);
        let mss = pkt.len() - hl;
        self.flow = Some(Flow {
            v6,
            iphl,
            hl,
            mss,
            segments: 1,
            next_seq: seq.wrapping_add(mss as u32),
            closed: pkt[iphl + 13] & TCP_PSH != 0,
        });
    }

    fn try_append(&mut self, pkt: &[u8], v6: bool, iphl: usize, hl: usize) -> bool {
        let Some(flow) = self.flow.as_mut() else {
            return false;
        };
        let payload = pkt.len() - hl;
        let seq = u32::from_be_bytes([pkt[iphl + 4], pkt[iphl + 5], pkt[iphl + 6], pkt[iphl + 7]]);
        let head = &self.buf[VNET_HDR_LEN..];
        if flow.closed
            || flow.v6 != v6
            || flow.iphl != iphl
            || flow.hl != hl
            || seq != flow.next_seq
            || payload > flow.mss
            || flow.segments >= MAX_SEGMENTS
            || head.len() + payload > MAX_SUPER_PACKET
            || !same_headers(head, pkt, v6, iphl, hl)
        {
            return false;
        }
        let psh = pkt[iphl + 13] & TCP_PSH;
        self.buf[VNET_HDR_LEN + iphl + 13] |= psh;
        self.buf.extend_from_slice(&pkt[hl..]);
        flow.segments += 1;
        flow.next_seq = seq.wrapping_add(payload as u32);
        flow.closed = psh != 0 || payload < flow.mss;
        true
    }

    /// Hand the super-packet under construction (if any) to `write`.
    pub fn flush(&mut self, write: &mut impl FnMut(&[u8])) {
        let Some(flow) = self.flow.take() else { return };
        let pkt_len = self.buf.len() - VNET_HDR_LEN;
        let (hdr_bytes, pkt) = self.buf.split_at_mut(VNET_HDR_LEN);
        let hdr = if flow.segments == 1 {
            VnetHdr {
                flags: F_DATA_VALID,
                ..VnetHdr::default()
            }
        } else {
            let iphl = flow.iphl;
            if flow.v6 {
                pkt[4..6].copy_from_slice(&((pkt_len - 40) as u16).to_be_bytes());
            } else {
                pkt[2..4].copy_from_slice(&(pkt_len as u16).to_be_bytes());
                ipv4_header_checksum(pkt, iphl);
            }
            // The kernel completes the checksum: the field holds the pseudo-header sum.
            let partial = fold(pseudo_sum(pkt, flow.v6, 6, pkt_len - iphl));
            pkt[iphl + 16..iphl + 18].copy_from_slice(&partial.to_be_bytes());
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: if flow.v6 { GSO_TCPV6 } else { GSO_TCPV4 },
                hdr_len: flow.hl as u16,
                gso_size: flow.mss as u16,
                csum_start: iphl as u16,
                csum_offset: 16,
            }
        };
        hdr.write(hdr_bytes);
        write(&self.buf);
        self.buf.clear();
    }
}

#[cfg(test)]
#[path = "offload_tests.rs"]
mod tests;
