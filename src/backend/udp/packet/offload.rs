//! The udp data path's use of the shared TUN offloads (`backend::offload`): what it asks of them,
//! and the drop reason each offload error is counted under. Pure; never panics on any input.

use crate::backend::offload::{
    self, F_NEEDS_CSUM, GSO_TCPV4, GSO_UDP_L4, Integrity, OffloadError, Segmenting, Segments, VnetHdr,
};

use super::ipv4::{self, DropReason, PacketError};

/// `flannel0` is offered TSO4 and USO (device.rs; the backend carries IPv4 only), and the udp
/// backend is a router hop of its own: upstream decrements the TTL on send (spec 9.3), so every
/// segment of a super-packet gets the TTL one lower, and one whose TTL runs out is dropped.
pub const SEGMENTING: Segmenting = Segmenting {
    gso_types: &[GSO_TCPV4, GSO_UDP_L4],
    decrement_ttl: true,
};

/// Datagrams cross the underlay as plain UDP: only the inner TCP checksum protects a segment, so
/// it is verified before merging.
pub const INTEGRITY: Integrity = Integrity::Plain;

fn dropped(e: OffloadError, len: usize) -> PacketError {
    PacketError {
        reason: match e {
            OffloadError::TtlExpired(_) => DropReason::TtlExpired,
            _ => DropReason::BadOffload,
        },
        len,
        detail: e.to_string(),
    }
}

/// Cut the super-packet `pkt` (described by `hdr`) into complete IPv4 packets in `out`, TTL
/// decremented. TCPv4 (TSO) and UDP over IPv4 (USO); anything else is an error.
pub fn segment(hdr: &VnetHdr, pkt: &[u8], out: &mut [u8]) -> Result<Segments, PacketError> {
    ipv4::parse(pkt)?;
    offload::segment(hdr, pkt, out, &SEGMENTING).map_err(|e| dropped(e, pkt.len()))
}

/// A packet read from the TUN device without GSO: complete its checksum if asked and decrement
/// its TTL, in place.
pub fn prepare_single(hdr: &VnetHdr, pkt: &mut [u8]) -> Result<ipv4::Ipv4Header, PacketError> {
    let h = ipv4::parse(pkt)?;
    let len = pkt.len();
    if hdr.flags & F_NEEDS_CSUM != 0 {
        offload::complete_checksum(pkt, usize::from(hdr.csum_start), usize::from(hdr.csum_offset))
            .map_err(|e| dropped(e, len))?;
    }
    ipv4::decrement_ttl(pkt).map_err(|ttl| dropped(OffloadError::TtlExpired(ttl), len))?;
    Ok(h)
}
