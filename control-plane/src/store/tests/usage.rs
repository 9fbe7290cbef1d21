//! Usage rollups: minute, hour and day rows per node, their keys and ranges.

use super::*;
use crate::store::usage::{parse_usage_key, usage_key};

/// A parsed key as a tuple: (bucket, backend, model, node, client key).
fn parsed(key: &[u8]) -> Option<(i64, String, String, String, String)> {
    parse_usage_key(key).map(|p| (p.bucket_ms, p.backend_id, p.model, p.node_id, p.key_id))
}

fn t(bucket: i64, backend: &str, model: &str, node: &str, key: &str) -> Option<(i64, String, String, String, String)> {
    Some((bucket, backend.into(), model.into(), node.into(), key.into()))
}

#[test]
fn usage_keys_sort_by_time_then_backend_then_model_then_node_then_client_key() {
    let a = usage_key(MINUTE, "bkd_b", "m", "n2", "");
    let b = usage_key(2 * MINUTE, "bkd_a", "m", "n1", "");
    let c = usage_key(MINUTE, "bkd_b", "m", "n3", "");
    let d = usage_key(MINUTE, "bkd_b", "n", "n1", "");
    let keyed = usage_key(MINUTE, "bkd_b", "m", "n2", "key_1");
    assert!(a < keyed && keyed < c && c < d && d < b);
    assert_eq!(a[..8], MINUTE.to_be_bytes(), "big-endian time first");
    assert_eq!(parsed(&a), t(MINUTE, "bkd_b", "m", "n2", ""));
    assert_eq!(parsed(&keyed), t(MINUTE, "bkd_b", "m", "n2", "key_1"));
    assert_eq!(parsed(&usage_key(0, "", "gpt", "n1", "")), t(0, "", "gpt", "n1", ""), "the proxy's own answers");
    // Keys written before nodes were recorded end after the model; before client keys,
    // after the node.
    let old = [&MINUTE.to_be_bytes()[..], b"bkd_1\0gpt-4o"].concat();
    assert_eq!(parsed(&old), t(MINUTE, "bkd_1", "gpt-4o", "", ""));
    assert!(parse_usage_key(b"short").is_none());
    assert!(parse_usage_key(&MINUTE.to_be_bytes()).is_none());
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
fn usage_written_before_pools_and_nodes_were_recorded_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let sled = SledStore::open(dir.path()).unwrap();
    // The first release stored plain counters (with `requests`) under node-less keys.
    let key = [&D.to_be_bytes()[..], b"bkd_1\0gpt-4o"].concat();
    let mut old = vec![SCHEMA_VERSION];
    old.extend_from_slice(
        br#"{"requests":3,"succeeded":3,"errors_429":0,"errors_5xx":0,"errors_timeout":0,
        "errors_connect":0,"errors_4xx":0,"prompt_tokens":30,"completion_tokens":0,
        "total_tokens":30,"cost_usd":0.25,"latency_ms_sum":9,"latency_histogram":[3],
        "ttft_ms_sum":0,"ttft_count":0}"#,
    );
    sled.usage_m.insert(key, old).unwrap();
    let store = Store::with(sled);
    let rows = store.usage(Granularity::Minute, D, D + 1).unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!((row.backend_id.as_str(), row.node_id.as_str(), row.pool.as_str()), ("bkd_1", "", ""));
    assert_eq!((row.counters.attempts, row.counters.prompt_tokens), (3, 30));
    // New reports merge into the same minute without trouble.
    store.apply_report("n1", "b", 1, &[record(D, "bkd_1", "gpt-4o", 1)]).unwrap();
    assert_eq!(store.usage_minutes(D, D + 1).unwrap()[0].3.attempts, 4);
}
