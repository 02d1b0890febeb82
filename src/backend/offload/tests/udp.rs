//! Unit tests of the offloads with the udp backend's parameters (moved from its
//! tests_offload.rs): segmentation of TSO/USO super-packets and coalescing of received TCP
//! segments (checksums, odd sizes, IP options, non-TCP packets, ordering, limits).

use crate::backend::offload::checksum;
use crate::backend::offload::{
    Coalescer, F_DATA_VALID, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, Segments,
    VNET_HDR_LEN, VnetHdr,
};
use crate::backend::udp::packet::ipv4::*;
use crate::backend::udp::packet::offload::{INTEGRITY, prepare_single, segment};
use crate::backend::udp::packet::tests::{DST, SRC, ipv4_packet, tcp_packet};

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

fn tso(mss: u16) -> VnetHdr {
    VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 40,
        gso_size: mss,
        csum_start: 20,
        csum_offset: 16,
    }
}

/// The segments `segment` wrote, split by its layout.
fn split(out: &[u8], s: Segments) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    let mut at = 0;
    for i in 0..s.count {
        let len = if i + 1 == s.count { s.total - at } else { s.seg_len };
        v.push(out[at..at + len].to_vec());
        at += len;
    }
    assert_eq!(at, s.total);
    v
}

fn tcp_ok(p: &[u8]) -> bool {
    let h = parse(p).unwrap();
    checksum::verifies(
        &p[h.header_len..],
        checksum::pseudo_header(h.src, h.dst, PROTO_TCP, (p.len() - h.header_len) as u32),
    )
}

#[test]
fn tso_super_packet_becomes_complete_segments() {
    for (len, mss) in [
        (4000usize, 1432u16),
        (4296, 1432),
        (1, 1432),
        (5, 2),
        (3001, 999),
        (65000, 1448),
    ] {
        let data = payload(len);
        let sup = tcp_packet(1000, 0x08 | 0x01 | 0x80, &data, &[], true); // PSH FIN CWR
        let mut out = vec![0u8; 80_000];
        let s = segment(&tso(mss), &sup, &mut out).unwrap();
        let segs = split(&out, s);
        assert_eq!(segs.len(), len.div_ceil(usize::from(mss)), "len {len} mss {mss}");
        let mut joined = Vec::new();
        for (i, seg) in segs.iter().enumerate() {
            let h = parse(seg).unwrap();
            assert_eq!(h.total_len, seg.len());
            assert_eq!(h.ttl, 63);
            assert!(checksum::verifies(&seg[..20], 0), "ip checksum of segment {i}");
            assert!(tcp_ok(seg), "tcp checksum of segment {i} (len {len} mss {mss})");
            assert_eq!(
                u16::from_be_bytes([seg[4], seg[5]]),
                0x1234u16.wrapping_add(i as u16)
            );
            let seq = u32::from_be_bytes([seg[24], seg[25], seg[26], seg[27]]);
            assert_eq!(seq, 1000 + (i * usize::from(mss)) as u32);
            let last = i + 1 == segs.len();
            assert_eq!(seg[33] & 0x09 != 0, last, "PSH/FIN only on the last");
            assert_eq!(seg[33] & 0x80 != 0, i == 0, "CWR only on the first");
            assert_eq!(&seg[40..52], &sup[40..52], "TCP options copied");
            joined.extend_from_slice(&seg[52..]);
        }
        assert_eq!(joined, data);
    }
}

#[test]
fn tso_with_ip_options_copies_them() {
    let opts = [0x94, 0x04, 0x00, 0x00]; // router alert
    let sup = tcp_packet(7, 0, &payload(3000), &opts, false);
    let hdr = VnetHdr {
        hdr_len: 44,
        ..tso(1000)
    };
    let mut out = vec![0u8; 8000];
    let s = segment(&hdr, &sup, &mut out).unwrap();
    let segs = split(&out, s);
    assert_eq!(segs.len(), 3);
    for seg in segs {
        assert_eq!(&seg[20..24], &opts);
        assert!(checksum::verifies(&seg[..24], 0));
        assert!(tcp_ok(&seg));
    }
}

#[test]
fn uso_super_packet_becomes_udp_datagrams() {
    let data = payload(2500);
    let mut udp = vec![0u8; 8];
    udp[0..2].copy_from_slice(&9u16.to_be_bytes());
    udp[2..4].copy_from_slice(&53u16.to_be_bytes());
    udp.extend_from_slice(&data);
    let sup = ipv4_packet(SRC, DST, PROTO_UDP, 9, &[], &udp);
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_UDP_L4,
        hdr_len: 28,
        gso_size: 1000,
        csum_start: 20,
        csum_offset: 6,
    };
    let mut out = vec![0u8; 4000];
    let s = segment(&hdr, &sup, &mut out).unwrap();
    assert_eq!((s.count, s.seg_len, s.total), (3, 1028, 2500 + 3 * 28));
    let mut joined = Vec::new();
    for seg in split(&out, s) {
        let h = parse(&seg).unwrap();
        assert_eq!((h.ttl, h.total_len), (8, seg.len()));
        assert_eq!(
            usize::from(u16::from_be_bytes([seg[24], seg[25]])),
            seg.len() - 20
        );
        assert!(checksum::verifies(
            &seg[20..],
            checksum::pseudo_header(SRC, DST, PROTO_UDP, (seg.len() - 20) as u32)
        ));
        joined.extend_from_slice(&seg[28..]);
    }
    assert_eq!(joined, data);
}

#[test]
fn segmentation_refuses_what_it_cannot_do() {
    let sup = tcp_packet(1, 0, &payload(3000), &[], false);
    let mut out = vec![0u8; 10_000];
    let err = |hdr: VnetHdr, p: &[u8], out: &mut [u8]| segment(&hdr, p, out).unwrap_err();
    assert_eq!(err(tso(0), &sup, &mut out).reason, DropReason::BadOffload);
    assert_eq!(
        err(
            VnetHdr {
                gso_type: GSO_TCPV6,
                ..tso(1000)
            },
            &sup,
            &mut out
        )
        .reason,
        DropReason::BadOffload
    );
    assert_eq!(
        err(
            VnetHdr {
                gso_type: GSO_UDP_L4,
                ..tso(1000)
            },
            &sup,
            &mut out
        )
        .reason,
        DropReason::BadOffload
    );
    assert_eq!(
        err(tso(1000), &sup, &mut out[..100]).reason,
        DropReason::BadOffload
    );
    assert_eq!(
        err(tso(1000), &sup[..30], &mut out).reason,
        DropReason::BadOffload
    );
    assert_eq!(
        err(tso(1000), &sup[..40], &mut out).reason,
        DropReason::BadOffload,
        "no payload"
    );
    let mut ttl1 = sup.clone();
    ttl1[8] = 1;
    assert_eq!(err(tso(1000), &ttl1, &mut out).reason, DropReason::TtlExpired);
    assert_eq!(err(tso(1000), &[], &mut out).reason, DropReason::Empty);
}

#[test]
fn a_single_packet_gets_its_partial_checksum_completed() {
    let mut p = tcp_packet(1, 0, &payload(333), &[], false);
    let partial = checksum::fold(checksum::pseudo_header(
        SRC,
        DST,
        PROTO_TCP,
        (p.len() - 20) as u32,
    ));
    p[36..38].copy_from_slice(&partial.to_be_bytes());
    assert!(!tcp_ok(&p));
    prepare_single(&tso(0), &mut p).unwrap();
    assert!(tcp_ok(&p));
    assert_eq!(p[8], 63);
    let bad = VnetHdr {
        csum_start: 20,
        csum_offset: 2000,
        ..tso(0)
    };
    assert_eq!(
        prepare_single(&bad, &mut p).unwrap_err().reason,
        DropReason::BadOffload
    );
}

#[test]
fn vnet_header_round_trips() {
    let h = VnetHdr {
        flags: 1,
        gso_type: GSO_TCPV4 | GSO_ECN,
        hdr_len: 52,
        gso_size: 1420,
        csum_start: 20,
        csum_offset: 16,
    };
    let mut b = [0u8; VNET_HDR_LEN];
    h.encode(&mut b);
    assert_eq!(VnetHdr::decode(&b), Some(h));
    assert_eq!(VnetHdr::decode(&b[..9]), None);
}

fn coalesce(packets: &[Vec<u8>]) -> Vec<(VnetHdr, Vec<u8>)> {
    let refs: Vec<&[u8]> = packets.iter().map(|p| p.as_slice()).collect();
    let (mut out, mut items) = (Vec::new(), Vec::new());
    Coalescer::new(INTEGRITY).coalesce(&refs, &mut out, &mut items);
    items
        .into_iter()
        .map(|r| {
            (
                VnetHdr::decode(&out[r.clone()]).unwrap(),
                out[r.start + VNET_HDR_LEN..r.end].to_vec(),
            )
        })
        .collect()
}

fn run(start: u32, n: usize, mss: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| tcp_packet(start + (i * mss) as u32, 0, &payload(mss), &[], true))
        .collect()
}

#[test]
fn consecutive_segments_coalesce_and_resegment_to_the_same_packets() {
    let mut segs = run(10, 5, 1000);
    segs.push(tcp_packet(5010, 0x08, &payload(300), &[], true)); // short, PSH
    let out = coalesce(&segs);
    assert_eq!(out.len(), 1);
    let (hdr, sup) = &out[0];
    assert_eq!(
        (
            hdr.gso_type,
            hdr.flags,
            hdr.gso_size,
            hdr.hdr_len,
            hdr.csum_start,
            hdr.csum_offset
        ),
        (GSO_TCPV4, F_NEEDS_CSUM, 1000, 52, 20, 16)
    );
    assert_eq!(sup.len(), 52 + 5300);
    assert!(checksum::verifies(&sup[..20], 0));
    assert_eq!(sup[33] & 0x08, 0x08, "PSH of the last segment kept");
    // Segmenting it again gives the original segments back (TTL one lower).
    let mut buf = vec![0u8; 10_000];
    let s = segment(hdr, sup, &mut buf).unwrap();
    let again = split(&buf, s);
    assert_eq!(again.len(), segs.len());
    for (a, b) in again.iter().zip(&segs) {
        let mut b = b.clone();
        decrement_ttl(&mut b).unwrap();
        assert_eq!(a[20..], b[20..]);
        assert_eq!(a[8], b[8]);
    }
}

#[test]
fn what_must_not_merge_stays_apart_and_in_order() {
    let mut segs = run(0, 3, 500);
    segs.push(tcp_packet(5000, 0, &payload(500), &[], true)); // a gap in sequence
    let out = coalesce(&segs);
    assert_eq!(
        out.iter().map(|(h, p)| (h.gso_type, p.len())).collect::<Vec<_>>(),
        vec![(GSO_TCPV4, 52 + 1500), (GSO_NONE, 552)]
    );

    let mut bad = run(0, 3, 500);
    bad[1][60] ^= 0xff; // payload corrupted: TCP checksum wrong
    let out = coalesce(&bad);
    assert_eq!(out.len(), 3, "a bad segment is written alone, and splits the run");
    assert_eq!(out[1].0.flags, 0, "not marked valid");
    assert_eq!(out[0].0.flags, F_DATA_VALID);

    let opts = [1, 1, 1, 0];
    let with_opts: Vec<Vec<u8>> = (0..3)
        .map(|i| tcp_packet(i * 100, 0, &payload(100), &opts, false))
        .collect();
    assert_eq!(coalesce(&with_opts).len(), 3, "IP options are never merged");

    let udp: Vec<Vec<u8>> = (0..3)
        .map(|_| ipv4_packet(SRC, DST, PROTO_UDP, 64, &[], &[0; 30]))
        .collect();
    let out = coalesce(&udp);
    assert_eq!(out.len(), 3);
    assert!(
        out.iter()
            .all(|(h, p)| h.gso_type == GSO_NONE && h.flags == 0 && p.len() == 50)
    );

    let mut fin = run(0, 2, 100);
    fin.push(tcp_packet(200, 0x01, &payload(100), &[], true));
    fin.push(tcp_packet(300, 0, &payload(100), &[], true));
    let out = coalesce(&fin);
    let seqs: Vec<u32> = out
        .iter()
        .map(|(_, p)| u32::from_be_bytes([p[24], p[25], p[26], p[27]]))
        .collect();
    assert_eq!(
        seqs,
        vec![0, 200, 300],
        "FIN alone, nothing after it joins the earlier group"
    );

    let big = run(0, 3, 100);
    let mut small_then_big = vec![big[0].clone(), tcp_packet(100, 0, &payload(50), &[], true)];
    small_then_big.push(tcp_packet(150, 0, &payload(100), &[], true));
    assert_eq!(
        coalesce(&small_then_big).len(),
        2,
        "after a short segment the group is closed"
    );
}

#[test]
fn interleaved_flows_coalesce_separately() {
    let a = run(0, 4, 700);
    let mut b = run(9000, 4, 700);
    for p in &mut b {
        // another source port
        p[20] = 0x11;
        p[36] = 0;
        p[37] = 0;
        let c = checksum::checksum(
            &p[20..],
            checksum::pseudo_header(SRC, DST, PROTO_TCP, (p.len() - 20) as u32),
        );
        p[36..38].copy_from_slice(&c.to_be_bytes());
    }
    let mixed: Vec<Vec<u8>> = a
        .iter()
        .zip(&b)
        .flat_map(|(x, y)| [x.clone(), y.clone()])
        .collect();
    let out = coalesce(&mixed);
    assert_eq!(out.len(), 2);
    assert!(
        out.iter()
            .all(|(h, p)| h.gso_type == GSO_TCPV4 && p.len() == 52 + 2800)
    );
}

#[test]
fn limits_of_a_super_packet() {
    let many = run(0, 70, 100);
    let out = coalesce(&many);
    assert_eq!(
        out.iter().map(|(_, p)| (p.len() - 52) / 100).collect::<Vec<_>>(),
        vec![64, 6]
    );
    let huge = run(0, 50, 1400);
    let out = coalesce(&huge);
    assert!(out.iter().all(|(_, p)| p.len() <= 65535));
    assert_eq!(out.iter().map(|(_, p)| (p.len() - 52) / 1400).sum::<usize>(), 50);
}
