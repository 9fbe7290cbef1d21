//! Building backend records from create specs and partial updates.

use super::{
    self as validate, FieldError, field_error,
    input::{BackendPatch, BackendSpec},
};
use crate::{
    crypto::{MasterKey, mask},
    store::{BackendRecord, PoolRecord, Source},
    util::{new_id, now_ms},
};

/// Validates a create request's spec into a new record (key sealed under `key`).
pub fn new_backend(
    spec: &BackendSpec,
    backends: &[BackendRecord],
    pools: &[PoolRecord],
    key: &MasterKey,
) -> Result<BackendRecord, FieldError> {
    let f = |name: &str| format!("backend.{name}");
    let name = validate::backend_name(&f("name"), spec.name.trim(), backends, None)?;
    let api_key = validate::api_key(&f("api_key"), &spec.api_key)?;
    let now = now_ms();
    serves_something(BackendRecord {
        id: new_id("bkd"),
        name,
        label: validate::text(&f("label"), &spec.label, 64)?,
        base_url: validate::base_url(&f("base_url"), &spec.base_url)?,
        api_key: key.seal(&api_key),
        api_key_masked: mask(&api_key),
        timeout_seconds: validate::timeout_seconds(&f("timeout_seconds"), spec.timeout_seconds)?,
        rpm_limit: validate::rpm_limit(&f("rpm_limit"), spec.rpm_limit.unwrap_or(validate::DEFAULT_RPM as i64))?,
        tpm_limit: validate::tpm_limit(&f("tpm_limit"), spec.tpm_limit)?,
        window_seconds: validate::window_seconds(&f("window_seconds"), spec.window_seconds)?,
        learn_limits: spec.learn_limits.unwrap_or(true),
        api: spec.api.unwrap_or_default(),
        pool: validate::pool(&f("pool"), &spec.pool, pools)?,
        enabled: spec.enabled.unwrap_or(true),
        weight: validate::weight(&f("weight"), spec.weight.unwrap_or(1))?,
        model_mappings: validate::model_mappings(&f("model_mappings"), &spec.model_mappings)?,
        regions: validate::regions(&f("regions"), &spec.regions)?,
        source: spec.source.unwrap_or(Source::Api),
        metadata: validate::metadata(&f("metadata"), &spec.metadata)?,
        created_at_ms: now,
        updated_at_ms: now,
        resource_version: 1,
    })
}

/// An enabled backend must serve at least one model: without a mapping it could never
/// be chosen. A disabled one may wait for its mappings. Every backend must allow at
/// least one request per provider window.
fn serves_something(b: BackendRecord) -> Result<BackendRecord, FieldError> {
    validate::window_allows_a_request("backend.window_seconds", b.rpm_limit, b.window_seconds)?;
    model_limits_within(&b)?;
    if b.enabled && b.model_mappings.is_empty() {
        return Err(field_error(
            "backend.model_mappings",
            "an enabled backend needs at least one model mapping (canonical name -> native id, or \"*\" to pass any model through); create it disabled to add them later",
        ));
    }
    Ok(b)
}

/// Applies a partial update; only fields present in `patch` change.
pub fn patched(
    mut b: BackendRecord,
    patch: &BackendPatch,
    backends: &[BackendRecord],
    pools: &[PoolRecord],
    key: &MasterKey,
) -> Result<BackendRecord, FieldError> {
    let f = |name: &str| format!("patch.{name}");
    if let Some(v) = &patch.name {
        b.name = validate::backend_name(&f("name"), v.trim(), backends, Some(&b.id))?;
    }
    if let Some(v) = &patch.label {
        b.label = validate::text(&f("label"), v, 64)?;
    }
    if let Some(v) = &patch.base_url {
        b.base_url = validate::base_url(&f("base_url"), v)?;
    }
    if let Some(v) = &patch.api_key {
        let api_key = validate::api_key(&f("api_key"), v)?;
        b.api_key = key.seal(&api_key);
        b.api_key_masked = mask(&api_key);
    }
    if let Some(v) = patch.timeout_seconds {
        b.timeout_seconds = validate::timeout_seconds(&f("timeout_seconds"), v)?;
    }
    if let Some(v) = patch.rpm_limit {
        b.rpm_limit = validate::rpm_limit(&f("rpm_limit"), v)?;
    }
    if let Some(v) = patch.tpm_limit {
        b.tpm_limit = validate::tpm_limit(&f("tpm_limit"), v)?;
    }
    if let Some(v) = patch.window_seconds {
        b.window_seconds = validate::window_seconds(&f("window_seconds"), v)?;
    }
    if let Some(v) = &patch.pool {
        b.pool = validate::pool(&f("pool"), v, pools)?;
    }
    if let Some(v) = patch.learn_limits {
        b.learn_limits = v;
    }
    if let Some(v) = patch.api {
        b.api = v;
    }
    if let Some(v) = patch.enabled {
        b.enabled = v;
    }
    if let Some(v) = patch.weight {
        b.weight = validate::weight(&f("weight"), v)?;
    }
    if let Some(v) = &patch.model_mappings {
        b.model_mappings = validate::model_mappings(&f("model_mappings"), v)?;
    }
    if let Some(v) = &patch.regions {
        b.regions = validate::regions(&f("regions"), v)?;
    }
    if let Some(v) = &patch.metadata {
        b.metadata = validate::metadata(&f("metadata"), v)?;
    }
    b.updated_at_ms = now_ms();
    b.resource_version += 1;
    serves_something(b)
}

/// A model's own limits are at most the backend's (the key's limit bounds the sum), and
/// allow a request per provider window.
pub fn model_limits_within(b: &BackendRecord) -> Result<(), FieldError> {
    for (canonical, m) in &b.model_mappings {
        let at = |name: &str| format!("backend.model_mappings[{canonical:?}].{name}");
        if let Some(rpm) = m.rpm_limit {
            if rpm > b.rpm_limit {
                return Err(field_error(
                    at("rpm_limit"),
                    format!(
                        "{rpm} exceeds the backend's rpm_limit ({}); a model's limit is within the key's",
                        b.rpm_limit
                    ),
                ));
            }
            validate::window_allows_a_request(&at("rpm_limit"), rpm, m.window_seconds(b.window_seconds))?;
        }
        if let (Some(tpm), Some(backend_tpm)) = (m.tpm_limit, b.tpm_limit)
            && tpm > backend_tpm
        {
            return Err(field_error(
                at("tpm_limit"),
                format!("{tpm} exceeds the backend's tpm_limit ({backend_tpm}); a model's limit is within the key's"),
            ));
        }
    }
    Ok(())
}
