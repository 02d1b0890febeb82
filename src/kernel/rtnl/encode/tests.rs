//! Each request checked against the `ip`/`bridge` command it stands for, and round-tripped through
//! the wire format and the decoder.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkPayload,
};
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo};
use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourFlags, NeighbourState};
use netlink_packet_route::route::{RouteAttribute, RouteFlags, RouteProtocol, RouteScope, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::*;
use crate::kernel::rtnl::decode;
use crate::kernel::{AddrFlags, MacAddr, NUD_PERMANENT, RT_SCOPE_LINK, RT_TABLE_MAIN};

const MAC: MacAddr = MacAddr([0x0e, 0x11, 0x22, 0x33, 0x44, 0x55]);

fn spec() -> VxlanSpec {
    VxlanSpec {
        name: "flannel.1".into(),
        vni: 1,
        port: 0,
        local: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        dev_index: 2,
        learning: false,
        gbp: false,
        mtu: 1450,
        mac: MAC,
    }
}

/// Serializes a request and parses it back, as the kernel would read it.
fn wire(mut msg: Msg) -> RouteNetlinkMessage {
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    match Msg::deserialize(&buf).expect("request parses back").payload {
        NetlinkPayload::InnerMessage(inner) => inner,
        other => panic!("unexpected payload {other:?}"),
    }
}

fn vxlan_data(msg: &Msg) -> (Vec<LinkAttribute>, Vec<InfoVxlan>) {
    let RouteNetlinkMessage::NewLink(link) = &msg.payload_inner() else {
        panic!("not RTM_NEWLINK")
    };
    let data = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                LinkInfo::Data(InfoData::Vxlan(d)) => Some(d.clone()),
                _ => None,
            }),
            _ => None,
        })
        .expect("vxlan info data");
    (link.attributes.clone(), data)
}

trait Inner {
    fn payload_inner(&self) -> RouteNetlinkMessage;
}

impl Inner for Msg {
    fn payload_inner(&self) -> RouteNetlinkMessage {
        match &self.payload {
            NetlinkPayload::InnerMessage(m) => m.clone(),
            other => panic!("unexpected payload {other:?}"),
        }
    }
}

#[test]
fn vxlan_request_has_the_spec_attributes_and_no_port_by_default() {
    let msg = new_vxlan(&spec());
    assert_eq!(
        msg.header.flags,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    );
    let (attrs, data) = vxlan_data(&msg);
    assert!(attrs.contains(&LinkAttribute::IfName("flannel.1".into())));
    assert!(attrs.contains(&LinkAttribute::TxQueueLen(0)));
    assert!(attrs.contains(&LinkAttribute::Mtu(1450)));
    assert!(attrs.contains(&LinkAttribute::Address(MAC.0.to_vec())));
    assert!(
        attrs
            .iter()
            .any(|a| matches!(a, LinkAttribute::LinkInfo(i) if i.contains(&LinkInfo::Kind(InfoKind::Vxlan))))
    );
    for expected in [
        InfoVxlan::Id(1),
        InfoVxlan::Link(2),
        InfoVxlan::Local(Ipv4Addr::new(192, 0, 2, 1)),
        InfoVxlan::Ttl(0),
        InfoVxlan::Tos(0),
        InfoVxlan::Learning(false),
        InfoVxlan::Proxy(false),
        InfoVxlan::Rsc(false),
        InfoVxlan::L2Miss(false),
        InfoVxlan::L3Miss(false),
        InfoVxlan::UDPZeroCsumTX(false),
        InfoVxlan::UDPZeroCsumRX(false),
    ] {
        assert!(data.contains(&expected), "missing {expected:?} in {data:?}");
    }
    assert!(
        !data.iter().any(|d| matches!(d, InfoVxlan::Port(_))),
        "port 0 must not be sent"
    );
    assert!(!data.contains(&InfoVxlan::Gbp));
}

#[test]
fn vxlan_request_with_port_gbp_learning_and_ipv6_local() {
    let mut s = spec();
    s.port = 4789;
    s.gbp = true;
    s.learning = true;
    s.local = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    let (_, data) = vxlan_data(&new_vxlan(&s));
    assert!(data.contains(&InfoVxlan::Port(4789)));
    assert!(data.contains(&InfoVxlan::Gbp));
    assert!(data.contains(&InfoVxlan::Learning(true)));
    assert!(data.contains(&InfoVxlan::Local6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))));
    assert!(!data.iter().any(|d| matches!(d, InfoVxlan::Local(_))));
}

#[test]
fn vxlan_request_round_trips_to_the_same_link() {
    let RouteNetlinkMessage::NewLink(link) = wire(new_vxlan(&spec())) else {
        panic!("not a link")
    };
    let decoded = decode::link(&link).expect("named link");
    assert_eq!(decoded.name, "flannel.1");
    assert_eq!(decoded.kind.as_deref(), Some("vxlan"));
    assert_eq!(decoded.mtu, 1450);
    assert_eq!(decoded.mac, Some(MAC));
    let vx = decoded.vxlan.expect("vxlan info");
    assert_eq!(
        (vx.vni, vx.port, vx.dev_index, vx.learning, vx.gbp, vx.l2miss),
        (1, 0, 2, false, false, false)
    );
    assert_eq!(vx.local, Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))));
}

#[test]
fn link_changes_set_up_flag_and_mtu() {
    let RouteNetlinkMessage::NewLink(up) = set_link_up(7).payload_inner() else {
        panic!()
    };
    assert_eq!(
        (up.header.index, up.header.flags, up.header.change_mask),
        (7, LinkFlags::Up, LinkFlags::Up)
    );
    let RouteNetlinkMessage::NewLink(mtu) = set_link_mtu(7, 1400).payload_inner() else {
        panic!()
    };
    assert_eq!(mtu.attributes, vec![LinkAttribute::Mtu(1400)]);
    let RouteNetlinkMessage::DelLink(del) = del_link(9).payload_inner() else {
        panic!()
    };
    assert_eq!(del.header.index, 9);
    assert_eq!(del_link(9).header.flags, NLM_F_REQUEST | NLM_F_ACK);
}

fn v4addr(prefix_len: u8) -> Addr {
    Addr {
        index: 3,
        ip: "192.0.2.1".parse().unwrap(),
        prefix_len,
        flags: AddrFlags::default(),
    }
}

#[test]
fn address_add_is_exclusive_and_computes_the_ipv4_broadcast() {
    let msg = addr(&v4addr(24), true);
    assert_eq!(
        msg.header.flags,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    );
    let RouteNetlinkMessage::NewAddress(a) = msg.payload_inner() else {
        panic!()
    };
    assert_eq!(
        (a.header.index, a.header.prefix_len, a.header.family),
        (3, 24, AddressFamily::Inet)
    );
    assert!(
        a.attributes
            .contains(&AddressAttribute::Broadcast(Ipv4Addr::new(192, 0, 2, 255)))
    );
    // flannel's vxlan address is a /32: no broadcast, like Go netlink.
    let RouteNetlinkMessage::NewAddress(a) = addr(&v4addr(32), true).payload_inner() else {
        panic!()
    };
    assert!(
        !a.attributes
            .iter()
            .any(|x| matches!(x, AddressAttribute::Broadcast(_)))
    );
    let RouteNetlinkMessage::DelAddress(d) = addr(&v4addr(24), false).payload_inner() else {
        panic!()
    };
    assert!(
        d.attributes
            .contains(&AddressAttribute::Local("192.0.2.1".parse().unwrap()))
    );
}

#[test]
fn address_round_trips() {
    let a6 = Addr {
        index: 4,
        ip: "2001:db8::1".parse().unwrap(),
        prefix_len: 64,
        flags: AddrFlags::default(),
    };
    for a in [v4addr(24), a6] {
        let RouteNetlinkMessage::NewAddress(m) = wire(addr(&a, true)) else {
            panic!()
        };
        assert_eq!(decode::addr(&m), Some(a));
    }
}

fn onlink_route() -> Route {
    let mut r = Route::unicast(
        "198.18.2.0/24".parse().unwrap(),
        Some("198.18.2.0".parse().unwrap()),
        Some(5),
    );
    r.onlink = true;
    r
}

#[test]
fn route_replace_is_the_flannel_onlink_route() {
    let msg = op(&Op::ReplaceRoute(onlink_route()));
    assert_eq!(
        msg.header.flags,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    );
    let RouteNetlinkMessage::NewRoute(m) = msg.payload_inner() else {
        panic!()
    };
    assert_eq!(m.header.table, 254);
    assert_eq!(
        m.header.protocol,
        RouteProtocol::Other(crate::kernel::RTPROT_FLANNEL)
    );
    assert_eq!(m.header.scope, RouteScope::Universe);
    assert_eq!(m.header.kind, RouteType::Unicast);
    assert_eq!(m.header.flags, RouteFlags::Onlink);
    assert_eq!(m.header.destination_prefix_length, 24);
    assert!(m.attributes.contains(&RouteAttribute::Oif(5)));
    assert!(!m.attributes.iter().any(|a| matches!(a, RouteAttribute::Table(_))));
}

#[test]
fn route_in_a_big_table_goes_in_rta_table() {
    let mut r = onlink_route();
    r.table = 1000;
    let RouteNetlinkMessage::DelRoute(m) = op(&Op::DeleteRoute(r)).payload_inner() else {
        panic!()
    };
    assert_eq!(m.header.table, 0);
    assert!(m.attributes.contains(&RouteAttribute::Table(1000)));
}

#[test]
fn routes_round_trip() {
    let mut blackhole = Route::unicast("198.18.0.0/16".parse().unwrap(), None, None);
    blackhole.kind = RouteKind::Blackhole;
    let mut v6 = Route::unicast("2001:db8:1::/64".parse().unwrap(), None, Some(3));
    v6.scope = RT_SCOPE_LINK;
    v6.prefsrc = Some("2001:db8::1".parse().unwrap());
    let mut big = onlink_route();
    big.table = 70000;
    for r in [onlink_route(), blackhole, v6, big] {
        let RouteNetlinkMessage::NewRoute(m) = wire(op(&Op::ReplaceRoute(r.clone()))) else {
            panic!()
        };
        assert_eq!(decode::route(&m), Some(r));
    }
}

#[test]
fn route_destination_is_sent_as_the_network_address() {
    let r = Route::unicast("198.18.2.7/24".parse().unwrap(), None, Some(5));
    let RouteNetlinkMessage::NewRoute(m) = op(&Op::ReplaceRoute(r)).payload_inner() else {
        panic!()
    };
    assert!(
        m.attributes
            .contains(&RouteAttribute::Destination(RouteAddress::from(IpAddr::V4(
                Ipv4Addr::new(198, 18, 2, 0)
            ))))
    );
}

#[test]
fn neighbour_replace_is_permanent_with_lladdr() {
    let n = Neigh {
        index: 5,
        ip: "198.18.2.0".parse().unwrap(),
        mac: Some(MAC),
        state: NUD_PERMANENT,
    };
    let msg = op(&Op::ReplaceNeigh(n.clone()));
    assert_eq!(
        msg.header.flags,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    );
    let RouteNetlinkMessage::NewNeighbour(m) = msg.payload_inner() else {
        panic!()
    };
    assert_eq!(
        (m.header.family, m.header.ifindex, m.header.state),
        (AddressFamily::Inet, 5, NeighbourState::Permanent)
    );
    assert!(
        m.attributes
            .contains(&NeighbourAttribute::LinkLayerAddress(MAC.0.to_vec()))
    );
    let RouteNetlinkMessage::NewNeighbour(back) = wire(msg) else {
        panic!()
    };
    assert_eq!(decode::neigh(&back), Some(n));
}

#[test]
fn fdb_replace_is_bridge_self_permanent_with_dst() {
    let f = Fdb {
        index: 5,
        mac: MAC,
        dst: Some("192.0.2.2".parse().unwrap()),
        self_flag: true,
        permanent: true,
    };
    let msg = op(&Op::ReplaceFdb(f.clone()));
    let RouteNetlinkMessage::NewNeighbour(m) = msg.payload_inner() else {
        panic!()
    };
    assert_eq!(m.header.family, AddressFamily::Bridge);
    assert_eq!(m.header.flags, NeighbourFlags::Own);
    assert_eq!(m.header.state, NeighbourState::Permanent);
    let RouteNetlinkMessage::NewNeighbour(back) = wire(msg) else {
        panic!()
    };
    assert_eq!(decode::fdb(&back), Some(f.clone()));
    let v6 = Fdb {
        dst: Some("2001:db8::2".parse().unwrap()),
        ..f
    };
    let RouteNetlinkMessage::DelNeighbour(back) = wire(op(&Op::DeleteFdb(v6.clone()))) else {
        panic!()
    };
    assert_eq!(decode::fdb(&back), Some(v6));
}

#[test]
fn queries_are_requests_or_dumps() {
    use netlink_packet_core::NLM_F_DUMP;
    assert_eq!(dump_links().header.flags, NLM_F_REQUEST | NLM_F_DUMP);
    assert_eq!(dump_addrs().header.flags, NLM_F_REQUEST | NLM_F_DUMP);
    assert_eq!(
        dump_routes(AddressFamily::Inet6).header.flags,
        NLM_F_REQUEST | NLM_F_DUMP
    );
    assert_eq!(get_link_by_name("flannel.1").header.flags, NLM_F_REQUEST);
    let RouteNetlinkMessage::GetRoute(m) = get_route("192.0.2.2".parse().unwrap()).payload_inner() else {
        panic!()
    };
    assert_eq!(m.header.destination_prefix_length, 32);
    let RouteNetlinkMessage::GetNeighbour(n) = dump_neighs(AddressFamily::Unspec, 5).payload_inner() else {
        panic!()
    };
    assert!(n.attributes.contains(&NeighbourAttribute::IfIndex(5)));
    let _ = RT_TABLE_MAIN;
}
