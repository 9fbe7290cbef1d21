//! A client key's limits on this node: its shares of the key's fleet-wide requests per
//! minute, tokens per minute and requests in flight at once (each a grant under a lease,
//! else the snapshot's starting share, else the fallback once the lease is over — the same
//! [`Quota`] rules as a backend's). Requests are held by a window limiter, tokens by a
//! sliding token window (an admission reserves the request's estimate, settled to the
//! real count when the answer ends), requests in flight by a counter a [`KeyPermit`]
//! holds until the answer's body ends. A request over any of the key's shares is refused
//! at once (429): it never waits in the provider queue for its own key's limit.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use super::backend::Quota;
use crate::{
    ratelimit::{RequestLimiter, TokenWindow},
    snapshot::ClientKey,
};

/// The live state of one client key with limits.
#[derive(Debug)]
pub struct KeyState {
    /// Admissions in the current minute against this node's share of `rpm_limit`.
    pub limiter: Mutex<RequestLimiter>,
    /// This node's share of the key's requests per minute.
    pub quota: Mutex<Quota>,
    /// Tokens in the current minute against this node's share of `tpm_limit` (`None`
    /// without a token limit).
    pub tokens: Mutex<Option<TokenWindow>>,
    /// This node's share of the key's tokens per minute.
    pub token_quota: Mutex<Quota>,
    /// The token share in force (a window's limit is at least 1; a share of 0 admits
    /// nothing).
    token_share: AtomicU32,
    /// Requests of the key in flight on this node.
    pub in_flight: AtomicU32,
    /// This node's share of `max_concurrent` in force (`u32::MAX` without the limit).
    pub concurrent_limit: AtomicU32,
    /// This node's share of the key's requests in flight at once.
    pub concurrent_quota: Mutex<Quota>,
    /// Admitted since the last demand report.
    pub admitted: AtomicU64,
    /// Refused for the key's limits since the last demand report.
    pub rejected: AtomicU64,
    /// Tokens (by estimate) of requests admitted or refused since the last report.
    pub tokens_wanted: AtomicU64,
    /// The most requests in flight at once since the last report.
    pub peak_in_flight: AtomicU32,
    /// Refused for the key's concurrency since the last report.
    pub concurrent_rejected: AtomicU64,
}

/// Requests a key may admit at once beyond its pace.
const KEY_BURST: u32 = 3;

/// Which of a key's limits refused a request, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    /// Requests per minute.
    Requests(Duration),
    /// Tokens per minute.
    Tokens(Duration),
    /// Requests in flight at once.
    Concurrent,
}

/// A request admitted for a key: holds its place among the key's requests in flight
/// until dropped, and its token reservation until settled.
#[derive(Debug)]
pub struct KeyPermit {
    state: Arc<KeyState>,
    reservation: Option<u64>,
    slot: bool,
}

impl KeyPermit {
    /// Settles the token reservation with the tokens the request used.
    pub fn settle(&self, tokens: u64) {
        if let (Some(id), Some(w)) = (self.reservation, self.state.tokens.lock().expect("key tokens lock").as_mut()) {
            w.settle(id, tokens);
        }
    }
}

impl Drop for KeyPermit {
    fn drop(&mut self) {
        if self.slot {
            self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Sets a quota's starting share and, until the first grant, its fallback.
fn start_quota(quota: &Mutex<Quota>, initial: Option<u32>, limit: u32) {
    let mut quota = quota.lock().expect("quota lock");
    quota.initial = initial;
    if quota.fallback.0 == 0 {
        quota.fallback = (initial.unwrap_or(limit), None);
    }
}

/// The share of `limit` in force by `quota` at `now`.
fn share_of(quota: &Mutex<Quota>, limit: u32, minute: Duration, now: Instant) -> u32 {
    quota.lock().expect("quota lock").share(now, minute).map_or(limit, |(granted, _)| granted.min(limit))
}

impl KeyState {
    /// A fresh state for `key` (it must have a limit), per `minute`.
    pub fn new(key: &ClientKey, minute: Duration, now: Instant) -> Self {
        let state = Self {
            limiter: Mutex::new(RequestLimiter::new(key.rpm_limit.max(1), KEY_BURST, minute, now)),
            quota: Mutex::new(Quota::default()),
            tokens: Mutex::new(None),
            token_quota: Mutex::new(Quota::default()),
            token_share: AtomicU32::new(u32::MAX),
            in_flight: AtomicU32::new(0),
            concurrent_limit: AtomicU32::new(u32::MAX),
            concurrent_quota: Mutex::new(Quota::default()),
            admitted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            tokens_wanted: AtomicU64::new(0),
            peak_in_flight: AtomicU32::new(0),
            concurrent_rejected: AtomicU64::new(0),
        };
        state.reconfigure(key, minute, now);
        state
    }

    /// Takes over a (changed) key: its limits and the snapshot's starting shares.
    pub fn reconfigure(&self, key: &ClientKey, minute: Duration, now: Instant) {
        start_quota(&self.quota, key.initial_share, key.rpm_limit);
        start_quota(&self.token_quota, key.initial_tpm_share, key.tpm_limit);
        start_quota(&self.concurrent_quota, key.initial_concurrent_share, key.max_concurrent);
        self.apply_limits(key, minute, now);
    }

    /// Renews the shares of a grant from the control plane: (requests, tokens, requests
    /// in flight), each with its fallback, under one lease.
    pub fn renew(&self, shares: [(u32, u32); 3], pace: u32, lease_until: Instant, round: u64) {
        let quotas = [&self.quota, &self.token_quota, &self.concurrent_quota];
        for (i, (quota, (grant, fallback))) in quotas.into_iter().zip(shares).enumerate() {
            let pace = if i == 0 { pace } else { 0 };
            quota.lock().expect("quota lock").renew((grant, None), (fallback, None), pace, lease_until, round);
        }
    }

    /// Sets the limiters to the shares in force.
    pub fn apply_limits(&self, key: &ClientKey, minute: Duration, now: Instant) {
        if key.rpm_limit > 0 {
            let quota = self.quota.lock().expect("quota lock").clone();
            let limit = share_of(&self.quota, key.rpm_limit, minute, now);
            let mut limiter = self.limiter.lock().expect("limiter lock");
            limiter.reconfigure(limit, KEY_BURST, minute, now);
            if let (Some(pace), Some(until)) = (quota.pace, quota.lease_until)
                && until > now
                && quota.share(now, minute).is_some()
            {
                limiter.set_pace(pace.min(key.rpm_limit), now);
            }
        }
        let mut tokens = self.tokens.lock().expect("key tokens lock");
        if key.tpm_limit > 0 {
            let share = share_of(&self.token_quota, key.tpm_limit, minute, now);
            self.token_share.store(share, Ordering::Release);
            let limit = u64::from(share);
            match tokens.as_mut() {
                Some(w) => w.reconfigure(limit, minute),
                None => *tokens = Some(TokenWindow::new(limit, minute)),
            }
        } else {
            *tokens = None;
        }
        let concurrent = if key.max_concurrent > 0 {
            share_of(&self.concurrent_quota, key.max_concurrent, minute, now)
        } else {
            u32::MAX
        };
        self.concurrent_limit.store(concurrent, Ordering::Release);
    }

    /// One request of `estimate` tokens for `key`: admitted (with the permit to hold
    /// while it is in flight), or refused by the first of its limits that is used up.
    pub fn try_admit(self: &Arc<Self>, key: &ClientKey, now: Instant, estimate: u64) -> Result<KeyPermit, KeyRefusal> {
        let slot = key.max_concurrent > 0;
        if slot {
            let limit = self.concurrent_limit.load(Ordering::Acquire);
            match self.in_flight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1)) {
                Ok(before) => {
                    self.peak_in_flight.fetch_max(before + 1, Ordering::Relaxed);
                }
                Err(_) => {
                    self.concurrent_rejected.fetch_add(1, Ordering::Relaxed);
                    self.refused(estimate);
                    return Err(KeyRefusal::Concurrent);
                }
            }
        }
        // From here a refusal gives the place back.
        let permit = KeyPermit { state: self.clone(), reservation: None, slot };
        let mut tokens = self.tokens.lock().expect("key tokens lock");
        if let Some(w) = tokens.as_mut() {
            // A share of 0 waits for a grant: even an empty window admits nothing.
            let next = w.next_available(now, estimate);
            if next > now || self.token_share.load(Ordering::Acquire) == 0 {
                self.refused(estimate);
                let retry = next.saturating_duration_since(now).max(Duration::from_secs(1));
                return Err(KeyRefusal::Tokens(retry));
            }
        }
        if key.rpm_limit > 0 {
            let mut limiter = self.limiter.lock().expect("limiter lock");
            if !limiter.try_acquire(now) {
                self.refused(estimate);
                return Err(KeyRefusal::Requests(limiter.next_available(now).saturating_duration_since(now)));
            }
        }
        let mut permit = permit;
        permit.reservation = tokens.as_mut().map(|w| w.reserve(now, estimate));
        drop(tokens);
        self.admitted.fetch_add(1, Ordering::Relaxed);
        self.tokens_wanted.fetch_add(estimate, Ordering::Relaxed);
        Ok(permit)
    }

    fn refused(&self, estimate: u64) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.tokens_wanted.fetch_add(estimate, Ordering::Relaxed);
    }
}

/// What is left of a client key's spend budget, as this node knows it: the control
/// plane's remainder (from reported usage, every grant interval) less what this node has
/// spent since.
#[derive(Debug, Default)]
pub struct KeyBudget {
    /// (USD left, when the period resets, unix ms); `None` until the control plane says.
    left: Mutex<Option<(f64, i64)>>,
}

impl KeyBudget {
    /// The control plane's remainder.
    pub fn set(&self, usd: f64, reset_ms: i64) {
        *self.left.lock().expect("budget lock") = Some((usd, reset_ms));
    }

    /// This node spent `usd` for the key.
    pub fn spend(&self, usd: f64) {
        if let Some((left, _)) = self.left.lock().expect("budget lock").as_mut() {
            *left -= usd;
        }
    }

    /// When the budget starts afresh, if it is used up at `now_ms`.
    pub fn exhausted(&self, now_ms: i64) -> Option<i64> {
        match *self.left.lock().expect("budget lock") {
            Some((left, reset_ms)) if left <= 0.0 && reset_ms > now_ms => Some(reset_ms),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rpm_limit: u32, initial_share: Option<u32>) -> ClientKey {
        ClientKey {
            id: "key_1".into(),
            hash: [0; 32],
            team: "".into(),
            models: Vec::new(),
            pools: Vec::new(),
            rpm_limit,
            tpm_limit: 0,
            max_concurrent: 0,
            expires_at_ms: None,
            enabled: true,
            initial_share,
            initial_tpm_share: None,
            initial_concurrent_share: None,
            has_budget: false,
        }
    }

    #[test]
    fn a_key_admits_its_share_then_refuses_with_when_to_come_back() {
        let minute = Duration::from_secs(60);
        let now = Instant::now();
        // Starting share 2 of 30 (others may use the rest).
        let k = key(30, Some(2));
        let state = Arc::new(KeyState::new(&k, minute, now));
        assert!(state.try_admit(&k, now, 0).is_ok() && state.try_admit(&k, now, 0).is_ok());
        let Err(KeyRefusal::Requests(retry)) = state.try_admit(&k, now, 0) else { panic!("refused for requests") };
        assert!(retry > Duration::ZERO && retry <= minute + Duration::from_secs(1), "{retry:?}");
        assert_eq!((state.admitted.load(Ordering::Relaxed), state.rejected.load(Ordering::Relaxed)), (2, 1));
        // A grant of 5 under a lease: three more in this minute, not six.
        state.renew([(5, 10), (0, 0), (0, 0)], 0, now + Duration::from_secs(5), 1);
        state.apply_limits(&k, minute, now);
        let admitted = (1..=58).filter(|s| state.try_admit(&k, now + Duration::from_secs(*s), 0).is_ok()).count();
        assert_eq!(admitted, 3, "five in the minute, and the window still holds the first two");
        // The lease is over: for a window no more than the grant, then the fallback.
        let after = now + Duration::from_secs(6);
        state.apply_limits(&k, minute, after);
        assert_eq!(state.limiter.lock().unwrap().limit(), 5);
        let much_later = now + Duration::from_secs(130);
        state.apply_limits(&k, minute, much_later);
        assert_eq!(state.limiter.lock().unwrap().limit(), 10);
    }

    #[test]
    fn a_token_limit_holds_estimates_and_settles_to_what_was_used() {
        let minute = Duration::from_secs(60);
        let now = Instant::now();
        let k = ClientKey { tpm_limit: 1_000, ..key(0, None) };
        let state = Arc::new(KeyState::new(&k, minute, now));
        // 400 + 400 fit; a third 400 does not, until the first settles lower.
        let first = state.try_admit(&k, now, 400).unwrap();
        let _second = state.try_admit(&k, now, 400).unwrap();
        let Err(KeyRefusal::Tokens(retry)) = state.try_admit(&k, now, 400) else { panic!("refused for tokens") };
        assert!(retry >= Duration::from_secs(1) && retry <= minute, "{retry:?}");
        first.settle(100);
        assert!(state.try_admit(&k, now, 400).is_ok(), "100 + 400 + 400 fit in 1000");
        // A window later everything is free again.
        assert!(state.try_admit(&k, now + minute, 900).is_ok());
        // A share of 0 (wait for a grant) admits nothing, even into an empty window.
        let waiting = ClientKey { initial_tpm_share: Some(0), ..k.clone() };
        let state = Arc::new(KeyState::new(&waiting, minute, now));
        assert!(matches!(state.try_admit(&waiting, now, 1), Err(KeyRefusal::Tokens(_))));
        state.renew([(0, 0), (300, 300), (0, 0)], 0, now + Duration::from_secs(5), 1);
        state.apply_limits(&waiting, minute, now);
        assert!(state.try_admit(&waiting, now, 300).is_ok());
        assert!(state.try_admit(&waiting, now, 1).is_err(), "the grant is 300");
    }

    #[test]
    fn requests_in_flight_are_held_until_the_permit_drops() {
        let minute = Duration::from_secs(60);
        let now = Instant::now();
        let k = ClientKey { max_concurrent: 2, tpm_limit: 100, ..key(0, None) };
        let state = Arc::new(KeyState::new(&k, minute, now));
        let a = state.try_admit(&k, now, 10).unwrap();
        let b = state.try_admit(&k, now, 10).unwrap();
        assert_eq!(state.try_admit(&k, now, 10).unwrap_err(), KeyRefusal::Concurrent);
        drop(a);
        let c = state.try_admit(&k, now, 10).unwrap();
        assert_eq!(state.in_flight.load(Ordering::Relaxed), 2);
        // A refusal by another limit gives the place back.
        drop(c);
        assert!(matches!(state.try_admit(&k, now, 500), Err(KeyRefusal::Tokens(_))));
        assert_eq!(state.in_flight.load(Ordering::Relaxed), 1, "only b is in flight");
        drop(b);
        assert_eq!(state.peak_in_flight.load(Ordering::Relaxed), 2);
        // A grant of 1 in flight on this node.
        state.renew([(0, 0), (100, 100), (1, 1)], 0, now + Duration::from_secs(5), 1);
        state.apply_limits(&k, minute, now);
        let _one = state.try_admit(&k, now, 1).unwrap();
        assert_eq!(state.try_admit(&k, now, 1).unwrap_err(), KeyRefusal::Concurrent);
    }
}
