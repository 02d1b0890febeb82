//! Decoding kernel messages built by hand: the attributes the kernel really sends, including the
//! awkward ones (IFA_FLAGS, RTA_TABLE, RTA_MULTIPATH, raw AF_BRIDGE destinations, extended acks).

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroI32;

use netlink_packet_core::{ErrorMessage, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteNextHop};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::*;

fn vxlan_link() -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = 7;
    m.header.flags = LinkFlags::Up | LinkFlags::Broadcast;
    m.attributes = vec![
        LinkAttribute::IfName("flannel.1".into()),
        LinkAttribute::Mtu(1450),
        LinkAttribute::Address(vec![0x0e, 1, 2, 3, 4, 5]),
        LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(1),
                InfoVxlan::Link(2),
                InfoVxlan::Local(Ipv4Addr::new(192, 0, 2, 1)),
                InfoVxlan::Port(8472),
                InfoVxlan::Learning(false),
                InfoVxlan::L2Miss(true),
                InfoVxlan::Gbp,
            ])),
        ]),
    ];
    m
}

#[test]
fn vxlan_link_decodes_every_compared_attribute() {
    let link = link(&vxlan_link()).expect("named link");
    assert_eq!(link.index, 7);
    assert_eq!(link.name, "flannel.1");
    assert_eq!(link.kind.as_deref(), Some("vxlan"));
    assert_eq!(link.mtu, 1450);
    assert_eq!(
        link.mac.map(|m| m.to_string()).as_deref(),
        Some("0e:01:02:03:04:05")
    );
    assert!(link.up);
    let vx = link.vxlan.expect("vxlan info");
    assert_eq!(
        vx,
        VxlanInfo {
            vni: 1,
            port: 8472,
            local: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
            group: None,
            dev_index: 2,
            learning: false,
            gbp: true,
            l2miss: true,
        }
    );
}

#[test]
fn physical_link_has_no_kind_and_odd_hardware_address_is_no_mac() {
    let mut m = LinkMessage::default();
    m.header.index = 3;
    m.attributes = vec![
        LinkAttribute::IfName("tun0".into()),
        LinkAttribute::Address(vec![1, 2, 3, 4]),
    ];
    let l = link(&m).unwrap();
    assert_eq!((l.kind, l.mac, l.up, l.vxlan), (None, None, false, None));
    assert_eq!(
        link(&LinkMessage::default()),
        None,
        "a link without a name is skipped"
    );
}

fn address(flags_attr: Option<AddressFlags>) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = AddressFamily::Inet6;
    m.header.index = 2;
    m.header.prefix_len = 64;
    m.header.flags = AddressHeaderFlags::Permanent;
    m.attributes
        .push(AddressAttribute::Address("2001:db8::1".parse().unwrap()));
    if let Some(f) = flags_attr {
        m.attributes.push(AddressAttribute::Flags(f));
    }
    m
}

#[test]
fn address_flags_come_from_ifa_flags_when_present() {
    let a = addr(&address(None)).unwrap();
    assert_eq!(
        a.flags,
        AddrFlags {
            permanent: true,
            deprecated: false,
            temporary: false
        }
    );
    let a = addr(&address(Some(AddressFlags::Deprecated | AddressFlags::Secondary))).unwrap();
    assert_eq!(
        a.flags,
        AddrFlags {
            permanent: false,
            deprecated: true,
            temporary: true
        }
    );
    assert_eq!((a.index, a.prefix_len), (2, 64));
}

#[test]
fn ipv4_address_prefers_ifa_local_over_the_peer() {
    let mut m = AddressMessage::default();
    m.header.family = AddressFamily::Inet;
    m.attributes = vec![
        AddressAttribute::Address("192.0.2.9".parse().unwrap()),
        AddressAttribute::Local("192.0.2.1".parse().unwrap()),
    ];
    assert_eq!(addr(&m).unwrap().ip, "192.0.2.1".parse::<IpAddr>().unwrap());
    assert_eq!(addr(&AddressMessage::default()), None);
}

fn main_route() -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.destination_prefix_length = 24;
    m.header.table = 254;
    m.header.protocol = 2.into();
    m.header.scope = 253.into();
    m.header.kind = 1.into();
    m.attributes = vec![
        RouteAttribute::Table(254),
        RouteAttribute::Destination(RouteAddress::Inet(Ipv4Addr::new(192, 0, 2, 0))),
        RouteAttribute::PrefSource(RouteAddress::Inet(Ipv4Addr::new(192, 0, 2, 1))),
        RouteAttribute::Oif(2),
    ];
    m
}

#[test]
fn connected_route_decodes() {
    let r = route(&main_route()).unwrap();
    assert_eq!(r.dst, "192.0.2.0/24".parse::<IpNet>().unwrap());
    assert_eq!(
        (r.oif, r.gateway, r.table, r.protocol, r.scope),
        (Some(2), None, 254, 2, 253)
    );
    assert_eq!(r.prefsrc, Some("192.0.2.1".parse().unwrap()));
    assert_eq!(r.kind, RouteKind::Unicast);
    assert!(!r.onlink && !r.multipath);
}

#[test]
fn rta_table_wins_over_the_header_table() {
    let mut m = main_route();
    m.header.table = 252;
    m.attributes.retain(|a| !matches!(a, RouteAttribute::Table(_)));
    m.attributes.push(RouteAttribute::Table(1000));
    assert_eq!(route(&m).unwrap().table, 1000);
}

#[test]
fn default_route_without_destination_and_onlink_flag() {
    let mut m = main_route();
    m.header.destination_prefix_length = 0;
    m.header.flags = RouteFlags::Onlink;
    m.attributes = vec![RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(
        192, 0, 2, 254,
    )))];
    let r = route(&m).unwrap();
    assert_eq!(r.dst, "0.0.0.0/0".parse::<IpNet>().unwrap());
    assert_eq!(r.gateway, Some("192.0.2.254".parse().unwrap()));
    assert!(r.onlink);
    assert_eq!(r.table, 254, "without RTA_TABLE the header table counts");
}

#[test]
fn multipath_route_has_no_single_interface() {
    let mut m = main_route();
    m.header.destination_prefix_length = 0;
    m.attributes = vec![
        RouteAttribute::Oif(3),
        RouteAttribute::MultiPath(vec![RouteNextHop::default()]),
    ];
    let r = route(&m).unwrap();
    assert!(r.multipath);
    assert_eq!((r.oif, r.gateway), (None, None));
}

#[test]
fn routes_of_other_families_are_skipped() {
    let mut m = main_route();
    m.header.address_family = AddressFamily::Mpls;
    assert_eq!(route(&m), None);
}

fn bridge_entry(dst: Vec<u8>) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = 7;
    m.header.flags = NeighbourFlags::Own;
    m.header.state = NeighbourState::Permanent;
    m.attributes = vec![
        NeighbourAttribute::LinkLayerAddress(vec![0x0e, 1, 2, 3, 4, 5]),
        NeighbourAttribute::Destination(NeighbourAddress::Other(dst)),
    ];
    m
}

#[test]
fn fdb_destination_is_raw_bytes_of_either_family() {
    let f = fdb(&bridge_entry(vec![192, 0, 2, 2])).unwrap();
    assert_eq!(f.dst, Some("192.0.2.2".parse().unwrap()));
    assert!(f.self_flag && f.permanent);
    assert_eq!(f.index, 7);
    let v6: IpAddr = "2001:db8::2".parse().unwrap();
    let IpAddr::V6(v6a) = v6 else { unreachable!() };
    assert_eq!(fdb(&bridge_entry(v6a.octets().to_vec())).unwrap().dst, Some(v6));
    assert_eq!(fdb(&bridge_entry(vec![1, 2, 3])).unwrap().dst, None);
}

#[test]
fn neighbour_without_lladdr_keeps_its_state() {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.ifindex = 4;
    m.header.state = NeighbourState::Failed;
    m.attributes = vec![NeighbourAttribute::Destination(NeighbourAddress::Inet(
        Ipv4Addr::new(192, 0, 2, 7),
    ))];
    let n = neigh(&m).unwrap();
    assert_eq!((n.index, n.mac, n.state), (4, None, 0x20));
}

fn note(inner: RouteNetlinkMessage) -> NetlinkMessage<RouteNetlinkMessage> {
    NetlinkMessage::from(inner)
}

#[test]
fn notifications_map_to_events_by_family() {
    assert!(matches!(
        event(note(RouteNetlinkMessage::NewLink(vxlan_link()))),
        Some(KernelEvent::LinkChanged(_))
    ));
    assert_eq!(
        event(note(RouteNetlinkMessage::DelLink(vxlan_link()))),
        Some(KernelEvent::LinkDeleted {
            index: 7,
            name: "flannel.1".into()
        })
    );
    assert!(matches!(
        event(note(RouteNetlinkMessage::DelNeighbour(bridge_entry(vec![
            192, 0, 2, 2
        ])))),
        Some(KernelEvent::FdbDeleted(_))
    ));
    let mut arp = bridge_entry(vec![]);
    arp.header.family = AddressFamily::Inet;
    arp.attributes = vec![NeighbourAttribute::Destination(NeighbourAddress::Inet(
        Ipv4Addr::new(198, 18, 2, 0),
    ))];
    assert!(matches!(
        event(note(RouteNetlinkMessage::NewNeighbour(arp))),
        Some(KernelEvent::NeighChanged(_))
    ));
    assert!(matches!(
        event(note(RouteNetlinkMessage::DelRoute(main_route()))),
        Some(KernelEvent::RouteDeleted(_))
    ));
    let overrun = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::Overrun(Vec::new()));
    assert_eq!(event(overrun), Some(KernelEvent::Overrun));
    assert_eq!(
        event(note(RouteNetlinkMessage::GetLink(LinkMessage::default()))),
        None
    );
}

fn nlmsgerr(code: i32, payload: Vec<u8>) -> ErrorMessage {
    let mut e = ErrorMessage::default();
    e.code = NonZeroI32::new(code);
    e.header = payload;
    e
}

fn tlv(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = 4 + value.len();
    let mut out = Vec::new();
    out.extend((len as u16).to_ne_bytes());
    out.extend(kind.to_ne_bytes());
    out.extend(value);
    out.resize(len.next_multiple_of(4), 0);
    out
}

#[test]
fn error_text_is_strerror_plus_the_extended_ack() {
    use netlink_packet_core::{NLM_F_ACK_TLVS, NLM_F_CAPPED};
    let e = nlmsgerr(-libc::EEXIST, vec![0; 16]);
    assert_eq!(errno(&e), Some(libc::EEXIST));
    assert_eq!(error_text(libc::EEXIST, &e, 0), "File exists");

    // Capped: the echoed request is only its 16-byte header, then the TLVs.
    let mut payload = vec![0u8; 16];
    payload.extend(tlv(2, &4u32.to_ne_bytes()));
    payload.extend(tlv(1, b"Nexthop has invalid gateway\0"));
    let e = nlmsgerr(-libc::ENETUNREACH, payload);
    assert_eq!(
        error_text(libc::ENETUNREACH, &e, NLM_F_CAPPED | NLM_F_ACK_TLVS),
        "Network is unreachable (Nexthop has invalid gateway)"
    );

    // Not capped: the whole request (its length in the first word) precedes the TLVs.
    let mut payload = 22u32.to_ne_bytes().to_vec();
    payload.resize(24, 0);
    payload.extend(tlv(1, b"Unknown device type\0"));
    let e = nlmsgerr(-libc::EOPNOTSUPP, payload);
    assert!(error_text(libc::EOPNOTSUPP, &e, NLM_F_ACK_TLVS).ends_with("(Unknown device type)"));

    // Truncated or absent TLVs never panic.
    for junk in [vec![], vec![1, 2], vec![0xff; 40]] {
        let e = nlmsgerr(-libc::EINVAL, junk);
        assert!(error_text(libc::EINVAL, &e, NLM_F_ACK_TLVS).starts_with("Invalid argument"));
    }
    assert_eq!(
        errno(&ErrorMessage::default()),
        None,
        "an acknowledgement is no error"
    );
}
