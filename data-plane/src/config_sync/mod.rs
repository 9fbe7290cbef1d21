//! Config from the control plane. One task owns the `Sync` stream: it says hello, turns
//! each snapshot into a prepared bundle (all fallible work first), applies it with one
//! `ArcSwap` store, and only then ACKs; an invalid snapshot is NACKed with the reason and
//! the last good config keeps serving. It reconnects with exponential backoff and jitter,
//! and carries the node's 429 and recovery events to the control plane as they happen.
//! Protobuf stays inside this module (and `report`'s delivery): snapshots are decoded
//! here (`snapshot`), and the node client is built here (`client`).

mod auth;
mod cache;
mod client;
mod snapshot;

use std::{sync::Arc, time::Duration};

use sidecar_proto::v1::{self as pb, control_message, node_message};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tracing::{error, info, warn};

pub use cache::Cache;
pub use client::{ControlClients, NodeClient, connect};

use crate::{
    ratelimit::RequestLimiter,
    report::NodeEvent,
    routing::{Bundle, ModelQuota},
    snapshot::{Snapshot, SnapshotError},
    state::Shared,
};

/// How often the node tells the control plane its demand.
const DEMAND_EVERY: Duration = Duration::from_secs(1);
/// How long a node shutting down waits for the control plane to take its goodbye.
const GOODBYE_WAIT: Duration = Duration::from_secs(1);

/// Who this node is, as it introduces itself on every Sync stream.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// Node id.
    pub node_id: String,
    /// Region label.
    pub region: String,
    /// Random per process start.
    pub boot_id: String,
}

/// The sync task.
pub struct Syncer {
    shared: Arc<Shared>,
    client: ControlClients,
    /// The client of the stream under way (its index among `client`'s).
    using: usize,
    hello: pb::Hello,
    cache: Option<Cache>,
    window: Duration,
    events: mpsc::Receiver<NodeEvent>,
    /// The content hash of the config applied last (empty: none, or a control plane that
    /// sends none).
    applied_hash: std::sync::Mutex<String>,
}

impl Syncer {
    /// A syncer for this node.
    pub fn new(
        shared: Arc<Shared>,
        client: ControlClients,
        identity: NodeIdentity,
        cache: Option<Cache>,
        window: Duration,
        events: mpsc::Receiver<NodeEvent>,
    ) -> Self {
        let NodeIdentity { node_id, region, boot_id } = identity;
        let hello = pb::Hello {
            node_id,
            region,
            software_version: env!("CARGO_PKG_VERSION").into(),
            config_version: 0,
            boot_id,
        };
        Self { shared, client, using: 0, hello, cache, window, events, applied_hash: Default::default() }
    }

    /// Applies the cached snapshot, if any; used at boot so the proxy serves even when
    /// the control plane cannot be reached.
    pub fn load_cache(&self) {
        let Some(cache) = &self.cache else { return };
        match cache.load() {
            Ok(Some(snapshot)) => match self.apply(&snapshot, false) {
                Ok(()) => {
                    info!(version = snapshot.version, "serving the cached config until the control plane answers")
                }
                Err(e) => warn!(error = %e, "cached config is invalid; ignoring it"),
            },
            Ok(None) => {}
            Err(e) => warn!(error = %e, "could not read the config cache"),
        }
    }

    /// Validates, prepares and swaps in `snapshot`. Nothing changes if it is invalid.
    pub fn apply(&self, snapshot: &pb::Snapshot, persist: bool) -> Result<(), SnapshotError> {
        let parsed = Snapshot::try_from(snapshot)?;
        let current = self.shared.bundle.load_full();
        let mut applied_hash = self.applied_hash.lock().expect("hash lock");
        // The same version is the same config, unless its content differs: a restored
        // store that counted up to a version this node already holds.
        if parsed.version == current.version && current.version != 0 && *applied_hash == snapshot.config_hash {
            return Ok(());
        }
        if parsed.version == current.version && current.version != 0 {
            warn!(version = parsed.version, "a config of the version held with other content; applying it");
        }
        applied_hash.clone_from(&snapshot.config_hash);
        drop(applied_hash);
        let bundle = Bundle::prepare(&parsed, &current, self.window, Instant::now());
        self.shared.bundle.store(Arc::new(bundle));
        self.shared.queue.wake();
        self.shared.metrics.gauge("sidecar_config_version", &[], parsed.version as f64);
        if persist
            && let Some(cache) = &self.cache
            && let Err(e) = cache.save(snapshot)
        {
            warn!(error = %e, "could not write the config cache");
        }
        info!(version = parsed.version, backends = parsed.backends.len(), "config applied");
        Ok(())
    }

    /// Takes this node's shares of backend limits from the control plane.
    fn apply_grants(&self, grants: &pb::QuotaGrants) {
        apply_grants(&self.shared.bundle.load(), grants, Instant::now());
        self.shared.queue.wake();
    }

    /// A fleet-wide cooldown (or its end) from the control plane.
    fn apply_cooldown(&self, c: &pb::CooldownBroadcast) {
        let bundle = self.shared.bundle.load();
        let Some(b) = bundle.backend(&c.backend_id) else { return };
        let now = Instant::now();
        // One model's own cooldown (or pause), or the backend's.
        let bucket = if c.model.is_empty() {
            None
        } else {
            let Some(bucket) = b.state.model_bucket(&c.model) else { return };
            Some(bucket)
        };
        let mut cooldown = bucket.as_ref().map_or(&b.state.cooldown, |m| &m.cooldown).lock().expect("cooldown lock");
        if c.exhausted {
            // Another node heard the provider say the budget is spent: pause, no escalation.
            cooldown.exhausted_for(now, Duration::from_millis(c.remaining_ms));
            info!(backend = %c.backend_id, model = %c.model, remaining_ms = c.remaining_ms, from = %c.node_id, "provider budget spent fleet-wide: paused");
            return;
        }
        if c.remaining_ms == 0 {
            cooldown.consecutive = 0;
            cooldown.until = None;
            drop(cooldown);
            self.shared.queue.wake();
        } else {
            // Never lower a count this node escalated itself after the broadcast was sent.
            cooldown.consecutive = cooldown.consecutive.max(c.consecutive_count);
            let until = now + Duration::from_millis(c.remaining_ms);
            cooldown.until = Some(cooldown.until.map_or(until, |u| u.max(until)));
            info!(backend = %c.backend_id, model = %c.model, count = c.consecutive_count, remaining_ms = c.remaining_ms, from = %c.node_id, "fleet-wide cooldown");
        }
    }

    /// What this node wants of each backend (see [`demand`]).
    fn demand(&self, every: Duration) -> pb::Demand {
        demand(&self.shared.bundle.load(), &self.shared.queue.waiting_by_model(), every, Instant::now())
    }

    fn set_connected(&self, connected: bool) {
        self.shared.sync.connected.store(connected, std::sync::atomic::Ordering::Relaxed);
        self.shared.metrics.gauge("sidecar_control_plane_connected", &[], if connected { 1.0 } else { 0.0 });
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let result = self.session(&mut shutdown).await;
            if *shutdown.borrow() {
                return;
            }
            self.set_connected(false);
            match result {
                Ok(()) => {
                    info!("control plane closed the Sync stream; reconnecting");
                    backoff = Duration::from_millis(100);
                }
                Err(status) => {
                    *self.shared.sync.last_error.lock().expect("status lock") = status.message().to_owned();
                    // The next attempt goes to the next control URL, if there are several.
                    if self.client.len() > 1 {
                        warn!(url = self.client.url(self.using), "moving to the next control URL");
                        self.client.failed(self.using);
                    }
                    match status.code() {
                        Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument => {
                            error!(
                                code = ?status.code(),
                                message = status.message(),
                                "the control plane refuses this node: check SIDECAR_NODE_TOKEN and SIDECAR_NODE_ID; retrying"
                            )
                        }
                        _ => {
                            warn!(code = ?status.code(), message = status.message(), "control plane unreachable; serving the last config")
                        }
                    }
                }
            }
            let wait = crate::jitter(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(30));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// One Sync stream, until it fails or `shutdown` turns true: then the node says
    /// goodbye (it serves no more, so the control plane need not hold its fallback share)
    /// and waits briefly for the control plane to close the stream.
    async fn session(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), tonic::Status> {
        let (tx, rx) = mpsc::channel(64);
        let mut hello = self.hello.clone();
        hello.config_version = self.shared.bundle.load().version;
        tx.send(pb::NodeMessage { kind: Some(node_message::Kind::Hello(hello)) }).await.expect("fresh channel");
        let stop = async {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        tokio::pin!(stop);
        let mut inbound = tokio::select! {
            r = async {
                let (i, mut client) = self.client.current();
                self.using = i;
                client.sync(ReceiverStream::new(rx)).await
            } => r?.into_inner(),
            _ = &mut stop => return Ok(()),
        };
        self.set_connected(true);
        info!("connected to the control plane");
        let mut demand_tick = tokio::time::interval(DEMAND_EVERY);
        loop {
            tokio::select! {
                message = inbound.message() => {
                    let Some(message) = message? else { return Ok(()) };
                    let snapshot = match message.kind {
                        Some(control_message::Kind::Snapshot(snapshot)) => snapshot,
                        Some(control_message::Kind::Grants(grants)) => {
                            self.apply_grants(&grants);
                            continue;
                        }
                        Some(control_message::Kind::Cooldown(cooldown)) => {
                            self.apply_cooldown(&cooldown);
                            continue;
                        }
                        Some(control_message::Kind::Budgets(budgets)) => {
                            apply_budgets(&self.shared.bundle.load(), &budgets);
                            continue;
                        }
                        None => continue,
                    };
                    let answer = match self.apply(&snapshot, true) {
                        Ok(()) => node_message::Kind::Ack(pb::Ack { version: snapshot.version, nonce: snapshot.nonce.clone() }),
                        Err(e) => {
                            warn!(version = snapshot.version, error = %e, "rejecting snapshot; keeping the last good config");
                            node_message::Kind::Nack(pb::Nack { version: snapshot.version, nonce: snapshot.nonce.clone(), error: e.to_string() })
                        }
                    };
                    if tx.send(pb::NodeMessage { kind: Some(answer) }).await.is_err() {
                        return Ok(());
                    }
                }
                Some(event) = self.events.recv() => {
                    let _ = tx.send(pb::NodeMessage { kind: Some(event.into()) }).await;
                }
                _ = &mut stop => {
                    let goodbye = pb::NodeMessage { kind: Some(node_message::Kind::Goodbye(pb::Goodbye {})) };
                    if tx.send(goodbye).await.is_ok() {
                        let closed = async { while let Ok(Some(_)) = inbound.message().await {} };
                        let _ = tokio::time::timeout(GOODBYE_WAIT, closed).await;
                    }
                    return Ok(());
                }
                _ = demand_tick.tick() => {
                    let demand = self.demand(DEMAND_EVERY);
                    let _ = tx.send(pb::NodeMessage { kind: Some(node_message::Kind::Demand(demand)) }).await;
                }
            }
        }
    }
}

/// A limiter's bucket fill now (tokens ÷ burst, 0..=1) and requests in the current window.
/// A limiter's bucket fill, its use of the current window, and the limit in force (what
/// the node may admit per window: the share it runs).
fn fill(limiter: &mut RequestLimiter, now: Instant) -> (f64, u32, u32) {
    let fill = (limiter.tokens(now) / f64::from(limiter.burst().max(1))).clamp(0.0, 1.0);
    (fill, limiter.in_window(now), limiter.limit())
}

/// Takes a node's shares of backend (and model) limits from the control plane into
/// `bundle`'s live state, at `now`. The caller wakes the queue.
pub fn apply_grants(bundle: &Bundle, grants: &pb::QuotaGrants, now: Instant) {
    let lease = Duration::from_millis(grants.lease_ms);
    for g in &grants.grants {
        let Some(b) = bundle.backend(&g.backend_id) else { continue };
        {
            let mut quota = b.state.quota.lock().expect("quota lock");
            let tokens = |t: u32| (t > 0).then_some(t);
            let (grant, fallback) = ((g.rpm, tokens(g.tpm)), (g.fallback_rpm, tokens(g.fallback_tpm)));
            quota.renew(grant, fallback, g.pace, now + lease, grants.round);
            let limited = |name: &str| b.config.models.get(name).is_some_and(|m| m.limits.is_some());
            quota.models = g
                .models
                .iter()
                .filter(|m| limited(&m.model))
                .map(|m| {
                    let grant = (m.rpm, tokens(m.tpm));
                    (m.model.clone(), ModelQuota { grant, fallback: (m.fallback_rpm, tokens(m.fallback_tpm)) })
                })
                .collect();
        }
        b.state.apply_limits(&b.config, &bundle.settings, bundle.window, now);
    }
    for g in &grants.keys {
        let Some((key, state)) = bundle.limited_key(&g.key_id) else { continue };
        let shares = [(g.rpm, g.fallback_rpm), (g.tpm, g.fallback_tpm), (g.concurrent, g.fallback_concurrent)];
        state.renew(shares, g.pace, now + lease, grants.round);
        state.apply_limits(key, bundle.window, now);
    }
}

/// Takes what is left of client keys' budgets from the control plane.
pub fn apply_budgets(bundle: &Bundle, budgets: &pb::KeyBudgets) {
    for b in &budgets.budgets {
        if let Some(budget) = bundle.key_budget(&b.key_id) {
            budget.set(b.remaining_usd, b.reset_ms);
        }
    }
}

/// What a node wants of each backend: admitted + turned away since the last report +
/// waiting now (`waiting_by_model`), as requests per window of the backend (of the model,
/// for a model's own limits), reported every `every`. Takes the admitted and turned-away
/// counts (they start over).
pub fn demand(
    bundle: &Bundle,
    waiting_by_model: &std::collections::HashMap<(crate::snapshot::Api, String), u64>,
    every: Duration,
    now: Instant,
) -> pb::Demand {
    use std::sync::atomic::Ordering::Relaxed;
    let backends = bundle
        .backends
        .iter()
        .map(|b| {
            let waiting: u64 = waiting_by_model
                .iter()
                .filter(|((api, model), _)| {
                    bundle.route(*api, model).is_some_and(|r| r.members().any(|(m, _)| m.config.id == b.config.id))
                })
                .map(|(_, n)| n)
                .sum();
            let admitted = b.state.admitted.swap(0, Relaxed);
            let rejected = b.state.rejected.swap(0, Relaxed);
            let (bucket_fill, in_window, granted) = fill(&mut b.state.limiter.lock().expect("limiter lock"), now);
            // Per the backend's window (or the model's), the unit its grants come in.
            let scale = |window_seconds: u32| (bundle.window * window_seconds / 60).as_secs_f64() / every.as_secs_f64();
            let models = b
                .state
                .models
                .lock()
                .expect("models lock")
                .iter()
                .map(|(name, bucket)| {
                    let waiting = waiting_by_model.get(&(b.config.api, name.clone())).copied().unwrap_or(0);
                    let admitted = bucket.admitted.swap(0, Relaxed);
                    let rejected = bucket.rejected.swap(0, Relaxed);
                    let (bucket_fill, in_window, granted) =
                        fill(&mut bucket.limiter.lock().expect("model limiter lock"), now);
                    let limits = b.config.models.get(name).and_then(|m| m.limits);
                    let window_seconds = limits.map_or(b.config.window_seconds, |l| l.window_of(&b.config));
                    pb::ModelDemand {
                        model: name.clone(),
                        demand: (admitted + rejected + waiting) as f64 * scale(window_seconds),
                        in_window,
                        bucket_fill,
                        granted,
                    }
                })
                .collect();
            let (lease_remaining, grant_round) = b.state.quota.lock().expect("quota lock").lease_report(now);
            pb::BackendDemand {
                lease_remaining_ms: lease_remaining.as_millis() as u64,
                grant_round,
                backend_id: b.config.id.clone(),
                demand: (admitted + rejected + waiting) as f64 * scale(b.config.window_seconds),
                admitted,
                waiting,
                rejected,
                bucket_fill,
                in_window,
                models,
                granted,
            }
        })
        .collect();
    let scale = bundle.window.as_secs_f64() / every.as_secs_f64();
    let keys = bundle
        .limited_keys()
        .map(|(key, state)| {
            let admitted = state.admitted.swap(0, Relaxed);
            let rejected = state.rejected.swap(0, Relaxed);
            let (bucket_fill, in_window, granted) = fill(&mut state.limiter.lock().expect("key limiter lock"), now);
            let (lease_remaining, grant_round) = state.quota.lock().expect("quota lock").lease_report(now);
            let wanted = state.tokens_wanted.swap(0, Relaxed);
            let tokens = state.tokens.lock().expect("key tokens lock").as_mut().map(|w| {
                let used = w.used(now);
                pb::LimitUse {
                    demand: wanted as f64 * scale,
                    in_use: used.min(u64::from(u32::MAX)) as u32,
                    fill: 1.0 - (used as f64 / w.limit().max(1) as f64).min(1.0),
                    granted: w.limit().min(u64::from(u32::MAX)) as u32,
                }
            });
            let concurrent = (key.max_concurrent > 0).then(|| {
                let in_flight = state.in_flight.load(Relaxed);
                let peak = state.peak_in_flight.swap(in_flight, Relaxed).max(in_flight);
                let refused = state.concurrent_rejected.swap(0, Relaxed);
                let limit = state.concurrent_limit.load(Relaxed).max(1);
                pb::LimitUse {
                    demand: f64::from(peak) + refused as f64,
                    in_use: in_flight,
                    fill: 1.0 - (f64::from(in_flight) / f64::from(limit)).min(1.0),
                    granted: limit,
                }
            });
            pb::KeyDemand {
                key_id: key.id.to_string(),
                demand: (admitted + rejected) as f64 * scale,
                in_window,
                bucket_fill,
                lease_remaining_ms: lease_remaining.as_millis() as u64,
                grant_round,
                tokens,
                concurrent,
                granted,
            }
        })
        .collect();
    pb::Demand { backends, at_ms: crate::now_ms(), keys }
}
