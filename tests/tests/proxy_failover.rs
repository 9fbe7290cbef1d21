//! 429 cooldown and escalation, Retry-After, failures moving on, fallback, the
//! near-recovery wait, the emergency reserve, and 503 when everything is cooling.

use std::time::{Duration, Instant};

use serde_json::Value;
use sidecar_proto::v1 as pb;
use sidecar_tests::{Gateway, MockUpstream, Reply, eventually, gateway::BackendDef};

fn fast_cooldowns(base: i64, max: i64, near: i64) -> pb::SettingsPatch {
    pb::SettingsPatch {
        cooldown_base_seconds: Some(base),
        cooldown_max_seconds: Some(max),
        near_recovery_wait_seconds: Some(near),
        ..Default::default()
    }
}

async fn consecutive(gw: &Gateway, id: &str) -> u64 {
    gw.proxy.backend_status(id).await["cooldown"]["consecutive_429"].as_u64().unwrap()
}

async fn remaining(gw: &Gateway, id: &str) -> f64 {
    gw.proxy.backend_status(id).await["cooldown"]["remaining_seconds"].as_f64().unwrap_or(0.0)
}

#[tokio::test]
async fn a_429_cools_the_backend_moves_on_escalates_and_resets_after_a_success() {
    let primary = MockUpstream::start(&[]).await;
    let spare = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start().await;
    gw.settings(fast_cooldowns(1, 8, 0)).await;
    let a = gw.add_backend(&primary, BackendDef { name: "a", ..Default::default() }).await;
    gw.add_backend(&spare, BackendDef { name: "spare", pool: "fallback", ..Default::default() }).await;

    primary.push(Reply::status(429));
    let resp = gw.proxy.chat("gpt-test").await;
    assert_eq!(resp.status(), 200, "retried on the next candidate");
    assert_eq!(resp.headers()["x-sidecar-backend"], "spare");
    assert_eq!(resp.headers()["x-sidecar-attempts"], "2");
    assert_eq!(resp.headers()["x-sidecar-degraded"], "fallback");
    assert_eq!(consecutive(&gw, &a.id).await, 1);
    let first = remaining(&gw, &a.id).await;
    assert!(first > 0.0 && first <= 1.0, "base cooldown 1 s, got {first}");

    // While cooling, traffic skips it.
    let resp = gw.proxy.chat("gpt-test").await;
    assert_eq!(resp.headers()["x-sidecar-backend"], "spare");
    assert_eq!(primary.calls_to("/v1/chat/completions").len(), 1);

    // After the cooldown expires the count stays, so the next 429 escalates: 2 s.
    eventually("cooldown over", Duration::from_secs(5), || async {
        (remaining(&gw, &a.id).await == 0.0).then_some(())
    })
    .await;
    assert_eq!(consecutive(&gw, &a.id).await, 1, "expiry does not reset the count");
    primary.push(Reply::status(429));
    let resp = gw.proxy.chat("gpt-test").await;
    assert_eq!(resp.headers()["x-sidecar-backend"], "spare");
    assert_eq!(consecutive(&gw, &a.id).await, 2);
    let second = remaining(&gw, &a.id).await;
    assert!(second > 1.0 && second <= 2.0, "escalated to 2 s, got {second}");

    // A success resets the count.
    eventually("cooldown over", Duration::from_secs(5), || async {
        (remaining(&gw, &a.id).await == 0.0).then_some(())
    })
    .await;
    let resp = gw.proxy.chat("gpt-test").await;
    assert_eq!(resp.headers()["x-sidecar-backend"], "a");
    assert_eq!(consecutive(&gw, &a.id).await, 0);
}

#[tokio::test]
async fn retry_after_sets_a_floor_under_the_cooldown() {
    let primary = MockUpstream::start(&[]).await;
    let spare = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start().await;
    gw.settings(fast_cooldowns(1, 600, 0)).await;
    let a = gw.add_backend(&primary, BackendDef { name: "a", ..Default::default() }).await;
    gw.add_backend(&spare, BackendDef { name: "spare", pool: "fallback", ..Default::default() }).await;
    primary.push(Reply::too_many_requests(7));
    gw.proxy.chat("gpt-test").await;
    let r = remaining(&gw, &a.id).await;
    assert!(r > 6.0 && r <= 7.0, "Retry-After 7 beats the 1 s backoff: {r}");

    // An HTTP-date Retry-After works too.
    let b_mock = MockUpstream::start(&[]).await;
    let b = gw.add_backend(&b_mock, BackendDef { name: "b", models: &[("other", "o")], ..Default::default() }).await;
    gw.add_backend(
        &spare,
        BackendDef { name: "spare2", pool: "fallback", models: &[("other", "o")], ..Default::default() },
    )
    .await;
    let date = httpdate_in(Duration::from_secs(20));
    b_mock.push(Reply::Status { status: 429, retry_after: Some(date), body: None });
    let resp = gw.proxy.chat("other").await;
    assert_eq!(resp.headers()["x-sidecar-backend"], "spare2");
    let r = remaining(&gw, &b.id).await;
    assert!(r > 17.0 && r <= 20.0, "HTTP-date Retry-After: {r}");
}

fn httpdate_in(d: Duration) -> String {
    // RFC 7231 IMF-fixdate, computed without extra crates.
    let t = std::time::SystemTime::now() + d;
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days.rem_euclid(7)) as usize];
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mon =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"][(month - 1) as usize];
    format!("{weekday}, {day:02} {mon} {year} {h:02}:{m:02}:{s:02} GMT")
}

#[tokio::test]
async fn server_errors_and_timeouts_move_to_the_next_candidate_and_count_against_health() {
    let flaky = MockUpstream::start(&[]).await;
    let spare = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start().await;
    gw.settings(pb::SettingsPatch {
        failure_threshold: Some(2),
        error_cooldown_seconds: Some(30),
        ..Default::default()
    })
    .await;
    let f = gw.add_backend(&flaky, BackendDef { name: "flaky", ..Default::default() }).await;
    gw.add_backend(&spare, BackendDef { name: "spare", pool: "fallback", ..Default::default() }).await;

    flaky.push(Reply::status(502));
    let resp = gw.proxy.chat("gpt-test").await;
    assert_eq!((resp.status().as_u16(), resp.headers()["x-sidecar-backend"].to_str().unwrap()), (200, "spare"));
    assert_eq!(flaky.calls_to("/v1/chat/completions").len(), 1, "a 5xx is not retried on the same backend");

    // The backend timeout is 5 s (set by the harness); the mock hangs.
    flaky.push(Reply::Hang);
    let started = Instant::now();
    let resp = gw.proxy.chat("gpt-test").await;
    assert_eq!(resp.headers()["x-sidecar-backend"], "spare");
    assert!(started.elapsed() >= Duration::from_secs(4));
    let status = gw.proxy.backend_status(&f.id).await;
    assert_eq!(status["status"], "error", "two consecutive failures: error");
    let before = flaky.calls().len();
    gw.proxy.chat("gpt-test").await;
    assert_eq!(flaky.calls().len(), before, "an erroring backend gets no traffic");

    // A dropped connection also moves on.
    let other = MockUpstream::start(&[]).await;
    let spare2 = MockUpstream::start(&[]).await;
    gw.add_backend(&other, BackendDef { name: "drop", models: &[("m2", "m2")], ..Default::default() }).await;
    gw.add_backend(
        &spare2,
        BackendDef { name: "spare2", pool: "fallback", models: &[("m2", "m2")], ..Default::default() },
    )
    .await;
    other.push(Reply::Drop);
    let resp = gw.proxy.chat("m2").await;
    assert_eq!(resp.headers()["x-sidecar-backend"], "spare2");
}

#[tokio::test]
async fn a_client_error_is_passed_through_without_retry() {
    let mock = MockUpstream::start(&[]).await;
    let spare = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start().await;
    gw.add_backend(&mock, BackendDef { name: "a", ..Default::default() }).await;
    gw.add_backend(&spare, BackendDef { name: "spare", pool: "fallback", ..Default::default() }).await;
    mock.push(Reply::Status {
        status: 400,
        retry_after: None,
        body: Some("{\"error\":{\"message\":\"bad messages\",\"type\":\"invalid_request_error\"}}".into()),
    });
    let resp = gw.proxy.chat("gpt-test").await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-sidecar-backend"], "a");
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["message"], "bad messages");
    assert!(spare.calls().is_empty());
}

#[tokio::test]
async fn when_every_candidate_cools_briefly_the_request_waits_for_recovery() {
    let only = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start().await;
    gw.settings(fast_cooldowns(1, 4, 10)).await;
    gw.add_backend(&only, BackendDef { name: "only", ..Default::default() }).await;
    only.push(Reply::status(429));
    // The first request's 429 cools the only backend for 1 s; the retry waits for it.
    let started = Instant::now();
    let resp = gw.proxy.chat("gpt-test").await;
    assert_eq!(resp.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(800), "waited for recovery: {:?}", started.elapsed());
    assert_eq!(resp.headers()["x-sidecar-backend"], "only");
    assert!(resp.headers().get("x-sidecar-degraded").is_none(), "not the emergency channel");
}

#[tokio::test]
async fn the_emergency_reserve_probes_a_cooling_backend_and_a_success_ends_its_cooldown() {
    let only = MockUpstream::start(&[]).await;
    let bystander = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start().await;
    gw.settings(fast_cooldowns(30, 600, 0)).await;
    let b = gw.add_backend(&only, BackendDef { name: "only", rpm: 60, ..Default::default() }).await;
    // A cooling backend that does not serve the model is never used for it.
    let other = gw
        .add_backend(&bystander, BackendDef { name: "bystander", models: &[("elsewhere", "x")], ..Default::default() })
        .await;
    bystander.push(Reply::status(429));
    bystander.push(Reply::status(429));
    // 429, then its own emergency probe 429s too: it stays cooling.
    assert_eq!(gw.proxy.chat("elsewhere").await.status(), 503);
    let bystander_calls = bystander.calls().len();

    only.push(Reply::status(429));
    let first = gw.proxy.chat("gpt-test").await;
    // The 429 cooled it for 30 s; the retry found every candidate cooling beyond the
    // near-recovery wait and went through the emergency reserve.
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-sidecar-degraded"], "emergency");
    assert_eq!(first.headers()["x-sidecar-backend"], "only");
    let status = gw.proxy.backend_status(&b.id).await;
    assert_eq!(status["status"], "healthy", "an emergency success ends the cooldown");
    assert_eq!(status["cooldown"]["consecutive_429"], 0);
    assert_eq!(status["bucket"]["in_window"], 1, "the main bucket was not touched by the emergency request");
    assert_eq!(bystander.calls().len(), bystander_calls, "emergency never goes to a backend without the model");
    assert_eq!(gw.proxy.backend_status(&other.id).await["status"], "cooling");
    let status = gw.proxy.status().await;
    assert_eq!(status["requests"]["emergency"], 2, "the bystander's probe and ours");
}

#[tokio::test]
async fn everything_cooling_and_the_reserve_spent_is_503_with_retry_after() {
    let only = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start().await;
    gw.settings(fast_cooldowns(30, 600, 0)).await;
    let b = gw.add_backend(&only, BackendDef { name: "only", rpm: 10, ..Default::default() }).await;
    only.push(Reply::status(429));
    only.push(Reply::status(429));
    // 429 → cooling 30 s → emergency (reserve: 1 per minute) → 429 again → 60 s.
    let resp = gw.proxy.chat("gpt-test").await;
    assert_eq!(resp.status(), 503);
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((55..=60).contains(&retry), "Retry-After until the earliest cooldown ends: {retry}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "all_pools_exhausted");
    assert_eq!(body["error"]["message"], "All provider pools exhausted");
    assert_eq!(gw.proxy.backend_status(&b.id).await["cooldown"]["consecutive_429"], 2, "the emergency 429 escalated");
    // The reserve is spent: the next request does not reach the upstream.
    let calls = only.calls().len();
    assert_eq!(gw.proxy.chat("gpt-test").await.status(), 503);
    assert_eq!(only.calls().len(), calls);
}

/// Two healthy primaries (60 and 30 RPM, burst 3) and a fallback; ten back-to-back
/// requests. Returns how many were served by the fallback.
async fn ten_requests_fallback_count(gw: &Gateway) -> usize {
    let mut fallback = 0;
    for _ in 0..10 {
        let resp = gw.proxy.chat("gpt-test").await;
        assert_eq!(resp.status(), 200);
        if resp.headers().get("x-sidecar-degraded").is_some_and(|v| v == "fallback") {
            fallback += 1;
        }
    }
    fallback
}

async fn set_spill(gw: &mut Gateway, pool: &str, spill: pb::PoolSpill) {
    let r = gw
        .admin
        .update_pool(pb::UpdatePoolRequest { name: pool.into(), spill: spill as i32, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.pool.unwrap().spill, spill as i32);
    gw.proxy.wait_version(r.config_version).await;
}

#[tokio::test]
async fn a_pool_that_spills_on_busy_overflows_into_the_fallback() {
    let (one, two, spare) =
        (MockUpstream::start(&[]).await, MockUpstream::start(&[]).await, MockUpstream::start(&[]).await);
    let mut gw = Gateway::start().await;
    gw.add_backend(&one, BackendDef { name: "one", rpm: 60, ..Default::default() }).await;
    gw.add_backend(&two, BackendDef { name: "two", rpm: 30, ..Default::default() }).await;
    gw.add_backend(&spare, BackendDef { name: "spare", pool: "fallback", ..Default::default() }).await;
    let pools = gw.admin.list_pools(pb::ListPoolsRequest {}).await.unwrap().into_inner().pools;
    assert!(pools.iter().all(|p| p.spill == pb::PoolSpill::OnBusy as i32), "on_busy is the default: {pools:?}");
    let fallback = ten_requests_fallback_count(&gw).await;
    assert!(fallback >= 2, "overflow went to the fallback: {fallback} of 10");
}

#[tokio::test]
async fn a_pool_that_spills_on_failure_keeps_traffic_until_its_backends_fail() {
    let (one, two, spare) =
        (MockUpstream::start(&[]).await, MockUpstream::start(&[]).await, MockUpstream::start(&[]).await);
    let mut gw = Gateway::start().await;
    gw.settings(fast_cooldowns(30, 60, 0)).await;
    let a = gw.add_backend(&one, BackendDef { name: "one", rpm: 60, ..Default::default() }).await;
    gw.add_backend(&two, BackendDef { name: "two", rpm: 30, ..Default::default() }).await;
    gw.add_backend(&spare, BackendDef { name: "spare", pool: "fallback", ..Default::default() }).await;
    set_spill(&mut gw, "primary", pb::PoolSpill::OnFailure).await;

    // Healthy but out of tokens: requests wait for the primaries.
    assert_eq!(ten_requests_fallback_count(&gw).await, 0);
    assert!(spare.calls().is_empty());

    // One primary cooling: the other still keeps the traffic.
    one.push(Reply::status(429));
    for _ in 0..20 {
        let resp = gw.proxy.chat("gpt-test").await;
        assert_eq!(resp.status(), 200);
        assert_ne!(resp.headers()["x-sidecar-backend"], "spare", "a live primary remains");
        if remaining(&gw, &a.id).await > 0.0 {
            break;
        }
    }
    assert!(remaining(&gw, &a.id).await > 0.0, "`one` took its 429 and is cooling");
    for _ in 0..2 {
        let resp = gw.proxy.chat("gpt-test").await;
        assert_eq!(resp.headers()["x-sidecar-backend"], "two", "waits for the other primary");
    }

    // Both primaries cooling: now the fallback takes the traffic.
    two.push(Reply::status(429));
    for _ in 0..3 {
        let resp = gw.proxy.chat("gpt-test").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-sidecar-backend"], "spare");
        assert_eq!(resp.headers()["x-sidecar-degraded"], "fallback");
    }

    // Back to on_busy with the CLI's API: nothing else changes.
    set_spill(&mut gw, "primary", pb::PoolSpill::OnBusy).await;
}
