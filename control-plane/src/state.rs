//! State shared by every service: the store, the current key, the token cache, the
//! connected-node registry, the fleet coordinator and the published config (a `watch` of
//! the latest [`ConfigState`], which every node session turns into snapshots); and the
//! one path every config write takes ([`Shared::write`]).

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use sidecar_otel::KeyValue;
use tokio::sync::{Mutex, watch};
use tracing::{info, warn};

pub use crate::snapshot::{ConfigState, StateError};
use crate::{
    auth::{Authenticator, Principal},
    crypto::MasterKey,
    dashboard::Dashboard,
    fleet::{Fleet, FleetTiming},
    nodes::NodeRegistry,
    status::Health,
    store::{ConfigChange, Store, StoreError},
};

/// Shared by the admin and node services.
pub struct Shared {
    /// The store.
    pub store: Store,
    /// The key API keys are sealed with; replaced by rotation.
    pub key: RwLock<MasterKey>,
    /// Token cache.
    pub auth: Authenticator,
    /// Connected nodes.
    pub nodes: NodeRegistry,
    /// Serialises config writes, so a write's reads are current when it commits and
    /// configs are published in version order.
    pub writer: Mutex<()>,
    /// Where backups go (`SIDECAR_BACKUP_DIR`, default `DATA_DIR/backups`).
    pub backup_dir: std::path::PathBuf,
    /// Fleet coordination: grants and fleet-wide cooldowns.
    pub fleet: Fleet,
    /// This instance among the others on its store, and whether it leads.
    pub cluster: crate::cluster::Cluster,
    /// OpenTelemetry trace export, when `SIDECAR_OTLP_ENDPOINT` is set.
    pub traces: Option<sidecar_otel::Traces>,
    /// Client keys' spend in their budget periods.
    pub budgets: crate::budgets::Budgets,
    /// The latest dashboard, computed once a second and shared by every watcher.
    pub dashboard: watch::Sender<Arc<Dashboard>>,
    /// Active-probe and passive health per backend id (only backends found failing).
    pub health: std::sync::Mutex<HashMap<String, Health>>,
    /// Backend id → a lower request limit (per minute) the provider reported; cleared by
    /// any write to the backend.
    pub learned: std::sync::Mutex<HashMap<String, u32>>,
    /// When the control plane started.
    pub started: std::time::Instant,
    /// NodeService requires a client certificate (mTLS) and takes the node id from it.
    pub node_client_certs: bool,
    config_tx: watch::Sender<Arc<ConfigState>>,
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    /// Builds the shared state and publishes the current config.
    pub fn new(
        store: Store,
        key: MasterKey,
        backup_dir: std::path::PathBuf,
        timing: FleetTiming,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, StateError> {
        let state = ConfigState::load(&store, &key, Default::default())?;
        crate::metrics::config_version(state.version);
        let (config_tx, _) = watch::channel(Arc::new(state));
        let auth = Authenticator::default();
        auth.reload(store.tokens()?);
        Ok(Self {
            store,
            key: RwLock::new(key),
            auth,
            nodes: NodeRegistry::default(),
            writer: Mutex::new(()),
            backup_dir,
            fleet: Fleet::new(timing),
            cluster: crate::cluster::Cluster::new(String::new(), None),
            traces: None,
            budgets: Default::default(),
            dashboard: watch::channel(Arc::new(Dashboard::default())).0,
            health: Default::default(),
            learned: Default::default(),
            started: std::time::Instant::now(),
            node_client_certs: false,
            config_tx,
            shutdown,
        })
    }

    /// The current key.
    pub fn key(&self) -> MasterKey {
        self.key.read().expect("key lock").clone()
    }

    /// Re-reads the config from the store and pushes it to every node session.
    pub fn publish(&self) -> Result<(), StateError> {
        let health = self.health.lock().expect("health lock").clone();
        let mut state = ConfigState::load(&self.store, &self.key(), health)?;
        state.learned = self.learned.lock().expect("learned lock").clone();
        crate::metrics::config_version(state.version);
        self.config_tx.send_replace(Arc::new(state));
        Ok(())
    }

    /// Subscribes to published configs.
    pub fn config(&self) -> watch::Receiver<Arc<ConfigState>> {
        self.config_tx.subscribe()
    }

    /// Becomes true when the control plane shuts down; long-lived streams end on it.
    pub fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// Runs one config write: serialised with every other write, committed in one
    /// transaction with its audit entry, published to nodes, and flushed to disk before
    /// the caller hears it succeeded. `build` reads the store under the writer lock and
    /// returns the change, the audit target and its result.
    pub async fn write<T, E>(
        &self,
        who: &Principal,
        action: &'static str,
        build: impl FnOnce(&Store) -> Result<(ConfigChange, String, T), E>,
    ) -> Result<(u64, T), E>
    where
        E: From<StoreError> + From<StateError>,
    {
        let _guard = self.writer.lock().await;
        let span = self.traces.as_ref().map(|t| {
            let attributes =
                vec![KeyValue::new("sidecar.action", action), KeyValue::new("sidecar.actor", who.token_id.clone())];
            t.child("config write", sidecar_otel::Kind::Internal, None, attributes)
        });
        let (change, target, out) = build(&self.store).inspect_err(|_| {
            if let Some(span) = &span {
                span.fail("refused");
            }
        })?;
        if let Some(span) = &span {
            span.set([KeyValue::new("sidecar.target", target.clone())]);
        }
        let tokens_changed = !change.put_tokens.is_empty() || !change.delete_tokens.is_empty();
        let backends: Vec<String> =
            change.put_backends.iter().map(|b| b.id.clone()).chain(change.delete_backends.iter().cloned()).collect();
        let version = self.store.commit(change, &who.actor(), action, &target)?;
        // A write to a backend is the operator's word on its limits: what was learned
        // from the provider before it no longer applies (it is learned again if still
        // true). Dropped once the write is committed, before it is published.
        {
            let mut learned = self.learned.lock().expect("learned lock");
            for id in &backends {
                learned.remove(id);
            }
        }
        if tokens_changed {
            self.auth.reload(self.store.tokens()?);
        }
        self.publish()?;
        self.store.flush().await?;
        info!(action, target = %target, actor = %who.token_id, version, "config write");
        if let Some(span) = &span {
            span.set([KeyValue::new("sidecar.config_version", version as i64)]);
        }
        Ok((version, out))
    }
}

/// Follows config writes made through other control-plane instances on the same store
/// (PostgreSQL): when the store's version passes the one published here, the tokens and
/// the config are reloaded and pushed to the nodes connected to this instance. Nothing to
/// do for a store only this process writes.
pub async fn follow_store(shared: Arc<Shared>) {
    let Some(mut versions) = shared.store.watch_versions() else { return };
    let mut shutdown = shared.shutdown();
    loop {
        tokio::select! {
            changed = versions.changed() => if changed.is_err() { return },
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let seen = *versions.borrow_and_update();
        if seen <= shared.config_tx.borrow().version {
            continue;
        }
        // Under the writer lock: a write of this instance publishes in order with it.
        let _guard = shared.writer.lock().await;
        let reloaded = shared.store.tokens().map(|t| shared.auth.reload(t)).map_err(StateError::from);
        match reloaded.and_then(|()| shared.publish()) {
            Ok(()) => info!(version = seen, "config written through another instance; published"),
            Err(e) => warn!(error = %e, "could not reload the config another instance wrote"),
        }
    }
}

/// Re-grants every fleet interval until shutdown.
pub async fn run_grants(shared: Arc<Shared>) {
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
        // With other instances on the store, only the leader allocates (after a warm-up).
        if !crate::cluster::tick(&shared) {
            continue;
        }
        shared.fleet.regrant(&state);
        crate::cluster::announce_live(&shared);
        if state.client_keys.iter().any(|k| k.budget_usd > 0.0) {
            let remaining = shared.budgets.remaining(&shared.store, &state.client_keys, crate::util::now_ms());
            shared.fleet.broadcast_budgets(remaining);
        }
    }
}
