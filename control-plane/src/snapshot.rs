//! The published config: everything a node snapshot is made from at one config version
//! ([`ConfigState`], with API keys decrypted once per version, never per request or per
//! node), and what one node of a region is sent ([`NodeSnapshot`]). The API layer encodes
//! a `NodeSnapshot` for the wire; the fleet decorates it with starting shares.

use std::{collections::HashMap, sync::Arc};

use crate::{
    crypto::{CryptoError, MasterKey},
    status::Health,
    store::{BackendRecord, ClientKeyRecord, PoolRecord, Settings, Store, StoreError},
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

/// Everything a snapshot is made from, at one config version.
pub struct ConfigState {
    /// Config version.
    pub version: u64,
    /// Backends with their plaintext keys.
    pub backends: Vec<(BackendRecord, String)>,
    /// Pools in routing order.
    pub pools: Vec<PoolRecord>,
    /// System settings.
    pub settings: Settings,
    /// Backend id → health, for backends active probes or passive health found failing.
    pub health: HashMap<String, Health>,
    /// Backend id → a lower request limit (per minute) the provider reported.
    pub learned: HashMap<String, u32>,
    /// The client keys proxies accept (not revoked), ordered by id.
    pub client_keys: Vec<ClientKeyRecord>,
}

impl ConfigState {
    /// Reads the current config from the store.
    pub fn load(store: &Store, key: &MasterKey, health: HashMap<String, Health>) -> Result<Self, StateError> {
        let version = store.config_version();
        let backends = store
            .backends()?
            .into_iter()
            .map(|b| {
                let plain = key.open(&b.api_key).map_err(|source| StateError::Key { backend: b.id.clone(), source })?;
                Ok((b, plain))
            })
            .collect::<Result<_, StateError>>()?;
        Ok(Self {
            version,
            backends,
            pools: store.pools()?,
            settings: store.settings()?,
            health,
            learned: HashMap::new(),
            client_keys: store.client_keys()?.into_iter().filter(ClientKeyRecord::live).collect(),
        })
    }

    /// The request limit (per minute) the fleet holds a backend to: the configured one, or
    /// a lower one the provider reported.
    pub fn rpm_limit(&self, b: &BackendRecord) -> u32 {
        self.learned.get(&b.id).map_or(b.rpm_limit, |&l| l.min(b.rpm_limit))
    }

    /// The snapshot for a node of `region`: only backends allowed there.
    pub fn snapshot_for(self: &Arc<Self>, region: &str, nonce: String) -> NodeSnapshot {
        NodeSnapshot {
            state: self.clone(),
            nonce,
            backends: self
                .backends
                .iter()
                .enumerate()
                .filter(|(_, (b, _))| b.allowed_in(region))
                .map(|(index, _)| NodeBackend { index, ..Default::default() })
                .collect(),
            generated_at_ms: util::now_ms(),
            key_shares: Vec::new(),
        }
    }

    /// SHA-256 (hex) of the config's content: backends (as stored, keys sealed), pools,
    /// settings and live client keys. Two states with one version and different content
    /// (a restore) have different hashes.
    pub fn content_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let backends: Vec<&BackendRecord> = self.backends.iter().map(|(b, _)| b).collect();
        let content =
            serde_json::to_vec(&(backends, &self.pools, &self.settings, &self.client_keys)).expect("records serialize");
        hex::encode(Sha256::digest(content))
    }

    /// A backend's health (healthy unless found failing).
    pub fn health_of(&self, backend_id: &str) -> Health {
        self.health.get(backend_id).copied().unwrap_or(Health::Healthy)
    }
}

/// What one node is sent: the backends its region may use, each with the fleet's
/// starting share and cooldown, over the shared config state.
pub struct NodeSnapshot {
    /// The config it is made from.
    pub state: Arc<ConfigState>,
    /// Pairs the node's answer with this snapshot.
    pub nonce: String,
    /// The backends allowed in the node's region.
    pub backends: Vec<NodeBackend>,
    /// When it was made, unix ms.
    pub generated_at_ms: i64,
    /// The node's starting shares of each client key's limits, by key id (keys without
    /// limits are not listed).
    pub key_shares: Vec<(String, KeyShares)>,
}

/// A node's starting shares of one client key's limits (`None` where the key has no such
/// limit).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KeyShares {
    /// Requests per minute.
    pub requests: Option<u32>,
    /// Tokens per minute.
    pub tokens: Option<u32>,
    /// Requests in flight at once.
    pub concurrent: Option<u32>,
}

/// One backend of a [`NodeSnapshot`].
#[derive(Debug, Default, Clone)]
pub struct NodeBackend {
    /// Index into the state's backends.
    pub index: usize,
    /// Requests per backend window the node may start with; `Some(0)` = wait for a grant.
    pub initial_share: Option<u32>,
    /// Fleet-wide cooldown still to run.
    pub cooldown_remaining_ms: u64,
    /// Fleet-wide consecutive 429s.
    pub consecutive_429: u32,
    /// Fleet-wide pause still to run: the provider reported the budget spent.
    pub exhausted_remaining_ms: u64,
    /// Starting share of each model with its own limits, by canonical name, in requests
    /// per backend window; like `initial_share`.
    pub model_shares: Vec<(String, u32)>,
    /// Fleet-wide cooldowns and pauses of models with their own limits, in force now.
    pub model_cooldowns: Vec<ModelCooldown>,
}

/// A model's own fleet-wide cooldown (or pause) on a backend, for a snapshot.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ModelCooldown {
    /// Canonical name.
    pub model: String,
    /// 429 cooldown still to run.
    pub cooldown_remaining_ms: u64,
    /// Fleet-wide consecutive 429s of the model.
    pub consecutive_429: u32,
    /// Provider pause still to run.
    pub exhausted_remaining_ms: u64,
}

impl NodeSnapshot {
    /// The backend record (and plaintext key) of `b`.
    pub fn record(&self, b: &NodeBackend) -> &(BackendRecord, String) {
        &self.state.backends[b.index]
    }
}
