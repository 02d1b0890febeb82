mod support;
use std::time::Duration;
use support::etcd::Etcd;

#[tokio::test]
async fn probe_reconnect() {
    let Some(mut etcd) = Etcd::start_or_skip() else {
        return;
    };
    let mut c = etcd_client::Client::connect([etcd.endpoint.clone()], None)
        .await
        .unwrap();
    c.put("a", "1", None).await.unwrap();
    etcd.stop();
    for i in 0..4 {
        let t = std::time::Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(5), c.get("a", None)).await;
        eprintln!("get while down {i} {:?}: {r:?}", t.elapsed());
    }
    let t = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), c.watch_client().watch("a", None)).await;
    eprintln!(
        "watch while down {:?}: {:?}",
        t.elapsed(),
        r.map(|x| x.map(|_| ()))
    );
    let mut c2 = etcd_client::Client::connect(["http://127.0.0.1:1"], None)
        .await
        .unwrap();
    for i in 0..3 {
        let t = std::time::Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(5), c2.get("a", None)).await;
        eprintln!("get unreachable {i} {:?}: {r:?}", t.elapsed());
    }
}
