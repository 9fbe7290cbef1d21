//! Client keys end to end: created on the control plane (the secret shown once), checked
//! by every proxy against the hashes in its snapshot — 401 without a valid key, 403
//! outside the key's scope — never forwarded upstream, and revoked or rotated on every
//! proxy within a second.

use std::time::{Duration, Instant};

use serde_json::Value;
use sidecar_proto::v1 as pb;
use sidecar_tests::{
    Gateway, MockUpstream, Options, ProxyHarness, ProxyOptions, eventually, gateway::BackendDef, proxy::chat_body,
    run_python_client,
};

/// A proxy that requires client keys (its listener is loopback, where anonymous use is
/// allowed by default).
fn keyed(id: &str) -> ProxyOptions {
    ProxyOptions {
        node_id: id.into(),
        env: vec![("SIDECAR_ALLOW_ANONYMOUS".into(), "false".into())],
        ..ProxyOptions::default()
    }
}

async fn create(gw: &mut Gateway, request: pb::CreateKeyRequest) -> (pb::ClientKey, String) {
    let created = gw.admin.create_key(request).await.expect("key created").into_inner();
    gw.proxy.wait_version(created.config_version).await;
    (created.key.unwrap(), created.secret)
}

async fn version(gw: &mut Gateway) -> u64 {
    gw.admin.get_config_version(pb::GetConfigVersionRequest {}).await.unwrap().into_inner().version
}

/// (status, error type) of a chat request for `model` with `headers`.
async fn ask(proxy: &ProxyHarness, model: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let r = proxy.post("/chat/completions", &chat_body(model, false), headers).await;
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or_default();
    (status, body["error"]["type"].as_str().unwrap_or("").to_owned())
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

#[tokio::test]
async fn a_proxy_serves_only_valid_keys_and_never_forwards_them() {
    let mock = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start_with(keyed("p1")).await;
    gw.add_backend(&mock, BackendDef::default()).await;

    // No key, a placeholder, an unknown Sidecar key: 401, and the error shows only the
    // start of the key presented.
    assert_eq!(ask(&gw.proxy, "gpt-test", &[]).await, (401, "invalid_api_key".into()));
    assert_eq!(ask(&gw.proxy, "gpt-test", &[("authorization", "Bearer sk-placeholder")]).await.0, 401);
    let unknown = format!("sk-sc-{}", "q".repeat(40));
    let r = gw.proxy.post("/chat/completions", &chat_body("gpt-test", false), &[("x-api-key", &unknown)]).await;
    assert_eq!(r.status().as_u16(), 401);
    let text = r.text().await.unwrap();
    assert!(text.contains("sk-sc-qqqq…") && !text.contains(&unknown), "{text}");
    let models = reqwest::get(format!("{}/models", gw.proxy.url())).await.unwrap();
    assert_eq!(models.status().as_u16(), 401, "the model list needs a key too");
    assert!(mock.calls_to("/v1/chat/completions").is_empty(), "nothing refused reached the provider");

    let (key, secret) = create(&mut gw, pb::CreateKeyRequest { name: "ci".into(), ..Default::default() }).await;
    assert!(secret.starts_with("sk-sc-") && secret.len() >= 6 + 32, "{secret}");
    assert!(key.prefix.starts_with(&secret[..10]) && key.prefix.len() < 16, "listed by a short prefix: {}", key.prefix);
    let listed = gw.admin.list_keys(pb::ListKeysRequest::default()).await.unwrap().into_inner();
    assert!(!format!("{listed:?}").contains(&secret[6..]), "the secret is never listed");

    // Either header works; the provider sees its own key, never the client's.
    assert_eq!(ask(&gw.proxy, "gpt-test", &[("authorization", &bearer(&secret))]).await.0, 200);
    assert_eq!(ask(&gw.proxy, "gpt-test", &[("x-api-key", &secret)]).await.0, 200);
    for call in mock.calls_to("/v1/chat/completions") {
        let sent = format!("{:?}", call.headers);
        assert!(!sent.contains(&secret), "the client's key went upstream: {sent}");
        assert_eq!(call.headers["authorization"], "Bearer sk-backend-key-0123456789");
    }

    // Disabled: 401 key_disabled; enabled again: served.
    let update = |enabled| pb::UpdateKeyRequest { id: key.id.clone(), enabled: Some(enabled), ..Default::default() };
    gw.admin.update_key(update(false)).await.unwrap();
    let v = version(&mut gw).await;
    gw.proxy.wait_version(v).await;
    assert_eq!(ask(&gw.proxy, "gpt-test", &[("x-api-key", &secret)]).await, (401, "key_disabled".into()));
    gw.admin.update_key(update(true)).await.unwrap();
    let v = version(&mut gw).await;
    gw.proxy.wait_version(v).await;
    assert_eq!(ask(&gw.proxy, "gpt-test", &[("x-api-key", &secret)]).await.0, 200);

    // Rotated: the old secret stops working, the new one works, same key.
    let rotated = gw.admin.rotate_key(pb::RotateKeyRequest { id: "ci".into() }).await.unwrap().into_inner();
    gw.proxy.wait_version(rotated.config_version).await;
    assert_eq!(rotated.key.as_ref().unwrap().id, key.id);
    assert_eq!(ask(&gw.proxy, "gpt-test", &[("x-api-key", &secret)]).await.0, 401);
    assert_eq!(ask(&gw.proxy, "gpt-test", &[("x-api-key", &rotated.secret)]).await.0, 200);
}

#[tokio::test]
async fn a_key_outside_its_scope_gets_403_naming_the_model() {
    let primary = MockUpstream::start(&[]).await;
    let fallback = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start_with(keyed("p1")).await;
    let models = [("gpt-test", "native-gpt"), ("other", "native-other")];
    gw.add_backend(&primary, BackendDef { name: "a", models: &models, ..Default::default() }).await;
    gw.add_backend(&fallback, BackendDef { name: "b", pool: "fallback", models: &models, ..Default::default() }).await;
    let request = |name: &str, models: &[&str], pools: &[&str]| pb::CreateKeyRequest {
        name: name.into(),
        models: models.iter().map(|m| m.to_string()).collect(),
        pools: pools.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    };
    let (_, only_gpt) = create(&mut gw, request("only-gpt", &["gpt-test"], &[])).await;
    let (_, only_fallback) = create(&mut gw, request("only-fallback", &[], &["fallback"])).await;

    let r = gw.proxy.post("/chat/completions", &chat_body("other", false), &[("x-api-key", &only_gpt)]).await;
    assert_eq!(r.status().as_u16(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "permission_denied");
    assert!(body["error"]["message"].as_str().unwrap().contains("`other`"), "{body}");
    assert_eq!(ask(&gw.proxy, "gpt-test", &[("x-api-key", &only_gpt)]).await.0, 200);
    // The model list shows what the key may use.
    let listed: Value = reqwest::Client::new()
        .get(format!("{}/models", gw.proxy.url()))
        .bearer_auth(&only_gpt)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = listed["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["gpt-test"]);

    // A pool scope: only the fallback backend serves this key, though primary has room.
    for _ in 0..3 {
        assert_eq!(ask(&gw.proxy, "gpt-test", &[("x-api-key", &only_fallback)]).await.0, 200);
    }
    assert_eq!(fallback.calls_to("/v1/chat/completions").len(), 3);
    assert_eq!(primary.calls_to("/v1/chat/completions").len(), 1, "only only-gpt's request went to primary");

    // The official client raises the classes users catch.
    let seen = run_python_client(
        "openai_keys.py",
        &[("SIDECAR_PROXY_URL", gw.proxy.url()), ("SIDECAR_KEY", only_gpt.clone())],
    )
    .await;
    assert_eq!(seen["placeholder"]["class"], "AuthenticationError", "{seen}");
    assert_eq!(seen["unknown"]["class"], "AuthenticationError", "{seen}");
    assert_eq!(seen["unknown"]["status"], 401, "{seen}");
    assert_eq!(seen["out_of_scope"]["class"], "PermissionDeniedError", "{seen}");
    assert_eq!(seen["out_of_scope"]["status"], 403, "{seen}");
    assert!(seen["served"]["ok"].is_string(), "{seen}");
}

#[tokio::test]
async fn a_revoked_key_is_refused_by_every_proxy_within_a_second() {
    let mock = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start_fleet(Options::default(), keyed("p1")).await;
    let others = [gw.add_proxy(keyed("p2")).await, gw.add_proxy(keyed("p3")).await];
    gw.add_backend(&mock, BackendDef::default()).await;
    let (key, secret) = create(&mut gw, pb::CreateKeyRequest { name: "soon-gone".into(), ..Default::default() }).await;
    let v = version(&mut gw).await;
    let proxies = [&gw.proxy, &others[0], &others[1]];
    for p in proxies {
        p.wait_version(v).await;
        assert_eq!(ask(p, "gpt-test", &[("x-api-key", &secret)]).await.0, 200);
    }

    let revoked_at = Instant::now();
    let revoked = gw.admin.revoke_key(pb::RevokeKeyRequest { id: key.id.clone() }).await.unwrap().into_inner();
    assert!(revoked.revoked_at_ms > 0 && !revoked.enabled);
    for p in proxies {
        eventually("the revoked key refused", Duration::from_secs(5), || async {
            (ask(p, "gpt-test", &[("x-api-key", &secret)]).await.0 == 401).then_some(())
        })
        .await;
    }
    let took = revoked_at.elapsed();
    eprintln!("revoked on three proxies in {took:?}");
    assert!(took < Duration::from_secs(1), "revocation took {took:?}");

    // Listed only on request, and never usable again.
    let live = gw.admin.list_keys(pb::ListKeysRequest { include_revoked: false }).await.unwrap().into_inner();
    assert!(live.keys.is_empty());
    let all = gw.admin.list_keys(pb::ListKeysRequest { include_revoked: true }).await.unwrap().into_inner();
    assert_eq!(all.keys.len(), 1);
    let again = gw.admin.update_key(pb::UpdateKeyRequest { id: key.id, enabled: Some(true), ..Default::default() });
    assert_eq!(again.await.unwrap_err().code(), tonic::Code::FailedPrecondition);
}

#[tokio::test]
async fn bad_key_input_is_refused_with_the_field_named() {
    let mut gw = Gateway::start().await;
    let (_, _) = create(&mut gw, pb::CreateKeyRequest { name: "taken".into(), ..Default::default() }).await;
    for (request, field) in [
        (pb::CreateKeyRequest { name: "".into(), ..Default::default() }, "key.name"),
        (pb::CreateKeyRequest { name: "Taken".into(), ..Default::default() }, "key.name"),
        (pb::CreateKeyRequest { name: "p".into(), pools: vec!["nope".into()], ..Default::default() }, "key.pools[0]"),
        (pb::CreateKeyRequest { name: "m".into(), models: vec!["a b".into()], ..Default::default() }, "key.models[0]"),
        (pb::CreateKeyRequest { name: "e".into(), expires_at_ms: 1, ..Default::default() }, "key.expires_at_ms"),
        (pb::CreateKeyRequest { name: "b".into(), budget_usd: f64::NAN, ..Default::default() }, "key.budget_usd"),
        (pb::CreateKeyRequest { name: "t".into(), tpm_limit: 100_000_001, ..Default::default() }, "key.tpm_limit"),
        (
            pb::CreateKeyRequest { name: "c".into(), max_concurrent: 100_000_001, ..Default::default() },
            "key.max_concurrent",
        ),
    ] {
        let status = gw.admin.create_key(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{field}: {}", status.message());
    }
    let keys = gw.admin.list_keys(pb::ListKeysRequest { include_revoked: true }).await.unwrap().into_inner();
    assert_eq!(keys.keys.len(), 1, "nothing refused was stored");
}

/// Rows of a stats query grouped by `dims`: (key name or id, team, requests answered).
async fn usage_by(
    gw: &mut Gateway,
    dims: &[pb::StatsDimension],
    filter: pb::StatsFilter,
) -> Vec<(String, String, u64)> {
    let request = pb::GetStatsRequest {
        group_by: dims.iter().map(|d| *d as i32).collect(),
        filter: Some(filter),
        ..Default::default()
    };
    let stats = gw.admin.get_stats(request).await.unwrap().into_inner();
    let mut rows: Vec<(String, String, u64)> = stats
        .rows
        .iter()
        .map(|r| (r.key_name.clone(), r.team.clone(), r.totals.as_ref().map_or(0, |t| t.requests)))
        .collect();
    rows.sort();
    rows
}

#[tokio::test]
async fn usage_is_accounted_per_key_and_team() {
    let mock = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start().await; // loopback: anonymous requests are served too
    gw.add_backend(&mock, BackendDef::default()).await;
    let request =
        |name: &str, team: &str| pb::CreateKeyRequest { name: name.into(), team: team.into(), ..Default::default() };
    let (_, a) = create(&mut gw, request("app-a", "search")).await;
    let (_, b) = create(&mut gw, request("app-b", "search")).await;
    let (_, c) = create(&mut gw, request("app-c", "billing")).await;
    for (secret, n) in [(&a, 3), (&b, 2), (&c, 1)] {
        for _ in 0..n {
            assert_eq!(ask(&gw.proxy, "gpt-test", &[("x-api-key", secret)]).await.0, 200);
        }
    }
    assert_eq!(ask(&gw.proxy, "gpt-test", &[]).await.0, 200, "anonymous");
    // A refusal for the key's scope is the key's too.
    assert_eq!(ask(&gw.proxy, "nope", &[("x-api-key", &c)]).await.0, 404);

    let admin = gw.admin.clone();
    eventually("all usage reported", Duration::from_secs(10), || {
        let mut admin = admin.clone();
        async move {
            let stats = admin.get_stats(pb::GetStatsRequest::default()).await.ok()?.into_inner();
            (stats.totals.is_some_and(|t| t.requests >= 8)).then_some(())
        }
    })
    .await;
    let s = |x: &str| x.to_string();
    assert_eq!(
        usage_by(&mut gw, &[pb::StatsDimension::Key], Default::default()).await,
        vec![(s(""), s(""), 1), (s("app-a"), s(""), 3), (s("app-b"), s(""), 2), (s("app-c"), s(""), 2)],
        "per key (the anonymous request under no key)"
    );
    assert_eq!(
        usage_by(&mut gw, &[pb::StatsDimension::Team], Default::default()).await,
        vec![(s(""), s(""), 1), (s(""), s("billing"), 2), (s(""), s("search"), 5)]
    );
    let only_b = pb::StatsFilter { keys: vec!["APP-B".into()], ..Default::default() };
    let stats = gw.admin.get_stats(pb::GetStatsRequest { filter: Some(only_b), ..Default::default() }).await;
    assert_eq!(stats.unwrap().into_inner().totals.unwrap().requests, 2, "a key by its name, any case");

    // A node cannot grow the store with key ids the config does not know.
    let mut node = gw.cp.node().await;
    let record = pb::UsageRecord {
        minute_ms: 60_000,
        model: "gpt-test".into(),
        answered: 1,
        key_id: "key_madeup".into(),
        ..Default::default()
    };
    let batch = pb::ReportBatch {
        node_id: "other-node".into(),
        boot_id: "b1".into(),
        seq: 1,
        records: vec![record],
        ..Default::default()
    };
    assert!(node.report(batch).await.unwrap().into_inner().applied);
    let request =
        pb::GetStatsRequest { since_ms: 1, group_by: vec![pb::StatsDimension::Key as i32], ..Default::default() };
    let rows = gw.admin.get_stats(request).await.unwrap().into_inner().rows;
    assert!(rows.iter().all(|r| r.key_id != "key_madeup"), "{rows:?}");
}

/// A key's budget: $0.01 a day at $0.002 a request (10 prompt tokens at $100/1M and 5
/// completion tokens at $200/1M, as the mock reports them; prices are per token on the
/// wire) is five requests. Requests go
/// one at a time, 400 ms apart, round the three proxies: the proxy that served knows its
/// own spend at once, the others from the control plane within a report and a grant
/// interval, so at most a few more slip through (the documented bound), and then every
/// proxy refuses the key until the period resets.
#[tokio::test]
async fn a_keys_budget_stops_it_on_every_proxy() {
    let mock = MockUpstream::start(&[]).await;
    let cp_env = vec![("SIDECAR_GRANT_INTERVAL_MS".to_string(), "250".to_string())];
    let mut gw = Gateway::start_fleet(Options { env: cp_env, ..Options::default() }, keyed("p1")).await;
    let others = [gw.add_proxy(keyed("p2")).await, gw.add_proxy(keyed("p3")).await];
    gw.add_backend(&mock, BackendDef { cost: (100e-6, 200e-6), ..Default::default() }).await;
    let request = pb::CreateKeyRequest {
        name: "metered".into(),
        budget_usd: 0.01,
        budget_period: pb::BudgetPeriod::Day as i32,
        ..Default::default()
    };
    let (_, secret) = create(&mut gw, request).await;
    let v = version(&mut gw).await;
    for p in &others {
        p.wait_version(v).await;
    }
    let proxies = [&gw.proxy, &others[0], &others[1]];
    let mut served = 0;
    for i in 0..15 {
        let (status, kind) = ask(proxies[i % 3], "gpt-test", &[("x-api-key", &secret)]).await;
        match status {
            200 => served += 1,
            429 => assert_eq!(kind, "budget_exceeded"),
            other => panic!("unexpected {other}"),
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    eprintln!("a $0.01 budget at $0.002 a request served {served} requests over three proxies");
    assert!((5..=8).contains(&served), "served {served}: 5 expected, at most 3 more in flight of the reports");
    for p in proxies {
        let r = p.post("/chat/completions", &chat_body("gpt-test", false), &[("x-api-key", &secret)]).await;
        assert_eq!(r.status().as_u16(), 429);
        let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(retry > 0 && retry <= 86_400, "until the next UTC day: {retry}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["type"], "budget_exceeded");
        assert!(body["error"]["message"].as_str().unwrap().contains("resets at"), "{body}");
    }
    // `key show` reports the spend: what the provider was paid for, reported by the proxies.
    let shown = gw.admin.get_key(pb::GetKeyRequest { id: "metered".into() }).await.unwrap().into_inner();
    let expected = 0.002 * served as f64;
    assert!((shown.spent_usd - expected).abs() < 1e-9, "spent {} for {served} requests", shown.spent_usd);
    // The control plane's metrics show the key among the top keys by spend and by budget
    // used, by id and name; the proxies count the refusals by reason, without the key.
    let text = metrics(gw.cp.ops_addr).await;
    let labels = format!("key_id=\"{}\",key=\"metered\",team=\"\"", shown.id);
    let value = |name: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{{labels}}} ")))
            .unwrap_or_else(|| panic!("{name} {labels}:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!((value("sidecar_control_key_spend_usd") - expected).abs() < 1e-9, "{text}");
    assert!(value("sidecar_control_key_requests") >= served as f64, "answered, refusals included");
    assert!(value("sidecar_control_key_budget_used_ratio") >= 1.0 - 1e-9, "{text}");
    assert!(value("sidecar_control_key_budget_remaining_usd").abs() < 1e-9, "{text}");
    assert!(!text.contains(&secret), "no secret in the metrics");
    let mut budget_refusals = 0.0;
    for p in [&gw.proxy, &others[0], &others[1]] {
        let text = metrics(p.ops_addr).await;
        budget_refusals += counter(&text, "sidecar_key_refusals_total{reason=\"budget\"}");
        assert!(!text.contains("metered") && !text.contains(&shown.id), "no per-key series on a proxy");
    }
    assert_eq!(budget_refusals as usize, 15 - served + 3, "each refusal counted once, by reason");
    // Another key is not affected.
    let (_, other) = create(&mut gw, pb::CreateKeyRequest { name: "free".into(), ..Default::default() }).await;
    assert_eq!(ask(&gw.proxy, "gpt-test", &[("x-api-key", &other)]).await.0, 200);
}

/// (status, error type, message, Retry-After seconds) of a refused answer.
async fn refusal(r: reqwest::Response) -> (u16, String, String, u64) {
    let status = r.status().as_u16();
    let retry = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
    let body: Value = r.json().await.unwrap_or_default();
    let text = |f: &str| body["error"][f].as_str().unwrap_or("").to_owned();
    (status, text("type"), text("message"), retry)
}

#[tokio::test]
async fn a_keys_token_limit_refuses_with_429_once_its_tokens_are_used() {
    let mock = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start_with(keyed("p1")).await;
    gw.add_backend(&mock, BackendDef::default()).await;
    let request = pb::CreateKeyRequest { name: "tokens".into(), tpm_limit: 50, ..Default::default() };
    let (_, secret) = create(&mut gw, request).await;
    // Each answer uses 15 tokens (the mock's usage); an admission holds the request's
    // estimate (a quarter of its body's bytes) until its answer says how many it used.
    let body = chat_body("gpt-test", false);
    let estimate = serde_json::to_vec(&body).unwrap().len() / 4;
    let expected = (0..).take_while(|n| 15 * n + estimate <= 50).count();
    let mut served = 0;
    let refused = loop {
        let r = gw.proxy.post("/chat/completions", &body, &[("x-api-key", &secret)]).await;
        if r.status() != 200 {
            break refusal(r).await;
        }
        served += 1;
        assert!(served <= 10, "the key's token limit never refused");
    };
    assert_eq!(served, expected, "{expected} answers of 15 tokens fit in 50 with an estimate of {estimate}");
    let (status, kind, message, retry) = refused;
    assert_eq!((status, kind.as_str()), (429, "rate_limit_exceeded"));
    assert!(message.contains("tokens per minute"), "{message}");
    assert!((1..=60).contains(&retry), "until the first answer leaves the minute: {retry}");
    assert_eq!(mock.served(), served, "the refused request never reached the provider");
    let text = metrics(gw.proxy.ops_addr).await;
    assert_eq!(counter(&text, "sidecar_key_refusals_total{reason=\"tokens\"}"), 1.0);
    assert_eq!(counter(&text, "sidecar_key_refusals_total{reason=\"requests\"}"), 0.0, "there from the start");
    // Another key is not affected.
    let (_, other) = create(&mut gw, pb::CreateKeyRequest { name: "free".into(), ..Default::default() }).await;
    assert_eq!(ask(&gw.proxy, "gpt-test", &[("x-api-key", &other)]).await.0, 200);
}

#[tokio::test]
async fn a_keys_concurrency_limit_counts_requests_until_their_answer_ends() {
    let mock = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start_with(keyed("p1")).await;
    gw.add_backend(&mock, BackendDef::default()).await;
    let request = pb::CreateKeyRequest { name: "two".into(), max_concurrent: 2, ..Default::default() };
    let (_, secret) = create(&mut gw, request).await;

    // Five at once against a slow provider: two are served, three refused at once.
    mock.set_latency(Duration::from_millis(800));
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let proxy = gw.proxy.clone_handle().with_header("x-api-key", &secret);
        calls.spawn(async move { proxy.try_post(&chat_body("gpt-test", false), "normal").await });
    }
    let mut statuses = calls.join_all().await;
    statuses.sort();
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    assert!(mock.max_in_flight() <= 2, "{} at once at the provider", mock.max_in_flight());
    assert!(started.elapsed() >= Duration::from_millis(800));
    let r = gw.proxy.post("/chat/completions", &chat_body("gpt-test", false), &[("x-api-key", &secret)]).await;
    assert_eq!(r.status().as_u16(), 200, "the places are free again once the answers ended");

    // A stream holds its place until its body ends, not just until its head arrives.
    mock.set_latency(Duration::ZERO);
    let request = pb::CreateKeyRequest { name: "one".into(), max_concurrent: 1, ..Default::default() };
    let (_, one) = create(&mut gw, request).await;
    mock.push(mock_stream(6, Duration::from_millis(150)));
    let stream = gw.proxy.post("/chat/completions", &chat_body("gpt-test", true), &[("x-api-key", &one)]).await;
    assert_eq!(stream.status().as_u16(), 200);
    let r = gw.proxy.post("/chat/completions", &chat_body("gpt-test", false), &[("x-api-key", &one)]).await;
    let (status, kind, message, retry) = refusal(r).await;
    assert_eq!((status, kind.as_str()), (429, "rate_limit_exceeded"), "{message}");
    assert!(message.contains("concurrency"), "{message}");
    assert_eq!(retry, 1);
    let refused = counter(&metrics(gw.proxy.ops_addr).await, "sidecar_key_refusals_total{reason=\"concurrent\"}");
    assert_eq!(refused, 4.0, "three refused at once, then one beside the stream");
    let text = stream.text().await.unwrap();
    assert!(text.contains("[DONE]"), "{text}");
    // The permit is let go as the body's end is passed on; the next request may race it.
    eventually("the stream's place to be free", Duration::from_secs(2), || async {
        let r = gw.proxy.post("/chat/completions", &chat_body("gpt-test", false), &[("x-api-key", &one)]).await;
        (r.status() == 200).then_some(())
    })
    .await;
}

fn mock_stream(chunks: usize, chunk_delay: Duration) -> sidecar_tests::mock::Reply {
    sidecar_tests::mock::Reply::Stream { chunks, chunk_delay }
}

async fn metrics(addr: std::net::SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap()
}

/// The value of the series `series` (name and labels as written) in `text`.
fn counter(text: &str, series: &str) -> f64 {
    let line =
        text.lines().find(|l| l.starts_with(&format!("{series} "))).unwrap_or_else(|| panic!("{series}:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}
