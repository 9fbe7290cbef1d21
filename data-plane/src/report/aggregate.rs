//! The reporter's running totals: usage events summed per (minute, backend, model, key) in
//! the data plane's own types, until a batch is cut and `wire` converts them.

use std::sync::Arc;

use super::{LATENCY_BUCKETS_MS, Outcome, UsageEvent};

/// Latency histogram buckets: one per bound in [`LATENCY_BUCKETS_MS`], plus overflow.
pub(crate) const BUCKETS: usize = LATENCY_BUCKETS_MS.len() + 1;

/// What usage is grouped by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct UsageKey {
    /// Start of the minute, unix ms.
    pub(crate) minute_ms: i64,
    /// Backend id ("" = answered by the proxy itself).
    pub(crate) backend_id: Arc<str>,
    /// Canonical model.
    pub(crate) model: Arc<str>,
    /// The client key's id (`None` without one).
    pub(crate) key_id: Option<Arc<str>>,
}

impl UsageKey {
    /// The group `e` belongs to.
    pub(crate) fn of(e: &UsageEvent) -> Self {
        Self {
            minute_ms: e.at_ms - e.at_ms.rem_euclid(60_000),
            backend_id: e.backend_id.clone(),
            model: e.model.clone(),
            key_id: e.key_id.clone(),
        }
    }
}

/// Usage summed over one [`UsageKey`].
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct UsageTotals {
    /// The backend's pool (from the first event).
    pub(crate) pool: Arc<str>,
    pub(crate) attempts: u64,
    pub(crate) succeeded: u64,
    pub(crate) errors_429: u64,
    pub(crate) errors_5xx: u64,
    pub(crate) errors_timeout: u64,
    pub(crate) errors_connect: u64,
    pub(crate) errors_4xx: u64,
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
    pub(crate) total_tokens: u64,
    pub(crate) cost_usd: f64,
    pub(crate) latency_ms_sum: u64,
    /// Attempts per latency bucket; all zero while `attempts` is 0.
    pub(crate) latency_histogram: [u64; BUCKETS],
    pub(crate) ttft_ms_sum: u64,
    pub(crate) ttft_count: u64,
    pub(crate) answered: u64,
    pub(crate) answered_errors: u64,
}

fn bucket_index(ms: u64) -> usize {
    LATENCY_BUCKETS_MS.iter().position(|&b| ms <= b).unwrap_or(LATENCY_BUCKETS_MS.len())
}

impl UsageTotals {
    /// Empty totals for events of `pool`.
    pub(crate) fn new(pool: Arc<str>) -> Self {
        Self { pool, ..Default::default() }
    }

    /// Adds one event.
    pub(crate) fn add(&mut self, e: &UsageEvent) {
        match e.answered {
            Some(true) => self.answered += 1,
            Some(false) => {
                self.answered += 1;
                self.answered_errors += 1;
            }
            None => {}
        }
        let Some(outcome) = e.attempt else { return };
        self.attempts += 1;
        match outcome {
            Outcome::Success => self.succeeded += 1,
            Outcome::RateLimited => self.errors_429 += 1,
            Outcome::ServerError => self.errors_5xx += 1,
            Outcome::Timeout => self.errors_timeout += 1,
            Outcome::Connect => self.errors_connect += 1,
            Outcome::ClientError => self.errors_4xx += 1,
        }
        if let Some(u) = e.usage {
            self.prompt_tokens += u.prompt;
            self.completion_tokens += u.completion;
            self.total_tokens += u.total;
        }
        self.cost_usd += e.cost_usd;
        let ms = e.latency.as_millis() as u64;
        self.latency_ms_sum += ms;
        self.latency_histogram[bucket_index(ms)] += 1;
        if let Some(t) = e.ttft {
            self.ttft_ms_sum += t.as_millis() as u64;
            self.ttft_count += 1;
        }
    }
}
