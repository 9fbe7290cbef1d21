//! Client keys: what a key may be created or changed to. Every refusal names the field.

use super::{Result, field_error, identifier, pool, text};
use crate::store::{BudgetPeriod, ClientKeyRecord, PoolRecord};

/// Most models or pools one key may name.
const SCOPE_MAX: usize = 256;
/// Largest fleet-wide limit a key may have (requests or tokens per minute, in flight).
const LIMIT_MAX: u32 = 100_000_000;
/// Largest budget, in USD per period.
const BUDGET_MAX: f64 = 1e9;

/// A key's settings, as asked for (create) or as they become (update).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeySpec {
    /// Unique among keys that are not revoked.
    pub name: String,
    /// Team, for accounting.
    pub team: String,
    /// Canonical models; empty = all.
    pub models: Vec<String>,
    /// Pools; empty = all.
    pub pools: Vec<String>,
    /// Fleet-wide requests per minute; 0 = none.
    pub rpm_limit: u32,
    /// Fleet-wide tokens per minute; 0 = none.
    pub tpm_limit: u32,
    /// In flight at once, fleet-wide; 0 = none.
    pub max_concurrent: u32,
    /// USD per period; 0 = none.
    pub budget_usd: f64,
    /// The budget's period.
    pub budget_period: BudgetPeriod,
    /// Unix ms; `None` = never.
    pub expires_at_ms: Option<i64>,
    /// Accepted while enabled.
    pub enabled: bool,
}

impl KeySpec {
    /// The settings of a stored key.
    pub fn of(k: &ClientKeyRecord) -> Self {
        Self {
            name: k.name.clone(),
            team: k.team.clone(),
            models: k.models.clone(),
            pools: k.pools.clone(),
            rpm_limit: k.rpm_limit,
            tpm_limit: k.tpm_limit,
            max_concurrent: k.max_concurrent,
            budget_usd: k.budget_usd,
            budget_period: k.budget_period,
            expires_at_ms: k.expires_at_ms,
            enabled: k.enabled,
        }
    }

    /// Writes these settings into `k`.
    pub fn apply(self, k: &mut ClientKeyRecord) {
        k.name = self.name;
        k.team = self.team;
        k.models = self.models;
        k.pools = self.pools;
        k.rpm_limit = self.rpm_limit;
        k.tpm_limit = self.tpm_limit;
        k.max_concurrent = self.max_concurrent;
        k.budget_usd = self.budget_usd;
        k.budget_period = self.budget_period;
        k.expires_at_ms = self.expires_at_ms;
        k.enabled = self.enabled;
    }
}

/// Checks `spec` (field paths under `key.`): the name unique among the live keys other
/// than `self_id`, models well-formed, pools existing, limits and budget in range, an
/// expiry in the future (checked only when it changes: `expiry_changed`).
pub fn key_spec(
    spec: KeySpec,
    pools: &[PoolRecord],
    keys: &[ClientKeyRecord],
    self_id: Option<&str>,
    expiry_changed: bool,
    now_ms: i64,
) -> Result<KeySpec> {
    let name = identifier("key.name", &spec.name)?;
    if let Some(clash) =
        keys.iter().find(|k| k.live() && Some(k.id.as_str()) != self_id && k.name.eq_ignore_ascii_case(&name))
    {
        return Err(field_error("key.name", format!("a key named {:?} already exists ({})", clash.name, clash.id)));
    }
    let team = text("key.team", spec.team.trim(), 64)?;
    let mut models = Vec::with_capacity(spec.models.len());
    for (i, m) in spec.models.iter().enumerate() {
        let field = format!("key.models[{i}]");
        if m.is_empty() || m.len() > 256 || m.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(field_error(field, "must be a model name of 1-256 characters without spaces"));
        }
        if !models.contains(m) {
            models.push(m.clone());
        }
    }
    let mut scoped_pools = Vec::with_capacity(spec.pools.len());
    for (i, p) in spec.pools.iter().enumerate() {
        let field = format!("key.pools[{i}]");
        if p.is_empty() {
            return Err(field_error(field, "must name a pool"));
        }
        let p = pool(&field, p, pools)?;
        if !scoped_pools.contains(&p) {
            scoped_pools.push(p);
        }
    }
    if models.len() > SCOPE_MAX || scoped_pools.len() > SCOPE_MAX {
        return Err(field_error("key.models", format!("a key may name at most {SCOPE_MAX} models and pools")));
    }
    for (field, value) in [
        ("key.rpm_limit", spec.rpm_limit),
        ("key.tpm_limit", spec.tpm_limit),
        ("key.max_concurrent", spec.max_concurrent),
    ] {
        if value > LIMIT_MAX {
            return Err(field_error(field, format!("must be at most {LIMIT_MAX} (0 = no limit)")));
        }
    }
    if !spec.budget_usd.is_finite() || spec.budget_usd < 0.0 || spec.budget_usd > BUDGET_MAX {
        return Err(field_error("key.budget_usd", format!("must be between 0 and {BUDGET_MAX} (0 = no budget)")));
    }
    if expiry_changed && spec.expires_at_ms.is_some_and(|at| at <= now_ms) {
        return Err(field_error("key.expires_at_ms", "must be in the future (0 = never expires)"));
    }
    Ok(KeySpec { name, team, models, pools: scoped_pools, ..spec })
}
