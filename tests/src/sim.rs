//! A deterministic fleet simulator: the control plane's real allocator ([`Fleet`]: demand,
//! decorate, regrant) and each proxy's real limiter and grant handling (a routing
//! [`Bundle`] built from the decorated snapshot, [`config_sync::apply_grants`],
//! [`config_sync::demand`], [`routing::take`]), connected through the real wire
//! conversions, under tokio's paused clock: no sockets, no sleeps, the same result every
//! run. Messages between the planes arrive after a configurable delay.
//!
//! The provider is a strict sliding window: the result reports the most requests admitted
//! in any window (which must never exceed the limit) and how much of the limit the fleet
//! used.
//!
//! The limit is a backend's ([`LimitKind::Backend`]: requests wait in the proxy's queue
//! for a token) or a client key's ([`LimitKind::Key`]: the backend has room to spare and
//! the key's fleet-wide requests per minute is the limit; a request over its proxy's share
//! is refused at once, as the proxy answers 429).

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use sidecar_control_plane::{
    api::convert::node::{demand_from_pb, fleet_message, key_demand_from_pb, snapshot_to_pb},
    crypto::Sealed,
    fleet::{Fleet, FleetMessage, FleetTiming},
    snapshot::ConfigState,
    store::{BackendRecord, ClientKeyRecord, ModelMapping, PoolRecord, Settings, Source},
};
use sidecar_data_plane::{
    config_sync,
    routing::{self, Bundle},
    snapshot::{Api, Snapshot},
};
use sidecar_proto::v1::{self as pb, control_message::Kind};
use tokio::{sync::mpsc, time::Instant};

/// Which limit the fleet shares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LimitKind {
    /// A backend's limit per its window.
    #[default]
    Backend,
    /// A client key's requests per minute (the window must be the minute).
    Key,
}

/// The client key of [`LimitKind::Key`] runs.
const KEY_ID: &str = "key_sim";

/// How much each node wants, in requests per second, at a time into the run.
pub type Pattern = Arc<dyn Fn(usize, Duration) -> f64 + Send + Sync>;

/// Something that happens to one node during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The node starts (it is not running before).
    Join(usize),
    /// The node shuts down for good, saying goodbye.
    Leave(usize),
    /// The node stops for good without a word (killed, or its host lost).
    Crash(usize),
    /// The node loses the control plane (it keeps serving on its grants, then its
    /// fallback share) ...
    Disconnect(usize),
    /// ... and gets it back.
    Reconnect(usize),
    /// The node's process restarts (as in a rolling deploy): it says goodbye, and the new
    /// process starts from a fresh snapshot, remembering nothing of what it admitted.
    Restart(usize),
}

/// One simulated run.
#[derive(Clone)]
pub struct Scenario {
    /// For the results table.
    pub name: String,
    /// Nodes (all running from the start unless an [`Event::Join`] names them).
    pub nodes: usize,
    /// The provider's limit per window.
    pub limit: u32,
    /// The provider's window (a minute unless the backend declares a finer one).
    pub window: Duration,
    /// How long the run lasts.
    pub duration: Duration,
    /// Demand per node.
    pub demand: Pattern,
    /// How long a request waits for a token before it is turned away.
    pub queue_timeout: Duration,
    /// One-way delay of every message between the planes.
    pub delay: Duration,
    /// Grant interval, lease and propagation allowance of the control plane.
    pub timing: FleetTiming,
    /// How often nodes report their demand.
    pub report_every: Duration,
    /// (when, what).
    pub events: Vec<(Duration, Event)>,
    /// The proxies' bucket burst.
    pub burst: u32,
    /// Whose limit it is.
    pub kind: LimitKind,
}

impl Scenario {
    /// `nodes` nodes sharing `limit` requests per minute under `demand`, with the
    /// production timing (1 s grants, 5 s leases, 1 s reports, 50 ms delays).
    pub fn new(name: &str, nodes: usize, limit: u32, demand: Pattern) -> Self {
        Self {
            name: name.to_owned(),
            nodes,
            limit,
            window: Duration::from_secs(60),
            duration: Duration::from_secs(180),
            demand,
            queue_timeout: Duration::from_secs(30),
            delay: Duration::from_millis(50),
            timing: FleetTiming::default(),
            report_every: Duration::from_secs(1),
            events: Vec::new(),
            burst: 3,
            kind: LimitKind::Backend,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The most requests admitted in any window (must be ≤ the limit).
    pub max_in_window: u32,
    /// The limit per window.
    pub limit: u32,
    /// Over every window that starts a window or more into the run (sampled each
    /// second): the lowest, mean and highest admitted ÷ limit.
    pub min_utilisation: f64,
    /// See `min_utilisation`.
    pub mean_utilisation: f64,
    /// See `min_utilisation`.
    pub best_utilisation: f64,
    /// The best window of the whole run, start-up included (what a short end-to-end run
    /// measures).
    pub best_from_start: f64,
    /// Requests admitted in all.
    pub admitted: u64,
    /// Requests turned away (queue timeout) in all.
    pub refused: u64,
    /// Requests turned away while the fleet had used less than the limit in the window
    /// ending then: capacity a better split would have served.
    pub refused_while_unused: u64,
    /// Admission times per node.
    pub per_node: Vec<Vec<Instant>>,
    /// When the run started.
    pub start: Option<Instant>,
}

impl Outcome {
    /// Node `n`'s admissions in `[from, to)` after the start, per second.
    pub fn rate(&self, n: usize, from: Duration, to: Duration) -> f64 {
        let start = self.start.expect("a run");
        let count = self.per_node[n].iter().filter(|t| **t >= start + from && **t < start + to).count();
        count as f64 / (to - from).as_secs_f64()
    }
}

struct Node {
    id: String,
    running: bool,
    connected: bool,
    session: u64,
    /// Process restarts so far (the boot id).
    boot: u32,
    bundle: Option<Bundle>,
    rx: Option<mpsc::Receiver<FleetMessage>>,
    inbox: VecDeque<(Instant, FleetMessage)>,
    waiting: VecDeque<Instant>,
    arrivals: f64,
    next_report: Instant,
    admitted: Vec<Instant>,
}

const MODEL: &str = "m";
const TICK: Duration = Duration::from_millis(10);

fn backend(limit_per_minute: u32, window_seconds: u32) -> BackendRecord {
    let mapping = ModelMapping { native_id: "native".into(), ..Default::default() };
    BackendRecord {
        id: "bkd_sim".into(),
        name: "sim".into(),
        label: String::new(),
        base_url: "http://127.0.0.1:9/v1".into(),
        api_key: Sealed { key_id: String::new(), nonce: Vec::new(), ciphertext: Vec::new() },
        api_key_masked: "****".into(),
        timeout_seconds: 30,
        rpm_limit: limit_per_minute,
        tpm_limit: None,
        window_seconds,
        learn_limits: true,
        api: Default::default(),
        pool: "primary".into(),
        enabled: true,
        weight: 1,
        model_mappings: [(MODEL.to_string(), mapping)].into(),
        regions: Vec::new(),
        source: Source::Api,
        metadata: Default::default(),
        created_at_ms: 0,
        updated_at_ms: 0,
        resource_version: 1,
    }
}

/// Runs `s` to the end. Call it on a current-thread runtime with the clock paused
/// (`#[tokio::test(start_paused = true)]`, or [`run_blocking`]).
pub async fn run(s: &Scenario) -> Outcome {
    let minute = Duration::from_secs(60);
    let window_seconds = (s.window.as_secs() as u32).clamp(1, 60);
    let limit_per_minute = (u64::from(s.limit) * 60 / u64::from(window_seconds)) as u32;
    let settings = Settings {
        bucket_burst: s.burst,
        queue_timeout_seconds: s.queue_timeout.as_secs() as u32,
        emergency_fraction: 0.0,
        ..Settings::default()
    };
    let key = s.kind == LimitKind::Key;
    assert!(!key || window_seconds == 60, "a key's limit is per minute");
    let config = Arc::new(ConfigState {
        version: 1,
        // A key's run: the backend has a hundred times the room, so only the key limits.
        backends: vec![(
            backend(if key { limit_per_minute * 100 } else { limit_per_minute }, window_seconds),
            "sk-sim".into(),
        )],
        pools: vec![PoolRecord {
            name: "primary".into(),
            order: 0,
            description: String::new(),
            builtin: true,
            spill: Default::default(),
        }],
        settings,
        health: HashMap::new(),
        learned: HashMap::new(),
        client_keys: if key {
            vec![ClientKeyRecord {
                id: KEY_ID.into(),
                rpm_limit: limit_per_minute,
                enabled: true,
                ..Default::default()
            }]
        } else {
            Vec::new()
        },
    });
    let fleet = Fleet::new(s.timing);
    let start = Instant::now();
    let joins_late: Vec<usize> = s
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Join(n) => Some(*n),
            _ => None,
        })
        .collect();
    let mut nodes: Vec<Node> = (0..s.nodes)
        .map(|i| Node {
            id: format!("n{i}"),
            running: false,
            connected: false,
            session: 0,
            boot: 0,
            bundle: None,
            rx: None,
            inbox: VecDeque::new(),
            waiting: VecDeque::new(),
            arrivals: 0.0,
            // Reports are spread over the interval, as independent proxies' are.
            next_report: start + s.report_every * (i as u32 % 10) / 10,
            admitted: Vec::new(),
        })
        .collect();
    let mut sessions = 0u64;
    let connect = |node: &mut Node, sessions: &mut u64, now: Instant| {
        *sessions += 1;
        let (tx, rx) = mpsc::channel(64);
        // A node keeps its process across a reconnect.
        fleet.attach(&node.id, &format!("{}-{}", node.id, node.boot), *sessions, "", tx);
        node.session = *sessions;
        node.rx = Some(rx);
        node.connected = true;
        // The first snapshot (a reconnecting node already runs this version and keeps its
        // state, as a real proxy does).
        if node.bundle.is_none() {
            let mut snapshot = config.snapshot_for("", String::new());
            fleet.decorate(&node.id, &mut snapshot);
            let parsed = Snapshot::try_from(&snapshot_to_pb(&snapshot)).expect("a valid snapshot");
            node.bundle = Some(Bundle::prepare(&parsed, &Bundle::empty(minute), minute, now));
        }
    };
    for (i, node) in nodes.iter_mut().enumerate() {
        if !joins_late.contains(&i) {
            node.running = true;
            connect(node, &mut sessions, start);
        }
    }
    let mut events: Vec<(Duration, Event)> = s.events.clone();
    events.sort_by_key(|(t, _)| *t);
    let mut events: VecDeque<(Duration, Event)> = events.into();
    let mut reports: VecDeque<(Instant, String, pb::Demand)> = VecDeque::new();
    let mut next_grant = start + s.timing.interval;
    let mut refused = 0u64;
    let mut refused_at: Vec<Instant> = Vec::new();
    let steps = (s.duration.as_nanos() / TICK.as_nanos()) as u64;
    for step in 0..steps {
        let now = start + TICK * step as u32;
        let elapsed = now - start;
        while events.front().is_some_and(|(t, _)| *t <= elapsed) {
            let (_, event) = events.pop_front().expect("an event");
            match event {
                Event::Join(n) => {
                    nodes[n].running = true;
                    connect(&mut nodes[n], &mut sessions, now);
                }
                Event::Leave(n) | Event::Crash(n) => {
                    let node = &mut nodes[n];
                    node.running = false;
                    node.connected = false;
                    fleet.detach(&node.id, node.session, matches!(event, Event::Leave(_)));
                    node.rx = None;
                }
                Event::Disconnect(n) => {
                    let node = &mut nodes[n];
                    node.connected = false;
                    fleet.detach(&node.id, node.session, false);
                    node.rx = None;
                    node.inbox.clear();
                }
                Event::Reconnect(n) => connect(&mut nodes[n], &mut sessions, now),
                Event::Restart(n) => {
                    let node = &mut nodes[n];
                    fleet.detach(&node.id, node.session, true);
                    node.boot += 1;
                    node.bundle = None;
                    node.rx = None;
                    node.inbox.clear();
                    connect(node, &mut sessions, now);
                }
            }
        }
        // The control plane: reports that have arrived, then a grant round when due.
        while reports.front().is_some_and(|(at, ..)| *at <= now) {
            let (_, node, demand) = reports.pop_front().expect("a report");
            if nodes.iter().any(|n| n.id == node && n.connected) {
                fleet.key_demand(&node, &key_demand_from_pb(&demand.keys));
                fleet.demand(&node, &demand_from_pb(demand));
            }
        }
        if now >= next_grant {
            fleet.regrant(&config);
            next_grant += s.timing.interval;
        }
        for (i, node) in nodes.iter_mut().enumerate() {
            if !node.running {
                continue;
            }
            let bundle = node.bundle.as_ref().expect("a running node has a config");
            // Grants and cooldowns on their way arrive after the delay.
            if let Some(rx) = node.rx.as_mut() {
                while let Ok(msg) = rx.try_recv() {
                    node.inbox.push_back((now + s.delay, msg));
                }
            }
            while node.inbox.front().is_some_and(|(at, _)| *at <= now) {
                let (_, msg) = node.inbox.pop_front().expect("a message");
                if let Some(Kind::Grants(grants)) = fleet_message(msg).kind {
                    config_sync::apply_grants(bundle, &grants, now);
                }
            }
            // The proxy's upkeep tick re-applies limits (a lease running out).
            if step % 100 == 0 {
                for b in &bundle.backends {
                    b.state.apply_limits(&b.config, &bundle.settings, minute, now);
                }
                for (k, state) in bundle.limited_keys() {
                    state.apply_limits(k, minute, now);
                }
            }
            // New requests, then the queue in order: a token or keep waiting, turned
            // away at the timeout.
            node.arrivals += (s.demand)(i, elapsed) * TICK.as_secs_f64();
            while node.arrivals >= 1.0 {
                node.arrivals -= 1.0;
                // A key's limit answers at once: admitted for the key, or refused.
                if key {
                    let (k, state) = bundle.limited_key(KEY_ID).expect("the key is in the config");
                    if state.try_admit(k, now, 0).is_err() {
                        refused += 1;
                        refused_at.push(now);
                        continue;
                    }
                }
                node.waiting.push_back(now);
            }
            let route = bundle.route(Api::OpenAi, MODEL).expect("the model is served");
            while let Some(&since) = node.waiting.front() {
                if now.duration_since(since) >= s.queue_timeout {
                    node.waiting.pop_front();
                    refused += 1;
                    refused_at.push(now);
                    for (b, _) in route.members() {
                        b.state.rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    continue;
                }
                if routing::take(&route, &[], now, 0).is_none() {
                    break;
                }
                node.waiting.pop_front();
                node.admitted.push(now);
            }
            if node.connected && now >= node.next_report {
                node.next_report += s.report_every;
                let waiting = HashMap::from([((Api::OpenAi, MODEL.to_string()), node.waiting.len() as u64)]);
                let demand = config_sync::demand(bundle, &waiting, s.report_every, now);
                reports.push_back((now + s.delay, node.id.clone(), demand));
            }
        }
        tokio::time::advance(TICK).await;
    }
    outcome(s, start, nodes.into_iter().map(|n| n.admitted).collect(), refused, &refused_at)
}

fn outcome(s: &Scenario, start: Instant, per_node: Vec<Vec<Instant>>, refused: u64, refused_at: &[Instant]) -> Outcome {
    let mut all: Vec<Instant> = per_node.iter().flatten().copied().collect();
    all.sort();
    // The most in any window: for each admission, those within a window after it.
    let mut max_in_window = 0usize;
    let mut j = 0;
    for i in 0..all.len() {
        while j < all.len() && all[j] < all[i] + s.window {
            j += 1;
        }
        max_in_window = max_in_window.max(j - i);
    }
    let in_window_ending = |t: Instant| all.iter().filter(|a| **a < t && **a + s.window >= t).count();
    let mut samples = Vec::new();
    let mut t = start + s.window * 2;
    while t <= start + s.duration {
        samples.push(in_window_ending(t) as f64 / f64::from(s.limit));
        t += Duration::from_secs(1);
    }
    let mut best_from_start = 0.0f64;
    let mut t = start + s.window;
    while t <= start + s.duration {
        best_from_start = best_from_start.max(in_window_ending(t) as f64 / f64::from(s.limit));
        t += Duration::from_secs(1);
    }
    let refused_while_unused = refused_at.iter().filter(|t| (in_window_ending(**t) as u32) < s.limit).count() as u64;
    let mean = if samples.is_empty() { 0.0 } else { samples.iter().sum::<f64>() / samples.len() as f64 };
    Outcome {
        max_in_window: max_in_window as u32,
        limit: s.limit,
        min_utilisation: samples.iter().copied().fold(f64::INFINITY, f64::min),
        mean_utilisation: mean,
        best_utilisation: samples.iter().copied().fold(0.0, f64::max),
        best_from_start,
        admitted: all.len() as u64,
        refused,
        refused_while_unused,
        per_node,
        start: Some(start),
    }
}

/// Runs `s` on a fresh current-thread runtime with a paused clock.
pub fn run_blocking(s: &Scenario) -> Outcome {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime")
        .block_on(run(s))
}

/// Demand patterns.
pub mod patterns {
    use super::*;

    /// Every node wants `total / nodes`.
    pub fn even(total: f64, nodes: usize) -> Pattern {
        Arc::new(move |_, _| total / nodes as f64)
    }

    /// `total` split over `nodes` nodes by `weights` (repeating past their end).
    pub fn skewed(total: f64, weights: &[f64], nodes: usize) -> Pattern {
        let weights = weights.to_vec();
        let sum: f64 = (0..nodes).map(|i| weights[i % weights.len()]).sum();
        Arc::new(move |i, _| total * weights[i % weights.len()] / sum)
    }

    /// One node wants `hot`, the others `cold` each.
    pub fn hot(hot: f64, cold: f64) -> Pattern {
        Arc::new(move |i, _| if i == 0 { hot } else { cold })
    }

    /// All the demand on one node, moving to the next every `every`.
    pub fn moving(total: f64, nodes: usize, every: Duration) -> Pattern {
        Arc::new(move |i, t| {
            let at = (t.as_secs_f64() / every.as_secs_f64()) as usize % nodes;
            if i == at { total } else { 0.0 }
        })
    }
}
