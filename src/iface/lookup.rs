//! The individual lookups behind interface selection, pure over a `View` of one kernel snapshot:
//! by IP, by name, by regex, by `ip route get`, by default route; then `resolve` turns a found
//! interface into an `ExternalInterface` (addresses, MTU, external addresses).
//!
//! Nothing here does I/O or logs; every failure is a `LookupFailure` naming what was looked for.
//! Spec: flanneld-behaviour.md section 7.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use regex::Regex;

use super::{Family, IfaceRequest, LookupFailure};
use crate::backend::ExternalInterface;
use crate::kernel::{Addr, Link, NetSnapshot, RT_TABLE_MAIN, Route, RouteKind};

/// Which address families the network config enables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stack {
    pub v4: bool,
    pub v6: bool,
}

impl Stack {
    fn dual(self) -> bool {
        self.v4 && self.v6
    }
}

/// The outcome of `ip route get <ip>` for `--iface-can-reach`, as far as the caller got.
#[derive(Debug, Clone, Copy)]
pub(super) enum CanReach<'a> {
    NotLookedUp,
    Routes(&'a [Route]),
    Failed(&'a str),
}

/// An interface a selector found, with the addresses the selector itself fixed (if any).
#[derive(Debug)]
pub(super) struct Found<'a> {
    pub link: &'a Link,
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
    /// Why this interface, for the decision log.
    pub why: String,
}

impl<'a> Found<'a> {
    fn new(link: &'a Link, why: String) -> Found<'a> {
        Found {
            link,
            v4: None,
            v6: None,
            why,
        }
    }
}

/// Links in index order (as Go's `net.Interfaces()` lists them) and all addresses.
pub(super) struct View<'a> {
    links: Vec<&'a Link>,
    addrs: &'a [Addr],
    routes: &'a [Route],
}

impl<'a> View<'a> {
    pub fn new(snap: &'a NetSnapshot) -> View<'a> {
        let mut links: Vec<&Link> = snap.links.iter().collect();
        links.sort_by_key(|l| l.index);
        View {
            links,
            addrs: &snap.addrs,
            routes: &snap.routes,
        }
    }

    fn by_name(&self, name: &str) -> Option<&'a Link> {
        self.links.iter().copied().find(|l| l.name == name)
    }

    fn by_index(&self, index: u32) -> Option<&'a Link> {
        self.links.iter().copied().find(|l| l.index == index)
    }

    /// The first interface (index order) carrying exactly this address, whatever its flags.
    fn owner_of(&self, ip: IpAddr) -> Option<&'a Link> {
        self.links
            .iter()
            .copied()
            .find(|l| self.addrs.iter().any(|a| a.index == l.index && a.ip == ip))
    }

    /// Usable addresses of one family on one link, best first: global or link-local unicast,
    /// not deprecated; global before link-local, permanent before dynamic, non-temporary
    /// before temporary; otherwise kernel order.
    fn usable(&self, link: &Link, family: Family) -> Vec<IpAddr> {
        let mut found: Vec<&Addr> = self
            .addrs
            .iter()
            .filter(|a| a.index == link.index && Family::of(a.ip) == family && !a.flags.deprecated)
            .filter(|a| is_global_unicast(a.ip) || is_link_local_unicast(a.ip))
            .collect();
        found.sort_by_key(|a| (is_link_local_unicast(a.ip), !a.flags.permanent, a.flags.temporary));
        found.into_iter().map(|a| a.ip).collect()
    }

    fn usable_v4(&self, link: &Link) -> Vec<Ipv4Addr> {
        self.usable(link, Family::V4)
            .into_iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })
            .collect()
    }

    fn usable_v6(&self, link: &Link) -> Vec<Ipv6Addr> {
        self.usable(link, Family::V6)
            .into_iter()
            .filter_map(|ip| match ip {
                IpAddr::V6(a) => Some(a),
                IpAddr::V4(_) => None,
            })
            .collect()
    }

    /// `lo:[127.0.0.1], eth0:[192.0.2.1 2001:db8::1]`: every interface with the usable
    /// addresses of the enabled families, so an operator sees the choices.
    pub fn available(&self, stack: Stack) -> String {
        let mut parts = Vec::with_capacity(self.links.len());
        for link in &self.links {
            let mut ips: Vec<String> = Vec::new();
            if stack.v4 {
                ips.extend(self.usable(link, Family::V4).iter().map(ToString::to_string));
            }
            if stack.v6 {
                ips.extend(self.usable(link, Family::V6).iter().map(ToString::to_string));
            }
            parts.push(format!("{}:[{}]", link.name, ips.join(" ")));
        }
        if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join(", ")
        }
    }
}

/// Go's `net.IP.IsGlobalUnicast`: not unspecified, loopback, multicast, broadcast or link-local.
pub(super) fn is_global_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || a.is_broadcast()
                || a.is_link_local())
        }
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => is_global_unicast(IpAddr::V4(v4)),
            None => !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || is_v6_link_local(a)),
        },
    }
}

/// Go's `net.IP.IsLinkLocalUnicast`: 169.254.0.0/16 or fe80::/10.
pub(super) fn is_link_local_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => v4.is_link_local(),
            None => is_v6_link_local(a),
        },
    }
}

fn is_v6_link_local(a: Ipv6Addr) -> bool {
    (a.segments()[0] & 0xffc0) == 0xfe80
}

/// Parse an `--iface` value as an IP the way Go's `net.ParseIP` sees it: an IPv4-mapped IPv6
/// address counts as IPv4.
pub(super) fn parse_ip(s: &str) -> Option<IpAddr> {
    match s.parse::<IpAddr>().ok()? {
        IpAddr::V6(a) => Some(a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4)),
        v4 => Some(v4),
    }
}

/// The interface owning `ip` (searched in the IP's own family). In dual stack with
/// `--public-ipv6`, the interface owning that address must be the same one.
pub(super) fn by_ip<'a>(
    view: &View<'a>,
    stack: Stack,
    ip: IpAddr,
    public_ipv6: Option<Ipv6Addr>,
) -> Result<Found<'a>, LookupFailure> {
    let link = view.owner_of(ip).ok_or(LookupFailure::NoOwner { ip })?;
    let mut found = Found::new(link, format!("interface {} has address {ip}", link.name));
    match ip {
        IpAddr::V4(a) => found.v4 = Some(a),
        IpAddr::V6(a) => found.v6 = Some(a),
    }
    if let (true, Some(p6)) = (stack.dual(), public_ipv6) {
        let owner = view
            .owner_of(IpAddr::V6(p6))
            .ok_or(LookupFailure::NoOwnerPublicV6 { ip: p6 })?;
        if owner.index != link.index {
            return Err(LookupFailure::PublicV6OnOtherIface {
                ip: p6,
                v6_iface: owner.name.clone(),
                iface: link.name.clone(),
            });
        }
        found.v6 = Some(p6);
    }
    Ok(found)
}

pub(super) fn by_name<'a>(view: &View<'a>, name: &str) -> Result<Found<'a>, LookupFailure> {
    let link = view.by_name(name).ok_or_else(|| LookupFailure::NoSuchName {
        name: name.to_string(),
    })?;
    Ok(Found::new(link, format!("interface {name} exists")))
}

/// Addresses first (string forms, per interface in index order; dual stack needs an IPv4 and an
/// IPv6 match on the same interface), then interface names. Unanchored, like Go's MatchString.
pub(super) fn by_regex<'a>(view: &View<'a>, stack: Stack, pattern: &str) -> Result<Found<'a>, LookupFailure> {
    let re = Regex::new(pattern).map_err(|e| LookupFailure::BadRegex {
        regex: pattern.to_string(),
        message: e.to_string().split_whitespace().collect::<Vec<_>>().join(" "),
    })?;
    let first_match = |ips: Vec<IpAddr>| ips.into_iter().find(|ip| re.is_match(&ip.to_string()));
    for link in &view.links {
        let v4 = if stack.v4 {
            first_match(view.usable(link, Family::V4))
        } else {
            None
        };
        let v6 = if stack.v6 {
            first_match(view.usable(link, Family::V6))
        } else {
            None
        };
        if (stack.v4 && v4.is_none()) || (stack.v6 && v6.is_none()) {
            continue;
        }
        let shown: Vec<String> = v4.iter().chain(v6.iter()).map(ToString::to_string).collect();
        let mut found = Found::new(
            link,
            format!(
                "address {} of interface {} matches",
                shown.join(" and "),
                link.name
            ),
        );
        found.v4 = v4.and_then(as_v4);
        found.v6 = v6.and_then(as_v6);
        return Ok(found);
    }
    let link = view
        .links
        .iter()
        .copied()
        .find(|l| re.is_match(&l.name))
        .ok_or_else(|| LookupFailure::RegexNoMatch {
            regex: pattern.to_string(),
        })?;
    Ok(Found::new(
        link,
        format!("no address matches, interface name {} does", link.name),
    ))
}

/// `ip route get <ip>`: the first route's device; its preferred source becomes the address of
/// that family.
pub(super) fn by_can_reach<'a>(
    view: &View<'a>,
    ip: IpAddr,
    lookup: CanReach<'_>,
) -> Result<Found<'a>, LookupFailure> {
    let routes = match lookup {
        CanReach::NotLookedUp => return Err(LookupFailure::RouteNotLookedUp { ip }),
        CanReach::Failed(message) => {
            return Err(LookupFailure::RouteGet {
                ip,
                message: message.to_string(),
            });
        }
        CanReach::Routes(routes) => routes,
    };
    let route = routes.first().ok_or(LookupFailure::NoRoute { ip })?;
    let index = route.oif.ok_or(LookupFailure::RouteWithoutIface { ip })?;
    let link = view
        .by_index(index)
        .ok_or(LookupFailure::UnknownIndex { index })?;
    let mut found = Found::new(link, format!("the route to {ip} leaves through {}", link.name));
    match route.prefsrc {
        Some(IpAddr::V4(a)) => found.v4 = Some(a),
        Some(IpAddr::V6(a)) => found.v6 = Some(a),
        None => {}
    }
    Ok(found)
}

/// The first unicast main-table default route of each enabled family; dual stack needs both on
/// one interface. Non-unicast defaults (blackhole, unreachable) carry no device and are skipped
/// (upstream would stop at them with "could not determine interface").
pub(super) fn by_default_route<'a>(view: &View<'a>, stack: Stack) -> Result<Found<'a>, LookupFailure> {
    let pick = |family: Family| -> Result<&'a Link, LookupFailure> {
        let route = view
            .routes
            .iter()
            .find(|r| {
                r.table == RT_TABLE_MAIN
                    && r.kind == RouteKind::Unicast
                    && r.dst.prefix_len() == 0
                    && Family::of(r.dst.addr()) == family
            })
            .ok_or(LookupFailure::NoDefaultRoute { family })?;
        let index = match (route.multipath, route.oif) {
            (false, Some(index)) => index,
            _ => return Err(LookupFailure::DefaultWithoutIface { family }),
        };
        view.by_index(index).ok_or(LookupFailure::UnknownIndex { index })
    };
    let v4 = if stack.v4 { Some(pick(Family::V4)?) } else { None };
    let v6 = if stack.v6 { Some(pick(Family::V6)?) } else { None };
    match (v4, v6) {
        (Some(l4), Some(l6)) if l4.index != l6.index => Err(LookupFailure::DefaultRoutesDiffer {
            v6_iface: l6.name.clone(),
            v4_iface: l4.name.clone(),
        }),
        (Some(link), _) | (None, Some(link)) => Ok(Found::new(
            link,
            format!("the default route leaves through {}", link.name),
        )),
        // `select` rejects a request without any family before any lookup runs.
        (None, None) => Err(LookupFailure::NoDefaultRoute { family: Family::V4 }),
    }
}

fn as_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

fn as_v6(ip: IpAddr) -> Option<Ipv6Addr> {
    match ip {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => None,
    }
}

/// Complete a found interface: the address of each enabled family (fixed by the selector, else
/// the first usable one), the MTU, and the external addresses (`--public-ip(v6)` else the
/// interface address). Returns the interface and the reasons for each choice.
pub(super) fn resolve(
    found: Found<'_>,
    view: &View<'_>,
    stack: Stack,
    req: &IfaceRequest,
) -> Result<(ExternalInterface, Vec<String>), LookupFailure> {
    let link = found.link;
    let mut reasons = vec![found.why];
    let iface_addr = if stack.v4 {
        Some(pick_addr(
            found.v4,
            view.usable_v4(link),
            link,
            Family::V4,
            &mut reasons,
        )?)
    } else {
        None
    };
    let iface_v6_addr = if stack.v6 {
        Some(pick_addr(
            found.v6,
            view.usable_v6(link),
            link,
            Family::V6,
            &mut reasons,
        )?)
    } else {
        None
    };
    if link.mtu == 0 {
        return Err(LookupFailure::ZeroMtu {
            iface: link.name.clone(),
        });
    }
    let ext_addr = match req.public_ip {
        Some(ip) => {
            reasons.push(format!("external address {ip} from --public-ip"));
            Some(ip)
        }
        None => iface_addr,
    };
    let ext_v6_addr = match req.public_ipv6 {
        Some(ip) => {
            reasons.push(format!("external IPv6 address {ip} from --public-ipv6"));
            Some(ip)
        }
        None => iface_v6_addr,
    };
    let ext = ExternalInterface {
        name: link.name.clone(),
        index: link.index,
        mtu: link.mtu,
        iface_addr,
        iface_v6_addr,
        ext_addr,
        ext_v6_addr,
    };
    Ok((ext, reasons))
}

fn pick_addr<A: Copy + fmt::Display>(
    fixed: Option<A>,
    usable: Vec<A>,
    link: &Link,
    family: Family,
    reasons: &mut Vec<String>,
) -> Result<A, LookupFailure> {
    if let Some(a) = fixed {
        return Ok(a);
    }
    let first = usable.first().copied().ok_or_else(|| LookupFailure::NoAddress {
        iface: link.name.clone(),
        family,
    })?;
    reasons.push(format!(
        "{family} address {first} is the first usable one of {}",
        link.name
    ));
    Ok(first)
}
