//! API input in domain terms, before validation: the shapes the API layer converts its
//! wire messages into, field for field, so that validation can name the same paths.

use std::collections::HashMap;

use crate::store::{Api, Cost, Source};

/// A model mapping as given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MappingInput {
    /// The provider's model id.
    pub native_id: String,
    /// USD per token; absent = free.
    pub cost: Cost,
    /// 0 = the default.
    pub context_window: u32,
    /// 0 = the default.
    pub max_tokens: u32,
    /// Whether the model reasons.
    pub reasoning: bool,
    /// Input modalities; empty = text.
    pub input_modalities: Vec<String>,
    /// The provider's per-model requests per minute; `None` = only the backend's.
    pub rpm_limit: Option<u32>,
    /// The provider's per-model tokens per minute; `None` = only the backend's.
    pub tpm_limit: Option<u32>,
    /// The window of the model's limits in seconds; `None` = the backend's.
    pub window_seconds: Option<u32>,
}

/// A new backend as given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackendSpec {
    /// Unique name.
    pub name: String,
    /// Display label.
    pub label: String,
    /// Provider base URL.
    pub base_url: String,
    /// Provider API key (plaintext, sealed on validation).
    pub api_key: String,
    /// 0 = the default.
    pub timeout_seconds: i64,
    /// Absent = the default.
    pub rpm_limit: Option<i64>,
    /// 0 = none.
    pub tpm_limit: i64,
    /// 0 = a minute.
    pub window_seconds: i64,
    /// Empty = primary.
    pub pool: String,
    /// Absent = enabled.
    pub enabled: Option<bool>,
    /// Absent = 1.
    pub weight: Option<i64>,
    /// Canonical name → mapping.
    pub model_mappings: HashMap<String, MappingInput>,
    /// Allowed regions; empty = all.
    pub regions: Vec<String>,
    /// Free metadata.
    pub metadata: HashMap<String, String>,
    /// Where it came from; `None` = the API.
    pub source: Option<Source>,
    /// Read the provider's rate-limit headers; `None` = yes.
    pub learn_limits: Option<bool>,
    /// The API the provider speaks; `None` = OpenAI.
    pub api: Option<Api>,
}

/// A partial update of a backend: only present fields change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackendPatch {
    /// New name.
    pub name: Option<String>,
    /// New label.
    pub label: Option<String>,
    /// New base URL.
    pub base_url: Option<String>,
    /// New API key.
    pub api_key: Option<String>,
    /// New timeout.
    pub timeout_seconds: Option<i64>,
    /// New request limit.
    pub rpm_limit: Option<i64>,
    /// New token limit (0 = none).
    pub tpm_limit: Option<i64>,
    /// New window.
    pub window_seconds: Option<i64>,
    /// New pool.
    pub pool: Option<String>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// New weight.
    pub weight: Option<i64>,
    /// Replaces every mapping.
    pub model_mappings: Option<HashMap<String, MappingInput>>,
    /// Replaces the regions.
    pub regions: Option<Vec<String>>,
    /// Replaces the metadata.
    pub metadata: Option<HashMap<String, String>>,
    /// Read the provider's rate-limit headers or not.
    pub learn_limits: Option<bool>,
    /// The API the provider speaks.
    pub api: Option<Api>,
}

/// A partial update of the settings: only present fields change. Fields mean what they
/// mean in [`crate::store::Settings`].
#[derive(Debug, Clone, Default, PartialEq)]
#[allow(missing_docs)]
pub struct SettingsPatch {
    pub cooldown_base_seconds: Option<i64>,
    pub cooldown_max_seconds: Option<i64>,
    pub queue_capacity: Option<i64>,
    pub queue_timeout_seconds: Option<i64>,
    pub low_priority_timeout_seconds: Option<i64>,
    pub emergency_fraction: Option<f64>,
    pub near_recovery_wait_seconds: Option<i64>,
    pub failure_threshold: Option<i64>,
    pub error_cooldown_seconds: Option<i64>,
    pub bucket_burst: Option<i64>,
    pub adaptive_retreat: Option<bool>,
    pub retention_minute_hours: Option<i64>,
    pub retention_hour_days: Option<i64>,
    pub retention_day_days: Option<i64>,
    pub backup_interval_hours: Option<i64>,
    pub backup_retention_days: Option<i64>,
    pub probe_interval_seconds: Option<i64>,
    pub probe_timeout_seconds: Option<i64>,
}
