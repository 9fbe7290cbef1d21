//! Client keys between the wire and the domain.

use sidecar_proto::v1 as pb;

use crate::{
    store::{BudgetPeriod, ClientKeyRecord},
    validate::{FieldError, field_error, keys::KeySpec},
};

/// A key as the admin API shows it: never its secret.
pub fn key_to_pb(k: &ClientKeyRecord) -> pb::ClientKey {
    pb::ClientKey {
        id: k.id.clone(),
        name: k.name.clone(),
        team: k.team.clone(),
        prefix: k.prefix.clone(),
        models: k.models.clone(),
        pools: k.pools.clone(),
        rpm_limit: k.rpm_limit,
        tpm_limit: k.tpm_limit,
        max_concurrent: k.max_concurrent,
        budget_usd: k.budget_usd,
        budget_period: period_to_pb(k.budget_period) as i32,
        expires_at_ms: k.expires_at_ms.unwrap_or(0),
        enabled: k.enabled,
        revoked_at_ms: k.revoked_at_ms.unwrap_or(0),
        created_at_ms: k.created_at_ms,
        created_by: k.created_by.clone(),
        rotated_at_ms: k.rotated_at_ms.unwrap_or(0),
        resource_version: k.resource_version,
        spent_usd: 0.0,
    }
}

fn period_to_pb(p: BudgetPeriod) -> pb::BudgetPeriod {
    match p {
        BudgetPeriod::Day => pb::BudgetPeriod::Day,
        BudgetPeriod::Month => pb::BudgetPeriod::Month,
    }
}

/// A budget period; unspecified = `default`.
pub fn period_from_pb(field: &str, value: i32, default: BudgetPeriod) -> Result<BudgetPeriod, FieldError> {
    match pb::BudgetPeriod::try_from(value) {
        Ok(pb::BudgetPeriod::Unspecified) => Ok(default),
        Ok(pb::BudgetPeriod::Day) => Ok(BudgetPeriod::Day),
        Ok(pb::BudgetPeriod::Month) => Ok(BudgetPeriod::Month),
        Err(_) => Err(field_error(field, format!("unknown budget period {value}: use BUDGET_PERIOD_DAY or _MONTH"))),
    }
}

fn expiry(at_ms: i64) -> Option<i64> {
    (at_ms > 0).then_some(at_ms)
}

/// What a create request asks for (checked by `validate::keys::key_spec`).
pub fn spec_from_create(r: pb::CreateKeyRequest) -> Result<KeySpec, FieldError> {
    Ok(KeySpec {
        name: r.name,
        team: r.team,
        models: r.models,
        pools: r.pools,
        rpm_limit: r.rpm_limit,
        tpm_limit: r.tpm_limit,
        max_concurrent: r.max_concurrent,
        budget_usd: r.budget_usd,
        budget_period: period_from_pb("key.budget_period", r.budget_period, BudgetPeriod::Month)?,
        expires_at_ms: expiry(r.expires_at_ms),
        enabled: true,
    })
}

/// `current` with an update request's set fields applied; and whether the expiry changed.
pub fn spec_from_update(current: KeySpec, r: &pb::UpdateKeyRequest) -> Result<(KeySpec, bool), FieldError> {
    let budget_period = match r.budget_period {
        Some(p) => period_from_pb("key.budget_period", p, current.budget_period)?,
        None => current.budget_period,
    };
    let expires_at_ms = r.expires_at_ms.map_or(current.expires_at_ms, expiry);
    let expiry_changed = expires_at_ms != current.expires_at_ms;
    let spec = KeySpec {
        name: r.name.clone().unwrap_or(current.name),
        team: r.team.clone().unwrap_or(current.team),
        models: if r.set_models { r.models.clone() } else { current.models },
        pools: if r.set_pools { r.pools.clone() } else { current.pools },
        rpm_limit: r.rpm_limit.unwrap_or(current.rpm_limit),
        tpm_limit: r.tpm_limit.unwrap_or(current.tpm_limit),
        max_concurrent: r.max_concurrent.unwrap_or(current.max_concurrent),
        budget_usd: r.budget_usd.unwrap_or(current.budget_usd),
        budget_period,
        expires_at_ms,
        enabled: r.enabled.unwrap_or(current.enabled),
    };
    Ok((spec, expiry_changed))
}
