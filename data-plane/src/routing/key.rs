//! A client key's request limit on this node: its share of the key's fleet-wide
//! requests per minute (a grant under a lease, else the snapshot's starting share, else
//! the fallback once the lease is over — the same [`Quota`] rules as a backend's), held
//! by a window limiter. A request over the key's share is refused at once (429): it
//! never waits in the provider queue for its own key's limit.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use super::backend::Quota;
use crate::{ratelimit::RequestLimiter, snapshot::ClientKey};

/// The live state of one client key with a request limit.
#[derive(Debug)]
pub struct KeyState {
    /// Admissions in the current minute against this node's share.
    pub limiter: Mutex<RequestLimiter>,
    /// This node's share of the key's limit.
    pub quota: Mutex<Quota>,
    /// Admitted since the last demand report.
    pub admitted: AtomicU64,
    /// Refused for the key's limit since the last demand report.
    pub rejected: AtomicU64,
}

/// Requests a key may admit at once beyond its pace.
const KEY_BURST: u32 = 3;

impl KeyState {
    /// A fresh state for `key` (its `rpm_limit` must be set), per `minute`.
    pub fn new(key: &ClientKey, minute: Duration, now: Instant) -> Self {
        let state = Self {
            limiter: Mutex::new(RequestLimiter::new(key.rpm_limit.max(1), KEY_BURST, minute, now)),
            quota: Mutex::new(Quota::default()),
            admitted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        };
        state.reconfigure(key, minute, now);
        state
    }

    /// Takes over a (changed) key: its limit and the snapshot's starting share.
    pub fn reconfigure(&self, key: &ClientKey, minute: Duration, now: Instant) {
        {
            let mut quota = self.quota.lock().expect("quota lock");
            quota.initial = key.initial_share;
            if quota.fallback.0 == 0 {
                quota.fallback = (key.initial_share.unwrap_or(key.rpm_limit), None);
            }
        }
        self.apply_limits(key, minute, now);
    }

    /// Sets the limiter to the share in force.
    pub fn apply_limits(&self, key: &ClientKey, minute: Duration, now: Instant) {
        let quota = self.quota.lock().expect("quota lock").clone();
        let share = quota.share(now, minute);
        let limit = share.map_or(key.rpm_limit, |(granted, _)| granted.min(key.rpm_limit));
        let mut limiter = self.limiter.lock().expect("limiter lock");
        limiter.reconfigure(limit, KEY_BURST, minute, now);
        if let (Some(pace), Some(until)) = (quota.pace, quota.lease_until)
            && until > now
            && share.is_some()
        {
            limiter.set_pace(pace.min(key.rpm_limit), now);
        }
    }

    /// One request for the key: admitted, or refused with when to come back.
    pub fn try_admit(&self, now: Instant) -> Result<(), Duration> {
        let mut limiter = self.limiter.lock().expect("limiter lock");
        if limiter.try_acquire(now) {
            self.admitted.fetch_add(1, Ordering::Relaxed);
            Ok(())
        } else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            Err(limiter.next_available(now).saturating_duration_since(now))
        }
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
            has_budget: false,
        }
    }

    #[test]
    fn a_key_admits_its_share_then_refuses_with_when_to_come_back() {
        let minute = Duration::from_secs(60);
        let now = Instant::now();
        // Starting share 2 of 30 (others may use the rest).
        let k = key(30, Some(2));
        let state = KeyState::new(&k, minute, now);
        assert!(state.try_admit(now).is_ok() && state.try_admit(now).is_ok());
        let retry = state.try_admit(now).unwrap_err();
        assert!(retry > Duration::ZERO && retry <= minute + Duration::from_secs(1), "{retry:?}");
        assert_eq!((state.admitted.load(Ordering::Relaxed), state.rejected.load(Ordering::Relaxed)), (2, 1));
        // A grant of 5 under a lease: three more in this minute, not six.
        {
            let mut quota = state.quota.lock().unwrap();
            quota.grant = Some((5, None));
            quota.lease_until = Some(now + Duration::from_secs(5));
            quota.fallback = (10, None);
        }
        state.apply_limits(&k, minute, now);
        let admitted = (1..=58).filter(|s| state.try_admit(now + Duration::from_secs(*s)).is_ok()).count();
        assert_eq!(admitted, 3, "five in the minute, and the window still holds the first two");
        // The lease is over: for a window no more than the grant, then the fallback.
        let after = now + Duration::from_secs(6);
        state.apply_limits(&k, minute, after);
        assert_eq!(state.limiter.lock().unwrap().limit(), 5);
        let much_later = now + Duration::from_secs(130);
        state.apply_limits(&k, minute, much_later);
        assert_eq!(state.limiter.lock().unwrap().limit(), 10);
    }
}
