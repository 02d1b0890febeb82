//! Property tests of the datagram parsing and validation (issue 12 item 6): no input panics, round
//! trips hold, and every error names the input. Fixed seed and case count, so `make test` runs the
//! same cases every time. The offload properties live with the shared offloads
//! (`backend::offload`, tests/udp_prop.rs).

use std::net::Ipv4Addr;

use proptest::prelude::*;

use super::ipv4::*;
use super::tests::{ipv4_packet, policy, tcp_packet};
use crate::backend::offload::checksum;

proptest! {
    #![proptest_config(crate::backend::testutil::fixed_proptest_config())]

    #[test]
    fn arbitrary_datagrams_never_panic_and_accepted_ones_obey_every_rule(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let mut p = bytes.clone();
        match accept(&mut p, &policy()) {
            Ok(h) => {
                prop_assert_eq!(h.total_len, p.len());
                prop_assert!(p.len() <= 1472);
                prop_assert!(policy().own_subnet.contains(&h.dst));
                prop_assert!(policy().network.contains(&h.src));
                prop_assert!(checksum::verifies(&p[..h.header_len], 0));
                prop_assert_eq!(p[8], bytes[8] - 1);
            }
            Err(e) => {
                let text = e.to_string();
                prop_assert!(text.contains(&format!("datagram of {} bytes", bytes.len())), "{}", text);
                prop_assert!(text.contains(e.reason.label()), "{}", text);
            }
        }
    }

    #[test]
    fn mutated_valid_packets_never_panic(seed in 0u32..1000, flip in 0usize..64, val in any::<u8>(), cut in 0usize..80) {
        let mut p = tcp_packet(seed, 0, &[7u8; 40], &[], seed % 2 == 0);
        let i = flip % p.len();
        p[i] = val;
        p.truncate(p.len().saturating_sub(cut % 8));
        let _ = accept(&mut p.clone(), &policy());
        let mut out = Vec::new();
        let _ = icmp_net_unreachable(&p, Ipv4Addr::new(198, 18, 0, 0), &mut out);
        prop_assert!(out.len() <= 20 + 8 + 60 + 8);
    }

    #[test]
    fn well_formed_packets_round_trip(src_host in 0u32..65536, dst_host in 0u32..256, ttl in 2u8..=255, proto in any::<u8>(), len in 0usize..1400, opt_words in 0usize..10) {
        let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + src_host);
        let dst = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 1, 0)) + dst_host);
        let opts = vec![1u8; opt_words * 4];
        let body = vec![0x5au8; len];
        let mut p = ipv4_packet(src, dst, proto, ttl, &opts, &body);
        let orig = p.clone();
        let h = accept(&mut p, &policy()).unwrap();
        prop_assert_eq!((h.src, h.dst, h.ttl, h.protocol, h.header_len), (src, dst, ttl - 1, proto, 20 + opts.len()));
        prop_assert!(checksum::verifies(&p[..h.header_len], 0));
        prop_assert_eq!(&p[h.header_len..], &orig[h.header_len..]);
        p[8] = ttl;
        checksum::set_ipv4_header(&mut p);
        prop_assert_eq!(p, orig);
    }
}
