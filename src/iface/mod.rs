//! External interface and public address selection: which interface the backend runs on, which
//! of its addresses it uses, and which address the node advertises. `select` is a pure function
//! over one snapshot of links, addresses and main-table routes; `discover` reads that snapshot
//! (plus `ip route get` for `--iface-can-reach`) through the `Netlink` seam and logs the decision
//! once, with the reasons.
//!
//! This module must not change kernel state. Spec: flanneld-behaviour.md section 7 and quirk 9
//! (`--public-ip` without `--iface` selects the interface owning that address). Beyond upstream:
//! the final error names every selector tried and why it failed, and lists the interfaces with
//! their addresses; dual-stack selectors fill in the other family's address from the interface.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::backend::ExternalInterface;
use crate::config::Config;
use crate::kernel::{KernelError, NetSnapshot, Netlink, Route};

mod lookup;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_dual;
#[cfg(test)]
mod tests_errors;

use lookup::{CanReach, Stack, View};

/// What the operator asked for (flags) and which families the network config enables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IfaceRequest {
    /// `--iface` values in order: interface names or IP addresses.
    pub iface: Vec<String>,
    /// `--iface-regex` values in order.
    pub iface_regex: Vec<String>,
    pub iface_can_reach: Option<IpAddr>,
    pub public_ip: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
    /// The network config enables IPv4 (`EnableIPv4`).
    pub ipv4: bool,
    /// The network config enables IPv6 (`EnableIPv6`).
    pub ipv6: bool,
}

impl IfaceRequest {
    /// The selection flags of `cfg` plus the families of the network config.
    pub fn from_config(cfg: &Config, ipv4: bool, ipv6: bool) -> IfaceRequest {
        IfaceRequest {
            iface: cfg.iface.clone(),
            iface_regex: cfg.iface_regex.clone(),
            iface_can_reach: cfg.iface_can_reach,
            public_ip: cfg.public_ip,
            public_ipv6: cfg.public_ipv6,
            ipv4,
            ipv6,
        }
    }

    /// True when any of `--iface`, `--iface-regex`, `--iface-can-reach` was given.
    fn has_selectors(&self) -> bool {
        !self.iface.is_empty() || !self.iface_regex.is_empty() || self.iface_can_reach.is_some()
    }
}

/// The chosen interface and why: failed selectors first, then the winning selector and the
/// address choices, in the order they were made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub ext: ExternalInterface,
    pub reasons: Vec<String>,
}

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// One way of finding the interface, as the operator gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Iface(String),
    IfaceRegex(String),
    CanReach(IpAddr),
    /// `--public-ip` without any selector flag (quirk 9).
    PublicIp(Ipv4Addr),
    /// `--public-ipv6` without any selector flag nor `--public-ip`.
    PublicIpv6(Ipv6Addr),
    DefaultRoute,
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Iface(v) => write!(f, "--iface {v:?}"),
            Selector::IfaceRegex(v) => write!(f, "--iface-regex {v:?}"),
            Selector::CanReach(ip) => write!(f, "--iface-can-reach {ip}"),
            Selector::PublicIp(ip) => {
                write!(f, "--public-ip {ip} (no --iface given: the interface owning it)")
            }
            Selector::PublicIpv6(ip) => {
                write!(
                    f,
                    "--public-ipv6 {ip} (no --iface given: the interface owning it)"
                )
            }
            Selector::DefaultRoute => f.write_str("the default route"),
        }
    }
}

/// Why one selector found no usable interface.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupFailure {
    #[error("no interface is named {name:?}")]
    NoSuchName { name: String },
    #[error("no interface has the address {ip}")]
    NoOwner { ip: IpAddr },
    #[error(
        "no interface has the --public-ipv6 address {ip}, which dual stack requires on the chosen interface"
    )]
    NoOwnerPublicV6 { ip: Ipv6Addr },
    #[error(
        "the --public-ipv6 address {ip} is on interface {v6_iface}, not on the chosen interface {iface}; \
         dual stack needs both families on one interface"
    )]
    PublicV6OnOtherIface {
        ip: Ipv6Addr,
        v6_iface: String,
        iface: String,
    },
    #[error("compiling the regular expression {regex:?}: {message}")]
    BadRegex { regex: String, message: String },
    #[error("the pattern {regex:?} matches no usable address and no interface name")]
    RegexNoMatch { regex: String },
    #[error("no route lookup was done for {ip}")]
    RouteNotLookedUp { ip: IpAddr },
    #[error("looking up the route to {ip}: {message}")]
    RouteGet { ip: IpAddr, message: String },
    #[error("the kernel returned no route to {ip}")]
    NoRoute { ip: IpAddr },
    #[error("the route to {ip} has no output interface")]
    RouteWithoutIface { ip: IpAddr },
    #[error("a route uses interface index {index}, which is not in the interface list")]
    UnknownIndex { index: u32 },
    #[error("no {family} default route in the main routing table")]
    NoDefaultRoute { family: Family },
    #[error(
        "found the {family} default route but could not determine its interface \
         (it has several next hops or no device)"
    )]
    DefaultWithoutIface { family: Family },
    #[error(
        "the IPv6 default route uses interface {v6_iface} but the IPv4 default route uses {v4_iface}; \
         dual stack needs both on one interface"
    )]
    DefaultRoutesDiffer { v6_iface: String, v4_iface: String },
    #[error(
        "interface {iface} has no usable {family} address \
         (global or link-local unicast, not deprecated)"
    )]
    NoAddress { iface: String, family: Family },
    #[error("could not determine the MTU of interface {iface} (the kernel reports 0)")]
    ZeroMtu { iface: String },
}

/// One selector that was tried and failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub selector: Selector,
    pub failure: LookupFailure,
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.selector, self.failure)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IfaceError {
    #[error("selecting the external interface: the network config enables neither IPv4 nor IPv6")]
    NoFamily,
    #[error("selecting the external interface: {step}: {source}")]
    Kernel { step: String, source: KernelError },
    /// `--iface`, `--iface-regex` and/or `--iface-can-reach` were given and none found an interface.
    #[error(
        "no interface matches the given --iface, --iface-regex or --iface-can-reach (tried in order: {}); \
         available interfaces: {available}",
        join_attempts(.attempts)
    )]
    NoMatch {
        attempts: Vec<Attempt>,
        available: String,
    },
    /// No selector flag was given and the implicit lookup (public IP or default route) failed.
    #[error("finding the external interface by {}: {}; available interfaces: {available}", .attempt.selector, .attempt.failure)]
    NotFound { attempt: Attempt, available: String },
}

fn join_attempts(attempts: &[Attempt]) -> String {
    attempts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Choose the external interface (spec 7). Without `--iface`, `--iface-regex` and
/// `--iface-can-reach`, the one implicit selector is `--public-ip`, else `--public-ipv6`, else
/// the default route. Otherwise each `--iface` in order, then each `--iface-regex`, then
/// `--iface-can-reach` (whose `ip route get` result is `can_reach_routes`); the first that yields
/// a complete interface (addresses of every enabled family, non-zero MTU) wins.
pub fn select(
    req: &IfaceRequest,
    snap: &NetSnapshot,
    can_reach_routes: Option<&[Route]>,
) -> Result<Selection, IfaceError> {
    let can_reach = match can_reach_routes {
        Some(routes) => CanReach::Routes(routes),
        None => CanReach::NotLookedUp,
    };
    select_with(req, snap, can_reach)
}

fn select_with(
    req: &IfaceRequest,
    snap: &NetSnapshot,
    can_reach: CanReach<'_>,
) -> Result<Selection, IfaceError> {
    let stack = Stack {
        v4: req.ipv4,
        v6: req.ipv6,
    };
    if !stack.v4 && !stack.v6 {
        return Err(IfaceError::NoFamily);
    }
    let view = View::new(snap);
    let selectors = selectors(req);
    let mut attempts: Vec<Attempt> = Vec::new();
    for selector in selectors {
        match try_selector(&selector, &view, stack, req, can_reach) {
            Ok((ext, chosen)) => {
                let mut reasons: Vec<String> = attempts.iter().map(ToString::to_string).collect();
                let mut chosen = chosen.into_iter();
                if let Some(why) = chosen.next() {
                    reasons.push(format!("chosen by {selector}: {why}"));
                }
                reasons.extend(chosen);
                return Ok(Selection { ext, reasons });
            }
            Err(failure) => attempts.push(Attempt { selector, failure }),
        }
    }
    let available = view.available(stack);
    if req.has_selectors() {
        return Err(IfaceError::NoMatch { attempts, available });
    }
    match attempts.pop() {
        Some(attempt) => Err(IfaceError::NotFound { attempt, available }),
        // `selectors` always yields one implicit selector when no flag was given.
        None => Err(IfaceError::NoMatch { attempts, available }),
    }
}

/// The selectors to try, in order.
fn selectors(req: &IfaceRequest) -> Vec<Selector> {
    if !req.has_selectors() {
        let implicit = match (req.public_ip, req.public_ipv6) {
            (Some(ip), _) => Selector::PublicIp(ip),
            (None, Some(ip)) => Selector::PublicIpv6(ip),
            (None, None) => Selector::DefaultRoute,
        };
        return vec![implicit];
    }
    let mut out: Vec<Selector> = req.iface.iter().cloned().map(Selector::Iface).collect();
    out.extend(req.iface_regex.iter().cloned().map(Selector::IfaceRegex));
    out.extend(req.iface_can_reach.map(Selector::CanReach));
    out
}

fn try_selector(
    selector: &Selector,
    view: &View<'_>,
    stack: Stack,
    req: &IfaceRequest,
    can_reach: CanReach<'_>,
) -> Result<(ExternalInterface, Vec<String>), LookupFailure> {
    let found = match selector {
        // An empty value reaches upstream's lookup as "nothing given", i.e. the default route.
        Selector::Iface(v) | Selector::IfaceRegex(v) if v.is_empty() => {
            lookup::by_default_route(view, stack)?
        }
        Selector::Iface(v) => match lookup::parse_ip(v) {
            Some(ip) => lookup::by_ip(view, stack, ip, req.public_ipv6)?,
            None => lookup::by_name(view, v)?,
        },
        Selector::IfaceRegex(pattern) => lookup::by_regex(view, stack, pattern)?,
        Selector::CanReach(ip) => lookup::by_can_reach(view, *ip, can_reach)?,
        Selector::PublicIp(ip) => lookup::by_ip(view, stack, IpAddr::V4(*ip), req.public_ipv6)?,
        Selector::PublicIpv6(ip) => lookup::by_ip(view, stack, IpAddr::V6(*ip), req.public_ipv6)?,
        Selector::DefaultRoute => lookup::by_default_route(view, stack)?,
    };
    lookup::resolve(found, view, stack, req)
}

/// Read the kernel's links, addresses and routes once (and the route to `--iface-can-reach`),
/// select the external interface and log the decision with its reasons.
pub async fn discover(req: &IfaceRequest, k: &dyn Netlink) -> Result<ExternalInterface, IfaceError> {
    let snap = k.snapshot().await.map_err(|source| IfaceError::Kernel {
        step: "reading interfaces, addresses and routes".to_string(),
        source,
    })?;
    let route_lookup = match req.iface_can_reach {
        Some(ip) => Some(k.route_get(ip).await.map_err(|e| e.to_string())),
        None => None,
    };
    let can_reach = match &route_lookup {
        Some(Ok(routes)) => CanReach::Routes(routes),
        Some(Err(message)) => CanReach::Failed(message),
        None => CanReach::NotLookedUp,
    };
    let selection = select_with(req, &snap, can_reach)?;
    let ext = &selection.ext;
    tracing::info!(
        interface = %ext.name,
        index = ext.index,
        mtu = ext.mtu,
        address = %show(ext.iface_addr),
        v6_address = %show(ext.iface_v6_addr),
        public_ip = %show(ext.ext_addr),
        public_ipv6 = %show(ext.ext_v6_addr),
        why = %selection.reasons.join("; "),
        "selected the external interface"
    );
    Ok(selection.ext)
}

fn show<T: fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "none".to_string(), |v| v.to_string())
}
