//! Domain records kept in the store. These, not the generated proto types, are what the
//! rest of the control plane works with.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crypto::Sealed;

/// What a request costs per token, in USD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// Prompt tokens.
    pub input: f64,
    /// Completion tokens.
    pub output: f64,
    /// Cached prompt tokens read.
    pub cache_read: f64,
    /// Prompt tokens written to a cache.
    pub cache_write: f64,
}

/// How one backend serves one canonical model name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMapping {
    /// The provider's model id the proxy rewrites `model` to.
    pub native_id: String,
    /// Price per token.
    pub cost: Cost,
    /// Context window in tokens.
    pub context_window: u32,
    /// Largest completion in tokens.
    pub max_tokens: u32,
    /// Whether the model reasons.
    pub reasoning: bool,
    /// Input kinds the model accepts.
    pub input_modalities: Vec<String>,
}

/// Where a backend came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Made in the browser console.
    Console,
    /// Made through the API (CLI, automation).
    Api,
    /// Made from V1 environment variables at first start.
    Env,
    /// Brought in by an import.
    Import,
}

impl Source {
    /// The API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Console => "console",
            Source::Api => "api",
            Source::Env => "env",
            Source::Import => "import",
        }
    }

    /// Parses the API's name.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "console" => Source::Console,
            "api" => Source::Api,
            "env" => Source::Env,
            "import" => Source::Import,
            _ => return None,
        })
    }
}

/// One provider endpoint: one base URL and one API key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendRecord {
    /// Server-assigned id (`bkd_…`).
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Free tag.
    pub label: String,
    /// Base URL including the version prefix, without a trailing slash.
    pub base_url: String,
    /// The API key, encrypted.
    pub api_key: Sealed,
    /// The key's masked form, kept so that listing never decrypts.
    pub api_key_masked: String,
    /// Overall upstream timeout.
    pub timeout_seconds: u32,
    /// Requests per minute the provider allows for this key.
    pub rpm_limit: u32,
    /// Tokens per minute the provider allows, if it limits tokens.
    pub tpm_limit: Option<u32>,
    /// The provider enforces `rpm_limit × window_seconds / 60` in every window of this
    /// many seconds (records written before this field: 60).
    #[serde(default = "defaults::window_seconds")]
    pub window_seconds: u32,
    /// Pool name.
    pub pool: String,
    /// Whether the backend takes traffic.
    pub enabled: bool,
    /// Relative weight within its pool.
    pub weight: u32,
    /// Canonical model name → mapping.
    pub model_mappings: BTreeMap<String, ModelMapping>,
    /// Regions allowed to use it; empty = all.
    pub regions: Vec<String>,
    /// Where it came from.
    pub source: Source,
    /// Free key/value pairs.
    pub metadata: BTreeMap<String, String>,
    /// Creation time, unix ms.
    pub created_at_ms: i64,
    /// Last change, unix ms.
    pub updated_at_ms: i64,
    /// Bumped by every write to this backend.
    pub resource_version: u64,
}

impl BackendRecord {
    /// Whether nodes of `region` may use this backend.
    pub fn allowed_in(&self, region: &str) -> bool {
        self.regions.is_empty() || self.regions.iter().any(|r| r == region)
    }

    /// Requests the provider allows in one of its windows.
    pub fn window_limit(&self) -> u32 {
        per_window(self.rpm_limit, self.window_seconds)
    }

    /// Tokens the provider allows in one of its windows, if it limits tokens.
    pub fn window_tpm(&self) -> Option<u32> {
        self.tpm_limit.map(|t| per_window(t, self.window_seconds).max(1))
    }
}

/// `per_minute × window_seconds / 60`, rounded down: what a provider that enforces a
/// per-minute figure at a finer grain allows in one of its windows.
pub fn per_window(per_minute: u32, window_seconds: u32) -> u32 {
    (u64::from(per_minute) * u64::from(window_seconds) / 60).min(u64::from(u32::MAX)) as u32
}

/// A routing pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    /// Unique name.
    pub name: String,
    /// Pools are tried in ascending order.
    pub order: i32,
    /// Free text.
    pub description: String,
    /// Built-in pools cannot be deleted.
    pub builtin: bool,
    /// When requests go on to the next pool (records written before this field: on_busy).
    #[serde(default)]
    pub spill: Spill,
}

/// When requests leave a pool for the next one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Spill {
    /// When no backend of the pool has a token now (overflow).
    #[default]
    OnBusy,
    /// Only when every backend of the pool is cooling, in error or disabled.
    OnFailure,
}

/// Typed system settings. Field meanings are documented on the proto `Settings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Settings {
    pub cooldown_base_seconds: u32,
    pub cooldown_max_seconds: u32,
    pub queue_capacity: u32,
    pub queue_timeout_seconds: u32,
    pub low_priority_timeout_seconds: u32,
    pub emergency_fraction: f64,
    pub near_recovery_wait_seconds: u32,
    pub failure_threshold: u32,
    pub error_cooldown_seconds: u32,
    pub bucket_burst: u32,
    pub adaptive_retreat: bool,
    #[serde(default = "defaults::retention_minute_hours")]
    pub retention_minute_hours: u32,
    #[serde(default = "defaults::retention_hour_days")]
    pub retention_hour_days: u32,
    #[serde(default = "defaults::retention_day_days")]
    pub retention_day_days: u32,
    #[serde(default = "defaults::backup_interval_hours")]
    pub backup_interval_hours: u32,
    #[serde(default = "defaults::backup_retention_days")]
    pub backup_retention_days: u32,
    #[serde(default = "defaults::probe_interval_seconds")]
    pub probe_interval_seconds: u32,
    #[serde(default = "defaults::probe_timeout_seconds")]
    pub probe_timeout_seconds: u32,
    /// Bumped by every settings write.
    pub resource_version: u64,
}

/// Defaults of settings added after the first release, so older stored settings read.
mod defaults {
    pub(super) fn retention_minute_hours() -> u32 {
        48
    }
    pub(super) fn retention_hour_days() -> u32 {
        90
    }
    pub(super) fn retention_day_days() -> u32 {
        730
    }
    pub(super) fn backup_interval_hours() -> u32 {
        24
    }
    pub(super) fn backup_retention_days() -> u32 {
        7
    }
    pub(super) fn probe_interval_seconds() -> u32 {
        60
    }
    pub(super) fn probe_timeout_seconds() -> u32 {
        10
    }
    pub(super) fn window_seconds() -> u32 {
        60
    }
}

impl Default for Settings {
    /// The defaults of SPEC.md.
    fn default() -> Self {
        Self {
            cooldown_base_seconds: 30,
            cooldown_max_seconds: 600,
            queue_capacity: 500,
            queue_timeout_seconds: 30,
            low_priority_timeout_seconds: 2,
            emergency_fraction: 0.10,
            near_recovery_wait_seconds: 10,
            failure_threshold: 3,
            error_cooldown_seconds: 30,
            bucket_burst: 3,
            adaptive_retreat: false,
            retention_minute_hours: defaults::retention_minute_hours(),
            retention_hour_days: defaults::retention_hour_days(),
            retention_day_days: defaults::retention_day_days(),
            backup_interval_hours: defaults::backup_interval_hours(),
            backup_retention_days: defaults::backup_retention_days(),
            probe_interval_seconds: defaults::probe_interval_seconds(),
            probe_timeout_seconds: defaults::probe_timeout_seconds(),
            resource_version: 1,
        }
    }
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything on AdminService.
    Admin,
    /// Reads on AdminService.
    Viewer,
    /// NodeService only.
    Node,
}

impl Role {
    /// The API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
            Role::Node => "node",
        }
    }

    /// Parses the API's name.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "admin" => Role::Admin,
            "viewer" => Role::Viewer,
            "node" => Role::Node,
            _ => return None,
        })
    }
}

/// An API token, stored as a hash only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// `tok_…`.
    pub id: String,
    /// What it may do.
    pub role: Role,
    /// Free text.
    pub name: String,
    /// SHA-256 of the bearer token.
    #[serde(with = "hex::serde")]
    pub hash: [u8; 32],
    /// Creation time, unix ms.
    pub created_at_ms: i64,
    /// Token id of the creator, or `system`/`env`.
    pub created_by: String,
    /// Node tokens: the node id it is bound to; `None` = shared (any node id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Node tokens bound to a node: the region it must say hello with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// What the control plane remembers of a data-plane node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct NodeRecord {
    pub id: String,
    pub region: String,
    pub software_version: String,
    pub boot_id: String,
    pub acked_config_version: u64,
    pub last_nack_error: String,
    pub last_nack_version: u64,
    pub last_seen_ms: i64,
    pub last_report_ms: i64,
    pub connected_since_ms: i64,
}

/// One entry of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When, unix ms.
    pub at_ms: i64,
    /// Token id of who did it (`system` for the control plane itself).
    pub actor: String,
    /// The actor's role.
    pub role: String,
    /// The RPC.
    pub action: String,
    /// What it touched.
    pub target: String,
    /// Config version the write produced.
    pub config_version: u64,
}

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
}
