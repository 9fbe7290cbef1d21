//! Statistics end to end: real proxy traffic in two regions becomes minute, hour and day
//! rollups in the control plane, read back with GetStats (totals, per backend, grouped,
//! filtered, per granularity) and cooldown history with ListCooldowns.

use std::time::Duration;

use sidecar_control_plane::store::{CooldownRecord, Store};
use sidecar_proto::v1 as pb;
use sidecar_tests::{
    ControlPlaneHarness, Gateway, MockUpstream, ProxyHarness, ProxyOptions, Reply, eventually, gateway::BackendDef,
};
use tonic::Code;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn totals(t: &Option<pb::UsageTotals>) -> pb::UsageTotals {
    t.clone().expect("totals are always present")
}

/// (group label, requests) of every row, in the order the server sent them.
fn requests_by<F: Fn(&pb::StatsRow) -> String>(resp: &pb::GetStatsResponse, f: F) -> Vec<(String, u64)> {
    resp.rows.iter().map(|r| (f(r), totals(&r.totals).requests)).collect()
}

/// A dimension by name; an unknown name is a value no dimension has.
fn dim(name: &str) -> i32 {
    match name {
        "time" => pb::StatsDimension::Time as i32,
        "backend" => pb::StatsDimension::Backend as i32,
        "model" => pb::StatsDimension::Model as i32,
        "pool" => pb::StatsDimension::Pool as i32,
        "region" => pb::StatsDimension::Region as i32,
        "node" => pb::StatsDimension::Node as i32,
        _ => 99,
    }
}

/// A granularity by name ("auto" = unspecified); an unknown name is a value no
/// granularity has.
fn gran(name: &str) -> i32 {
    match name {
        "auto" => pb::Granularity::Unspecified as i32,
        "minute" => pb::Granularity::Minute as i32,
        "hour" => pb::Granularity::Hour as i32,
        "day" => pb::Granularity::Day as i32,
        _ => 99,
    }
}

fn group(by: &[&str]) -> pb::GetStatsRequest {
    pb::GetStatsRequest { group_by: by.iter().map(|s| dim(s)).collect(), ..Default::default() }
}

fn filtered(filter: pb::StatsFilter) -> pb::GetStatsRequest {
    pb::GetStatsRequest { filter: Some(filter), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_traffic_in_two_regions_is_counted_grouped_and_filtered() {
    let primary = MockUpstream::start(&[]).await;
    let spare = MockUpstream::start(&[]).await;
    let mut gw =
        Gateway::start_with(ProxyOptions { node_id: "proxy-eu".into(), region: "eu".into(), ..Default::default() })
            .await;
    // Enough burst that no request goes to the fallback for want of a token.
    gw.settings(pb::SettingsPatch { bucket_burst: Some(50), ..Default::default() }).await;
    let a = gw.add_backend(&primary, BackendDef { name: "a", cost: (0.001, 0.002), ..Default::default() }).await;
    let spare_backend = gw
        .add_backend(&spare, BackendDef { name: "spare", pool: "fallback", cost: (0.01, 0.01), ..Default::default() })
        .await;
    let us = ProxyHarness::start(
        &gw.cp.url(),
        &gw.cp.node_token,
        ProxyOptions { node_id: "proxy-us".into(), region: "us".into(), ..Default::default() },
    )
    .await;
    us.wait_version(gw.proxy.version()).await;

    // eu: 3 successes on `a`; us: 1 success on `a` (before any 429, so no cooldown is in
    // the way, and within the smallest share of the limit a new node gets); eu: a 429 on
    // `a` retried on the fallback; eu: an unknown model the proxy answers itself (404).
    for _ in 0..3 {
        assert_eq!(gw.proxy.chat("gpt-test").await.status(), 200);
    }
    // eu's burst is demand the fleet hears: us's share of `a` may shrink for a moment
    // (never to nothing, its floor stays); wait until it has a token for its request.
    eventually("us has a token for a", Duration::from_secs(10), || async {
        let bundle = us.shared.bundle.load();
        let b = bundle.backend(&a.id)?;
        (b.state.limiter.lock().unwrap().tokens(tokio::time::Instant::now()) >= 1.0).then_some(())
    })
    .await;
    let resp = us.chat("gpt-test").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-sidecar-backend"], "a");
    primary.push(Reply::too_many_requests(1));
    let resp = gw.proxy.chat("gpt-test").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-sidecar-backend"], "spare");
    assert_eq!(gw.proxy.chat("unknown-model").await.status(), 404);
    assert_eq!((primary.served(), spare.served()), (4, 1));
    assert_eq!(primary.calls_to("/v1/chat/completions").len(), 5);

    // Proxies flush reports every second.
    let admin = gw.admin.clone();
    let all = eventually("all reports applied", Duration::from_secs(15), || {
        let mut admin = admin.clone();
        async move {
            let resp = admin.get_stats(pb::GetStatsRequest::default()).await.unwrap().into_inner();
            (totals(&resp.totals).requests == 6).then_some(resp)
        }
    })
    .await;
    let t = totals(&all.totals);
    assert_eq!((t.requests, t.succeeded, t.errors, t.rate_limited, t.attempts), (6, 5, 1, 1, 6));
    assert_eq!((t.prompt_tokens, t.completion_tokens, t.total_tokens), (50, 25, 75));
    assert!((t.cost_usd - (4.0 * 0.02 + 0.15)).abs() < 1e-9, "cost {}", t.cost_usd);
    assert_eq!(t.latency_histogram.len(), 11);
    assert_eq!(t.latency_histogram.iter().sum::<u64>(), 6, "one entry per attempt");
    assert_eq!(all.granularity, gran("hour"), "24 h by default, per hour");
    assert!(all.rows.is_empty(), "no group_by: totals and by_backend only");

    // By backend, always present; the proxy's own answers have backend id "".
    let by_backend: Vec<_> = all
        .by_backend
        .iter()
        .map(|r| {
            let t = totals(&r.totals);
            (
                r.backend_id.as_str(),
                r.backend_name.as_str(),
                r.pool.as_str(),
                (t.requests, t.succeeded, t.errors, t.rate_limited, t.attempts),
            )
        })
        .collect();
    assert_eq!(
        by_backend,
        vec![
            ("", "", "", (1, 0, 1, 0, 0)),
            (a.id.as_str(), "a", "primary", (4, 4, 0, 1, 5)),
            (spare_backend.id.as_str(), "spare", "fallback", (1, 1, 0, 0, 1)),
        ]
    );

    // Grouped.
    let stats = |request: pb::GetStatsRequest| {
        let mut admin = gw.admin.clone();
        async move { admin.get_stats(request).await.unwrap().into_inner() }
    };
    let by_model = stats(group(&["model"])).await;
    assert_eq!(requests_by(&by_model, |r| r.model.clone()), vec![("(unrouted)".into(), 1), ("gpt-test".into(), 5)]);
    let by_node = stats(group(&["node"])).await;
    assert_eq!(requests_by(&by_node, |r| r.node_id.clone()), vec![("proxy-eu".into(), 5), ("proxy-us".into(), 1)]);
    let by_region = stats(group(&["region"])).await;
    assert_eq!(requests_by(&by_region, |r| r.region.clone()), vec![("eu".into(), 5), ("us".into(), 1)]);
    let by_pool = stats(group(&["pool"])).await;
    assert_eq!(
        requests_by(&by_pool, |r| r.pool.clone()),
        vec![("".into(), 1), ("fallback".into(), 1), ("primary".into(), 4)]
    );
    let by_backend_node = stats(group(&["backend", "node"])).await;
    assert_eq!(
        requests_by(&by_backend_node, |r| format!("{}@{}", r.backend_name, r.node_id)),
        vec![("@proxy-eu".into(), 1), ("a@proxy-eu".into(), 3), ("a@proxy-us".into(), 1), ("spare@proxy-eu".into(), 1),]
    );

    // Filtered: backends by name or id, any value within a dimension, all dimensions.
    let requests = |resp: pb::GetStatsResponse| totals(&resp.totals).requests;
    let cases: Vec<(pb::StatsFilter, u64)> = vec![
        (pb::StatsFilter { backends: vec!["a".into()], ..Default::default() }, 4),
        (pb::StatsFilter { backends: vec![spare_backend.id.clone()], ..Default::default() }, 1),
        (pb::StatsFilter { backends: vec!["a".into(), "spare".into()], ..Default::default() }, 5),
        (pb::StatsFilter { models: vec!["(unrouted)".into()], ..Default::default() }, 1),
        (pb::StatsFilter { pools: vec!["fallback".into()], ..Default::default() }, 1),
        (pb::StatsFilter { regions: vec!["us".into()], ..Default::default() }, 1),
        (pb::StatsFilter { nodes: vec!["proxy-eu".into()], ..Default::default() }, 5),
        (pb::StatsFilter { backends: vec!["a".into()], regions: vec!["eu".into()], ..Default::default() }, 3),
        (pb::StatsFilter { regions: vec!["ap".into()], ..Default::default() }, 0),
    ];
    for (filter, want) in cases {
        let got = requests(stats(filtered(filter.clone())).await);
        assert_eq!(got, want, "{filter:?}");
    }
    let only_us = stats(filtered(pb::StatsFilter { regions: vec!["us".into()], ..Default::default() })).await;
    assert_eq!(only_us.by_backend.len(), 1, "by_backend follows the filter");

    // Time buckets align to the granularity and together hold everything.
    let mut minutes = Vec::new();
    for (granularity, size) in [("minute", MINUTE_MS), ("hour", HOUR_MS), ("day", DAY_MS)] {
        let resp = stats(pb::GetStatsRequest {
            granularity: gran(granularity),
            group_by: vec![dim("time")],
            ..Default::default()
        })
        .await;
        assert_eq!(resp.granularity, gran(granularity));
        assert!(!resp.rows.is_empty());
        for row in &resp.rows {
            assert_eq!(row.bucket_ms % size, 0, "{granularity} bucket {}", row.bucket_ms);
            assert!(row.bucket_ms > resp.since_ms - size && row.bucket_ms < resp.until_ms);
        }
        let sum: u64 = resp.rows.iter().map(|r| totals(&r.totals).requests).sum();
        assert_eq!(sum, 6, "{granularity}");
        assert!(resp.rows.windows(2).all(|w| w[0].bucket_ms < w[1].bucket_ms));
        if granularity == "minute" {
            minutes = resp.rows;
        }
    }
    // A range from the last ms of the first busy minute to the first ms of the last one
    // covers both minutes whole: buckets overlapping the range are included.
    let (first, last) = (minutes[0].bucket_ms, minutes[minutes.len() - 1].bucket_ms);
    let since_ms = first + MINUTE_MS - 1;
    let overlapping = stats(pb::GetStatsRequest {
        since_ms,
        until_ms: (last + 1).max(since_ms + 1),
        granularity: gran("minute"),
        ..Default::default()
    })
    .await;
    assert_eq!(totals(&overlapping.totals).requests, 6);
    let now = now_ms();
    // `auto` follows the range's length.
    for (since, want) in [(HOUR_MS, "minute"), (3 * DAY_MS, "hour"), (30 * DAY_MS, "day")] {
        let resp = stats(pb::GetStatsRequest {
            since_ms: now - since,
            until_ms: now + 1,
            granularity: gran("auto"),
            ..Default::default()
        })
        .await;
        assert_eq!(resp.granularity, gran(want));
        assert_eq!(totals(&resp.totals).requests, 6, "{want}");
    }

    // Bad requests name the field.
    let mut admin = gw.admin.clone();
    for (request, field) in [
        (group(&["backend", "colour"]), "group_by[1]"),
        (pb::GetStatsRequest { granularity: gran("week"), ..Default::default() }, "granularity"),
        (pb::GetStatsRequest { since_ms: now, until_ms: now - 1, ..Default::default() }, "until_ms"),
    ] {
        let e = admin.get_stats(request).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with(field), "{}", e.message());
    }

    // Per-node report times.
    let nodes = admin.list_nodes(pb::ListNodesRequest {}).await.unwrap().into_inner().nodes;
    for id in ["proxy-eu", "proxy-us"] {
        let node = nodes.iter().find(|n| n.id == id).unwrap();
        assert!(node.last_report_ms > now - MINUTE_MS, "{node:?}");
    }

    // A viewer may read statistics; a node token may not.
    let viewer = admin
        .create_token(pb::CreateTokenRequest {
            role: pb::Role::Viewer as i32,
            name: "dashboards".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let mut as_viewer = gw.cp.admin_as(Some(&viewer)).await;
    let seen = as_viewer.get_stats(pb::GetStatsRequest::default()).await.unwrap().into_inner();
    assert_eq!(totals(&seen.totals).requests, 6);
    as_viewer.list_cooldowns(pb::ListCooldownsRequest::default()).await.unwrap();
    let mut as_node = gw.cp.admin_as(Some(&gw.cp.node_token)).await;
    let e = as_node.get_stats(pb::GetStatsRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn a_retried_report_is_counted_once_in_every_granularity() {
    let cp = ControlPlaneHarness::start().await;
    let mut node = cp.node().await;
    let now = now_ms();
    let batch = pb::ReportBatch {
        node_id: "n1".into(),
        boot_id: "boot".into(),
        seq: 1,
        records: vec![pb::UsageRecord {
            minute_ms: now - now % MINUTE_MS,
            backend_id: "bkd_gone".into(),
            model: "m".into(),
            pool: "primary".into(),
            attempts: 2,
            succeeded: 2,
            answered: 2,
            ..Default::default()
        }],
        sent_at_ms: now,
        ..Default::default()
    };
    assert!(node.report(batch.clone()).await.unwrap().into_inner().applied);
    assert!(!node.report(batch).await.unwrap().into_inner().applied);
    let mut admin = cp.admin().await;
    for granularity in ["minute", "hour", "day"] {
        let resp = admin
            .get_stats(pb::GetStatsRequest { granularity: gran(granularity), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(totals(&resp.totals).requests, 2, "{granularity}");
        // A deleted (or never known) backend keeps its id; it has no name.
        assert_eq!(resp.by_backend[0].backend_id, "bkd_gone");
        assert_eq!(resp.by_backend[0].backend_name, "");
        assert_eq!(resp.by_backend[0].pool, "primary", "the pool it was seen in");
    }
}

#[tokio::test]
async fn cooldown_history_is_listed_newest_first_with_names_and_filters() {
    let mut cp = ControlPlaneHarness::start().await;
    let mut admin = cp.admin().await;
    let backend = admin
        .create_backend(pb::CreateBackendRequest {
            backend: Some(pb::BackendSpec {
                name: "alpha".into(),
                base_url: "https://api.example.com/v1".into(),
                api_key: "sk-backend-key-0123456789".into(),
                model_mappings: [("m".to_string(), pb::ModelMapping { native_id: "m".into(), ..Default::default() })]
                    .into(),
                ..Default::default()
            }),
            validate: false,
        })
        .await
        .unwrap()
        .into_inner()
        .backend
        .unwrap();
    cp.stop().await;

    // The fleet records cooldowns through the store; this test writes them directly.
    let now = now_ms();
    {
        let store = Store::open(&cp.data_dir).unwrap();
        for (node, minutes_ago, count) in [("n1", 50, 1), ("n2", 20, 2), ("n1", 3 * 24 * 60, 1)] {
            let start_ms = now - minutes_ago * MINUTE_MS;
            store
                .record_cooldown(&CooldownRecord {
                    backend_id: backend.id.clone(),
                    node_id: node.into(),
                    consecutive_count: count,
                    duration_ms: 30_000 * u64::from(count),
                    retry_after_ms: 7_000,
                    start_ms,
                    end_ms: start_ms + 30_000 * i64::from(count),
                    model: String::new(),
                })
                .unwrap();
        }
        store.flush().await.unwrap();
    }
    let cp = ControlPlaneHarness::start_with(cp.restart_options()).await;
    let mut admin = cp.admin().await;
    let list = |backend: &str, node: &str| pb::ListCooldownsRequest {
        backend: backend.into(),
        node: node.into(),
        ..Default::default()
    };
    let events = admin.list_cooldowns(list("", "")).await.unwrap().into_inner().events;
    let seen: Vec<_> =
        events.iter().map(|e| (e.node_id.as_str(), e.consecutive_count, e.backend_name.as_str())).collect();
    assert_eq!(seen, vec![("n2", 2, "alpha"), ("n1", 1, "alpha")], "the last 24 hours, newest first");
    assert_eq!(events[0].backend_id, backend.id);
    assert_eq!((events[0].duration_ms, events[0].retry_after_ms), (60_000, 7_000));
    assert_eq!(events[0].end_ms - events[0].start_ms, 60_000);

    let count = |request: pb::ListCooldownsRequest| {
        let mut admin = admin.clone();
        async move { admin.list_cooldowns(request).await.unwrap().into_inner().events.len() }
    };
    assert_eq!(count(list("alpha", "")).await, 2);
    assert_eq!(count(list(&backend.id, "n1")).await, 1);
    assert_eq!(count(list("", "n3")).await, 0);
    assert_eq!(count(list("beta", "")).await, 0);
    let week = pb::ListCooldownsRequest { since_ms: now - 7 * DAY_MS, ..Default::default() };
    assert_eq!(count(week).await, 3);
    let e = admin
        .list_cooldowns(pb::ListCooldownsRequest { since_ms: now, until_ms: now - DAY_MS, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}
