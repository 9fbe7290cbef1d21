//! Config snapshots in the data plane's own types. `config_sync` converts the proto
//! message into these once, with every field checked; the rest of the proxy never sees a
//! generated type.

use std::{collections::HashMap, sync::Arc, time::Duration};

use http::{HeaderValue, Uri};

/// A snapshot field that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SnapshotError {
    /// Field path, e.g. `backends[2].base_url`.
    pub field: String,
    /// Why.
    pub reason: String,
}

/// Price per token, USD.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cost {
    /// Prompt tokens.
    pub input: f64,
    /// Completion tokens.
    pub output: f64,
    /// Cached prompt tokens read (0 = priced as input).
    pub cache_read: f64,
    /// Prompt tokens written to the cache (0 = priced as input).
    pub cache_write: f64,
}

/// The API a provider backend speaks: which client paths it serves and how its key is
/// sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Api {
    /// OpenAI-compatible: chat, completions, embeddings, responses; `Authorization: Bearer`.
    #[default]
    OpenAi,
    /// Anthropic Messages: messages, count_tokens; `x-api-key`.
    Anthropic,
}

impl Api {
    /// Both, for lookups by API.
    pub const ALL: [Api; 2] = [Api::OpenAi, Api::Anthropic];

    /// The name operators use (`--api`).
    pub fn as_str(self) -> &'static str {
        match self {
            Api::OpenAi => "openai",
            Api::Anthropic => "anthropic",
        }
    }

    /// Index into per-API tables.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// How a backend serves one canonical model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRoute {
    /// The provider's model id; `None` keeps the name the client sent (wildcard `*`).
    pub native_id: Option<String>,
    /// Price per token.
    pub cost: Cost,
    /// The provider's own limits for this model on the backend's key, if any.
    pub limits: Option<ModelLimits>,
    /// The live bucket of those limits, attached when the routing bundle is built
    /// (`None` in a snapshot, and for models without limits).
    pub bucket: Option<ModelBucketRef>,
}

/// A model's own fleet-wide cooldown (or pause) on a backend, from a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCooldown {
    /// Canonical name.
    pub model: String,
    /// 429 cooldown still to run.
    pub cooldown_remaining: Option<Duration>,
    /// Fleet-wide consecutive 429s of the model.
    pub consecutive_429: u32,
    /// Provider pause still to run.
    pub exhausted_remaining: Option<Duration>,
}

/// A model's own provider limits, per minute (scaled to the backend's window like its
/// limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelLimits {
    /// Requests per minute; `None` = only the backend's.
    pub rpm: Option<u32>,
    /// Tokens per minute; `None` = only the backend's.
    pub tpm: Option<u32>,
    /// The provider enforces them in every window of this many seconds (1..=60); `None`
    /// = the backend's window.
    pub window_seconds: Option<u32>,
}

impl ModelLimits {
    /// The window the limits are enforced in, in seconds: the model's own, else `backend`'s.
    pub fn window_of(&self, backend: &BackendConfig) -> u32 {
        self.window_seconds.unwrap_or(backend.window_seconds)
    }
}

/// A shared handle on a (backend, model) bucket; equal when it is the same bucket.
#[derive(Debug, Clone)]
pub struct ModelBucketRef(pub std::sync::Arc<crate::routing::ModelBucket>);

impl PartialEq for ModelBucketRef {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

/// One backend as the proxy uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// Control-plane id.
    pub id: String,
    /// Name, for logs and headers.
    pub name: String,
    /// Scheme and authority of the base URL.
    pub origin: Uri,
    /// Path prefix of the base URL (e.g. `/v1`), without a trailing slash.
    pub path_prefix: String,
    /// The API the provider speaks.
    pub api: Api,
    /// The key as the provider takes it (`Bearer <key>` in `authorization` for OpenAI,
    /// the bare key in `x-api-key` for Anthropic), built once and marked sensitive so it
    /// never reaches a debug log.
    pub authorization: HeaderValue,
    /// Overall upstream timeout (to response headers, and between body chunks).
    pub timeout: Duration,
    /// Requests per minute.
    pub rpm_limit: u32,
    /// Tokens per minute, if limited.
    pub tpm_limit: Option<u32>,
    /// The provider enforces `rpm_limit × window_seconds / 60` (and the same share of
    /// `tpm_limit`) in every window of this many seconds (1..=60).
    pub window_seconds: u32,
    /// Read the provider's rate-limit headers and pause when they report the budget spent.
    pub learn_limits: bool,
    /// Pool name.
    pub pool: String,
    /// Takes traffic.
    pub enabled: bool,
    /// Relative weight in its pool.
    pub weight: u32,
    /// Canonical model → route. `*` serves any model.
    pub models: HashMap<String, ModelRoute>,
    /// Bumped on every change to the backend.
    pub resource_version: u64,
    /// Starting share, in requests per window, until the first grant; `None` = the
    /// whole limit (no fleet coordination); 0 = nothing until a grant arrives.
    pub initial_share: Option<u32>,
    /// False when the control plane's health checks found it failing.
    pub healthy: bool,
    /// Fleet-wide cooldown in force when the snapshot was made.
    pub cooldown_remaining: Option<Duration>,
    /// Fleet-wide consecutive 429s.
    pub consecutive_429: u32,
    /// Fleet-wide pause in force when the snapshot was made (the provider reported the
    /// budget spent).
    pub exhausted_remaining: Option<Duration>,
    /// Starting share of each model with its own limits, by canonical name, in requests
    /// per window, until the first grant; a model missing here starts at the backend
    /// share's fraction of its limit.
    pub initial_model_shares: HashMap<String, u32>,
    /// Fleet-wide cooldowns and pauses of models with their own limits when the snapshot
    /// was made.
    pub model_cooldowns: Vec<ModelCooldown>,
    /// The upstream URI of each forwarded endpoint, in [`ENDPOINTS`] order, built once.
    pub targets: Vec<Uri>,
    /// `X-Sidecar-Backend` and `X-Sidecar-Pool` values (none if the name cannot be one).
    pub name_header: Option<HeaderValue>,
    /// See `name_header`.
    pub pool_header: Option<HeaderValue>,
}

/// The endpoints forwarded to providers, and the API that serves each.
pub const ENDPOINTS: [(&str, Api); 6] = [
    ("/v1/chat/completions", Api::OpenAi),
    ("/v1/completions", Api::OpenAi),
    ("/v1/embeddings", Api::OpenAi),
    ("/v1/responses", Api::OpenAi),
    ("/v1/messages", Api::Anthropic),
    ("/v1/messages/count_tokens", Api::Anthropic),
];

impl BackendConfig {
    /// The provider's window: `window_seconds` of a `minute` (60 s; shorter in tests).
    pub fn window(&self, minute: Duration) -> Duration {
        minute * self.window_seconds / 60
    }

    /// `per_minute × window_seconds / 60`, rounded down: what one window allows.
    pub fn per_window(&self, per_minute: u32) -> u32 {
        (u64::from(per_minute) * u64::from(self.window_seconds) / 60) as u32
    }

    /// Requests the provider allows per window (at least 1).
    pub fn window_limit(&self) -> u32 {
        self.per_window(self.rpm_limit).max(1)
    }

    /// Tokens the provider allows per window, if it limits tokens (at least 1).
    pub fn window_tpm(&self) -> Option<u32> {
        self.tpm_limit.map(|t| self.per_window(t).max(1))
    }

    /// The upstream URI for a client path in [`ENDPOINTS`].
    pub fn target(&self, path: &str) -> Option<&Uri> {
        ENDPOINTS.iter().position(|(p, _)| *p == path).and_then(|i| self.targets.get(i))
    }

    /// Whether the upstream identity (URL or key) differs, which resets runtime state.
    pub fn same_upstream(&self, other: &BackendConfig) -> bool {
        self.origin == other.origin
            && self.path_prefix == other.path_prefix
            && self.authorization == other.authorization
            && self.api == other.api
    }
}

/// A pool, in routing order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Name.
    pub name: String,
    /// Sort key.
    pub order: i32,
    /// Requests go on to the next pool only when every backend of this one is cooling,
    /// in error, disabled or failed the request (`on_failure`); otherwise also when none
    /// has a token now (`on_busy`, the default).
    pub spill_on_failure: bool,
}

/// Settings the proxy acts on.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub struct Settings {
    pub cooldown_base: Duration,
    pub cooldown_max: Duration,
    pub queue_capacity: usize,
    pub queue_timeout: Duration,
    pub low_priority_timeout: Duration,
    pub emergency_fraction: f64,
    pub near_recovery_wait: Duration,
    pub failure_threshold: u32,
    pub error_cooldown: Duration,
    pub bucket_burst: u32,
    pub adaptive_retreat: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            cooldown_base: Duration::from_secs(30),
            cooldown_max: Duration::from_secs(600),
            queue_capacity: 500,
            queue_timeout: Duration::from_secs(30),
            low_priority_timeout: Duration::from_secs(2),
            emergency_fraction: 0.10,
            near_recovery_wait: Duration::from_secs(10),
            failure_threshold: 3,
            error_cooldown: Duration::from_secs(30),
            bucket_burst: 3,
            adaptive_retreat: false,
        }
    }
}

/// A validated snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Config version.
    pub version: u64,
    /// Nonce to echo in the ACK/NACK.
    pub nonce: String,
    /// Backends.
    pub backends: Vec<BackendConfig>,
    /// Pools in routing order.
    pub pools: Vec<PoolConfig>,
    /// Settings.
    pub settings: Settings,
    /// The client keys this proxy accepts.
    pub client_keys: Vec<ClientKey>,
}

/// A client key (`sk-sc-…`) as a proxy knows it: its hash, scope and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKey {
    /// `key_…`.
    pub id: Arc<str>,
    /// SHA-256 of the key.
    pub hash: [u8; 32],
    /// Team, for accounting.
    pub team: Arc<str>,
    /// Canonical models it may use; empty = all.
    pub models: Vec<String>,
    /// Pools it may be routed to; empty = all.
    pub pools: Vec<String>,
    /// Fleet-wide limits (0 = none).
    pub rpm_limit: u32,
    /// See `rpm_limit`.
    pub tpm_limit: u32,
    /// See `rpm_limit`.
    pub max_concurrent: u32,
    /// Unix ms; `None` = never.
    pub expires_at_ms: Option<i64>,
    /// Refused while disabled.
    pub enabled: bool,
    /// This node's starting share of `rpm_limit` until its first grant (`None`: the
    /// whole limit; 0: wait for a grant).
    pub initial_share: Option<u32>,
    /// The same for `tpm_limit`.
    pub initial_tpm_share: Option<u32>,
    /// The same for `max_concurrent`.
    pub initial_concurrent_share: Option<u32>,
    /// The key has a spend budget (the control plane says what is left).
    pub has_budget: bool,
}

impl ClientKey {
    /// Whether the key has a limit of requests, tokens or requests in flight.
    pub fn is_limited(&self) -> bool {
        self.rpm_limit > 0 || self.tpm_limit > 0 || self.max_concurrent > 0
    }

    /// Whether the key may ask for `model` (canonical).
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }

    /// Whether the key may be routed to `pool`.
    pub fn allows_pool(&self, pool: &str) -> bool {
        self.pools.is_empty() || self.pools.iter().any(|p| p == pool)
    }
}
