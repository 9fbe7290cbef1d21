//! One backend's live state: limiters, 429 cooldown, passive health, retreat. Each part
//! has its own small lock; no lock here is shared by requests to different backends.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use crate::{
    ratelimit::{RequestLimiter, Retreat, TokenWindow},
    snapshot::{BackendConfig, ModelLimits, Settings},
};

/// The buckets of one model's own provider limits on one backend, beside the backend's:
/// a request for the model needs a token from both, and an empty model bucket blocks only
/// that model.
#[derive(Debug)]
pub struct ModelBucket {
    /// The canonical model name (`*` for the wildcard mapping).
    pub name: String,
    /// The model's own 429 cooldown (when the provider's 429 named the model) and the
    /// pause its rate-limit headers asked for: only this model stops on the backend.
    pub cooldown: Mutex<Cooldown>,
    /// Requests for the model in flight to this backend.
    pub in_flight: AtomicU64,
    /// Requests per window.
    pub limiter: Mutex<RequestLimiter>,
    /// Tokens per window, if limited.
    pub tpm: Mutex<Option<TokenWindow>>,
    /// Admitted since the last demand report.
    pub admitted: AtomicU64,
    /// Turned away (queue full or timed out) since the last demand report.
    pub rejected: AtomicU64,
}

impl ModelBucket {
    /// When a request needing `estimate` tokens can next be admitted.
    pub fn next_available(&self, now: Instant, estimate: u64) -> Instant {
        if let Some(until) = self.cooling_until(now) {
            return until;
        }
        let mut next = self.limiter.lock().expect("model limiter lock").next_available(now);
        if let Some(w) = self.tpm.lock().expect("model tpm lock").as_mut() {
            next = next.max(w.next_available(now, estimate));
        }
        next
    }

    /// Until when the model takes no requests here (cooling or paused), if it does at `now`.
    pub fn cooling_until(&self, now: Instant) -> Option<Instant> {
        self.cooldown.lock().expect("model cooldown lock").cooling_until(now)
    }

    fn new(name: &str, requests: u32, tokens: Option<u32>, burst: u32, window: Duration, now: Instant) -> Self {
        Self {
            name: name.to_owned(),
            cooldown: Mutex::new(Cooldown::default()),
            in_flight: AtomicU64::new(0),
            limiter: Mutex::new(RequestLimiter::new(requests, burst, window, now)),
            tpm: Mutex::new(tokens.map(|t| TokenWindow::new(u64::from(t), window))),
            admitted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    fn reconfigure(&self, requests: u32, tokens: Option<u32>, burst: u32, window: Duration, now: Instant) {
        self.limiter.lock().expect("model limiter lock").reconfigure(requests, burst, window, now);
        set_token_window(&mut self.tpm.lock().expect("model tpm lock"), tokens, window);
    }
}

/// Sets a token window to `limit` per `window`, keeping its reservations; `None` removes it.
fn set_token_window(slot: &mut Option<TokenWindow>, limit: Option<u32>, window: Duration) {
    match (limit, slot.as_mut()) {
        (Some(limit), Some(w)) => w.reconfigure(u64::from(limit), window),
        (Some(limit), None) => *slot = Some(TokenWindow::new(u64::from(limit), window)),
        (None, _) => *slot = None,
    }
}

/// A model's limits per its window (`window_seconds`) at this node's share: its own limit
/// scaled by the fraction of the backend's limit this node may use. Rounding down keeps
/// the nodes' model shares, summed, within the model's limit.
fn model_share(limits: ModelLimits, window_seconds: u32, fraction: f64) -> (u32, Option<u32>) {
    let per_window = |per_minute: u32| u64::from(per_minute) * u64::from(window_seconds) / 60;
    let scale = |per_minute: u32| (per_window(per_minute) as f64 * fraction).floor() as u32;
    let requests = limits.rpm.map_or(u32::MAX, scale);
    (requests, limits.tpm.map(scale))
}

/// `min(base · 2^(n−1), max)`: the cooldown after the n-th consecutive 429.
pub fn backoff(base: Duration, max: Duration, n: u32) -> Duration {
    let factor = 2u32.saturating_pow(n.saturating_sub(1).min(31));
    base.saturating_mul(factor).min(max)
}

/// 429 cooldown. The count is reset only by a success, never by expiry, so repeated
/// 429s escalate.
#[derive(Debug, Default, Clone)]
pub struct Cooldown {
    /// Consecutive 429s.
    pub consecutive: u32,
    /// Cooling until then.
    pub until: Option<Instant>,
    /// Retry-After the upstream sent last.
    pub last_retry_after: Option<Duration>,
    /// The provider reported the key's budget spent until then (its rate-limit headers):
    /// a pause, not a 429 cooldown, so it neither escalates nor takes emergency probes.
    pub exhausted_until: Option<Instant>,
}

impl Cooldown {
    /// A 429: escalates and returns the cooldown applied (never shorter than Retry-After).
    pub fn on_429(&mut self, now: Instant, settings: &Settings, retry_after: Option<Duration>) -> Duration {
        self.consecutive += 1;
        let d = backoff(settings.cooldown_base, settings.cooldown_max, self.consecutive)
            .max(retry_after.unwrap_or_default());
        let until = now + d;
        self.until = Some(self.until.map_or(until, |u| u.max(until)));
        self.last_retry_after = retry_after;
        d
    }

    /// A success: the count starts over and any cooldown ends.
    pub fn on_success(&mut self) {
        self.consecutive = 0;
        self.until = None;
    }

    /// The provider says the budget is spent for `d`: pause, without escalating.
    pub fn exhausted_for(&mut self, now: Instant, d: Duration) {
        let until = now + d;
        self.exhausted_until = Some(self.exhausted_until.map_or(until, |u| u.max(until)));
    }

    /// Until when it takes no requests (cooling or paused), if it does at `now`.
    pub fn cooling_until(&self, now: Instant) -> Option<Instant> {
        let cooling = self.until.filter(|&u| u > now);
        let paused = self.exhausted_until.filter(|&u| u > now);
        cooling.max(paused)
    }

    /// Whether the provider reported the budget spent at `now` (no probe can succeed).
    pub fn is_exhausted(&self, now: Instant) -> bool {
        self.exhausted_until.is_some_and(|u| u > now)
    }
}

/// Passive health: K consecutive failures (5xx, timeout, connect) or one 401/403 put the
/// backend in `error` for a while; it recovers by itself.
#[derive(Debug, Default, Clone)]
pub struct Health {
    /// Consecutive failures.
    pub failures: u32,
    /// In `error` until then.
    pub error_until: Option<Instant>,
    /// Why, for /status.
    pub reason: &'static str,
}

impl Health {
    /// A failure; returns true if it put the backend in `error`.
    pub fn on_failure(&mut self, now: Instant, settings: &Settings, reason: &'static str) -> bool {
        self.failures += 1;
        if self.failures >= settings.failure_threshold {
            self.error_until = Some(now + settings.error_cooldown);
            self.reason = reason;
            return true;
        }
        false
    }

    /// The key was refused: `error` at once.
    pub fn on_auth_error(&mut self, now: Instant, settings: &Settings) {
        self.error_until = Some(now + settings.error_cooldown);
        self.reason = "auth";
    }

    /// A success.
    pub fn on_success(&mut self) {
        self.failures = 0;
        self.error_until = None;
        self.reason = "";
    }

    /// Until when it is in error, if it is at `now`.
    pub fn error_until(&self, now: Instant) -> Option<Instant> {
        self.error_until.filter(|&u| u > now)
    }
}

/// Whether a backend can take a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// A token is available now.
    Ready,
    /// Healthy, but the next token comes then.
    NoToken(Instant),
    /// Cooling down after 429s until then.
    Cooling(Instant),
    /// In passive-health `error` until then.
    Error(Instant),
    /// Disabled by config.
    Disabled,
}

/// This node's share of a backend's limit, granted by the control plane.
#[derive(Debug, Default, Clone)]
pub struct Quota {
    /// Requests per window granted, with its tokens-per-window share.
    pub grant: Option<(u32, Option<u32>)>,
    /// The grant holds until then without renewal.
    pub lease_until: Option<Instant>,
    /// Share to use once the lease has run out: limit / nodes last known.
    pub fallback: (u32, Option<u32>),
    /// Starting share from the snapshot, until the first grant.
    pub initial: Option<u32>,
    /// The allocation round the grant came in (0: none).
    pub round: u64,
    /// The pace the grant allows (requests per window, its share of the fleet's rate by
    /// demand), when faster than the grant; under the same lease.
    pub pace: Option<u32>,
    /// The shares of the models' own limits, by canonical name, granted with the
    /// backend's (under the same lease).
    pub models: HashMap<String, ModelQuota>,
}

/// This node's share of one model's own limits on a backend.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ModelQuota {
    /// Requests per window granted, with the tokens-per-window share.
    pub grant: (u32, Option<u32>),
    /// Share to use once the lease has run out.
    pub fallback: (u32, Option<u32>),
}

/// The share once a lease has run out: for one `window` after it, no more than the grant
/// (the other nodes' grants may still be in use in that window, and only they and the
/// grant add up to the limit); then the fallback share (the fallback shares add up to the
/// limit).
fn after_lease(
    grant: (u32, Option<u32>),
    fallback: (u32, Option<u32>),
    until: Instant,
    window: Duration,
    now: Instant,
) -> (u32, Option<u32>) {
    if now >= until + window {
        return fallback;
    }
    let tokens = match (grant.1, fallback.1) {
        (Some(g), Some(f)) => Some(g.min(f)),
        (g, f) => g.or(f),
    };
    (grant.0.min(fallback.0), tokens)
}

impl Quota {
    /// Takes a grant from the control plane, held until `lease_until`: (requests, tokens)
    /// now and once the lease is over, the pace, the allocation round.
    pub fn renew(
        &mut self,
        grant: (u32, Option<u32>),
        fallback: (u32, Option<u32>),
        pace: u32,
        lease_until: Instant,
        round: u64,
    ) {
        self.grant = Some(grant);
        self.lease_until = Some(lease_until);
        self.fallback = fallback;
        self.pace = (pace > grant.0).then_some(pace);
        self.round = round;
    }

    /// How long the grant still holds at `now`, and its round (0 when none holds), as a
    /// demand report tells the control plane.
    pub fn lease_report(&self, now: Instant) -> (Duration, u64) {
        let remaining = self.lease_until.map_or(Duration::ZERO, |u| u.saturating_duration_since(now));
        (remaining, if remaining.is_zero() { 0 } else { self.round })
    }

    /// The requests-per-window share in force at `now`, and the tokens share; `None`
    /// when the control plane does not coordinate this backend (use the whole limit).
    /// `window` is the backend's window.
    pub fn share(&self, now: Instant, window: Duration) -> Option<(u32, Option<u32>)> {
        match (self.grant, self.lease_until) {
            (Some(g), Some(until)) if until > now => Some(g),
            (Some(g), Some(until)) => Some(after_lease(g, self.fallback, until, window, now)),
            (Some(_), None) => Some(self.fallback),
            (None, _) => self.initial.map(|i| (i, None)),
        }
    }

    /// The share of `model`'s own limits in force at `now`, if the control plane granted
    /// one (else the snapshot's starting share decides, or the backend's fraction).
    /// `window` is the model's window.
    pub fn model_share(&self, model: &str, now: Instant, window: Duration) -> Option<(u32, Option<u32>)> {
        let q = self.models.get(model)?;
        match self.lease_until {
            Some(until) if until > now => Some(q.grant),
            Some(until) => Some(after_lease(q.grant, q.fallback, until, window, now)),
            None => Some(q.fallback),
        }
    }
}

/// Live state of one backend, carried across snapshots.
#[derive(Debug)]
pub struct BackendState {
    /// Main request limiter.
    pub limiter: Mutex<RequestLimiter>,
    /// Emergency reserve, separate from the main bucket.
    pub reserve: Mutex<RequestLimiter>,
    /// Tokens per minute, if limited.
    pub tpm: Mutex<Option<TokenWindow>>,
    /// 429 cooldown.
    pub cooldown: Mutex<Cooldown>,
    /// Passive health.
    pub health: Mutex<Health>,
    /// Adaptive retreat.
    pub retreat: Mutex<Retreat>,
    /// This node's share of the limit.
    pub quota: Mutex<Quota>,
    /// Buckets of the models with their own limits, by canonical name (`*` for the
    /// wildcard mapping).
    pub models: Mutex<HashMap<String, Arc<ModelBucket>>>,
    /// Requests in flight to this backend.
    pub in_flight: AtomicU64,
    /// The lower request limit last reported to the control plane (0 = none), so each is
    /// reported once per config.
    pub learned_rpm: std::sync::atomic::AtomicU32,
    /// Admitted since the last demand report.
    pub admitted: AtomicU64,
    /// Turned away (queue full or timed out) since the last demand report.
    pub rejected: AtomicU64,
}

/// The emergency reserve: `emergency_fraction` of the limit per window (0 disables it).
fn reserve_limit(config: &BackendConfig, settings: &Settings) -> u32 {
    if settings.emergency_fraction <= 0.0 {
        return 0;
    }
    ((f64::from(config.window_limit()) * settings.emergency_fraction).floor() as u32).max(1)
}

impl BackendState {
    /// Fresh state for a backend. `minute` is the limiters' minute (60 s; shorter only
    /// in tests); each backend's window is its `window_seconds` of it.
    pub fn new(config: &BackendConfig, settings: &Settings, minute: Duration, now: Instant) -> Self {
        let window = config.window(minute);
        let state = Self {
            limiter: Mutex::new(RequestLimiter::new(config.window_limit(), settings.bucket_burst, window, now)),
            reserve: Mutex::new(RequestLimiter::new(reserve_limit(config, settings), 1, window, now)),
            tpm: Mutex::new(config.window_tpm().map(|t| TokenWindow::new(u64::from(t), window))),
            cooldown: Mutex::new(Cooldown::default()),
            health: Mutex::new(Health::default()),
            retreat: Mutex::new(Retreat::new(config.rpm_limit)),
            quota: Mutex::new(Quota::default()),
            models: Mutex::new(HashMap::new()),
            in_flight: AtomicU64::new(0),
            learned_rpm: std::sync::atomic::AtomicU32::new(0),
            admitted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        };
        state.reconfigure(config, settings, minute, now);
        state
    }

    /// Applies a (changed) config in place, keeping admissions, cooldown and health, and
    /// takes over the snapshot's starting share and fleet-wide cooldown.
    pub fn reconfigure(&self, config: &BackendConfig, settings: &Settings, minute: Duration, now: Instant) {
        self.learned_rpm.store(0, Ordering::Relaxed);
        {
            let mut quota = self.quota.lock().expect("quota lock");
            quota.initial = config.initial_share;
            quota.models.retain(|name, _| config.models.get(name).is_some_and(|m| m.limits.is_some()));
            if quota.fallback.0 == 0 {
                quota.fallback = (config.initial_share.unwrap_or(config.window_limit()), None);
            }
        }
        if let Some(remaining) = config.cooldown_remaining {
            let mut cooldown = self.cooldown.lock().expect("cooldown lock");
            let until = now + remaining;
            cooldown.until = Some(cooldown.until.map_or(until, |u| u.max(until)));
            cooldown.consecutive = cooldown.consecutive.max(config.consecutive_429);
        }
        if let Some(remaining) = config.exhausted_remaining {
            self.cooldown.lock().expect("cooldown lock").exhausted_for(now, remaining);
        }
        let window = config.window(minute);
        self.reserve.lock().expect("reserve lock").reconfigure(reserve_limit(config, settings), 1, window, now);
        self.apply_limits(config, settings, minute, now);
        // The models' own fleet-wide cooldowns and pauses, once their buckets exist.
        for c in &config.model_cooldowns {
            let Some(bucket) = self.model_bucket(&c.model) else { continue };
            let mut cooldown = bucket.cooldown.lock().expect("model cooldown lock");
            if let Some(remaining) = c.cooldown_remaining {
                let until = now + remaining;
                cooldown.until = Some(cooldown.until.map_or(until, |u| u.max(until)));
            }
            cooldown.consecutive = cooldown.consecutive.max(c.consecutive_429);
            if let Some(remaining) = c.exhausted_remaining {
                cooldown.exhausted_for(now, remaining);
            }
        }
    }

    /// Sets the limiters to the share in force, per provider window: the configured
    /// limit, lowered by this node's grant (or fallback, or starting share) and by
    /// retreat when enabled.
    pub fn apply_limits(&self, config: &BackendConfig, settings: &Settings, minute: Duration, now: Instant) {
        let window = config.window(minute);
        let quota = self.quota.lock().expect("quota lock").clone();
        let share = quota.share(now, window);
        let mut limit = config.window_limit();
        if settings.adaptive_retreat {
            let retreat = self.retreat.lock().expect("retreat lock").effective().round() as u32;
            limit = limit.min(config.per_window(retreat).max(1));
        }
        if let Some((granted, _)) = share {
            limit = limit.min(granted);
        }
        {
            let mut limiter = self.limiter.lock().expect("limiter lock");
            limiter.reconfigure(limit, settings.bucket_burst, window, now);
            // Under a live grant the bucket may refill at the node's share of the fleet's
            // rate (never faster than the backend's own limit); the window check still
            // holds it to the grant.
            if let (Some(pace), Some(until)) = (quota.pace, quota.lease_until)
                && until > now
                && share.is_some()
            {
                limiter.set_pace(pace.min(config.window_limit()), now);
            }
        }
        let tpm_limit = match (config.window_tpm(), share) {
            (Some(limit), Some((_, Some(granted)))) => Some(limit.min(granted)),
            (limit, _) => limit,
        };
        set_token_window(&mut self.tpm.lock().expect("tpm lock"), tpm_limit, window);
        // The models' own limits: this node's grant of each (or its starting share),
        // else the same fraction of theirs as the backend's share.
        let fraction = (f64::from(limit) / f64::from(config.window_limit().max(1))).min(1.0);
        let mut models = self.models.lock().expect("models lock");
        models.retain(|name, _| config.models.get(name).is_some_and(|m| m.limits.is_some()));
        for (name, route) in &config.models {
            let Some(limits) = route.limits else { continue };
            // The model's own window, if the provider enforces its limits in another.
            let window_seconds = limits.window_of(config);
            let model_window = minute * window_seconds / 60;
            let proportional = model_share(limits, window_seconds, fraction);
            let (requests, tokens) =
                match (quota.model_share(name, now, model_window), config.initial_model_shares.get(name)) {
                    (Some((requests, tokens)), _) => (requests, tokens.or(proportional.1)),
                    (None, Some(&initial)) => (initial, proportional.1),
                    (None, None) => proportional,
                };
            // In the same window, never more than the backend's share.
            let requests = if window_seconds == config.window_seconds { requests.min(limit) } else { requests };
            let burst = settings.bucket_burst;
            match models.get(name) {
                Some(bucket) => bucket.reconfigure(requests, tokens, burst, model_window, now),
                None => {
                    let bucket = ModelBucket::new(name, requests, tokens, burst, model_window, now);
                    models.insert(name.clone(), Arc::new(bucket));
                }
            }
        }
    }

    /// The bucket of `model`'s own limits, if it has any.
    pub fn model_bucket(&self, model: &str) -> Option<Arc<ModelBucket>> {
        self.models.lock().expect("models lock").get(model).cloned()
    }

    /// Disabled, in error or cooling at `now`: what both [`Self::availability`] and
    /// [`Self::ready_load`] check before the limiters.
    fn blocked(&self, enabled: bool, now: Instant) -> Option<Availability> {
        if !enabled {
            return Some(Availability::Disabled);
        }
        if let Some(until) = self.health.lock().expect("health lock").error_until(now) {
            return Some(Availability::Error(until));
        }
        let until = self.cooldown.lock().expect("cooldown lock").cooling_until(now)?;
        Some(Availability::Cooling(until))
    }

    /// Where the backend stands at `now` for a request needing `estimate` tokens (of
    /// `model`'s bucket too, if the model has its own limits).
    pub fn availability(
        &self,
        enabled: bool,
        now: Instant,
        estimate: u64,
        model: Option<&ModelBucket>,
    ) -> Availability {
        if let Some(blocked) = self.blocked(enabled, now) {
            return blocked;
        }
        if let Some(until) = model.and_then(|m| m.cooling_until(now)) {
            return Availability::Cooling(until);
        }
        let mut next = self.limiter.lock().expect("limiter lock").next_available(now);
        if let Some(w) = self.tpm.lock().expect("tpm lock").as_mut() {
            next = next.max(w.next_available(now, estimate));
        }
        if let Some(m) = model {
            next = next.max(m.next_available(now, estimate));
        }
        if next <= now { Availability::Ready } else { Availability::NoToken(next) }
    }

    /// For a backend that can take a request now, the request rate in the current window
    /// relative to its limit (0..=1); `None` when it cannot ([`Self::availability`] is
    /// not `Ready`). One pass, one limiter lock.
    pub fn ready_load(&self, enabled: bool, now: Instant, estimate: u64, model: Option<&ModelBucket>) -> Option<f64> {
        if self.blocked(enabled, now).is_some() {
            return None;
        }
        // (A cooling model's next_available is the end of its cooldown.)
        if model.is_some_and(|m| m.next_available(now, estimate) > now) {
            return None;
        }
        if let Some(w) = self.tpm.lock().expect("tpm lock").as_mut()
            && w.next_available(now, estimate) > now
        {
            return None;
        }
        let mut limiter = self.limiter.lock().expect("limiter lock");
        if limiter.next_available(now) > now {
            return None;
        }
        Some(f64::from(limiter.in_window(now)) / f64::from(limiter.limit().max(1)))
    }

    /// Counts a request in flight.
    pub fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request done.
    pub fn finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A backend in a bundle: its config, its live state, and its metric handles (made on
/// first use, so the hot path does not build label sets per request).
#[derive(Debug)]
pub struct Backend {
    /// Metric handles labelled with this backend's id and pool.
    pub metrics: std::sync::OnceLock<crate::metrics::BackendMetrics>,
    /// Config from the snapshot.
    pub config: BackendConfig,
    /// Rank of its pool (0 = first pool).
    pub pool_rank: usize,
    /// Live state, shared with the next bundle if the backend stays.
    pub state: std::sync::Arc<BackendState>,
}

impl Backend {
    /// Whether it can serve at all now, tokens aside: enabled, healthy by the control
    /// plane's probes, not in error, not cooling.
    pub fn is_live(&self, now: Instant) -> bool {
        self.state.blocked(self.config.enabled && self.config.healthy, now).is_none()
    }
}
