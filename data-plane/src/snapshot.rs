//! Config snapshots in the data plane's own types. The proto message is converted once,
//! here, with every field checked; the rest of the proxy never sees a generated type.

use std::{collections::HashMap, time::Duration};

use http::{HeaderValue, Uri};
use sidecar_proto::v1 as pb;

/// A snapshot field that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SnapshotError {
    /// Field path, e.g. `backends[2].base_url`.
    pub field: String,
    /// Why.
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> SnapshotError {
    SnapshotError { field: field.into(), reason: reason.into() }
}

/// Price per token, USD.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cost {
    /// Prompt tokens.
    pub input: f64,
    /// Completion tokens.
    pub output: f64,
    /// Cached prompt tokens read.
    pub cache_read: f64,
}

/// How a backend serves one canonical model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRoute {
    /// The provider's model id; `None` keeps the name the client sent (wildcard `*`).
    pub native_id: Option<String>,
    /// Price per token.
    pub cost: Cost,
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
    /// `Bearer <key>`, built once and marked sensitive so it never reaches a debug log.
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
    /// The upstream URI of each forwarded endpoint, in [`ENDPOINTS`] order, built once.
    pub targets: Vec<Uri>,
    /// `X-Sidecar-Backend` and `X-Sidecar-Pool` values (none if the name cannot be one).
    pub name_header: Option<HeaderValue>,
    /// See `name_header`.
    pub pool_header: Option<HeaderValue>,
}

/// The endpoints forwarded to providers.
pub const ENDPOINTS: [&str; 3] = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"];

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
        ENDPOINTS.iter().position(|p| *p == path).and_then(|i| self.targets.get(i))
    }

    /// Whether the upstream identity (URL or key) differs, which resets runtime state.
    pub fn same_upstream(&self, other: &BackendConfig) -> bool {
        self.origin == other.origin
            && self.path_prefix == other.path_prefix
            && self.authorization == other.authorization
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
}

fn secs(v: u32) -> Duration {
    Duration::from_secs(u64::from(v))
}

impl TryFrom<&pb::Settings> for Settings {
    type Error = SnapshotError;

    fn try_from(s: &pb::Settings) -> Result<Self, SnapshotError> {
        if s.cooldown_base_seconds == 0 || s.cooldown_max_seconds < s.cooldown_base_seconds {
            return Err(bad(
                "settings.cooldown_max_seconds",
                "must be at least cooldown_base_seconds, which must be positive",
            ));
        }
        if !(0.0..=1.0).contains(&s.emergency_fraction) {
            return Err(bad("settings.emergency_fraction", "must be between 0 and 1"));
        }
        if s.queue_timeout_seconds == 0 || s.failure_threshold == 0 || s.bucket_burst == 0 {
            return Err(bad("settings", "queue_timeout_seconds, failure_threshold and bucket_burst must be positive"));
        }
        Ok(Self {
            cooldown_base: secs(s.cooldown_base_seconds),
            cooldown_max: secs(s.cooldown_max_seconds),
            queue_capacity: s.queue_capacity as usize,
            queue_timeout: secs(s.queue_timeout_seconds),
            low_priority_timeout: secs(s.low_priority_timeout_seconds),
            emergency_fraction: s.emergency_fraction,
            near_recovery_wait: secs(s.near_recovery_wait_seconds),
            failure_threshold: s.failure_threshold,
            error_cooldown: secs(s.error_cooldown_seconds.max(1)),
            bucket_burst: s.bucket_burst,
            adaptive_retreat: s.adaptive_retreat,
        })
    }
}

fn backend(i: usize, b: &pb::SnapshotBackend, pools: &[PoolConfig]) -> Result<BackendConfig, SnapshotError> {
    let f = |name: &str| format!("backends[{i}].{name}");
    if b.id.is_empty() {
        return Err(bad(f("id"), "must not be empty"));
    }
    let uri: Uri = b.base_url.parse().map_err(|e| bad(f("base_url"), format!("not a URI: {e}")))?;
    let scheme = uri.scheme_str().unwrap_or_default();
    if !matches!(scheme, "http" | "https") || uri.authority().is_none() {
        return Err(bad(f("base_url"), "must be an absolute http(s) URL"));
    }
    let origin = Uri::builder()
        .scheme(scheme)
        .authority(uri.authority().expect("checked").clone())
        .path_and_query("/")
        .build()
        .map_err(|e| bad(f("base_url"), e.to_string()))?;
    let mut authorization = HeaderValue::from_str(&format!("Bearer {}", b.api_key))
        .map_err(|_| bad(f("api_key"), "is not a valid header value"))?;
    authorization.set_sensitive(true);
    if b.api_key.is_empty() {
        return Err(bad(f("api_key"), "must not be empty"));
    }
    if b.rpm_limit == 0 {
        return Err(bad(f("rpm_limit"), "must be at least 1"));
    }
    // 0: a control plane from before the field, whose providers count per minute.
    let window_seconds = if b.window_seconds == 0 { 60 } else { b.window_seconds };
    if window_seconds > 60 {
        return Err(bad(f("window_seconds"), format!("must be 1..=60 (got {window_seconds})")));
    }
    let window_limit = (u64::from(b.rpm_limit) * u64::from(window_seconds) / 60).max(1) as u32;
    if !pools.iter().any(|p| p.name == b.pool) {
        return Err(bad(f("pool"), format!("unknown pool {:?}", b.pool)));
    }
    let mut models = HashMap::new();
    for (canonical, m) in &b.model_mappings {
        if canonical.is_empty() || m.native_id.is_empty() {
            return Err(bad(
                f(&format!("model_mappings[{canonical:?}]")),
                "canonical name and native_id must not be empty",
            ));
        }
        let cost = m.cost.unwrap_or_default();
        let native_id = (m.native_id != "*").then(|| m.native_id.clone());
        models.insert(
            canonical.clone(),
            ModelRoute {
                native_id,
                cost: Cost { input: cost.input, output: cost.output, cache_read: cost.cache_read },
            },
        );
    }
    let path_prefix = uri.path().trim_end_matches('/').to_owned();
    let targets = ENDPOINTS
        .iter()
        .map(|p| crate::upstream::target_uri(&origin, &path_prefix, p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(f("base_url"), format!("cannot build the upstream URL: {e}")))?;
    Ok(BackendConfig {
        targets,
        name_header: HeaderValue::from_str(&b.name).ok(),
        pool_header: HeaderValue::from_str(&b.pool).ok(),
        id: b.id.clone(),
        name: b.name.clone(),
        origin,
        path_prefix,
        authorization,
        timeout: secs(b.timeout_seconds.max(1)),
        rpm_limit: b.rpm_limit,
        tpm_limit: (b.tpm_limit > 0).then_some(b.tpm_limit),
        window_seconds,
        pool: b.pool.clone(),
        enabled: b.enabled,
        weight: b.weight.max(1),
        models,
        resource_version: b.resource_version,
        initial_share: b.initial_rpm_share.map(|share| share.min(window_limit)),
        healthy: b.health != "error",
        cooldown_remaining: (b.cooldown_remaining_ms > 0).then(|| Duration::from_millis(b.cooldown_remaining_ms)),
        consecutive_429: b.consecutive_429,
    })
}

impl TryFrom<&pb::Snapshot> for Snapshot {
    type Error = SnapshotError;

    fn try_from(s: &pb::Snapshot) -> Result<Self, SnapshotError> {
        let pools: Result<Vec<PoolConfig>, SnapshotError> = s
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let spill_on_failure = match pb::PoolSpill::try_from(p.spill) {
                    Ok(pb::PoolSpill::OnFailure) => true,
                    Ok(_) => false,
                    Err(_) => return Err(bad(format!("pools[{i}].spill"), format!("unknown value {}", p.spill))),
                };
                Ok(PoolConfig { name: p.name.clone(), order: p.order, spill_on_failure })
            })
            .collect();
        let mut pools = pools?;
        pools.sort_by(|a, b| a.order.cmp(&b.order).then_with(|| a.name.cmp(&b.name)));
        let settings = Settings::try_from(s.settings.as_ref().ok_or_else(|| bad("settings", "missing"))?)?;
        let backends =
            s.backends.iter().enumerate().map(|(i, b)| backend(i, b, &pools)).collect::<Result<Vec<_>, _>>()?;
        let mut ids = std::collections::HashSet::new();
        for (i, b) in backends.iter().enumerate() {
            if !ids.insert(&b.id) {
                return Err(bad(format!("backends[{i}].id"), format!("duplicate id {}", b.id)));
            }
        }
        Ok(Self { version: s.version, nonce: s.nonce.clone(), backends, pools, settings })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn pb_snapshot() -> pb::Snapshot {
        let mut mappings = HashMap::new();
        mappings.insert("gpt".to_string(), pb::ModelMapping { native_id: "native-gpt".into(), ..Default::default() });
        pb::Snapshot {
            version: 3,
            nonce: "n".into(),
            backends: vec![pb::SnapshotBackend {
                id: "bkd_1".into(),
                name: "one".into(),
                base_url: "https://api.example.com/v1".into(),
                api_key: "sk-secret".into(),
                timeout_seconds: 30,
                rpm_limit: 60,
                pool: "primary".into(),
                enabled: true,
                weight: 1,
                model_mappings: mappings,
                ..Default::default()
            }],
            pools: vec![
                pb::Pool { name: "fallback".into(), order: 100, ..Default::default() },
                pb::Pool { name: "primary".into(), order: 0, ..Default::default() },
            ],
            settings: Some(pb::Settings {
                cooldown_base_seconds: 30,
                cooldown_max_seconds: 600,
                queue_capacity: 500,
                queue_timeout_seconds: 30,
                low_priority_timeout_seconds: 2,
                emergency_fraction: 0.1,
                near_recovery_wait_seconds: 10,
                failure_threshold: 3,
                error_cooldown_seconds: 30,
                bucket_burst: 3,
                adaptive_retreat: false,
                ..Default::default()
            }),
            generated_at_ms: 0,
        }
    }

    #[test]
    fn a_valid_snapshot_converts() {
        let s = Snapshot::try_from(&pb_snapshot()).unwrap();
        let b = &s.backends[0];
        assert_eq!(b.origin.to_string(), "https://api.example.com/");
        assert_eq!(b.path_prefix, "/v1");
        assert!(b.authorization.is_sensitive());
        assert_eq!(b.models["gpt"].native_id.as_deref(), Some("native-gpt"));
        assert_eq!(s.pools.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["primary", "fallback"]);
        assert_eq!(s.settings, Settings::default());
    }

    #[test]
    fn invalid_fields_are_named() {
        let mut p = pb_snapshot();
        p.backends[0].base_url = "ftp://x".into();
        assert_eq!(Snapshot::try_from(&p).unwrap_err().field, "backends[0].base_url");
        let mut p = pb_snapshot();
        p.backends[0].rpm_limit = 0;
        assert_eq!(Snapshot::try_from(&p).unwrap_err().field, "backends[0].rpm_limit");
        let mut p = pb_snapshot();
        p.backends[0].pool = "ghost".into();
        assert_eq!(Snapshot::try_from(&p).unwrap_err().field, "backends[0].pool");
        let mut p = pb_snapshot();
        p.settings = None;
        assert_eq!(Snapshot::try_from(&p).unwrap_err().field, "settings");
        let mut p = pb_snapshot();
        p.backends.push(p.backends[0].clone());
        assert_eq!(Snapshot::try_from(&p).unwrap_err().field, "backends[1].id");
    }

    #[test]
    fn a_wildcard_mapping_keeps_the_client_model() {
        let mut p = pb_snapshot();
        p.backends[0]
            .model_mappings
            .insert("*".into(), pb::ModelMapping { native_id: "*".into(), ..Default::default() });
        let s = Snapshot::try_from(&p).unwrap();
        assert_eq!(s.backends[0].models["*"].native_id, None);
    }
}
