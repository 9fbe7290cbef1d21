//! A client key's request limit across the fleet: three proxies share one key's
//! requests per minute by the control plane's grants.
//!
//! The mock provider counts the key's requests when they reach it, which is later than the
//! proxies admit them: by the first connections' set-up (about a second under a loaded
//! test machine, found when this test ran beside others) and by any stall of the test's
//! threads. Delays that differ by more than the limiter's guard (1% of the window, 120 ms
//! in this compressed minute) would show as an overshoot the proxies did not make. So the
//! proxies' upstream connections are opened before the measured run, the runtime has
//! threads of its own for the mock, and the test is alone in its binary.

use std::time::{Duration, Instant};

use sidecar_proto::v1 as pb;
use sidecar_tests::{
    Gateway, MockUpstream, Options, ProxyHarness, ProxyOptions, gateway::BackendDef, proxy::chat_body,
};

/// The most requests the provider answered with 200 in any `window`.
fn most_in_any_window(mock: &MockUpstream, window: Duration) -> usize {
    let mut at: Vec<Instant> =
        mock.calls_to("/v1/chat/completions").iter().filter(|c| c.status == 200).map(|c| c.at).collect();
    at.sort();
    let mut most = 0;
    let mut j = 0;
    for i in 0..at.len() {
        while j < at.len() && at[j] < at[i] + window {
            j += 1;
        }
        most = most.max(j - i);
    }
    most
}

/// A minute, 5× fast.
const MINUTE: Duration = Duration::from_secs(12);

/// The tests of this binary run one at a time (see the module's note).
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A control plane and three proxies that require keys, with time 5× fast, a backend far
/// above the key limits on `mock`, and every proxy's upstream connections open.
async fn fleet() -> (Gateway, [ProxyHarness; 2], MockUpstream) {
    let mock = MockUpstream::start(&[]).await;
    let cp_env = vec![
        ("SIDECAR_RATE_WINDOW_MS".to_string(), MINUTE.as_millis().to_string()),
        ("SIDECAR_GRANT_LEASE_MS".to_string(), "1500".to_string()),
        ("SIDECAR_GRANT_INTERVAL_MS".to_string(), "250".to_string()),
        ("SIDECAR_GRANT_PROPAGATION_MS".to_string(), "200".to_string()),
    ];
    let options = |id: &str| ProxyOptions {
        node_id: id.into(),
        rate_window: MINUTE,
        env: vec![("SIDECAR_ALLOW_ANONYMOUS".into(), "false".into())],
        ..ProxyOptions::default()
    };
    let mut gw = Gateway::start_fleet(Options { env: cp_env, ..Options::default() }, options("p1")).await;
    let others = [gw.add_proxy(options("p2")).await, gw.add_proxy(options("p3")).await];
    gw.add_backend(&mock, BackendDef { rpm: 6000, ..Default::default() }).await;
    // Open every proxy's upstream connections (each worker thread has its own pool) with
    // a key of no limit, then start counting.
    let warm = gw.admin.create_key(pb::CreateKeyRequest { name: "warm".into(), ..Default::default() }).await;
    let warm = warm.expect("a key").into_inner();
    for p in [&gw.proxy, &others[0], &others[1]] {
        p.wait_version(warm.config_version).await;
        for _ in 0..4 {
            let r = p.post("/chat/completions", &chat_body("gpt-test", false), &[("x-api-key", &warm.secret)]).await;
            assert_eq!(r.status().as_u16(), 200);
        }
    }
    (gw, others, mock)
}

/// Creates `request` and waits until every proxy has it; its secret.
async fn shared_key(gw: &mut Gateway, others: &[ProxyHarness; 2], request: pb::CreateKeyRequest) -> String {
    let created = gw.admin.create_key(request).await.expect("a key").into_inner();
    for p in [&gw.proxy, &others[0], &others[1]] {
        p.wait_version(created.config_version).await;
    }
    created.secret
}

/// A key's request limit holds across the fleet: three proxies share one key of 30 RPM
/// under three times that demand, skewed 70/15/15, for 70 s. Time runs 5× fast: a
/// minute is 12 s. The provider (a strict mock) would refuse anything over 30 in a
/// minute; the backend's own limit is far above, so only the key limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_proxies_hold_a_keys_request_limit_together() {
    const LIMIT: u32 = 30;
    let _alone = ALONE.lock().await;
    let (mut gw, others, mock) = fleet().await;
    mock.reset_all();
    mock.set_rpm_limit(LIMIT, MINUTE);
    let request = pb::CreateKeyRequest { name: "shared".into(), rpm_limit: LIMIT, ..Default::default() };
    let secret = shared_key(&mut gw, &others, request).await;

    let per_sec = f64::from(LIMIT) / MINUTE.as_secs_f64();
    let start = Instant::now();
    let end = start + MINUTE * 70 / 60;
    let mut load = tokio::task::JoinSet::new();
    for (p, share) in [(&gw.proxy, 0.70), (&others[0], 0.15), (&others[1], 0.15)] {
        let client = p.clone_handle().with_header("x-api-key", &secret);
        load.spawn(sidecar_tests::offer(client, chat_body("gpt-test", false), "normal", 3.0 * per_sec * share, end));
    }
    let mut statuses = Vec::new();
    while let Some(s) = load.join_next().await {
        statuses.extend(s.unwrap());
    }
    let most = most_in_any_window(&mock, MINUTE);
    let refused_for_the_key = statuses.iter().filter(|s| **s == 429).count();
    eprintln!(
        "key of {LIMIT}/min on three proxies: most in any minute {most} ({:.0}%), {} served, {refused_for_the_key} refused with 429, the provider refused {}",
        100.0 * most as f64 / f64::from(LIMIT),
        statuses.iter().filter(|s| **s == 200).count(),
        mock.violations()
    );
    assert_eq!(mock.violations(), 0, "more than {LIMIT} of the key's requests in some minute");
    assert!(most <= LIMIT as usize);
    assert!(most as f64 >= 0.9 * f64::from(LIMIT), "the fleet used only {most} of the key's {LIMIT}");
    assert!(refused_for_the_key > 0, "three times the limit was offered");
}

/// A key's token limit and its concurrency limit hold across the fleet, each in a run of
/// its own. Tokens: 450 a minute (30 answers of 15 tokens) under three times that demand,
/// skewed 70/15/15, for 70 s (time 5× fast). Concurrency: 6 at once, closed-loop clients
/// skewed 10/3/3 against a provider that takes 400 ms an answer, for 8 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_proxies_hold_a_keys_token_and_concurrency_limits_together() {
    const TPM: u32 = 450;
    const CONCURRENT: usize = 6;
    let _alone = ALONE.lock().await;
    let (mut gw, others, mock) = fleet().await;
    mock.reset_all();
    let request = pb::CreateKeyRequest { name: "tokens".into(), tpm_limit: TPM, ..Default::default() };
    let secret = shared_key(&mut gw, &others, request).await;
    let per_sec = f64::from(TPM / 15) / MINUTE.as_secs_f64();
    let end = Instant::now() + MINUTE * 70 / 60;
    let mut load = tokio::task::JoinSet::new();
    for (p, share) in [(&gw.proxy, 0.70), (&others[0], 0.15), (&others[1], 0.15)] {
        let client = p.clone_handle().with_header("x-api-key", &secret);
        load.spawn(sidecar_tests::offer(client, chat_body("gpt-test", false), "normal", 3.0 * per_sec * share, end));
    }
    let statuses: Vec<u16> = load.join_all().await.into_iter().flatten().collect();
    // Every answer uses 15 tokens (the mock's usage).
    let most = 15 * most_in_any_window(&mock, MINUTE) as u32;
    eprintln!(
        "key of {TPM} tokens/min on three proxies: most in any minute {most} ({:.0}%), {} served, {} refused with 429",
        100.0 * f64::from(most) / f64::from(TPM),
        statuses.iter().filter(|s| **s == 200).count(),
        statuses.iter().filter(|s| **s == 429).count(),
    );
    assert!(most <= TPM, "{most} tokens of the key's {TPM} in some minute");
    assert!(f64::from(most) >= 0.9 * f64::from(TPM), "the fleet used only {most} of the key's {TPM} tokens");

    mock.reset_all();
    mock.set_latency(Duration::from_millis(400));
    let request = pb::CreateKeyRequest { name: "six".into(), max_concurrent: CONCURRENT as u32, ..Default::default() };
    let secret = shared_key(&mut gw, &others, request).await;
    let run = Duration::from_secs(8);
    let end = Instant::now() + run;
    let mut load = tokio::task::JoinSet::new();
    for (p, workers) in [(&gw.proxy, 10), (&others[0], 3), (&others[1], 3)] {
        for _ in 0..workers {
            let client = p.clone_handle().with_header("x-api-key", &secret);
            load.spawn(async move {
                let mut statuses = Vec::new();
                while Instant::now() < end {
                    let status = client.try_post(&chat_body("gpt-test", false), "normal").await;
                    if status != 200 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    statuses.push(status);
                }
                statuses
            });
        }
    }
    let statuses: Vec<u16> = load.join_all().await.into_iter().flatten().collect();
    let served = statuses.iter().filter(|s| **s == 200).count();
    let ideal = CONCURRENT as f64 * run.as_secs_f64() / 0.4;
    eprintln!(
        "key of {CONCURRENT} at once on three proxies: at most {} at once at the provider, {served} served ({:.0}% of {ideal:.0} possible), {} refused",
        mock.max_in_flight(),
        100.0 * served as f64 / ideal,
        statuses.iter().filter(|s| **s == 429).count(),
    );
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    assert!(mock.max_in_flight() <= CONCURRENT, "{} of the key's requests at once", mock.max_in_flight());
    assert!(served as f64 >= 0.7 * ideal, "the fleet served {served} of {ideal:.0} possible");
}
