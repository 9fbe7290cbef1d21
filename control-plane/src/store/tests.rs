//! Store round trips, schema versioning, transactions and report de-duplication.

use super::*;
use crate::crypto::MasterKey;

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.initialize(&Settings::default()).unwrap();
    (dir, store)
}

/// A complete backend record for tests.
pub(crate) fn backend(id: &str, name: &str) -> BackendRecord {
    let key = MasterKey::from_hex(&MasterKey::generate_hex()).unwrap();
    BackendRecord {
        id: id.into(),
        name: name.into(),
        label: "test".into(),
        base_url: "https://api.example.com/v1".into(),
        api_key: key.seal("sk-test-0123456789abcdef"),
        api_key_masked: crate::crypto::mask("sk-test-0123456789abcdef"),
        timeout_seconds: 120,
        rpm_limit: 40,
        tpm_limit: Some(1000),
        window_seconds: 60,
        pool: "primary".into(),
        enabled: true,
        weight: 1,
        model_mappings: [(
            "gpt-4o".to_string(),
            ModelMapping {
                native_id: "openai/gpt-4o".into(),
                cost: Cost { input: 2.5e-6, output: 1e-5, cache_read: 0.0, cache_write: 0.0 },
                context_window: 128000,
                max_tokens: 65536,
                reasoning: false,
                input_modalities: vec!["text".into()],
            },
        )]
        .into(),
        regions: vec!["eu".into()],
        source: Source::Api,
        metadata: [("team".to_string(), "a".to_string())].into(),
        created_at_ms: 1,
        updated_at_ms: 2,
        resource_version: 1,
    }
}

#[test]
fn first_start_creates_builtin_pools_and_settings() {
    let (_dir, store) = open();
    let pools = store.pools().unwrap();
    let names: Vec<_> = pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["primary", "fallback"]);
    assert!(pools.iter().all(|p| p.builtin));
    assert_eq!(store.settings().unwrap(), Settings::default());
    assert_eq!(store.config_version(), 1);
}

#[test]
fn initialize_twice_changes_nothing() {
    let (_dir, store) = open();
    store.initialize(&Settings { queue_capacity: 7, ..Settings::default() }).unwrap();
    assert_eq!(store.config_version(), 1);
    assert_eq!(store.settings().unwrap().queue_capacity, 500);
}

#[test]
fn backend_round_trips_exactly() {
    let (_dir, store) = open();
    let b = backend("bkd_1", "one");
    let change = ConfigChange { put_backends: vec![b.clone()], ..Default::default() };
    let v = store.commit(change, &Actor::system(), "CreateBackend", "bkd_1").unwrap();
    assert_eq!(v, 2);
    assert_eq!(store.backend("bkd_1").unwrap(), Some(b.clone()));
    assert_eq!(store.backends().unwrap(), vec![b]);
}

#[test]
fn values_carry_the_schema_version_byte() {
    let bytes = encode(&Settings::default());
    assert_eq!(bytes[0], SCHEMA_VERSION);
    let back: Settings = decode("settings", &bytes).unwrap();
    assert_eq!(back, Settings::default());
}

#[test]
fn unknown_schema_version_is_refused_clearly() {
    let mut bytes = encode(&Settings::default());
    bytes[0] = SCHEMA_VERSION + 1;
    let err = decode::<Settings>("settings", &bytes).unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedSchema { tree: "settings", found } if found == SCHEMA_VERSION + 1));
    assert!(err.to_string().contains("upgrade"), "{err}");
    assert!(matches!(decode::<Settings>("settings", &[]), Err(StoreError::Corrupt { .. })));
}

#[test]
fn config_version_survives_reopen_and_keeps_rising() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store.initialize(&Settings::default()).unwrap();
        let change = ConfigChange { put_backends: vec![backend("bkd_1", "one")], ..Default::default() };
        store.commit(change, &Actor::system(), "CreateBackend", "bkd_1").unwrap();
        assert_eq!(store.config_version(), 2);
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.config_version(), 2);
    assert!(store.backend("bkd_1").unwrap().is_some());
    let v = store
        .commit(
            ConfigChange { delete_backends: vec!["bkd_1".into()], ..Default::default() },
            &Actor::system(),
            "DeleteBackend",
            "bkd_1",
        )
        .unwrap();
    assert_eq!(v, 3);
}

#[test]
fn every_commit_appends_an_audit_entry() {
    let (_dir, store) = open();
    let actor = Actor { id: "tok_a".into(), role: "admin".into() };
    store
        .commit(
            ConfigChange { put_backends: vec![backend("bkd_1", "one")], ..Default::default() },
            &actor,
            "CreateBackend",
            "bkd_1",
        )
        .unwrap();
    let entries = store.audit(0, i64::MAX).unwrap();
    let last = entries.last().unwrap();
    assert_eq!((last.actor.as_str(), last.action.as_str(), last.target.as_str()), ("tok_a", "CreateBackend", "bkd_1"));
    assert_eq!(last.config_version, 2);
    assert_eq!(entries.len(), 2, "initialize + create");
}

#[test]
fn report_batches_apply_once_per_node_boot_and_seq() {
    let (_dir, store) = open();
    let counters = UsageCounters {
        attempts: 3,
        succeeded: 2,
        errors_429: 1,
        prompt_tokens: 10,
        latency_histogram: vec![1, 2],
        ..Default::default()
    };
    let recs = vec![ReportRecord {
        minute_ms: 60_000,
        backend_id: "bkd_1".into(),
        model: "gpt-4o".into(),
        pool: "primary".into(),
        counters: counters.clone(),
    }];
    assert!(store.apply_report("n1", "boot1", 1, &recs).unwrap());
    assert!(!store.apply_report("n1", "boot1", 1, &recs).unwrap(), "retry must not apply");
    assert!(store.apply_report("n1", "boot1", 2, &recs).unwrap());
    assert!(!store.apply_report("n1", "boot1", 1, &recs).unwrap(), "an older seq must not apply");
    assert!(store.apply_report("n1", "boot2", 1, &recs).unwrap(), "a new boot starts its own sequence");
    assert!(store.apply_report("n2", "boot1", 1, &recs).unwrap(), "another node has its own sequence");
    let rows = store.usage_minutes(0, i64::MAX).unwrap();
    assert_eq!(rows.len(), 1);
    let (minute, backend, model, total) = &rows[0];
    assert_eq!((*minute, backend.as_str(), model.as_str()), (60_000, "bkd_1", "gpt-4o"));
    assert_eq!(total.attempts, 12);
    assert_eq!(total.succeeded, 8);
    assert_eq!(total.latency_histogram, vec![4, 8]);
}

#[test]
fn a_report_that_would_overflow_a_stored_total_is_refused_and_changes_nothing() {
    let (_dir, store) = open();
    let mut big = record(60_000, "bkd_1", "m", 1);
    big.counters.attempts = u64::MAX - 10;
    assert!(store.apply_report("n1", "b", 1, std::slice::from_ref(&big)).unwrap());
    let err = store.apply_report("n1", "b", 2, &[record(60_000, "bkd_1", "m", 11)]).unwrap_err();
    assert!(matches!(err, StoreError::Overflow { field: "attempts", .. }), "{err}");
    // Two records of one batch that overflow only together.
    let err = store.apply_report("n2", "b", 1, &[big.clone(), big]).unwrap_err();
    assert!(matches!(err, StoreError::Overflow { .. }), "{err}");
    let rows = store.usage_minutes(0, i64::MAX).unwrap();
    assert_eq!(rows.iter().map(|r| r.3.attempts).collect::<Vec<_>>(), [u64::MAX - 10], "no wrap, no partial write");
    // The refused seq did not count as applied: the node can still deliver seq 2.
    assert!(store.apply_report("n1", "b", 2, &[record(60_000, "bkd_1", "m", 1)]).unwrap());
}

#[test]
fn merged_totals_saturate_instead_of_wrapping() {
    let mut a = UsageCounters { succeeded: u64::MAX - 1, latency_histogram: vec![u64::MAX], ..Default::default() };
    a.merge(&UsageCounters { succeeded: 5, latency_histogram: vec![1], ..Default::default() });
    assert_eq!((a.succeeded, a.latency_histogram[0]), (u64::MAX, u64::MAX));
    let mut b = UsageCounters { errors_5xx: u64::MAX, ..Default::default() };
    assert_eq!(b.checked_merge(&UsageCounters { errors_5xx: 1, ..Default::default() }), Err("errors_5xx"));
    assert_eq!(b.errors_5xx, u64::MAX, "unchanged on overflow");
}

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;
/// Midnight UTC, 4 October 2024.
const D: i64 = 20_000 * DAY;

fn record(minute_ms: i64, backend: &str, model: &str, attempts: u64) -> ReportRecord {
    ReportRecord {
        minute_ms,
        backend_id: backend.into(),
        model: model.into(),
        pool: "primary".into(),
        counters: UsageCounters {
            attempts,
            answered: attempts,
            succeeded: attempts,
            prompt_tokens: 10 * attempts,
            cost_usd: 0.5 * attempts as f64,
            latency_histogram: vec![attempts, 0, 1],
            ..Default::default()
        },
    }
}

/// (bucket, attempts) of every row of `g`, summed over backend, model and node.
fn buckets(store: &Store, g: Granularity) -> Vec<(i64, u64)> {
    let mut sums = std::collections::BTreeMap::new();
    for row in store.usage(g, 0, i64::MAX).unwrap() {
        *sums.entry(row.bucket_ms).or_insert(0) += row.counters.attempts;
    }
    sums.into_iter().collect()
}

#[test]
fn usage_keys_sort_by_time_then_backend_then_model_then_node() {
    let a = usage::usage_key(MINUTE, "bkd_b", "m", "n2");
    let b = usage::usage_key(2 * MINUTE, "bkd_a", "m", "n1");
    let c = usage::usage_key(MINUTE, "bkd_b", "m", "n3");
    let d = usage::usage_key(MINUTE, "bkd_b", "n", "n1");
    assert!(a < b && a < c && c < d && d < b);
    assert_eq!(a[..8], MINUTE.to_be_bytes(), "big-endian time first");
    assert_eq!(usage::parse_usage_key(&a), Some((MINUTE, "bkd_b".into(), "m".into(), "n2".into())));
    assert_eq!(
        usage::parse_usage_key(&usage::usage_key(0, "", "gpt", "n1")),
        Some((0, "".into(), "gpt".into(), "n1".into())),
        "the proxy's own answers have an empty backend id"
    );
    // Keys written before nodes were recorded end after the model.
    let old = [&MINUTE.to_be_bytes()[..], b"bkd_1\0gpt-4o"].concat();
    assert_eq!(usage::parse_usage_key(&old), Some((MINUTE, "bkd_1".into(), "gpt-4o".into(), "".into())));
    assert_eq!(usage::parse_usage_key(b"short"), None);
    assert_eq!(usage::parse_usage_key(&MINUTE.to_be_bytes()), None);
}

#[test]
fn granularity_floors_to_aligned_utc_buckets() {
    let t = D + 5 * HOUR + 7 * MINUTE + 1234;
    assert_eq!(Granularity::Minute.floor(t), D + 5 * HOUR + 7 * MINUTE);
    assert_eq!(Granularity::Hour.floor(t), D + 5 * HOUR);
    assert_eq!(Granularity::Day.floor(t), D);
    assert_eq!(Granularity::Day.floor(D), D, "a bucket start is its own floor");
    for g in Granularity::ALL {
        assert_eq!(Granularity::parse(g.as_str()), Some(g));
    }
    assert_eq!(Granularity::parse("week"), None);
}

#[test]
fn reports_roll_up_into_minutes_hours_and_days_across_boundaries() {
    let (_dir, store) = open();
    let batch = vec![
        record(D - MINUTE, "bkd_1", "gpt-4o", 1),
        record(D - 2 * MINUTE, "bkd_1", "gpt-4o", 2),
        record(D, "bkd_1", "gpt-4o", 4),
        record(D + HOUR + MINUTE, "bkd_2", "gpt-4o", 8),
    ];
    assert!(store.apply_report("n1", "boot", 1, &batch).unwrap());
    assert_eq!(
        buckets(&store, Granularity::Minute),
        vec![(D - 2 * MINUTE, 2), (D - MINUTE, 1), (D, 4), (D + HOUR + MINUTE, 8)]
    );
    assert_eq!(buckets(&store, Granularity::Hour), vec![(D - HOUR, 3), (D, 4), (D + HOUR, 8)]);
    assert_eq!(buckets(&store, Granularity::Day), vec![(D - DAY, 3), (D, 12)]);

    // Every counter is summed, not only attempts.
    let day = store.usage(Granularity::Day, D, D + DAY).unwrap();
    let total = day.iter().fold(UsageCounters::default(), |mut t, r| {
        t.merge(&r.counters);
        t
    });
    assert_eq!((total.answered, total.prompt_tokens, total.cost_usd), (12, 120, 6.0));
    assert_eq!(total.latency_histogram, vec![12, 0, 2]);

    // A retried batch changes no granularity; the next one adds to all three.
    assert!(!store.apply_report("n1", "boot", 1, &batch).unwrap());
    assert_eq!(buckets(&store, Granularity::Day), vec![(D - DAY, 3), (D, 12)]);
    let next = vec![record(D + 30 * MINUTE, "bkd_1", "gpt-4o", 16)];
    assert!(store.apply_report("n1", "boot", 2, &next).unwrap());
    assert_eq!(buckets(&store, Granularity::Day), vec![(D - DAY, 3), (D, 28)]);
    assert_eq!(buckets(&store, Granularity::Hour), vec![(D - HOUR, 3), (D, 20), (D + HOUR, 8)]);
}

#[test]
fn rows_are_kept_per_node_with_their_pool_and_minutes_sum_over_nodes() {
    let (_dir, store) = open();
    let mut r = record(D, "bkd_1", "m", 1);
    store.apply_report("n1", "b", 1, &[r.clone()]).unwrap();
    r.pool = "fallback".into();
    store.apply_report("n2", "b", 1, &[r.clone()]).unwrap();
    // The backend moved pools: the row records the pool of its latest report.
    r.pool = "batch".into();
    store.apply_report("n1", "b", 2, &[r.clone()]).unwrap();
    let rows = store.usage(Granularity::Hour, D, D + HOUR).unwrap();
    let seen: Vec<_> = rows.iter().map(|r| (r.node_id.as_str(), r.pool.as_str(), r.counters.attempts)).collect();
    assert_eq!(seen, vec![("n1", "batch", 2), ("n2", "fallback", 1)]);
    let minutes = store.usage_minutes(0, i64::MAX).unwrap();
    assert_eq!(minutes.len(), 1, "one row per (minute, backend, model)");
    assert_eq!(minutes[0].3.attempts, 3);
}

#[test]
fn a_range_includes_every_bucket_that_overlaps_it() {
    let (_dir, store) = open();
    let batch = vec![
        record(D - HOUR, "b", "m", 1),
        record(D + 10 * MINUTE, "b", "m", 2),
        record(D + HOUR, "b", "m", 4),
        record(D + 2 * HOUR, "b", "m", 8),
    ];
    store.apply_report("n", "b", 1, &batch).unwrap();
    // 00:30–01:00:00.001 overlaps the buckets of 00:00 and 01:00.
    let rows = store.usage(Granularity::Hour, D + 30 * MINUTE, D + HOUR + 1).unwrap();
    let got: Vec<_> = rows.iter().map(|r| r.bucket_ms).collect();
    assert_eq!(got, vec![D, D + HOUR]);
    // The end is exclusive: a bucket starting at `until` is not in the range.
    let rows = store.usage(Granularity::Hour, D, D + HOUR).unwrap();
    assert_eq!(rows.len(), 1);
    // Minute granularity sees only the minute that has data.
    let rows = store.usage(Granularity::Minute, D + 10 * MINUTE + 59_999, D + 11 * MINUTE).unwrap();
    assert_eq!(rows.len(), 1);
    assert!(store.usage(Granularity::Day, D + DAY, D).unwrap().is_empty());
}

#[test]
fn usage_written_before_pools_and_nodes_were_recorded_still_reads() {
    let (_dir, store) = open();
    // The first release stored plain counters (with `requests`) under node-less keys.
    let key = [&D.to_be_bytes()[..], b"bkd_1\0gpt-4o"].concat();
    let mut old = vec![SCHEMA_VERSION];
    old.extend_from_slice(
        br#"{"requests":3,"succeeded":3,"errors_429":0,"errors_5xx":0,"errors_timeout":0,
        "errors_connect":0,"errors_4xx":0,"prompt_tokens":30,"completion_tokens":0,
        "total_tokens":30,"cost_usd":0.25,"latency_ms_sum":9,"latency_histogram":[3],
        "ttft_ms_sum":0,"ttft_count":0}"#,
    );
    store.usage_m.insert(key, old).unwrap();
    let rows = store.usage(Granularity::Minute, D, D + 1).unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!((row.backend_id.as_str(), row.node_id.as_str(), row.pool.as_str()), ("bkd_1", "", ""));
    assert_eq!((row.counters.attempts, row.counters.prompt_tokens), (3, 30));
    // New reports merge into the same minute without trouble.
    store.apply_report("n1", "b", 1, &[record(D, "bkd_1", "gpt-4o", 1)]).unwrap();
    assert_eq!(store.usage_minutes(D, D + 1).unwrap()[0].3.attempts, 4);
}

fn cooldown(backend: &str, node: &str, start_ms: i64) -> CooldownRecord {
    CooldownRecord {
        backend_id: backend.into(),
        node_id: node.into(),
        consecutive_count: 2,
        duration_ms: 60_000,
        retry_after_ms: 5_000,
        start_ms,
        end_ms: start_ms + 60_000,
    }
}

#[test]
fn cooldowns_are_kept_by_start_time_and_equal_starts_do_not_collide() {
    let (_dir, store) = open();
    for c in [
        cooldown("b1", "n1", D + 2 * MINUTE),
        cooldown("b1", "n1", D),
        cooldown("b2", "n2", D),
        cooldown("b3", "n1", D - DAY),
    ] {
        store.record_cooldown(&c).unwrap();
    }
    let all = store.cooldowns(0, i64::MAX).unwrap();
    assert_eq!(all.len(), 4);
    let starts: Vec<_> = all.iter().map(|c| c.start_ms).collect();
    assert_eq!(starts, vec![D - DAY, D, D, D + 2 * MINUTE]);
    let today = store.cooldowns(D, D + 2 * MINUTE).unwrap();
    let backends: Vec<_> = today.iter().map(|c| c.backend_id.as_str()).collect();
    assert_eq!(backends, vec!["b1", "b2"], "until is exclusive");
    assert_eq!(today[0], cooldown("b1", "n1", D), "round trips exactly");
    assert_eq!(store.sweep_cooldowns(D, 100).unwrap(), 1);
    assert_eq!(store.cooldowns(0, i64::MAX).unwrap().len(), 3);
}
