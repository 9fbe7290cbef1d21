//! The node protocol (`NodeService.Sync`), to and from the wire: snapshots and fleet
//! messages out, hello, demand and 429 events in.

use sidecar_proto::v1::{self as pb, control_message::Kind};

use super::{mapping_to_pb, pool_to_pb, settings_to_pb};
use crate::{
    fleet::{BackendDemand, FleetMessage, KeyDemand, LimitUse, ModelDemand, RateLimited},
    nodes::Hello,
    snapshot::NodeSnapshot,
};

/// The snapshot as the node receives it.
pub fn snapshot_to_pb(s: &NodeSnapshot) -> pb::Snapshot {
    let state = &s.state;
    let shares = |id: &str| s.key_shares.iter().find(|(k, _)| k == id).map(|(_, sh)| *sh).unwrap_or_default();
    pb::Snapshot {
        version: state.version,
        nonce: s.nonce.clone(),
        backends: s
            .backends
            .iter()
            .map(|nb| {
                let (b, key) = s.record(nb);
                pb::SnapshotBackend {
                    id: b.id.clone(),
                    name: b.name.clone(),
                    base_url: b.base_url.clone(),
                    api_key: key.clone(),
                    timeout_seconds: b.timeout_seconds,
                    rpm_limit: state.rpm_limit(b),
                    tpm_limit: b.tpm_limit.unwrap_or(0),
                    window_seconds: b.window_seconds,
                    pool: b.pool.clone(),
                    enabled: b.enabled,
                    weight: b.weight,
                    model_mappings: b.model_mappings.iter().map(|(k, m)| (k.clone(), mapping_to_pb(m))).collect(),
                    resource_version: b.resource_version,
                    label: b.label.clone(),
                    health: state.health_of(&b.id).as_str().to_owned(),
                    initial_rpm_share: nb.initial_share,
                    cooldown_remaining_ms: nb.cooldown_remaining_ms,
                    consecutive_429: nb.consecutive_429,
                    learn_limits: Some(b.learn_limits),
                    api: super::api_to_pb(b.api) as i32,
                    initial_model_shares: nb.model_shares.iter().cloned().collect(),
                    exhausted_remaining_ms: nb.exhausted_remaining_ms,
                    model_cooldowns: nb
                        .model_cooldowns
                        .iter()
                        .map(|c| pb::ModelCooldown {
                            model: c.model.clone(),
                            cooldown_remaining_ms: c.cooldown_remaining_ms,
                            consecutive_429: c.consecutive_429,
                            exhausted_remaining_ms: c.exhausted_remaining_ms,
                        })
                        .collect(),
                }
            })
            .collect(),
        pools: state.pools.iter().map(|p| pool_to_pb(p, 0)).collect(),
        settings: Some(settings_to_pb(&state.settings)),
        generated_at_ms: s.generated_at_ms,
        config_hash: state.content_hash(),
        client_keys: state
            .client_keys
            .iter()
            .map(|k| pb::SnapshotKey {
                id: k.id.clone(),
                hash: k.hash.to_vec(),
                team: k.team.clone(),
                models: k.models.clone(),
                pools: k.pools.clone(),
                rpm_limit: k.rpm_limit,
                tpm_limit: k.tpm_limit,
                max_concurrent: k.max_concurrent,
                expires_at_ms: k.expires_at_ms.unwrap_or(0),
                enabled: k.enabled,
                initial_rpm_share: shares(&k.id).requests,
                initial_tpm_share: shares(&k.id).tokens,
                initial_concurrent_share: shares(&k.id).concurrent,
                has_budget: k.budget_usd > 0.0,
            })
            .collect(),
    }
}

/// A snapshot message.
pub fn snapshot_message(s: &NodeSnapshot) -> pb::ControlMessage {
    pb::ControlMessage { kind: Some(Kind::Snapshot(snapshot_to_pb(s))) }
}

/// A fleet message as the node receives it.
pub fn fleet_message(m: FleetMessage) -> pb::ControlMessage {
    let kind = match m {
        FleetMessage::Grants { grants, keys, lease_ms, round } => Kind::Grants(pb::QuotaGrants {
            round,
            keys: keys
                .into_iter()
                .map(|k| pb::KeyGrant {
                    key_id: k.key_id,
                    rpm: k.rpm,
                    pace: k.pace,
                    fallback_rpm: k.fallback_rpm,
                    tpm: k.tpm,
                    fallback_tpm: k.fallback_tpm,
                    concurrent: k.concurrent,
                    fallback_concurrent: k.fallback_concurrent,
                })
                .collect(),
            grants: grants
                .into_iter()
                .map(|g| pb::QuotaGrant {
                    backend_id: g.backend_id,
                    rpm: g.rpm,
                    tpm: g.tpm,
                    fallback_rpm: g.fallback_rpm,
                    fallback_tpm: g.fallback_tpm,
                    pace: g.pace,
                    models: g
                        .models
                        .into_iter()
                        .map(|m| pb::ModelGrant {
                            model: m.model,
                            rpm: m.rpm,
                            tpm: m.tpm,
                            fallback_rpm: m.fallback_rpm,
                            fallback_tpm: m.fallback_tpm,
                        })
                        .collect(),
                })
                .collect(),
            lease_ms,
        }),
        FleetMessage::Budgets(budgets) => Kind::Budgets(pb::KeyBudgets {
            budgets: budgets
                .into_iter()
                .map(|b| pb::KeyBudget { key_id: b.key_id, remaining_usd: b.usd, reset_ms: b.reset_ms })
                .collect(),
        }),
        FleetMessage::Cooldown(c) => Kind::Cooldown(pb::CooldownBroadcast {
            backend_id: c.backend_id,
            consecutive_count: c.consecutive_count,
            remaining_ms: c.remaining_ms,
            duration_ms: c.duration_ms,
            node_id: c.node_id,
            exhausted: c.exhausted,
            model: c.model,
        }),
    };
    pb::ControlMessage { kind: Some(kind) }
}

impl From<pb::Hello> for Hello {
    fn from(h: pb::Hello) -> Self {
        Self {
            node_id: h.node_id,
            region: h.region,
            software_version: h.software_version,
            config_version: h.config_version,
            boot_id: h.boot_id,
        }
    }
}

/// A node's demand report.
pub fn demand_from_pb(d: pb::Demand) -> Vec<BackendDemand> {
    d.backends
        .into_iter()
        .map(|b| BackendDemand {
            backend_id: b.backend_id,
            demand: b.demand,
            bucket_fill: b.bucket_fill,
            in_window: b.in_window,
            lease_remaining: std::time::Duration::from_millis(b.lease_remaining_ms.min(86_400_000)),
            grant_round: b.grant_round,
            granted: b.granted,
            models: b
                .models
                .into_iter()
                .map(|m| ModelDemand {
                    model: m.model,
                    demand: m.demand,
                    bucket_fill: m.bucket_fill,
                    in_window: m.in_window,
                    granted: m.granted,
                })
                .collect(),
        })
        .collect()
}

/// A node's demand on client keys, as the fleet takes it.
pub fn key_demand_from_pb(d: &[pb::KeyDemand]) -> Vec<KeyDemand> {
    d.iter()
        .map(|k| KeyDemand {
            key_id: k.key_id.clone(),
            demand: k.demand,
            bucket_fill: k.bucket_fill,
            in_window: k.in_window,
            lease_remaining: std::time::Duration::from_millis(k.lease_remaining_ms.min(86_400_000)),
            grant_round: k.grant_round,
            granted: k.granted,
            tokens: k.tokens.as_ref().map(limit_use),
            concurrent: k.concurrent.as_ref().map(limit_use),
        })
        .collect()
}

fn limit_use(u: &pb::LimitUse) -> LimitUse {
    // A fill outside 0..1 or a demand that is not a number says nothing.
    let finite = |x: f64| if x.is_finite() { x.max(0.0) } else { 0.0 };
    LimitUse { demand: finite(u.demand), in_use: u.in_use, fill: finite(u.fill).min(1.0), granted: u.granted }
}

impl From<pb::RateLimitEvent> for RateLimited {
    fn from(e: pb::RateLimitEvent) -> Self {
        Self {
            backend_id: e.backend_id,
            consecutive_count: e.consecutive_count,
            retry_after_ms: e.retry_after_ms,
            model: e.model,
        }
    }
}
