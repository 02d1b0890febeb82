//! The state of the in-memory kernel and its change rules (what the real kernel does for each
//! request: errors with the right errno, replace/create semantics, flushes on link deletion, and the
//! multicast events each change produces). No counting and no failure injection here: that is the
//! `Netlink` face in `mod.rs`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::channel::mpsc;
use ipnet::IpNet;

use crate::kernel::{
    Addr, Fdb, KResult, KernelError, KernelEvent, Link, MacAddr, NUD_PERMANENT, Neigh, Op, RT_SCOPE_LINK,
    RT_SCOPE_UNIVERSE, RT_TABLE_MAIN, RTPROT_KERNEL, Route, RouteKind, VxlanInfo, VxlanSpec,
};

/// Headroom the kernel reserves below the lower device's MTU for a vxlan device.
const VXLAN_HEADROOM_V4: u32 = 50;
const VXLAN_HEADROOM_V6: u32 = 70;
mod setup;

/// Default vxlan UDP port the kernel reports when none was requested.
const VXLAN_DEFAULT_PORT: u16 = 8472;

pub(super) fn failed(op: &str, object: impl ToString, errno: i32) -> KernelError {
    KernelError::Failed {
        op: op.to_string(),
        object: object.to_string(),
        message: std::io::Error::from_raw_os_error(errno).to_string(),
        errno: Some(errno),
    }
}

#[derive(Default)]
pub(super) struct State {
    next_index: u32,
    pub(super) links: BTreeMap<u32, Link>,
    pub(super) addrs: Vec<Addr>,
    /// Keyed by (table, dst); several routes may share a key (the real kernel tells them apart by
    /// metric or tos, which we do not model). `replace` acts on the first one.
    pub(super) routes: BTreeMap<(u32, IpNet), Vec<Route>>,
    pub(super) neighs: BTreeMap<(u32, IpAddr), Neigh>,
    /// Keyed by (link, MAC); a vxlan FDB entry holds a list of remote destinations.
    pub(super) fdbs: BTreeMap<(u32, MacAddr), Vec<Fdb>>,
    subscribers: Vec<mpsc::UnboundedSender<KernelEvent>>,
}

impl State {
    pub(super) fn new() -> State {
        State {
            next_index: 1,
            ..State::default()
        }
    }

    pub(super) fn subscribe(&mut self) -> mpsc::UnboundedReceiver<KernelEvent> {
        let (tx, rx) = mpsc::unbounded();
        self.subscribers.push(tx);
        rx
    }

    pub(super) fn emit(&mut self, event: KernelEvent) {
        self.subscribers
            .retain(|tx| tx.unbounded_send(event.clone()).is_ok());
    }

    fn link_name(&self, index: u32) -> String {
        match self.links.get(&index) {
            Some(l) => l.name.clone(),
            None => format!("#{index}"),
        }
    }

    fn require_link(&self, op: &str, index: u32) -> KResult<&Link> {
        self.links
            .get(&index)
            .ok_or_else(|| failed(op, format!("link #{index}"), libc::ENODEV))
    }

    pub(super) fn add_link(&mut self, mut link: Link) -> KResult<Link> {
        if self.links.values().any(|l| l.name == link.name) {
            return Err(failed("creating link", &link.name, libc::EEXIST));
        }
        link.index = self.next_index;
        self.next_index += 1;
        self.links.insert(link.index, link.clone());
        self.emit(KernelEvent::LinkChanged(link.clone()));
        Ok(link)
    }

    pub(super) fn create_vxlan(&mut self, spec: &VxlanSpec) -> KResult<Link> {
        const OP: &str = "creating vxlan device";
        let mut mtu = spec.mtu;
        if spec.dev_index > 0 {
            let lower = self.links.get(&spec.dev_index).ok_or_else(|| {
                failed(
                    OP,
                    format!("{} on link #{}", spec.name, spec.dev_index),
                    libc::ENODEV,
                )
            })?;
            // The kernel clamps the requested MTU to what fits into the lower device.
            let headroom = if spec.local.is_ipv6() {
                VXLAN_HEADROOM_V6
            } else {
                VXLAN_HEADROOM_V4
            };
            mtu = mtu.min(lower.mtu.saturating_sub(headroom));
        }
        if self.links.values().any(|l| l.name == spec.name) {
            return Err(failed(OP, &spec.name, libc::EEXIST));
        }
        let link = Link {
            index: 0,
            name: spec.name.clone(),
            kind: Some("vxlan".into()),
            mtu,
            mac: Some(spec.mac),
            up: false,
            vxlan: Some(VxlanInfo {
                vni: spec.vni,
                port: if spec.port == 0 {
                    VXLAN_DEFAULT_PORT
                } else {
                    spec.port
                },
                local: Some(spec.local),
                group: None,
                dev_index: spec.dev_index,
                learning: spec.learning,
                gbp: spec.gbp,
                l2miss: false,
            }),
            ipip: None,
        };
        self.add_link(link)
    }

    pub(super) fn create_wireguard(&mut self, name: &str, mtu: u32) -> KResult<Link> {
        if self.links.values().any(|l| l.name == name) {
            return Err(failed("creating wireguard device", name, libc::EEXIST));
        }
        self.add_link(Link {
            index: 0,
            name: name.to_string(),
            kind: Some("wireguard".into()),
            mtu,
            mac: None,
            up: false,
            vxlan: None,
            ipip: None,
        })
    }

    /// Deleting a link takes its addresses, routes, neighbours and FDB entries with it. Like Linux,
    /// only the link and address deletions are announced: IPv4 routes flushed with a device are
    /// removed silently, so a consumer must react to the link event itself.
    pub(super) fn delete_link(&mut self, index: u32) -> KResult<()> {
        let link = self
            .links
            .remove(&index)
            .ok_or_else(|| failed("deleting link", format!("link #{index}"), libc::ENODEV))?;
        let (gone, kept): (Vec<Addr>, Vec<Addr>) = self.addrs.drain(..).partition(|a| a.index == index);
        self.addrs = kept;
        self.flush_routes_of(index);
        self.neighs.retain(|(i, _), _| *i != index);
        self.fdbs.retain(|(i, _), _| *i != index);
        for a in gone {
            self.emit(KernelEvent::AddrDeleted(a));
        }
        self.emit(KernelEvent::LinkDeleted {
            index,
            name: link.name,
        });
        Ok(())
    }

    fn flush_routes_of(&mut self, index: u32) {
        for routes in self.routes.values_mut() {
            routes.retain(|r| r.oif != Some(index));
        }
        self.routes.retain(|_, v| !v.is_empty());
    }

    pub(super) fn set_link_up(&mut self, index: u32, up: bool) -> KResult<bool> {
        let link = self
            .links
            .get_mut(&index)
            .ok_or_else(|| failed("setting link up", format!("link #{index}"), libc::ENODEV))?;
        if link.up == up {
            return Ok(false);
        }
        link.up = up;
        let link = link.clone();
        if up {
            let addrs: Vec<Addr> = self.addrs.iter().filter(|a| a.index == index).cloned().collect();
            for a in addrs {
                self.add_connected_route(&a);
            }
        } else {
            // Taking a link down flushes its routes without route events (as IPv4 does).
            self.flush_routes_of(index);
        }
        self.emit(KernelEvent::LinkChanged(link));
        Ok(true)
    }

    pub(super) fn set_link_mtu(&mut self, index: u32, mtu: u32) -> KResult<bool> {
        let link = self
            .links
            .get_mut(&index)
            .ok_or_else(|| failed("setting link mtu", format!("link #{index}"), libc::ENODEV))?;
        if link.mtu == mtu {
            return Ok(false);
        }
        link.mtu = mtu;
        let link = link.clone();
        self.emit(KernelEvent::LinkChanged(link));
        Ok(true)
    }

    fn add_connected_route(&mut self, a: &Addr) {
        let max = if a.ip.is_ipv4() { 32 } else { 128 };
        if a.prefix_len >= max {
            return;
        }
        let Ok(net) = IpNet::new(a.ip, a.prefix_len) else {
            return;
        };
        let route = Route {
            protocol: RTPROT_KERNEL,
            scope: if a.ip.is_ipv4() {
                RT_SCOPE_LINK
            } else {
                RT_SCOPE_UNIVERSE
            },
            prefsrc: if a.ip.is_ipv4() { Some(a.ip) } else { None },
            ..Route::unicast(net.trunc(), None, Some(a.index))
        };
        let slot = self.routes.entry((RT_TABLE_MAIN, route.dst)).or_default();
        if !slot.iter().any(|r| r.oif == route.oif && r.gateway.is_none()) {
            slot.push(route.clone());
            self.emit(KernelEvent::RouteAdded(route));
        }
    }

    pub(super) fn add_addr(&mut self, addr: &Addr) -> KResult<()> {
        let object = format!(
            "{}/{} on {}",
            addr.ip,
            addr.prefix_len,
            self.link_name(addr.index)
        );
        let up = self
            .require_link("adding address", addr.index)
            .map_err(|_| failed("adding address", &object, libc::ENODEV))?
            .up;
        if self
            .addrs
            .iter()
            .any(|a| a.index == addr.index && a.ip == addr.ip)
        {
            return Err(failed("adding address", object, libc::EEXIST));
        }
        self.addrs.push(addr.clone());
        self.emit(KernelEvent::AddrAdded(addr.clone()));
        if up {
            self.add_connected_route(addr);
        }
        Ok(())
    }

    pub(super) fn del_addr(&mut self, addr: &Addr) -> KResult<()> {
        let object = format!(
            "{}/{} on {}",
            addr.ip,
            addr.prefix_len,
            self.link_name(addr.index)
        );
        let pos = self
            .addrs
            .iter()
            .position(|a| a.index == addr.index && a.ip == addr.ip && a.prefix_len == addr.prefix_len)
            .ok_or_else(|| failed("deleting address", &object, libc::EADDRNOTAVAIL))?;
        let gone = self.addrs.remove(pos);
        if let Ok(net) = IpNet::new(gone.ip, gone.prefix_len) {
            let net = net.trunc();
            let still_covered = self
                .addrs
                .iter()
                .any(|a| a.index == gone.index && net.contains(&a.ip) && a.prefix_len == gone.prefix_len);
            if !still_covered {
                if let Some(slot) = self.routes.get_mut(&(RT_TABLE_MAIN, net)) {
                    slot.retain(|r| !(r.protocol == RTPROT_KERNEL && r.oif == Some(gone.index)));
                }
                if self
                    .routes
                    .get(&(RT_TABLE_MAIN, net))
                    .is_some_and(|s| s.is_empty())
                {
                    self.routes.remove(&(RT_TABLE_MAIN, net));
                }
            }
        }
        self.emit(KernelEvent::AddrDeleted(gone));
        Ok(())
    }

    /// The longest-prefix main-table unicast route for `dst` (as `ip route get`).
    pub(super) fn lookup(&self, dst: IpAddr) -> Option<&Route> {
        self.routes
            .iter()
            .filter(|((table, net), _)| *table == RT_TABLE_MAIN && net.contains(&dst))
            .flat_map(|(_, v)| v.iter())
            .filter(|r| r.kind == RouteKind::Unicast)
            .max_by_key(|r| r.dst.prefix_len())
    }

    /// Apply one op with the kernel's rules. Returns whether state changed.
    pub(super) fn apply(&mut self, op: &Op) -> KResult<bool> {
        match op {
            Op::ReplaceRoute(r) => self.replace_route(r).map(|()| true),
            Op::DeleteRoute(r) => self.delete_route(r).map(|()| true),
            Op::ReplaceNeigh(n) => self.replace_neigh(n),
            Op::DeleteNeigh(n) => self.delete_neigh(n).map(|()| true),
            Op::ReplaceFdb(f) => self.replace_fdb(f),
            Op::DeleteFdb(f) => self.delete_fdb(f).map(|()| true),
        }
    }

    fn replace_route(&mut self, route: &Route) -> KResult<()> {
        const OP: &str = "replacing route";
        let object = route.dst.to_string();
        let mut route = route.clone();
        if route.kind == RouteKind::Unicast {
            match route.oif {
                Some(oif) => {
                    let link = self
                        .require_link(OP, oif)
                        .map_err(|_| failed(OP, &object, libc::ENODEV))?;
                    if !link.up {
                        return Err(failed(OP, &object, libc::ENETDOWN));
                    }
                    let connected = |gw| {
                        self.lookup(gw)
                            .is_some_and(|r| r.gateway.is_none() && r.oif == Some(oif))
                    };
                    match route.gateway {
                        Some(gw) if !route.onlink && !connected(gw) => {
                            return Err(failed(OP, format!("{object} via {gw}"), libc::ENETUNREACH));
                        }
                        _ => {}
                    }
                }
                None => {
                    // Without a device the kernel picks the one the gateway is connected through.
                    let Some(gw) = route.gateway else {
                        return Err(failed(OP, &object, libc::EINVAL));
                    };
                    match self.lookup(gw) {
                        Some(r) if r.gateway.is_none() && !route.onlink => route.oif = r.oif,
                        _ => return Err(failed(OP, format!("{object} via {gw}"), libc::ENETUNREACH)),
                    }
                }
            }
        }
        let slot = self.routes.entry((route.table, route.dst)).or_default();
        match slot.first_mut() {
            Some(first) => *first = route.clone(),
            None => slot.push(route.clone()),
        }
        // The kernel announces a replace even when nothing changed.
        self.emit(KernelEvent::RouteAdded(route));
        Ok(())
    }

    fn delete_route(&mut self, route: &Route) -> KResult<()> {
        let key = (route.table, route.dst);
        let matches = |r: &Route| {
            route.gateway.is_none_or(|g| r.gateway == Some(g))
                && route.oif.is_none_or(|o| r.oif == Some(o))
                && (route.protocol == 0 || r.protocol == route.protocol)
        };
        let slot = self.routes.get_mut(&key);
        let pos = slot.as_ref().and_then(|s| s.iter().position(matches));
        let (Some(slot), Some(pos)) = (slot, pos) else {
            return Err(failed("deleting route", route.dst, libc::ESRCH));
        };
        let gone = slot.remove(pos);
        if slot.is_empty() {
            self.routes.remove(&key);
        }
        self.emit(KernelEvent::RouteDeleted(gone));
        Ok(())
    }

    fn replace_neigh(&mut self, n: &Neigh) -> KResult<bool> {
        let object = format!("{} dev {}", n.ip, self.link_name(n.index));
        self.require_link("replacing neighbour", n.index)
            .map_err(|_| failed("replacing neighbour", &object, libc::ENODEV))?;
        if self.neighs.get(&(n.index, n.ip)) == Some(n) {
            return Ok(false);
        }
        self.neighs.insert((n.index, n.ip), n.clone());
        self.emit(KernelEvent::NeighChanged(n.clone()));
        Ok(true)
    }

    fn delete_neigh(&mut self, n: &Neigh) -> KResult<()> {
        let object = format!("{} dev {}", n.ip, self.link_name(n.index));
        let gone = self
            .neighs
            .remove(&(n.index, n.ip))
            .ok_or_else(|| failed("deleting neighbour", object, libc::ENOENT))?;
        self.emit(KernelEvent::NeighDeleted(gone));
        Ok(())
    }

    fn replace_fdb(&mut self, f: &Fdb) -> KResult<bool> {
        let object = format!("{} dev {}", f.mac, self.link_name(f.index));
        let link = self
            .require_link("replacing fdb entry", f.index)
            .map_err(|_| failed("replacing fdb entry", &object, libc::ENODEV))?;
        if link.kind.as_deref() != Some("vxlan") {
            return Err(failed("replacing fdb entry", object, libc::EOPNOTSUPP));
        }
        let slot = self.fdbs.entry((f.index, f.mac)).or_default();
        // A vxlan FDB replace rewrites the first remote of an existing entry.
        match slot.first_mut() {
            Some(first) if first == f => return Ok(false),
            Some(first) => *first = f.clone(),
            None => slot.push(f.clone()),
        }
        self.emit(KernelEvent::FdbChanged(f.clone()));
        Ok(true)
    }

    fn delete_fdb(&mut self, f: &Fdb) -> KResult<()> {
        let object = format!("{} dev {}", f.mac, self.link_name(f.index));
        let key = (f.index, f.mac);
        let not_found = || failed("deleting fdb entry", &object, libc::ENOENT);
        let slot = self.fdbs.get_mut(&key).ok_or_else(not_found)?;
        let gone: Vec<Fdb> = match f.dst {
            // With a destination only that remote goes; without, the whole entry.
            Some(dst) => {
                let pos = slot
                    .iter()
                    .position(|e| e.dst == Some(dst))
                    .ok_or_else(not_found)?;
                vec![slot.remove(pos)]
            }
            None => std::mem::take(slot),
        };
        if slot.is_empty() {
            self.fdbs.remove(&key);
        }
        for g in gone {
            self.emit(KernelEvent::FdbDeleted(g));
        }
        Ok(())
    }
}

/// A permanent neighbour entry as `ip neigh replace ... nud permanent` creates it (test helper).
pub fn permanent_neigh(index: u32, ip: IpAddr, mac: MacAddr) -> Neigh {
    Neigh {
        index,
        ip,
        mac: Some(mac),
        state: NUD_PERMANENT,
    }
}
