//! The ipip device request (spec 9.4) checked against `ip link add flannel.ipip type ipip local
//! <ip> ttl inherit nopmtudisc`, and round-tripped through the wire format and the decoder.

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{InfoData, InfoIpTunnel, InfoKind, LinkAttribute, LinkInfo, LinkMessage};

use super::*;
use crate::kernel::IpipInfo;
use crate::kernel::rtnl::decode;

fn spec() -> IpipSpec {
    IpipSpec {
        name: "flannel.ipip".into(),
        local: Ipv4Addr::new(192, 0, 2, 1),
        mtu: 1480,
    }
}

fn wire(mut msg: Msg) -> LinkMessage {
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    match Msg::deserialize(&buf).expect("request parses back").payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => link,
        other => panic!("unexpected payload {other:?}"),
    }
}

fn tunnel_data(link: &LinkMessage) -> Vec<InfoIpTunnel> {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                LinkInfo::Data(InfoData::IpTunnel(d)) => Some(d.clone()),
                _ => None,
            }),
            _ => None,
        })
        .expect("ipip info data")
}

#[test]
fn ipip_request_is_exclusive_with_local_ttl_inherit_and_no_pmtudisc() {
    let msg = new_ipip(&spec());
    assert_eq!(
        msg.header.flags,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    );
    let link = wire(msg);
    assert!(
        link.attributes
            .contains(&LinkAttribute::IfName("flannel.ipip".into()))
    );
    assert!(link.attributes.contains(&LinkAttribute::TxQueueLen(0)));
    assert!(link.attributes.contains(&LinkAttribute::Mtu(1480)));
    assert!(
        link.attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::LinkInfo(i) if i.contains(&LinkInfo::Kind(InfoKind::IpIp))))
    );
    let data = tunnel_data(&link);
    for expected in [
        InfoIpTunnel::Local(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
        InfoIpTunnel::Ttl(0),
        InfoIpTunnel::Tos(0),
        InfoIpTunnel::PMtuDisc(false),
    ] {
        assert!(data.contains(&expected), "missing {expected:?} in {data:?}");
    }
    // remote any: no IFLA_IPTUN_REMOTE at all.
    assert!(
        !data.iter().any(|d| matches!(d, InfoIpTunnel::Remote(_))),
        "{data:?}"
    );
}

#[test]
fn ipip_request_decodes_to_the_link_it_asks_for() {
    let decoded = decode::link(&wire(new_ipip(&spec()))).expect("link with a name");
    assert_eq!(decoded.name, "flannel.ipip");
    assert_eq!(decoded.kind.as_deref(), Some("ipip"));
    assert_eq!(decoded.mtu, 1480);
    assert_eq!(decoded.vxlan, None);
    assert_eq!(
        decoded.ipip,
        Some(IpipInfo {
            local: Some(Ipv4Addr::new(192, 0, 2, 1)),
            remote: None,
            ttl: 0,
            pmtudisc: false,
            link: 0,
        })
    );
}

#[test]
fn a_remote_and_any_addresses_decode_as_the_kernel_lists_them() {
    let mut link = wire(new_ipip(&spec()));
    for attr in &mut link.attributes {
        if let LinkAttribute::LinkInfo(infos) = attr {
            for info in infos {
                if let LinkInfo::Data(InfoData::IpTunnel(d)) = info {
                    *d = vec![
                        InfoIpTunnel::Local(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                        InfoIpTunnel::Remote(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9))),
                        InfoIpTunnel::Ttl(64),
                        InfoIpTunnel::PMtuDisc(true),
                        InfoIpTunnel::Link(2),
                    ];
                }
            }
        }
    }
    let info = decode::link(&link).and_then(|l| l.ipip).expect("ipip info");
    assert_eq!(info.local, None, "local any");
    assert_eq!(info.remote, Some(Ipv4Addr::new(203, 0, 113, 9)));
    assert_eq!((info.ttl, info.pmtudisc, info.link), (64, true, 2));
}
