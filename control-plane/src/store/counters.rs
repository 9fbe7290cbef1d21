//! Usage counters (what reports carry and rollups sum) and cooldown events.

use serde::{Deserialize, Serialize};

/// Upper bounds (ms) of the latency histogram buckets; one more bucket counts the rest.
pub const LATENCY_BUCKETS_MS: [u64; 10] = [50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000];

/// Usage counters of one (time bucket, backend, model, node).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct UsageCounters {
    /// Upstream attempts.
    #[serde(alias = "requests")]
    pub attempts: u64,
    /// Client requests answered (by this backend's response, or by the proxy).
    #[serde(default)]
    pub answered: u64,
    /// Client requests answered with a non-2xx status.
    #[serde(default)]
    pub answered_errors: u64,
    pub succeeded: u64,
    pub errors_429: u64,
    pub errors_5xx: u64,
    pub errors_timeout: u64,
    pub errors_connect: u64,
    pub errors_4xx: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cost_usd: f64,
    pub latency_ms_sum: u64,
    pub latency_histogram: Vec<u64>,
    pub ttft_ms_sum: u64,
    pub ttft_count: u64,
}

/// Applies `op` to each pair of integer counters of two [`UsageCounters`], naming the
/// field; the histogram is handled by the callers.
macro_rules! each_count {
    ($a:expr, $b:expr, $op:expr) => {{
        let (a, b) = ($a, $b);
        let op = $op;
        (|| {
            op("attempts", &mut a.attempts, b.attempts)?;
            op("answered", &mut a.answered, b.answered)?;
            op("answered_errors", &mut a.answered_errors, b.answered_errors)?;
            op("succeeded", &mut a.succeeded, b.succeeded)?;
            op("errors_429", &mut a.errors_429, b.errors_429)?;
            op("errors_5xx", &mut a.errors_5xx, b.errors_5xx)?;
            op("errors_timeout", &mut a.errors_timeout, b.errors_timeout)?;
            op("errors_connect", &mut a.errors_connect, b.errors_connect)?;
            op("errors_4xx", &mut a.errors_4xx, b.errors_4xx)?;
            op("prompt_tokens", &mut a.prompt_tokens, b.prompt_tokens)?;
            op("completion_tokens", &mut a.completion_tokens, b.completion_tokens)?;
            op("total_tokens", &mut a.total_tokens, b.total_tokens)?;
            op("latency_ms_sum", &mut a.latency_ms_sum, b.latency_ms_sum)?;
            op("ttft_ms_sum", &mut a.ttft_ms_sum, b.ttft_ms_sum)?;
            op("ttft_count", &mut a.ttft_count, b.ttft_count)?;
            Ok::<(), &'static str>(())
        })()
    }};
}

impl UsageCounters {
    /// Adds `other` into `self`, saturating: totals read for statistics never wrap.
    pub fn merge(&mut self, other: &UsageCounters) {
        let saturating = |_: &'static str, a: &mut u64, b: u64| -> Result<(), &'static str> {
            *a = a.saturating_add(b);
            Ok(())
        };
        let _ = each_count!(&mut *self, other, saturating);
        self.cost_usd += other.cost_usd;
        if self.latency_histogram.len() < other.latency_histogram.len() {
            self.latency_histogram.resize(other.latency_histogram.len(), 0);
        }
        for (mine, theirs) in self.latency_histogram.iter_mut().zip(&other.latency_histogram) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    /// Adds `other` into `self` for storing, or names the first counter that would
    /// overflow (and leaves `self` unchanged).
    pub fn checked_merge(&mut self, other: &UsageCounters) -> Result<(), &'static str> {
        let mut sum = self.clone();
        each_count!(&mut sum, other, |name: &'static str, a: &mut u64, b: u64| -> Result<(), &'static str> {
            *a = a.checked_add(b).ok_or(name)?;
            Ok(())
        })?;
        sum.cost_usd += other.cost_usd;
        if !sum.cost_usd.is_finite() {
            return Err("cost_usd");
        }
        if sum.latency_histogram.len() < other.latency_histogram.len() {
            sum.latency_histogram.resize(other.latency_histogram.len(), 0);
        }
        for (mine, theirs) in sum.latency_histogram.iter_mut().zip(&other.latency_histogram) {
            *mine = mine.checked_add(*theirs).ok_or("latency_histogram")?;
        }
        *self = sum;
        Ok(())
    }
}

/// A fleet-wide cooldown the control plane applied (tree `cooldowns`, keyed by start time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CooldownRecord {
    /// Backend id.
    pub backend_id: String,
    /// The node whose 429 caused it.
    pub node_id: String,
    /// Consecutive 429s, fleet-wide.
    pub consecutive_count: u32,
    /// Cooldown applied, ms.
    pub duration_ms: u64,
    /// Retry-After the upstream sent, ms (0 = none).
    pub retry_after_ms: u64,
    /// Start, unix ms.
    pub start_ms: i64,
    /// End, unix ms.
    pub end_ms: i64,
    /// The canonical model that cooled on its own; empty = the whole backend.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model: String,
}
