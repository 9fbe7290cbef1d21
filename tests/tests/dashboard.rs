//! The live dashboard stream and backend health from active probes.

use std::time::Duration;

use sidecar_proto::v1 as pb;
use sidecar_tests::{Gateway, MockUpstream, eventually, gateway::BackendDef};

async fn next(s: &mut tonic::Streaming<pb::Dashboard>) -> pb::Dashboard {
    tokio::time::timeout(Duration::from_secs(5), s.message()).await.expect("a dashboard within 5 s").unwrap().unwrap()
}

#[tokio::test]
async fn watchers_get_one_shared_dashboard_per_second_with_live_figures() {
    let mock = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start().await;
    let b = gw.add_backend(&mock, BackendDef { name: "live", rpm: 120, ..Default::default() }).await;
    for _ in 0..3 {
        assert_eq!(gw.proxy.chat("gpt-test").await.status(), 200);
    }
    let mut first = gw.admin.watch_dashboard(pb::WatchDashboardRequest {}).await.unwrap().into_inner();
    let mut second = gw.cp.admin().await.watch_dashboard(pb::WatchDashboardRequest {}).await.unwrap().into_inner();
    let d1 = next(&mut first).await;
    let d2 = next(&mut first).await;
    assert!(d2.at_ms > d1.at_ms, "one per second");
    assert!(d2.at_ms - d1.at_ms >= 500 && d2.at_ms - d1.at_ms <= 2000, "{}", d2.at_ms - d1.at_ms);
    let other = next(&mut second).await;
    assert!(other.at_ms == d1.at_ms || other.at_ms == d2.at_ms, "watchers share the computed dashboard");
    assert_eq!(d2.nodes_connected, 1);
    assert_eq!(d2.config_version, gw.proxy.version());
    let live = d2.backends.iter().find(|x| x.id == b.id).unwrap();
    assert_eq!((live.status(), live.rpm_limit, live.pool.as_str()), (pb::BackendStatus::Healthy, 120, "primary"));
    let primary = d2.pools.iter().find(|p| p.name == "primary").unwrap();
    assert_eq!(primary.healthy, 1);
    // Reports arrive within a second or two; the 24-hour totals refresh every 30 s, so
    // look for the per-backend live data the proxies report (window use).
    let mut d = next(&mut first).await;
    for _ in 0..10 {
        if d.backends.iter().any(|x| x.in_window >= 3) {
            break;
        }
        d = next(&mut first).await;
    }
    assert!(d.backends.iter().any(|x| x.in_window >= 3), "window use reported by the proxy: {d:?}");
    assert!(d.backends[0].bucket_fill >= 0.0 && d.backends[0].bucket_fill <= 1.0);

    // A viewer may watch; no token may not.
    let mut none = gw.cp.admin_as(None).await;
    assert_eq!(
        none.watch_dashboard(pb::WatchDashboardRequest {}).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
}

#[tokio::test]
async fn a_backend_whose_probe_is_refused_turns_error_and_gets_no_traffic() {
    let good = MockUpstream::start(&["sk-good-0123456789"]).await;
    let spare = MockUpstream::start(&[]).await;
    let mut gw = Gateway::start().await;
    gw.settings(pb::SettingsPatch {
        probe_interval_seconds: Some(1),
        probe_timeout_seconds: Some(2),
        ..Default::default()
    })
    .await;
    // The key is wrong for this upstream: the probe gets 401.
    let bad =
        gw.add_backend(&good, BackendDef { name: "bad-key", key: "sk-wrong-0123456789", ..Default::default() }).await;
    gw.add_backend(&spare, BackendDef { name: "spare", pool: "fallback", ..Default::default() }).await;
    let view = eventually("probe marks it error", Duration::from_secs(10), || {
        let mut admin = gw.admin.clone();
        let id = bad.id.clone();
        async move {
            let b = admin.get_backend(pb::GetBackendRequest { id }).await.ok()?.into_inner();
            (b.status() == pb::BackendStatus::Error).then_some(b)
        }
    })
    .await;
    assert_eq!(view.status(), pb::BackendStatus::Error);
    let audit = gw.admin.list_audit(pb::ListAuditRequest::default()).await.unwrap().into_inner().entries;
    assert!(audit.iter().any(|e| e.action == "HealthChange" && e.target.contains(&bad.id)), "{audit:?}");
    let version = gw.admin.get_config_version(pb::GetConfigVersionRequest {}).await.unwrap().into_inner().version;
    gw.proxy.wait_version(version).await;
    let calls = good.calls_to("/v1/chat/completions").len();
    let resp = gw.proxy.chat("gpt-test").await;
    assert_eq!(resp.headers()["x-sidecar-backend"], "spare", "health drives routing");
    assert_eq!(good.calls_to("/v1/chat/completions").len(), calls);
    assert!(!good.calls_to("/v1/models").is_empty(), "the control plane probed GET /models");
}
