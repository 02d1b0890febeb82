//! TUN offloads, shared by every data path that reads and writes a TUN device opened with
//! IFF_VNET_HDR (the udp backend's `flannel0`, the userspace WireGuard device): the
//! `virtio_net_hdr` before every packet (`vnet`), completing a partial checksum, cutting a TSO/USO
//! super-packet the kernel hands us into complete packets (`segment`), coalescing received TCP
//! segments into super-packets for the kernel (`coalesce`), and the Internet checksum they all
//! use (`checksum`). One TUN read or write then moves up to 64 KiB instead of one packet.
//!
//! Pure functions on byte buffers (design.md 4b): nothing here does I/O, keeps state between calls
//! (apart from reusable scratch space) or panics on any input: every byte comes from a pod or from
//! the network, so a malformed packet is an `OffloadError`. What differs between the data paths
//! is passed in explicitly and documented where each backend picks it: `Segmenting` (which GSO
//! types its device was offered, whether it is a router hop that decrements the TTL) and
//! `Integrity` (whether received segments need their TCP checksum verified before merging).
//! It must not know about peers, sockets or metrics. Spec: flanneld-behaviour.md 9.3 (udp wire
//! format, TTL decremented on send and receive).

pub mod checksum;
mod coalesce;
mod segment;
mod vnet;

pub use coalesce::{Coalescer, Integrity};
pub use segment::{Segmenting, Segments, segment, split};
pub use vnet::{
    F_DATA_VALID, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4, VNET_HDR_LEN,
    VnetHdr, complete_checksum,
};

/// The largest packet a TUN read or write carries (the IPv4 total length is 16 bits).
pub const MAX_SUPER_PACKET: usize = 65535;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Why a packet could not be segmented or its checksum completed. Each message names what was
/// wrong with the packet; callers add which packet (length, device) and count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    #[error("packet too short for its headers")]
    Truncated,
    #[error("IP version {0}, want 4 or 6")]
    NotIp(u8),
    #[error("unsupported offload request (GSO type {0})")]
    Unsupported(u8),
    #[error("GSO type {gso_type} on an IPv{version} packet")]
    FamilyMismatch { gso_type: u8, version: u8 },
    #[error("GSO type {gso_type} on a packet of IP protocol {protocol}")]
    ProtocolMismatch { gso_type: u8, protocol: u8 },
    #[error("TSO packet without a TCP header")]
    NoTcpHeader,
    #[error("GSO on a fragment")]
    Fragment,
    #[error("L4 header length {0}")]
    L4HeaderLength(usize),
    #[error("headers of {0} bytes exceed the packet")]
    HeadersExceedPacket(usize),
    #[error("GSO size 0")]
    GsoSizeZero,
    #[error("TTL {0}")]
    TtlExpired(u8),
    #[error("GSO packet without payload")]
    NoPayload,
    #[error("{count} segments of {seg_len} bytes do not fit the buffer")]
    DoesNotFit { count: usize, seg_len: usize },
    #[error("checksum field at {field} lies outside the packet")]
    BadChecksumOffset { field: usize },
}

#[cfg(test)]
mod tests;
