//! Decoding a snapshot off the wire: `pb::Snapshot` into the proxy's own
//! [`Snapshot`], every field checked and a bad one named.

use std::{collections::HashMap, time::Duration};

use http::{HeaderValue, Uri};
use sidecar_proto::v1 as pb;

use crate::snapshot::{
    Api, BackendConfig, ClientKey, Cost, ENDPOINTS, ModelCooldown, ModelLimits, ModelRoute, PoolConfig, Settings,
    Snapshot, SnapshotError,
};

fn bad(field: impl Into<String>, reason: impl Into<String>) -> SnapshotError {
    SnapshotError { field: field.into(), reason: reason.into() }
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
    let api = match pb::BackendApi::try_from(b.api) {
        Ok(pb::BackendApi::Unspecified | pb::BackendApi::Openai) => Api::OpenAi,
        Ok(pb::BackendApi::Anthropic) => Api::Anthropic,
        // A newer control plane's API this proxy cannot speak.
        Err(_) => return Err(bad(f("api"), format!("unknown API {} (a newer control plane?)", b.api))),
    };
    let credential = match api {
        Api::OpenAi => format!("Bearer {}", b.api_key),
        Api::Anthropic => b.api_key.clone(),
    };
    let mut authorization =
        HeaderValue::from_str(&credential).map_err(|_| bad(f("api_key"), "is not a valid header value"))?;
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
        if let Some(w) = m.window_seconds
            && !(1..=60).contains(&w)
        {
            let field = f(&format!("model_mappings[{canonical:?}].window_seconds"));
            return Err(bad(field, format!("must be 1..=60 (got {w})")));
        }
        models.insert(
            canonical.clone(),
            ModelRoute {
                native_id,
                cost: Cost {
                    input: cost.input,
                    output: cost.output,
                    cache_read: cost.cache_read,
                    cache_write: cost.cache_write,
                },
                limits: match (m.rpm_limit, m.tpm_limit) {
                    (None, None) => None,
                    (rpm, tpm) => Some(ModelLimits { rpm, tpm, window_seconds: m.window_seconds }),
                },
                bucket: None,
            },
        );
    }
    let path_prefix = uri.path().trim_end_matches('/').to_owned();
    let targets = ENDPOINTS
        .iter()
        .map(|(p, _)| crate::upstream::target_uri(&origin, &path_prefix, p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(f("base_url"), format!("cannot build the upstream URL: {e}")))?;
    // Shares only for models that have their own limits: nothing else has a bucket.
    let initial_model_shares = b
        .initial_model_shares
        .iter()
        .filter(|(name, _)| models.get(name.as_str()).is_some_and(|m| m.limits.is_some()))
        .map(|(name, &share)| (name.clone(), share))
        .collect();
    let ms = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
    let model_cooldowns = b
        .model_cooldowns
        .iter()
        .map(|c| ModelCooldown {
            model: c.model.clone(),
            cooldown_remaining: ms(c.cooldown_remaining_ms),
            consecutive_429: c.consecutive_429,
            exhausted_remaining: ms(c.exhausted_remaining_ms),
        })
        .collect();
    Ok(BackendConfig {
        targets,
        name_header: HeaderValue::from_str(&b.name).ok(),
        pool_header: HeaderValue::from_str(&b.pool).ok(),
        id: b.id.clone(),
        name: b.name.clone(),
        origin,
        path_prefix,
        api,
        authorization,
        timeout: secs(b.timeout_seconds.max(1)),
        rpm_limit: b.rpm_limit,
        tpm_limit: (b.tpm_limit > 0).then_some(b.tpm_limit),
        window_seconds,
        learn_limits: b.learn_limits.unwrap_or(true),
        pool: b.pool.clone(),
        enabled: b.enabled,
        weight: b.weight.max(1),
        models,
        resource_version: b.resource_version,
        initial_share: b.initial_rpm_share.map(|share| share.min(window_limit)),
        healthy: b.health != "error",
        cooldown_remaining: (b.cooldown_remaining_ms > 0).then(|| Duration::from_millis(b.cooldown_remaining_ms)),
        consecutive_429: b.consecutive_429,
        exhausted_remaining: (b.exhausted_remaining_ms > 0).then(|| Duration::from_millis(b.exhausted_remaining_ms)),
        initial_model_shares,
        model_cooldowns,
    })
}

fn client_key(i: usize, k: &pb::SnapshotKey) -> Result<ClientKey, SnapshotError> {
    let hash: [u8; 32] = k
        .hash
        .as_slice()
        .try_into()
        .map_err(|_| bad(format!("client_keys[{i}].hash"), "must be 32 bytes (SHA-256)"))?;
    Ok(ClientKey {
        id: k.id.as_str().into(),
        hash,
        team: k.team.as_str().into(),
        models: k.models.clone(),
        pools: k.pools.clone(),
        rpm_limit: k.rpm_limit,
        tpm_limit: k.tpm_limit,
        max_concurrent: k.max_concurrent,
        expires_at_ms: (k.expires_at_ms > 0).then_some(k.expires_at_ms),
        enabled: k.enabled,
        initial_share: k.initial_rpm_share,
        initial_tpm_share: k.initial_tpm_share,
        initial_concurrent_share: k.initial_concurrent_share,
        has_budget: k.has_budget,
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
        let client_keys = s.client_keys.iter().enumerate().map(|(i, k)| client_key(i, k)).collect::<Result<_, _>>()?;
        Ok(Self { version: s.version, nonce: s.nonce.clone(), backends, pools, settings, client_keys })
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
            client_keys: Vec::new(),
            config_hash: String::new(),
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
