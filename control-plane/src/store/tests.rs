//! Store round trips, schema versioning, transactions and report de-duplication.

use super::*;
use crate::crypto::MasterKey;

/// The same suite on each store (tests/suite.rs), each test with a fresh, initialised store.
mod on_postgres;
mod on_sled;

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

fn buckets(store: &Store, g: Granularity) -> Vec<(i64, u64)> {
    let mut sums = std::collections::BTreeMap::new();
    for row in store.usage(g, 0, i64::MAX).unwrap() {
        *sums.entry(row.bucket_ms).or_insert(0) += row.counters.attempts;
    }
    sums.into_iter().collect()
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
fn merged_totals_saturate_instead_of_wrapping() {
    let mut a = UsageCounters { succeeded: u64::MAX - 1, latency_histogram: vec![u64::MAX], ..Default::default() };
    a.merge(&UsageCounters { succeeded: 5, latency_histogram: vec![1], ..Default::default() });
    assert_eq!((a.succeeded, a.latency_histogram[0]), (u64::MAX, u64::MAX));
    let mut b = UsageCounters { errors_5xx: u64::MAX, ..Default::default() };
    assert_eq!(b.checked_merge(&UsageCounters { errors_5xx: 1, ..Default::default() }), Err("errors_5xx"));
    assert_eq!(b.errors_5xx, u64::MAX, "unchanged on overflow");
}
