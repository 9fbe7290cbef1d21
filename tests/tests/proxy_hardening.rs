//! The proxy against bad clients: bodies that trickle in, bodies declared too large,
//! more connections than it can hold (while the ops port keeps answering), and client
//! model names that must not become usage keys.

use std::time::Duration;

use sidecar_tests::{Gateway, MockUpstream, ProxyOptions, eventually, gateway::BackendDef};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn options(env: &[(&str, &str)]) -> ProxyOptions {
    ProxyOptions { env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..Default::default() }
}

/// Reads until the proxy closes the connection (or 10 s pass, which fails the test).
async fn read_until_closed(conn: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .expect("the proxy closes the connection")
        .unwrap_or_default();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_body_that_trickles_in_is_cut_off_with_408_and_the_connection_closed() {
    let gw = Gateway::start_with(options(&[("SIDECAR_BODY_TIMEOUT", "1")])).await;
    let mut slow = TcpStream::connect(gw.proxy.addr).await.unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: sidecar\r\nContent-Length: 1000\r\n\r\n{")
        .await
        .unwrap();
    let (mut read, mut write) = slow.into_split();
    // One byte every 200 ms: never done within the body timeout.
    let trickle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        for _ in 0..100 {
            tick.tick().await;
            if write.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let mut reader = read_until_closed(&mut read).await;
    trickle.abort();
    assert!(reader.starts_with("HTTP/1.1 408"), "{reader}");
    assert!(reader.to_ascii_lowercase().contains("connection: close"), "{reader}");
    let body = reader.split_off(reader.find("\r\n\r\n").unwrap() + 4);
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(error["error"]["message"].as_str().unwrap().contains("SIDECAR_BODY_TIMEOUT"), "{body}");
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_before_any_body_byte() {
    // The body timeout is long: the answer must not wait for it.
    let gw = Gateway::start_with(options(&[("SIDECAR_BODY_TIMEOUT", "600")])).await;
    let mut conn = TcpStream::connect(gw.proxy.addr).await.unwrap();
    conn.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: sidecar\r\nContent-Length: 1000000000000\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut conn).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("larger than the limit of 10485760 bytes"), "{answer}");
}

async fn metric(gw: &Gateway, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", gw.proxy.ops_addr)).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).map(|v| v.parse().unwrap()))
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
}

#[tokio::test]
async fn past_the_connection_cap_new_connections_are_closed_and_the_ops_port_still_answers() {
    let mock = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start_with(options(&[("SIDECAR_MAX_CONNECTIONS", "8")])).await;
    gw.add_backend(&mock, BackendDef::default()).await;
    // Eight clients that send half a request and wait: the API port is at its cap.
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut conn = TcpStream::connect(gw.proxy.addr).await.unwrap();
        conn.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: sidecar\r\n").await.unwrap();
        held.push(conn);
    }
    eventually("eight connections open", Duration::from_secs(10), || async {
        (metric(&gw, "sidecar_connections_open").await == 8.0).then_some(())
    })
    .await;
    assert_eq!(metric(&gw, "sidecar_connections_max").await, 8.0);

    // The ninth is closed at once, without an answer.
    let mut ninth = TcpStream::connect(gw.proxy.addr).await.unwrap();
    let _ = ninth.write_all(b"GET /v1/models HTTP/1.1\r\nHost: sidecar\r\n\r\n").await;
    assert_eq!(read_until_closed(&mut ninth).await, "", "closed without serving");
    assert!(metric(&gw, "sidecar_connections_rejected_total").await >= 1.0);

    // The ops port answers while the API port is full.
    for path in ["/health", "/health/ready", "/status", "/metrics"] {
        let r = reqwest::get(format!("http://{}{path}", gw.proxy.ops_addr)).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }

    // A slot freed is a slot served.
    drop(held.pop());
    eventually("a slot frees", Duration::from_secs(10), || async {
        (metric(&gw, "sidecar_connections_open").await == 7.0).then_some(())
    })
    .await;
    assert_eq!(gw.proxy.chat("gpt-test").await.status(), 200);
}

#[tokio::test]
async fn model_names_no_backend_serves_are_accounted_under_one_key() {
    let mock = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start().await;
    gw.add_backend(&mock, BackendDef::default()).await;
    for i in 0..20 {
        assert_eq!(gw.proxy.chat(&format!("random-model-{i}")).await.status(), 404);
    }
    assert_eq!(gw.proxy.chat("gpt-test").await.status(), 200);
    gw.proxy.stop().await;
    gw.cp.stop().await;
    let store = sidecar_control_plane::store::Store::open(&gw.cp.data_dir).unwrap();
    let mut models: Vec<String> = store.usage_minutes(0, i64::MAX).unwrap().into_iter().map(|r| r.2).collect();
    models.sort();
    models.dedup();
    assert_eq!(models, ["(unrouted)", "gpt-test"], "no client-chosen names among the usage keys");
    let unrouted: u64 =
        store.usage_minutes(0, i64::MAX).unwrap().iter().filter(|r| r.2 == "(unrouted)").map(|r| r.3.answered).sum();
    assert_eq!(unrouted, 20, "each refused request is still counted");
}

#[tokio::test]
async fn every_documented_metric_is_exported_from_the_start_and_every_exported_one_is_documented() {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/proxy.md")).unwrap();
    let mut documented: Vec<&str> = docs
        .match_indices("`sidecar_")
        .map(|(at, _)| &docs[at + 1..])
        .map(|rest| &rest[..rest.find('`').unwrap()])
        .collect();
    documented.sort();
    documented.dedup();
    assert!(documented.len() > 20, "{documented:?}");

    let mock = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start().await;
    // A model with its own limit, so the per-model gauges have a series.
    gw.add_backend(&mock, BackendDef { model_limits: &[("gpt-test", 600)], ..BackendDef::default() }).await;
    // One request, so per-backend histograms have a series; nothing is dropped, rejected
    // or retried, and those counters must be there anyway.
    assert_eq!(gw.proxy.chat("gpt-test").await.status(), 200);
    let text = reqwest::get(format!("http://{}/metrics", gw.proxy.ops_addr)).await.unwrap().text().await.unwrap();
    let exported: Vec<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).map(|l| l.split(' ').next().unwrap()).collect();
    for name in &documented {
        assert!(exported.contains(name), "{name} is documented but not exported:\n{text}");
    }
    for name in &exported {
        assert!(documented.contains(name), "{name} is exported but not in docs/proxy.md");
    }
    for zero in [
        "sidecar_report_outbox_dropped_total 0",
        "sidecar_usage_events_dropped_total 0",
        "sidecar_connections_rejected_total 0",
        "sidecar_report_batches_rejected_total 0",
        "sidecar_queue_rejected_total{priority=\"low\",reason=\"timeout\"} 0",
        "sidecar_retries_total{reason=\"429\"} 0",
    ] {
        assert!(text.lines().any(|l| l == zero), "missing `{zero}`:\n{text}");
    }
}
