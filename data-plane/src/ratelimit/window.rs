//! The request limiter: never more than `limit` admissions in any window (60 s by
//! default), spread out by a token bucket of `burst` tokens refilled at `pace / window`
//! (`pace` is the limit unless the fleet sets a faster one: a node whose window budget
//! grows only as others' old admissions leave the window may pace at its share of the
//! fleet's rate; the window check alone bounds what it admits).
//!
//! The window check keeps a small safety margin (1% of the window, at least 50 ms): a
//! provider counts arrivals, not our admissions, and network jitter can bring two
//! admissions exactly one window apart closer together by the time they arrive.
//!
//! Admissions are logged one by one while the limit is small (exact). For large limits
//! the log counts per slot of 1/64 of the window, so memory stays constant however many
//! requests a minute pass; a slot counts until all of it has left the window, which errs
//! on the safe side by at most one slot.

use std::{collections::VecDeque, time::Duration};

use tokio::time::Instant;

/// Limits admissions to one backend. Time is passed in, so tests drive it.
#[derive(Debug)]
pub struct RequestLimiter {
    limit: u32,
    /// The bucket refills at `pace.max(limit) / window`.
    pace: u32,
    burst: u32,
    window: Duration,
    tokens: f64,
    refilled_at: Instant,
    /// Admissions within the guarded window, oldest first.
    pub(super) admitted: AdmissionLog,
}

/// Limits up to this are logged admission by admission.
const EXACT_UP_TO: u32 = 4096;
/// Slots per window for larger limits.
pub(super) const SLOTS: u32 = 64;

/// Admission counts by time: entries (first admission, end of its slot, count). An exact
/// entry's slot ends where it starts.
#[derive(Debug, Default)]
pub(super) struct AdmissionLog {
    pub(super) entries: VecDeque<(Instant, Instant, u32)>,
    total: u64,
}

impl AdmissionLog {
    fn push(&mut self, now: Instant, slot: Duration) {
        self.total += 1;
        if let Some(last) = self.entries.back_mut()
            && now < last.1
        {
            last.2 += 1;
            return;
        }
        self.entries.push_back((now, now + slot, 1));
    }

    /// Drops entries whose whole slot has left the guarded window.
    fn prune(&mut self, now: Instant, guarded: Duration) {
        while let Some(&(_, end, n)) = self.entries.front() {
            if now.saturating_duration_since(end) < guarded {
                break;
            }
            self.total -= u64::from(n);
            self.entries.pop_front();
        }
    }

    /// When `need` of the oldest admissions will have left the guarded window.
    fn leaves(&self, need: u64, guarded: Duration) -> Option<Instant> {
        let mut gone = 0u64;
        for &(_, end, n) in &self.entries {
            gone += u64::from(n);
            if gone >= need {
                return Some(end + guarded);
            }
        }
        None
    }

    fn remove(&mut self, at: Instant) {
        if let Some(i) = self.entries.iter().rposition(|&(start, end, _)| start <= at && (at < end || at == start)) {
            self.total -= 1;
            self.entries[i].2 -= 1;
            if self.entries[i].2 == 0 {
                self.entries.remove(i);
            }
        }
    }
}

impl RequestLimiter {
    /// A limiter starting with a full bucket.
    pub fn new(limit: u32, burst: u32, window: Duration, now: Instant) -> Self {
        let mut l = Self {
            limit,
            pace: limit,
            burst: 1,
            window,
            tokens: 0.0,
            refilled_at: now,
            admitted: AdmissionLog::default(),
        };
        l.burst = burst.clamp(1, l.limit.max(1));
        l.tokens = f64::from(l.burst);
        l
    }

    /// Changes the limit (a new snapshot, a grant, a retreat) keeping the admission log,
    /// so a change never forgets what the last window already spent.
    pub fn reconfigure(&mut self, limit: u32, burst: u32, window: Duration, now: Instant) {
        self.refill(now);
        self.limit = limit;
        self.pace = limit;
        self.burst = burst.clamp(1, self.limit.max(1));
        self.window = window;
        self.tokens = self.tokens.min(f64::from(self.burst));
    }

    /// The current limit per window.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Refills the bucket at `pace` per window when that is faster than the limit (set
    /// after [`Self::reconfigure`], which resets it to the limit). Never admits more than
    /// the limit in any window.
    pub fn set_pace(&mut self, pace: u32, now: Instant) {
        self.refill(now);
        self.pace = pace.max(self.limit);
    }

    /// The window the log is checked against: the window plus the safety margin.
    fn guarded_window(&self) -> Duration {
        self.window + (self.window / 100).max(Duration::from_millis(50))
    }

    /// Width of one log slot: none (exact) for small limits.
    fn slot(&self) -> Duration {
        if self.limit <= EXACT_UP_TO { Duration::ZERO } else { self.window / SLOTS }
    }

    fn rate_per_sec(&self) -> f64 {
        f64::from(self.pace.max(self.limit)) / self.window.as_secs_f64()
    }

    fn refill(&mut self, now: Instant) {
        if self.limit == 0 {
            self.refilled_at = now;
            self.tokens = 0.0;
        }
        let elapsed = now.saturating_duration_since(self.refilled_at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate_per_sec()).min(f64::from(self.burst));
        self.refilled_at = now;
        let guarded = self.guarded_window();
        self.admitted.prune(now, guarded);
    }

    /// When the next admission is possible: `now` if it is possible now.
    pub fn next_available(&mut self, now: Instant) -> Instant {
        if self.limit == 0 {
            // No share at all (e.g. a grant of 0): look again after a window; a new
            // grant wakes waiters sooner.
            self.refill(now);
            return now + self.window;
        }
        self.refill(now);
        let bucket = if self.tokens >= 1.0 {
            now
        } else {
            now + Duration::from_secs_f64((1.0 - self.tokens) / self.rate_per_sec())
        };
        let window = if self.admitted.total >= u64::from(self.limit) {
            // The admissions that must leave the window before another may enter.
            let need = self.admitted.total - u64::from(self.limit) + 1;
            self.admitted.leaves(need, self.guarded_window()).unwrap_or(now + self.window)
        } else {
            now
        };
        bucket.max(window)
    }

    /// Admits one request now if both the bucket and the window allow it.
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        if self.next_available(now) > now {
            return false;
        }
        self.tokens -= 1.0;
        let slot = self.slot();
        self.admitted.push(now, slot);
        true
    }

    /// Gives back an admission made at `at` that was never used (the waiter had gone).
    pub fn refund(&mut self, at: Instant) {
        let before = self.admitted.total;
        self.admitted.remove(at);
        if self.admitted.total < before {
            self.tokens = (self.tokens + 1.0).min(f64::from(self.burst));
        }
    }

    /// Admissions in the current window (the backend's current rate).
    pub fn in_window(&mut self, now: Instant) -> u32 {
        self.refill(now);
        self.admitted.total.min(u64::from(u32::MAX)) as u32
    }

    /// Tokens in the bucket now.
    pub fn tokens(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// Bucket capacity.
    pub fn burst(&self) -> u32 {
        self.burst
    }
}
