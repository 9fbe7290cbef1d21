//! Fleet utilisation end to end: eight in-process proxies and a control plane share one
//! key against a mock provider that enforces a strict sliding window. In its own test
//! binary, so it runs alone: at full use requests are admitted the moment capacity leaves
//! the window, and the proxies' safety margin (1% of the window) must cover this
//! machine's scheduling delays, which other tests running beside it would stretch.

use std::time::{Duration, Instant};

use sidecar_proto::v1 as pb;
use sidecar_tests::{Gateway, MockUpstream, Options, ProxyOptions, gateway::BackendDef, offer};

/// A chat request for the test model.
fn chat() -> serde_json::Value {
    serde_json::json!({"model": "gpt-test", "messages": []})
}

/// The end-to-end scenario, time compressed 2.5× (a "minute" is 24 s): eight proxies
/// share a key of 120 requests per minute that the mock enforces as a strict sliding
/// window, under three times the limit skewed 40/20/10/10/5/5/5/5, for 75 "seconds".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_proxies_use_the_whole_limit_under_skewed_demand_without_a_429() {
    const MINUTE: Duration = Duration::from_secs(24);
    const LIMIT: u32 = 120;
    let compress = |d: Duration| d * 2 / 5;
    let per_sec = f64::from(LIMIT) / MINUTE.as_secs_f64();
    let mock = MockUpstream::start(&[]).await;
    mock.set_rpm_limit(LIMIT, MINUTE);
    let cp_env = vec![
        ("SIDECAR_RATE_WINDOW_MS".to_string(), MINUTE.as_millis().to_string()),
        ("SIDECAR_GRANT_LEASE_MS".to_string(), compress(Duration::from_secs(5)).as_millis().to_string()),
        ("SIDECAR_GRANT_INTERVAL_MS".to_string(), compress(Duration::from_secs(1)).as_millis().to_string()),
        ("SIDECAR_GRANT_PROPAGATION_MS".to_string(), compress(Duration::from_secs(1)).as_millis().to_string()),
    ];
    let proxy_options = |id: &str| ProxyOptions { node_id: id.into(), rate_window: MINUTE, ..Default::default() };
    let mut gw = Gateway::start_fleet(Options { env: cp_env, ..Options::default() }, proxy_options("p0")).await;
    gw.settings(pb::SettingsPatch { low_priority_timeout_seconds: Some(2), ..Default::default() }).await;
    let mut proxies = vec![gw.proxy.clone_handle()];
    let mut others = vec![];
    for i in 1..8 {
        let p = gw.add_proxy(proxy_options(&format!("p{i}"))).await;
        proxies.push(p.clone_handle());
        others.push(p);
    }
    gw.add_backend(&mock, BackendDef { rpm: i64::from(LIMIT), ..Default::default() }).await;
    for p in &others {
        p.wait_version(gw.proxy.version()).await;
    }

    let start = Instant::now();
    let end = start + compress(Duration::from_secs(75));
    let skew = [40.0, 20.0, 10.0, 10.0, 5.0, 5.0, 5.0, 5.0];
    let mut load = tokio::task::JoinSet::new();
    for (p, w) in proxies.into_iter().zip(skew) {
        load.spawn(offer(p, chat(), "low", 3.0 * per_sec * w / 100.0, end));
    }
    while load.join_next().await.is_some() {}

    // The best window of a minute, start-up included.
    let mut served: Vec<Instant> =
        mock.calls_to("/v1/chat/completions").iter().filter(|c| c.status == 200).map(|c| c.at).collect();
    served.sort();
    let best = (0..served.len()).map(|i| served[i..].iter().take_while(|t| **t < served[i] + MINUTE).count()).max();
    let best = best.unwrap_or(0) as f64 / f64::from(LIMIT);
    eprintln!("best window: {:.1}% of the limit; provider 429s: {}", 100.0 * best, mock.violations());
    assert_eq!(mock.violations(), 0, "the provider refused requests");
    assert!(best >= 0.95, "the fleet used only {:.1}% of the limit in its best window", 100.0 * best);
}
