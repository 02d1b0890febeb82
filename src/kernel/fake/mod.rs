//! An in-memory kernel for unit tests: it holds state (links with vxlan attributes, addresses,
//! routes, neighbours, FDB entries), not a script of calls, and answers `Netlink` calls from it with
//! the real kernel's rules: replace creates or overwrites, deletes of missing objects fail with
//! ESRCH/ENOENT/ENODEV, adding an existing address or link fails with EEXIST, routes need an up
//! device and (unless onlink) a connected gateway, deleting a link flushes everything on it.
//! Every change is announced to `subscribe()`rs as the kernel would (IPv4 route flushes are silent).
//!
//! Test helpers change state "behind the back" of the code under test (emitting the same events),
//! inject failures, and count calls so tests can assert "no change on restart".
//! Never selected by `cfg!(test)`: tests pass an `Arc<FakeKernel>` where a `Netlink` is wanted.
//! Spec: flanneld-behaviour.md section 9 (netlink conventions).

use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

use futures::StreamExt;
use futures::stream::BoxStream;

use crate::kernel::{
    Addr, AddrFlags, Fdb, IpipInfo, IpipSpec, KResult, KernelEvent, Link, MacAddr, Neigh, Netlink, Op, Route,
    VxlanSpec,
};

mod state;
#[cfg(test)]
mod tests;

pub use state::permanent_neigh;
use state::{State, failed};

/// How often each kind of call reached the fake through the `Netlink` trait (helpers not counted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeCounters {
    /// Calls that ask for a change: every op of `apply`, link/address creation, deletion, up, MTU.
    pub mutations: u64,
    /// Of those, the ones that really changed state.
    pub changes: u64,
    /// Calls of `apply` (a batch counts once).
    pub apply_calls: u64,
    /// Read calls: links, link_by_name, addrs, routes, neighs, fdbs, route_get.
    pub reads: u64,
    /// Calls of `routes()` (the full route dump).
    pub route_dumps: u64,
    /// Calls that failed because of `inject_failure`.
    pub injected_failures: u64,
}

/// A call as seen by a failure predicate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeCall {
    Apply(Op),
    CreateVxlan(VxlanSpec),
    CreateIpip(IpipSpec),
    CreateWireguard(String, u32),
    DeleteLink(u32),
    SetLinkUp(u32),
    SetLinkMtu(u32, u32),
    AddAddr(Addr),
    DelAddr(Addr),
    /// Any read (the name of the trait method, e.g. `routes`, `neighs`).
    Read(&'static str),
}

type Predicate = Box<dyn Fn(&FakeCall) -> bool + Send>;

struct InjectedFailure {
    remaining: usize,
    errno: i32,
    predicate: Predicate,
}

struct Inner {
    state: State,
    counters: FakeCounters,
    failures: Vec<InjectedFailure>,
}

/// The in-memory kernel. Cheap to share as `Arc<FakeKernel>`.
pub struct FakeKernel {
    inner: Mutex<Inner>,
}

impl Default for FakeKernel {
    fn default() -> Self {
        FakeKernel::new()
    }
}

impl FakeKernel {
    pub fn new() -> FakeKernel {
        FakeKernel {
            inner: Mutex::new(Inner {
                state: State::new(),
                counters: FakeCounters::default(),
                failures: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the state from the assertions that follow.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Make the next `times` calls matching `predicate` fail with `errno`.
    pub fn inject_failure(
        &self,
        times: usize,
        errno: i32,
        predicate: impl Fn(&FakeCall) -> bool + Send + 'static,
    ) {
        self.lock().failures.push(InjectedFailure {
            remaining: times,
            errno,
            predicate: Box::new(predicate),
        });
    }

    pub fn counters(&self) -> FakeCounters {
        self.lock().counters.clone()
    }

    pub fn reset_counters(&self) {
        self.lock().counters = FakeCounters::default();
    }

    /// Add an up physical (kind-less) link; returns its index.
    pub fn add_physical_link(&self, name: &str, mtu: u32, mac: MacAddr) -> u32 {
        let link = Link {
            index: 0,
            name: name.into(),
            kind: None,
            mtu,
            mac: Some(mac),
            up: true,
            vxlan: None,
            ipip: None,
        };
        match self.lock().state.add_link(link) {
            Ok(l) => l.index,
            Err(e) => panic!("fake kernel: adding link {name}: {e}"),
        }
    }

    /// Add a link of any kind as found (a foreign or stale device), e.g. a `dummy` or an ipip
    /// tunnel with other attributes; returns its index.
    pub fn insert_link(&self, link: Link) -> u32 {
        match self.lock().state.add_link(link.clone()) {
            Ok(l) => l.index,
            Err(e) => panic!("fake kernel: adding link {}: {e}", link.name),
        }
    }

    /// Add a permanent address (and its connected route when the link is up).
    pub fn add_address(&self, index: u32, ip: IpAddr, prefix_len: u8) {
        let addr = Addr {
            index,
            ip,
            prefix_len,
            flags: AddrFlags {
                permanent: true,
                ..AddrFlags::default()
            },
        };
        if let Err(e) = self.lock().state.add_addr(&addr) {
            panic!("fake kernel: adding address {ip}/{prefix_len}: {e}");
        }
    }

    /// Take a link down (its routes vanish silently, as with a NIC restart) or up again.
    pub fn set_link_state(&self, index: u32, up: bool) {
        if let Err(e) = self.lock().state.set_link_up(index, up) {
            panic!("fake kernel: setting link #{index} up={up}: {e}");
        }
    }

    /// Delete a link behind the back of the code under test.
    pub fn remove_link(&self, index: u32) -> bool {
        self.lock().state.delete_link(index).is_ok()
    }

    /// Insert a route next to any with the same destination (a foreign or stale object).
    pub fn insert_route(&self, route: Route) {
        self.lock().state.insert_route(route);
    }

    /// Remove exactly this route behind the back of the code under test; emits the delete event.
    pub fn remove_route(&self, route: &Route) -> bool {
        self.lock().state.remove_route(route)
    }

    pub fn insert_neigh(&self, neigh: Neigh) {
        self.lock().state.insert_neigh(neigh);
    }

    pub fn remove_neigh(&self, neigh: &Neigh) -> bool {
        self.lock().state.apply(&Op::DeleteNeigh(neigh.clone())).is_ok()
    }

    /// Add an FDB entry (appended as a further remote when the MAC already has one).
    pub fn insert_fdb(&self, fdb: Fdb) {
        self.lock().state.insert_fdb(fdb);
    }

    pub fn remove_fdb(&self, fdb: &Fdb) -> bool {
        self.lock().state.apply(&Op::DeleteFdb(fdb.clone())).is_ok()
    }

    pub fn all_routes(&self) -> Vec<Route> {
        self.lock().state.all_routes()
    }

    pub fn all_neighs(&self) -> Vec<Neigh> {
        self.lock().state.neighs.values().cloned().collect()
    }

    pub fn all_fdbs(&self) -> Vec<Fdb> {
        self.lock().state.fdbs.values().flatten().cloned().collect()
    }

    pub fn all_addrs(&self) -> Vec<Addr> {
        self.lock().state.addrs.clone()
    }

    pub fn link(&self, name: &str) -> Option<Link> {
        self.lock().state.links.values().find(|l| l.name == name).cloned()
    }

    /// Count the call, and fail it when an injected failure matches.
    fn enter(&self, call: impl FnOnce() -> FakeCall, mutation: bool) -> KResult<MutexGuard<'_, Inner>> {
        let mut inner = self.lock();
        if mutation {
            inner.counters.mutations += 1;
        } else {
            inner.counters.reads += 1;
        }
        if !inner.failures.is_empty() {
            let call = call();
            if let Some(f) = inner
                .failures
                .iter_mut()
                .find(|f| f.remaining > 0 && (f.predicate)(&call))
            {
                f.remaining -= 1;
                let errno = f.errno;
                inner.failures.retain(|f| f.remaining > 0);
                inner.counters.injected_failures += 1;
                return Err(failed("injected failure for", format!("{call:?}"), errno));
            }
        }
        Ok(inner)
    }

    fn mutate<T>(
        &self,
        call: impl FnOnce() -> FakeCall,
        f: impl FnOnce(&mut State) -> KResult<(T, bool)>,
    ) -> KResult<T> {
        let mut inner = self.enter(call, true)?;
        let (out, changed) = f(&mut inner.state)?;
        if changed {
            inner.counters.changes += 1;
        }
        Ok(out)
    }

    fn read<T>(&self, name: &'static str, f: impl FnOnce(&State) -> KResult<T>) -> KResult<T> {
        let inner = self.enter(|| FakeCall::Read(name), false)?;
        f(&inner.state)
    }
}

#[async_trait::async_trait]
impl Netlink for FakeKernel {
    async fn links(&self) -> KResult<Vec<Link>> {
        self.read("links", |s| Ok(s.links.values().cloned().collect()))
    }

    async fn link_by_name(&self, name: &str) -> KResult<Option<Link>> {
        self.read("link_by_name", |s| {
            Ok(s.links.values().find(|l| l.name == name).cloned())
        })
    }

    async fn addrs(&self) -> KResult<Vec<Addr>> {
        self.read("addrs", |s| Ok(s.addrs.clone()))
    }

    async fn routes(&self) -> KResult<Vec<Route>> {
        let routes = self.read("routes", |s| Ok(s.all_routes()))?;
        self.lock().counters.route_dumps += 1;
        Ok(routes)
    }

    async fn neighs(&self, index: u32) -> KResult<Vec<Neigh>> {
        self.read("neighs", |s| {
            if !s.links.contains_key(&index) {
                return Err(failed(
                    "listing neighbours",
                    format!("link #{index}"),
                    libc::ENODEV,
                ));
            }
            Ok(s.neighs_of(index))
        })
    }

    async fn fdbs(&self, index: u32) -> KResult<Vec<Fdb>> {
        self.read("fdbs", |s| {
            if !s.links.contains_key(&index) {
                return Err(failed(
                    "listing fdb entries",
                    format!("link #{index}"),
                    libc::ENODEV,
                ));
            }
            Ok(s.fdbs_of(index))
        })
    }

    async fn route_get(&self, dst: IpAddr) -> KResult<Vec<Route>> {
        self.read("route_get", |s| {
            let route = s
                .lookup(dst)
                .ok_or_else(|| failed("looking up route", dst, libc::ENETUNREACH))?;
            let host = ipnet::IpNet::from(dst);
            Ok(vec![Route {
                dst: host,
                ..route.clone()
            }])
        })
    }

    async fn create_vxlan(&self, spec: &VxlanSpec) -> KResult<Link> {
        self.mutate(
            || FakeCall::CreateVxlan(spec.clone()),
            |s| s.create_vxlan(spec).map(|l| (l, true)),
        )
    }

    async fn create_ipip(&self, spec: &IpipSpec) -> KResult<Link> {
        // Like the kernel: an ipip device has no MAC, is created down, and ttl/pmtudisc are as asked.
        let link = Link {
            index: 0,
            name: spec.name.clone(),
            kind: Some("ipip".into()),
            mtu: spec.mtu,
            mac: None,
            up: false,
            vxlan: None,
            ipip: Some(IpipInfo {
                local: Some(spec.local).filter(|ip| !ip.is_unspecified()),
                remote: None,
                ttl: 0,
                pmtudisc: false,
                link: 0,
            }),
        };
        self.mutate(
            || FakeCall::CreateIpip(spec.clone()),
            |s| s.add_link(link).map(|l| (l, true)),
        )
    }

    async fn create_wireguard(&self, name: &str, mtu: u32) -> KResult<Link> {
        self.mutate(
            || FakeCall::CreateWireguard(name.to_string(), mtu),
            |s| s.create_wireguard(name, mtu).map(|l| (l, true)),
        )
    }

    async fn delete_link(&self, index: u32) -> KResult<()> {
        self.mutate(
            || FakeCall::DeleteLink(index),
            |s| s.delete_link(index).map(|()| ((), true)),
        )
    }

    async fn set_link_up(&self, index: u32) -> KResult<()> {
        self.mutate(
            || FakeCall::SetLinkUp(index),
            |s| s.set_link_up(index, true).map(|c| ((), c)),
        )
    }

    async fn set_link_mtu(&self, index: u32, mtu: u32) -> KResult<()> {
        self.mutate(
            || FakeCall::SetLinkMtu(index, mtu),
            |s| s.set_link_mtu(index, mtu).map(|c| ((), c)),
        )
    }

    async fn add_addr(&self, addr: &Addr) -> KResult<()> {
        self.mutate(
            || FakeCall::AddAddr(addr.clone()),
            |s| s.add_addr(addr).map(|()| ((), true)),
        )
    }

    async fn del_addr(&self, addr: &Addr) -> KResult<()> {
        self.mutate(
            || FakeCall::DelAddr(addr.clone()),
            |s| s.del_addr(addr).map(|()| ((), true)),
        )
    }

    async fn apply(&self, ops: &[Op]) -> Vec<KResult<()>> {
        self.lock().counters.apply_calls += 1;
        ops.iter()
            .map(|op| self.mutate(|| FakeCall::Apply(op.clone()), |s| s.apply(op).map(|c| ((), c))))
            .collect()
    }

    async fn subscribe(&self) -> KResult<BoxStream<'static, KernelEvent>> {
        let mut inner = self.enter(|| FakeCall::Read("subscribe"), false)?;
        Ok(inner.state.subscribe().boxed())
    }
}
