//! Reconciler behaviour under failures: op errors and backoff, NIC restarts, shutdown, a closed
//! lease channel, a fight with another program over an entry; plus bulk and idle costs.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn failed_ops_are_logged_with_the_object_and_retried_with_backoff() {
    let logs = Capture::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (k, dev, ext, mut r) = vxlan_node(false).await;
    let wanted = route_in(&triple(dev, &ext, 2));
    let target = wanted.clone();
    k.inject_failure(3, libc::ENOBUFS, move |c| {
        *c == FakeCall::Apply(Op::ReplaceRoute(target.clone()))
    });
    r.send(vec![Added(vxlan_peer(2)), Added(vxlan_peer(3))]);
    let s = r.wait("the first pass", |s| s.passes >= 1).await;
    assert!(!s.converged);
    assert_eq!(s.failed_ops, 1);
    assert!(
        s.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("198.18.2.0/24"),
        "{s:?}"
    );
    assert!(has_all(&k, &triple(dev, &ext, 3)), "other peers are not held up");
    let s = r.wait("convergence after retries", |s| s.converged).await;
    assert!(s.passes >= 4, "three failures, then success: {s:?}");
    assert!(k.all_routes().contains(&wanted));
    assert_eq!(k.counters().injected_failures, 3);
    r.stop().await.unwrap();
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let warned: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(
        warned.len(),
        1,
        "a repeated failure is logged once at warn: {text}"
    );
    assert!(
        warned[0].contains("198.18.2.0/24") && warned[0].contains("No buffer space"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn bad_leases_are_skipped_and_others_unaffected() {
    let (k, dev, ext, mut r) = vxlan_node(false).await;
    r.send(vec![
        Added(vxlan_peer(2)),
        Added(lease_of(3, "vxlan", Some("{garbage".into()))),
        Added(lease_of(4, "vxlan", None)),
        Added(lease_of(5, "host-gw", None)),
        Added(lease_of(
            6,
            "vxlan",
            Some(r#"{"VNI":1,"VtepMAC":"zz:00:00:00:00:01"}"#.into()),
        )),
    ]);
    let s = r.next_converged().await;
    assert_eq!((s.leases, s.desired, s.installed), (5, 3, 3));
    assert!(has_all(&k, &triple(dev, &ext, 2)));
    r.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn five_thousand_leases_are_one_pass_and_one_apply() {
    let (k, ext) = kernel_with_eth0();
    let backend = prepared_vxlan(&k, &ext, false, Some(OWN_MAC)).await;
    let dev = k.link("flannel.1").unwrap().index;
    k.reset_counters();
    let mut r = start(&k, Box::new(backend), own_lease("vxlan"));
    // Queued before the task gets to run: one pass for all of them.
    for n in 2..5002u16 {
        r.send(vec![Added(vxlan_peer(n))]);
    }
    let s = r.next_converged().await;
    assert_eq!(
        (s.passes, s.leases, s.desired, s.installed),
        (1, 5000, 15000, 15000)
    );
    let c = k.counters();
    assert_eq!((c.apply_calls, c.route_dumps, c.mutations), (1, 1, 15000));
    assert!(has_all(&k, &triple(dev, &ext, 4321)));
    r.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn idle_costs_no_dump_until_the_periodic_check() {
    let (k, _dev, ext, mut r) = vxlan_node(false).await;
    r.send(vec![Added(vxlan_peer(2))]);
    let passes = r.next_converged().await.passes;
    let dumps = k.counters().route_dumps;
    // Foreign activity does not wake the reconciler either.
    k.insert_route(Route::unicast(
        net("203.0.113.0/24"),
        Some(ip("192.0.2.254")),
        Some(ext.index),
    ));
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(k.counters().route_dumps, dumps);
    tokio::time::sleep(Duration::from_secs(2)).await;
    r.wait("the periodic pass", |s| s.passes == passes + 1 && s.converged)
        .await;
    assert_eq!(k.counters().route_dumps, dumps + 1);
    r.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn direct_routing_uses_the_peer_public_ip_when_connected() {
    let (k, dev, ext, mut r) = vxlan_node(true).await;
    let far = lease_of(
        7,
        "vxlan",
        Some(crate::lease::vxlan_backend_data(1, &peer_mac(7))),
    );
    let far = Lease {
        attrs: crate::lease::LeaseAttrs {
            public_ip: "203.0.113.7".parse().unwrap(),
            ..far.attrs
        },
        ..far
    };
    r.send(vec![Added(vxlan_peer(2)), Added(far)]);
    r.next_converged().await;
    let direct = Route::unicast(net("198.18.2.0/24"), Some(ip("192.0.2.2")), Some(ext.index));
    assert!(k.all_routes().contains(&direct));
    assert!(!k.all_neighs().iter().any(|n| n.ip == ip("198.18.2.0")));
    let tunnelled = peer_entries(
        dev,
        ext.index,
        net("198.18.7.0/24"),
        peer_mac(7),
        ip("203.0.113.7"),
        false,
    );
    assert!(has_all(&k, &tunnelled));
    r.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn host_gw_routes_come_back_after_a_nic_restart() {
    let (k, ext) = kernel_with_eth0();
    let conf = netconf(BackendConfig::HostGw);
    let mut backend = HostGwBackend::new(&conf, &ext).unwrap();
    backend.prepare(&*k).await.unwrap();
    let mut r = start(&k, Box::new(backend), own_lease("host-gw"));
    r.send(vec![
        Added(lease_of(2, "host-gw", None)),
        Added(lease_of(3, "host-gw", None)),
    ]);
    r.next_converged().await;
    let route = Route::unicast(net("198.18.2.0/24"), Some(ip("192.0.2.2")), Some(ext.index));
    assert!(k.all_routes().contains(&route));
    // The NIC goes down (routes flushed without route events) and comes back.
    k.set_link_state(ext.index, false);
    r.wait("a failing pass while the NIC is down", |s| !s.converged)
        .await;
    k.set_link_state(ext.index, true);
    let s = r.wait("recovery", |s| s.converged).await;
    assert!(k.all_routes().contains(&route));
    assert_eq!(s.installed, 2);
    r.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_leaves_everything_in_place() {
    let (k, dev, ext, mut r) = vxlan_node(false).await;
    r.send(vec![Added(vxlan_peer(2))]);
    r.next_converged().await;
    r.stop().await.unwrap();
    assert!(has_all(&k, &triple(dev, &ext, 2)));
    assert!(k.link("flannel.1").is_some());
}

#[tokio::test(start_paused = true)]
async fn a_closed_lease_channel_without_shutdown_is_an_error() {
    let (_k, _dev, _ext, r) = vxlan_node(false).await;
    let Running { leases, task, .. } = r;
    drop(leases);
    assert!(matches!(
        task.await.unwrap(),
        Err(ReconcileError::LeaseEventsClosed)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_fight_over_an_entry_slows_down_instead_of_spinning() {
    use futures::StreamExt;
    let (k, dev, ext, mut r) = vxlan_node(false).await;
    r.send(vec![Added(vxlan_peer(2))]);
    r.next_converged().await;
    // Another program deletes our route whenever it appears.
    let target = route_in(&triple(dev, &ext, 2));
    let mut events = k.subscribe().await.unwrap();
    let (fighter_k, fighter_target) = (k.clone(), target.clone());
    let fighter = tokio::spawn(async move {
        while let Some(e) = events.next().await {
            if e == crate::kernel::KernelEvent::RouteAdded(fighter_target.clone()) {
                fighter_k.remove_route(&fighter_target);
            }
        }
    });
    assert!(k.remove_route(&target));
    tokio::time::sleep(Duration::from_secs(60)).await;
    let passes = r.status.borrow().passes;
    assert!(passes < 30, "{passes} passes in a minute of fighting");
    fighter.abort();
    let _ = fighter.await;
    r.wait("the route back", |s| s.converged && s.passes > passes)
        .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(k.all_routes().contains(&target));
    r.stop().await.unwrap();
}
