//! Reading what is installed: the owned entries out of the kernel's listings, the underlay facts
//! the backends' `entries_for` depend on, and which kernel events can make the installed state
//! differ from the desired one (so that idle time costs no netlink dump).

use std::collections::BTreeMap;

use ipnet::IpNet;

use crate::backend::{Entry, Ownership, Underlay};
use crate::kernel::{KResult, KernelEvent, Netlink, RT_TABLE_MAIN, Route, RouteKind};

use super::plan::{EntryKey, is_owned_fdb, is_owned_neigh, is_owned_route, same_entry};

/// Exactly the owned objects (see `plan::is_owned`): owned routes of the main table, permanent
/// neighbours and permanent FDB entries with a destination on the backend's devices. `routes` is
/// the pass's one route dump (it also feeds `underlay_from`).
pub async fn read_installed(k: &dyn Netlink, own: &Ownership, routes: &[Route]) -> KResult<Vec<Entry>> {
    let mut out: Vec<Entry> = routes
        .iter()
        .filter(|r| is_owned_route(own, r))
        .cloned()
        .map(Entry::Route)
        .collect();
    for &dev in &own.devices {
        out.extend(
            k.neighs(dev)
                .await?
                .into_iter()
                .filter(|n| is_owned_neigh(own, n))
                .map(Entry::Neigh),
        );
        out.extend(
            k.fdbs(dev)
                .await?
                .into_iter()
                .filter(|f| is_owned_fdb(own, f))
                .map(Entry::Fdb),
        );
    }
    Ok(out)
}

/// A main-table route that says how the underlay reaches a prefix.
fn is_underlay_route(own: &Ownership, r: &Route) -> bool {
    r.table == RT_TABLE_MAIN && !r.oif.is_some_and(|oif| own.devices.contains(&oif))
}

fn is_connected(r: &Route) -> bool {
    r.kind == RouteKind::Unicast && r.gateway.is_none() && r.oif.is_some() && !r.multipath
}

/// IPv6 link-local prefixes come and go with every pod's veth and never hold a public IP.
fn is_link_local(dst: &IpNet) -> bool {
    matches!(dst, IpNet::V6(n) if (n.addr().segments()[0] & 0xffc0) == 0xfe80)
}

/// The underlay as `ip route get` would judge it: connected prefixes (no gateway) and prefixes
/// reached otherwise (through a gateway, several next hops, or not at all), from the main table,
/// leaving out routes over the backend's own devices.
pub fn underlay_from(routes: &[Route], own: &Ownership) -> Underlay {
    let mut underlay = Underlay::default();
    for r in routes.iter().filter(|r| is_underlay_route(own, r)) {
        if is_connected(r) {
            underlay.connected.push(r.dst);
        } else if matches!(
            r.kind,
            RouteKind::Unicast | RouteKind::Blackhole | RouteKind::Other(_)
        ) {
            underlay.indirect.push(r.dst);
        }
    }
    underlay
}

/// What a kernel event asks of the reconciler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Trigger {
    /// Nothing: the event is about foreign objects, or it is the echo of our own change.
    Nothing,
    /// Read, diff and apply.
    Pass,
    /// Check the backend's devices first, then pass.
    Devices,
}

/// Classify one kernel event against the ownership and the desired entries of the last pass.
pub fn classify(
    event: &KernelEvent,
    own: &Ownership,
    device_names: &[String],
    desired: &BTreeMap<EntryKey, Entry>,
) -> Trigger {
    let is_device = |index: u32, name: Option<&str>| {
        own.devices.contains(&index) || name.is_some_and(|n| device_names.iter().any(|d| d == n))
    };
    // A changed or new object: does it now differ from what we want there?
    let changed = |entry: Entry, owned: bool| match desired.get(&EntryKey::of(&entry)) {
        Some(want) if same_entry(want, &entry) => Trigger::Nothing,
        Some(_) => Trigger::Pass,
        None if owned => Trigger::Pass,
        None => Trigger::Nothing,
    };
    // A vanished object: was it one we want?
    let deleted = |entry: Entry| match desired.get(&EntryKey::of(&entry)) {
        Some(want) if same_entry(want, &entry) => Trigger::Pass,
        _ => Trigger::Nothing,
    };
    match event {
        KernelEvent::Overrun => Trigger::Devices,
        KernelEvent::LinkChanged(l) if is_device(l.index, Some(&l.name)) => Trigger::Devices,
        KernelEvent::LinkDeleted { index, name } if is_device(*index, Some(name)) => Trigger::Devices,
        // An underlay link going down or away takes its routes with it silently.
        KernelEvent::LinkChanged(l) if own.route_oifs.contains(&l.index) => Trigger::Pass,
        KernelEvent::LinkDeleted { index, .. } if own.route_oifs.contains(index) => Trigger::Pass,
        KernelEvent::LinkChanged(_) | KernelEvent::LinkDeleted { .. } => Trigger::Nothing,
        KernelEvent::AddrAdded(a) | KernelEvent::AddrDeleted(a) if is_device(a.index, None) => {
            Trigger::Devices
        }
        KernelEvent::AddrAdded(_) | KernelEvent::AddrDeleted(_) => Trigger::Nothing,
        KernelEvent::RouteAdded(r) | KernelEvent::RouteDeleted(r)
            if is_underlay_route(own, r)
                && is_connected(r)
                && !is_link_local(&r.dst)
                && !is_owned_route(own, r) =>
        {
            Trigger::Pass
        }
        KernelEvent::RouteAdded(r) => changed(Entry::Route(r.clone()), is_owned_route(own, r)),
        KernelEvent::RouteDeleted(r) => deleted(Entry::Route(r.clone())),
        KernelEvent::NeighChanged(n) => changed(Entry::Neigh(n.clone()), is_owned_neigh(own, n)),
        KernelEvent::NeighDeleted(n) => deleted(Entry::Neigh(n.clone())),
        KernelEvent::FdbChanged(f) => changed(Entry::Fdb(f.clone()), is_owned_fdb(own, f)),
        KernelEvent::FdbDeleted(f) => deleted(Entry::Fdb(f.clone())),
    }
}
