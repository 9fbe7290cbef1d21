//! The proxy end to end: the OpenAI endpoints, model rewrite, header hygiene, streaming,
//! local answers, errors, ops endpoints, and usage accounted in the control plane.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use sidecar_tests::{Gateway, MockUpstream, ProxyHarness, ProxyOptions, gateway::BackendDef, proxy::chat_body};

/// Sums the control plane's per-minute usage (stop the control plane first).
fn stored_usage(
    cp: &sidecar_tests::ControlPlaneHarness,
) -> Vec<(String, String, sidecar_control_plane::store::UsageCounters)> {
    let store = sidecar_control_plane::store::Store::open(&cp.data_dir).unwrap();
    store.usage_minutes(0, i64::MAX).unwrap().into_iter().map(|(_, b, m, c)| (b, m, c)).collect()
}

/// One backend's stored usage (stop the control plane first).
fn backend_usage(cp: &sidecar_tests::ControlPlaneHarness, id: &str) -> sidecar_control_plane::store::UsageCounters {
    let usage = stored_usage(cp);
    usage.into_iter().find(|(b, _, _)| b == id).map(|(_, _, c)| c).expect("usage for the backend")
}

#[tokio::test]
async fn chat_completions_and_embeddings_are_forwarded_with_the_model_rewritten() {
    let mock = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start().await;
    let backend = gw
        .add_backend(
            &mock,
            BackendDef {
                name: "one",
                models: &[("gpt-test", "native-gpt"), ("embed", "native-embed")],
                ..Default::default()
            },
        )
        .await;

    let resp = gw
        .proxy
        .post(
            "/chat/completions",
            &chat_body("gpt-test", false),
            &[("authorization", "Bearer client-own-key"), ("x-api-key", "client-x"), ("x-request-id", "r-1")],
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-sidecar-backend"], "one");
    assert_eq!(resp.headers()["x-sidecar-pool"], "primary");
    assert_eq!(resp.headers()["x-sidecar-attempts"], "1");
    assert!(resp.headers().get("x-sidecar-degraded").is_none());
    // The provider's banner stays behind; its rate-limit view reaches the client.
    assert!(resp.headers().get("server").is_none(), "{:?}", resp.headers());
    assert!(resp.headers().get("x-powered-by").is_none(), "{:?}", resp.headers());
    assert_eq!(resp.headers()["x-ratelimit-remaining-requests"], "999999");
    assert_eq!(resp.headers()["x-request-id"], "req_mock");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["usage"]["total_tokens"], 15);

    let call = mock.calls_to("/v1/chat/completions").pop().unwrap();
    assert_eq!(call.json()["model"], "native-gpt", "model rewritten to native_id");
    assert_eq!(call.header("authorization").as_deref(), Some("Bearer sk-backend-key-0123456789"), "backend key set");
    assert!(call.header("x-api-key").is_none(), "client credentials dropped");
    assert_eq!(call.header("x-request-id").as_deref(), Some("r-1"), "other headers kept");
    assert_eq!(call.path, "/v1/chat/completions", "never /v1/v1");

    // Everything but the model passes byte for byte: key order, spacing, number forms.
    let sent = "{ \"temperature\": 0.70,\n  \"model\" : \"gpt-test\", \"messages\": [{\"role\":\"user\",\"content\":\"h\\u00e9\"}] }";
    let resp = reqwest::Client::new()
        .post(format!("{}/chat/completions", gw.proxy.url()))
        .header("content-type", "application/json")
        .body(sent)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let call = mock.calls_to("/v1/chat/completions").pop().unwrap();
    assert_eq!(std::str::from_utf8(&call.body).unwrap(), sent.replace("\"gpt-test\"", "\"native-gpt\""));

    let resp = gw.proxy.post("/completions", &json!({"model": "gpt-test", "prompt": "hi"}), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.calls_to("/v1/completions").pop().unwrap().json()["model"], "native-gpt");
    let resp = gw.proxy.post("/embeddings", &json!({"model": "embed", "input": "hi"}), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.calls_to("/v1/embeddings").pop().unwrap().json()["model"], "native-embed");

    // Usage reaches the control plane (batches flush every second and on shutdown).
    gw.proxy.stop().await;
    gw.cp.stop().await;
    let usage = stored_usage(&gw.cp);
    let chat: u64 =
        usage.iter().filter(|(b, m, _)| *b == backend.id && m == "gpt-test").map(|(_, _, c)| c.attempts).sum();
    assert_eq!(chat, 3, "two chats + completions under the canonical model");
    let tokens: u64 = usage.iter().map(|(_, _, c)| c.total_tokens).sum();
    assert_eq!(tokens, 15 + 15 + 15 + 10);
}

/// The frames of a streamed answer, as the client received them.
async fn stream_frames(resp: reqwest::Response) -> Vec<String> {
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut frames = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        frames.push(String::from_utf8(chunk.unwrap().to_vec()).unwrap());
    }
    frames
}

#[tokio::test]
async fn streams_pass_through_chunk_by_chunk_with_usage_requested_and_costed() {
    let mock = MockUpstream::start(&[]).await;
    mock.set_default(sidecar_tests::Reply::Stream { chunks: 4, chunk_delay: Duration::from_millis(40) });
    let mut gw = Gateway::start().await;
    let backend = gw.add_backend(&mock, BackendDef { cost: (0.001, 0.002), ..Default::default() }).await;

    // The client did not ask for usage: the proxy asks upstream, reads the usage chunk
    // and does not pass it on; every other event arrives as its own frame, as sent.
    let frames = stream_frames(gw.proxy.post("/chat/completions", &chat_body("gpt-test", true), &[]).await).await;
    assert_eq!(frames.len(), 5, "four content chunks and [DONE], not coalesced: {frames:?}");
    for frame in &frames[..4] {
        let event: serde_json::Value =
            serde_json::from_str(frame.strip_prefix("data: ").unwrap().strip_suffix("\n\n").unwrap()).unwrap();
        assert_eq!(event["choices"].as_array().unwrap().len(), 1, "{frame}");
    }
    assert!(!frames.concat().contains("\"usage\""), "the usage chunk nobody asked for is not passed on");
    assert_eq!(frames[4], "data: [DONE]\n\n");
    let sent = mock.calls().pop().unwrap().json();
    assert_eq!(sent["stream_options"]["include_usage"], true, "usage asked for");

    // The client asked for usage: it gets the usage chunk, unchanged.
    let mut body = chat_body("gpt-test", true);
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let frames = stream_frames(gw.proxy.post("/chat/completions", &body, &[]).await).await;
    assert_eq!(frames.len(), 6, "{frames:?}");
    let usage: serde_json::Value = serde_json::from_str(frames[4].strip_prefix("data: ").unwrap().trim_end()).unwrap();
    assert_eq!(usage["choices"], serde_json::json!([]));
    assert_eq!(usage["usage"]["total_tokens"], 15);

    gw.proxy.stop().await;
    gw.cp.stop().await;
    let c = backend_usage(&gw.cp, &backend.id);
    assert_eq!((c.attempts, c.succeeded, c.prompt_tokens, c.completion_tokens), (2, 2, 20, 10), "both accounted");
    assert!((c.cost_usd - 2.0 * (10.0 * 0.001 + 5.0 * 0.002)).abs() < 1e-9, "cost {}", c.cost_usd);
    assert_eq!(c.ttft_count, 2);
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_is_still_accounted() {
    let mock = MockUpstream::start(&[]).await;
    mock.set_default(sidecar_tests::Reply::Stream { chunks: 6, chunk_delay: Duration::from_millis(60) });
    let mut gw = Gateway::start().await;
    let backend = gw.add_backend(&mock, BackendDef::default()).await;
    let resp = gw.proxy.post("/chat/completions", &chat_body("gpt-test", true), &[]).await;
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(stream);
    // The proxy drains the upstream in the background and accounts the final usage.
    sidecar_tests::eventually("in-flight drained", Duration::from_secs(5), || async {
        gw.proxy.backend_status(&backend.id).await["in_flight"].as_u64().filter(|&n| n == 0)
    })
    .await;
    gw.proxy.stop().await;
    gw.cp.stop().await;
    let c = backend_usage(&gw.cp, &backend.id);
    assert_eq!((c.attempts, c.succeeded, c.total_tokens), (1, 1, 15));
}

/// Sends a chat completion and abandons it once the upstream has the request (the client
/// hangs up while the upstream is still working on it).
async fn abandon_once_upstream_has_it(gw: &Gateway, mock: &MockUpstream) {
    let url = format!("{}/chat/completions", gw.proxy.url());
    let request = tokio::spawn(async move {
        let _ = reqwest::Client::new().post(url).json(&chat_body("gpt-test", false)).send().await;
    });
    sidecar_tests::eventually("upstream has the request", Duration::from_secs(5), || async {
        (mock.calls().len() == 1).then_some(())
    })
    .await;
    request.abort();
    let _ = request.await;
}

#[tokio::test]
async fn a_client_that_leaves_before_the_answer_is_still_accounted() {
    let mock = MockUpstream::start(&[]).await;
    mock.push_with_latency(sidecar_tests::Reply::Ok, Duration::from_secs(1));
    let mut gw = Gateway::start().await;
    let backend = gw.add_backend(&mock, BackendDef::default()).await;
    abandon_once_upstream_has_it(&gw, &mock).await;
    // The upstream still answers (and bills) the request: the proxy waits for the answer
    // in the background, accounts it, and no longer counts it in flight.
    sidecar_tests::eventually("the abandoned attempt finished", Duration::from_secs(5), || async {
        gw.proxy.backend_status(&backend.id).await["in_flight"].as_u64().filter(|&n| n == 0)
    })
    .await;
    assert_eq!(gw.proxy.shared.in_flight.count(), 0);
    gw.proxy.stop().await;
    gw.cp.stop().await;
    let c = backend_usage(&gw.cp, &backend.id);
    assert_eq!((c.attempts, c.succeeded, c.total_tokens), (1, 1, 15));
}

#[tokio::test]
async fn a_429_that_comes_after_the_client_left_still_cools_the_backend() {
    let mock = MockUpstream::start(&[]).await;
    mock.push_with_latency(sidecar_tests::Reply::too_many_requests(3), Duration::from_secs(1));
    let mut gw = Gateway::start().await;
    let backend = gw.add_backend(&mock, BackendDef::default()).await;
    abandon_once_upstream_has_it(&gw, &mock).await;
    // The cooldown and the end of the attempt are two steps: wait for both.
    let status =
        sidecar_tests::eventually("the backend cools down, nothing in flight", Duration::from_secs(5), || async {
            let status = gw.proxy.backend_status(&backend.id).await;
            (status["status"] == "cooling" && status["in_flight"] == 0).then_some(status)
        })
        .await;
    assert_eq!(status["cooldown"]["consecutive_429"], 1);
}

#[tokio::test]
async fn an_abandoned_attempt_still_unanswered_at_shutdown_is_accounted_as_a_broken_connection() {
    let mock = MockUpstream::start(&[]).await;
    mock.push_with_latency(sidecar_tests::Reply::Ok, Duration::from_secs(60));
    let options = ProxyOptions { env: vec![("SIDECAR_SHUTDOWN_GRACE".into(), "1".into())], ..Default::default() };
    let mut gw = Gateway::start_with(options).await;
    let backend = gw.add_backend(&mock, BackendDef::default()).await;
    abandon_once_upstream_has_it(&gw, &mock).await;
    // The grace period runs out long before the upstream answers: the attempt is closed
    // with the proxy, counted as a broken connection, and in the final report.
    tokio::time::timeout(Duration::from_secs(10), gw.proxy.stop())
        .await
        .expect("the proxy stops after its grace period");
    assert_eq!(gw.proxy.shared.in_flight.count(), 0);
    gw.cp.stop().await;
    let c = backend_usage(&gw.cp, &backend.id);
    assert_eq!((c.attempts, c.succeeded, c.errors_connect), (1, 0, 1));
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let options = ProxyOptions { env: vec![("SIDECAR_HEADER_TIMEOUT".into(), "1".into())], ..Default::default() };
    let gw = Gateway::start_with(options).await;
    let mut slow = tokio::net::TcpStream::connect(gw.proxy.addr).await.unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: sidecar\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut answer))
        .await
        .expect("the proxy closes the connection")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
    // Requests that arrive whole are served as before.
    let models = reqwest::get(format!("{}/models", gw.proxy.url())).await.unwrap();
    assert_eq!(models.status(), 200);
}

#[tokio::test]
async fn models_are_answered_locally_and_unknown_things_are_refused_clearly() {
    let mock = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start().await;
    gw.add_backend(
        &mock,
        BackendDef { models: &[("b-model", "x"), ("a-model", "y"), ("vendor/c-model", "z")], ..Default::default() },
    )
    .await;
    let client = reqwest::Client::new();
    let models: Value = client.get(format!("{}/models", gw.proxy.url())).send().await.unwrap().json().await.unwrap();
    let ids: Vec<_> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, ["a-model", "b-model", "vendor/c-model"]);
    let one = client.get(format!("{}/models/a-model", gw.proxy.url())).send().await.unwrap();
    assert_eq!(one.status(), 200);
    let missing = client.get(format!("{}/models/zzz", gw.proxy.url())).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    // Model ids may hold slashes, as sent or percent-encoded.
    for path in ["vendor/c-model", "vendor%2Fc-model"] {
        let one = client.get(format!("{}/models/{path}", gw.proxy.url())).send().await.unwrap();
        assert_eq!(one.status(), 200, "{path}");
        assert_eq!(one.json::<Value>().await.unwrap()["id"], "vendor/c-model");
    }

    let wrong_method = client.get(format!("{}/chat/completions", gw.proxy.url())).send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(wrong_method.headers()["allow"], "POST");
    assert_eq!(wrong_method.json::<Value>().await.unwrap()["error"]["type"], "invalid_request_error");

    let unknown = client.post(format!("{}/files", gw.proxy.url())).body("{}").send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body["error"]["type"], "not_found");

    let not_json = client.post(format!("{}/chat/completions", gw.proxy.url())).body("[1,2]").send().await.unwrap();
    assert_eq!(not_json.status(), 400);
    let body: Value = not_json.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("JSON object"));
    let no_model = gw.proxy.post("/chat/completions", &json!({"messages": []}), &[]).await;
    assert_eq!(no_model.status(), 400);
    let unknown_model = gw.proxy.chat("nobody-serves-this").await;
    assert_eq!(unknown_model.status(), 404);
    assert_eq!(unknown_model.json::<Value>().await.unwrap()["error"]["type"], "model_not_found");
    assert!(mock.calls_to("/v1/chat/completions").is_empty(), "nothing invalid reached the upstream");
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let mock = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start_with(ProxyOptions {
        env: vec![("SIDECAR_MAX_BODY_BYTES".into(), "2048".into())],
        ..Default::default()
    })
    .await;
    gw.add_backend(&mock, BackendDef::default()).await;
    let big = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "x".repeat(4096)}]});
    let resp = gw.proxy.post("/chat/completions", &big, &[]).await;
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["type"], "invalid_request_error");
    assert!(gw.proxy.chat("gpt-test").await.status().is_success(), "small bodies still pass");
}

#[tokio::test]
async fn ready_only_after_a_config_and_ops_endpoints_report() {
    // A proxy whose control plane does not exist yet: alive, not ready.
    let lonely =
        ProxyHarness::start("http://127.0.0.1:1", "node-token-0123456789abcdef", ProxyOptions::default()).await;
    let ready = reqwest::get(format!("http://{}/health/ready", lonely.ops_addr)).await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(reqwest::get(format!("http://{}/health", lonely.ops_addr)).await.unwrap().status(), 200);
    assert_eq!(lonely.chat("x").await.status(), 503);

    let mock = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start().await;
    let backend = gw.add_backend(&mock, BackendDef::default()).await;
    let ready = reqwest::get(format!("http://{}/health/ready", gw.proxy.ops_addr)).await.unwrap();
    assert_eq!(ready.status(), 200);
    gw.proxy.chat("gpt-test").await;
    let status = gw.proxy.status().await;
    assert_eq!(status["control_plane"]["connected"], true);
    assert_eq!(status["config_version"], gw.proxy.version());
    assert_eq!(status["requests"]["total"], 1);
    assert_eq!(status["requests"]["succeeded"], 1);
    assert!(status["queue"]["depth"]["urgent"].is_number());
    assert_eq!(status["buckets"][0]["id"], backend.id.as_str());
    let metrics = reqwest::get(format!("http://{}/metrics", gw.proxy.ops_addr)).await.unwrap().text().await.unwrap();
    for needle in [
        "# HELP sidecar_requests_total",
        "# TYPE sidecar_requests_total counter",
        &format!("sidecar_requests_total{{backend=\"{}\",pool=\"primary\",status_class=\"2xx\"}} 1", backend.id),
        "# TYPE sidecar_upstream_latency_seconds histogram",
        &format!("sidecar_tokens_available{{backend=\"{}\"}}", backend.id),
        "sidecar_queue_depth{priority=\"low\"} 0",
        "sidecar_control_plane_connected 1",
        "sidecar_config_version",
        "sidecar_report_outbox_depth",
    ] {
        assert!(metrics.contains(needle), "missing {needle}\n{metrics}");
    }
    assert!(!metrics.contains("gpt-test"), "no client model strings in labels");
    assert!(!metrics.contains("sk-backend-key"), "no keys in metrics");
}
