//! Every proto ⇄ domain conversion: wire messages in (validated where the wire allows
//! what the domain does not, with errors naming the field), domain values out. Config
//! resources here; statistics and the dashboard in [`stats`]; the node protocol in
//! [`node`] and [`report`].

pub mod keys;
pub mod node;
pub mod report;
pub mod stats;

use sidecar_proto::v1 as pb;

use crate::{
    status::BackendStatus,
    store::{
        Api, AuditRecord, BackendRecord, Cost, ModelMapping, NodeRecord, PoolRecord, Role, Settings, Source, Spill,
        TokenRecord,
    },
    validate::{
        FieldError, field_error,
        input::{BackendPatch, BackendSpec, MappingInput, SettingsPatch},
    },
};

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
        rpm_limit: m.rpm_limit,
        tpm_limit: m.tpm_limit,
        window_seconds: m.window_seconds,
    }
}

/// A model mapping from the wire.
pub fn mapping_from_pb(m: pb::ModelMapping) -> MappingInput {
    let cost = m.cost.unwrap_or_default();
    MappingInput {
        native_id: m.native_id,
        cost: Cost {
            input: cost.input,
            output: cost.output,
            cache_read: cost.cache_read,
            cache_write: cost.cache_write,
        },
        context_window: m.context_window,
        max_tokens: m.max_tokens,
        reasoning: m.reasoning,
        input_modalities: m.input_modalities,
        rpm_limit: m.rpm_limit,
        tpm_limit: m.tpm_limit,
        window_seconds: m.window_seconds,
    }
}

fn mappings_from_pb(
    m: std::collections::HashMap<String, pb::ModelMapping>,
) -> std::collections::HashMap<String, MappingInput> {
    m.into_iter().map(|(k, v)| (k, mapping_from_pb(v))).collect()
}

/// Where a backend was created, on the wire.
pub fn source_to_pb(s: Source) -> pb::BackendSource {
    match s {
        Source::Console => pb::BackendSource::Console,
        Source::Api => pb::BackendSource::Api,
        Source::Env => pb::BackendSource::Env,
        Source::Import => pb::BackendSource::Import,
    }
}

fn source_from_pb(field: &str, value: i32) -> Result<Option<Source>, FieldError> {
    match pb::BackendSource::try_from(value) {
        Ok(pb::BackendSource::Unspecified) => Ok(None),
        Ok(pb::BackendSource::Console) => Ok(Some(Source::Console)),
        Ok(pb::BackendSource::Api) => Ok(Some(Source::Api)),
        Ok(pb::BackendSource::Env) => Ok(Some(Source::Env)),
        Ok(pb::BackendSource::Import) => Ok(Some(Source::Import)),
        Err(_) => Err(field_error(
            field,
            format!("unknown source {value}: use BACKEND_SOURCE_CONSOLE, _API, _ENV or _IMPORT"),
        )),
    }
}

/// A backend's API on the wire.
pub fn api_to_pb(a: Api) -> pb::BackendApi {
    match a {
        Api::Openai => pb::BackendApi::Openai,
        Api::Anthropic => pb::BackendApi::Anthropic,
    }
}

/// A backend's API from the wire; unspecified is `None` (the default, or unchanged).
pub fn api_from_pb(field: &str, value: i32) -> Result<Option<Api>, FieldError> {
    match pb::BackendApi::try_from(value) {
        Ok(pb::BackendApi::Unspecified) => Ok(None),
        Ok(pb::BackendApi::Openai) => Ok(Some(Api::Openai)),
        Ok(pb::BackendApi::Anthropic) => Ok(Some(Api::Anthropic)),
        Err(_) => {
            Err(field_error(field, format!("unknown API {value}: use BACKEND_API_OPENAI or BACKEND_API_ANTHROPIC")))
        }
    }
}

impl TryFrom<pb::BackendSpec> for BackendSpec {
    type Error = FieldError;

    fn try_from(s: pb::BackendSpec) -> Result<Self, FieldError> {
        Ok(Self {
            name: s.name,
            label: s.label,
            base_url: s.base_url,
            api_key: s.api_key,
            timeout_seconds: s.timeout_seconds,
            rpm_limit: s.rpm_limit,
            tpm_limit: s.tpm_limit,
            window_seconds: s.window_seconds,
            pool: s.pool,
            enabled: s.enabled,
            weight: s.weight,
            model_mappings: mappings_from_pb(s.model_mappings),
            regions: s.regions,
            metadata: s.metadata,
            source: source_from_pb("backend.source", s.source)?,
            learn_limits: s.learn_limits,
            api: api_from_pb("backend.api", s.api)?,
        })
    }
}

impl TryFrom<pb::BackendPatch> for BackendPatch {
    type Error = FieldError;

    fn try_from(p: pb::BackendPatch) -> Result<Self, FieldError> {
        Ok(Self {
            name: p.name,
            label: p.label,
            base_url: p.base_url,
            api_key: p.api_key,
            timeout_seconds: p.timeout_seconds,
            rpm_limit: p.rpm_limit,
            tpm_limit: p.tpm_limit,
            window_seconds: p.window_seconds,
            pool: p.pool,
            enabled: p.enabled,
            weight: p.weight,
            model_mappings: p.model_mappings.map(|m| mappings_from_pb(m.entries)),
            regions: p.regions.map(|r| r.values),
            metadata: p.metadata.map(|m| m.entries),
            learn_limits: p.learn_limits,
            api: api_from_pb("patch.api", p.api)?,
        })
    }
}

impl From<pb::SettingsPatch> for SettingsPatch {
    fn from(p: pb::SettingsPatch) -> Self {
        Self {
            cooldown_base_seconds: p.cooldown_base_seconds,
            cooldown_max_seconds: p.cooldown_max_seconds,
            queue_capacity: p.queue_capacity,
            queue_timeout_seconds: p.queue_timeout_seconds,
            low_priority_timeout_seconds: p.low_priority_timeout_seconds,
            emergency_fraction: p.emergency_fraction,
            near_recovery_wait_seconds: p.near_recovery_wait_seconds,
            failure_threshold: p.failure_threshold,
            error_cooldown_seconds: p.error_cooldown_seconds,
            bucket_burst: p.bucket_burst,
            adaptive_retreat: p.adaptive_retreat,
            retention_minute_hours: p.retention_minute_hours,
            retention_hour_days: p.retention_hour_days,
            retention_day_days: p.retention_day_days,
            backup_interval_hours: p.backup_interval_hours,
            backup_retention_days: p.backup_retention_days,
            probe_interval_seconds: p.probe_interval_seconds,
            probe_timeout_seconds: p.probe_timeout_seconds,
        }
    }
}

/// A backend's runtime status on the wire.
pub fn status_to_pb(s: BackendStatus) -> pb::BackendStatus {
    match s {
        BackendStatus::Healthy => pb::BackendStatus::Healthy,
        BackendStatus::Cooling => pb::BackendStatus::Cooling,
        BackendStatus::Error => pb::BackendStatus::Error,
        BackendStatus::Disabled => pb::BackendStatus::Disabled,
    }
}

/// A token role on the wire.
pub fn role_to_pb(r: Role) -> pb::Role {
    match r {
        Role::Admin => pb::Role::Admin,
        Role::Viewer => pb::Role::Viewer,
        Role::Node => pb::Role::Node,
    }
}

/// A token role from the wire; `field` names it in the error.
pub fn role_from_pb(field: &str, value: i32) -> Result<Role, FieldError> {
    match pb::Role::try_from(value) {
        Ok(pb::Role::Admin) => Ok(Role::Admin),
        Ok(pb::Role::Viewer) => Ok(Role::Viewer),
        Ok(pb::Role::Node) => Ok(Role::Node),
        Ok(pb::Role::Unspecified) => Err(field_error(field, "is required: ROLE_ADMIN, ROLE_VIEWER or ROLE_NODE")),
        Err(_) => Err(field_error(field, format!("unknown role {value}: use ROLE_ADMIN, ROLE_VIEWER or ROLE_NODE"))),
    }
}

/// A backend as the admin API shows it: key masked, its runtime status attached.
pub fn backend_to_pb(b: &BackendRecord, status: BackendStatus) -> pb::Backend {
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
        source: source_to_pb(b.source) as i32,
        metadata: b.metadata.clone().into_iter().collect(),
        created_at_ms: b.created_at_ms,
        updated_at_ms: b.updated_at_ms,
        resource_version: b.resource_version,
        status: status_to_pb(status) as i32,
        cooldown_until_ms: 0,
        consecutive_429_count: 0,
        window_seconds: b.window_seconds,
        learn_limits: b.learn_limits,
        learned_rpm_limit: 0,
        api: api_to_pb(b.api) as i32,
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
pub fn spill_from_pb(value: i32) -> Result<Option<Spill>, FieldError> {
    match pb::PoolSpill::try_from(value) {
        Ok(pb::PoolSpill::Unspecified) => Ok(None),
        Ok(pb::PoolSpill::OnBusy) => Ok(Some(Spill::OnBusy)),
        Ok(pb::PoolSpill::OnFailure) => Ok(Some(Spill::OnFailure)),
        Err(_) => Err(field_error("spill", format!("unknown spill policy {value}: use ON_BUSY or ON_FAILURE"))),
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
        instance: n.instance.clone(),
    }
}

/// A token record (never the token) as the API shows it.
pub fn token_to_pb(t: &TokenRecord) -> pb::Token {
    pb::Token {
        id: t.id.clone(),
        role: role_to_pb(t.role) as i32,
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
