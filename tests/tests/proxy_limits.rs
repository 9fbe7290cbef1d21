//! Rate limits under contention: the provider's own limit never trips, priorities are
//! served in order, and a full queue rejects the lowest-priority newest request.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sidecar_proto::v1 as pb;
use sidecar_tests::{Gateway, MockUpstream, ProxyOptions, eventually, gateway::BackendDef};

fn tagged(tag: &str) -> Value {
    json!({"model": "gpt-test", "user": tag, "messages": [{"role": "user", "content": tag}]})
}

async fn gateway(window: Duration) -> Gateway {
    Gateway::start_with(ProxyOptions { rate_window: window, ..Default::default() }).await
}

#[tokio::test]
async fn the_providers_own_limit_never_trips_when_the_proxy_is_set_to_it() {
    let mock = MockUpstream::start(&[]).await;
    mock.set_rpm_limit(5, Duration::from_secs(1));
    // The proxy's minute is one second here, so five "minutes" pass in five seconds.
    let mut gw = gateway(Duration::from_secs(1)).await;
    gw.add_backend(&mock, BackendDef { rpm: 5, ..Default::default() }).await;
    let started = Instant::now();
    let requests = (0..20).map(|_| gw.proxy.chat("gpt-test"));
    let statuses: Vec<u16> = futures::future::join_all(requests).await.iter().map(|r| r.status().as_u16()).collect();
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(mock.violations(), 0, "the upstream saw more than its limit in a window");
    assert_eq!(mock.served(), 20);
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "20 requests at 5 per second took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_same_load_above_the_limit_does_trip_the_mock() {
    // Control for the test above: the mock does catch a proxy that overshoots.
    let mock = MockUpstream::start(&[]).await;
    mock.set_rpm_limit(5, Duration::from_secs(1));
    let mut gw = gateway(Duration::from_secs(1)).await;
    gw.settings(pb::SettingsPatch { bucket_burst: Some(10), ..Default::default() }).await;
    gw.add_backend(&mock, BackendDef { rpm: 10, ..Default::default() }).await;
    let requests = (0..10).map(|_| gw.proxy.chat("gpt-test"));
    futures::future::join_all(requests).await;
    assert!(mock.violations() > 0);
}

#[tokio::test]
async fn waiting_requests_are_served_by_priority_then_arrival() {
    let mock = MockUpstream::start(&[]).await;
    let mut gw = gateway(Duration::from_secs(1)).await;
    gw.settings(pb::SettingsPatch {
        bucket_burst: Some(1),
        low_priority_timeout_seconds: Some(10),
        ..Default::default()
    })
    .await;
    gw.add_backend(&mock, BackendDef { rpm: 4, ..Default::default() }).await;
    assert_eq!(gw.proxy.post("/chat/completions", &tagged("first"), &[]).await.status(), 200);

    let proxy = &gw.proxy;
    let send = |tag: &'static str, priority: &'static str, delay: u64| async move {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        proxy.post("/chat/completions", &tagged(tag), &[("x-priority", priority)]).await.status().as_u16()
    };
    let all = futures::future::join_all([
        Box::pin(send("low", "low", 0)) as std::pin::Pin<Box<dyn std::future::Future<Output = u16>>>,
        Box::pin(send("normal-1", "normal", 20)),
        Box::pin(send("normal-2", "", 40)),
        Box::pin(send("high", "high", 60)),
        Box::pin(send("urgent", "URGENT", 80)),
    ])
    .await;
    assert!(all.iter().all(|&s| s == 200), "{all:?}");
    let order: Vec<String> =
        mock.calls_to("/v1/chat/completions").iter().map(|c| c.json()["user"].as_str().unwrap().to_owned()).collect();
    assert_eq!(order, ["first", "urgent", "high", "normal-1", "normal-2", "low"]);
}

#[tokio::test]
async fn a_full_queue_rejects_the_lowest_priority_newest_request() {
    let mock = MockUpstream::start(&[]).await;
    let mut gw = gateway(Duration::from_secs(30)).await;
    gw.settings(pb::SettingsPatch { bucket_burst: Some(1), queue_capacity: Some(2), ..Default::default() }).await;
    gw.add_backend(&mock, BackendDef { rpm: 1, ..Default::default() }).await;
    assert_eq!(gw.proxy.chat("gpt-test").await.status(), 200, "takes the only token for 30 s");

    let proxy = gw.proxy.clone_handle();
    let n1 = tokio::spawn({
        let p = proxy.clone();
        async move { p.post_status(&tagged("n1"), "normal").await }
    });
    eventually("n1 queued", Duration::from_secs(5), || async { (gw.proxy.shared.queue.len() == 1).then_some(()) })
        .await;
    let n2 = tokio::spawn({
        let p = proxy.clone();
        async move { p.post_status(&tagged("n2"), "normal").await }
    });
    eventually("queue full", Duration::from_secs(5), || async { (gw.proxy.shared.queue.len() == 2).then_some(()) })
        .await;

    // A low-priority newcomer is the lowest and newest: it is the one refused.
    let (status, body) = proxy.post_status(&tagged("low"), "low").await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["type"], "queue_full");

    // An urgent newcomer pushes out the newest normal waiter, never a higher one.
    let urgent = tokio::spawn({
        let p = proxy.clone();
        async move { p.post_status(&tagged("urgent"), "urgent").await }
    });
    let (status, body) = n2.await.unwrap();
    assert_eq!((status, body["error"]["type"].as_str()), (503, Some("queue_full")));
    let depth = gw.proxy.status().await["queue"]["depth"].clone();
    assert_eq!((depth["urgent"].as_u64(), depth["normal"].as_u64()), (Some(1), Some(1)));
    assert!(!n1.is_finished() && !urgent.is_finished(), "both still wait for a token");
    assert!(mock.calls_to("/v1/chat/completions").len() == 1);
    n1.abort();
    urgent.abort();
}

#[tokio::test]
async fn a_queue_timeout_answers_429_with_retry_after() {
    let mock = MockUpstream::start(&[]).await;
    let mut gw = gateway(Duration::from_secs(60)).await;
    gw.settings(pb::SettingsPatch {
        bucket_burst: Some(1),
        low_priority_timeout_seconds: Some(1),
        ..Default::default()
    })
    .await;
    gw.add_backend(&mock, BackendDef { rpm: 1, ..Default::default() }).await;
    gw.proxy.chat("gpt-test").await;
    let started = Instant::now();
    let resp = gw.proxy.post("/chat/completions", &tagged("late"), &[("x-priority", "low")]).await;
    assert_eq!(resp.status(), 429);
    assert!(started.elapsed() >= Duration::from_millis(900));
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((50..=61).contains(&retry), "Retry-After until the next token: {retry}");
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["type"], "rate_limit_exceeded");
    assert_eq!(gw.proxy.shared.queue.len(), 0, "a timed-out waiter leaves the queue");
}
