//! Test setup and inspection of the fake kernel's state: objects put in or taken out as-is (as
//! another program would), and listings across all links.

use std::net::IpAddr;

use crate::kernel::{Fdb, KernelEvent, Neigh, Route};

use super::State;

impl State {
    /// Insert a route as-is, next to existing ones with the same destination (test setup).
    pub(in crate::kernel::fake) fn insert_route(&mut self, route: Route) {
        self.routes
            .entry((route.table, route.dst))
            .or_default()
            .push(route.clone());
        self.emit(KernelEvent::RouteAdded(route));
    }

    pub(in crate::kernel::fake) fn remove_route(&mut self, route: &Route) -> bool {
        let key = (route.table, route.dst);
        let Some(slot) = self.routes.get_mut(&key) else {
            return false;
        };
        let Some(pos) = slot.iter().position(|r| r == route) else {
            return false;
        };
        let gone = slot.remove(pos);
        if slot.is_empty() {
            self.routes.remove(&key);
        }
        self.emit(KernelEvent::RouteDeleted(gone));
        true
    }

    pub(in crate::kernel::fake) fn insert_neigh(&mut self, n: Neigh) {
        self.neighs.insert((n.index, n.ip), n.clone());
        self.emit(KernelEvent::NeighChanged(n));
    }

    pub(in crate::kernel::fake) fn insert_fdb(&mut self, f: Fdb) {
        self.fdbs.entry((f.index, f.mac)).or_default().push(f.clone());
        self.emit(KernelEvent::FdbChanged(f));
    }

    pub(in crate::kernel::fake) fn all_routes(&self) -> Vec<Route> {
        self.routes.values().flatten().cloned().collect()
    }

    pub(in crate::kernel::fake) fn neighs_of(&self, index: u32) -> Vec<Neigh> {
        self.neighs
            .range((index, IpAddr::from([0u8; 4]))..)
            .take_while(|((i, _), _)| *i == index)
            .map(|(_, n)| n.clone())
            .collect()
    }

    pub(in crate::kernel::fake) fn fdbs_of(&self, index: u32) -> Vec<Fdb> {
        self.fdbs
            .iter()
            .filter(|((i, _), _)| *i == index)
            .flat_map(|(_, v)| v.iter().cloned())
            .collect()
    }
}
