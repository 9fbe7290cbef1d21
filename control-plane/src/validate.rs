//! Turns API input into domain values, field by field. Every refusal names the field
//! path (`backend.rpm_limit`, `backend.model_mappings["gpt-4o"].native_id`) and the reason.

use std::collections::{BTreeMap, HashMap};

pub mod backend;
pub mod input;
pub mod keys;

pub use backend::{new_backend, patched};
use input::{MappingInput, SettingsPatch};

use crate::store::{BackendRecord, ModelMapping, PoolRecord, Settings};

/// An invalid input value: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// Field path, e.g. `backend.base_url`.
    pub field: String,
    /// What is wrong and what is expected.
    pub reason: String,
}

/// Shorthand for a [`FieldError`].
pub fn field_error(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), reason: reason.into() }
}

type Result<T> = std::result::Result<T, FieldError>;

const NAME_MAX: usize = 64;

/// Default upstream timeout.
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 120;
/// Default requests per minute.
pub const DEFAULT_RPM: u32 = 40;
/// The provider's window when none is given: a minute.
pub const DEFAULT_WINDOW_SECONDS: u32 = 60;
const DEFAULT_CONTEXT_WINDOW: u32 = 128_000;
const DEFAULT_MAX_TOKENS: u32 = 65_536;

/// A name of a backend, pool or region: letters, digits, `-`, `_`, `.`; 1–64 characters.
pub fn identifier(field: &str, value: &str) -> Result<String> {
    if value.is_empty() {
        return Err(field_error(field, "must not be empty"));
    }
    if value.len() > NAME_MAX {
        return Err(field_error(field, format!("must be at most {NAME_MAX} characters")));
    }
    if let Some(c) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(field_error(field, format!("may contain only letters, digits, '-', '_' and '.' (found {c:?})")));
    }
    Ok(value.to_owned())
}

/// A backend name, unique among backends (case-insensitively) other than `self_id`.
pub fn backend_name(field: &str, value: &str, others: &[BackendRecord], self_id: Option<&str>) -> Result<String> {
    let name = identifier(field, value)?;
    if let Some(clash) = others.iter().find(|b| Some(b.id.as_str()) != self_id && b.name.eq_ignore_ascii_case(&name)) {
        return Err(field_error(field, format!("a backend named {:?} already exists ({})", clash.name, clash.id)));
    }
    Ok(name)
}

/// Free text of at most `max` characters, without control characters.
pub fn text(field: &str, value: &str, max: usize) -> Result<String> {
    if value.chars().count() > max {
        return Err(field_error(field, format!("must be at most {max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(field_error(field, "must not contain control characters"));
    }
    Ok(value.to_owned())
}

/// An http(s) base URL with a host and no credentials, query or fragment; returned
/// without a trailing slash so that joining a path never doubles it.
pub fn base_url(field: &str, value: &str) -> Result<String> {
    let value = value.trim();
    if value.is_empty() {
        return Err(field_error(field, "must not be empty; expected an http(s) URL such as https://api.openai.com/v1"));
    }
    let url = reqwest::Url::parse(value)
        .map_err(|e| field_error(field, format!("not a valid URL ({e}); expected e.g. https://api.openai.com/v1")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(field_error(field, format!("scheme must be http or https, not {:?}", url.scheme())));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(field_error(field, "must name a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(field_error(field, "must not carry credentials; put the key in api_key"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(field_error(field, "must not have a query or fragment"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// A provider API key: non-empty, printable, no whitespace.
pub fn api_key(field: &str, value: &str) -> Result<String> {
    if value.is_empty() {
        return Err(field_error(field, "must not be empty"));
    }
    if value.len() > 4096 {
        return Err(field_error(field, "must be at most 4096 characters"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(field_error(field, "must not contain whitespace or control characters"));
    }
    Ok(value.to_owned())
}

/// An integer in `min..=max`.
pub fn in_range(field: &str, value: i64, min: i64, max: i64) -> Result<u32> {
    if value < min || value > max {
        let hint = if value <= 0 && min >= 1 {
            format!("must be at least {min}")
        } else {
            format!("must be between {min} and {max}")
        };
        return Err(field_error(field, format!("{hint} (got {value})")));
    }
    Ok(value as u32)
}

/// Upstream timeout; 0 means the default.
pub fn timeout_seconds(field: &str, value: i64) -> Result<u32> {
    if value == 0 {
        return Ok(DEFAULT_TIMEOUT_SECONDS);
    }
    in_range(field, value, 1, 3600)
}

/// Requests per minute, at least 1.
pub fn rpm_limit(field: &str, value: i64) -> Result<u32> {
    in_range(field, value, 1, 1_000_000_000)
}

/// Tokens per minute; 0 means no limit.
pub fn tpm_limit(field: &str, value: i64) -> Result<Option<u32>> {
    if value == 0 {
        return Ok(None);
    }
    if value < 0 {
        return Err(field_error(field, format!("must be 0 (no limit) or positive (got {value})")));
    }
    in_range(field, value, 1, 1_000_000_000).map(Some)
}

/// The provider's window in seconds; 0 means the default (60).
pub fn window_seconds(field: &str, value: i64) -> Result<u32> {
    if value == 0 {
        return Ok(DEFAULT_WINDOW_SECONDS);
    }
    in_range(field, value, 1, 60)
}

/// A backend's limits must allow at least one request in each of its windows.
pub fn window_allows_a_request(field: &str, rpm_limit: u32, window_seconds: u32) -> Result<()> {
    if crate::store::per_window(rpm_limit, window_seconds) == 0 {
        return Err(field_error(
            field,
            format!(
                "rpm_limit {rpm_limit} with window_seconds {window_seconds} allows less than one request per window (rpm_limit × window_seconds / 60 must be at least 1); raise rpm_limit or lengthen the window"
            ),
        ));
    }
    Ok(())
}

/// Relative weight within a pool.
pub fn weight(field: &str, value: i64) -> Result<u32> {
    in_range(field, value, 1, 1000)
}

/// A pool name that exists; empty means `primary`.
pub fn pool(field: &str, value: &str, pools: &[PoolRecord]) -> Result<String> {
    let name = if value.is_empty() { "primary" } else { value };
    if pools.iter().any(|p| p.name == name) {
        Ok(name.to_owned())
    } else {
        let known: Vec<_> = pools.iter().map(|p| p.name.as_str()).collect();
        Err(field_error(field, format!("unknown pool {name:?} (pools: {})", known.join(", "))))
    }
}

/// Model mappings keyed by canonical name.
pub fn model_mappings(field: &str, value: &HashMap<String, MappingInput>) -> Result<BTreeMap<String, ModelMapping>> {
    let mut out = BTreeMap::new();
    for (canonical, m) in value {
        let at = format!("{field}[{canonical:?}]");
        if canonical.trim().is_empty() {
            return Err(field_error(field, "a canonical model name must not be empty"));
        }
        if canonical.len() > 256 || canonical.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(field_error(&at, "canonical model name must be at most 256 characters without whitespace"));
        }
        if m.native_id.trim().is_empty() {
            return Err(field_error(format!("{at}.native_id"), "must not be empty"));
        }
        if m.native_id.len() > 256 || m.native_id.chars().any(char::is_control) {
            return Err(field_error(
                format!("{at}.native_id"),
                "must be at most 256 characters without control characters",
            ));
        }
        let cost = m.cost;
        for (name, v) in [
            ("input", cost.input),
            ("output", cost.output),
            ("cache_read", cost.cache_read),
            ("cache_write", cost.cache_write),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(field_error(
                    format!("{at}.cost.{name}"),
                    format!("must be a non-negative number (USD per token), got {v}"),
                ));
            }
        }
        for (name, limit) in [("rpm_limit", m.rpm_limit), ("tpm_limit", m.tpm_limit)] {
            if limit == Some(0) {
                return Err(field_error(
                    format!("{at}.{name}"),
                    "must be at least 1 (leave it unset for no model limit)",
                ));
            }
        }
        if let Some(w) = m.window_seconds {
            if !(1..=60).contains(&w) {
                return Err(field_error(
                    format!("{at}.window_seconds"),
                    format!("must be 1..=60 seconds (got {w}; leave it unset for the backend's window)"),
                ));
            }
            if m.rpm_limit.is_none() && m.tpm_limit.is_none() {
                return Err(field_error(
                    format!("{at}.window_seconds"),
                    "is the window of the model's own limits: set rpm_limit or tpm_limit too",
                ));
            }
        }
        let mut modalities = Vec::new();
        for (i, modality) in m.input_modalities.iter().enumerate() {
            if !matches!(modality.as_str(), "text" | "image" | "audio" | "video" | "file") {
                return Err(field_error(
                    format!("{at}.input_modalities[{i}]"),
                    format!("unknown modality {modality:?} (expected text, image, audio, video or file)"),
                ));
            }
            if !modalities.contains(modality) {
                modalities.push(modality.clone());
            }
        }
        if modalities.is_empty() {
            modalities.push("text".to_owned());
        }
        out.insert(
            canonical.clone(),
            ModelMapping {
                native_id: m.native_id.trim().to_owned(),
                cost,
                context_window: if m.context_window == 0 { DEFAULT_CONTEXT_WINDOW } else { m.context_window },
                max_tokens: if m.max_tokens == 0 { DEFAULT_MAX_TOKENS } else { m.max_tokens },
                reasoning: m.reasoning,
                input_modalities: modalities,
                rpm_limit: m.rpm_limit,
                tpm_limit: m.tpm_limit,
                window_seconds: m.window_seconds,
            },
        );
    }
    Ok(out)
}

/// Region names, de-duplicated.
pub fn regions(field: &str, value: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for (i, r) in value.iter().enumerate() {
        let r = identifier(&format!("{field}[{i}]"), r)?;
        if !out.contains(&r) {
            out.push(r);
        }
    }
    Ok(out)
}

/// A node id, as nodes say hello with: 1–128 letters, digits, `-`, `_` or `.`.
pub fn node_id(field: &str, value: &str) -> Result<String> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(field_error(
            field,
            format!(
                "must be 1-128 characters of letters, digits, '-', '_' or '.' (got {:?})",
                crate::util::clip(value)
            ),
        ));
    }
    Ok(value.to_owned())
}

/// Free key/value metadata: at most 64 entries, keys 1–64 and values up to 1024 characters.
pub fn metadata(field: &str, value: &HashMap<String, String>) -> Result<BTreeMap<String, String>> {
    if value.len() > 64 {
        return Err(field_error(field, "at most 64 entries"));
    }
    let mut out = BTreeMap::new();
    for (k, v) in value {
        if k.is_empty() || k.len() > 64 {
            return Err(field_error(field, "keys must be 1 to 64 characters"));
        }
        out.insert(k.clone(), text(&format!("{field}[{k:?}]"), v, 1024)?);
    }
    Ok(out)
}

/// Applies a settings patch onto `current`, checking every range.
pub fn settings_patch(current: &Settings, patch: &SettingsPatch) -> Result<Settings> {
    let mut s = current.clone();
    let f = |name: &str| format!("patch.{name}");
    macro_rules! set {
        ($name:ident, $min:expr, $max:expr) => {
            if let Some(v) = patch.$name {
                s.$name = in_range(&f(stringify!($name)), v, $min, $max)?;
            }
        };
    }
    set!(cooldown_base_seconds, 1, 3600);
    set!(cooldown_max_seconds, 1, 86_400);
    set!(queue_capacity, 1, 100_000);
    set!(queue_timeout_seconds, 1, 600);
    set!(low_priority_timeout_seconds, 0, 600);
    set!(near_recovery_wait_seconds, 0, 300);
    set!(failure_threshold, 1, 100);
    set!(error_cooldown_seconds, 1, 86_400);
    set!(bucket_burst, 1, 1000);
    set!(retention_minute_hours, 1, 24 * 90);
    set!(retention_hour_days, 1, 3650);
    set!(retention_day_days, 1, 36500);
    set!(backup_interval_hours, 0, 24 * 30);
    set!(backup_retention_days, 1, 3650);
    set!(probe_interval_seconds, 0, 86_400);
    set!(probe_timeout_seconds, 1, 120);
    if let Some(v) = patch.emergency_fraction {
        if !(0.0..=1.0).contains(&v) {
            return Err(field_error(f("emergency_fraction"), format!("must be between 0 and 1 (got {v})")));
        }
        s.emergency_fraction = v;
    }
    if let Some(v) = patch.adaptive_retreat {
        s.adaptive_retreat = v;
    }
    check_settings(&s, "patch")?;
    Ok(s)
}

/// Cross-field rules of the settings.
pub fn check_settings(s: &Settings, prefix: &str) -> Result<()> {
    if s.cooldown_max_seconds < s.cooldown_base_seconds {
        return Err(field_error(
            format!("{prefix}.cooldown_max_seconds"),
            format!(
                "must be at least cooldown_base_seconds ({}), got {}",
                s.cooldown_base_seconds, s.cooldown_max_seconds
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
