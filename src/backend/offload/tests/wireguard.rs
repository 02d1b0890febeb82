//! Unit and property tests of the offloads with the userspace WireGuard device's parameters
//! (moved from its offload_tests.rs): TSO over IPv4 and IPv6 split into valid segments, TTL
//! untouched; decrypted segments coalesced (IPv4 and IPv6) and split back to the originals;
//! malformed requests are errors, never panics.

use proptest::prelude::*;

use crate::backend::offload::checksum::{self, fold};
use crate::backend::offload::{
    Coalescer, F_DATA_VALID, F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6, MAX_SUPER_PACKET, OffloadError,
    VNET_HDR_LEN, VnetHdr, complete_checksum,
};
use crate::backend::wireguard::userspace::worker::{INTEGRITY, SEGMENTING};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_PSH: u8 = 0x08;

fn sum16(data: &[u8], acc: u64) -> u64 {
    checksum::sum(data, acc)
}

fn pseudo_sum(pkt: &[u8], v6: bool, proto: u8, l4_len: usize) -> u64 {
    checksum::pseudo_header_of(pkt, v6, proto, l4_len)
}

/// Fill in the IPv4 header checksum (unless `v6`) and the TCP checksum of a finished packet.
fn finish_segment(pkt: &mut [u8], v6: bool, iphl: usize) {
    if !v6 {
        checksum::set_ipv4_header(pkt);
    }
    pkt[iphl + 16] = 0;
    pkt[iphl + 17] = 0;
    let c = checksum::checksum(&pkt[iphl..], pseudo_sum(pkt, v6, 6, pkt.len() - iphl));
    pkt[iphl + 16..iphl + 18].copy_from_slice(&c.to_be_bytes());
}

/// The shared `split` with the WireGuard data path's parameters.
fn split(
    hdr: &VnetHdr,
    pkt: &mut [u8],
    scratch: &mut [u8],
    emit: impl FnMut(&mut [u8]),
) -> Result<(), OffloadError> {
    crate::backend::offload::split(hdr, pkt, scratch, &SEGMENTING, emit)
}

/// A valid IPv4/TCP packet (checksums filled in).
fn tcp4(seq: u32, id: u16, flags: u8, payload: &[u8], opts: &[u8]) -> Vec<u8> {
    let thl = 20 + opts.len();
    let len = 20 + thl + payload.len();
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[198, 18, 1, 2]);
    p[16..20].copy_from_slice(&[198, 18, 2, 2]);
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5201u16.to_be_bytes());
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[28..32].copy_from_slice(&77u32.to_be_bytes());
    p[32] = ((thl / 4) as u8) << 4;
    p[33] = flags;
    p[34..36].copy_from_slice(&512u16.to_be_bytes());
    p[40..40 + opts.len()].copy_from_slice(opts);
    p[20 + thl..].copy_from_slice(payload);
    finish_segment(&mut p, false, 20);
    p
}

fn tcp6(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = 60 + payload.len();
    let mut p = vec![0u8; len];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    p[6] = 6;
    p[7] = 64;
    p[8..24].copy_from_slice(&"2001:db8:1::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
    p[24..40].copy_from_slice(&"2001:db8:2::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
    p[40..42].copy_from_slice(&40000u16.to_be_bytes());
    p[42..44].copy_from_slice(&5201u16.to_be_bytes());
    p[44..48].copy_from_slice(&seq.to_be_bytes());
    p[52] = 5 << 4;
    p[53] = flags;
    p[60..].copy_from_slice(payload);
    finish_segment(&mut p, true, 40);
    p
}

fn checksum_ok(p: &[u8]) -> bool {
    let v6 = p[0] >> 4 == 6;
    let iphl = if v6 { 40 } else { usize::from(p[0] & 15) * 4 };
    let ip_ok = v6 || fold(sum16(&p[..iphl], 0)) == 0xffff;
    ip_ok && fold(sum16(&p[iphl..], pseudo_sum(p, v6, 6, p.len() - iphl))) == 0xffff
}

/// What the WireGuard data path writes to the TUN device for `pkts` (one receive round).
fn coalesce(pkts: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let refs: Vec<&[u8]> = pkts.iter().map(|p| p.as_slice()).collect();
    let (mut out, mut items) = (Vec::new(), Vec::new());
    Coalescer::new(INTEGRITY).coalesce(&refs, &mut out, &mut items);
    items.into_iter().map(|r| out[r].to_vec()).collect()
}

fn resplit(written: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut scratch = vec![0u8; MAX_SUPER_PACKET];
    for w in written {
        let hdr = VnetHdr::decode(w).unwrap();
        let mut pkt = w[VNET_HDR_LEN..].to_vec();
        if hdr.gso_type == GSO_NONE {
            out.push(pkt);
            continue;
        }
        // What the kernel does with our super-packet: complete the checksum, segment.
        complete_checksum(
            &mut pkt,
            usize::from(hdr.csum_start),
            usize::from(hdr.csum_offset),
        )
        .unwrap();
        split(&hdr, &mut pkt, &mut scratch, |s| out.push(s.to_vec())).unwrap();
    }
    out
}

#[test]
fn checksums_match_a_known_packet() {
    // RFC 1071 style check: a finished packet sums to 0xffff.
    let p = tcp4(1, 1, 0x18, b"hello", &[]);
    assert!(checksum_ok(&p));
    assert_eq!(fold(sum16(&[0x45, 0x00, 0x00, 0x73], 0)), 0x4573);
    assert_eq!(fold(sum16(&[0xff, 0xff, 0x00, 0x02, 0x01], 0)), 0x0102);
}

#[test]
fn a_tso_super_packet_splits_into_valid_mss_sized_segments() {
    let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    let mut sup = tcp4(
        1000,
        7,
        0x18 | TCP_FIN,
        &payload,
        &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
    );
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 52,
        gso_size: 1388,
        csum_start: 20,
        csum_offset: 16,
    };
    let mut scratch = vec![0u8; MAX_SUPER_PACKET];
    let mut segs = Vec::new();
    split(&hdr, &mut sup, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
    assert_eq!(segs.len(), 3);
    let mut joined = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        assert!(checksum_ok(s), "segment {i}");
        let seq = u32::from_be_bytes([s[24], s[25], s[26], s[27]]);
        assert_eq!(seq, 1000 + 1388 * i as u32);
        assert_eq!(u16::from_be_bytes([s[4], s[5]]), 7 + i as u16);
        assert_eq!(usize::from(u16::from_be_bytes([s[2], s[3]])), s.len());
        let last = i == 2;
        assert_eq!(s[33] & (TCP_FIN | TCP_PSH) != 0, last, "FIN/PSH only on the last");
        joined.extend_from_slice(&s[52..]);
    }
    assert_eq!(joined, payload);
}

#[test]
fn consecutive_segments_coalesce_and_resplit_to_the_originals() {
    let seg = |i: u32, flags: u8, n: usize| {
        tcp4(
            5000 + i * 1000,
            100 + i as u16,
            flags,
            &vec![i as u8; n],
            &[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3],
        )
    };
    let pkts = vec![
        seg(0, 0x10, 1000),
        seg(1, 0x10, 1000),
        seg(2, 0x10, 1000),
        seg(3, 0x18, 700),
    ];
    let written = coalesce(&pkts);
    assert_eq!(written.len(), 1);
    let hdr = VnetHdr::decode(&written[0]).unwrap();
    assert_eq!(
        (
            hdr.gso_type,
            hdr.gso_size,
            hdr.hdr_len,
            hdr.csum_start,
            hdr.csum_offset
        ),
        (GSO_TCPV4, 1000, 52, 20, 16)
    );
    assert_eq!(hdr.flags, F_NEEDS_CSUM);
    assert_eq!(resplit(&written), pkts);
}

#[test]
fn ipv6_segments_coalesce_too() {
    let pkts: Vec<Vec<u8>> = (0..3u32)
        .map(|i| tcp6(i * 1200, 0x10, &vec![i as u8; 1200]))
        .collect();
    let written = coalesce(&pkts);
    assert_eq!(written.len(), 1);
    assert_eq!(VnetHdr::decode(&written[0]).unwrap().gso_type, GSO_TCPV6);
    assert_eq!(resplit(&written), pkts);
}

#[test]
fn gaps_flags_and_other_protocols_break_a_run_in_order() {
    let a = tcp4(0, 1, 0x10, &[1; 100], &[]);
    let gap = tcp4(500, 2, 0x10, &[2; 100], &[]);
    let syn = tcp4(600, 3, TCP_SYN, &[], &[]);
    let mut udp = a.clone();
    udp[9] = 17;
    let pkts = vec![a.clone(), gap.clone(), syn.clone(), udp.clone(), a.clone()];
    let written = coalesce(&pkts);
    assert_eq!(written.len(), 5);
    for w in &written {
        assert_eq!(
            VnetHdr::decode(w).unwrap(),
            VnetHdr {
                flags: F_DATA_VALID,
                ..VnetHdr::default()
            }
        );
    }
    let plain: Vec<Vec<u8>> = written.iter().map(|w| w[VNET_HDR_LEN..].to_vec()).collect();
    assert_eq!(plain, pkts);
}

#[test]
fn a_short_or_pushed_segment_ends_the_super_packet() {
    let s = |i: u32, f: u8, n: usize| tcp4(i * 100, i as u16, f, &vec![0; n], &[]);
    // Short segment closes the run: the next full one starts a new super-packet.
    let written = coalesce(&[s(0, 0x10, 100), s(1, 0x10, 50), s(2, 0x10, 100)]);
    assert_eq!(written.len(), 2);
    let written = coalesce(&[s(0, 0x18, 100), s(1, 0x10, 100)]);
    assert_eq!(written.len(), 2);
}

#[test]
fn malformed_offload_requests_are_errors_not_panics() {
    let mut scratch = vec![0u8; MAX_SUPER_PACKET];
    let gso = VnetHdr {
        gso_type: GSO_TCPV4,
        gso_size: 100,
        ..VnetHdr::default()
    };
    for mut p in [
        vec![],
        vec![0x45],
        vec![0x45; 30],
        vec![0x60; 50],
        tcp4(0, 0, 0x10, &[1; 10], &[])[..30].to_vec(),
    ] {
        assert!(split(&gso, &mut p, &mut scratch, |_| {}).is_err());
    }
    let mut p = tcp4(0, 0, 0x10, &[1; 10], &[]);
    let zero_mss = VnetHdr { gso_size: 0, ..gso };
    assert!(split(&zero_mss, &mut p, &mut scratch, |_| {}).is_err());
    let bad_csum = VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 60000,
        csum_offset: 16,
        ..VnetHdr::default()
    };
    assert!(split(&bad_csum, &mut p, &mut scratch, |_| {}).is_err());
    let udp = VnetHdr {
        gso_type: 5,
        gso_size: 100,
        ..VnetHdr::default()
    };
    assert_eq!(
        split(&udp, &mut p, &mut scratch, |_| {}),
        Err(OffloadError::Unsupported(5))
    );
    assert!(VnetHdr::decode(&[0; 9]).is_none());
}

proptest! {
    #[test]
    fn split_and_coalesce_never_panic_on_any_bytes(
        data in proptest::collection::vec(any::<u8>(), 0..200),
        gso_type in any::<u8>(),
        gso_size in any::<u16>(),
        csum_start in any::<u16>(),
        csum_offset in any::<u16>(),
        flags in any::<u8>(),
    ) {
        let hdr = VnetHdr { flags, gso_type, hdr_len: 0, gso_size, csum_start, csum_offset };
        let mut pkt = data.clone();
        let mut scratch = vec![0u8; MAX_SUPER_PACKET];
        let _ = split(&hdr, &mut pkt, &mut scratch, |_| {});
        coalesce(&[data.clone(), data]);
    }

    #[test]
    fn any_run_of_full_segments_roundtrips(n in 1usize..20, mss in 1usize..1400, last in 1usize..1400) {
        let last = last.min(mss);
        let pkts: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let len = if i + 1 == n { last } else { mss };
                tcp4(1 + (i * mss) as u32, i as u16, 0x10, &vec![i as u8; len], &[])
            })
            .collect();
        prop_assert_eq!(resplit(&coalesce(&pkts)), pkts);
    }
}
