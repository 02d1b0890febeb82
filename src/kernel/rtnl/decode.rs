//! Turns rtnetlink messages the kernel sends (dump answers and multicast notifications) into the
//! seam's domain types, and netlink error messages into readable text. Pure functions, no I/O;
//! must not filter by policy beyond what a type requires (callers pick tables and devices).
//! Spec: section 7 (address flags, routes and their interfaces), 9 (main table), 9.1 (vxlan info).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink_packet_core::{ErrorMessage, NLM_F_ACK_TLVS, NLM_F_CAPPED, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoIpTunnel, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteType, RouteVia,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::kernel::{
    Addr, AddrFlags, Fdb, IpipInfo, KernelEvent, Link, MacAddr, NUD_PERMANENT, Neigh, Route, RouteKind,
    VxlanInfo,
};

fn mac(bytes: &[u8]) -> Option<MacAddr> {
    <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
}

/// A link as the kernel describes it; `None` when the message carries no name.
pub(super) fn link(msg: &LinkMessage) -> Option<Link> {
    let mut name = None;
    let mut kind = None;
    let mut mtu = 0;
    let mut hw = None;
    let mut vxlan = None;
    let mut ipip = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Mtu(m) => mtu = *m,
            LinkAttribute::Address(a) => hw = mac(a),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(data)) => vxlan = Some(vxlan_info(data)),
                        LinkInfo::Data(InfoData::IpTunnel(data)) => ipip = Some(ipip_info(data)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    // IFLA_INFO_DATA of sit and ip6tnl devices decodes to the same variant: keep ipip's only.
    let ipip = ipip.filter(|_| kind.as_deref() == Some("ipip"));
    Some(Link {
        index: msg.header.index,
        name: name?,
        kind,
        mtu,
        mac: hw,
        up: msg.header.flags.contains(LinkFlags::Up),
        vxlan,
        // IFLA_INFO_DATA of sit and ip6tnl devices decodes to the same variant: keep ipip's only.
        ipip,
    })
}

fn ipip_info(data: &[InfoIpTunnel]) -> IpipInfo {
    let v4 = |ip: &IpAddr| match ip {
        IpAddr::V4(v4) if !v4.is_unspecified() => Some(*v4),
        _ => None,
    };
    let mut info = IpipInfo::default();
    for attr in data {
        match attr {
            InfoIpTunnel::Local(ip) => info.local = v4(ip),
            InfoIpTunnel::Remote(ip) => info.remote = v4(ip),
            InfoIpTunnel::Ttl(t) => info.ttl = *t,
            InfoIpTunnel::PMtuDisc(p) => info.pmtudisc = *p,
            InfoIpTunnel::Link(l) => info.link = *l,
            _ => {}
        }
    }
    info
}

fn vxlan_info(data: &[InfoVxlan]) -> VxlanInfo {
    let mut info = VxlanInfo::default();
    for attr in data {
        match attr {
            InfoVxlan::Id(v) => info.vni = *v,
            InfoVxlan::Port(p) => info.port = *p,
            InfoVxlan::Local(ip) => info.local = Some(IpAddr::V4(*ip)),
            InfoVxlan::Local6(ip) => info.local = Some(IpAddr::V6(*ip)),
            InfoVxlan::Group(ip) => info.group = Some(IpAddr::V4(*ip)),
            InfoVxlan::Group6(ip) => info.group = Some(IpAddr::V6(*ip)),
            InfoVxlan::Link(i) => info.dev_index = *i,
            InfoVxlan::Learning(b) => info.learning = *b,
            InfoVxlan::Gbp => info.gbp = true,
            InfoVxlan::L2Miss(b) => info.l2miss = *b,
            _ => {}
        }
    }
    info
}

/// An address with its flags: IFA_FLAGS (32 bit) wins over the 8-bit header field when present.
/// `temporary` is IFA_F_TEMPORARY, which is the same bit as IPv4's IFA_F_SECONDARY.
pub(super) fn addr(msg: &AddressMessage) -> Option<Addr> {
    let mut local = None;
    let mut address = None;
    let mut flags = AddressFlags::from_bits_retain(u32::from(msg.header.flags.bits()));
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Flags(f) => flags = *f,
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point links.
    let ip = local.or(address)?;
    Some(Addr {
        index: msg.header.index,
        ip,
        prefix_len: msg.header.prefix_len,
        flags: AddrFlags {
            permanent: flags.contains(AddressFlags::Permanent),
            deprecated: flags.contains(AddressFlags::Deprecated),
            temporary: flags.contains(AddressFlags::Secondary),
        },
    })
}

fn route_ip(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

fn route_kind(kind: RouteType) -> RouteKind {
    match kind {
        RouteType::Unicast => RouteKind::Unicast,
        RouteType::BlackHole => RouteKind::Blackhole,
        RouteType::Local => RouteKind::Local,
        other => RouteKind::Other(other.into()),
    }
}

/// A route of either IP family, any table (RTA_TABLE wins over the 8-bit header field).
pub(super) fn route(msg: &RouteMessage) -> Option<Route> {
    let h = &msg.header;
    let unspecified = match h.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let mut dst = unspecified;
    let mut route = Route {
        dst: IpNet::new(unspecified, 0).ok()?,
        gateway: None,
        oif: None,
        table: u32::from(h.table),
        protocol: h.protocol.into(),
        scope: h.scope.into(),
        kind: route_kind(h.kind),
        onlink: h.flags.contains(RouteFlags::Onlink),
        prefsrc: None,
        multipath: false,
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst = route_ip(a)?,
            RouteAttribute::Gateway(a) => route.gateway = route_ip(a),
            RouteAttribute::Via(RouteVia::Inet(ip)) => route.gateway = Some(IpAddr::V4(*ip)),
            RouteAttribute::Via(RouteVia::Inet6(ip)) => route.gateway = Some(IpAddr::V6(*ip)),
            RouteAttribute::Oif(i) => route.oif = Some(*i),
            RouteAttribute::Table(t) => route.table = *t,
            RouteAttribute::PrefSource(a) => route.prefsrc = route_ip(a),
            RouteAttribute::MultiPath(_) => route.multipath = true,
            _ => {}
        }
    }
    if route.multipath {
        route.gateway = None;
        route.oif = None;
    }
    route.dst = IpNet::new(dst, h.destination_prefix_length).ok()?;
    Some(route)
}

/// An ARP/NDP entry; `None` for other families or entries without a destination.
pub(super) fn neigh(msg: &NeighbourMessage) -> Option<Neigh> {
    let mut ip = None;
    let mut lladdr = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(IpAddr::V4(*a)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => ip = Some(IpAddr::V6(*a)),
            NeighbourAttribute::LinkLayerAddress(l) => lladdr = mac(l),
            _ => {}
        }
    }
    Some(Neigh {
        index: msg.header.ifindex,
        ip: ip?,
        mac: lladdr,
        state: msg.header.state.into(),
    })
}

/// A bridge forwarding entry (AF_BRIDGE neighbour); `None` without a six-byte MAC.
pub(super) fn fdb(msg: &NeighbourMessage) -> Option<Fdb> {
    let mut lladdr = None;
    let mut dst = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::LinkLayerAddress(l) => lladdr = mac(l),
            NeighbourAttribute::Destination(d) => dst = neigh_ip(d),
            _ => {}
        }
    }
    Some(Fdb {
        index: msg.header.ifindex,
        mac: lladdr?,
        dst,
        self_flag: msg.header.flags.contains(NeighbourFlags::Own),
        // `bridge fdb add ... permanent` sends NUD_NOARP|NUD_PERMANENT, Go netlink NUD_PERMANENT.
        permanent: u16::from(msg.header.state) & NUD_PERMANENT != 0,
    })
}

/// NDA_DST of an AF_BRIDGE entry arrives as raw bytes: 4 for IPv4, 16 for IPv6.
fn neigh_ip(addr: &NeighbourAddress) -> Option<IpAddr> {
    match addr {
        NeighbourAddress::Inet(a) => Some(IpAddr::V4(*a)),
        NeighbourAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        NeighbourAddress::Other(bytes) => {
            if let Ok(b) = <[u8; 4]>::try_from(bytes.as_slice()) {
                Some(IpAddr::from(b))
            } else {
                <[u8; 16]>::try_from(bytes.as_slice()).ok().map(IpAddr::from)
            }
        }
        _ => None,
    }
}

/// One multicast notification as a kernel event; `None` for messages the seam does not report.
pub(super) fn event(msg: NetlinkMessage<RouteNetlinkMessage>) -> Option<KernelEvent> {
    let inner = match msg.payload {
        NetlinkPayload::Overrun(_) => return Some(KernelEvent::Overrun),
        NetlinkPayload::InnerMessage(inner) => inner,
        _ => return None,
    };
    match inner {
        RouteNetlinkMessage::NewLink(m) => link(&m).map(KernelEvent::LinkChanged),
        RouteNetlinkMessage::DelLink(m) => {
            let name = link(&m).map(|l| l.name).unwrap_or_default();
            Some(KernelEvent::LinkDeleted {
                index: m.header.index,
                name,
            })
        }
        RouteNetlinkMessage::NewAddress(m) => addr(&m).map(KernelEvent::AddrAdded),
        RouteNetlinkMessage::DelAddress(m) => addr(&m).map(KernelEvent::AddrDeleted),
        RouteNetlinkMessage::NewRoute(m) => route(&m).map(KernelEvent::RouteAdded),
        RouteNetlinkMessage::DelRoute(m) => route(&m).map(KernelEvent::RouteDeleted),
        RouteNetlinkMessage::NewNeighbour(m) if m.header.family == AddressFamily::Bridge => {
            fdb(&m).map(KernelEvent::FdbChanged)
        }
        RouteNetlinkMessage::DelNeighbour(m) if m.header.family == AddressFamily::Bridge => {
            fdb(&m).map(KernelEvent::FdbDeleted)
        }
        RouteNetlinkMessage::NewNeighbour(m) => neigh(&m).map(KernelEvent::NeighChanged),
        RouteNetlinkMessage::DelNeighbour(m) => neigh(&m).map(KernelEvent::NeighDeleted),
        _ => None,
    }
}

/// The positive errno of a netlink error message (`None` for an acknowledgement).
pub(super) fn errno(err: &ErrorMessage) -> Option<i32> {
    err.code.map(|c| c.get().checked_abs().unwrap_or(i32::MAX))
}

/// `strerror(errno)` plus the kernel's extended-ack text when it sent one, e.g.
/// `Network is unreachable (Nexthop has invalid gateway)`.
pub(super) fn error_text(errno: i32, err: &ErrorMessage, flags: u16) -> String {
    let base = std::io::Error::from_raw_os_error(errno).to_string();
    let base = match base.rfind(" (os error ") {
        Some(cut) => base[..cut].to_string(),
        None => base,
    };
    match extack_message(&err.header, flags) {
        Some(text) => format!("{base} ({text})"),
        None => base,
    }
}

const NLMSG_HDRLEN: usize = 16;
const NLMSGERR_ATTR_MSG: u16 = 1;

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

/// NLMSGERR_ATTR_MSG from the TLVs that follow the echoed request (just its header when the
/// kernel capped it, else the whole request).
fn extack_message(payload: &[u8], flags: u16) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let skip = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        let len = payload.get(..4)?;
        align4(u32::from_ne_bytes(len.try_into().ok()?) as usize)
    };
    let mut tlvs = payload.get(skip..)?;
    while tlvs.len() >= 4 {
        let len = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
        let kind = u16::from_ne_bytes([tlvs[2], tlvs[3]]) & 0x3fff;
        let value = tlvs.get(4..len)?;
        if kind == NLMSGERR_ATTR_MSG {
            let text = value.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        tlvs = tlvs.get(align4(len).max(4)..)?;
    }
    None
}

#[cfg(test)]
mod tests;
