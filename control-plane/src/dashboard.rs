//! The live dashboard: computed once a second from the store, the fleet state and the
//! health map, and shared by every `WatchDashboard` watcher through a `watch` channel.

use std::{collections::HashMap, sync::Arc, time::Duration};

use sidecar_proto::v1 as pb;
use tracing::warn;

use crate::{
    admin::convert::{backend_status, usage_totals_to_pb},
    state::Shared,
    store::{Granularity, UsageCounters},
    util::now_ms,
};

const DAY_MS: i64 = 24 * 3_600_000;
/// The 24-hour totals are the expensive part; they are refreshed less often.
const TOTALS_EVERY: u32 = 30;

/// Recomputes the dashboard every second until shutdown.
pub async fn run(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut totals = pb::UsageTotals::default();
    let mut n = 0u32;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if n.is_multiple_of(TOTALS_EVERY) {
            let now = now_ms();
            // 24 hourly buckets rather than 1440 minutes.
            let mut sum = UsageCounters::default();
            let mut rows = shared.store.usage_rows(Granularity::Hour, now - DAY_MS, now + 1);
            match rows.try_for_each(|r| r.map(|r| sum.merge(&r.counters))) {
                Ok(()) => totals = usage_totals_to_pb(&sum),
                Err(error) => warn!(%error, "dashboard totals"),
            }
        }
        n = n.wrapping_add(1);
        match compute(&shared, totals.clone()) {
            Ok(d) => {
                shared.dashboard.send_replace(Arc::new(d));
            }
            Err(error) => warn!(%error, "dashboard"),
        }
    }
}

/// One dashboard.
pub fn compute(shared: &Shared, totals: pb::UsageTotals) -> Result<pb::Dashboard, crate::store::StoreError> {
    let now = now_ms();
    let config = shared.config().borrow().clone();
    let live = shared.fleet.live();
    let health = shared.health.lock().expect("health lock").clone();
    // Rates over the last complete minute.
    let minute = now - now.rem_euclid(60_000) - 60_000;
    let mut last_minute: HashMap<String, UsageCounters> = HashMap::new();
    for (_, backend, _, c) in shared.store.usage_minutes(minute, minute + 60_000)? {
        last_minute.entry(backend).or_default().merge(&c);
    }
    let mut pools: Vec<pb::PoolHealth> =
        config.pools.iter().map(|p| pb::PoolHealth { name: p.name.clone(), ..Default::default() }).collect();
    let mut backends = Vec::new();
    for (b, _) in &config.backends {
        let l = live.get(&b.id).cloned().unwrap_or_default();
        let status = backend_status(b.enabled, health.get(&b.id).copied(), l.cooling_until_ms, now);
        if let Some(pool) = pools.iter_mut().find(|p| p.name == b.pool) {
            match status {
                "healthy" => pool.healthy += 1,
                "cooling" => pool.cooling += 1,
                "error" => pool.error += 1,
                _ => pool.disabled += 1,
            }
        }
        let c = last_minute.get(&b.id).cloned().unwrap_or_default();
        backends.push(pb::BackendLive {
            id: b.id.clone(),
            name: b.name.clone(),
            pool: b.pool.clone(),
            status: status.to_owned(),
            rpm_limit: b.rpm_limit,
            bucket_fill: l.bucket_fill,
            cooldown_remaining_ms: (l.cooling_until_ms - now).max(0) as u64,
            consecutive_429: l.consecutive,
            requests_per_min: c.attempts as f64,
            rate_limited_per_min: c.errors_429 as f64,
            errors_per_min: (c.errors_5xx + c.errors_timeout + c.errors_connect + c.errors_4xx) as f64,
            in_window: l.in_window,
        });
    }
    let fleet: UsageCounters = last_minute.values().fold(UsageCounters::default(), |mut acc, c| {
        acc.merge(c);
        acc
    });
    let nodes = shared.store.nodes()?;
    Ok(pb::Dashboard {
        at_ms: now,
        totals: Some(totals),
        uptime_seconds: shared.started.elapsed().as_secs(),
        pools,
        backends,
        requests_per_min: fleet.answered as f64,
        rate_limited_per_min: fleet.errors_429 as f64,
        errors_per_min: fleet.answered_errors as f64,
        nodes_connected: nodes.iter().filter(|n| shared.nodes.is_connected(&n.id)).count() as u32,
        nodes_total: nodes.len() as u32,
        config_version: config.version,
    })
}
