//! The ownership rule in a running reconciler: our routes (protocol flannel) and upstream's
//! leftovers are cleaned; an operator's route inside the cluster network is never deleted.

use super::*;
use crate::kernel::{RTPROT_BOOT, RTPROT_FLANNEL};

#[tokio::test(start_paused = true)]
async fn operators_routes_stay_and_upstreams_leftovers_go() {
    let (k, ext) = kernel_with_eth0();
    let boot = |r: Route| Route {
        protocol: RTPROT_BOOT,
        ..r
    };
    // `ip route add 198.18.9.0/24 via 192.0.2.254 dev eth0`: a gateway that is no node.
    let operators = boot(Route::unicast(
        net("198.18.9.0/24"),
        Some(ip("192.0.2.254")),
        Some(ext.index),
    ));
    // `ip route add 198.18.10.0/24 dev eth0 proto static`
    let static_route = Route {
        protocol: 4,
        ..Route::unicast(net("198.18.10.0/24"), None, Some(ext.index))
    };
    // Upstream host-gw left this for node 3, which since took another subnet.
    let upstream_stale = boot(Route::unicast(
        net("198.18.7.0/24"),
        Some(ip("192.0.2.3")),
        Some(ext.index),
    ));
    // Upstream's route for node 2's current subnet: adopted (rewritten with our protocol).
    let upstream_current = boot(Route::unicast(
        net("198.18.2.0/24"),
        Some(ip("192.0.2.2")),
        Some(ext.index),
    ));
    // Ours from an earlier run for a node that is gone.
    let ours_stale = Route::unicast(net("198.18.8.0/24"), Some(ip("192.0.2.8")), Some(ext.index));
    for r in [
        &operators,
        &static_route,
        &upstream_stale,
        &upstream_current,
        &ours_stale,
    ] {
        k.insert_route(r.clone());
    }
    let backend = HostGwBackend::new(&netconf(BackendConfig::HostGw), &ext).unwrap();
    let mut r = start(&k, Box::new(backend), own_lease("host-gw"));
    r.send(vec![
        Added(lease_of(2, "host-gw", None)),
        Added(lease_of(3, "host-gw", None)),
    ]);
    r.next_converged().await;
    let routes = k.all_routes();
    assert!(
        routes.contains(&operators),
        "an operator's route is never deleted"
    );
    assert!(routes.contains(&static_route));
    assert!(
        !routes.contains(&upstream_stale),
        "upstream's leftover via a node is cleaned"
    );
    assert!(!routes.contains(&ours_stale), "our own stale route is cleaned");
    let adopted: Vec<&Route> = routes.iter().filter(|r| r.dst == net("198.18.2.0/24")).collect();
    assert_eq!(adopted.len(), 1);
    assert_eq!(adopted[0].protocol, RTPROT_FLANNEL);
    assert_eq!(adopted[0].gateway, Some(ip("192.0.2.2")));
    // The periodic check changes nothing further.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let s = r.next_converged().await;
    assert_eq!(s.repairs, 0);
    assert!(k.all_routes().contains(&operators));
    r.stop().await.unwrap();
}
