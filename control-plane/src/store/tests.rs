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
        learn_limits: true,
        api: Default::default(),
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
                rpm_limit: None,
                tpm_limit: None,
                window_seconds: None,
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
        key_id: String::new(),
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

fn cooldown(backend: &str, node: &str, start_ms: i64) -> CooldownRecord {
    CooldownRecord {
        backend_id: backend.into(),
        node_id: node.into(),
        consecutive_count: 2,
        duration_ms: 60_000,
        retry_after_ms: 5_000,
        start_ms,
        end_ms: start_ms + 60_000,
        model: String::new(),
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

fn record(minute_ms: i64, backend: &str, model: &str, attempts: u64) -> ReportRecord {
    ReportRecord {
        key_id: String::new(),
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
mod usage;

#[test]
fn imported_usage_lands_in_hours_and_days_once_per_row_and_never_in_minutes() {
    let (_dir, store) = open();
    let hour = 7 * 3_600_000;
    let rows = vec![
        ("u1".to_string(), record(hour, "bkd_1", "m", 4)),
        ("u2".to_string(), record(hour + 3_600_000, "bkd_1", "m", 6)),
    ];
    assert_eq!(store.import_usage("v2-import", &rows).unwrap(), 2);
    assert_eq!(store.import_usage("v2-import", &rows).unwrap(), 0, "each row once");
    let more = vec![rows[1].clone(), ("u3".to_string(), record(hour, "bkd_1", "m", 1))];
    assert_eq!(store.import_usage("v2-import", &more).unwrap(), 1, "only the new row");
    assert_eq!(store.import_usage("other-import", &rows).unwrap(), 2, "marks are per source");
    assert!(store.usage_minutes(0, i64::MAX).unwrap().is_empty(), "history has no minutes");
    let sum = |g| store.usage(g, 0, i64::MAX).unwrap().iter().map(|r| r.counters.attempts).sum::<u64>();
    assert_eq!((sum(Granularity::Hour), sum(Granularity::Day)), (21, 21));
}
