//! The store suite on PostgreSQL: a fresh database per test on the test server
//! (`crate::testing`).

use super::*;

fn open() -> ((), Store) {
    let store = Store::with(PgStore::connect(&crate::testing::database()).unwrap());
    store.initialize(&Settings::default()).unwrap();
    ((), store)
}

// The one suite, compiled once per store.
#[allow(clippy::duplicate_mod)]
#[path = "suite.rs"]
mod suite;

/// Statistics summed in SQL equal the rows summed by the caller, for every choice of the
/// dimensions kept: counters field by field, the histogram bucket by bucket (as long as
/// the longest), pools kept apart.
#[test]
fn usage_summed_in_sql_equals_the_rows_summed_by_the_caller() {
    use std::collections::BTreeMap;

    let ((), store) = open();
    let mut seq = 0;
    for (i, node) in ["n1", "n2", "n3"].iter().enumerate() {
        for (j, key) in ["", "key_a", "key_b"].iter().enumerate() {
            for minute in 0..3 {
                let mut r =
                    record(D + minute * MINUTE + (i as i64) * HOUR, ["bkd_1", "bkd_2"][j % 2], "m", 1 + j as u64);
                r.key_id = (*key).to_owned();
                r.pool = if minute == 2 { "fallback".into() } else { "primary".into() };
                r.counters.cost_usd = 0.25 * (1 + i) as f64;
                r.counters.latency_histogram = vec![1; 1 + (i + j) % 11];
                seq += 1;
                store.apply_report(node, "boot", seq, &[r]).unwrap();
            }
        }
    }
    for g in [Granularity::Minute, Granularity::Hour, Granularity::Day] {
        for bits in 0..8 {
            let keep = UsageColumns { time: bits & 1 != 0, node: bits & 2 != 0, key: bits & 4 != 0 };
            let mut expected: BTreeMap<(i64, String, String, String, String, String), UsageCounters> = BTreeMap::new();
            for row in store.usage_rows(g, 0, i64::MAX) {
                let row = row.unwrap();
                let id = (
                    if keep.time { row.bucket_ms } else { 0 },
                    row.backend_id,
                    row.model,
                    if keep.node { row.node_id } else { String::new() },
                    if keep.key { row.key_id } else { String::new() },
                    row.pool,
                );
                expected.entry(id).or_default().merge(&row.counters);
            }
            let got: BTreeMap<_, _> = store
                .usage_collapsed(g, 0, i64::MAX, keep)
                .expect("PostgreSQL sums in SQL")
                .map(|r| r.unwrap())
                .map(|r| ((r.bucket_ms, r.backend_id, r.model, r.node_id, r.key_id, r.pool), r.counters))
                .collect();
            assert_eq!(got.len(), expected.len(), "{g:?} {keep:?}");
            for (id, want) in &expected {
                let have = &got[id];
                assert_eq!(
                    (have.attempts, have.answered, have.succeeded, have.prompt_tokens, &have.latency_histogram),
                    (want.attempts, want.answered, want.succeeded, want.prompt_tokens, &want.latency_histogram),
                    "{g:?} {keep:?} {id:?}"
                );
                assert!((have.cost_usd - want.cost_usd).abs() < 1e-9, "{g:?} {keep:?} {id:?}");
            }
        }
    }
}
