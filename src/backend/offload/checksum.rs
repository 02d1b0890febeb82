//! The Internet checksum (RFC 1071) over byte buffers, its incremental update (RFC 1624), the
//! TCP/UDP pseudo-header sum (IPv4 and IPv6) and the IPv4 header checksum. Sums are carried
//! unfolded in a `u64` so that long buffers are added eight bytes at a time; `fold` reduces them
//! to the 16-bit one's-complement value. Shared by the offloads and the udp backend's IPv4 code.

use std::net::Ipv4Addr;

/// The one's-complement sum of `data` (big-endian 16-bit words, an odd last byte padded with
/// zero) added to `initial`. Unfolded: pass the result to `fold`.
pub fn sum(data: &[u8], initial: u64) -> u64 {
    let mut acc: u128 = u128::from(initial);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        // Adding big-endian 64-bit words is the same one's-complement sum as adding their four
        // 16-bit words (end-around carries are folded in at the end).
        acc += u128::from(u64::from_be_bytes([
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
        ]));
    }
    let rest = chunks.remainder();
    let mut words = rest.chunks_exact(2);
    for w in &mut words {
        acc += u128::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u128::from(u16::from_be_bytes([*last, 0]));
    }
    fold128(acc)
}

fn fold128(mut acc: u128) -> u64 {
    while acc >> 64 != 0 {
        acc = (acc & u128::from(u64::MAX)) + (acc >> 64);
    }
    acc as u64
}

/// Fold an unfolded sum to 16 bits (without complementing it).
pub fn fold(mut s: u64) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The checksum field value for `data` (whose checksum field must be zero, or hold a partial sum
/// that is meant to be included): the complement of the folded sum.
pub fn checksum(data: &[u8], initial: u64) -> u16 {
    !fold(sum(data, initial))
}

/// True when `data` (including its checksum field) sums to 0xffff: the checksum is right.
pub fn verifies(data: &[u8], initial: u64) -> bool {
    fold(sum(data, initial)) == 0xffff
}

/// The unfolded sum of the IPv4 pseudo header (source, destination, protocol, L4 length).
pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4_len: u32) -> u64 {
    let s = u64::from(u32::from(src));
    let d = u64::from(u32::from(dst));
    (s >> 16) + (s & 0xffff) + (d >> 16) + (d & 0xffff) + u64::from(protocol) + u64::from(l4_len)
}

/// The unfolded pseudo-header sum of the packet in `pkt` (IPv4 when `!v6`, IPv6 otherwise; its
/// addresses read from the header, which the caller has checked is there).
pub fn pseudo_header_of(pkt: &[u8], v6: bool, protocol: u8, l4_len: usize) -> u64 {
    let addrs = if v6 { &pkt[8..40] } else { &pkt[12..20] };
    sum(addrs, u64::from(protocol) + l4_len as u64)
}

/// Recompute the IPv4 header checksum of `pkt` (header length from IHL).
pub fn set_ipv4_header(pkt: &mut [u8]) {
    let hl = usize::from(pkt[0] & 0x0f) * 4;
    pkt[10] = 0;
    pkt[11] = 0;
    let c = checksum(&pkt[..hl], 0);
    pkt[10..12].copy_from_slice(&c.to_be_bytes());
}

/// RFC 1624 eqn. 3: the new checksum after one 16-bit word of the covered data changed from `old`
/// to `new`: HC' = ~(~HC + ~m + m').
pub fn update(check: u16, old: u16, new: u16) -> u16 {
    let s = u64::from(!check) + u64::from(!old) + u64::from(new);
    !fold(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain reference: 16-bit words, one at a time.
    fn reference(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for w in data.chunks(2) {
            let word = if w.len() == 2 {
                u16::from_be_bytes([w[0], w[1]])
            } else {
                u16::from_be_bytes([w[0], 0])
            };
            s += u32::from(word);
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data, 0)), 0xddf2);
        assert_eq!(checksum(&data, 0), !0xddf2);
    }

    #[test]
    fn matches_the_reference_for_every_length_and_alignment() {
        let data: Vec<u8> = (0..300u32).map(|i| (i.wrapping_mul(151) ^ 0x5a) as u8).collect();
        for start in 0..9 {
            for end in start..data.len() {
                assert_eq!(
                    checksum(&data[start..end], 0),
                    reference(&data[start..end]),
                    "{start}..{end}"
                );
            }
        }
    }

    #[test]
    fn all_ones_and_carries() {
        let data = vec![0xffu8; 4097];
        assert_eq!(checksum(&data, 0), reference(&data));
        let data = vec![0xffu8; 1 << 17];
        assert_eq!(checksum(&data, u64::MAX >> 1), {
            let s = fold(sum(&data, 0)) as u64 + (u64::MAX >> 1);
            !fold(s)
        });
    }

    #[test]
    fn ipv4_header_example_verifies() {
        // A real IPv4 header (checksum b861) from Wikipedia's worked example.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01,
            0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert!(verifies(&h, 0));
        let mut z = h;
        z[10] = 0;
        z[11] = 0;
        assert_eq!(checksum(&z, 0), 0xb861);
    }

    #[test]
    fn incremental_update_equals_recomputation() {
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01,
            0xc0, 0xa8, 0x00, 0xc7,
        ];
        for ttl in (1..=0x40u8).rev() {
            let old = u16::from_be_bytes([h[8], h[9]]);
            h[8] = ttl - 1;
            let new = u16::from_be_bytes([h[8], h[9]]);
            let c = update(u16::from_be_bytes([h[10], h[11]]), old, new);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            assert!(verifies(&h, 0), "ttl {}", ttl - 1);
        }
    }

    #[test]
    fn pseudo_header_sum() {
        let p = pseudo_header(Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(198, 51, 100, 2), 6, 20);
        assert_eq!(p, 0xc000 + 0x0201 + 0xc633 + 0x6402 + 6 + 20);
        let mut pkt = [0u8; 20];
        pkt[12..16].copy_from_slice(&[192, 0, 2, 1]);
        pkt[16..20].copy_from_slice(&[198, 51, 100, 2]);
        assert_eq!(fold(pseudo_header_of(&pkt, false, 6, 20)), fold(p));
    }
}
