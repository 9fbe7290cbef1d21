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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// The provider's requests per minute for this model on this key, if it limits the
    /// model on its own (within the backend's limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm_limit: Option<u32>,
    /// The provider's tokens per minute for this model on this key, if limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm_limit: Option<u32>,
    /// The provider enforces the model's limits per window of this many seconds; `None` =
    /// the backend's window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<u32>,
}

impl ModelMapping {
    /// The window the provider enforces the model's limits in, given the backend's.
    pub fn window_seconds(&self, backend: u32) -> u32 {
        self.window_seconds.unwrap_or(backend)
    }

    /// Whether the provider limits this model on its own (requests or tokens).
    pub fn has_limits(&self) -> bool {
        self.rpm_limit.is_some() || self.tpm_limit.is_some()
    }
}

/// The API a provider backend speaks: which client paths it serves and how it is
/// authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// OpenAI-compatible (chat, completions, embeddings, responses); `Authorization: Bearer`.
    #[default]
    Openai,
    /// Anthropic Messages (messages, count_tokens); `x-api-key`.
    Anthropic,
}

impl Api {
    /// The API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Openai => "openai",
            Api::Anthropic => "anthropic",
        }
    }
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
    /// Whether proxies read the provider's rate-limit headers and pause the backend when
    /// they report the budget spent (records written before this field: yes).
    #[serde(default = "defaults::yes")]
    pub learn_limits: bool,
    /// The API the provider speaks (records written before this field: OpenAI).
    #[serde(default)]
    pub api: Api,
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
    pub(super) fn yes() -> bool {
        true
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
