//! Backend health: active probes (`GET {base_url}/models`, concurrently, every
//! `probe_interval_seconds`) combined with passive health from usage reports. A backend
//! is `error` after two failed probes in a row, a probe answered 401/403, or when most of
//! its recent attempts failed; it recovers by itself when probes and traffic do. A change
//! is published to every node as a new snapshot, so health drives routing.
//!
//! Also what nodes learn of a backend from its provider: a request limit lower than the
//! configured one ([`learned_limit`]), published the same way.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tracing::{info, warn};

use crate::{
    probe,
    state::Shared,
    status::Health,
    store::{Actor, ConfigChange, UsageCounters},
    util::now_ms,
};

/// Consecutive failed probes that mark a backend `error`.
const PROBE_FAILURES: u32 = 2;
/// Passive health looks at this much recent usage.
const PASSIVE_WINDOW_MS: i64 = 5 * 60_000;
/// Passive health needs at least this many attempts to judge.
const PASSIVE_MIN_ATTEMPTS: u64 = 10;

/// Probes until shutdown.
pub async fn run(shared: Arc<Shared>, client: reqwest::Client) {
    let mut shutdown = shared.shutdown();
    let mut failures: HashMap<String, u32> = HashMap::new();
    let mut config_rx = shared.config();
    let mut last = tokio::time::Instant::now();
    loop {
        // Settings can change at any time: wake on a new config and recompute the due time.
        let settings = shared.store.settings().unwrap_or_default();
        let every = Duration::from_secs(u64::from(settings.probe_interval_seconds.max(1)));
        tokio::select! {
            _ = tokio::time::sleep_until(last + every), if settings.probe_interval_seconds > 0 => {}
            changed = config_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            _ = shutdown.wait_for(|s| *s) => return,
        }
        last = tokio::time::Instant::now();
        // With several instances on one store, the leader probes and tells the others.
        if !shared.cluster.leading() {
            failures.clear();
            continue;
        }
        let timeout = Duration::from_secs(u64::from(settings.probe_timeout_seconds.max(1)));
        let config = shared.config().borrow().clone();
        let probes = config.backends.iter().filter(|(b, _)| b.enabled).map(|(b, key)| {
            let client = client.clone();
            async move { (b.id.clone(), probe::probe(&client, (&b.base_url, b.api), key, timeout).await) }
        });
        let results = futures::future::join_all(probes).await;
        let mut bad_key = HashMap::new();
        for (id, result) in results {
            let f = failures.entry(id.clone()).or_default();
            if result.ok {
                *f = 0;
            } else {
                *f += 1;
                bad_key.insert(id, matches!(result.http_status, 401 | 403));
            }
        }
        failures.retain(|id, _| config.backends.iter().any(|(b, _)| &b.id == id));
        let passive = passive_failures(&shared);
        let next: HashMap<String, Health> = config
            .backends
            .iter()
            .filter(|(b, _)| {
                failures.get(&b.id).is_some_and(|&f| f >= PROBE_FAILURES)
                    || bad_key.get(&b.id).copied().unwrap_or(false)
                    || passive.get(&b.id).copied().unwrap_or(false)
            })
            .map(|(b, _)| (b.id.clone(), Health::Error))
            .collect();
        apply(&shared, next).await;
    }
}

/// Backends most of whose recent attempts failed (5xx, timeout, connect).
fn passive_failures(shared: &Shared) -> HashMap<String, bool> {
    let now = now_ms();
    let mut per: HashMap<String, UsageCounters> = HashMap::new();
    match shared.store.usage_minutes(now - PASSIVE_WINDOW_MS, now + 1) {
        Ok(rows) => rows.into_iter().for_each(|(_, b, _, c)| per.entry(b).or_default().merge(&c)),
        Err(error) => warn!(%error, "passive health"),
    }
    per.into_iter()
        .map(|(b, c)| {
            let failed = c.errors_5xx + c.errors_timeout + c.errors_connect;
            (b, c.attempts >= PASSIVE_MIN_ATTEMPTS && failed * 2 >= c.attempts)
        })
        .collect()
}

/// Swaps in the new health map; a change is committed (audited, version bumped) and
/// published so every node routes by it.
pub async fn apply(shared: &Shared, next: HashMap<String, Health>) {
    let _guard = shared.writer.lock().await;
    let changed: Vec<String> = {
        let mut health = shared.health.lock().expect("health lock");
        if *health == next {
            return;
        }
        let mut changed: Vec<String> = next.keys().filter(|k| !health.contains_key(*k)).cloned().collect();
        changed.extend(health.keys().filter(|k| !next.contains_key(*k)).map(|k| format!("{k} recovered")));
        health.clone_from(&next);
        changed
    };
    info!(changes = ?changed, "backend health changed");
    // Before the version moves: the other instances publish it with their configs.
    shared.cluster.health_changed(&next);
    let target = changed.join(", ");
    if let Err(error) = shared.store.commit(ConfigChange::default(), &Actor::system(), "HealthChange", &target) {
        warn!(%error, "could not record a health change");
        return;
    }
    if let Err(error) = shared.publish() {
        warn!(%error, "could not publish a health change");
    }
}

/// The leading instance's view of backend health, as another instance hears it: published
/// to the nodes connected here.
pub async fn heard(shared: Arc<Shared>, next: HashMap<String, Health>) {
    let _guard = shared.writer.lock().await;
    {
        let mut health = shared.health.lock().expect("health lock");
        if *health == next {
            return;
        }
        *health = next;
    }
    if let Err(error) = shared.publish() {
        warn!(%error, "could not publish a health change");
    }
}

/// A lower request limit a node of another instance heard: used here too (only ever
/// lower; the instance that heard it records it).
pub async fn heard_learned(shared: Arc<Shared>, backend_id: String, rpm: u32) {
    let _guard = shared.writer.lock().await;
    {
        let mut learned = shared.learned.lock().expect("learned lock");
        if learned.get(&backend_id).is_some_and(|&l| l <= rpm) {
            return;
        }
        learned.insert(backend_id, rpm);
    }
    if let Err(error) = shared.publish() {
        warn!(%error, "could not publish a learned limit");
    }
}

/// A node heard the provider report a request limit (per minute) lower than the backend's
/// configured one: the fleet uses the lower one from now on (published to every node,
/// recorded in the audit as `LimitLearned`, logged), until a write to the backend. A
/// reported limit is never used to raise one.
pub async fn learned_limit(shared: Arc<Shared>, node_id: String, backend_id: String, rpm: u32) {
    let _guard = shared.writer.lock().await;
    let Ok(Some(b)) = shared.store.backend(&backend_id) else { return };
    // Too small to allow a request per provider window would stop the backend outright:
    // that is not a limit anyone can use, so it is not learned.
    if rpm >= b.rpm_limit || crate::store::per_window(rpm, b.window_seconds) == 0 || !b.learn_limits {
        return;
    }
    {
        let mut learned = shared.learned.lock().expect("learned lock");
        // Only ever lower: a node cannot raise what was learned (nor make the control
        // plane write more than one audit entry per value on the way down).
        if learned.get(&backend_id).is_some_and(|&l| l <= rpm) {
            return;
        }
        learned.insert(backend_id.clone(), rpm);
    }
    shared.cluster.limit_learned(&backend_id, rpm);
    warn!(backend = %backend_id, name = %b.name, configured = b.rpm_limit, reported = rpm, node = %node_id,
        "the provider reports a lower request limit than configured: the fleet uses it; set rpm_limit to match");
    let target = format!("{backend_id}: the provider reports {rpm} RPM, configured {}", b.rpm_limit);
    if let Err(error) = shared.store.commit(ConfigChange::default(), &Actor::system(), "LimitLearned", &target) {
        warn!(%error, "could not record a learned limit");
        return;
    }
    if let Err(error) = shared.publish() {
        warn!(%error, "could not publish a learned limit");
    }
}
