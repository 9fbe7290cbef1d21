//! Choosing a backend: pools in order; within a pool, a weighted random choice that
//! prefers headroom (weight ∝ backend weight × (limit − current rate) / limit).

use std::sync::Arc;

use rand::Rng;
use tokio::time::Instant;

use super::{
    backend::{Availability, Backend},
    bundle::Route,
};
use crate::snapshot::{ModelRoute, Settings};

/// A backend admitted for one attempt, with its token already taken.
#[derive(Debug)]
pub struct Grant {
    /// The backend.
    pub backend: Arc<Backend>,
    /// How it serves the requested model.
    pub model: ModelRoute,
    /// Through the emergency reserve.
    pub emergency: bool,
    /// When the token was taken (for a refund).
    pub at: Instant,
    /// TPM reservation to settle.
    pub tpm_reservation: Option<u64>,
    /// TPM reservation in the model's own bucket to settle.
    pub model_tpm_reservation: Option<u64>,
}

impl Grant {
    /// Gives the token back (the request never used it).
    pub fn refund(&self) {
        let state = &self.backend.state;
        let limiter = if self.emergency { &state.reserve } else { &state.limiter };
        limiter.lock().expect("limiter lock").refund(self.at);
        if !self.emergency
            && let Some(bucket) = &self.model.bucket
        {
            bucket.0.limiter.lock().expect("model limiter lock").refund(self.at);
        }
        self.settle(0);
    }

    /// Settles the token reservations with the tokens the attempt used.
    pub fn settle(&self, tokens: u64) {
        if let (Some(id), Some(w)) = (self.tpm_reservation, self.backend.state.tpm.lock().expect("tpm lock").as_mut()) {
            w.settle(id, tokens);
        }
        if let (Some(id), Some(bucket)) = (self.model_tpm_reservation, &self.model.bucket)
            && let Some(w) = bucket.0.tpm.lock().expect("model tpm lock").as_mut()
        {
            w.settle(id, tokens);
        }
    }
}

/// What a route can do for a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assessment {
    /// Some candidate has a token now.
    Ready,
    /// Wait until then: a healthy candidate's next token, or a cooling one that recovers
    /// within the near-recovery wait.
    Wait(Instant),
    /// Every candidate is cooling (or in error) beyond the near-recovery wait; the
    /// earliest recovery, if any candidate will recover.
    Exhausted(Option<Instant>),
}

fn usable(b: &Backend, exclude: &[String]) -> bool {
    !exclude.contains(&b.config.id)
}

/// Assesses `route` without taking anything.
pub fn assess(route: &Route, exclude: &[String], now: Instant, estimate: u64, settings: &Settings) -> Assessment {
    let mut next_token: Option<Instant> = None;
    let mut recovery: Option<Instant> = None;
    let members = route.open_tiers(|b| !usable(b, exclude), now).flat_map(|t| t.members.iter());
    for (b, model) in members.filter(|(b, _)| usable(b, exclude)) {
        let bucket = model.bucket.as_ref().map(|m| m.0.as_ref());
        match b.state.availability(b.config.enabled && b.config.healthy, now, estimate, bucket) {
            Availability::Ready => return Assessment::Ready,
            Availability::NoToken(t) => next_token = Some(next_token.map_or(t, |n| n.min(t))),
            Availability::Cooling(t) | Availability::Error(t) => recovery = Some(recovery.map_or(t, |r| r.min(t))),
            Availability::Disabled => {}
        }
    }
    match (next_token, recovery) {
        (Some(t), r) => Assessment::Wait(r.map_or(t, |r| r.min(t))),
        (None, Some(r)) if r <= now + settings.near_recovery_wait => Assessment::Wait(r),
        (None, r) => Assessment::Exhausted(r),
    }
}

/// Takes a token from the best ready candidate: the first open pool with a ready member
/// (see [`Route::open_tiers`]), and within it a headroom-weighted random choice.
pub fn take(route: &Route, exclude: &[String], now: Instant, estimate: u64) -> Option<Grant> {
    let mut rng = rand::rng();
    for tier in route.open_tiers(|b| !usable(b, exclude), now) {
        let mut ready: Vec<(&(Arc<Backend>, ModelRoute), f64)> = tier
            .members
            .iter()
            .filter(|(b, _)| usable(b, exclude))
            .filter_map(|m| {
                let bucket = m.1.bucket.as_ref().map(|b| b.0.as_ref());
                let load = m.0.state.ready_load(m.0.config.enabled && m.0.config.healthy, now, estimate, bucket)?;
                Some((m, (1.0 - load).max(0.01) * f64::from(m.0.config.weight)))
            })
            .collect();
        while !ready.is_empty() {
            let total: f64 = ready.iter().map(|r| r.1).sum();
            let mut pick = rng.random_range(0.0..total);
            let i = ready
                .iter()
                .position(|r| {
                    pick -= r.1;
                    pick < 0.0
                })
                .unwrap_or(ready.len() - 1);
            let (b, model) = ready.swap_remove(i).0;
            if let Some(grant) = acquire(b, model, now, estimate, false) {
                return Some(grant);
            }
        }
    }
    None
}

/// The emergency channel: the cooling candidate whose cooldown ends soonest, through its
/// separate reserve bucket. The main bucket is not touched.
pub fn take_emergency(route: &Route, exclude: &[String], now: Instant) -> Option<Grant> {
    let (b, model) = route
        .members()
        .filter(|(b, _)| usable(b, exclude) && b.config.enabled && b.config.healthy)
        .filter(|(b, _)| b.state.health.lock().expect("health lock").error_until(now).is_none())
        .filter_map(|m| {
            let cooldown = m.0.state.cooldown.lock().expect("cooldown lock").clone();
            let model = m.1.bucket.as_ref().map(|b| b.0.cooldown.lock().expect("model cooldown lock").clone());
            // A budget the provider reported spent has nothing to probe.
            if cooldown.is_exhausted(now) || model.as_ref().is_some_and(|c| c.is_exhausted(now)) {
                return None;
            }
            let model_until = model.and_then(|c| c.cooling_until(now));
            Some((m, cooldown.cooling_until(now).max(model_until)?))
        })
        .min_by_key(|(_, until)| *until)?
        .0;
    acquire(b, model, now, 0, true)
}

/// Takes a token from the backend's bucket (or its reserve) and, for a model with its own
/// limits, from the model's bucket too: both or neither. The emergency reserve bypasses
/// the model's bucket as it does the backend's main one.
fn acquire(b: &Arc<Backend>, model: &ModelRoute, now: Instant, estimate: u64, emergency: bool) -> Option<Grant> {
    let state = &b.state;
    let bucket = model.bucket.as_ref().filter(|_| !emergency);
    if let Some(m) = bucket
        && !m.0.limiter.lock().expect("model limiter lock").try_acquire(now)
    {
        return None;
    }
    let limiter = if emergency { &state.reserve } else { &state.limiter };
    if !limiter.lock().expect("limiter lock").try_acquire(now) {
        if let Some(m) = bucket {
            m.0.limiter.lock().expect("model limiter lock").refund(now);
        }
        return None;
    }
    // Demand the fleet should know (the emergency reserve is not the fleet's to grant).
    if !emergency {
        state.admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(m) = bucket {
            m.0.admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let tpm_reservation = state.tpm.lock().expect("tpm lock").as_mut().map(|w| w.reserve(now, estimate));
    let model_tpm_reservation =
        bucket.and_then(|m| m.0.tpm.lock().expect("model tpm lock").as_mut().map(|w| w.reserve(now, estimate)));
    Some(Grant { backend: b.clone(), model: model.clone(), emergency, at: now, tpm_reservation, model_tpm_reservation })
}
