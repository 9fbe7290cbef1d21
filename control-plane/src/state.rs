//! State shared by every service: the store, the current key, the token cache, the
//! connected-node registry and the published config (a `watch` of the latest
//! [`ConfigState`], which every node session turns into snapshots).

use std::sync::{Arc, RwLock};

use sidecar_proto::v1 as pb;
use tokio::sync::{Mutex, watch};

use crate::{
    auth::Authenticator,
    crypto::{CryptoError, MasterKey},
    node::NodeRegistry,
    store::{BackendRecord, PoolRecord, Settings, Store, StoreError},
    util,
};

/// Failure to build the published config.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored key could not be opened.
    #[error("backend {backend}: API key {source}")]
    Key {
        /// Backend id.
        backend: String,
        /// Why.
        source: CryptoError,
    },
}

/// Everything a snapshot is made from, at one config version, with API keys decrypted
/// once per version (never per request or per node).
pub struct ConfigState {
    /// Config version.
    pub version: u64,
    /// Backends with their plaintext keys.
    pub backends: Vec<(BackendRecord, String)>,
    /// Pools in routing order.
    pub pools: Vec<PoolRecord>,
    /// System settings.
    pub settings: Settings,
    /// Backend id → "error" for backends active probes or passive health found failing.
    pub health: std::collections::HashMap<String, &'static str>,
}

impl ConfigState {
    /// Reads the current config from the store.
    pub fn load(
        store: &Store,
        key: &MasterKey,
        health: std::collections::HashMap<String, &'static str>,
    ) -> Result<Self, StateError> {
        let version = store.config_version();
        let backends = store
            .backends()?
            .into_iter()
            .map(|b| {
                let plain = key.open(&b.api_key).map_err(|source| StateError::Key { backend: b.id.clone(), source })?;
                Ok((b, plain))
            })
            .collect::<Result<_, StateError>>()?;
        Ok(Self { version, backends, pools: store.pools()?, settings: store.settings()?, health })
    }

    /// The snapshot for a node of `region`: only backends allowed there.
    pub fn snapshot_for(&self, region: &str, nonce: String) -> pb::Snapshot {
        pb::Snapshot {
            version: self.version,
            nonce,
            backends: self
                .backends
                .iter()
                .filter(|(b, _)| b.allowed_in(region))
                .map(|(b, key)| pb::SnapshotBackend {
                    id: b.id.clone(),
                    name: b.name.clone(),
                    base_url: b.base_url.clone(),
                    api_key: key.clone(),
                    timeout_seconds: b.timeout_seconds,
                    rpm_limit: b.rpm_limit,
                    tpm_limit: b.tpm_limit.unwrap_or(0),
                    window_seconds: b.window_seconds,
                    pool: b.pool.clone(),
                    enabled: b.enabled,
                    weight: b.weight,
                    model_mappings: b
                        .model_mappings
                        .iter()
                        .map(|(k, m)| (k.clone(), crate::admin::convert::mapping_to_pb(m)))
                        .collect(),
                    resource_version: b.resource_version,
                    label: b.label.clone(),
                    health: self.health.get(&b.id).copied().unwrap_or("healthy").to_owned(),
                    ..Default::default()
                })
                .collect(),
            pools: self.pools.iter().map(|p| crate::admin::convert::pool_to_pb(p, 0)).collect(),
            settings: Some(crate::admin::convert::settings_to_pb(&self.settings)),
            generated_at_ms: util::now_ms(),
        }
    }
}

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
    pub fleet: crate::fleet::Fleet,
    /// The latest dashboard, computed once a second and shared by every watcher.
    pub dashboard: watch::Sender<Arc<pb::Dashboard>>,
    /// Active-probe and passive health per backend id ("healthy" or "error").
    pub health: std::sync::Mutex<std::collections::HashMap<String, &'static str>>,
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
        timing: crate::fleet::FleetTiming,
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
            fleet: crate::fleet::Fleet::new(timing),
            dashboard: watch::channel(Arc::new(pb::Dashboard::default())).0,
            health: Default::default(),
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
        let state = ConfigState::load(&self.store, &self.key(), health)?;
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
}
