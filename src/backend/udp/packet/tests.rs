//! Unit tests of IPv4 parsing, receive validation, TTL decrement and ICMP errors, plus the packet
//! builders the other packet tests share.

use std::net::Ipv4Addr;

use super::ipv4::*;
use crate::backend::offload::checksum;

pub(crate) const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 5);
pub(crate) const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 7);

/// An IPv4 header (with `options`, a multiple of 4 bytes) followed by `l4`, all checksums right.
pub(crate) fn ipv4_packet(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ttl: u8,
    options: &[u8],
    l4: &[u8],
) -> Vec<u8> {
    let hl = 20 + options.len();
    let total = hl + l4.len();
    let mut p = vec![0u8; total];
    p[0] = 0x40 | (hl / 4) as u8;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = ttl;
    p[9] = proto;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..hl].copy_from_slice(options);
    p[hl..].copy_from_slice(l4);
    checksum::set_ipv4_header(&mut p);
    p
}

/// A TCP segment (ACK plus `flags`) with `payload` and an optional timestamp option.
pub(crate) fn tcp_packet(seq: u32, flags: u8, payload: &[u8], ip_options: &[u8], ts: bool) -> Vec<u8> {
    let thl = if ts { 32 } else { 20 };
    let mut t = vec![0u8; thl + payload.len()];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&5201u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&777u32.to_be_bytes());
    t[12] = ((thl / 4) as u8) << 4;
    t[13] = 0x10 | flags;
    t[14..16].copy_from_slice(&512u16.to_be_bytes());
    if ts {
        t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3]);
    }
    t[thl..].copy_from_slice(payload);
    let mut p = ipv4_packet(SRC, DST, PROTO_TCP, 64, ip_options, &t);
    let hl = 20 + ip_options.len();
    let c = checksum::checksum(
        &p[hl..],
        checksum::pseudo_header(SRC, DST, PROTO_TCP, t.len() as u32),
    );
    p[hl + 16..hl + 18].copy_from_slice(&c.to_be_bytes());
    p
}

pub(crate) fn policy() -> ReceivePolicy {
    ReceivePolicy {
        own_subnet: "198.18.1.0/24".parse().unwrap(),
        network: "198.18.0.0/16".parse().unwrap(),
        mtu: 1472,
    }
}

#[test]
fn accepts_a_well_formed_packet_and_decrements_its_ttl() {
    let mut p = tcp_packet(1, 0, b"hello", &[], false);
    let h = accept(&mut p, &policy()).unwrap();
    assert_eq!((h.src, h.dst, h.ttl, h.protocol), (SRC, DST, 63, PROTO_TCP));
    assert_eq!(p[8], 63);
    assert!(checksum::verifies(&p[..20], 0));
}

#[test]
fn accepts_ip_options_and_keeps_them() {
    let opts = [0x01, 0x01, 0x01, 0x00]; // NOP NOP NOP EOL
    let mut p = tcp_packet(1, 0, b"x", &opts, false);
    let h = accept(&mut p, &policy()).unwrap();
    assert_eq!(h.header_len, 24);
    assert!(checksum::verifies(&p[..24], 0));
}

fn reason(mut p: Vec<u8>) -> DropReason {
    accept(&mut p, &policy()).unwrap_err().reason
}

#[test]
fn every_bad_datagram_is_rejected_with_its_reason() {
    let good = tcp_packet(1, 0, b"hello", &[], false);
    assert_eq!(reason(vec![]), DropReason::Empty);
    assert_eq!(reason(good[..10].to_vec()), DropReason::Truncated);
    assert_eq!(reason(good[..30].to_vec()), DropReason::LengthMismatch);
    let mut longer = good.clone();
    longer.extend_from_slice(&[0; 7]);
    assert_eq!(reason(longer), DropReason::LengthMismatch);
    let mut v6 = good.clone();
    v6[0] = 0x60;
    assert_eq!(reason(v6), DropReason::NotIpv4);
    let mut ihl = good.clone();
    ihl[0] = 0x44;
    assert_eq!(reason(ihl), DropReason::BadHeaderLength);
    let mut ihl_long = good.clone();
    ihl_long[0] = 0x4f; // 60-byte header in a 45-byte packet
    assert_eq!(reason(ihl_long), DropReason::Truncated);
    let mut csum = good.clone();
    csum[10] ^= 0xff;
    assert_eq!(reason(csum), DropReason::BadHeaderChecksum);
    let big = ipv4_packet(SRC, DST, PROTO_UDP, 64, &[], &[0u8; 2980]);
    assert_eq!(reason(big), DropReason::TooBig);
    let foreign_dst = ipv4_packet(SRC, Ipv4Addr::new(198, 18, 3, 1), PROTO_UDP, 64, &[], &[0; 8]);
    assert_eq!(reason(foreign_dst), DropReason::ForeignDestination);
    let spoofed = ipv4_packet(Ipv4Addr::new(192, 0, 2, 66), DST, PROTO_UDP, 64, &[], &[0; 8]);
    assert_eq!(reason(spoofed), DropReason::ForeignSource);
    for ttl in [0, 1] {
        let p = ipv4_packet(SRC, DST, PROTO_UDP, ttl, &[], &[0; 8]);
        assert_eq!(reason(p), DropReason::TtlExpired, "ttl {ttl}");
    }
}

#[test]
fn errors_name_the_input() {
    let mut p = ipv4_packet(SRC, Ipv4Addr::new(198, 18, 3, 1), PROTO_UDP, 64, &[], &[0; 8]);
    let e = accept(&mut p, &policy()).unwrap_err().to_string();
    assert!(
        e.contains("28 bytes") && e.contains("198.18.3.1") && e.contains("198.18.1.0/24"),
        "{e}"
    );
    let e = accept(&mut [0x45, 0, 0], &policy()).unwrap_err().to_string();
    assert!(e.contains("3 bytes") && e.contains("truncated"), "{e}");
}

#[test]
fn ttl_decrement_keeps_the_header_checksum_right_for_every_ttl() {
    for ttl in 2..=255u8 {
        let mut p = ipv4_packet(SRC, DST, PROTO_UDP, ttl, &[], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(decrement_ttl(&mut p), Ok(ttl - 1));
        assert!(checksum::verifies(&p[..20], 0), "ttl {ttl}");
    }
    let mut p = ipv4_packet(SRC, DST, PROTO_UDP, 1, &[], &[]);
    assert_eq!(decrement_ttl(&mut p), Err(1));
    assert_eq!(decrement_ttl(&mut [0u8; 5]), Err(0));
}

#[test]
fn icmp_net_unreachable_quotes_the_header_and_8_bytes() {
    let orig = tcp_packet(5, 0, &[9u8; 100], &[], false);
    let src = Ipv4Addr::new(198, 18, 0, 0);
    let mut out = Vec::new();
    let n = icmp_net_unreachable(&orig, src, &mut out).unwrap();
    assert_eq!(n, 20 + 8 + 28);
    let h = parse(&out).unwrap();
    assert_eq!(
        (h.src, h.dst, h.ttl, h.protocol, h.total_len),
        (src, SRC, ICMP_TTL, PROTO_ICMP, n)
    );
    assert!(checksum::verifies(&out[..20], 0));
    assert_eq!(&out[20..22], &[3, 0]);
    assert!(checksum::verifies(&out[20..], 0));
    assert_eq!(&out[28..], &orig[..28]);
}

#[test]
fn icmp_errors_only_where_allowed() {
    let mut out = Vec::new();
    let src = Ipv4Addr::new(198, 18, 0, 0);
    let echo = ipv4_packet(SRC, DST, PROTO_ICMP, 64, &[], &[8, 0, 0, 0, 0, 1, 0, 1]);
    assert!(
        icmp_net_unreachable(&echo, src, &mut out).is_some(),
        "echo requests get an answer"
    );
    let err = ipv4_packet(SRC, DST, PROTO_ICMP, 64, &[], &[3, 1, 0, 0, 0, 0, 0, 0]);
    assert!(
        icmp_net_unreachable(&err, src, &mut out).is_none(),
        "never about an ICMP error"
    );
    let mut frag = ipv4_packet(SRC, DST, PROTO_UDP, 64, &[], &[0; 16]);
    frag[6] = 0x00;
    frag[7] = 0x10;
    assert!(
        icmp_net_unreachable(&frag, src, &mut out).is_none(),
        "never about a non-first fragment"
    );
    let bcast = ipv4_packet(Ipv4Addr::BROADCAST, DST, PROTO_UDP, 64, &[], &[0; 8]);
    assert!(icmp_net_unreachable(&bcast, src, &mut out).is_none());
    assert!(icmp_net_unreachable(&[0x45, 0], src, &mut out).is_none());
    // A short original is quoted whole.
    let short = ipv4_packet(SRC, DST, PROTO_UDP, 64, &[], &[1, 2]);
    assert_eq!(icmp_net_unreachable(&short, src, &mut out), Some(20 + 8 + 22));
}

#[test]
fn icmp_source_is_never_local() {
    let network = "198.18.0.0/16".parse().unwrap();
    assert_eq!(
        icmp_source(network, "198.18.5.0/24".parse().unwrap()),
        Ipv4Addr::new(198, 18, 0, 0)
    );
    assert_eq!(
        icmp_source(network, "198.18.0.0/24".parse().unwrap()),
        Ipv4Addr::new(198, 18, 1, 0)
    );
}

#[test]
fn drop_reason_labels_are_distinct_and_indexed() {
    let mut labels: Vec<&str> = DropReason::ALL.iter().map(|r| r.label()).collect();
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i);
    }
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), DropReason::ALL.len());
}
