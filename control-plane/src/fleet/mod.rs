//! Fleet coordination: the nodes share each backend's limit (quota grants with leases,
//! re-granted every second from reported demand), and a 429 seen by one node cools the
//! backend everywhere (the control plane owns the consecutive-429 count).

mod allocate;

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::Duration,
};

use sidecar_proto::v1::{self as pb, control_message::Kind};
use tokio::{sync::mpsc, time::Instant};
use tonic::Status;
use tracing::{info, warn};

pub use allocate::{NodeShare, allocate};

use crate::{
    state::ConfigState,
    store::{CooldownRecord, Settings, Store},
    util::now_ms,
};

/// How fleet coordination is timed.
#[derive(Debug, Clone, Copy)]
pub struct FleetTiming {
    /// The providers' window (60 s; shorter only in tests).
    pub window: Duration,
    /// How long a grant stays valid without renewal.
    pub lease: Duration,
    /// How often grants are recomputed and sent.
    pub interval: Duration,
}

impl Default for FleetTiming {
    fn default() -> Self {
        Self { window: Duration::from_secs(60), lease: Duration::from_secs(5), interval: Duration::from_secs(1) }
    }
}

/// Grace for a grant to reach a node and for a decrease to take effect there.
const PROPAGATION: Duration = Duration::from_secs(1);
/// Requests a node may admit at once beyond its pace (its bucket's burst).
const BURST_ALLOWANCE: u32 = 10;

type Sender = mpsc::Sender<Result<pb::ControlMessage, Status>>;

struct Session {
    id: u64,
    region: String,
    tx: Sender,
}

/// One node's share of one backend.
#[derive(Debug, Default)]
struct Share {
    demand: f64,
    grant: u32,
    /// (when, grant) issued within the last window and the propagation allowance.
    history: VecDeque<(Instant, u32)>,
    /// The node may use `grant` until then without hearing from us.
    lease_until: Option<Instant>,
    bucket_fill: f64,
    in_window: u32,
    /// When the node last reported its demand and window use.
    reported_at: Option<Instant>,
}

impl Share {
    /// What the node may have used of the current window: the largest recent grant, or,
    /// if it reported lately, its reported use plus what it could admit at its current
    /// grant's pace (and a burst) before the next grant reaches it.
    fn used_bound(&mut self, now: Instant, keep: Duration, window: Duration) -> u32 {
        let recent = self.recent_max(now, keep);
        match self.reported_at {
            Some(at) if now.saturating_duration_since(at) < 2 * PROPAGATION => {
                let blind = now.saturating_duration_since(at) + 2 * PROPAGATION;
                let pace = f64::from(self.grant) * blind.as_secs_f64() / window.as_secs_f64();
                let bound = self.in_window.saturating_add(pace.ceil() as u32).saturating_add(BURST_ALLOWANCE);
                recent.min(bound)
            }
            _ => recent,
        }
    }

    fn recent_max(&mut self, now: Instant, keep: Duration) -> u32 {
        while self.history.front().is_some_and(|(t, _)| now.saturating_duration_since(*t) > keep) {
            self.history.pop_front();
        }
        self.history.iter().map(|(_, g)| *g).max().unwrap_or(0).max(self.grant)
    }

    fn set(&mut self, now: Instant, grant: u32, lease: Duration) {
        self.grant = grant;
        self.history.push_back((now, grant));
        self.lease_until = Some(now + lease);
    }
}

/// Fleet-wide state of one backend.
#[derive(Debug, Default)]
struct BackendFleet {
    consecutive: u32,
    cooling_until_ms: i64,
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

    /// The node's starting share of each backend in a fresh snapshot: its live grant if
    /// it has one, otherwise a share of what is free now (recorded as a grant, so it is
    /// counted until it ages out). Also stamps the fleet-wide cooldown.
    pub fn decorate(&self, node_id: &str, snapshot: &mut pb::Snapshot) {
        let now = Instant::now();
        let keep = self.timing.window + PROPAGATION;
        let mut backends = self.backends.lock().expect("fleet lock");
        let wall = now_ms();
        for b in &mut snapshot.backends {
            let fleet = backends.entry(b.id.clone()).or_default();
            if fleet.cooling_until_ms > wall {
                b.cooldown_remaining_ms = (fleet.cooling_until_ms - wall) as u64;
            }
            b.consecutive_429 = fleet.consecutive;
            let window = self.timing.window;
            let others: Vec<u32> = fleet
                .shares
                .iter_mut()
                .filter(|(id, _)| id.as_str() != node_id)
                .map(|(_, s)| s.used_bound(now, keep, window))
                .collect();
            let used: u32 = others.iter().sum();
            let share = fleet.shares.entry(node_id.to_owned()).or_default();
            if share.grant == 0 {
                // An equal share of the nodes known, within what nobody else may use.
                let free = b.rpm_limit.saturating_sub(used);
                let start = (b.rpm_limit / (others.len() as u32 + 1)).max(1).min(free);
                share.set(now, start, self.timing.lease);
            }
            b.initial_rpm_share = share.grant.max(1).min(b.rpm_limit);
        }
    }

    /// A node reported its demand.
    pub fn demand(&self, node_id: &str, demand: &pb::Demand) {
        let mut backends = self.backends.lock().expect("fleet lock");
        for d in &demand.backends {
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
    pub fn rate_limited(
        &self,
        node_id: &str,
        event: &pb::RateLimitEvent,
        settings: &Settings,
    ) -> Option<CooldownRecord> {
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

    fn broadcast_cooldown(&self, backend_id: &str, count: u32, remaining_ms: u64, duration_ms: u64, source: &str) {
        let msg = pb::ControlMessage {
            kind: Some(Kind::Cooldown(pb::CooldownBroadcast {
                backend_id: backend_id.to_owned(),
                consecutive_count: count,
                remaining_ms,
                duration_ms,
                node_id: source.to_owned(),
            })),
        };
        for (node, s) in self.sessions.lock().expect("sessions lock").iter() {
            // A full channel means the node is far behind; it gets the cooldown with
            // its next snapshot.
            if s.tx.try_send(Ok(msg.clone())).is_err() {
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
        let keep = self.timing.window + PROPAGATION;
        let sessions: Vec<(String, String, Sender)> = self
            .sessions
            .lock()
            .expect("sessions lock")
            .iter()
            .map(|(id, s)| (id.clone(), s.region.clone(), s.tx.clone()))
            .collect();
        let mut per_node: HashMap<String, Vec<pb::QuotaGrant>> = HashMap::new();
        {
            let mut backends = self.backends.lock().expect("fleet lock");
            backends.retain(|id, _| config.backends.iter().any(|(b, _)| &b.id == id));
            for (b, _) in &config.backends {
                let fleet = backends.entry(b.id.clone()).or_default();
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
                            recent_max: share.used_bound(now, keep, self.timing.window),
                        }
                    })
                    .collect();
                let grants = allocate(b.rpm_limit, reserved, &inputs);
                let known = (fleet.shares.len() as u32).max(1);
                for (node, grant) in active.iter().zip(grants) {
                    fleet.shares.get_mut(*node).expect("share exists").set(now, grant, self.timing.lease);
                    let tpm =
                        b.tpm_limit.map_or(0, |t| ((u64::from(t) * u64::from(grant)) / u64::from(b.rpm_limit)) as u32);
                    per_node.entry((*node).to_owned()).or_default().push(pb::QuotaGrant {
                        backend_id: b.id.clone(),
                        rpm: grant,
                        tpm,
                        fallback_rpm: (b.rpm_limit / known).max(1),
                        fallback_tpm: b.tpm_limit.map_or(0, |t| (t / known).max(1)),
                    });
                }
            }
        }
        let lease_ms = self.timing.lease.as_millis() as u64;
        for (node, _, tx) in sessions {
            let grants = per_node.remove(&node).unwrap_or_default();
            let msg = pb::ControlMessage { kind: Some(Kind::Grants(pb::QuotaGrants { grants, lease_ms })) };
            let _ = tx.try_send(Ok(msg));
        }
    }

    /// Stores a cooldown record, logging a failure (the cooldown itself still applies).
    pub fn store_cooldown(store: &Store, record: &CooldownRecord) {
        if let Err(error) = store.record_cooldown(record) {
            warn!(%error, "could not store a cooldown event");
        }
    }
}

/// Re-grants every `interval` until shutdown.
pub async fn run_grants(shared: std::sync::Arc<crate::state::Shared>) {
    let mut shutdown = shared.shutdown();
    let mut tick = tokio::time::interval(shared.fleet.timing().interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut config = shared.config();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let state = config.borrow_and_update().clone();
        shared.fleet.regrant(&state);
    }
}
