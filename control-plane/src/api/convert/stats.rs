//! Statistics, cooldown history and the dashboard, to and from the wire.

use sidecar_proto::v1 as pb;

use super::status_to_pb;
use crate::{
    dashboard::Dashboard,
    stats::{CooldownQuery, CooldownView, Dim, StatsFilter, StatsQuery, StatsReport, StatsRow},
    store::{Granularity, LATENCY_BUCKETS_MS, UsageCounters},
    validate::{FieldError, field_error},
};

/// Usage counters as the API's totals (the latency histogram always has every bucket).
pub fn usage_totals_to_pb(c: &UsageCounters) -> pb::UsageTotals {
    let mut histogram = c.latency_histogram.clone();
    histogram.resize(histogram.len().max(LATENCY_BUCKETS_MS.len() + 1), 0);
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

/// A granularity on the wire.
pub fn granularity_to_pb(g: Granularity) -> pb::Granularity {
    match g {
        Granularity::Minute => pb::Granularity::Minute,
        Granularity::Hour => pb::Granularity::Hour,
        Granularity::Day => pb::Granularity::Day,
    }
}

fn granularity_from_pb(value: i32) -> Result<Option<Granularity>, FieldError> {
    match pb::Granularity::try_from(value) {
        Ok(pb::Granularity::Unspecified) => Ok(None),
        Ok(pb::Granularity::Minute) => Ok(Some(Granularity::Minute)),
        Ok(pb::Granularity::Hour) => Ok(Some(Granularity::Hour)),
        Ok(pb::Granularity::Day) => Ok(Some(Granularity::Day)),
        Err(_) => Err(field_error(
            "granularity",
            format!("unknown granularity {value}: use GRANULARITY_MINUTE, _HOUR, _DAY or leave it unspecified (auto)"),
        )),
    }
}

fn dim_from_pb(i: usize, value: i32) -> Result<Dim, FieldError> {
    Ok(match pb::StatsDimension::try_from(value) {
        Ok(pb::StatsDimension::Time) => Dim::Time,
        Ok(pb::StatsDimension::Backend) => Dim::Backend,
        Ok(pb::StatsDimension::Model) => Dim::Model,
        Ok(pb::StatsDimension::Pool) => Dim::Pool,
        Ok(pb::StatsDimension::Region) => Dim::Region,
        Ok(pb::StatsDimension::Node) => Dim::Node,
        Ok(pb::StatsDimension::Key) => Dim::Key,
        Ok(pb::StatsDimension::Team) => Dim::Team,
        Ok(pb::StatsDimension::Unspecified) | Err(_) => {
            return Err(field_error(
                format!("group_by[{i}]"),
                format!(
                    "unknown dimension {value}: use STATS_DIMENSION_TIME, _BACKEND, _MODEL, _POOL, _REGION, _NODE, _KEY or _TEAM"
                ),
            ));
        }
    })
}

impl TryFrom<&pb::GetStatsRequest> for StatsQuery {
    type Error = FieldError;

    fn try_from(r: &pb::GetStatsRequest) -> Result<Self, FieldError> {
        let filter = r.filter.clone().unwrap_or_default();
        Ok(Self {
            since_ms: r.since_ms,
            until_ms: r.until_ms,
            granularity: granularity_from_pb(r.granularity)?,
            filter: StatsFilter {
                backends: filter.backends,
                models: filter.models,
                pools: filter.pools,
                regions: filter.regions,
                nodes: filter.nodes,
                keys: filter.keys,
                teams: filter.teams,
            },
            group_by: r.group_by.iter().enumerate().map(|(i, d)| dim_from_pb(i, *d)).collect::<Result<_, _>>()?,
        })
    }
}

fn row_to_pb(r: StatsRow) -> pb::StatsRow {
    pb::StatsRow {
        bucket_ms: r.bucket_ms,
        backend_id: r.backend_id,
        backend_name: r.backend_name,
        model: r.model,
        pool: r.pool,
        region: r.region,
        node_id: r.node_id,
        totals: Some(usage_totals_to_pb(&r.counters)),
        key_id: r.key_id,
        key_name: r.key_name,
        team: r.team,
    }
}

impl From<StatsReport> for pb::GetStatsResponse {
    fn from(r: StatsReport) -> Self {
        Self {
            since_ms: r.since_ms,
            until_ms: r.until_ms,
            granularity: granularity_to_pb(r.granularity) as i32,
            totals: Some(usage_totals_to_pb(&r.totals)),
            rows: r.rows.into_iter().map(row_to_pb).collect(),
            by_backend: r.by_backend.into_iter().map(row_to_pb).collect(),
        }
    }
}

impl From<&pb::ListCooldownsRequest> for CooldownQuery {
    fn from(r: &pb::ListCooldownsRequest) -> Self {
        Self { since_ms: r.since_ms, until_ms: r.until_ms, backend: r.backend.clone(), node: r.node.clone() }
    }
}

impl From<CooldownView> for pb::CooldownEvent {
    fn from(v: CooldownView) -> Self {
        let c = v.record;
        Self {
            backend_name: v.backend_name,
            backend_id: c.backend_id,
            node_id: c.node_id,
            consecutive_count: c.consecutive_count,
            duration_ms: c.duration_ms,
            retry_after_ms: c.retry_after_ms,
            start_ms: c.start_ms,
            end_ms: c.end_ms,
            model: c.model,
        }
    }
}

impl From<&Dashboard> for pb::Dashboard {
    fn from(d: &Dashboard) -> Self {
        Self {
            at_ms: d.at_ms,
            totals: Some(usage_totals_to_pb(&d.totals)),
            uptime_seconds: d.uptime_seconds,
            pools: d
                .pools
                .iter()
                .map(|p| pb::PoolHealth {
                    name: p.name.clone(),
                    healthy: p.healthy,
                    cooling: p.cooling,
                    error: p.error,
                    disabled: p.disabled,
                })
                .collect(),
            backends: d
                .backends
                .iter()
                .map(|b| pb::BackendLive {
                    id: b.id.clone(),
                    name: b.name.clone(),
                    pool: b.pool.clone(),
                    status: status_to_pb(b.status) as i32,
                    rpm_limit: b.rpm_limit,
                    bucket_fill: b.bucket_fill,
                    cooldown_remaining_ms: b.cooldown_remaining_ms,
                    consecutive_429: b.consecutive_429,
                    requests_per_min: b.requests_per_min,
                    rate_limited_per_min: b.rate_limited_per_min,
                    errors_per_min: b.errors_per_min,
                    in_window: b.in_window,
                    models: b
                        .models
                        .iter()
                        .map(|m| pb::ModelLive {
                            model: m.model.clone(),
                            rpm_limit: m.rpm_limit,
                            bucket_fill: m.bucket_fill,
                            in_window: m.in_window,
                        })
                        .collect(),
                })
                .collect(),
            requests_per_min: d.requests_per_min,
            rate_limited_per_min: d.rate_limited_per_min,
            errors_per_min: d.errors_per_min,
            nodes_connected: d.nodes_connected,
            nodes_total: d.nodes_total,
            config_version: d.config_version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_enum_values_name_their_field() {
        let r = pb::GetStatsRequest { granularity: 9, ..Default::default() };
        assert_eq!(StatsQuery::try_from(&r).unwrap_err().field, "granularity");
        let r = pb::GetStatsRequest {
            group_by: vec![pb::StatsDimension::Time as i32, 42, pb::StatsDimension::Unspecified as i32],
            ..Default::default()
        };
        assert_eq!(StatsQuery::try_from(&r).unwrap_err().field, "group_by[1]");
        let r = pb::GetStatsRequest {
            granularity: pb::Granularity::Day as i32,
            group_by: vec![pb::StatsDimension::Model as i32, pb::StatsDimension::Model as i32],
            ..Default::default()
        };
        let q = StatsQuery::try_from(&r).unwrap();
        assert_eq!((q.granularity, q.group_by), (Some(Granularity::Day), vec![Dim::Model, Dim::Model]));
    }

    #[test]
    fn totals_map_answered_requests_and_average_latency() {
        let c = UsageCounters {
            attempts: 4,
            answered: 3,
            answered_errors: 1,
            succeeded: 2,
            errors_429: 2,
            latency_ms_sum: 400,
            latency_histogram: vec![1, 3],
            ..Default::default()
        };
        let t = usage_totals_to_pb(&c);
        assert_eq!((t.requests, t.succeeded, t.errors, t.rate_limited, t.attempts), (3, 2, 1, 2, 4));
        assert_eq!(t.avg_latency_ms, 100.0);
        assert_eq!(t.latency_histogram.len(), LATENCY_BUCKETS_MS.len() + 1);
        assert_eq!(&t.latency_histogram[..3], &[1, 3, 0]);
        assert_eq!(usage_totals_to_pb(&UsageCounters::default()).avg_latency_ms, 0.0);
    }
}
