//! Limits learned from the provider: when its rate-limit headers count the key's request
//! budget down to nothing, the fleet stops before the 429, pauses the backend until the
//! reported reset without escalating, and resumes after it.

use std::time::{Duration, Instant};

use serde_json::json;
use sidecar_proto::v1 as pb;
use sidecar_tests::{
    Gateway, LimitHeaders, MockUpstream, Options, ProxyHarness, ProxyOptions, gateway::BackendDef, offer,
};

/// A chat request for the test model.
fn chat() -> serde_json::Value {
    json!({"model": "gpt-test", "messages": []})
}

/// The backend's local 429 count and whether the provider's budget pauses it now.
fn state(proxy: &ProxyHarness) -> (u32, bool) {
    let bundle = proxy.shared.bundle.load();
    let b = &bundle.backends[0];
    let c = b.state.cooldown.lock().unwrap();
    (c.consecutive, c.is_exhausted(tokio::time::Instant::now()))
}

/// Runs the scenario; the provider's 429 count.
async fn the_fleet_stops_before_the_429(style: LimitHeaders, learn_limits: Option<bool>) -> usize {
    // The provider allows 10 requests per 5 s and says so in its headers; the backend is
    // configured far above that (600 per 5 s), so only the headers can keep the fleet
    // under the provider's limit.
    const WINDOW: Duration = Duration::from_secs(5);
    let mock = MockUpstream::start(&[]).await;
    mock.set_rpm_limit(10, WINDOW);
    mock.send_limit_headers(style);
    // The provider's minute is compressed to its 5 s window, so the limit its headers
    // report (10) is per the same "minute" as the backend's configured 600.
    let options = |id: &str| ProxyOptions { node_id: id.into(), rate_window: WINDOW, ..Default::default() };
    let cp_env = vec![("SIDECAR_RATE_WINDOW_MS".to_string(), WINDOW.as_millis().to_string())];
    let mut gw = Gateway::start_fleet(Options { env: cp_env, ..Options::default() }, options("p1")).await;
    let second = gw.add_proxy(options("p2")).await;
    gw.add_backend(&mock, BackendDef { rpm: 600, learn_limits, ..Default::default() }).await;
    second.wait_version(gw.proxy.version()).await;

    // Two proxies, 2 requests per second each, for 12 s: 48 offered against 10 per 5 s.
    let start = Instant::now();
    let end = start + Duration::from_secs(12);
    let (a, b) = tokio::join!(
        offer(gw.proxy.clone_handle(), chat(), "normal", 2.0, end),
        offer(second.clone_handle(), chat(), "normal", 2.0, end)
    );
    let answered: Vec<u16> = a.into_iter().chain(b).collect();
    // Requests still queued at `end` are answered after it.
    let elapsed = start.elapsed();

    eprintln!(
        "{style:?}, learn_limits {learn_limits:?}: {} served of {} offered, {} provider 429s",
        mock.served(),
        answered.len(),
        mock.violations()
    );
    if learn_limits == Some(false) {
        return mock.violations();
    }
    assert_eq!(mock.violations(), 0, "the provider answered 429 ({style:?})");
    for proxy in [&gw.proxy, &second] {
        assert_eq!(state(proxy).0, 0, "a pause is not a 429: nothing escalated");
    }
    // The budget refilled and traffic resumed: more than one window's worth was served,
    // but never more than the provider allows per window.
    let served = mock.served();
    let windows = elapsed.as_secs_f64() / WINDOW.as_secs_f64();
    assert!(served > 10, "traffic resumed after the reset: {served} served");
    assert!(served as f64 <= 10.0 * windows.ceil(), "{served} served in {windows:.1} windows");
    mock.violations()
}

#[tokio::test]
async fn openai_headers_stop_the_fleet_before_the_429_and_it_resumes_after_the_reset() {
    the_fleet_stops_before_the_429(LimitHeaders::OpenAi, None).await;
}

#[tokio::test]
async fn anthropic_headers_stop_the_fleet_before_the_429_too() {
    the_fleet_stops_before_the_429(LimitHeaders::Anthropic, None).await;
}

#[tokio::test]
async fn with_learning_off_the_same_fleet_runs_into_the_providers_429s() {
    // The same scenario with `--learn-limits false`: what the learning saves.
    let refused = the_fleet_stops_before_the_429(LimitHeaders::OpenAi, Some(false)).await;
    assert!(refused > 0, "without the headers the fleet cannot know the provider's limit");
}

#[tokio::test]
async fn a_lower_limit_the_provider_reports_is_used_fleet_wide_audited_and_cleared_by_a_write() {
    // The provider's minute compressed to 5 s: it allows 10 per "minute" and says so; the
    // backend is configured at 600.
    const MINUTE: Duration = Duration::from_secs(5);
    let mock = MockUpstream::start(&[]).await;
    mock.set_rpm_limit(10, MINUTE);
    mock.send_limit_headers(LimitHeaders::OpenAi);
    let cp_env = vec![("SIDECAR_RATE_WINDOW_MS".to_string(), MINUTE.as_millis().to_string())];
    let options = ProxyOptions { node_id: "p1".into(), rate_window: MINUTE, ..Default::default() };
    let mut gw = Gateway::start_fleet(Options { env: cp_env, ..Options::default() }, options).await;
    let b = gw.add_backend(&mock, BackendDef { rpm: 600, ..Default::default() }).await;
    assert_eq!(b.learned_rpm_limit, 0);

    assert_eq!(gw.proxy.chat("gpt-test").await.status(), 200);
    let mut admin = gw.admin.clone();
    let id = b.id.clone();
    sidecar_tests::eventually("the learned limit", Duration::from_secs(5), || {
        let (mut admin, id) = (admin.clone(), id.clone());
        async move {
            let b = admin.get_backend(pb::GetBackendRequest { id }).await.ok()?.into_inner();
            (b.learned_rpm_limit == 10).then_some(())
        }
    })
    .await;
    // Published: the proxy holds the backend to 10 (configured 600 stays as it is).
    let proxy = &gw.proxy;
    sidecar_tests::eventually("the proxy runs the learned limit", Duration::from_secs(5), || async {
        (proxy.shared.bundle.load().backends[0].config.rpm_limit == 10).then_some(())
    })
    .await;
    let b = admin.get_backend(pb::GetBackendRequest { id: b.id.clone() }).await.unwrap().into_inner();
    assert_eq!(b.rpm_limit, 600, "a learned limit never changes the configured one");
    let audit = admin.list_audit(pb::ListAuditRequest::default()).await.unwrap().into_inner().entries;
    let entry = audit.iter().find(|e| e.action == "LimitLearned").expect("audited");
    assert!(entry.target.contains("10 RPM") && entry.target.contains("600"), "{}", entry.target);

    // A write to the backend is the operator's word: the learned limit is dropped.
    let patch = pb::BackendPatch { weight: Some(2), ..Default::default() };
    admin
        .update_backend(pb::UpdateBackendRequest { id: b.id.clone(), patch: Some(patch), ..Default::default() })
        .await
        .unwrap();
    let b = admin.get_backend(pb::GetBackendRequest { id: b.id }).await.unwrap().into_inner();
    assert_eq!(b.learned_rpm_limit, 0);
}

#[tokio::test]
async fn answers_for_a_model_with_its_own_limits_are_not_taken_as_the_keys_budget() {
    // A provider that limits per model reports the model's budget on its answers: a model
    // with its own limits configured says nothing about the backend's limit.
    let mock = MockUpstream::start(&[]).await;
    mock.set_rpm_limit(10, Duration::from_secs(60));
    mock.send_limit_headers(LimitHeaders::OpenAi);
    let mut gw = Gateway::start().await;
    gw.add_backend(
        &mock,
        BackendDef {
            rpm: 600,
            models: &[("gpt-test", "native-gpt"), ("other", "native-other")],
            model_limits: &[("gpt-test", 100)],
            ..Default::default()
        },
    )
    .await;
    // What the proxy learned is noted before the answer goes back to the client.
    let learned = || {
        let bundle = gw.proxy.shared.bundle.load();
        bundle.backends[0].state.learned_rpm.load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(gw.proxy.chat("gpt-test").await.status(), 200);
    assert_eq!(learned(), 0, "an answer for a model with its own limits is not the key's budget");
    // The same headers on an answer for a model without its own limits are learned, and
    // the fleet then runs the learned limit (the new config clears the proxy's note, so
    // look for either).
    assert_eq!(gw.proxy.chat("other").await.status(), 200);
    let proxy = &gw.proxy;
    sidecar_tests::eventually(
        "the key's budget is learned from the other model's answer",
        Duration::from_secs(5),
        || async {
            let bundle = proxy.shared.bundle.load();
            let b = &bundle.backends[0];
            (b.state.learned_rpm.load(std::sync::atomic::Ordering::Relaxed) == 10 || b.config.rpm_limit == 10)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_model_with_its_own_limits_pauses_alone_on_every_proxy_when_its_budget_is_spent() {
    // The provider limits "small" to 5 requests per 3 s on its own and says so in its
    // headers (as OpenAI reports per model); "big" has only the key's generous limit.
    const WINDOW: Duration = Duration::from_secs(3);
    let mock = MockUpstream::start(&[]).await;
    mock.set_rpm_limit(1000, Duration::from_secs(60));
    mock.set_model_limit("native-small", 5, WINDOW);
    mock.send_limit_headers(LimitHeaders::OpenAi);
    let mut gw = Gateway::start_with(ProxyOptions { node_id: "p1".into(), ..Default::default() }).await;
    gw.settings(pb::SettingsPatch { emergency_fraction: Some(0.0), ..Default::default() }).await;
    let backend = gw
        .add_backend(
            &mock,
            BackendDef {
                rpm: 600,
                models: &[("big", "native-big"), ("small", "native-small")],
                model_limits: &[("small", 300)],
                ..Default::default()
            },
        )
        .await;
    let second = gw.add_proxy(ProxyOptions { node_id: "p2".into(), ..Default::default() }).await;
    second.wait_version(gw.proxy.version()).await;

    for _ in 0..5 {
        assert_eq!(gw.proxy.chat("small").await.status(), 200);
    }
    // The fifth answer said nothing is left: the sixth waits for the reset instead of
    // running into the provider's 429, and the other model flows meanwhile.
    let paused = gw.proxy.backend_status(&backend.id).await;
    assert_eq!(paused["models"]["small"]["cooldown"]["paused"], true, "{paused}");
    assert_eq!(paused["status"], "healthy", "the backend itself is not paused: {paused}");
    let sixth = {
        let p = gw.proxy.clone_handle();
        tokio::spawn(async move { p.try_post(&json!({"model": "small", "messages": []}), "normal").await })
    };
    assert_eq!(gw.proxy.chat("big").await.status(), 200);
    sidecar_tests::eventually("the other proxy pauses the model too", Duration::from_secs(5), || async {
        let s = second.backend_status(&backend.id).await;
        (s["models"]["small"]["cooldown"]["paused"] == true).then_some(())
    })
    .await;
    assert_eq!(second.chat("big").await.status(), 200);
    assert_eq!(sixth.await.unwrap(), 200, "served once the provider's budget is back");
    assert_eq!(mock.model_violations("native-small"), 0, "the provider never had to refuse the model");
    let after = gw.proxy.backend_status(&backend.id).await;
    assert_eq!(after["models"]["small"]["cooldown"]["consecutive_429"], 0, "a pause is not a 429: {after}");
}
