//! Anthropic Messages and OpenAI Responses end to end: the official SDKs through the
//! proxy to mock providers speaking each API, through the same pools, limits, cooldown,
//! fallback and accounting as chat completions.

use std::time::Duration;

use serde_json::{Value, json};
use sidecar_proto::v1 as pb;
use sidecar_tests::{Gateway, MockUpstream, Reply, eventually, gateway::BackendDef};

const CLAUDE: &[(&str, &str)] = &[("claude-test", "native-claude")];
/// Prices per token: input, output, cache read, cache write.
const PRICES: (f64, f64, f64, f64) = (3e-6, 15e-6, 0.3e-6, 3.75e-6);

fn anthropic(name: &'static str, pool: &'static str) -> BackendDef<'static> {
    BackendDef {
        name,
        pool,
        models: CLAUDE,
        api: pb::BackendApi::Anthropic,
        key: "sk-ant-backend-0123456789",
        cost: (PRICES.0, PRICES.1),
        cache_cost: (PRICES.2, PRICES.3),
        ..Default::default()
    }
}

/// The proxy's origin, without `/v1` (what Anthropic clients take as their base URL).
fn origin(gw: &Gateway) -> String {
    format!("http://{}", gw.proxy.addr)
}

async fn stats_when(gw: &Gateway, requests: u64) -> pb::UsageTotals {
    let admin = gw.admin.clone();
    eventually(&format!("{requests} requests in the stats"), Duration::from_secs(15), || {
        let mut admin = admin.clone();
        async move {
            let resp = admin.get_stats(pb::GetStatsRequest::default()).await.unwrap().into_inner();
            let t = resp.totals.unwrap_or_default();
            (t.requests >= requests).then_some(t)
        }
    })
    .await
}

async fn messages(gw: &Gateway, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1/messages", origin(gw)))
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap()
}

fn claude_body() -> Value {
    json!({"model": "claude-test", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn the_official_anthropic_sdk_works_through_the_proxy_and_its_usage_and_cost_are_accounted() {
    let mock = MockUpstream::start(&["sk-ant-backend-0123456789"]).await;
    let mut gw = Gateway::start().await;
    gw.add_backend(&mock, anthropic("claude", "primary")).await;
    let seen = sidecar_tests::run_python_client("anthropic_client.py", &[("SIDECAR_PROXY_URL", origin(&gw))]).await;
    assert_eq!(seen["content"], "Hello from the mock upstream.");
    assert_eq!(seen["model"], "native-claude", "the upstream saw the native model id");
    assert_eq!(
        seen["usage"],
        json!({"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 2, "cache_read_input_tokens": 4})
    );
    let types: Vec<&str> = seen["stream_event_types"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(types.first(), Some(&"message_start"), "{types:?}");
    assert_eq!(types.last(), Some(&"message_stop"), "{types:?}");
    assert_eq!(types.iter().filter(|t| **t == "content_block_delta").count(), 5, "{types:?}");
    assert_eq!(seen["stream_text"], "tok0 tok1 tok2 tok3 tok4 ");
    assert_eq!(seen["stream_usage"], json!({"input_tokens": 10, "output_tokens": 5}));
    assert_eq!(seen["count_tokens"], 10);

    // Upstream: the backend's key as x-api-key, never the client's credentials; a version.
    let calls: Vec<_> = mock.calls().into_iter().filter(|c| c.path.starts_with("/v1/messages")).collect();
    assert_eq!(calls.len(), 4, "create, stream, stream helper, count_tokens");
    for c in &calls {
        assert_eq!(c.header("x-api-key").as_deref(), Some("sk-ant-backend-0123456789"));
        assert_eq!(c.authorization, None, "the client's Authorization is not forwarded");
        assert!(c.header("anthropic-version").is_some());
        assert_eq!(c.json()["model"], "native-claude");
    }
    assert_eq!(mock.calls_to("/v1/messages/count_tokens").len(), 1);

    // Accounting: three messages with 10 input + 2 cache writes + 4 cache reads and 5
    // output tokens each (streams too: input from message_start, output from
    // message_delta), and a count_tokens request without tokens.
    let t = stats_when(&gw, 4).await;
    assert_eq!((t.requests, t.succeeded), (4, 4));
    assert_eq!((t.prompt_tokens, t.completion_tokens), (3 * 16, 3 * 5));
    let one = 10.0 * PRICES.0 + 5.0 * PRICES.1 + 4.0 * PRICES.2 + 2.0 * PRICES.3;
    assert!((t.cost_usd - 3.0 * one).abs() < 1e-12, "cost {} != {}", t.cost_usd, 3.0 * one);
}

#[tokio::test]
async fn an_anthropic_429_cools_the_backend_and_the_request_fails_over() {
    let first = MockUpstream::start(&[]).await;
    let second = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start().await;
    gw.add_backend(&first, anthropic("first", "primary")).await;
    gw.add_backend(&second, anthropic("second", "fallback")).await;

    first.push(Reply::too_many_requests(30));
    let seen = sidecar_tests::run_python_client(
        "anthropic_client.py",
        &[("SIDECAR_PROXY_URL", origin(&gw)), ("SIDECAR_SCENARIO", "one".into())],
    )
    .await;
    assert_eq!(seen["content"], "Hello from the mock upstream.", "the SDK got its answer: {seen}");
    assert_eq!((first.calls().len(), second.served()), (1, 1), "429 on the first, served by the second");
    // The first is cooling (Retry-After 30 s): the next request goes straight to the second.
    let resp = messages(&gw, &claude_body()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-sidecar-backend"], "second");
    assert_eq!(first.calls().len(), 1);

    let status =
        reqwest::get(format!("http://{}/status", gw.proxy.ops_addr)).await.unwrap().json::<Value>().await.unwrap();
    let first_status = status["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "first")
        .unwrap_or_else(|| panic!("{status}"))
        .clone();
    assert_eq!(first_status["status"], "cooling", "{first_status}");
    assert_eq!(first_status["api"], "anthropic", "{first_status}");
}

#[tokio::test]
async fn an_anthropic_529_goes_to_the_next_candidate_without_cooling_the_backend() {
    let first = MockUpstream::start(&[]).await;
    let second = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start().await;
    gw.add_backend(&first, anthropic("first", "primary")).await;
    gw.add_backend(&second, anthropic("second", "fallback")).await;
    first.push(Reply::status(529));
    let mut served_by = Vec::new();
    for _ in 0..2 {
        let resp = messages(&gw, &claude_body()).await;
        assert_eq!(resp.status(), 200);
        served_by.push(resp.headers()["x-sidecar-backend"].to_str().unwrap().to_owned());
    }
    // Overloaded: the next candidate answered; no cooldown, so the next request is the
    // first's again.
    assert_eq!(served_by, ["second", "first"]);
    let statuses: Vec<u16> = first.calls_to("/v1/messages").iter().map(|c| c.status).collect();
    assert_eq!(statuses, [529, 200]);
}

#[tokio::test]
async fn each_route_reaches_only_backends_of_its_api_and_errors_take_the_routes_shape() {
    let openai = MockUpstream::start(&[]).await;
    let claude = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start().await;
    gw.add_backend(
        &openai,
        BackendDef { name: "o", models: &[("shared", "native-o"), ("gpt-only", "g")], ..Default::default() },
    )
    .await;
    gw.add_backend(
        &claude,
        BackendDef {
            name: "a",
            models: &[("shared", "native-a"), ("claude-only", "c")],
            rpm: 1,
            ..anthropic("a", "primary")
        },
    )
    .await;
    gw.settings(pb::SettingsPatch { queue_timeout_seconds: Some(1), ..Default::default() }).await;

    // One model on both APIs, one pool order, one queue: chat goes to the OpenAI backend,
    // messages to the Anthropic one. The Anthropic backend allows one request a minute:
    // the second messages request waits in the queue, and chat requests meanwhile are not
    // held up behind it.
    let first = messages(&gw, &json!({"model": "shared", "max_tokens": 5, "messages": []})).await;
    assert_eq!(first.status(), 200);
    let waiting = tokio::spawn({
        let url = format!("{}/v1/messages", origin(&gw));
        async move {
            reqwest::Client::new()
                .post(url)
                .json(&json!({"model": "shared", "max_tokens": 5, "messages": []}))
                .send()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    for _ in 0..5 {
        let resp = gw.proxy.post("/chat/completions", &sidecar_tests::proxy::chat_body("shared", false), &[]).await;
        assert_eq!(resp.status(), 200);
    }
    assert!(started.elapsed() < Duration::from_millis(900), "chat was held up: {:?}", started.elapsed());
    // The waiting messages request times out with the proxy's own 429, Anthropic-shaped.
    let timed_out = waiting.await.unwrap();
    assert_eq!(timed_out.status(), 429);
    assert!(timed_out.headers().contains_key("retry-after"));
    let body: Value = timed_out.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");

    assert!(openai.calls().iter().all(|c| c.path == "/v1/chat/completions" && c.json()["model"] == "native-o"));
    assert_eq!(openai.calls().len(), 5);
    assert!(claude.calls().iter().all(|c| c.path == "/v1/messages" && c.json()["model"] == "native-a"));
    assert_eq!(claude.calls().len(), 1);

    // A model only the other API serves: 404 naming the path that serves it.
    let resp = gw.proxy.post("/chat/completions", &sidecar_tests::proxy::chat_body("claude-only", false), &[]).await;
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("served by anthropic backends; call /v1/messages"), "{message}");
    let resp = messages(&gw, &json!({"model": "gpt-only", "max_tokens": 5, "messages": []})).await;
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!((body["type"].as_str(), body["error"]["type"].as_str()), (Some("error"), Some("not_found_error")));
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("served by openai backends; call /v1/chat/completions"), "{message}");
    // Unknown everywhere, a bad body, a wrong method: Anthropic-shaped on its routes.
    let resp = messages(&gw, &json!({"model": "nope", "max_tokens": 5, "messages": []})).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["type"], "not_found_error");
    let resp = messages(&gw, &json!({"max_tokens": 5})).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["type"], "invalid_request_error");
    let resp = reqwest::get(format!("{}/v1/messages", origin(&gw))).await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.json::<Value>().await.unwrap()["type"], "error");
}

#[tokio::test]
async fn the_official_openai_sdk_speaks_responses_and_follow_ups_reach_the_backend_that_stored_the_response() {
    let one = MockUpstream::start(&[]).await;
    let two = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start().await;
    gw.add_backend(&one, BackendDef { name: "one", cost: (1e-6, 2e-6), ..Default::default() }).await;
    gw.add_backend(&two, BackendDef { name: "two", cost: (1e-6, 2e-6), ..Default::default() }).await;
    let seen = sidecar_tests::run_python_client("openai_responses.py", &[("SIDECAR_PROXY_URL", gw.proxy.url())]).await;
    assert_eq!(seen["text"], "Hello from the mock upstream.");
    assert_eq!(seen["model"], "native-gpt");
    assert_eq!(
        seen["usage"],
        json!({"input_tokens": 10, "output_tokens": 5, "cached_tokens": 4, "reasoning_tokens": 2, "total_tokens": 15})
    );
    let types: Vec<&str> = seen["stream_event_types"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!((types.first(), types.last()), (Some(&"response.created"), Some(&"response.completed")), "{types:?}");
    assert_eq!(seen["stream_text"], "tok0 tok1 tok2 tok3 tok4 ");
    assert_eq!(seen["stream_usage"], json!({"input_tokens": 10, "output_tokens": 5}));
    // The follow-up landed where the first response is stored (the other mock would have
    // answered 400 previous_response_not_found); retrieve and delete went there too.
    assert_eq!(seen["second_previous"], seen["id"]);
    assert_eq!(seen["retrieved_id"], seen["id"]);
    assert_eq!(seen["deleted_then_404"], true);
    let first = seen["id"].as_str().unwrap().to_owned();
    let holder = if one.response_ids().contains(&first) { &one } else { &two };
    assert!(holder.response_ids().contains(&seen["second_id"].as_str().unwrap().to_owned()));

    // Many follow-ups: every one on the holder, whichever backend the weighted choice
    // would have picked.
    for i in 0..12 {
        let body = json!({"model": "gpt-test", "input": format!("more {i}"), "previous_response_id": first});
        let resp = gw.proxy.post("/responses", &body, &[]).await;
        assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    }
    let other = if std::ptr::eq(holder, &one) { &two } else { &one };
    assert!(
        other.calls_to("/v1/responses").iter().all(|c| c.json().get("previous_response_id").is_none_or(Value::is_null)),
        "a follow-up reached the backend that does not hold the response"
    );
    // An id this proxy never forwarded: 404, nothing sent upstream.
    let before = one.calls().len() + two.calls().len();
    let resp = reqwest::get(format!("{}/responses/resp_unknown", gw.proxy.url())).await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(one.calls().len() + two.calls().len(), before);

    // Usage: 3 SDK responses + 12 follow-ups, 10 in / 5 out each; retrieve and delete
    // are not usage.
    let t = stats_when(&gw, 15).await;
    assert_eq!((t.prompt_tokens, t.completion_tokens), (15 * 10, 15 * 5));
    assert!((t.cost_usd - 15.0 * (10.0 * 1e-6 + 5.0 * 2e-6)).abs() < 1e-12, "cost {}", t.cost_usd);
}

#[tokio::test]
async fn a_stored_response_is_reachable_only_with_the_client_key_that_made_it() {
    let mock = MockUpstream::start(&[]).await;
    let options = sidecar_tests::ProxyOptions {
        env: vec![("SIDECAR_ALLOW_ANONYMOUS".into(), "false".into())],
        ..Default::default()
    };
    let mut gw = Gateway::start_with(options).await;
    gw.add_backend(&mock, BackendDef::default()).await;
    let mut secrets = Vec::new();
    for name in ["owner", "other"] {
        let created =
            gw.admin.create_key(pb::CreateKeyRequest { name: name.into(), ..Default::default() }).await.unwrap();
        let created = created.into_inner();
        gw.proxy.wait_version(created.config_version).await;
        secrets.push(format!("Bearer {}", created.secret));
    }
    let (owner, other) = (secrets[0].as_str(), secrets[1].as_str());
    let made =
        gw.proxy.post("/responses", &json!({"model": "gpt-test", "input": "hi"}), &[("authorization", owner)]).await;
    assert_eq!(made.status(), 200);
    let id = made.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let get = |key: &str| {
        let (url, key) = (format!("{}/responses/{id}", gw.proxy.url()), key.to_owned());
        async move { reqwest::Client::new().get(url).header("authorization", key).send().await.unwrap().status() }
    };
    assert_eq!(get(other).await, 404, "another key is told nothing about it");
    assert_eq!(get(owner).await, 200);
    // Without a key at all (anonymous not allowed here): 401 before any lookup.
    assert_eq!(reqwest::get(format!("{}/responses/{id}", gw.proxy.url())).await.unwrap().status(), 401);
    assert_eq!(mock.calls().iter().filter(|c| c.method == "GET").count(), 1, "only the owner's lookup went upstream");
}
