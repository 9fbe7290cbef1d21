//! Usage reports from the wire: every record checked (bounded, possible counts; the
//! first bad field named) and turned into the store's records.

use sidecar_proto::v1 as pb;

use crate::{
    store::{LATENCY_BUCKETS_MS, ReportRecord, UsageCounters},
    validate::{FieldError, field_error},
};

/// Most records one batch may carry: a batch is cut every second, one record per
/// (minute, backend, model) seen in it.
const MAX_RECORDS: usize = 100_000;
/// Most requests one record may count: far above what one node serves in a batch.
const MAX_COUNT: u64 = 100_000_000;
/// Most tokens one attempt may report.
const MAX_TOKENS_PER_ATTEMPT: u64 = 100_000_000;
/// Most milliseconds one attempt may last.
const MAX_MS_PER_ATTEMPT: u64 = 24 * 3600 * 1000;
/// Most USD one attempt may cost.
const MAX_USD_PER_ATTEMPT: f64 = 100_000.0;

/// The record's counts are possible: bounded, no more results than attempts, no more
/// errors than answers, sums that do not overflow. Names the first field that is not.
fn check_counts(r: &pb::UsageRecord) -> Result<(), (&'static str, String)> {
    let too_many =
        |field, value: u64| (value > MAX_COUNT).then(|| (field, format!("{value} exceeds {MAX_COUNT} per record")));
    for (field, value) in [("attempts", r.attempts), ("answered", r.answered)] {
        if let Some(e) = too_many(field, value) {
            return Err(e);
        }
    }
    let results = [r.succeeded, r.errors_429, r.errors_5xx, r.errors_timeout, r.errors_connect, r.errors_4xx]
        .iter()
        .try_fold(0u64, |sum, v| sum.checked_add(*v));
    if results.is_none_or(|n| n > r.attempts) {
        return Err(("succeeded", "results (succeeded + errors_*) exceed attempts".into()));
    }
    if r.answered_errors > r.answered {
        return Err(("answered_errors", "exceeds answered".into()));
    }
    if r.ttft_count > r.attempts {
        return Err(("ttft_count", "exceeds attempts".into()));
    }
    if r.latency_histogram.iter().try_fold(0u64, |sum, v| sum.checked_add(*v)).is_none_or(|n| n > r.attempts) {
        return Err(("latency_histogram", "counts more attempts than attempts".into()));
    }
    let per_attempt = |field, value: u64, count: u64, max: u64| {
        (value > count.saturating_mul(max)).then(|| (field, format!("exceeds {max} per attempt")))
    };
    for (field, value, count, max) in [
        ("prompt_tokens", r.prompt_tokens, r.attempts, MAX_TOKENS_PER_ATTEMPT),
        ("completion_tokens", r.completion_tokens, r.attempts, MAX_TOKENS_PER_ATTEMPT),
        ("total_tokens", r.total_tokens, r.attempts, MAX_TOKENS_PER_ATTEMPT.saturating_mul(2)),
        ("latency_ms_sum", r.latency_ms_sum, r.attempts, MAX_MS_PER_ATTEMPT),
        ("ttft_ms_sum", r.ttft_ms_sum, r.ttft_count, MAX_MS_PER_ATTEMPT),
    ] {
        if let Some(e) = per_attempt(field, value, count, max) {
            return Err(e);
        }
    }
    if r.cost_usd > r.attempts as f64 * MAX_USD_PER_ATTEMPT {
        return Err(("cost_usd", format!("exceeds {MAX_USD_PER_ATTEMPT} USD per attempt")));
    }
    Ok(())
}

/// Validates a batch and converts its records.
pub fn check_batch(batch: &pb::ReportBatch) -> Result<Vec<ReportRecord>, FieldError> {
    if crate::validate::node_id("node_id", &batch.node_id).is_err() {
        return Err(field_error("node_id", "must be 1-128 characters of letters, digits, '-', '_' or '.'"));
    }
    if batch.boot_id.is_empty() || batch.boot_id.len() > 128 {
        return Err(field_error("boot_id", "must be 1-128 characters"));
    }
    if batch.seq == 0 {
        return Err(field_error("seq", "must start at 1"));
    }
    if batch.sender_boot_id.len() > 128 {
        return Err(field_error("sender_boot_id", "must be at most 128 characters"));
    }
    if batch.records.len() > MAX_RECORDS {
        return Err(field_error("records", format!("at most {MAX_RECORDS} per batch")));
    }
    batch
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let bad = |field: &str, why: &str| field_error(format!("records[{i}].{field}"), why);
            if r.minute_ms < 0 || r.minute_ms % 60_000 != 0 {
                return Err(bad("minute_ms", "must be a non-negative multiple of 60000"));
            }
            if r.backend_id.len() > 128 || r.backend_id.contains('\0') {
                return Err(bad("backend_id", "must be at most 128 characters"));
            }
            if r.model.len() > 256 || r.model.contains('\0') {
                return Err(bad("model", "must be at most 256 characters"));
            }
            if r.pool.len() > 128 {
                return Err(bad("pool", "must be at most 128 characters"));
            }
            if r.key_id.len() > 64 || !r.key_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(bad("key_id", "must be a key id (at most 64 letters, digits or '_')"));
            }
            if r.latency_histogram.len() > LATENCY_BUCKETS_MS.len() + 1 {
                return Err(bad("latency_histogram", "has more buckets than LATENCY_BUCKETS_MS + 1"));
            }
            if !r.cost_usd.is_finite() || r.cost_usd < 0.0 {
                return Err(bad("cost_usd", "must be a non-negative number"));
            }
            if let Err((field, why)) = check_counts(r) {
                return Err(bad(field, &why));
            }
            Ok(ReportRecord {
                minute_ms: r.minute_ms,
                backend_id: r.backend_id.clone(),
                model: r.model.clone(),
                pool: r.pool.clone(),
                key_id: r.key_id.clone(),
                counters: UsageCounters {
                    attempts: r.attempts,
                    answered: r.answered,
                    answered_errors: r.answered_errors,
                    succeeded: r.succeeded,
                    errors_429: r.errors_429,
                    errors_5xx: r.errors_5xx,
                    errors_timeout: r.errors_timeout,
                    errors_connect: r.errors_connect,
                    errors_4xx: r.errors_4xx,
                    prompt_tokens: r.prompt_tokens,
                    completion_tokens: r.completion_tokens,
                    total_tokens: r.total_tokens,
                    cost_usd: r.cost_usd,
                    latency_ms_sum: r.latency_ms_sum,
                    latency_histogram: r.latency_histogram.clone(),
                    ttft_ms_sum: r.ttft_ms_sum,
                    ttft_count: r.ttft_count,
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Counts from everywhere in u64: small, near the bounds, near overflow.
    fn count() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..1000, MAX_COUNT - 2..MAX_COUNT + 2, u64::MAX - 2..=u64::MAX, any::<u64>()]
    }

    fn record() -> impl Strategy<Value = pb::UsageRecord> {
        (
            prop::array::uniform8(count()),
            prop::array::uniform6(count()),
            prop::collection::vec(count(), 0..13),
            any::<f64>(),
            any::<i64>(),
        )
            .prop_map(|(a, b, histogram, cost, minute)| pb::UsageRecord {
                minute_ms: minute,
                backend_id: "bkd_1".into(),
                model: "m".into(),
                attempts: a[0],
                answered: a[1],
                answered_errors: a[2],
                succeeded: a[3],
                errors_429: a[4],
                errors_5xx: a[5],
                errors_timeout: a[6],
                errors_connect: a[7],
                errors_4xx: b[0],
                prompt_tokens: b[1],
                completion_tokens: b[2],
                total_tokens: b[3],
                latency_ms_sum: b[4],
                ttft_ms_sum: b[5],
                ttft_count: b[0] / 2,
                latency_histogram: histogram,
                cost_usd: cost,
                ..Default::default()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any record: refused by name or accepted, never a panic; what is accepted is
        /// possible, and a thousand of them add up without overflowing.
        #[test]
        fn batch_validation_accepts_only_possible_counts(records in prop::collection::vec(record(), 1..4)) {
            let batch = pb::ReportBatch { node_id: "n".into(), boot_id: "b".into(), seq: 1, records, ..Default::default() };
            match check_batch(&batch) {
                Err(e) => {
                    prop_assert!(e.field.starts_with("records["), "{}", e);
                }
                Ok(records) => {
                    for r in &records {
                        let c = &r.counters;
                        let results = c.succeeded + c.errors_429 + c.errors_5xx + c.errors_timeout + c.errors_connect + c.errors_4xx;
                        prop_assert!(results <= c.attempts && c.answered_errors <= c.answered);
                        prop_assert!(c.latency_histogram.iter().sum::<u64>() <= c.attempts);
                        let mut total = c.clone();
                        for _ in 0..1000 {
                            prop_assert!(total.checked_merge(c).is_ok());
                        }
                    }
                }
            }
        }

        /// What a proxy really sends (one result, one histogram count, at most one ttft
        /// per attempt; realistic tokens, latency and cost) is always accepted.
        #[test]
        fn batches_a_proxy_sends_are_accepted(
            attempts in prop::collection::vec((0usize..6, 0u64..200_000, 0u64..8_000, 0u64..600_000, any::<bool>()), 1..200),
            proxy_answered in 0u64..50,
        ) {
            let mut r = pb::UsageRecord { minute_ms: 60_000, latency_histogram: vec![0; 11], ..Default::default() };
            for (outcome, prompt, completion, ms, streamed) in attempts {
                r.attempts += 1;
                r.answered += 1;
                *[&mut r.succeeded, &mut r.errors_429, &mut r.errors_5xx, &mut r.errors_timeout, &mut r.errors_connect, &mut r.errors_4xx][outcome] += 1;
                if outcome != 0 {
                    r.answered_errors += 1;
                }
                r.prompt_tokens += prompt;
                r.completion_tokens += completion;
                r.total_tokens += prompt + completion;
                r.latency_ms_sum += ms;
                r.latency_histogram[outcome] += 1;
                r.cost_usd += (prompt + completion) as f64 * 1e-5;
                if streamed {
                    r.ttft_count += 1;
                    r.ttft_ms_sum += ms / 2;
                }
            }
            r.answered += proxy_answered;
            r.answered_errors += proxy_answered;
            let batch = pb::ReportBatch { node_id: "n".into(), boot_id: "b".into(), seq: 1, records: vec![r], ..Default::default() };
            prop_assert!(check_batch(&batch).is_ok(), "{:?}", check_batch(&batch).err());
        }
    }
}
