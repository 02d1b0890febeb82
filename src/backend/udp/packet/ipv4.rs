//! IPv4 packets on byte buffers: header parsing and the receive-side validation of a datagram
//! (spec 9.3 plus the documented checks of issue 9 item 3), TTL decrement with the RFC 1624
//! incremental checksum fix, and the ICMP Destination Unreachable (net) reply for packets no lease
//! covers. Pure: nothing here does I/O, allocates per packet, or panics on any input.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::backend::offload::checksum;

pub const IPV4_MIN_HEADER: usize = 20;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
/// TTL of the ICMP errors we originate (upstream uses 8).
pub const ICMP_TTL: u8 = 8;

/// Why a packet or datagram was not forwarded. Each reason is one label of the
/// `flannel_udp_dropped_total` counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// The datagram's source address is not the PublicIP of a current lease.
    NotPeer,
    /// Zero bytes.
    Empty,
    /// Shorter than its IPv4 header.
    Truncated,
    /// The version nibble is not 4.
    NotIpv4,
    /// IHL below 5.
    BadHeaderLength,
    /// The header checksum is wrong.
    BadHeaderChecksum,
    /// The IPv4 total length differs from the datagram's length.
    LengthMismatch,
    /// Larger than the TUN device's MTU.
    TooBig,
    /// The inner destination is outside this node's subnet.
    ForeignDestination,
    /// The inner source is outside the cluster Network.
    ForeignSource,
    /// TTL 0 or 1: nothing left after the decrement.
    TtlExpired,
    /// Sending side: no lease covers the destination (an ICMP error may be sent back).
    NoRoute,
    /// Sending side: a packet read from the TUN device that could not be segmented.
    BadOffload,
}

impl DropReason {
    pub const ALL: [DropReason; 13] = [
        DropReason::NotPeer,
        DropReason::Empty,
        DropReason::Truncated,
        DropReason::NotIpv4,
        DropReason::BadHeaderLength,
        DropReason::BadHeaderChecksum,
        DropReason::LengthMismatch,
        DropReason::TooBig,
        DropReason::ForeignDestination,
        DropReason::ForeignSource,
        DropReason::TtlExpired,
        DropReason::NoRoute,
        DropReason::BadOffload,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::NotPeer => "not_peer",
            DropReason::Empty => "empty",
            DropReason::Truncated => "truncated",
            DropReason::NotIpv4 => "not_ipv4",
            DropReason::BadHeaderLength => "bad_header_length",
            DropReason::BadHeaderChecksum => "bad_header_checksum",
            DropReason::LengthMismatch => "length_mismatch",
            DropReason::TooBig => "too_big",
            DropReason::ForeignDestination => "foreign_destination",
            DropReason::ForeignSource => "foreign_source",
            DropReason::TtlExpired => "ttl_expired",
            DropReason::NoRoute => "no_route",
            DropReason::BadOffload => "bad_offload",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A rejected packet: the reason and the facts about the input that show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketError {
    pub reason: DropReason,
    /// The datagram's length.
    pub len: usize,
    pub detail: String,
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "datagram of {} bytes dropped ({}): {}",
            self.len,
            self.reason.label(),
            self.detail
        )
    }
}

impl std::error::Error for PacketError {}

fn reject(reason: DropReason, len: usize, detail: impl Into<String>) -> PacketError {
    PacketError {
        reason,
        len,
        detail: detail.into(),
    }
}

/// The fields of an IPv4 header the data path needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Header {
    pub header_len: usize,
    pub total_len: usize,
    pub ttl: u8,
    pub protocol: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// Fragment offset in 8-byte units (0 for a first or unfragmented packet).
    pub frag_offset: u16,
    pub more_fragments: bool,
}

/// Parse the header of `pkt` (version, IHL, lengths; the checksum is not checked here).
pub fn parse(pkt: &[u8]) -> Result<Ipv4Header, PacketError> {
    let len = pkt.len();
    if len == 0 {
        return Err(reject(DropReason::Empty, 0, "no bytes"));
    }
    let version = pkt[0] >> 4;
    if version != 4 {
        return Err(reject(
            DropReason::NotIpv4,
            len,
            format!("IP version {version}, want 4"),
        ));
    }
    if len < IPV4_MIN_HEADER {
        return Err(reject(
            DropReason::Truncated,
            len,
            format!("shorter than an IPv4 header ({IPV4_MIN_HEADER} bytes)"),
        ));
    }
    let header_len = usize::from(pkt[0] & 0x0f) * 4;
    if header_len < IPV4_MIN_HEADER {
        return Err(reject(
            DropReason::BadHeaderLength,
            len,
            format!("header length {header_len} bytes (IHL {})", header_len / 4),
        ));
    }
    if header_len > len {
        return Err(reject(
            DropReason::Truncated,
            len,
            format!("header length {header_len} bytes exceeds the datagram"),
        ));
    }
    let total_len = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    let frag = u16::from_be_bytes([pkt[6], pkt[7]]);
    Ok(Ipv4Header {
        header_len,
        total_len,
        ttl: pkt[8],
        protocol: pkt[9],
        src: Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]),
        dst: Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]),
        frag_offset: frag & 0x1fff,
        more_fragments: frag & 0x2000 != 0,
    })
}

/// What a receiving node accepts (issue 9 item 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceivePolicy {
    /// This node's subnet: the inner destination must lie inside it.
    pub own_subnet: Ipv4Net,
    /// The cluster Network: the inner source must lie inside it.
    pub network: Ipv4Net,
    /// The TUN device's MTU: no larger packet is written to it.
    pub mtu: usize,
}

/// Validate one received datagram as an inner packet for this node, decrement its TTL (with the
/// incremental checksum fix) and return its header. On error the packet must be dropped; the
/// buffer may then be left with its TTL already decremented.
pub fn accept(pkt: &mut [u8], policy: &ReceivePolicy) -> Result<Ipv4Header, PacketError> {
    let len = pkt.len();
    let h = parse(pkt)?;
    if h.total_len != len {
        return Err(reject(
            DropReason::LengthMismatch,
            len,
            format!("IPv4 total length says {} bytes", h.total_len),
        ));
    }
    if len > policy.mtu {
        return Err(reject(
            DropReason::TooBig,
            len,
            format!("larger than the MTU {}", policy.mtu),
        ));
    }
    if !checksum::verifies(&pkt[..h.header_len], 0) {
        return Err(reject(
            DropReason::BadHeaderChecksum,
            len,
            format!(
                "IPv4 header checksum {:#06x} is wrong",
                u16::from_be_bytes([pkt[10], pkt[11]])
            ),
        ));
    }
    if !policy.own_subnet.contains(&h.dst) {
        return Err(reject(
            DropReason::ForeignDestination,
            len,
            format!(
                "inner destination {} is outside this node's subnet {}",
                h.dst, policy.own_subnet
            ),
        ));
    }
    if !policy.network.contains(&h.src) {
        return Err(reject(
            DropReason::ForeignSource,
            len,
            format!(
                "inner source {} is outside the cluster network {}",
                h.src, policy.network
            ),
        ));
    }
    decrement_ttl(pkt).map_err(|ttl| reject(DropReason::TtlExpired, len, format!("TTL {ttl}")))?;
    Ok(Ipv4Header { ttl: h.ttl - 1, ..h })
}

/// Decrement the TTL of the IPv4 packet in `pkt` and fix the header checksum incrementally
/// (RFC 1624). Returns the new TTL, or `Err(old ttl)` when the packet must be dropped (TTL 0 or 1)
/// or is too short to carry a header.
pub fn decrement_ttl(pkt: &mut [u8]) -> Result<u8, u8> {
    if pkt.len() < IPV4_MIN_HEADER {
        return Err(0);
    }
    let ttl = pkt[8];
    if ttl <= 1 {
        return Err(ttl);
    }
    let old = u16::from_be_bytes([pkt[8], pkt[9]]);
    pkt[8] = ttl - 1;
    let new = u16::from_be_bytes([pkt[8], pkt[9]]);
    let check = checksum::update(u16::from_be_bytes([pkt[10], pkt[11]]), old, new);
    pkt[10..12].copy_from_slice(&check.to_be_bytes());
    Ok(ttl - 1)
}

/// True for ICMP messages that must never trigger an ICMP error (RFC 1812 4.3.2.7: errors, and
/// unknown types); ICMP queries such as echo requests may.
fn is_icmp_error_or_unknown(pkt: &[u8], h: &Ipv4Header) -> bool {
    if h.protocol != PROTO_ICMP {
        return false;
    }
    match pkt.get(h.header_len) {
        // Echo request, timestamp request, information request, address mask request.
        Some(8) | Some(13) | Some(15) | Some(17) => false,
        _ => true,
    }
}

/// Build an ICMP Destination Unreachable, code 0 (net unreachable) from `src` to the sender of
/// `orig` into `out` (cleared first); payload: the offending IP header plus 8 bytes (RFC 792).
/// `None` when no error may be sent: not a well-formed IPv4 packet, a non-first fragment, an ICMP
/// error, or a source that is not a unicast host.
pub fn icmp_net_unreachable(orig: &[u8], src: Ipv4Addr, out: &mut Vec<u8>) -> Option<usize> {
    let h = parse(orig).ok()?;
    if h.frag_offset != 0 || is_icmp_error_or_unknown(orig, &h) {
        return None;
    }
    if h.src.is_unspecified() || h.src.is_broadcast() || h.src.is_multicast() || h.src.is_loopback() {
        return None;
    }
    let quoted = orig.len().min(h.header_len + 8);
    let icmp_len = 8 + quoted;
    let total = IPV4_MIN_HEADER + icmp_len;
    out.clear();
    out.resize(total, 0);
    let ip = &mut out[..IPV4_MIN_HEADER];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[8] = ICMP_TTL;
    ip[9] = PROTO_ICMP;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&h.src.octets());
    checksum::set_ipv4_header(out);
    let icmp = &mut out[IPV4_MIN_HEADER..];
    icmp[0] = 3; // destination unreachable
    icmp[1] = 0; // net unreachable
    icmp[8..].copy_from_slice(&orig[..quoted]);
    let c = checksum::checksum(icmp, 0);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

/// The source address of our ICMP errors. The TUN device's own address is local, so the kernel
/// drops a packet from it arriving on the TUN as a martian; any address that is not local to this
/// node and that the `<Network> dev flannel0` route covers passes the martian and reverse-path
/// checks. We take the cluster Network's first address (a network address, never a broadcast),
/// or, when the own subnet holds it, the network address of the subnet right after ours.
pub fn icmp_source(network: Ipv4Net, own_subnet: Ipv4Net) -> Ipv4Addr {
    let first = network.network();
    if !own_subnet.contains(&first) {
        return first;
    }
    let next = Ipv4Addr::from(u32::from(own_subnet.broadcast()).wrapping_add(1));
    if network.contains(&next) { next } else { first }
}
