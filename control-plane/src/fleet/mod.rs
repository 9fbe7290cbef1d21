//! Fleet coordination: the nodes share each backend's limit (quota grants with leases,
//! re-granted every second from reported demand), and a 429 seen by one node cools the
//! backend everywhere (the control plane owns the consecutive-429 count).

mod allocate;
mod cooldown;
mod keys;
mod limits;
mod messages;
mod relay;
mod share;

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::time::Instant;

pub use allocate::{NodeShare, allocate};
use cooldown::Cool;
use keys::KeyLimit;
use limits::{ModelLimits, model_limits};
pub use messages::{
    BackendDemand, BackendLive, CooldownNotice, FleetMessage, Grant, KeyDemand, KeyGrant, LimitUse, ModelDemand,
    ModelGrant, ModelLive, RateLimited, Sender,
};
pub use relay::LocalNode;
use share::{Clock, Report, Shares};

use crate::{
    snapshot::{ConfigState, ModelCooldown, NodeSnapshot},
    store::per_window,
    util::now_ms,
};

/// How fleet coordination is timed.
#[derive(Debug, Clone, Copy)]
pub struct FleetTiming {
    /// The providers' minute (60 s; shorter only in tests). A backend's window is its
    /// `window_seconds` of it.
    pub window: Duration,
    /// How long a grant stays valid without renewal.
    pub lease: Duration,
    /// How often grants are recomputed and sent.
    pub interval: Duration,
    /// Upper bound on the time for a grant to reach a node and take effect there, and
    /// for a report to come back (1 s; shorter only in tests that compress time).
    pub propagation: Duration,
    /// How long after its lease a node that went away without a goodbye keeps its
    /// fallback share reserved: cut off from us, it may be serving on that share.
    pub lost_hold: Duration,
}

impl Default for FleetTiming {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            lease: Duration::from_secs(5),
            interval: Duration::from_secs(1),
            propagation: Duration::from_secs(1),
            lost_hold: Duration::from_secs(600),
        }
    }
}

struct Session {
    id: u64,
    region: String,
    tx: Sender,
    /// Connected to another control-plane instance, which relays to it: broadcasts reach
    /// it through that instance, not one by one.
    remote: bool,
}

/// Fleet-wide state of one backend.
#[derive(Debug, Default)]
struct BackendFleet {
    cool: Cool,
    shares: Shares,
    /// The shares of each model's own limits on the backend, by canonical name.
    models: HashMap<String, Shares>,
    /// Cooldowns of models with their own limits (a 429 that named the model).
    model_cool: HashMap<String, Cool>,
}

/// Tokens per window that go with a grant and a fallback share of `limit` requests: the
/// same fractions of `tokens` (0 = no token limit; a fallback share of at least 1).
fn token_shares(tokens: Option<u32>, grant: u32, fallback: u32, limit: u32) -> (u32, u32) {
    let share = |n: u32, t: u32| ((u64::from(t) * u64::from(n)) / u64::from(limit.max(1))) as u32;
    tokens.map_or((0, 0), |t| (share(grant, t), share(fallback, t).max(1)))
}

/// The fleet coordinator.
pub struct Fleet {
    timing: FleetTiming,
    sessions: Mutex<HashMap<String, Session>>,
    /// The process (boot id) of each node's latest session: a reconnect from the same
    /// process keeps what the node reported.
    boots: Mutex<HashMap<String, String>>,
    backends: Mutex<HashMap<String, BackendFleet>>,
    /// The node shares of each client key's limits, by key id and limit (locked after
    /// `backends` when both are).
    keys: Mutex<HashMap<(String, KeyLimit), Shares>>,
    /// Allocation rounds so far.
    round: std::sync::atomic::AtomicU64,
    /// Where broadcasts also go, once, for the nodes of other control-plane instances.
    peers: Mutex<Option<Sender>>,
}

impl Fleet {
    /// A coordinator with `timing`.
    pub fn new(timing: FleetTiming) -> Self {
        // Rounds start from the clock (µs), so a restarted control plane never reuses a
        // round a node may still report from before the restart.
        let round = (now_ms().max(1) as u64).saturating_mul(1000);
        Self {
            timing,
            sessions: Mutex::default(),
            boots: Mutex::default(),
            backends: Mutex::default(),
            keys: Mutex::default(),
            round: round.into(),
            peers: Mutex::default(),
        }
    }

    /// The timing in force.
    pub fn timing(&self) -> FleetTiming {
        self.timing
    }

    /// A node's Sync session started (the process `boot`; broadcasts reach it through
    /// `tx`).
    pub fn attach(&self, node_id: &str, boot: &str, session: u64, region: &str, tx: Sender) {
        self.attach_session(node_id, boot, Session { id: session, region: region.to_owned(), tx, remote: false });
    }

    fn attach_session(&self, node_id: &str, boot: &str, session: Session) {
        let now = Instant::now();
        let previous = self.boots.lock().expect("boots lock").insert(node_id.to_owned(), boot.to_owned());
        let new_process = boot.is_empty() || previous.as_deref() != Some(boot);
        self.for_each_shares(|shares| shares.attached(node_id, new_process, now, self.timing.lost_hold));
        self.sessions.lock().expect("sessions lock").insert(node_id.to_owned(), session);
    }

    /// A node's session ended; `goodbye` when the node said it stops serving. Its grants
    /// stay reserved until their leases (and the window they may have been used in) run
    /// out; without a goodbye, its fallback share stays reserved for `lost_hold` after
    /// that, since a node cut off from us serves on it.
    pub fn detach(&self, node_id: &str, session: u64, goodbye: bool) {
        {
            let mut sessions = self.sessions.lock().expect("sessions lock");
            if sessions.get(node_id).is_none_or(|s| s.id != session) {
                return;
            }
            sessions.remove(node_id);
        }
        self.for_each_shares(|shares| shares.detached(node_id, goodbye));
    }

    /// Every limit's node shares: backends', their models', client keys'.
    fn for_each_shares(&self, mut f: impl FnMut(&mut Shares)) {
        for fleet in self.backends.lock().expect("fleet lock").values_mut() {
            f(&mut fleet.shares);
            fleet.models.values_mut().for_each(&mut f);
        }
        self.keys.lock().expect("keys lock").values_mut().for_each(f);
    }

    /// A report's figures as the allocator takes them, arriving `now`. The node cannot fall
    /// back before its lease ends: the report left it at most a propagation delay ago.
    fn report(
        &self,
        now: Instant,
        (bucket_fill, in_window, granted): (f64, u32, u32),
        lease_remaining: Duration,
        round: u64,
    ) -> Report {
        let lease_known = (now + lease_remaining).checked_sub(self.timing.propagation);
        let lease_known = lease_known.filter(|_| !lease_remaining.is_zero());
        Report { bucket_fill, in_window, now, lease_known, round, granted }
    }

    /// A backend's window: the provider's `window_seconds` of a (possibly compressed)
    /// minute.
    fn window_of(&self, window_seconds: u32) -> Duration {
        self.timing.window * window_seconds.clamp(1, 60) / 60
    }

    /// The clock for a backend's limits at `now`.
    fn clock(&self, window_seconds: u32, now: Instant) -> Clock {
        Clock {
            now,
            window: self.window_of(window_seconds),
            lease: self.timing.lease,
            propagation: self.timing.propagation,
            lost_hold: self.timing.lost_hold,
            round: self.round.load(std::sync::atomic::Ordering::Relaxed),
            paced: true,
        }
    }

    /// The node's starting share of each backend in a fresh snapshot, in requests per
    /// backend window: its live grant if it has one, otherwise a share of what is free
    /// now (recorded as a grant, so it is counted until it ages out). That may be 0 when
    /// other nodes may still be using the whole limit in this window: the node then
    /// waits for its first grant rather than overshoot. Also stamps the fleet-wide
    /// cooldown. The same for each model with its own limits.
    pub fn decorate(&self, node_id: &str, snapshot: &mut NodeSnapshot) {
        self.decorate_as(node_id, snapshot, true);
    }

    /// As [`Fleet::decorate`]; `allocating` false (an instance that does not run the
    /// allocator now) gives every starting share as 0: the node waits for its first grant.
    fn decorate_as(&self, node_id: &str, snapshot: &mut NodeSnapshot, allocating: bool) {
        let now = Instant::now();
        let mut backends = self.backends.lock().expect("fleet lock");
        let wall = now_ms();
        let state = snapshot.state.clone();
        for nb in &mut snapshot.backends {
            let b = &state.backends[nb.index].0;
            let fleet = backends.entry(b.id.clone()).or_default();
            if fleet.cool.cooling_until_ms > wall {
                nb.cooldown_remaining_ms = (fleet.cool.cooling_until_ms - wall) as u64;
            }
            nb.consecutive_429 = fleet.cool.consecutive;
            if fleet.cool.exhausted_until_ms > wall {
                nb.exhausted_remaining_ms = (fleet.cool.exhausted_until_ms - wall) as u64;
            }
            let clock = self.clock(b.window_seconds, now);
            let limit = per_window(state.rpm_limit(b), b.window_seconds);
            nb.initial_share = Some(if allocating { fleet.shares.starting(node_id, limit, clock) } else { 0 });
            let models = model_limits(&state, b);
            fleet.models.retain(|name, _| models.iter().any(|m| &m.name == name));
            fleet.model_cool.retain(|name, _| models.iter().any(|m| &m.name == name));
            nb.model_cooldowns = fleet
                .model_cool
                .iter()
                .map(|(name, c)| ModelCooldown {
                    model: name.clone(),
                    cooldown_remaining_ms: (c.cooling_until_ms - wall).max(0) as u64,
                    consecutive_429: c.consecutive,
                    exhausted_remaining_ms: (c.exhausted_until_ms - wall).max(0) as u64,
                })
                .filter(|c| c.cooldown_remaining_ms > 0 || c.consecutive_429 > 0 || c.exhausted_remaining_ms > 0)
                .collect();
            nb.model_shares = models
                .into_iter()
                .map(|m| {
                    let clock = self.clock(m.window_seconds, now);
                    let shares = fleet.models.entry(m.name.clone()).or_default();
                    let start = if allocating { shares.starting(node_id, m.requests, clock) } else { 0 };
                    (m.name, start)
                })
                .collect();
        }
        drop(backends);
        snapshot.key_shares = self.key_starting(node_id, &state, now, allocating);
    }

    /// A node reported its demand.
    pub fn demand(&self, node_id: &str, demand: &[BackendDemand]) {
        let mut backends = self.backends.lock().expect("fleet lock");
        let now = Instant::now();
        for d in demand {
            let fleet = backends.entry(d.backend_id.clone()).or_default();
            let report = self.report(now, (d.bucket_fill, d.in_window, d.granted), d.lease_remaining, d.grant_round);
            fleet.shares.report(node_id, d.demand, report);
            for m in &d.models {
                // Only models the config limits: a node's report cannot grow the map.
                if let Some(shares) = fleet.models.get_mut(&m.model) {
                    let report =
                        Report { bucket_fill: m.bucket_fill, in_window: m.in_window, granted: m.granted, ..report };
                    shares.report(node_id, m.demand, report);
                }
            }
        }
    }

    /// Live figures per backend id.
    pub fn live(&self) -> HashMap<String, BackendLive> {
        let backends = self.backends.lock().expect("fleet lock");
        backends
            .iter()
            .map(|(id, f)| {
                let (bucket_fill, in_window) = f.shares.live();
                let models = f
                    .models
                    .iter()
                    .map(|(name, shares)| {
                        let (bucket_fill, in_window) = shares.live();
                        (name.clone(), ModelLive { bucket_fill, in_window })
                    })
                    .collect();
                (
                    id.clone(),
                    BackendLive {
                        consecutive: f.cool.consecutive,
                        cooling_until_ms: f.cool.cooling_until_ms,
                        bucket_fill,
                        in_window,
                        models,
                    },
                )
            })
            .collect()
    }

    /// One allocation round: recompute every backend's split and send each connected
    /// node its grants.
    pub fn regrant(&self, config: &ConfigState) {
        let now = Instant::now();
        let round = self.round.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let sessions: Vec<(String, String, Sender)> = self
            .sessions
            .lock()
            .expect("sessions lock")
            .iter()
            .map(|(id, s)| (id.clone(), s.region.clone(), s.tx.clone()))
            .collect();
        // In node order, so a round's result does not depend on a hash map's order.
        let mut sessions = sessions;
        sessions.sort_by(|a, b| a.0.cmp(&b.0));
        let mut per_node: HashMap<String, Vec<Grant>> = HashMap::new();
        {
            let mut backends = self.backends.lock().expect("fleet lock");
            backends.retain(|id, _| config.backends.iter().any(|(b, _)| &b.id == id));
            for (b, _) in &config.backends {
                let fleet = backends.entry(b.id.clone()).or_default();
                let clock = self.clock(b.window_seconds, now);
                let limit = per_window(config.rpm_limit(b), b.window_seconds);
                let active: Vec<&str> = sessions
                    .iter()
                    .filter(|(_, region, _)| b.allowed_in(region))
                    .map(|(id, _, _)| id.as_str())
                    .collect();
                let tokens = b.window_tpm();
                let mut grants: Vec<Grant> = active
                    .iter()
                    .zip(fleet.shares.split(&active, limit, clock))
                    .map(|(_, (grant, fallback, pace))| {
                        let (tpm, fallback_tpm) = token_shares(tokens, grant, fallback, limit);
                        Grant {
                            backend_id: b.id.clone(),
                            rpm: grant,
                            pace,
                            tpm,
                            fallback_rpm: fallback,
                            fallback_tpm,
                            models: Vec::new(),
                        }
                    })
                    .collect();
                // Each model's own limits split the same way; the grants travel with the
                // backend's.
                let models = model_limits(config, b);
                fleet.models.retain(|name, _| models.iter().any(|m| &m.name == name));
                for ModelLimits { name, requests: limit, tokens, window_seconds } in models {
                    let clock = self.clock(window_seconds, now);
                    let split = fleet.models.entry(name.clone()).or_default().split(&active, limit, clock);
                    for (g, (grant, fallback, _)) in grants.iter_mut().zip(split) {
                        let (tpm, fallback_tpm) = token_shares(tokens, grant, fallback, limit);
                        g.models.push(ModelGrant {
                            model: name.clone(),
                            rpm: grant,
                            tpm,
                            fallback_rpm: fallback,
                            fallback_tpm,
                        });
                    }
                }
                for (node, grant) in active.iter().zip(grants) {
                    per_node.entry((*node).to_owned()).or_default().push(grant);
                }
            }
            // A node's process is remembered while it is connected or holds a share.
            let held = |node: &str| backends.values().any(|f| f.shares.0.contains_key(node));
            self.boots
                .lock()
                .expect("boots lock")
                .retain(|node, _| sessions.iter().any(|s| &s.0 == node) || held(node));
        }
        let nodes: Vec<&str> = sessions.iter().map(|(id, _, _)| id.as_str()).collect();
        let mut key_grants = self.key_grants(config, &nodes, now);
        let lease_ms = self.timing.lease.as_millis() as u64;
        for (node, _, tx) in &sessions {
            let grants = per_node.remove(node).unwrap_or_default();
            let keys = key_grants.remove(node).unwrap_or_default();
            let _ = tx.try_send(FleetMessage::Grants { grants, keys, lease_ms, round });
        }
    }
}

#[cfg(test)]
mod tests;
