//! One node's share of one backend, and the bound on what the node may have used of the
//! current window, which every allocation round counts against the limit.

use std::{collections::VecDeque, time::Duration};

use tokio::time::Instant;

/// Requests a node may admit at once beyond its pace (its bucket's burst).
const BURST_ALLOWANCE: u32 = 10;

/// One node's share of one backend.
#[derive(Debug, Default)]
pub(super) struct Share {
    pub(super) demand: f64,
    pub(super) grant: u32,
    /// (when, grant) issued within the last window and the propagation allowance.
    pub(super) history: VecDeque<(Instant, u32)>,
    /// The node may use `grant` until then without hearing from us.
    pub(super) lease_until: Option<Instant>,
    pub(super) bucket_fill: f64,
    pub(super) in_window: u32,
    /// When the node last reported its demand and window use.
    pub(super) reported_at: Option<Instant>,
    /// The grant of the newest entry that aged out of `history`.
    pub(super) aged: Option<u32>,
    /// The fallback share last sent, used if the lease runs out.
    pub(super) fallback: u32,
    /// When the node's current session began: a new process does not remember what the
    /// previous one admitted, so its window use says nothing until a window has passed.
    pub(super) attached_at: Option<Instant>,
}

impl Share {
    /// What the node may have used of the current window: the largest recent grant, or,
    /// if it reported lately, its reported use plus what it could admit at its current
    /// grant's pace (and a burst) before the next grant reaches it.
    ///
    /// Reports count only from a window into the node's session (a new process does not
    /// remember what its predecessor admitted). A report made two propagation delays
    /// after a grant was issued shows the node running that grant (or a later one): its
    /// limiter then holds every window at or below the largest of those grants and what
    /// the window already held. That is a bound too, and frees a decrease for others long
    /// before the old grant ages out of the history.
    pub(super) fn used_bound(&mut self, now: Instant, keep: Duration, window: Duration, propagation: Duration) -> u32 {
        let mut bound = self.recent_max(now, keep);
        let Some(at) = self.reported_at else { return bound };
        if self.attached_at.is_some_and(|a| at < a + keep) {
            return bound;
        }
        if now.saturating_duration_since(at) < 2 * propagation {
            let blind = now.saturating_duration_since(at) + 2 * propagation;
            let pace = f64::from(self.grant) * blind.as_secs_f64() / window.as_secs_f64();
            bound = bound.min(self.in_window.saturating_add(pace.ceil() as u32).saturating_add(BURST_ALLOWANCE));
        }
        if let Some(since) = at.checked_sub(2 * propagation) {
            // The grant the node surely ran when it reported (the last one issued by
            // `since`), and any issued after it, which it may be running now.
            let then = self.history.iter().rev().find(|(t, _)| *t <= since).map(|(_, g)| *g).or(self.aged);
            if let Some(then) = then {
                let later = self.history.iter().filter(|(t, _)| *t > since).map(|(_, g)| *g).max().unwrap_or(0);
                bound = bound.min(self.in_window.max(then).max(later).max(self.fallback));
            }
        }
        bound
    }

    pub(super) fn recent_max(&mut self, now: Instant, keep: Duration) -> u32 {
        while self.history.front().is_some_and(|(t, _)| now.saturating_duration_since(*t) > keep) {
            self.aged = self.history.pop_front().map(|(_, g)| g);
        }
        self.history.iter().map(|(_, g)| *g).max().unwrap_or(0).max(self.grant)
    }

    pub(super) fn set(&mut self, now: Instant, grant: u32, lease: Duration) {
        self.grant = grant;
        self.history.push_back((now, grant));
        self.lease_until = Some(now + lease);
    }
}
