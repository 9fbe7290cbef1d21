//! Statistics queries over a real store.

use super::*;

const NOW: i64 = 20_000 * DAY_MS + 12 * HOUR_MS;

#[test]
fn range_defaults_to_the_last_24_hours_and_refuses_an_inverted_one() {
    assert_eq!(resolve_range(0, 0, NOW).unwrap(), (NOW + 1 - DAY_MS, NOW + 1));
    assert_eq!(resolve_range(5, 0, NOW).unwrap(), (5, NOW + 1));
    assert_eq!(resolve_range(0, NOW, NOW).unwrap(), (NOW - DAY_MS, NOW));
    let e = resolve_range(NOW, NOW - 1, NOW).unwrap_err();
    assert_eq!(e.field, "until_ms");
    assert_eq!(resolve_range(-1, 0, NOW).unwrap_err().field, "since_ms");
}

#[test]
fn auto_granularity_follows_the_range_length() {
    let g = |span: i64| granularity(None, NOW - span, NOW);
    assert_eq!(g(HOUR_MS), Granularity::Minute);
    assert_eq!(g(6 * HOUR_MS), Granularity::Minute);
    assert_eq!(g(6 * HOUR_MS + 1), Granularity::Hour);
    assert_eq!(g(14 * DAY_MS), Granularity::Hour);
    assert_eq!(g(14 * DAY_MS + 1), Granularity::Day);
    assert_eq!(granularity(None, NOW - 30 * DAY_MS, NOW), Granularity::Day);
    assert_eq!(granularity(Some(Granularity::Hour), 0, 1), Granularity::Hour);
}

#[test]
fn group_by_keeps_each_dimension_once_in_order() {
    assert_eq!(group_by(&[Dim::Time, Dim::Model, Dim::Time]), vec![Dim::Time, Dim::Model]);
}

fn store_with_backends() -> (tempfile::TempDir, Store) {
    use crate::{
        crypto::MasterKey,
        store::{Actor, BackendRecord, ConfigChange, NodeRecord, Settings, Source},
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.initialize(&Settings::default()).unwrap();
    let key = MasterKey::from_hex(&MasterKey::generate_hex()).unwrap();
    let backend = |id: &str, name: &str, pool: &str| BackendRecord {
        id: id.into(),
        name: name.into(),
        label: String::new(),
        base_url: "https://api.example.com/v1".into(),
        api_key: key.seal("sk-test-0123456789abcdef"),
        api_key_masked: "sk-tes****cdef".into(),
        timeout_seconds: 120,
        rpm_limit: 40,
        tpm_limit: None,
        window_seconds: 60,
        learn_limits: true,
        api: Default::default(),
        pool: pool.into(),
        enabled: true,
        weight: 1,
        model_mappings: Default::default(),
        regions: vec![],
        source: Source::Api,
        metadata: Default::default(),
        created_at_ms: 0,
        updated_at_ms: 0,
        resource_version: 1,
    };
    let change = ConfigChange {
        put_backends: vec![backend("bkd_a", "alpha", "primary"), backend("bkd_b", "beta", "fallback")],
        ..Default::default()
    };
    store.commit(change, &Actor::system(), "Test", "b").unwrap();
    for (id, region) in [("n-eu", "eu"), ("n-us", "us")] {
        store.put_node(&NodeRecord { id: id.into(), region: region.into(), ..Default::default() }).unwrap();
    }
    (dir, store)
}

fn report(store: &Store, node: &str, seq: u64, rows: &[(i64, &str, &str, &str, u64)]) {
    let records: Vec<_> = rows
        .iter()
        .map(|&(minute_ms, backend, model, pool, answered)| crate::store::ReportRecord {
            key_id: String::new(),
            minute_ms,
            backend_id: backend.into(),
            model: model.into(),
            pool: pool.into(),
            counters: UsageCounters { attempts: answered, answered, succeeded: answered, ..Default::default() },
        })
        .collect();
    assert!(store.apply_report(node, "boot", seq, &records).unwrap());
}

fn stats(store: &Store, f: impl FnOnce(&mut StatsQuery)) -> StatsReport {
    let mut request = StatsQuery { since_ms: NOW - HOUR_MS, until_ms: NOW + HOUR_MS, ..Default::default() };
    f(&mut request);
    get_stats(store, &request).unwrap()
}

fn requests(r: &StatsRow) -> u64 {
    r.counters.answered
}

#[test]
fn stats_filter_group_and_name_rows_by_current_records() {
    let (_dir, store) = store_with_backends();
    let m = NOW - NOW % 60_000;
    report(
        &store,
        "n-eu",
        1,
        &[(m, "bkd_a", "gpt", "primary", 1), (m, "bkd_b", "gpt", "fallback", 2), (m + 60_000, "", "nope", "", 4)],
    );
    report(&store, "n-us", 1, &[(m, "bkd_a", "llama", "primary", 8)]);

    let all = stats(&store, |_| {});
    assert_eq!(all.granularity, Granularity::Minute);
    assert_eq!(all.totals.answered, 15);
    assert!(all.rows.is_empty(), "no group_by: totals only");
    let by_backend: Vec<_> = all
        .by_backend
        .iter()
        .map(|r| (r.backend_id.as_str(), r.backend_name.as_str(), r.pool.as_str(), requests(r)))
        .collect();
    assert_eq!(by_backend, vec![("", "", "", 4), ("bkd_a", "alpha", "primary", 9), ("bkd_b", "beta", "fallback", 2)]);

    let grouped = stats(&store, |r| r.group_by = vec![Dim::Time, Dim::Region]);
    let rows: Vec<_> =
        grouped.rows.iter().map(|r| (r.bucket_ms, r.region.as_str(), r.backend_id.as_str(), requests(r))).collect();
    assert_eq!(rows, vec![(m, "eu", "", 3), (m, "us", "", 8), (m + 60_000, "eu", "", 4)]);

    // Backends by name (any case) or id; dimensions combine with AND.
    let filtered = stats(&store, |r| {
        r.filter = StatsFilter {
            backends: vec!["ALPHA".into(), "bkd_b".into()],
            regions: vec!["eu".into()],
            ..Default::default()
        };
        r.group_by = vec![Dim::Backend];
    });
    let rows: Vec<_> = filtered.rows.iter().map(|r| (r.backend_name.as_str(), requests(r))).collect();
    assert_eq!(rows, vec![("alpha", 1), ("beta", 2)]);
    let pools = stats(&store, |r| {
        r.filter = StatsFilter {
            pools: vec!["primary".into()],
            models: vec!["llama".into()],
            nodes: vec!["n-us".into()],
            ..Default::default()
        };
    });
    assert_eq!(pools.totals.answered, 8);

    // The hour holding the range's start is included whole.
    let hourly = stats(&store, |r| {
        r.since_ms = m + 1;
        r.until_ms = m + 2;
        r.granularity = Some(Granularity::Hour);
        r.group_by = vec![Dim::Time];
    });
    assert_eq!(hourly.rows.len(), 1);
    assert_eq!(hourly.rows[0].bucket_ms, NOW - NOW % HOUR_MS);
    assert_eq!(requests(&hourly.rows[0]), 15);
}

#[test]
fn list_cooldowns_returns_recorded_events_newest_first_with_filters() {
    let (_dir, store) = store_with_backends();
    let cooldown = |backend: &str, node: &str, start_ms: i64, count: u32| CooldownRecord {
        backend_id: backend.into(),
        node_id: node.into(),
        consecutive_count: count,
        duration_ms: 30_000 * u64::from(count),
        retry_after_ms: 0,
        start_ms,
        end_ms: start_ms + 30_000 * i64::from(count),
        model: String::new(),
    };
    store.record_cooldown(&cooldown("bkd_a", "n-eu", NOW - 2 * HOUR_MS, 1)).unwrap();
    store.record_cooldown(&cooldown("bkd_a", "n-us", NOW - HOUR_MS, 2)).unwrap();
    store.record_cooldown(&cooldown("bkd_b", "n-eu", NOW - 30 * 60_000, 1)).unwrap();
    store.record_cooldown(&cooldown("bkd_a", "n-eu", NOW - 3 * DAY_MS, 1)).unwrap();
    let list = |backend: &str, node: &str| {
        list_cooldowns(
            &store,
            &CooldownQuery { since_ms: NOW - DAY_MS, until_ms: NOW, backend: backend.into(), node: node.into() },
        )
        .unwrap()
    };
    let all = list("", "");
    let seen: Vec<_> =
        all.iter().map(|e| (e.backend_name.as_str(), e.record.node_id.as_str(), e.record.consecutive_count)).collect();
    assert_eq!(seen, vec![("beta", "n-eu", 1), ("alpha", "n-us", 2), ("alpha", "n-eu", 1)]);
    assert_eq!(all[1].record.duration_ms, 60_000);
    assert_eq!(all[1].record.end_ms - all[1].record.start_ms, 60_000);
    assert_eq!(list("alpha", "").len(), 2);
    assert_eq!(list("bkd_a", "n-eu").len(), 1);
    assert_eq!(list("", "n-eu").len(), 2);
    assert!(list("nobody", "").is_empty());
    let e =
        list_cooldowns(&store, &CooldownQuery { since_ms: NOW, until_ms: NOW - 1, ..Default::default() }).unwrap_err();
    assert!(matches!(&e, StatsError::Field(f) if f.field == "until_ms"), "{e}");
}
