//! OpenTelemetry traces end to end: a proxy and a control plane export to an OTLP/HTTP
//! receiver in this test, which decodes the spans. One span per proxied request continues
//! the client's `traceparent`, carries the backend, pool, canonical model, attempts,
//! priority, queue wait, status and tokens, and has a child span per upstream attempt;
//! the provider receives the attempt's context; the control plane traces config writes
//! and snapshot pushes.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, routing::post};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, any_value::Value},
    trace::v1::Span,
};
use prost::Message;
use sidecar_proto::v1 as pb;
use sidecar_tests::{Gateway, MockUpstream, Options, ProxyOptions, Reply, eventually, gateway::BackendDef};

type Spans = Arc<Mutex<Vec<(String, Span)>>>;

/// An OTLP/HTTP receiver: every exported span, with its service's name.
async fn receiver() -> (String, Spans) {
    async fn traces(State(spans): State<Spans>, body: Bytes) -> &'static str {
        let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
        for resource in request.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| text(a.value.as_ref()))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.lock().unwrap().push((service.clone(), span));
                }
            }
        }
        ""
    }
    let spans: Spans = Arc::default();
    let app = Router::new().route("/v1/traces", post(traces)).with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, spans)
}

fn text(v: Option<&AnyValue>) -> Option<String> {
    match v?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes.iter().filter_map(|a| Some((a.key.clone(), text(a.value.as_ref())?))).collect()
}

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxied_request_is_one_span_continuing_the_clients_trace_with_a_child_per_attempt() {
    let (collector, spans) = receiver().await;
    let otlp = vec![("SIDECAR_OTLP_ENDPOINT".to_string(), collector)];
    let x = MockUpstream::start(&[]).await;
    let y = MockUpstream::start(&[]).await;
    let cp = Options { env: otlp.clone(), ..Options::default() };
    let mut gw = Gateway::start_fleet(cp, ProxyOptions { env: otlp, ..Default::default() }).await;
    gw.settings(pb::SettingsPatch {
        near_recovery_wait_seconds: Some(0),
        emergency_fraction: Some(0.0),
        ..Default::default()
    })
    .await;
    let xb = gw.add_backend(&x, BackendDef { name: "x", ..Default::default() }).await;
    let yb = gw.add_backend(&y, BackendDef { name: "y", pool: "fallback", ..Default::default() }).await;

    // x answers 429: the request moves to y.
    x.push(Reply::status(429));
    let traceparent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let body = serde_json::json!({"model": "gpt-test", "messages": []});
    let headers = [("traceparent", traceparent.as_str()), ("tracestate", "vendor=opaque"), ("x-priority", "high")];
    let resp = gw.proxy.post("/chat/completions", &body, &headers).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["x-sidecar-attempts"], "2");
    let _ = resp.bytes().await;
    // Each provider saw the trace, under a span of the proxy's (not the client's).
    let sent = |mock: &MockUpstream| {
        let call = mock.calls_to("/v1/chat/completions").pop().expect("a call");
        // The caller's tracestate travels on with the trace.
        assert_eq!(call.headers["tracestate"], "vendor=opaque");
        call.headers["traceparent"].to_str().unwrap().to_owned()
    };
    let (to_x, to_y) = (sent(&x), sent(&y));
    for tp in [&to_x, &to_y] {
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!((parts.len(), parts[1]), (4, TRACE), "{tp}");
        assert_ne!(parts[2], CLIENT_SPAN, "{tp}");
    }

    // Stopping flushes what is buffered.
    gw.proxy.stop().await;
    gw.cp.stop().await;
    let all = eventually("the spans exported", Duration::from_secs(10), || {
        let spans = spans.clone();
        async move {
            let all = spans.lock().unwrap().clone();
            let proxy = all.iter().filter(|(s, _)| s == "sidecar-proxy").count();
            (proxy >= 3 && all.iter().any(|(s, _)| s == "sidecar-control")).then_some(all)
        }
    })
    .await;
    let hex = hex::encode;
    let request = all.iter().map(|(_, s)| s).find(|s| s.name == "/v1/chat/completions").expect("the request's span");
    assert_eq!(hex(&request.trace_id), TRACE);
    assert_eq!(hex(&request.parent_span_id), CLIENT_SPAN, "continues the client's span");
    let a = attributes(request);
    let expected = [
        ("gen_ai.request.model", "gpt-test"),
        ("sidecar.backend", yb.id.as_str()),
        ("sidecar.pool", "fallback"),
        ("sidecar.attempts", "2"),
        ("sidecar.priority", "high"),
        ("http.response.status_code", "200"),
        ("gen_ai.usage.input_tokens", "10"),
        ("gen_ai.usage.output_tokens", "5"),
    ];
    for (key, value) in expected {
        assert_eq!(a.get(key).map(String::as_str), Some(value), "{key} in {a:?}");
    }
    assert!(a.get("sidecar.queue_wait_ms").is_some_and(|w| w.parse::<f64>().unwrap() >= 0.0), "{a:?}");

    let mut attempts: Vec<&Span> = all.iter().map(|(_, s)| s).filter(|s| s.name == "upstream attempt").collect();
    attempts.sort_by_key(|s| attributes(s)["sidecar.attempt"].parse::<u32>().unwrap());
    assert_eq!(attempts.len(), 2);
    for (span, (backend, status, sent)) in attempts.iter().zip([(&xb.id, "429", &to_x), (&yb.id, "200", &to_y)]) {
        let a = attributes(span);
        assert_eq!(span.parent_span_id, request.span_id, "a child of the request's span");
        assert_eq!(
            (a["sidecar.backend"].as_str(), a["http.response.status_code"].as_str()),
            (backend.as_str(), status)
        );
        assert!(sent.contains(&hex(&span.span_id)), "the provider got this attempt's context: {sent}");
    }
    assert_eq!(attributes(attempts[0]).get("error.type").map(String::as_str), Some("429"));

    // The control plane traced its config writes and the snapshots it pushed.
    let writes: Vec<HashMap<String, String>> =
        all.iter().filter(|(_, s)| s.name == "config write").map(|(_, s)| attributes(s)).collect();
    assert!(writes.iter().any(|a| a.get("sidecar.action").map(String::as_str) == Some("CreateBackend")), "{writes:?}");
    assert!(all.iter().any(|(_, s)| s.name == "snapshot push"));
}
