//! Builds the rtnetlink request messages for every kernel change and query, as pure data (no I/O),
//! so each one can be checked against the `ip`/`bridge` command it stands for.
//! Must not send anything or decide what to change. Spec: section 9 (main table, protocol boot,
//! txqueuelen 0, replace = create|replace) and 9.1 (vxlan device attributes, neighbour and FDB entries).

use std::net::IpAddr;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoIpTunnel, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::kernel::{Addr, Fdb, IpipSpec, Neigh, Op, Route, RouteKind, VxlanSpec};

pub(super) type Msg = NetlinkMessage<RouteNetlinkMessage>;

/// Flags of a request that changes something and wants an acknowledgement.
pub(super) const CHANGE: u16 = NLM_F_REQUEST | NLM_F_ACK;
/// `ip ... add`: create, fail with EEXIST when present.
pub(super) const CREATE_EXCL: u16 = CHANGE | NLM_F_CREATE | NLM_F_EXCL;
/// `ip ... replace`: create or overwrite.
pub(super) const CREATE_REPLACE: u16 = CHANGE | NLM_F_CREATE | NLM_F_REPLACE;

fn message(inner: RouteNetlinkMessage, flags: u16) -> Msg {
    let mut msg = NetlinkMessage::from(inner);
    msg.header.flags = flags;
    msg
}

fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// `ip link show` (all links).
pub(super) fn dump_links() -> Msg {
    message(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        NLM_F_REQUEST | NLM_F_DUMP,
    )
}

/// `ip link show <name>`: the kernel answers one link or ENODEV.
pub(super) fn get_link_by_name(name: &str) -> Msg {
    let mut link = LinkMessage::default();
    link.attributes.push(LinkAttribute::IfName(name.to_string()));
    message(RouteNetlinkMessage::GetLink(link), NLM_F_REQUEST)
}

/// `ip addr show` (both families).
pub(super) fn dump_addrs() -> Msg {
    message(
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        NLM_F_REQUEST | NLM_F_DUMP,
    )
}

/// `ip -4 route show table all` resp. `ip -6 ...`; one family per dump keeps multicast-routing
/// families out of the answer.
pub(super) fn dump_routes(family: AddressFamily) -> Msg {
    let mut route = RouteMessage::default();
    route.header.address_family = family;
    message(RouteNetlinkMessage::GetRoute(route), NLM_F_REQUEST | NLM_F_DUMP)
}

/// `ip neigh show` (`Unspec`: IPv4 and IPv6) or `bridge fdb show` (`Bridge`); `index` asks the
/// kernel to filter by device where it supports that (callers filter again).
pub(super) fn dump_neighs(family: AddressFamily, index: u32) -> Msg {
    let mut neigh = NeighbourMessage::default();
    neigh.header.family = family;
    if family != AddressFamily::Bridge {
        neigh.attributes.push(NeighbourAttribute::IfIndex(index));
    }
    message(
        RouteNetlinkMessage::GetNeighbour(neigh),
        NLM_F_REQUEST | NLM_F_DUMP,
    )
}

/// `ip route get <dst>`.
pub(super) fn get_route(dst: IpAddr) -> Msg {
    let mut route = RouteMessage::default();
    route.header.address_family = family_of(dst);
    route.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
    route
        .attributes
        .push(RouteAttribute::Destination(RouteAddress::from(dst)));
    message(RouteNetlinkMessage::GetRoute(route), NLM_F_REQUEST)
}

/// `ip link add <name> txqueuelen 0 mtu <mtu> address <mac> type vxlan id <vni> dev <index>
/// local <ip> [dstport <port>] [no]learning [gbp] ttl 0 tos 0` with proxy, rsc, l2miss, l3miss
/// and udp6zerocsumtx/rx off (spec 9.1).
pub(super) fn new_vxlan(spec: &VxlanSpec) -> Msg {
    let mut data = vec![InfoVxlan::Id(spec.vni)];
    if spec.dev_index != 0 {
        data.push(InfoVxlan::Link(spec.dev_index));
    }
    data.push(match spec.local {
        IpAddr::V4(ip) => InfoVxlan::Local(ip),
        IpAddr::V6(ip) => InfoVxlan::Local6(ip),
    });
    data.extend([
        InfoVxlan::Ttl(0),
        InfoVxlan::Tos(0),
        InfoVxlan::Learning(spec.learning),
        InfoVxlan::Proxy(false),
        InfoVxlan::Rsc(false),
        InfoVxlan::L2Miss(false),
        InfoVxlan::L3Miss(false),
        InfoVxlan::UDPZeroCsumTX(false),
        InfoVxlan::UDPZeroCsumRX(false),
    ]);
    if spec.gbp {
        data.push(InfoVxlan::Gbp);
    }
    if spec.port > 0 {
        data.push(InfoVxlan::Port(spec.port));
    }
    let mut link = LinkMessage::default();
    link.attributes = vec![
        LinkAttribute::IfName(spec.name.clone()),
        LinkAttribute::TxQueueLen(0),
        LinkAttribute::Mtu(spec.mtu),
        LinkAttribute::Address(spec.mac.0.to_vec()),
        LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(data)),
        ]),
    ];
    message(RouteNetlinkMessage::NewLink(link), CREATE_EXCL)
}

/// `ip link add <name> txqueuelen 0 mtu <mtu> type ipip local <local> ttl inherit tos 0
/// nopmtudisc` (remote any: the attribute is not sent), as upstream's netlink library sends it
/// (spec 9.4).
pub(super) fn new_ipip(spec: &IpipSpec) -> Msg {
    let data = vec![
        InfoIpTunnel::Local(IpAddr::V4(spec.local)),
        InfoIpTunnel::PMtuDisc(false),
        InfoIpTunnel::Ttl(0),
        InfoIpTunnel::Tos(0),
    ];
    let mut link = LinkMessage::default();
    link.attributes = vec![
        LinkAttribute::IfName(spec.name.clone()),
        LinkAttribute::TxQueueLen(0),
        LinkAttribute::Mtu(spec.mtu),
        LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::IpIp),
            LinkInfo::Data(InfoData::IpTunnel(data)),
        ]),
    ];
    message(RouteNetlinkMessage::NewLink(link), CREATE_EXCL)
}

/// `ip link add <name> mtu <mtu> type wireguard` (spec 9.5).
pub(super) fn new_wireguard(name: &str, mtu: u32) -> Msg {
    let mut link = LinkMessage::default();
    link.attributes = vec![
        LinkAttribute::IfName(name.to_string()),
        LinkAttribute::Mtu(mtu),
        LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Wireguard)]),
    ];
    message(RouteNetlinkMessage::NewLink(link), CREATE_EXCL)
}

/// `ip link del dev #index`.
pub(super) fn del_link(index: u32) -> Msg {
    let mut link = LinkMessage::default();
    link.header.index = index;
    message(RouteNetlinkMessage::DelLink(link), CHANGE)
}

/// `ip link set dev #index up`.
pub(super) fn set_link_up(index: u32) -> Msg {
    let mut link = LinkMessage::default();
    link.header.index = index;
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    message(RouteNetlinkMessage::NewLink(link), CHANGE)
}

/// `ip link set dev #index mtu <mtu>`.
pub(super) fn set_link_mtu(index: u32, mtu: u32) -> Msg {
    let mut link = LinkMessage::default();
    link.header.index = index;
    link.attributes.push(LinkAttribute::Mtu(mtu));
    message(RouteNetlinkMessage::NewLink(link), CHANGE)
}

/// `ip addr add|del <ip>/<len> dev #index`; IPv4 addresses shorter than /31 get the computed
/// broadcast, as the Go netlink library upstream uses does.
pub(super) fn addr(addr: &Addr, add: bool) -> Msg {
    let mut msg = AddressMessage::default();
    msg.header.family = family_of(addr.ip);
    msg.header.prefix_len = addr.prefix_len;
    msg.header.index = addr.index;
    msg.attributes.push(AddressAttribute::Local(addr.ip));
    msg.attributes.push(AddressAttribute::Address(addr.ip));
    if let IpAddr::V4(ip) = addr.ip
        && add
        && addr.prefix_len < 31
    {
        let host_mask = u32::MAX.checked_shr(u32::from(addr.prefix_len)).unwrap_or(0);
        msg.attributes
            .push(AddressAttribute::Broadcast((u32::from(ip) | host_mask).into()));
    }
    if add {
        message(RouteNetlinkMessage::NewAddress(msg), CREATE_EXCL)
    } else {
        message(RouteNetlinkMessage::DelAddress(msg), CHANGE)
    }
}

/// The request for one `Op`: replace = create|replace, delete = plain delete.
pub(super) fn op(op: &Op) -> Msg {
    match op {
        Op::ReplaceRoute(r) => message(RouteNetlinkMessage::NewRoute(route(r)), CREATE_REPLACE),
        Op::DeleteRoute(r) => message(RouteNetlinkMessage::DelRoute(route(r)), CHANGE),
        Op::ReplaceNeigh(n) => message(RouteNetlinkMessage::NewNeighbour(neigh(n)), CREATE_REPLACE),
        Op::DeleteNeigh(n) => message(RouteNetlinkMessage::DelNeighbour(neigh(n)), CHANGE),
        Op::ReplaceFdb(f) => message(RouteNetlinkMessage::NewNeighbour(fdb(f)), CREATE_REPLACE),
        Op::DeleteFdb(f) => message(RouteNetlinkMessage::DelNeighbour(fdb(f)), CHANGE),
    }
}

fn route_kind(kind: RouteKind) -> RouteType {
    match kind {
        RouteKind::Unicast => RouteType::Unicast,
        RouteKind::Blackhole => RouteType::BlackHole,
        RouteKind::Local => RouteType::Local,
        RouteKind::Other(v) => RouteType::from(v),
    }
}

/// `ip route replace <dst> [via <gw>] [dev #oif] [onlink] [src <prefsrc>] table <t> proto <p>
/// scope <s> type <k>`.
fn route(r: &Route) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family_of(r.dst.addr());
    msg.header.destination_prefix_length = r.dst.prefix_len();
    // Like iproute2: tables above 255 only fit in RTA_TABLE; the header then says "unspec".
    msg.header.table = u8::try_from(r.table).unwrap_or(0);
    msg.header.protocol = r.protocol.into();
    msg.header.scope = r.scope.into();
    msg.header.kind = route_kind(r.kind);
    if r.onlink {
        msg.header.flags = RouteFlags::Onlink;
    }
    if r.table > 255 {
        msg.attributes.push(RouteAttribute::Table(r.table));
    }
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(r.dst.network())));
    if let Some(gw) = r.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    if let Some(oif) = r.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    if let Some(src) = r.prefsrc {
        msg.attributes
            .push(RouteAttribute::PrefSource(RouteAddress::from(src)));
    }
    msg
}

/// `ip neigh replace <ip> dev #index [lladdr <mac>] nud <state>`.
fn neigh(n: &Neigh) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family_of(n.ip);
    msg.header.ifindex = n.index;
    msg.header.state = NeighbourState::from(n.state);
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(n.ip)));
    if let Some(mac) = n.mac {
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    }
    msg
}

/// `bridge fdb replace <mac> dev #index [dst <ip>] [self] [permanent]` (AF_BRIDGE; without
/// `permanent` the state is NUD_NOARP, as `bridge` itself sends).
fn fdb(f: &Fdb) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = f.index;
    msg.header.state = if f.permanent {
        NeighbourState::Permanent
    } else {
        NeighbourState::Noarp
    };
    if f.self_flag {
        msg.header.flags = NeighbourFlags::Own;
    }
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(f.mac.0.to_vec()));
    if let Some(dst) = f.dst {
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(dst)));
    }
    msg
}

#[cfg(test)]
mod ipip_tests;
#[cfg(test)]
mod tests;
