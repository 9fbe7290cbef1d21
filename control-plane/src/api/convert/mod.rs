//! Domain records → API messages.

use sidecar_proto::v1 as pb;

use crate::store::{AuditRecord, BackendRecord, ModelMapping, NodeRecord, PoolRecord, Settings, Spill, TokenRecord};

/// A model mapping as the API shows it.
pub fn mapping_to_pb(m: &ModelMapping) -> pb::ModelMapping {
    pb::ModelMapping {
        native_id: m.native_id.clone(),
        cost: Some(pb::ModelCost {
            input: m.cost.input,
            output: m.cost.output,
            cache_read: m.cost.cache_read,
            cache_write: m.cost.cache_write,
        }),
        context_window: m.context_window,
        max_tokens: m.max_tokens,
        reasoning: m.reasoning,
        input_modalities: m.input_modalities.clone(),
    }
}

/// A backend as the admin API shows it: key masked, runtime state attached.
pub fn backend_to_pb(b: &BackendRecord) -> pb::Backend {
    pb::Backend {
        id: b.id.clone(),
        name: b.name.clone(),
        label: b.label.clone(),
        base_url: b.base_url.clone(),
        api_key_masked: b.api_key_masked.clone(),
        api_key_key_id: b.api_key.key_id.clone(),
        timeout_seconds: b.timeout_seconds,
        rpm_limit: b.rpm_limit,
        tpm_limit: b.tpm_limit.unwrap_or(0),
        pool: b.pool.clone(),
        enabled: b.enabled,
        weight: b.weight,
        model_mappings: b.model_mappings.iter().map(|(k, m)| (k.clone(), mapping_to_pb(m))).collect(),
        regions: b.regions.clone(),
        source: b.source.as_str().to_owned(),
        metadata: b.metadata.clone().into_iter().collect(),
        created_at_ms: b.created_at_ms,
        updated_at_ms: b.updated_at_ms,
        resource_version: b.resource_version,
        status: if b.enabled { "healthy" } else { "disabled" }.to_owned(),
        cooldown_until_ms: 0,
        consecutive_429_count: 0,
        window_seconds: b.window_seconds,
    }
}

/// A pool as the API shows it.
pub fn pool_to_pb(p: &PoolRecord, backend_count: u32) -> pb::Pool {
    pb::Pool {
        name: p.name.clone(),
        order: p.order,
        description: p.description.clone(),
        builtin: p.builtin,
        backend_count,
        spill: spill_to_pb(p.spill) as i32,
    }
}

/// A pool's spill policy on the wire.
pub fn spill_to_pb(spill: Spill) -> pb::PoolSpill {
    match spill {
        Spill::OnBusy => pb::PoolSpill::OnBusy,
        Spill::OnFailure => pb::PoolSpill::OnFailure,
    }
}

/// A spill policy from the wire; `None` when unspecified.
pub fn spill_from_pb(value: i32) -> Result<Option<Spill>, crate::validate::FieldError> {
    match pb::PoolSpill::try_from(value) {
        Ok(pb::PoolSpill::Unspecified) => Ok(None),
        Ok(pb::PoolSpill::OnBusy) => Ok(Some(Spill::OnBusy)),
        Ok(pb::PoolSpill::OnFailure) => Ok(Some(Spill::OnFailure)),
        Err(_) => Err(crate::validate::field_error(
            "spill",
            format!("unknown spill policy {value}: use ON_BUSY or ON_FAILURE"),
        )),
    }
}

/// Settings as the API shows them.
pub fn settings_to_pb(s: &Settings) -> pb::Settings {
    pb::Settings {
        cooldown_base_seconds: s.cooldown_base_seconds,
        cooldown_max_seconds: s.cooldown_max_seconds,
        queue_capacity: s.queue_capacity,
        queue_timeout_seconds: s.queue_timeout_seconds,
        low_priority_timeout_seconds: s.low_priority_timeout_seconds,
        emergency_fraction: s.emergency_fraction,
        near_recovery_wait_seconds: s.near_recovery_wait_seconds,
        failure_threshold: s.failure_threshold,
        error_cooldown_seconds: s.error_cooldown_seconds,
        bucket_burst: s.bucket_burst,
        adaptive_retreat: s.adaptive_retreat,
        retention_minute_hours: s.retention_minute_hours,
        retention_hour_days: s.retention_hour_days,
        retention_day_days: s.retention_day_days,
        backup_interval_hours: s.backup_interval_hours,
        backup_retention_days: s.backup_retention_days,
        probe_interval_seconds: s.probe_interval_seconds,
        probe_timeout_seconds: s.probe_timeout_seconds,
    }
}

/// A node as the API shows it.
pub fn node_to_pb(n: &NodeRecord, connected: bool) -> pb::Node {
    pb::Node {
        id: n.id.clone(),
        region: n.region.clone(),
        software_version: n.software_version.clone(),
        connected,
        acked_config_version: n.acked_config_version,
        last_nack_error: n.last_nack_error.clone(),
        last_nack_version: n.last_nack_version,
        last_seen_ms: n.last_seen_ms,
        last_report_ms: n.last_report_ms,
        boot_id: n.boot_id.clone(),
        connected_since_ms: n.connected_since_ms,
    }
}

/// A token record (never the token) as the API shows it.
pub fn token_to_pb(t: &TokenRecord) -> pb::Token {
    pb::Token {
        id: t.id.clone(),
        role: t.role.as_str().to_owned(),
        name: t.name.clone(),
        created_at_ms: t.created_at_ms,
        created_by: t.created_by.clone(),
        node_id: t.node_id.clone().unwrap_or_default(),
        region: t.region.clone().unwrap_or_default(),
        last_used_ms: 0,
    }
}

/// An audit entry as the API shows it.
pub fn audit_to_pb(a: &AuditRecord) -> pb::AuditEntry {
    pb::AuditEntry {
        at_ms: a.at_ms,
        actor: a.actor.clone(),
        role: a.role.clone(),
        action: a.action.clone(),
        target: a.target.clone(),
        config_version: a.config_version,
    }
}

/// Usage counters as the API's totals (the latency histogram always has every bucket).
pub fn usage_totals_to_pb(c: &crate::store::UsageCounters) -> pb::UsageTotals {
    let mut histogram = c.latency_histogram.clone();
    histogram.resize(histogram.len().max(crate::store::LATENCY_BUCKETS_MS.len() + 1), 0);
    pb::UsageTotals {
        requests: c.answered,
        succeeded: c.succeeded,
        errors: c.answered_errors,
        rate_limited: c.errors_429,
        attempts: c.attempts,
        errors_5xx: c.errors_5xx,
        errors_timeout: c.errors_timeout,
        errors_connect: c.errors_connect,
        errors_4xx: c.errors_4xx,
        prompt_tokens: c.prompt_tokens,
        completion_tokens: c.completion_tokens,
        total_tokens: c.total_tokens,
        cost_usd: c.cost_usd,
        latency_ms_sum: c.latency_ms_sum,
        latency_histogram: histogram,
        ttft_ms_sum: c.ttft_ms_sum,
        ttft_count: c.ttft_count,
        avg_latency_ms: match c.attempts {
            0 => 0.0,
            n => c.latency_ms_sum as f64 / n as f64,
        },
    }
}

/// A backend's runtime status: disabled by config, failing health, cooling fleet-wide,
/// or healthy.
pub fn backend_status(enabled: bool, health: Option<&str>, cooling_until_ms: i64, now_ms: i64) -> &'static str {
    if !enabled {
        "disabled"
    } else if health == Some("error") {
        "error"
    } else if cooling_until_ms > now_ms {
        "cooling"
    } else {
        "healthy"
    }
}
