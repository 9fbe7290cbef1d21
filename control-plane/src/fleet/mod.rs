//! Fleet coordination: the nodes share each backend's limit (quota grants with leases,
//! re-granted every second from reported demand), and a 429 seen by one node cools the
//! backend everywhere (the control plane owns the consecutive-429 count).

mod allocate;
mod messages;
mod share;

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::time::Instant;
use tracing::{info, warn};

pub use allocate::{NodeShare, allocate};
pub use messages::{BackendDemand, CooldownNotice, FleetMessage, Grant, RateLimited, Sender};
use share::Share;

use crate::{
    snapshot::{ConfigState, NodeSnapshot},
    store::{CooldownRecord, Settings, Store, per_window},
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
}

impl Default for FleetTiming {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            lease: Duration::from_secs(5),
            interval: Duration::from_secs(1),
            propagation: Duration::from_secs(1),
        }
    }
}

struct Session {
    id: u64,
    region: String,
    tx: Sender,
}

/// Fleet-wide state of one backend.
#[derive(Debug, Default)]
struct BackendFleet {
    consecutive: u32,
    cooling_until_ms: i64,
    /// Paused fleet-wide until then: the provider reported the budget spent.
    exhausted_until_ms: i64,
    shares: HashMap<String, Share>,
}

/// Live figures of a backend across the fleet, for the dashboard.
#[derive(Debug, Clone, Default)]
pub struct BackendLive {
    /// Fleet-wide consecutive 429s.
    pub consecutive: u32,
    /// Cooling until (unix ms), 0 = not cooling.
    pub cooling_until_ms: i64,
    /// Mean bucket fill over the nodes using it.
    pub bucket_fill: f64,
    /// Admitted in the current window, summed over nodes.
    pub in_window: u32,
}

/// The fleet coordinator.
pub struct Fleet {
    timing: FleetTiming,
    sessions: Mutex<HashMap<String, Session>>,
    backends: Mutex<HashMap<String, BackendFleet>>,
}

impl Fleet {
    /// A coordinator with `timing`.
    pub fn new(timing: FleetTiming) -> Self {
        Self { timing, sessions: Mutex::default(), backends: Mutex::default() }
    }

    /// The timing in force.
    pub fn timing(&self) -> FleetTiming {
        self.timing
    }

    /// A node's Sync session started; broadcasts reach it through `tx`.
    pub fn attach(&self, node_id: &str, session: u64, region: &str, tx: Sender) {
        let now = Instant::now();
        for fleet in self.backends.lock().expect("fleet lock").values_mut() {
            if let Some(share) = fleet.shares.get_mut(node_id) {
                share.attached_at = Some(now);
                share.reported_at = None;
            }
        }
        self.sessions
            .lock()
            .expect("sessions lock")
            .insert(node_id.to_owned(), Session { id: session, region: region.to_owned(), tx });
    }

    /// A node's session ended. Its grants stay reserved until their leases (and the
    /// window they may have been used in) run out.
    pub fn detach(&self, node_id: &str, session: u64) {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        if sessions.get(node_id).is_some_and(|s| s.id == session) {
            sessions.remove(node_id);
        }
    }

    /// A backend's window: the provider's `window_seconds` of a (possibly compressed)
    /// minute.
    fn window_of(&self, window_seconds: u32) -> Duration {
        self.timing.window * window_seconds.clamp(1, 60) / 60
    }

    /// The node's starting share of each backend in a fresh snapshot, in requests per
    /// backend window: its live grant if it has one, otherwise a share of what is free
    /// now (recorded as a grant, so it is counted until it ages out). That may be 0 when
    /// other nodes may still be using the whole limit in this window: the node then
    /// waits for its first grant rather than overshoot. Also stamps the fleet-wide
    /// cooldown.
    pub fn decorate(&self, node_id: &str, snapshot: &mut NodeSnapshot) {
        let now = Instant::now();
        let mut backends = self.backends.lock().expect("fleet lock");
        let wall = now_ms();
        let state = snapshot.state.clone();
        for nb in &mut snapshot.backends {
            let b = &state.backends[nb.index].0;
            let fleet = backends.entry(b.id.clone()).or_default();
            if fleet.cooling_until_ms > wall {
                nb.cooldown_remaining_ms = (fleet.cooling_until_ms - wall) as u64;
            }
            nb.consecutive_429 = fleet.consecutive;
            let window = self.window_of(b.window_seconds);
            let keep = window + self.timing.propagation;
            let limit = per_window(state.rpm_limit(b), b.window_seconds);
            let others: Vec<u32> = fleet
                .shares
                .iter_mut()
                .filter(|(id, _)| id.as_str() != node_id)
                .map(|(_, s)| s.used_bound(now, keep, window, self.timing.propagation))
                .collect();
            let used: u32 = others.iter().sum();
            let share = fleet.shares.entry(node_id.to_owned()).or_default();
            if share.grant == 0 {
                // An equal share of the nodes known, within what nobody else may use.
                let free = limit.saturating_sub(used);
                let start = (limit / (others.len() as u32 + 1)).max(1).min(free);
                share.set(now, start, self.timing.lease);
            }
            nb.initial_share = Some(share.grant.min(limit));
        }
    }

    /// A node reported its demand.
    pub fn demand(&self, node_id: &str, demand: &[BackendDemand]) {
        let mut backends = self.backends.lock().expect("fleet lock");
        for d in demand {
            let share = backends.entry(d.backend_id.clone()).or_default().shares.entry(node_id.to_owned()).or_default();
            share.demand = if share.demand == 0.0 { d.demand } else { 0.5 * share.demand + 0.5 * d.demand };
            share.bucket_fill = d.bucket_fill;
            share.in_window = d.in_window;
            share.reported_at = Some(Instant::now());
        }
    }

    /// A node saw a 429. Unless the backend already cools fleet-wide, the count
    /// escalates and the cooldown goes to every node using the backend. Returns the
    /// cooldown record to store, if one started.
    pub fn rate_limited(&self, node_id: &str, event: &RateLimited, settings: &Settings) -> Option<CooldownRecord> {
        let now = now_ms();
        let record = {
            let mut backends = self.backends.lock().expect("fleet lock");
            let fleet = backends.entry(event.backend_id.clone()).or_default();
            if fleet.cooling_until_ms > now {
                // During a cooldown only a node that already knew the fleet-wide count
                // and still got a 429 (an emergency probe) escalates it; other 429s come
                // from requests in flight when the cooldown began.
                if event.consecutive_count <= fleet.consecutive {
                    return None;
                }
                fleet.consecutive = event.consecutive_count;
            } else {
                fleet.consecutive += 1;
            }
            let base = u64::from(settings.cooldown_base_seconds) * 1000;
            let max = u64::from(settings.cooldown_max_seconds) * 1000;
            let backoff = base.saturating_mul(1u64 << fleet.consecutive.saturating_sub(1).min(32)).min(max);
            let duration = backoff.max(event.retry_after_ms);
            fleet.cooling_until_ms = now + duration as i64;
            CooldownRecord {
                backend_id: event.backend_id.clone(),
                node_id: node_id.to_owned(),
                consecutive_count: fleet.consecutive,
                duration_ms: duration,
                retry_after_ms: event.retry_after_ms,
                start_ms: now,
                end_ms: now + duration as i64,
            }
        };
        info!(backend = %record.backend_id, node = node_id, count = record.consecutive_count, duration_ms = record.duration_ms, "fleet-wide cooldown");
        self.broadcast_cooldown(
            &record.backend_id,
            record.consecutive_count,
            record.duration_ms,
            record.duration_ms,
            node_id,
        );
        Some(record)
    }

    /// A node succeeded after 429s: the fleet-wide count starts over and any cooldown ends.
    pub fn recovered(&self, node_id: &str, backend_id: &str) {
        let was = {
            let mut backends = self.backends.lock().expect("fleet lock");
            let fleet = backends.entry(backend_id.to_owned()).or_default();
            let was = fleet.consecutive > 0 || fleet.cooling_until_ms > now_ms();
            fleet.consecutive = 0;
            fleet.cooling_until_ms = 0;
            was
        };
        if was {
            info!(backend = backend_id, node = node_id, "backend recovered fleet-wide");
            self.broadcast_cooldown(backend_id, 0, 0, 0, node_id);
        }
    }

    /// A node heard the provider say the backend's budget is spent for `reset`: every
    /// node pauses it until then. No escalation: the count stays as it is.
    pub fn exhausted(&self, node_id: &str, backend_id: &str, reset: Duration) {
        let until = now_ms() + reset.as_millis() as i64;
        let count = {
            let mut backends = self.backends.lock().expect("fleet lock");
            let fleet = backends.entry(backend_id.to_owned()).or_default();
            if fleet.exhausted_until_ms >= until {
                return;
            }
            fleet.exhausted_until_ms = until;
            fleet.consecutive
        };
        info!(
            backend = backend_id,
            node = node_id,
            reset_ms = reset.as_millis() as u64,
            "provider budget spent: paused fleet-wide"
        );
        let ms = reset.as_millis() as u64;
        self.broadcast(CooldownNotice {
            backend_id: backend_id.to_owned(),
            consecutive_count: count,
            remaining_ms: ms,
            duration_ms: ms,
            node_id: node_id.to_owned(),
            exhausted: true,
        });
    }

    fn broadcast_cooldown(&self, backend_id: &str, count: u32, remaining_ms: u64, duration_ms: u64, source: &str) {
        self.broadcast(CooldownNotice {
            backend_id: backend_id.to_owned(),
            consecutive_count: count,
            remaining_ms,
            duration_ms,
            node_id: source.to_owned(),
            exhausted: false,
        });
    }

    fn broadcast(&self, notice: CooldownNotice) {
        let msg = FleetMessage::Cooldown(notice);
        for (node, s) in self.sessions.lock().expect("sessions lock").iter() {
            // A full channel means the node is far behind; it gets the cooldown with
            // its next snapshot.
            if s.tx.try_send(msg.clone()).is_err() {
                warn!(node = %node, "could not queue a cooldown broadcast");
            }
        }
    }

    /// Live figures per backend id.
    pub fn live(&self) -> HashMap<String, BackendLive> {
        let backends = self.backends.lock().expect("fleet lock");
        backends
            .iter()
            .map(|(id, f)| {
                let n = f.shares.len().max(1) as f64;
                (
                    id.clone(),
                    BackendLive {
                        consecutive: f.consecutive,
                        cooling_until_ms: f.cooling_until_ms,
                        bucket_fill: f.shares.values().map(|s| s.bucket_fill).sum::<f64>() / n,
                        in_window: f.shares.values().map(|s| s.in_window).sum(),
                    },
                )
            })
            .collect()
    }

    /// One allocation round: recompute every backend's split and send each connected
    /// node its grants.
    pub fn regrant(&self, config: &ConfigState) {
        let now = Instant::now();
        let sessions: Vec<(String, String, Sender)> = self
            .sessions
            .lock()
            .expect("sessions lock")
            .iter()
            .map(|(id, s)| (id.clone(), s.region.clone(), s.tx.clone()))
            .collect();
        let mut per_node: HashMap<String, Vec<Grant>> = HashMap::new();
        {
            let mut backends = self.backends.lock().expect("fleet lock");
            backends.retain(|id, _| config.backends.iter().any(|(b, _)| &b.id == id));
            for (b, _) in &config.backends {
                let fleet = backends.entry(b.id.clone()).or_default();
                let window = self.window_of(b.window_seconds);
                let keep = window + self.timing.propagation;
                let limit = per_window(config.rpm_limit(b), b.window_seconds);
                let active: Vec<&str> = sessions
                    .iter()
                    .filter(|(_, region, _)| b.allowed_in(region))
                    .map(|(id, _, _)| id.as_str())
                    .collect();
                // Departed nodes: their grant counts while the lease lasts, and whatever
                // they held counts for a window after that.
                let mut reserved = 0u32;
                fleet.shares.retain(|node, share| {
                    if active.contains(&node.as_str()) {
                        return true;
                    }
                    let leased = share.lease_until.is_some_and(|l| l > now);
                    if leased {
                        reserved += share.recent_max(now, keep);
                        return true;
                    }
                    share.grant = 0;
                    let recent = share.recent_max(now, keep);
                    reserved += recent;
                    recent > 0
                });
                let inputs: Vec<NodeShare> = active
                    .iter()
                    .map(|node| {
                        let share = fleet.shares.entry((*node).to_owned()).or_default();
                        NodeShare {
                            demand: share.demand,
                            current: share.grant,
                            recent_max: share.used_bound(now, keep, window, self.timing.propagation),
                        }
                    })
                    .collect();
                let grants = allocate(limit, reserved, &inputs);
                let known = (fleet.shares.len() as u32).max(1);
                let tpm_limit = b.window_tpm();
                for (node, grant) in active.iter().zip(grants) {
                    let share = fleet.shares.get_mut(*node).expect("share exists");
                    share.set(now, grant, self.timing.lease);
                    share.fallback = (limit / known).max(1);
                    let tpm =
                        tpm_limit.map_or(0, |t| ((u64::from(t) * u64::from(grant)) / u64::from(limit.max(1))) as u32);
                    per_node.entry((*node).to_owned()).or_default().push(Grant {
                        backend_id: b.id.clone(),
                        rpm: grant,
                        tpm,
                        fallback_rpm: (limit / known).max(1),
                        fallback_tpm: tpm_limit.map_or(0, |t| (t / known).max(1)),
                    });
                }
            }
        }
        let lease_ms = self.timing.lease.as_millis() as u64;
        for (node, _, tx) in sessions {
            let grants = per_node.remove(&node).unwrap_or_default();
            let _ = tx.try_send(FleetMessage::Grants { grants, lease_ms });
        }
    }

    /// Stores a cooldown record, logging a failure (the cooldown itself still applies).
    pub fn store_cooldown(store: &Store, record: &CooldownRecord) {
        if let Err(error) = store.record_cooldown(record) {
            warn!(%error, "could not store a cooldown event");
        }
    }
}

#[cfg(test)]
mod tests;
