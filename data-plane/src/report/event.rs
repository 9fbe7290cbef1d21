//! What the request path tells the reporter and the control plane, in the data plane's
//! own types: a [`UsageEvent`] per finished attempt (aggregated and batched by the
//! reporter) and a [`NodeEvent`] for 429s and recoveries (sent on the Sync stream at
//! once). Nothing here is a wire type; `wire` converts at delivery.

use std::{sync::Arc, time::Duration};

use crate::upstream::Usage;

/// How an attempt ended, for usage counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Upstream 2xx.
    Success,
    /// Upstream 429.
    RateLimited,
    /// Upstream 5xx.
    ServerError,
    /// No answer in time.
    Timeout,
    /// No connection (or it broke).
    Connect,
    /// Upstream 4xx other than 429.
    ClientError,
}

/// One finished upstream attempt.
#[derive(Debug, Clone)]
pub struct UsageEvent {
    /// Unix ms when it finished.
    pub at_ms: i64,
    /// Backend id.
    pub backend_id: Arc<str>,
    /// Backend pool.
    pub pool: Arc<str>,
    /// Canonical model the client asked for.
    pub model: Arc<str>,
    /// How the upstream attempt ended; `None` when the event only records an answer
    /// (the proxy answered itself, or passed on an earlier attempt's error).
    pub attempt: Option<Outcome>,
    /// The client got its answer from this event: `Some(true)` for 2xx.
    pub answered: Option<bool>,
    /// Tokens, when the response carried usage.
    pub usage: Option<Usage>,
    /// Cost in USD.
    pub cost_usd: f64,
    /// Request to end of response.
    pub latency: Duration,
    /// Request to first byte, for streams.
    pub ttft: Option<Duration>,
    /// The client key the request presented (its id); `None` without one.
    pub key_id: Option<Arc<str>>,
}

/// A backend answered 429 and this node cooled it down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitEvent {
    /// Backend id.
    pub backend_id: String,
    /// The upstream's `Retry-After`, if it sent one.
    pub retry_after: Option<Duration>,
    /// The cooldown this node applied.
    pub cooldown: Duration,
    /// Consecutive 429s on this node, this one included.
    pub consecutive_count: u32,
    /// Unix ms.
    pub at_ms: i64,
    /// The canonical model that cooled on its own (the provider's 429 named a model with
    /// its own limits); empty = the backend.
    pub model: String,
}

/// A backend that had 429s answered 2xx again: the fleet-wide count starts over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendRecovered {
    /// Backend id.
    pub backend_id: String,
    /// Unix ms.
    pub at_ms: i64,
    /// The canonical model whose own cooldown ended; empty = the backend's.
    pub model: String,
}

/// The provider's rate-limit headers said the key's budget is spent until a reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendExhausted {
    /// Backend id.
    pub backend_id: String,
    /// Until the budget refills, from `at_ms`.
    pub reset: Duration,
    /// Unix ms.
    pub at_ms: i64,
    /// The canonical model with its own limits whose budget is spent; empty = the key's.
    pub model: String,
}

/// The provider's headers report a lower request limit than the backend's configured one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitLearned {
    /// Backend id.
    pub backend_id: String,
    /// The provider's request limit, per minute.
    pub rpm_limit: u32,
    /// Unix ms.
    pub at_ms: i64,
}

/// An event the control plane hears about at once, not batched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A 429 and the cooldown it caused.
    RateLimited(RateLimitEvent),
    /// A success after 429s.
    Recovered(BackendRecovered),
    /// The provider reported the budget spent: the fleet pauses the backend.
    Exhausted(BackendExhausted),
    /// The provider reported a lower limit than configured.
    LimitLearned(LimitLearned),
}
