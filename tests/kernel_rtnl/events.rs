//! Change notifications seen through `subscribe()` for changes made with `ip` and `bridge`.

use super::*;

fn sh_in(ns_name: &str, script: &str) {
    let st = std::process::Command::new("ip")
        .args(["netns", "exec", ns_name, "sh", "-c", script])
        .status()
        .unwrap();
    assert!(st.success(), "{script}");
}

async fn next_matching(
    events: &mut futures::stream::BoxStream<'static, KernelEvent>,
    what: &str,
    pred: impl Fn(&KernelEvent) -> bool,
) -> KernelEvent {
    // Only a guard against hanging forever; the assertion is that the event arrives.
    let wait = async {
        while let Some(ev) = events.next().await {
            if pred(&ev) {
                return ev;
            }
        }
        panic!("event stream ended before {what}");
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("no event: {what}"))
}

#[test]
fn subscribe_sees_route_link_address_and_fdb_changes() {
    let (a, _b) = pair("rt");
    a.sh("ip route add 198.18.5.0/24 via 192.0.2.2");
    a.sh("ip link add flannel.7 type vxlan id 7 local 192.0.2.1 dev eth0");
    let name = a.name.clone();
    let events = with_nl(&a, move |nl| async move {
        let mut events = nl.subscribe().await.expect("subscribe");
        sh_in(&name, "ip route del 198.18.5.0/24");
        let route = next_matching(
            &mut events,
            "route deleted",
            |e| matches!(e, KernelEvent::RouteDeleted(r) if r.dst.to_string() == "198.18.5.0/24"),
        )
        .await;
        sh_in(&name, "ip addr add 192.0.2.77/24 dev eth0");
        let addr = next_matching(
            &mut events,
            "address added",
            |e| matches!(e, KernelEvent::AddrAdded(x) if x.ip.to_string() == "192.0.2.77"),
        )
        .await;
        sh_in(
            &name,
            "bridge fdb add 0e:00:00:00:00:07 dev flannel.7 dst 192.0.2.2 self permanent",
        );
        let fdb = next_matching(&mut events, "fdb added", |e| {
            matches!(e, KernelEvent::FdbChanged(_))
        })
        .await;
        sh_in(&name, "ip link del flannel.7");
        let link = next_matching(&mut events, "link deleted", |e| {
            matches!(e, KernelEvent::LinkDeleted { .. })
        })
        .await;
        (route, addr, fdb, link)
    });
    let (route, _addr, fdb, link) = events;
    let KernelEvent::RouteDeleted(r) = route else {
        unreachable!()
    };
    assert_eq!(r.gateway, Some("192.0.2.2".parse().unwrap()));
    let KernelEvent::FdbChanged(f) = fdb else {
        unreachable!()
    };
    assert_eq!(
        (f.dst, f.self_flag, f.permanent),
        (Some("192.0.2.2".parse().unwrap()), true, true)
    );
    let KernelEvent::LinkDeleted { name, .. } = link else {
        unreachable!()
    };
    assert_eq!(name, "flannel.7");
}
