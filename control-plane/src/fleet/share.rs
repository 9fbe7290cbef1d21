//! One node's share of one backend, and the bound on what the node may have used of the
//! current window, which every allocation round counts against the limit; and the set of
//! every node's share of one limit, which the allocation rounds split.

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use tokio::time::Instant;

use super::allocate::{NodeShare, allocate_with_targets};

/// Requests a node may admit at once beyond its pace (its bucket's burst).
const BURST_ALLOWANCE: u32 = 10;

/// Joins a node id and a number into the key of a predecessor process's share (no node id
/// holds this character).
const PREDECESSOR: char = '\u{0}';

/// One node's share of one backend.
#[derive(Debug, Default)]
pub(super) struct Share {
    pub(super) demand: f64,
    pub(super) grant: u32,
    /// The pace last sent with the grant (requests per window): the node may admit at up
    /// to the larger of the two until the window check stops it.
    pub(super) pace: u32,
    /// The pace sent the round before, which the node may still be running.
    pub(super) previous_pace: u32,
    /// (when, grant, allocation round; 0 for a starting share) issued within the last
    /// window and the propagation allowance.
    pub(super) history: VecDeque<(Instant, u32, u64)>,
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
    /// Until then the node surely runs a grant, not its fallback share: its last report
    /// said how long its lease still held.
    pub(super) lease_known: Option<Instant>,
    /// The allocation round of the grant the node ran when it last reported (0: unknown).
    pub(super) reported_round: u64,
    /// The node's last session ended with a goodbye: it serves no more.
    pub(super) goodbye: bool,
    /// The share the node said it ran in its last report (per window), whoever granted it.
    pub(super) running: u32,
}

impl Share {
    /// What the node may have used of the current window: the largest recent grant, or,
    /// if it reported lately, its reported use plus what it could admit at its current
    /// grant's pace (and a burst) before the next grant reaches it.
    ///
    /// A report names the allocation round of the
    /// grant the node ran when it made it; without one, a report made two propagation
    /// delays after a grant was issued shows the node running that grant (or a later one).
    /// Its limiter then holds every window at or below the largest of that grant, the ones
    /// issued after it, and what the window already held. That is a bound too, and frees a decrease for others long
    /// before the old grant ages out of the history.
    ///
    /// The first bound holds only for a limit the node admits at a pace (requests, whose
    /// bucket refills over the window); an unpaced one (tokens, requests in flight) may be
    /// taken up to the grant at once, so only the grants bound it.
    pub(super) fn used_bound(&mut self, now: Instant, keep: Duration, clock: &Clock) -> u32 {
        let (window, propagation) = (clock.window, clock.propagation);
        let mut bound = self.recent_max(now, keep);
        let Some(at) = self.reported_at else { return bound };
        if clock.paced && now.saturating_duration_since(at) < 2 * propagation {
            let blind = now.saturating_duration_since(at) + 2 * propagation;
            let rate = self.grant.max(self.pace).max(self.previous_pace).max(self.running);
            let pace = f64::from(rate) * blind.as_secs_f64() / window.as_secs_f64();
            bound = bound.min(self.in_window.saturating_add(pace.ceil() as u32).saturating_add(BURST_ALLOWANCE));
        }
        // The grant the node ran when it reported, and any issued after it, which it may be
        // running now: by the round it reported, else the last one issued two propagation
        // delays before the report (which it surely ran by then).
        let by_round = (self.reported_round > 0)
            .then(|| self.history.iter().position(|(_, _, r)| *r == self.reported_round))
            .flatten();
        let split = match by_round {
            Some(i) => Some((Some(self.history[i].1), i + 1)),
            None => at.checked_sub(2 * propagation).map(|since| {
                let i = self.history.iter().position(|(t, _, _)| *t > since).unwrap_or(self.history.len());
                let then = i.checked_sub(1).map(|j| self.history[j].1).or(self.aged);
                (then, i)
            }),
        };
        if let Some((Some(then), first_later)) = split {
            let later = self.history.iter().skip(first_later).map(|(_, g, _)| *g).max().unwrap_or(0);
            // The fallback share counts only once the node may have lost its lease.
            let fallback = if self.lease_known.is_some_and(|u| now < u) { 0 } else { self.fallback };
            bound = bound.min(self.in_window.max(then).max(later).max(fallback));
        }
        bound
    }

    pub(super) fn recent_max(&mut self, now: Instant, keep: Duration) -> u32 {
        while self.history.front().is_some_and(|(t, _, _)| now.saturating_duration_since(*t) > keep) {
            self.aged = self.history.pop_front().map(|(_, g, _)| g);
        }
        self.history.iter().map(|(_, g, _)| *g).max().unwrap_or(0).max(self.grant)
    }

    pub(super) fn set(&mut self, now: Instant, grant: u32, lease: Duration, round: u64) {
        self.grant = grant;
        self.history.push_back((now, grant, round));
        self.lease_until = Some(now + lease);
    }

    /// Once the lease of a node we no longer grant to has run out: its last grant was in
    /// force until then, so it counts for a window from then (entered in the history at
    /// that time), and the node holds no grant.
    fn lease_over(&mut self, now: Instant) {
        let Some(until) = self.lease_until.filter(|u| *u <= now) else { return };
        if self.grant > 0 {
            self.history.push_back((until, self.grant, 0));
            self.grant = 0;
        }
    }

    /// Whether the node, gone without a goodbye, may be serving on its fallback share now
    /// (cut off from us, its lease over), as far as we still hold that share for it.
    fn may_fall_back(&self, now: Instant, hold: Duration) -> bool {
        !self.goodbye && self.lease_until.is_some_and(|u| u <= now && now < u + hold)
    }
}

/// What a node's demand report says besides its demand.
#[derive(Debug, Clone, Copy)]
pub(super) struct Report {
    pub(super) bucket_fill: f64,
    pub(super) in_window: u32,
    /// When it arrived.
    pub(super) now: Instant,
    /// Until when the node surely keeps its lease.
    pub(super) lease_known: Option<Instant>,
    /// The allocation round of the grant it ran (0: unknown).
    pub(super) round: u64,
    /// The share it ran (per window), whoever granted it.
    pub(super) granted: u32,
}

/// How the shares of one limit are timed: the limit's window and the fleet's timing.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    pub(super) now: Instant,
    pub(super) window: Duration,
    pub(super) lease: Duration,
    pub(super) propagation: Duration,
    /// How long a node gone without a goodbye keeps its fallback share reserved.
    pub(super) lost_hold: Duration,
    /// The allocation round under way (grants made now carry it).
    pub(super) round: u64,
    /// The node admits at a pace (a request limit's bucket); false for tokens and for
    /// requests in flight, which a node may take up to its grant at once.
    pub(super) paced: bool,
}

impl Clock {
    /// How long a grant counts after it was issued: a window and the propagation allowance.
    fn keep(&self) -> Duration {
        self.window + self.propagation
    }
}

/// Every node's share of one limit: a backend's, or one model's own limit on a backend.
#[derive(Debug, Default)]
pub(super) struct Shares(pub(super) HashMap<String, Share>);

impl Shares {
    /// The node's starting share in a fresh snapshot: its live grant if it has one,
    /// otherwise an equal share of the nodes known within what nobody else may still be
    /// using now, a cut-off node's fallback share included (recorded as a grant, so it is
    /// counted until it ages out). That may be 0.
    pub(super) fn starting(&mut self, node_id: &str, limit: u32, clock: Clock) -> u32 {
        let others: Vec<u32> = self
            .0
            .iter_mut()
            .filter(|(id, _)| id.as_str() != node_id)
            .map(|(_, s)| {
                let fallback = if s.may_fall_back(clock.now, clock.lost_hold) { s.fallback } else { 0 };
                s.used_bound(clock.now, clock.keep(), &clock).max(fallback)
            })
            .collect();
        let used: u32 = others.iter().sum();
        let share = self.0.entry(node_id.to_owned()).or_default();
        if share.grant == 0 {
            let free = limit.saturating_sub(used);
            let start = (limit / (others.len() as u32 + 1)).max(1).min(free);
            share.set(clock.now, start, clock.lease, 0);
        }
        share.grant.min(limit)
    }

    /// A node's report: its demand (smoothed), bucket fill and use of the window.
    pub(super) fn report(&mut self, node_id: &str, demand: f64, report: Report) {
        let Report { bucket_fill, in_window, now, lease_known, round, granted } = report;
        let share = self.0.entry(node_id.to_owned()).or_default();
        // A share we never granted nor heard of (a new leader, a restarted control plane):
        // the node runs what another allocator gave it, so that counts as issued now, until
        // the node is seen running a grant of ours (which frees it as any decrease is).
        if share.history.is_empty() && share.aged.is_none() && share.grant == 0 && granted > 0 {
            share.history.push_back((now, granted, 0));
        }
        share.lease_known = lease_known;
        share.reported_round = round;
        share.running = granted;
        share.demand = if share.demand == 0.0 { demand } else { 0.2 * share.demand + 0.8 * demand };
        share.bucket_fill = bucket_fill;
        share.in_window = in_window;
        share.reported_at = Some(now);
    }

    /// A node's session (re)started. A node that was cut off past its lease may have
    /// served on its fallback share until now: that counts for a window from now.
    ///
    /// The same process reconnecting remembers its window, and its reports hold. A
    /// `new_process` remembers nothing its predecessor admitted, so the predecessor's
    /// share stays on as a departed node of its own (its grants, and what it used, count
    /// until they age out, as any departed node's do) and the new process starts afresh
    /// beside it. One process serves a node identity: the new one replaces the old,
    /// which therefore holds no fallback share.
    pub(super) fn attached(&mut self, node_id: &str, new_process: bool, now: Instant, lost_hold: Duration) {
        let Some(share) = self.0.get_mut(node_id) else { return };
        share.lease_over(now);
        if share.may_fall_back(now, lost_hold) {
            share.history.push_back((now, share.fallback, 0));
        }
        share.goodbye = false;
        if new_process {
            let mut predecessor = self.0.remove(node_id).expect("the share is there");
            predecessor.goodbye = true;
            let key = (0..).map(|i| format!("{node_id}{PREDECESSOR}{i}")).find(|k| !self.0.contains_key(k));
            self.0.insert(key.expect("a free key"), predecessor);
        }
    }

    /// A node's session ended (`goodbye`: it said it serves no more).
    pub(super) fn detached(&mut self, node_id: &str, goodbye: bool) {
        if let Some(share) = self.0.get_mut(node_id) {
            share.goodbye = goodbye;
        }
    }

    /// One allocation round of `limit` per window among the `active` nodes: returns each
    /// one's (grant, fallback share, pace), in order. A departed node's grant counts while
    /// its lease lasts and for a window after that; one gone without a goodbye also keeps
    /// its fallback share for `lost_hold` after its lease. The active nodes' fallback
    /// shares split what those do not hold, so that all fallback shares add up to the limit.
    pub(super) fn split(&mut self, active: &[&str], limit: u32, clock: Clock) -> Vec<(u32, u32, u32)> {
        let (now, keep) = (clock.now, clock.keep());
        let mut reserved = 0u32;
        let mut held_fallback = 0u32;
        self.0.retain(|node, share| {
            if active.contains(&node.as_str()) {
                return true;
            }
            share.lease_over(now);
            let recent = share.recent_max(now, keep);
            let fallback = if share.may_fall_back(now, clock.lost_hold) { share.fallback } else { 0 };
            held_fallback = held_fallback.saturating_add(fallback);
            let held = recent.max(fallback);
            reserved = reserved.saturating_add(held);
            held > 0 || share.lease_until.is_some_and(|u| u > now)
        });
        let inputs: Vec<NodeShare> = active
            .iter()
            .map(|node| {
                let share = self.0.entry((*node).to_owned()).or_default();
                NodeShare {
                    demand: share.demand,
                    current: share.grant,
                    recent_max: share.used_bound(now, keep, &clock),
                }
            })
            .collect();
        let (grants, targets) = allocate_with_targets(limit, reserved, &inputs);
        let fallback = (limit.saturating_sub(held_fallback) / (active.len() as u32).max(1)).max(1);
        active
            .iter()
            .zip(grants.into_iter().zip(targets))
            .map(|(node, (grant, target))| {
                let share = self.0.get_mut(*node).expect("share exists");
                share.set(now, grant, clock.lease, clock.round);
                share.fallback = fallback;
                share.previous_pace = std::mem::replace(&mut share.pace, target);
                (grant, fallback, target)
            })
            .collect()
    }

    /// Mean bucket fill over the nodes, and their summed use of the window.
    pub(super) fn live(&self) -> (f64, u32) {
        let n = self.0.len().max(1) as f64;
        (self.0.values().map(|s| s.bucket_fill).sum::<f64>() / n, self.0.values().map(|s| s.in_window).sum())
    }
}
