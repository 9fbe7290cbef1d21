//! Every metric the Grafana dashboard (deploy/grafana/sidecar.json) queries exists on a
//! live proxy's or control plane's `/metrics` after ordinary traffic: a dashboard over
//! names the binaries do not export shows empty panels, and nobody notices until an
//! incident. The list is `deploy/grafana/panel_metrics.txt`, which deploy/tests/test_deploy.py
//! keeps equal to what the dashboard's queries name. Alone in its binary: the metrics
//! recorder is process-wide.

use std::{collections::BTreeSet, time::Duration};

use sidecar_proto::v1 as pb;
use sidecar_tests::{Gateway, MockUpstream, Reply, eventually, gateway::BackendDef, proxy::chat_body};

/// The metric names in a Prometheus text exposition.
fn names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

async fn scrape(addr: std::net::SocketAddr) -> BTreeSet<String> {
    let text = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    names(&text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exported() {
    let wanted: Vec<String> =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/panel_metrics.txt"))
            .expect("deploy/grafana/panel_metrics.txt")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
    assert!(wanted.len() > 20, "the list is read: {wanted:?}");

    // Ordinary traffic: a backend with a model of its own limit, requests plain and
    // streamed, one that waits in the queue, a 429 that cools the backend, usage reports.
    let mock = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start().await;
    let models = [("gpt-test", "native-gpt")];
    gw.add_backend(
        &mock,
        BackendDef { rpm: 2, models: &models, model_limits: &[("gpt-test", 2)], ..Default::default() },
    )
    .await;
    assert_eq!(gw.proxy.chat("gpt-test").await.status().as_u16(), 200);
    let streamed = gw.proxy.post("/chat/completions", &chat_body("gpt-test", true), &[]).await;
    assert_eq!(streamed.status().as_u16(), 200);
    streamed.bytes().await.unwrap();
    // The third request of a 2 RPM backend waits in the queue until it gives up.
    gw.settings(pb::SettingsPatch { queue_timeout_seconds: Some(1), ..Default::default() }).await;
    assert_eq!(gw.proxy.chat("gpt-test").await.status().as_u16(), 429);
    // A provider 429 on a second backend.
    let limited = MockUpstream::start(&[]).await;
    limited.push(Reply::Status { status: 429, retry_after: Some("30".into()), body: None });
    gw.add_backend(&limited, BackendDef { name: "c", rpm: 600, models: &[("other", "native")], ..Default::default() })
        .await;
    gw.proxy.chat("other").await;
    // A client key with a budget, used once: the control plane's top keys by spend and by
    // budget used have a series.
    let key = pb::CreateKeyRequest {
        name: "ops".into(),
        budget_usd: 1.0,
        budget_period: pb::BudgetPeriod::Day as i32,
        ..Default::default()
    };
    let key = gw.admin.create_key(key).await.unwrap().into_inner();
    gw.proxy.wait_version(key.config_version).await;
    // Answered or refused (the backend may be cooling), it is accounted under the key.
    gw.proxy.post("/chat/completions", &chat_body("other", false), &[("x-api-key", &key.secret)]).await;
    // Usage reached the control plane.
    let admin = gw.admin.clone();
    eventually("a report applied", Duration::from_secs(10), || {
        let mut admin = admin.clone();
        async move {
            let stats = admin.get_stats(pb::GetStatsRequest::default()).await.ok()?.into_inner();
            (stats.totals.is_some_and(|t| t.requests >= 4)).then_some(())
        }
    })
    .await;

    let exported: BTreeSet<String> =
        scrape(gw.proxy.ops_addr).await.union(&scrape(gw.cp.ops_addr).await).cloned().collect();
    let missing: Vec<&String> = wanted.iter().filter(|m| !exported.contains(*m)).collect();
    assert!(missing.is_empty(), "the dashboard queries metrics nobody exports: {missing:?}\nexported: {exported:?}");
}
