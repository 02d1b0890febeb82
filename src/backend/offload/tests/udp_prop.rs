//! Property tests of the offloads with the udp backend's parameters (moved from its
//! tests_prop.rs): no offload header or packet panics, and coalescing keeps every byte and the
//! order of each flow. Fixed seed and case count, so `make test` runs the same cases every time.

use proptest::prelude::*;

use crate::backend::offload::{Coalescer, VNET_HDR_LEN, VnetHdr};
use crate::backend::udp::packet::ipv4::*;
use crate::backend::udp::packet::offload::{INTEGRITY, segment};
use crate::backend::udp::packet::tests::tcp_packet;

proptest! {
    #![proptest_config(crate::backend::testutil::fixed_proptest_config())]

    #[test]
    fn arbitrary_offload_headers_never_panic(hdr in proptest::collection::vec(any::<u8>(), VNET_HDR_LEN), bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let hdr = VnetHdr::decode(&hdr).unwrap();
        let mut out = vec![0u8; 4096];
        if let Ok(s) = segment(&hdr, &bytes, &mut out) {
            prop_assert!(s.total <= out.len());
        }
        let mut single = bytes.clone();
        let _ = crate::backend::udp::packet::offload::prepare_single(&hdr, &mut single);
    }

    #[test]
    fn coalescing_keeps_every_byte_and_the_order_of_each_flow(sizes in proptest::collection::vec(1usize..1400, 1..40), junk in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..5)) {
        let mss = *sizes.iter().max().unwrap();
        let mut packets = Vec::new();
        let mut seq = 0u32;
        for s in &sizes {
            packets.push(tcp_packet(seq, 0, &vec![(*s % 251) as u8; *s], &[], true));
            seq = seq.wrapping_add(*s as u32);
        }
        packets.extend(junk);
        let refs: Vec<&[u8]> = packets.iter().map(|p| p.as_slice()).collect();
        let (mut out, mut items) = (Vec::new(), Vec::new());
        Coalescer::new(INTEGRITY).coalesce(&refs, &mut out, &mut items);
        // Re-segment what came out: the TCP payload bytes, in order, are the ones that went in.
        let mut got = Vec::new();
        let mut buf = vec![0u8; 200_000];
        for r in &items {
            let hdr = VnetHdr::decode(&out[r.clone()]).unwrap();
            let pkt = &out[r.start + VNET_HDR_LEN..r.end];
            if hdr.gso_type != 0 {
                prop_assert!(pkt.len() <= 65535);
                let s = segment(&hdr, pkt, &mut buf).unwrap();
                let mut at = 0;
                for i in 0..s.count {
                    let l = if i + 1 == s.count { s.total - at } else { s.seg_len };
                    got.push(buf[at + 52..at + l].to_vec());
                    at += l;
                }
            } else if pkt.len() >= 52 && pkt[9] == PROTO_TCP && pkt[0] == 0x45 && pkt.len() > 52 {
                got.push(pkt[52..].to_vec());
            }
        }
        let want: Vec<Vec<u8>> = sizes.iter().map(|s| vec![(*s % 251) as u8; *s]).collect();
        prop_assert_eq!(got.concat().len() >= want.concat().len(), true);
        prop_assert_eq!(&got.concat()[..want.concat().len()], &want.concat()[..]);
        let _ = mss;
    }
}
