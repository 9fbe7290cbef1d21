//! Admission: a token now if one is free and nobody waits; otherwise the queue (also for
//! a backend that recovers within the near-recovery wait); otherwise the emergency
//! channel; otherwise 503.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use super::error::ProxyError;
use crate::{
    routing::{Assessment, Bundle, Decision, Grant, Priority, Route, assess, take, take_emergency},
    snapshot::Api,
    state::{Counters, Shared},
};

/// Why no backend of `api` serves `model`: another API's backends do (the client called
/// the wrong path), or none at all.
pub(super) fn not_served(bundle: &Bundle, api: Api, model: &str) -> ProxyError {
    match bundle.apis_serving(model).find(|a| *a != api) {
        Some(other) => ProxyError::WrongApi(model.to_owned(), other),
        None => ProxyError::ModelNotFound(model.to_owned()),
    }
}

/// When the first cooling (or erroring) member of `route` recovers.
fn earliest_recovery(route: &Route, now: Instant) -> Option<Instant> {
    route
        .members()
        .filter_map(|(b, m)| {
            let cool = b.state.cooldown.lock().expect("cooldown lock").cooling_until(now);
            let cool = cool.max(m.bucket.as_ref().and_then(|m| m.0.cooling_until(now)));
            let err = b.state.health.lock().expect("health lock").error_until(now);
            match (cool, err) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            }
        })
        .min()
}

fn until(t: Option<Instant>, now: Instant, default: Duration) -> Duration {
    t.map_or(default, |t| t.saturating_duration_since(now)).max(Duration::from_secs(1))
}

/// Counts a request turned away against every candidate, as demand the fleet should know.
fn turned_away(route: &Route) {
    for (b, model) in route.members() {
        b.state.rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(bucket) = &model.bucket {
            bucket.0.rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Gets a backend token for one attempt at `model` on a backend of `api`, not using
/// `exclude`d backends.
pub(super) async fn admit(
    shared: &Arc<Shared>,
    (api, model): (Api, &str),
    priority: Priority,
    exclude: &[String],
    estimate: u64,
    deadline: Instant,
) -> Result<Grant, ProxyError> {
    loop {
        let bundle = shared.bundle.load_full();
        let route = bundle.route(api, model).ok_or_else(|| not_served(&bundle, api, model))?;
        let now = Instant::now();
        // The common case first: nobody waits and a candidate has a token.
        if shared.queue.is_empty()
            && let Some(grant) = take(&route, exclude, now, estimate)
        {
            return Ok(grant);
        }
        // No token now (or others wait first): the emergency channel when everything
        // is cooling, else the queue.
        if let Assessment::Exhausted(_) = assess(&route, exclude, now, estimate, &bundle.settings) {
            if let Some(grant) = take_emergency(&route, exclude, now) {
                shared.metrics.emergency(&grant.backend.config.id);
                Counters::bump(&shared.counters.emergency);
                return Ok(grant);
            }
            let retry = until(earliest_recovery(&route, now), now, bundle.settings.cooldown_base);
            return Err(ProxyError::Exhausted(retry));
        }

        let capacity = bundle.settings.queue_capacity;
        drop(bundle);
        // The queue is the slow path: its future lives on the heap so the fast path's
        // state (moved into the connection on every request) stays small.
        let decision =
            Box::pin(wait_in_queue(shared, (api, model), priority, exclude, estimate, capacity, deadline)).await?;
        match decision {
            Some(Decision::Granted(grant)) => return Ok(grant),
            Some(Decision::Evicted) => {
                shared.metrics.queue_rejected(priority.as_str(), "full");
                return Err(ProxyError::QueueFull);
            }
            Some(Decision::Reassess) => continue,
            None if Instant::now() < deadline => continue,
            None => {
                shared.metrics.queue_rejected(priority.as_str(), "timeout");
                turned_away(&route);
                let bundle = shared.bundle.load();
                let now = Instant::now();
                let next = bundle.route(api, model).and_then(|route| {
                    match assess(&route, exclude, now, estimate, &bundle.settings) {
                        Assessment::Wait(t) => Some(t),
                        _ => None,
                    }
                });
                return Err(ProxyError::QueueTimeout(until(next, now, Duration::from_secs(1))));
            }
        }
    }
}

/// Waits in the queue for a decision; `None` when the wait ran out first.
async fn wait_in_queue(
    shared: &Arc<Shared>,
    target: (Api, &str),
    priority: Priority,
    exclude: &[String],
    estimate: u64,
    capacity: usize,
    deadline: Instant,
) -> Result<Option<Decision>, ProxyError> {
    let started = Instant::now();
    let (id, mut rx) = shared.queue.push(priority, target, exclude, estimate, capacity).map_err(|_| {
        shared.metrics.queue_rejected(priority.as_str(), "full");
        ProxyError::QueueFull
    })?;
    let decision = match tokio::time::timeout_at(deadline, &mut rx).await {
        Ok(decision) => decision.ok(),
        Err(_) if shared.queue.remove(id) => None,
        // Decided while timing out: take the decision rather than lose a token.
        Err(_) => rx.try_recv().ok(),
    };
    shared.metrics.queue_wait(priority.as_str(), started.elapsed().as_secs_f64());
    Ok(decision)
}
