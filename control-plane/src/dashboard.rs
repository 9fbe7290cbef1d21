//! The live dashboard: computed once a second from the store, the fleet state and the
//! health map, and shared by every `WatchDashboard` watcher through a `watch` channel.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tracing::warn;

use crate::{
    state::Shared,
    status::BackendStatus,
    store::{Granularity, UsageCounters},
    util::now_ms,
};

const DAY_MS: i64 = 24 * 3_600_000;
/// The 24-hour totals are the expensive part; they are refreshed less often.
const TOTALS_EVERY: u32 = 30;

/// The fleet at a glance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dashboard {
    /// When it was computed; 0 = not yet.
    pub at_ms: i64,
    /// The last 24 hours.
    pub totals: UsageCounters,
    /// Since the control plane started.
    pub uptime_seconds: u64,
    /// Backends per status, per pool.
    pub pools: Vec<PoolHealth>,
    /// Every backend.
    pub backends: Vec<LiveBackend>,
    /// Client requests answered over the last complete minute, fleet-wide.
    pub requests_per_min: f64,
    /// Upstream 429s over the last complete minute.
    pub rate_limited_per_min: f64,
    /// Requests answered with an error over the last complete minute.
    pub errors_per_min: f64,
    /// Nodes with a live Sync stream.
    pub nodes_connected: u32,
    /// Nodes ever seen.
    pub nodes_total: u32,
    /// The config version published.
    pub config_version: u64,
}

/// Backends of one pool by status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct PoolHealth {
    pub name: String,
    pub healthy: u32,
    pub cooling: u32,
    pub error: u32,
    pub disabled: u32,
}

/// One backend, live.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveBackend {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Pool.
    pub pool: String,
    /// Runtime status.
    pub status: BackendStatus,
    /// Its configured limit.
    pub rpm_limit: u32,
    /// Tokens left in the buckets of the nodes using it, as a fraction (0..1).
    pub bucket_fill: f64,
    /// Fleet-wide cooldown still to run.
    pub cooldown_remaining_ms: u64,
    /// Fleet-wide consecutive 429s.
    pub consecutive_429: u32,
    /// Upstream attempts over the last complete minute.
    pub requests_per_min: f64,
    /// 429s over the last complete minute.
    pub rate_limited_per_min: f64,
    /// Other errors over the last complete minute.
    pub errors_per_min: f64,
    /// Admitted in the current window, summed over nodes.
    pub in_window: u32,
    /// Its models that have their own limits.
    pub models: Vec<LiveModel>,
}

/// One model's own limits on a backend, live.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveModel {
    /// Canonical name.
    pub model: String,
    /// Its requests per minute (the backend's when it limits only tokens).
    pub rpm_limit: u32,
    /// Tokens left in its buckets on the nodes using it, as a fraction (0..1).
    pub bucket_fill: f64,
    /// Admitted in the current window, summed over nodes.
    pub in_window: u32,
}

/// Recomputes the dashboard every second until shutdown.
pub async fn run(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut totals = UsageCounters::default();
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
                Ok(()) => totals = sum,
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
pub fn compute(shared: &Shared, totals: UsageCounters) -> Result<Dashboard, crate::store::StoreError> {
    let now = now_ms();
    let config = shared.config().borrow().clone();
    let live = shared.cluster.live(&shared.fleet);
    let health = shared.health.lock().expect("health lock").clone();
    // Rates over the last complete minute.
    let minute = now - now.rem_euclid(60_000) - 60_000;
    let mut last_minute: HashMap<String, UsageCounters> = HashMap::new();
    for (_, backend, _, c) in shared.store.usage_minutes(minute, minute + 60_000)? {
        last_minute.entry(backend).or_default().merge(&c);
    }
    let mut pools: Vec<PoolHealth> =
        config.pools.iter().map(|p| PoolHealth { name: p.name.clone(), ..Default::default() }).collect();
    let mut backends = Vec::new();
    for (b, _) in &config.backends {
        let l = live.get(&b.id).cloned().unwrap_or_default();
        let h = health.get(&b.id).copied().unwrap_or(crate::status::Health::Healthy);
        let status = BackendStatus::of(b.enabled, h, l.cooling_until_ms, now);
        if let Some(pool) = pools.iter_mut().find(|p| p.name == b.pool) {
            match status {
                BackendStatus::Healthy => pool.healthy += 1,
                BackendStatus::Cooling => pool.cooling += 1,
                BackendStatus::Error => pool.error += 1,
                BackendStatus::Disabled => pool.disabled += 1,
            }
        }
        let c = last_minute.get(&b.id).cloned().unwrap_or_default();
        backends.push(LiveBackend {
            id: b.id.clone(),
            name: b.name.clone(),
            pool: b.pool.clone(),
            status,
            rpm_limit: b.rpm_limit,
            bucket_fill: l.bucket_fill,
            cooldown_remaining_ms: (l.cooling_until_ms - now).max(0) as u64,
            consecutive_429: l.consecutive,
            requests_per_min: c.attempts as f64,
            rate_limited_per_min: c.errors_429 as f64,
            errors_per_min: (c.errors_5xx + c.errors_timeout + c.errors_connect + c.errors_4xx) as f64,
            in_window: l.in_window,
            models: b
                .model_mappings
                .iter()
                .filter(|(_, m)| m.has_limits())
                .map(|(name, m)| {
                    let live = l.models.get(name).cloned().unwrap_or_default();
                    LiveModel {
                        model: name.clone(),
                        rpm_limit: m.rpm_limit.unwrap_or(b.rpm_limit),
                        bucket_fill: live.bucket_fill,
                        in_window: live.in_window,
                    }
                })
                .collect(),
        });
    }
    let fleet: UsageCounters = last_minute.values().fold(UsageCounters::default(), |mut acc, c| {
        acc.merge(c);
        acc
    });
    let nodes = shared.store.nodes()?;
    Ok(Dashboard {
        at_ms: now,
        totals,
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
