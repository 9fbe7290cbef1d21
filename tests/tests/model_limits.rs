//! Per-model limits on one backend: a provider that limits each model separately on one
//! key (as OpenAI does per model and organisation) never sees a request over a model's
//! limit from the fleet, and a busy model does not starve another.

use std::time::{Duration, Instant};

use serde_json::json;
use sidecar_proto::v1 as pb;
use sidecar_tests::{
    Gateway, MockUpstream, Options, ProxyHarness, ProxyOptions, Reply, eventually, gateway::BackendDef, offer,
};

/// Requests for `native` the mock served in `[from, to)`, per second.
fn served_rate(mock: &MockUpstream, native: &str, from: Instant, to: Instant) -> f64 {
    let n = mock
        .calls_to("/v1/chat/completions")
        .iter()
        .filter(|c| c.status == 200 && c.at >= from && c.at < to && c.json()["model"] == native)
        .count();
    n as f64 / to.duration_since(from).as_secs_f64()
}

/// The provider's minute compressed to 2 s.
const WINDOW: Duration = Duration::from_secs(2);

fn per_sec(n: u32) -> f64 {
    f64::from(n) / WINDOW.as_secs_f64()
}

/// A fleet of two proxies and a key of 100 per window serving model A (`native-a`) and
/// model B (`native-b`), each limited on its own by the provider (the mock) and in the
/// config to `a_limit` and `b_limit` per window.
async fn two_proxies_and_two_limited_models(a_limit: u32, b_limit: u32) -> (MockUpstream, Gateway, ProxyHarness) {
    let mock = MockUpstream::start(&[]).await;
    mock.set_rpm_limit(100, WINDOW);
    mock.set_model_limit("native-a", a_limit, WINDOW);
    mock.set_model_limit("native-b", b_limit, WINDOW);
    let cp_env = vec![
        ("SIDECAR_RATE_WINDOW_MS".to_string(), WINDOW.as_millis().to_string()),
        ("SIDECAR_GRANT_LEASE_MS".to_string(), "1500".to_string()),
        ("SIDECAR_GRANT_INTERVAL_MS".to_string(), "250".to_string()),
    ];
    let proxy_options = |id: &str| ProxyOptions { node_id: id.into(), rate_window: WINDOW, ..Default::default() };
    let mut gw = Gateway::start_fleet(Options { env: cp_env, ..Options::default() }, proxy_options("p1")).await;
    gw.settings(pb::SettingsPatch { low_priority_timeout_seconds: Some(1), ..Default::default() }).await;
    let second = gw.add_proxy(proxy_options("p2")).await;
    gw.add_backend(
        &mock,
        BackendDef {
            rpm: 100,
            models: &[("model-a", "native-a"), ("model-b", "native-b")],
            model_limits: &[("model-a", a_limit), ("model-b", b_limit)],
            ..Default::default()
        },
    )
    .await;
    second.wait_version(gw.proxy.version()).await;
    (mock, gw, second)
}

#[tokio::test]
async fn two_proxies_keep_each_model_under_its_own_limit_and_a_small_model_does_not_starve_a_big_one() {
    // Model A 60, model B 6 per window, the key 100; the fleet's demand is three times
    // both models' limits.
    let (a_limit, b_limit) = (60u32, 6u32);
    let (mock, gw, second) = two_proxies_and_two_limited_models(a_limit, b_limit).await;

    let start = Instant::now();
    let end = start + Duration::from_secs(10);
    let mut load = tokio::task::JoinSet::new();
    for p in [gw.proxy.clone_handle(), second.clone_handle()] {
        load.spawn(offer(p.clone(), json!({"model": "model-a", "messages": []}), "low", 1.5 * per_sec(a_limit), end));
        load.spawn(offer(p, json!({"model": "model-b", "messages": []}), "low", 1.5 * per_sec(b_limit), end));
    }
    while load.join_next().await.is_some() {}

    let measured = served_rate(&mock, "native-a", start + Duration::from_secs(3), end);
    eprintln!("model A: {measured:.1}/s of {}/s", per_sec(a_limit));
    assert_eq!(mock.model_violations("native-a"), 0, "model A went over its own limit");
    assert_eq!(mock.model_violations("native-b"), 0, "model B went over its own limit");
    assert_eq!(mock.violations(), 0, "the key went over its limit");
    assert!(measured >= 0.9 * per_sec(a_limit), "model A used only {measured:.1}/s of {}/s", per_sec(a_limit));
    let b = served_rate(&mock, "native-b", start + Duration::from_secs(3), end);
    assert!(b > 0.0, "model B was served too");

    // /status shows each model's bucket: its share of the model's limit, within it.
    let status: serde_json::Value =
        reqwest::get(format!("http://{}/status", gw.proxy.ops_addr)).await.unwrap().json().await.unwrap();
    let models = &status["buckets"][0]["models"];
    for (model, limit) in [("model-a", a_limit), ("model-b", b_limit)] {
        let share = models[model]["limit_per_window"].as_u64().unwrap_or_else(|| panic!("{model} in {status}"));
        assert!(share <= u64::from(limit), "{model}: {share} of {limit}");
    }
}

#[tokio::test]
async fn a_models_limit_goes_to_the_proxy_that_wants_the_model_not_the_one_that_wants_the_backend() {
    // One proxy wants only the small model, the other only the big one: the small
    // model's limit goes to the first, even though the second wants three times more of
    // the backend. (Shared in proportion to the backend's split, the first would get a
    // quarter of it.)
    let (a_limit, b_limit) = (60u32, 20u32);
    let (mock, gw, second) = two_proxies_and_two_limited_models(a_limit, b_limit).await;

    let start = Instant::now();
    let end = start + Duration::from_secs(10);
    let small = json!({"model": "model-b", "messages": []});
    let big = json!({"model": "model-a", "messages": []});
    let mut load = tokio::task::JoinSet::new();
    load.spawn(offer(gw.proxy.clone_handle(), small, "low", 3.0 * per_sec(b_limit), end));
    load.spawn(offer(second.clone_handle(), big, "low", 3.0 * per_sec(a_limit), end));
    while load.join_next().await.is_some() {}

    assert_eq!(mock.model_violations("native-a"), 0, "model A went over its own limit");
    assert_eq!(mock.model_violations("native-b"), 0, "model B went over its own limit");
    assert_eq!(mock.violations(), 0, "the key went over its limit");
    let measured = served_rate(&mock, "native-b", start + Duration::from_secs(4), end);
    eprintln!("model B: {measured:.1}/s of {}/s", per_sec(b_limit));
    assert!(measured >= 0.85 * per_sec(b_limit), "model B used only {measured:.1}/s of {}/s", per_sec(b_limit));
}

/// A 429 whose error names `native` as OpenAI's does ("Rate limit reached for gpt-4o in
/// organization …"), or names no model.
fn rate_limited(native: Option<&str>) -> Reply {
    let message = match native {
        Some(m) => format!("Rate limit reached for {m} in organization org-test on requests per min (RPM): Limit 6."),
        None => "Rate limit reached for requests.".to_string(),
    };
    let body = json!({"error": {"message": message, "type": "requests", "code": "rate_limit_exceeded"}});
    Reply::Status { status: 429, retry_after: Some("20".into()), body: Some(body.to_string()) }
}

/// Gateway with two proxies and one backend serving "big" (no limits of its own) and
/// "small" (its own 60 RPM), no emergency probes.
async fn two_proxies_one_backend(mock: &MockUpstream) -> (Gateway, ProxyHarness, pb::Backend) {
    let mut gw = Gateway::start_with(ProxyOptions { node_id: "p1".into(), ..Default::default() }).await;
    gw.settings(pb::SettingsPatch {
        emergency_fraction: Some(0.0),
        near_recovery_wait_seconds: Some(0),
        ..Default::default()
    })
    .await;
    let backend = gw
        .add_backend(
            mock,
            BackendDef {
                rpm: 600,
                models: &[("big", "native-big"), ("small", "native-small")],
                model_limits: &[("small", 60)],
                ..Default::default()
            },
        )
        .await;
    let second = gw.add_proxy(ProxyOptions { node_id: "p2".into(), ..Default::default() }).await;
    second.wait_version(gw.proxy.version()).await;
    (gw, second, backend)
}

#[tokio::test]
async fn a_429_that_names_a_model_with_its_own_limits_cools_only_that_model_on_every_proxy() {
    let mock = MockUpstream::start(&[]).await;
    let (gw, second, backend) = two_proxies_one_backend(&mock).await;
    mock.push(rate_limited(Some("native-small")));
    let first = gw.proxy.chat("small").await;
    assert_ne!(first.status(), 200, "the only backend for the model cools");

    // The other model keeps flowing on both proxies; the small one waits on both.
    assert_eq!(gw.proxy.chat("big").await.status(), 200);
    let status = gw.proxy.backend_status(&backend.id).await;
    assert_eq!(status["status"], "healthy", "the backend itself does not cool: {status}");
    assert_eq!(status["models"]["small"]["cooldown"]["consecutive_429"], 1, "{status}");
    eventually("the model cools on the other proxy too", Duration::from_secs(5), || async {
        let s = second.backend_status(&backend.id).await;
        s["models"]["small"]["cooldown"]["remaining_seconds"].is_number().then_some(())
    })
    .await;
    let calls = mock.calls_to("/v1/chat/completions").len();
    assert_ne!(second.chat("small").await.status(), 200);
    assert_eq!(mock.calls_to("/v1/chat/completions").len(), calls, "no request for the cooling model went out");
    assert_eq!(second.chat("big").await.status(), 200);

    // The control plane recorded the model's own cooldown.
    let mut admin = gw.admin.clone();
    let events = admin.list_cooldowns(pb::ListCooldownsRequest::default()).await.unwrap().into_inner().events;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].model, "small");
}

#[tokio::test]
async fn a_429_that_names_no_model_cools_the_whole_backend() {
    let mock = MockUpstream::start(&[]).await;
    let (gw, _second, backend) = two_proxies_one_backend(&mock).await;
    mock.push(rate_limited(None));
    assert_ne!(gw.proxy.chat("small").await.status(), 200);
    let status = gw.proxy.backend_status(&backend.id).await;
    assert_eq!(status["status"], "cooling", "{status}");
    assert_ne!(gw.proxy.chat("big").await.status(), 200, "the key's limit stops every model");
}
