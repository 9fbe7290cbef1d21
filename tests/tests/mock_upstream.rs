//! Tests of the scriptable mock upstream itself.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::{Value, json};
use sidecar_tests::{MockUpstream, mock::Reply};

const KEY: &str = "sk-test-0123456789";

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

async fn post(mock: &MockUpstream, path: &str, body: &Value) -> reqwest::Response {
    client().post(format!("{}{path}", mock.base_url())).bearer_auth(KEY).json(body).send().await.unwrap()
}

async fn chat(mock: &MockUpstream) -> reqwest::Response {
    post(mock, "/chat/completions", &json!({"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]})).await
}

/// Splits an SSE body into its `data:` payloads.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| e.strip_prefix("data: ").expect("data event").to_owned())
        .collect()
}

#[tokio::test]
async fn default_json_replies_echo_model_and_report_usage() {
    let mock = MockUpstream::start(&[KEY]).await;
    assert!(mock.base_url().starts_with("http://127.0.0.1:"));
    assert!(mock.base_url().ends_with("/v1"));

    let resp = chat(&mock).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-x");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["usage"], json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}));

    let body: Value = post(&mock, "/completions", &json!({"model": "c1", "prompt": "x"})).await.json().await.unwrap();
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], "c1");
    assert_eq!(body["usage"]["total_tokens"], 15);

    let body: Value = post(&mock, "/embeddings", &json!({"model": "e1", "input": "x"})).await.json().await.unwrap();
    assert_eq!(body["model"], "e1");
    assert_eq!(body["data"][0]["object"], "embedding");
    assert!(!body["data"][0]["embedding"].as_array().unwrap().is_empty());
    assert_eq!(body["usage"], json!({"prompt_tokens": 10, "total_tokens": 10}));

    // /models and the key check.
    let resp = client().get(format!("{}/models", mock.base_url())).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["data"][0]["id"], "m1");
    assert_eq!(body["data"][1]["id"], "m2");
    let resp = client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .bearer_auth("wrong")
        .json(&json!({"model": "gpt-x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"]["message"].is_string());

    assert_eq!(mock.served(), 3);
    assert_eq!(mock.calls().len(), 5);
}

#[tokio::test]
async fn empty_key_list_accepts_any_bearer_key() {
    let mock = MockUpstream::start(&[]).await;
    let resp = client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .bearer_auth("anything")
        .json(&json!({"model": "gpt-x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn streams_sse_with_and_without_usage() {
    let mock = MockUpstream::start(&[KEY]).await;

    let resp = post(&mock, "/chat/completions", &json!({"model": "gpt-x", "stream": true})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = sse_data(&resp.text().await.unwrap());
    assert_eq!(events.len(), 6, "5 chunks + [DONE]: {events:?}");
    assert_eq!(events.last().unwrap(), "[DONE]");
    for e in &events[..5] {
        let chunk: Value = serde_json::from_str(e).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "gpt-x");
        assert!(chunk["choices"][0]["delta"]["content"].is_string());
        assert!(chunk.get("usage").is_none());
    }

    // Scripted stream with include_usage: the usage chunk comes last before [DONE].
    mock.push(Reply::Stream { chunks: 3, chunk_delay: Duration::from_millis(5) });
    let resp = post(
        &mock,
        "/chat/completions",
        &json!({"model": "gpt-y", "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    let events = sse_data(&resp.text().await.unwrap());
    assert_eq!(events.len(), 5, "3 chunks + usage + [DONE]: {events:?}");
    assert_eq!(events[4], "[DONE]");
    let usage: Value = serde_json::from_str(&events[3]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["total_tokens"], 15);
    for e in &events[..3] {
        let chunk: Value = serde_json::from_str(e).unwrap();
        assert_eq!(chunk["choices"].as_array().unwrap().len(), 1);
    }

    // Chunks arrive as separate frames over time.
    mock.push(Reply::Stream { chunks: 3, chunk_delay: Duration::from_millis(30) });
    let mut resp = post(&mock, "/chat/completions", &json!({"model": "gpt-x", "stream": true})).await;
    let mut frames = 0;
    while let Some(bytes) = resp.chunk().await.unwrap() {
        assert!(!bytes.is_empty());
        frames += 1;
    }
    assert_eq!(frames, 4, "3 chunks + [DONE], one frame each");
}

#[tokio::test]
async fn scripted_status_then_back_to_default() {
    let mock = MockUpstream::start(&[KEY]).await;
    mock.push(Reply::Status { status: 429, retry_after: Some("7".into()), body: None });
    mock.push(Reply::status(503));
    mock.push(Reply::Status { status: 500, retry_after: None, body: Some(r#"{"custom":true}"#.into()) });

    let resp = chat(&mock).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"]["message"].is_string());

    let resp = chat(&mock).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("retry-after").is_none());

    let resp = chat(&mock).await;
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.text().await.unwrap(), r#"{"custom":true}"#);

    assert_eq!(mock.pending_replies(), 0);
    assert_eq!(chat(&mock).await.status(), 200);
    assert_eq!(mock.served(), 1);
    let statuses: Vec<u16> = mock.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, [429, 503, 500, 200]);

    // A new default applies once the queue is empty.
    mock.set_default(Reply::status(502));
    assert_eq!(chat(&mock).await.status(), 502);
    assert_eq!(chat(&mock).await.status(), 502);
}

#[tokio::test]
async fn drop_and_drop_mid_stream_cut_the_connection() {
    let mock = MockUpstream::start(&[KEY]).await;
    mock.push(Reply::Drop);
    let err = client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .bearer_auth(KEY)
        .json(&json!({"model": "gpt-x"}))
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_timeout(), "{err}");

    mock.push(Reply::DropMidStream { after_chunks: 2 });
    let mut resp = post(&mock, "/chat/completions", &json!({"model": "gpt-x", "stream": true})).await;
    assert_eq!(resp.status(), 200);
    let mut received = Vec::new();
    let err = loop {
        match resp.chunk().await {
            Ok(Some(bytes)) => received.extend_from_slice(&bytes),
            Ok(None) => panic!("stream ended cleanly"),
            Err(e) => break e,
        }
    };
    assert!(!err.is_timeout(), "{err}");
    let events = sse_data(std::str::from_utf8(&received).unwrap());
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(!events.iter().any(|e| e == "[DONE]"));

    // The server is still fine afterwards.
    assert_eq!(chat(&mock).await.status(), 200);
    let statuses: Vec<u16> = mock.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, [0, 200, 200]);
}

#[tokio::test]
async fn hang_and_latency() {
    let mock = MockUpstream::start(&[KEY]).await;
    mock.push(Reply::Hang);
    let err = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap()
        .post(format!("{}/chat/completions", mock.base_url()))
        .bearer_auth(KEY)
        .json(&json!({"model": "gpt-x"}))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");

    mock.set_latency(Duration::from_millis(50));
    mock.push_with_latency(Reply::Ok, Duration::from_millis(50));
    let started = std::time::Instant::now();
    assert_eq!(chat(&mock).await.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn own_rpm_limit_is_a_strict_sliding_window() {
    let mock = MockUpstream::start(&[KEY]).await;
    let window = Duration::from_millis(500);
    mock.set_rpm_limit(3, window);
    for _ in 0..3 {
        assert_eq!(chat(&mock).await.status(), 200);
    }
    let resp = chat(&mock).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(mock.violations(), 1);
    assert_eq!(mock.served(), 3);

    tokio::time::sleep(window + Duration::from_millis(50)).await;
    for _ in 0..3 {
        assert_eq!(chat(&mock).await.status(), 200);
    }
    assert_eq!(mock.violations(), 1);
    assert_eq!(mock.served(), 6);
}

#[tokio::test]
async fn records_calls() {
    let mock = MockUpstream::start(&[KEY]).await;
    let resp = client()
        .post(format!("{}/chat/completions?x=1", mock.base_url()))
        .bearer_auth(KEY)
        .header("x-custom", "abc")
        .json(&json!({"model": "gpt-x", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    client().get(format!("{}/models", mock.base_url())).send().await.unwrap();

    let calls = mock.calls();
    assert_eq!(calls.len(), 2);
    let call = &calls[0];
    assert_eq!(call.method, "POST");
    assert_eq!(call.path, "/v1/chat/completions");
    assert_eq!(call.status, 200);
    assert_eq!(call.header("X-Custom").as_deref(), Some("abc"));
    assert_eq!(call.authorization.as_deref(), Some("Bearer sk-test-0123456789"));
    assert_eq!(call.header("authorization"), Some(format!("Bearer {KEY}")));
    assert_eq!(call.json(), json!({"model": "gpt-x", "messages": []}));
    assert_eq!(calls[1].path, "/v1/models");
    assert_eq!(calls[1].status, 401);
    assert_eq!(calls[1].json(), Value::Null);
    assert!(calls[1].at >= call.at);

    assert_eq!(mock.calls_to("/v1/chat/completions").len(), 1);
    assert_eq!(mock.calls_to("/v1/embeddings").len(), 0);
    mock.reset();
    assert!(mock.calls().is_empty());
    assert_eq!(mock.served(), 0);
}

#[tokio::test]
async fn serves_h2c_prior_knowledge_and_stops() {
    let mock = MockUpstream::start(&[KEY]).await;
    let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let req = hyper::Request::post(format!("{}/chat/completions", mock.base_url()))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json!({"model": "gpt-x", "stream": true}).to_string())))
        .unwrap();
    let resp = h2.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let events = sse_data(std::str::from_utf8(&body).unwrap());
    assert_eq!(events.len(), 6, "{events:?}");
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_eq!(mock.calls()[0].authorization, Some(format!("Bearer {KEY}")));

    let base = mock.base_url();
    let clone = mock.clone();
    drop(mock);
    // A clone keeps it alive.
    assert_eq!(chat(&clone).await.status(), 200);
    clone.stop();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let err = client().get(format!("{base}/models")).send().await.unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err}");
}
