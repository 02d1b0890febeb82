//! The TUN device's offload header (`struct virtio_net_hdr`, IFF_VNET_HDR) and completing the
//! partial checksum it may ask for (NEEDS_CSUM).

use super::OffloadError;
use super::checksum;

/// `sizeof(struct virtio_net_hdr)` (without `num_buffers`): the header the TUN device puts before
/// (and expects before) every packet with IFF_VNET_HDR, as TUNSETVNETHDRSZ 10 sets it.
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
    /// The header at the start of `b`; `None` when `b` is shorter than one.
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

    /// Write the header into the first `VNET_HDR_LEN` bytes of `b`.
    pub fn encode(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
    }
}

/// Complete a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM): the 16-bit field at
/// `csum_start + csum_offset` holds the pseudo-header sum; the checksum covers everything from
/// `csum_start` to the end. A result of 0 is written as 0xffff, as the kernel does
/// (`skb_checksum_help`): the same value for TCP, and for UDP 0 would mean "no checksum".
pub fn complete_checksum(pkt: &mut [u8], csum_start: usize, csum_offset: usize) -> Result<(), OffloadError> {
    let field = csum_start.saturating_add(csum_offset);
    if field.saturating_add(2) > pkt.len() {
        return Err(OffloadError::BadChecksumOffset { field });
    }
    let c = match checksum::checksum(&pkt[csum_start..], 0) {
        0 => 0xffff,
        c => c,
    };
    pkt[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}
