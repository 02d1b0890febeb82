//! `--ip-blackhole-route` (spec 10.3): a `blackhole <own subnet>` route, kept present, so that
//! traffic to unused addresses of the own subnet is dropped here instead of following the default
//! route out (and back). Changes go through the kernel seam.
//!
//! The route carries no metric (the seam has none), so for IPv4 it would share the key of the
//! local bridge route (`<subnet> dev cni0 proto kernel`, metric 0): replacing would overwrite that
//! route, and a blackhole listed first would shadow it. So for IPv4 the blackhole is only added
//! while no other route serves the subnet, and it is withdrawn as soon as one appears. IPv6 gives
//! the blackhole the user default metric 1024, behind the kernel's 256, so it can always stay.
//! Upstream's check never actually adds the route (it only adds when listing fails): a
//! documented deviation.

use ipnet::IpNet;
use tracing::{error, info};

use crate::kernel::{
    KernelEvent, Netlink, Op, RT_SCOPE_UNIVERSE, RT_TABLE_MAIN, RTPROT_BOOT, Route, RouteKind,
};

/// The blackhole route for `subnet` in the main table.
pub fn blackhole_route(subnet: IpNet) -> Route {
    Route {
        dst: subnet.trunc(),
        gateway: None,
        oif: None,
        table: RT_TABLE_MAIN,
        protocol: RTPROT_BOOT,
        scope: RT_SCOPE_UNIVERSE,
        kind: RouteKind::Blackhole,
        onlink: false,
        prefsrc: None,
        multipath: false,
    }
}

/// What to change so that each of `subnets` has its blackhole route, given the main table.
pub fn plan(subnets: &[IpNet], routes: &[Route]) -> Vec<Op> {
    let mut ops = Vec::new();
    for subnet in subnets {
        let dst = subnet.trunc();
        let same_dst: Vec<&Route> = routes
            .iter()
            .filter(|r| r.table == RT_TABLE_MAIN && r.dst == dst)
            .collect();
        let blackhole = same_dst.iter().any(|r| r.kind == RouteKind::Blackhole);
        let served = same_dst.iter().any(|r| r.kind != RouteKind::Blackhole);
        match (dst, blackhole, served) {
            (IpNet::V4(_), true, true) => ops.push(Op::DeleteRoute(blackhole_route(dst))),
            (IpNet::V4(_), false, false) | (IpNet::V6(_), false, _) => {
                ops.push(Op::ReplaceRoute(blackhole_route(dst)))
            }
            _ => {}
        }
    }
    ops
}

/// Whether a kernel event may change what `plan` decides: a route to one of `subnets` came or
/// went; a link went down or away, or an address was removed (the kernel then drops IPv4 routes
/// such as cni0's without telling anyone); or the event stream lost events.
pub fn concerns(event: &KernelEvent, subnets: &[IpNet]) -> bool {
    match event {
        KernelEvent::RouteAdded(r) | KernelEvent::RouteDeleted(r) => {
            r.table == RT_TABLE_MAIN && subnets.iter().any(|s| s.trunc() == r.dst)
        }
        KernelEvent::LinkChanged(l) => !l.up,
        KernelEvent::LinkDeleted { .. } | KernelEvent::AddrDeleted(_) | KernelEvent::Overrun => true,
        _ => false,
    }
}

/// Reads the main table once and applies the plan; failures are logged (never fatal, as upstream).
pub async fn ensure(netlink: &dyn Netlink, subnets: &[IpNet]) {
    let routes = match netlink.routes().await {
        Ok(routes) => routes,
        Err(e) => {
            error!("setting up the blackhole route: listing routes: {e}");
            return;
        }
    };
    let ops = plan(subnets, &routes);
    if ops.is_empty() {
        return;
    }
    for (op, result) in ops.iter().zip(netlink.apply(&ops).await) {
        match result {
            Ok(()) if matches!(op, Op::DeleteRoute(_)) => {
                info!(%op, "withdrew the blackhole route: another route now serves the own subnet")
            }
            Ok(()) => info!(%op, "installed the blackhole route for the own subnet"),
            Err(e) => error!(%op, "setting up the blackhole route: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::FakeKernel;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn bridge_route(dst: &str) -> Route {
        let mut r = Route::unicast(net(dst), None, Some(7));
        r.protocol = crate::kernel::RTPROT_KERNEL;
        r.scope = crate::kernel::RT_SCOPE_LINK;
        r
    }

    #[test]
    fn adds_when_nothing_routes_the_subnet() {
        let ops = plan(&[net("198.18.1.0/24"), net("2001:db8:1::/64")], &[]);
        assert_eq!(
            ops,
            [
                Op::ReplaceRoute(blackhole_route(net("198.18.1.0/24"))),
                Op::ReplaceRoute(blackhole_route(net("2001:db8:1::/64")))
            ]
        );
        assert_eq!(ops[0].to_string(), "route replace 198.18.1.0/24");
    }

    #[test]
    fn keeps_existing_and_steps_aside_for_a_local_ipv4_route() {
        let bh = blackhole_route(net("198.18.1.0/24"));
        assert_eq!(plan(&[net("198.18.1.0/24")], std::slice::from_ref(&bh)), []);
        // A bridge route serves the subnet: no blackhole is added...
        assert_eq!(
            plan(&[net("198.18.1.0/24")], &[bridge_route("198.18.1.0/24")]),
            []
        );
        // ...and one present next to it is withdrawn (it would shadow the bridge route).
        assert_eq!(
            plan(
                &[net("198.18.1.0/24")],
                &[bh.clone(), bridge_route("198.18.1.0/24")]
            ),
            [Op::DeleteRoute(bh)]
        );
        // IPv6: the blackhole sits behind the kernel route's metric, so it is added anyway.
        assert_eq!(
            plan(&[net("2001:db8:1::/64")], &[bridge_route("2001:db8:1::/64")]),
            [Op::ReplaceRoute(blackhole_route(net("2001:db8:1::/64")))]
        );
        // Routes to other destinations do not count.
        assert_eq!(
            plan(&[net("198.18.1.0/24")], &[bridge_route("198.18.0.0/16")]).len(),
            1
        );
    }

    #[tokio::test]
    async fn ensure_installs_once_through_the_seam() {
        let kernel = FakeKernel::new();
        let subnets = [net("198.18.1.0/24")];
        ensure(&kernel, &subnets).await;
        ensure(&kernel, &subnets).await;
        let routes = kernel.routes().await.unwrap();
        let blackholes: Vec<_> = routes.iter().filter(|r| r.kind == RouteKind::Blackhole).collect();
        assert_eq!(blackholes.len(), 1);
        assert_eq!(blackholes[0].dst, net("198.18.1.0/24"));
    }
}
