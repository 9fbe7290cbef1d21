//! Tests of the mock upstream's Anthropic Messages and OpenAI Responses routes (the wire
//! formats of `notes/wire.md`).

use std::time::Duration;

use serde_json::{Value, json};
use sidecar_tests::{MockUpstream, mock::Reply};

const KEY: &str = "sk-test-0123456789";
const ANTHROPIC_VERSION: &str = "2023-06-01";

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

/// An Anthropic call: `x-api-key` and `anthropic-version` set.
async fn anthropic(mock: &MockUpstream, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", mock.base_url()))
        .header("x-api-key", KEY)
        .header("anthropic-version", ANTHROPIC_VERSION)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn messages(mock: &MockUpstream, stream: bool) -> reqwest::Response {
    anthropic(
        mock,
        "/messages",
        &json!({
            "model": "claude-x",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": stream,
        }),
    )
    .await
}

async fn responses(mock: &MockUpstream, body: &Value) -> reqwest::Response {
    client().post(format!("{}/responses", mock.base_url())).bearer_auth(KEY).json(body).send().await.unwrap()
}

/// Splits a body of named SSE events into `(event name, data)`.
fn sse_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').expect("an event line and a data line");
            let name = name.strip_prefix("event: ").expect("event line");
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").expect("data line")).unwrap();
            (name.to_owned(), data)
        })
        .collect()
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(name, _)| name.as_str()).collect()
}

fn anthropic_usage() -> Value {
    json!({"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 2, "cache_read_input_tokens": 4})
}

fn responses_usage() -> Value {
    json!({
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 4},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 2},
        "total_tokens": 15,
    })
}

#[tokio::test]
async fn anthropic_message_and_token_count() {
    let mock = MockUpstream::start(&[]).await;

    let resp = messages(&mock, false).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "claude-x");
    assert_eq!(body["content"], json!([{"type": "text", "text": "Hello from the mock upstream."}]));
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["stop_sequence"], Value::Null);
    assert_eq!(body["usage"], anthropic_usage());

    // count_tokens never streams.
    let resp =
        anthropic(&mock, "/messages/count_tokens", &json!({"model": "claude-x", "messages": [], "stream": true})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"input_tokens": 10}));

    assert_eq!(mock.served(), 2);
    let calls = mock.calls_to("/v1/messages");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].header("x-api-key").as_deref(), Some(KEY));
    assert_eq!(calls[0].status, 200);
    assert_eq!(mock.calls_to("/v1/messages/count_tokens").len(), 1);
}

#[tokio::test]
async fn anthropic_stream_is_the_event_sequence() {
    let mock = MockUpstream::start(&[]).await;
    let resp = messages(&mock, true).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = sse_events(&resp.text().await.unwrap());
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(["content_block_delta"; 5]);
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names(&events), expected);
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str(), "{data}");
    }
    let start = &events[0].1["message"];
    assert_eq!(start["model"], "claude-x");
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["usage"]["input_tokens"], 10);
    assert_eq!(start["usage"]["output_tokens"], 1);
    assert_eq!(start["usage"]["cache_creation_input_tokens"], 2);
    assert_eq!(start["usage"]["cache_read_input_tokens"], 4);
    let text: String = events[3..8].iter().map(|(_, d)| d["delta"]["text"].as_str().unwrap()).collect();
    assert_eq!(text, "tok0 tok1 tok2 tok3 tok4 ");
    assert_eq!(events[9].1["delta"]["stop_reason"], "end_turn");
    assert_eq!(events[9].1["usage"], json!({"output_tokens": 5}));

    // A scripted stream: one frame per event.
    mock.push(Reply::Stream { chunks: 2, chunk_delay: Duration::from_millis(30) });
    let mut resp = messages(&mock, false).await;
    let mut frames = 0;
    let mut body = Vec::new();
    while let Some(bytes) = resp.chunk().await.unwrap() {
        frames += 1;
        body.extend_from_slice(&bytes);
    }
    let events = sse_events(std::str::from_utf8(&body).unwrap());
    assert_eq!(events.len(), 3 + 2 + 3);
    assert_eq!(frames, events.len(), "one frame per event");
}

#[tokio::test]
async fn anthropic_errors_are_anthropic_shaped() {
    let mock = MockUpstream::start(&[]).await;

    // No x-api-key (a bearer key does not do).
    let resp = client()
        .post(format!("{}/messages", mock.base_url()))
        .bearer_auth(KEY)
        .header("anthropic-version", ANTHROPIC_VERSION)
        .json(&json!({"model": "claude-x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})
    );

    // No anthropic-version.
    let resp = client()
        .post(format!("{}/messages", mock.base_url()))
        .header("x-api-key", KEY)
        .json(&json!({"model": "claude-x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(mock.pending_replies(), 0);

    // Scripted statuses.
    mock.push(Reply::Status { status: 529, retry_after: Some("3".into()), body: None });
    mock.push(Reply::status(500));
    mock.push(Reply::Status { status: 503, retry_after: None, body: Some(r#"{"custom":true}"#.into()) });
    let resp = messages(&mock, false).await;
    assert_eq!(resp.status(), 529);
    assert_eq!(resp.headers()["retry-after"], "3");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "overloaded_error");
    assert!(body["error"]["message"].is_string());
    let body: Value = messages(&mock, false).await.json().await.unwrap();
    assert_eq!(body["error"]["type"], "api_error");
    assert_eq!(messages(&mock, false).await.text().await.unwrap(), r#"{"custom":true}"#);

    let statuses: Vec<u16> = mock.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, [401, 400, 529, 500, 503]);

    // The mock's own limits (the scripted calls above were admitted: start afresh).
    mock.reset_all();
    mock.set_rpm_limit(1, Duration::from_secs(60));
    assert_eq!(messages(&mock, false).await.status(), 200);
    let resp = messages(&mock, false).await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_some());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(mock.violations(), 1);

    mock.clear_rpm_limit();
    mock.set_model_limit("claude-x", 1, Duration::from_secs(60));
    let resp = anthropic(&mock, "/messages/count_tokens", &json!({"model": "claude-x", "messages": []})).await;
    assert_eq!(resp.status(), 200);
    let resp = messages(&mock, false).await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_some());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(mock.model_violations("claude-x"), 1);
}

#[tokio::test]
async fn anthropic_drop_mid_stream_cuts_after_the_opening_and_the_chunks() {
    let mock = MockUpstream::start(&[]).await;
    mock.push(Reply::DropMidStream { after_chunks: 2 });
    let mut resp = messages(&mock, true).await;
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
    let events = sse_events(std::str::from_utf8(&received).unwrap());
    assert_eq!(
        names(&events),
        ["message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta"]
    );
}

#[tokio::test]
async fn responses_are_stored_retrieved_chained_and_deleted() {
    let mock = MockUpstream::start(&[]).await;
    let port = mock.addr.port();

    let resp = responses(&mock, &json!({"model": "gpt-r", "input": "hello"})).await;
    assert_eq!(resp.status(), 200);
    let first: Value = resp.json().await.unwrap();
    let id = first["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("resp_"), "{id}");
    assert_eq!(id, format!("resp_{port}_1"));
    assert_eq!(first["object"], "response");
    assert_eq!(first["status"], "completed");
    assert_eq!(first["model"], "gpt-r");
    assert_eq!(first["previous_response_id"], Value::Null);
    assert_eq!(first["output"][0]["type"], "message");
    assert_eq!(first["output"][0]["id"], format!("msg_{port}_1"));
    assert_eq!(first["output"][0]["content"][0]["text"], "Hello from the mock upstream.");
    assert_eq!(first["usage"], responses_usage());
    assert_eq!(mock.response_ids(), std::slice::from_ref(&id));

    // Fetched back.
    let got = client().get(format!("{}/responses/{id}", mock.base_url())).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.json::<Value>().await.unwrap(), first);

    // A follow-up of a response this mock never produced.
    let resp = responses(&mock, &json!({"model": "gpt-r", "input": "and?", "previous_response_id": "resp_x"})).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "previous_response_not_found");
    assert_eq!(body["error"]["param"], "previous_response_id");
    assert_eq!(body["error"]["message"], "Previous response with id 'resp_x' not found.");

    // A follow-up of one it did.
    let resp = responses(&mock, &json!({"model": "gpt-r", "input": "and?", "previous_response_id": id})).await;
    assert_eq!(resp.status(), 200);
    let second: Value = resp.json().await.unwrap();
    assert_eq!(second["previous_response_id"], id.as_str());
    let second_id = second["id"].as_str().unwrap().to_owned();
    assert_eq!(second_id, format!("resp_{port}_2"));

    // Deleted, then gone.
    let resp = client().delete(format!("{}/responses/{id}", mock.base_url())).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"id": id, "object": "response.deleted", "deleted": true}));
    let resp = client().get(format!("{}/responses/{id}", mock.base_url())).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["message"], format!("Response with id '{id}' not found."));
    let resp = client().delete(format!("{}/responses/{id}", mock.base_url())).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(resp.status(), 404);

    // Cancelled.
    let resp = client()
        .post(format!("{}/responses/{second_id}/cancel", mock.base_url()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["status"], "cancelled");

    // The stored-response routes check the key and their methods, and are not "served".
    let resp = client().get(format!("{}/responses/{second_id}", mock.base_url())).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp =
        client().post(format!("{}/responses/{second_id}", mock.base_url())).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(mock.served(), 2);
    assert_eq!(mock.response_ids(), [id, second_id]);
}

#[tokio::test]
async fn responses_stream_is_the_event_sequence() {
    let mock = MockUpstream::start(&[]).await;
    let resp = responses(&mock, &json!({"model": "gpt-r", "input": "hello", "stream": true})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let body = resp.text().await.unwrap();
    assert!(!body.contains("[DONE]"));
    let events = sse_events(&body);
    let mut expected =
        vec!["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"];
    expected.extend(["response.output_text.delta"; 5]);
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(names(&events), expected);
    for (k, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], name.as_str(), "{data}");
        assert_eq!(data["sequence_number"], k as u64, "{data}");
    }
    for (_, data) in &events[..2] {
        assert_eq!(data["response"]["status"], "in_progress");
        assert_eq!(data["response"]["usage"], Value::Null);
    }
    let completed = &events.last().unwrap().1["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["usage"], responses_usage());
    assert_eq!(completed["output"][0]["content"][0]["text"], "tok0 tok1 tok2 tok3 tok4 ");
    let id = completed["id"].as_str().unwrap();
    assert!(id.starts_with("resp_"), "{id}");
    assert_eq!(events[0].1["response"]["id"], id);
    assert_eq!(mock.response_ids(), [id.to_owned()]);

    // The streamed response is stored too.
    let got = client().get(format!("{}/responses/{id}", mock.base_url())).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(&got.json::<Value>().await.unwrap(), completed);

    // Scripted statuses are OpenAI-shaped here.
    mock.push(Reply::too_many_requests(2));
    let resp = responses(&mock, &json!({"model": "gpt-r", "input": "hello"})).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "2");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(mock.response_ids().len(), 1);
}
