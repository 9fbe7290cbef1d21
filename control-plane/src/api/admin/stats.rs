//! Usage statistics and cooldown history.

use sidecar_proto::v1 as pb;

use super::AdminApi;
use crate::{
    api::error::ApiResult,
    auth::Principal,
    stats::{self, StatsQuery},
    store::{ReportRecord, UsageCounters},
    util::{clip, now_ms},
    validate::field_error,
};

pub(super) async fn get(api: &AdminApi, _: Principal, req: pb::GetStatsRequest) -> ApiResult<pb::GetStatsResponse> {
    let query = StatsQuery::try_from(&req)?;
    Ok(stats::get_stats(api.store(), &query)?.into())
}

pub(super) async fn cooldowns(
    api: &AdminApi,
    _: Principal,
    req: pb::ListCooldownsRequest,
) -> ApiResult<pb::ListCooldownsResponse> {
    let events = stats::list_cooldowns(api.store(), &(&req).into())?;
    Ok(pb::ListCooldownsResponse { events: events.into_iter().map(Into::into).collect() })
}

/// Most rows one ImportUsage call takes.
const IMPORT_ROWS_MAX: usize = 10_000;

/// ImportUsage: usage history of another system, checked row by row (a bad row names
/// itself and nothing is written), added to the hour and day rollups once per row id.
pub(super) async fn import_usage(
    api: &AdminApi,
    who: Principal,
    req: pb::ImportUsageRequest,
) -> ApiResult<pb::ImportUsageResponse> {
    const HOUR_MS: i64 = 3_600_000;
    let source = req.source.trim();
    if source.is_empty() || source.len() > 32 || !source.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(field_error("source", "must be 1-32 letters, digits or '-' (e.g. v2)").into());
    }
    if req.rows.len() > IMPORT_ROWS_MAX {
        return Err(
            field_error("rows", format!("at most {IMPORT_ROWS_MAX} rows per call (got {})", req.rows.len())).into()
        );
    }
    let backends = api.store().backends()?;
    let now = now_ms();
    let mut records = Vec::with_capacity(req.rows.len());
    for (i, row) in req.rows.iter().enumerate() {
        let f = |name: &str| format!("rows[{i}].{name}");
        if row.row_id.is_empty() || row.row_id.len() > 200 {
            return Err(field_error(f("row_id"), "must be 1-200 characters").into());
        }
        let backend = backends
            .iter()
            .find(|b| b.id == row.backend || b.name.eq_ignore_ascii_case(&row.backend))
            .ok_or_else(|| field_error(f("backend"), format!("no backend {:?}", clip(&row.backend))))?;
        let model = if row.model.trim().is_empty() { "unknown" } else { row.model.trim() };
        if model.len() > 200 {
            return Err(field_error(f("model"), "must be at most 200 characters").into());
        }
        if row.hour_start_ms <= 0 || row.hour_start_ms % HOUR_MS != 0 || row.hour_start_ms > now {
            return Err(field_error(f("hour_start_ms"), "must be the start of an hour, not in the future").into());
        }
        if row.errors > row.requests {
            return Err(field_error(f("errors"), "cannot exceed requests").into());
        }
        if !row.cost_usd.is_finite() || row.cost_usd < 0.0 {
            return Err(field_error(f("cost_usd"), "must be a finite amount, at least 0").into());
        }
        let counters = UsageCounters {
            attempts: row.requests,
            answered: row.requests,
            answered_errors: row.errors,
            succeeded: row.requests - row.errors,
            prompt_tokens: row.prompt_tokens,
            completion_tokens: row.completion_tokens,
            total_tokens: row.total_tokens.max(row.prompt_tokens.saturating_add(row.completion_tokens)),
            cost_usd: row.cost_usd,
            latency_ms_sum: row.latency_ms_sum,
            ..Default::default()
        };
        let record = ReportRecord {
            minute_ms: row.hour_start_ms,
            backend_id: backend.id.clone(),
            model: model.to_owned(),
            pool: backend.pool.clone(),
            key_id: String::new(),
            counters,
        };
        records.push((row.row_id.clone(), record));
    }
    let node = format!("{source}-import");
    let imported = api.store().import_usage(&node, &records)?;
    if imported > 0 {
        api.store().audit_event(&who.actor(), "ImportUsage", &format!("{node}: {imported} rows"))?;
    }
    let imported = u32::try_from(imported).unwrap_or(u32::MAX);
    Ok(pb::ImportUsageResponse { imported, skipped: records.len() as u32 - imported })
}
