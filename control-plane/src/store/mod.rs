//! The control plane's store: the records, the seam every store implements ([`StoreBackend`]),
//! and the sled store — one tree per entity, values prefixed with a schema version byte,
//! multi-tree writes in one transaction, and the config version.

mod counters;
mod identity;
mod keys;
mod postgres;
mod records;
mod seam;
mod usage;

use std::{
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use serde::{Serialize, de::DeserializeOwned};
use sled::{
    Transactional, Tree,
    transaction::{ConflictableTransactionError, TransactionError},
};

pub use counters::{CooldownRecord, LATENCY_BUCKETS_MS, UsageCounters};
use identity::audit_key;
pub use identity::{Actor, AuditRecord, NodeRecord, Role, TokenRecord};
pub use keys::{BudgetPeriod, ClientKeyRecord};
pub use postgres::PgStore;
pub use records::*;
pub use seam::{Store, StoreBackend, UsageColumns, UsageRows};
pub use usage::{Granularity, ReportRecord, UsageRow};

/// Version byte written in front of every stored value. Bump it (and teach `decode` the
/// old layout) when a record's format changes incompatibly.
pub const SCHEMA_VERSION: u8 = 1;

const META_CONFIG_VERSION: &[u8] = b"config_version";
const META_ACTIVE_KEY_ID: &[u8] = b"active_key_id";
const META_V1_MIGRATED: &[u8] = b"v1_migrated";
const SETTINGS_KEY: &[u8] = b"system";

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled itself failed (I/O, corruption).
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    /// The database (PostgreSQL) failed or could not be reached.
    #[error("database error: {0}")]
    Database(String),
    /// A value could not be decoded.
    #[error("corrupt value in tree `{tree}`: {reason}")]
    Corrupt {
        /// Tree name.
        tree: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// Adding a report to a stored total would overflow the named counter.
    #[error("counter `{field}` would overflow in tree `{tree}`")]
    Overflow {
        /// Tree name.
        tree: &'static str,
        /// The counter.
        field: &'static str,
    },
    /// A value was written by a newer Sidecar.
    #[error(
        "tree `{tree}` holds schema version {found}; this build reads up to {SCHEMA_VERSION}: upgrade sidecar-control"
    )]
    UnsupportedSchema {
        /// Tree name.
        tree: &'static str,
        /// Version byte found.
        found: u8,
    },
}

/// Encodes a value with its schema version byte.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![SCHEMA_VERSION];
    serde_json::to_writer(&mut out, value).expect("records serialize to JSON");
    out
}

/// Decodes a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&SCHEMA_VERSION, body)) => {
            serde_json::from_slice(body).map_err(|e| StoreError::Corrupt { tree, reason: e.to_string() })
        }
        Some((&found, _)) => Err(StoreError::UnsupportedSchema { tree, found }),
        None => Err(StoreError::Corrupt { tree, reason: "empty value".into() }),
    }
}

/// A set of config writes applied atomically, bumping the config version once.
#[derive(Debug, Default)]
pub struct ConfigChange {
    /// Backends to insert or replace.
    pub put_backends: Vec<BackendRecord>,
    /// Backend ids to delete.
    pub delete_backends: Vec<String>,
    /// Pools to insert or replace.
    pub put_pools: Vec<PoolRecord>,
    /// Pool names to delete.
    pub delete_pools: Vec<String>,
    /// New settings.
    pub settings: Option<Settings>,
    /// Tokens to insert or replace.
    pub put_tokens: Vec<TokenRecord>,
    /// Token ids to delete.
    pub delete_tokens: Vec<String>,
    /// Client keys to insert or replace (a revoked key is kept, marked).
    pub put_client_keys: Vec<ClientKeyRecord>,
    /// New active encryption key id (rotation).
    pub active_key_id: Option<String>,
    /// Mark the V1 environment migration as done.
    pub mark_v1_migrated: bool,
    /// The new config version is at least this (an import above the document's version,
    /// a node that holds a higher one): versions never go backwards.
    pub min_version: Option<u64>,
}

/// The embedded single-node store: sled, one tree per entity.
pub struct SledStore {
    db: sled::Db,
    backends: Tree,
    pools: Tree,
    settings: Tree,
    nodes: Tree,
    tokens: Tree,
    token_used: Tree,
    client_keys: Tree,
    usage_m: Tree,
    usage_h: Tree,
    usage_d: Tree,
    cooldowns: Tree,
    report_seq: Tree,
    audit: Tree,
    meta: Tree,
    config_version: AtomicU64,
    /// Flushes asked for so far.
    flush_requests: AtomicU64,
    /// Flush requests the last completed flush covered; held while a flush runs.
    flushed: tokio::sync::Mutex<u64>,
}

fn tx_abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    }
}

fn now_ms() -> i64 {
    crate::util::now_ms()
}

impl SledStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let config = sled::Config::new().path(dir.join("sled"));
        // A store closed a moment ago (a restart in the same process) lets go of its
        // lock when sled's background flusher exits; wait briefly for that rather than
        // fail. Another live process keeps it, and the error says so.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let db = loop {
            match config.open() {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other?,
            }
        };
        let tree = |name: &str| db.open_tree(name);
        let store = Self {
            backends: tree("backends")?,
            pools: tree("pools")?,
            settings: tree("settings")?,
            nodes: tree("nodes")?,
            tokens: tree("tokens")?,
            token_used: tree("token_used")?,
            client_keys: tree("client_keys")?,
            usage_m: tree("usage_m")?,
            usage_h: tree("usage_h")?,
            usage_d: tree("usage_d")?,
            cooldowns: tree("cooldowns")?,
            report_seq: tree("report_seq")?,
            audit: tree("audit")?,
            meta: tree("meta")?,
            db,
            config_version: AtomicU64::new(0),
            flush_requests: AtomicU64::new(0),
            flushed: tokio::sync::Mutex::new(0),
        };
        let version = match store.meta.get(META_CONFIG_VERSION)? {
            Some(v) => decode::<u64>("meta", &v)?,
            None => 0,
        };
        store.config_version.store(version, Ordering::SeqCst);
        Ok(store)
    }

    /// The current config version.
    pub fn config_version(&self) -> u64 {
        self.config_version.load(Ordering::SeqCst)
    }

    /// Applies `change` in one transaction over every config tree, bumps the config
    /// version and appends an audit entry. Returns the new config version.
    ///
    /// Callers serialise writes (`Shared::write` holds the writer lock), so reads done before building the
    /// change are still current when it commits.
    pub fn commit(&self, change: ConfigChange, actor: &Actor, action: &str, target: &str) -> Result<u64, StoreError> {
        let audit_id = self.db.generate_id()?;
        let at_ms = now_ms();
        let trees =
            (&self.backends, &self.pools, &self.settings, &self.tokens, &self.client_keys, &self.meta, &self.audit);
        let version = trees
            .transaction(|(backends, pools, settings, tokens, client_keys, meta, audit)| {
                let current = match meta.get(META_CONFIG_VERSION)? {
                    Some(v) => decode::<u64>("meta", &v).map_err(tx_abort)?,
                    None => 0,
                };
                let version = (current + 1).max(change.min_version.unwrap_or(0));
                for b in &change.put_backends {
                    backends.insert(b.id.as_bytes(), encode(b))?;
                }
                for id in &change.delete_backends {
                    backends.remove(id.as_bytes())?;
                }
                for p in &change.put_pools {
                    pools.insert(p.name.as_bytes(), encode(p))?;
                }
                for name in &change.delete_pools {
                    pools.remove(name.as_bytes())?;
                }
                if let Some(s) = &change.settings {
                    settings.insert(SETTINGS_KEY, encode(s))?;
                }
                for t in &change.put_tokens {
                    tokens.insert(t.id.as_bytes(), encode(t))?;
                }
                for id in &change.delete_tokens {
                    tokens.remove(id.as_bytes())?;
                }
                for k in &change.put_client_keys {
                    client_keys.insert(k.id.as_bytes(), encode(k))?;
                }
                if let Some(key_id) = &change.active_key_id {
                    meta.insert(META_ACTIVE_KEY_ID, encode(key_id))?;
                }
                if change.mark_v1_migrated {
                    meta.insert(META_V1_MIGRATED, encode(&true))?;
                }
                meta.insert(META_CONFIG_VERSION, encode(&version))?;
                let entry = AuditRecord::new(at_ms, actor, action, target, version);
                audit.insert(audit_key(at_ms, audit_id).to_vec(), encode(&entry))?;
                Ok(version)
            })
            .map_err(tx_error)?;
        self.config_version.store(version, Ordering::SeqCst);
        for id in &change.delete_tokens {
            self.token_used.remove(id.as_bytes())?;
        }
        Ok(version)
    }

    /// Waits until everything written so far is on disk.
    ///
    /// One flush runs at a time, and it covers every caller that asked before it began
    /// (group commit). Unbounded concurrent `flush_async` calls deadlocked sled 0.34 under
    /// report load: each runs on its own sled thread holding a shared lock while it waits
    /// for the log to stabilise, a transaction queues for the exclusive lock, and the
    /// next flusher then blocks behind it (found by the 500-node ingestion benchmark).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let wanted = self.flush_requests.fetch_add(1, Ordering::SeqCst) + 1;
        let mut covered = self.flushed.lock().await;
        if *covered >= wanted {
            return Ok(());
        }
        let covering = self.flush_requests.load(Ordering::SeqCst);
        self.db.flush_async().await?;
        *covered = covering;
        Ok(())
    }

    /// Bytes the store takes on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    fn scan<T: DeserializeOwned>(tree: &Tree, name: &'static str) -> Result<Vec<T>, StoreError> {
        tree.iter().values().map(|v| decode(name, &v?)).collect()
    }

    fn get<T: DeserializeOwned>(tree: &Tree, name: &'static str, key: &[u8]) -> Result<Option<T>, StoreError> {
        tree.get(key)?.map(|v| decode(name, &v)).transpose()
    }

    /// Every backend, ordered by id.
    pub fn backends(&self) -> Result<Vec<BackendRecord>, StoreError> {
        Self::scan(&self.backends, "backends")
    }

    /// One backend by id.
    pub fn backend(&self, id: &str) -> Result<Option<BackendRecord>, StoreError> {
        Self::get(&self.backends, "backends", id.as_bytes())
    }

    /// Every pool, in routing order.
    pub fn pools(&self) -> Result<Vec<PoolRecord>, StoreError> {
        let mut pools: Vec<PoolRecord> = Self::scan(&self.pools, "pools")?;
        pools.sort_by(|a, b| a.order.cmp(&b.order).then_with(|| a.name.cmp(&b.name)));
        Ok(pools)
    }

    /// The system settings, if stored.
    pub fn stored_settings(&self) -> Result<Option<Settings>, StoreError> {
        Self::get(&self.settings, "settings", SETTINGS_KEY)
    }

    /// Every token record.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        Self::scan(&self.tokens, "tokens")
    }

    /// Id of the key the stored API keys are sealed with, if any was recorded.
    pub fn active_key_id(&self) -> Result<Option<String>, StoreError> {
        Self::get(&self.meta, "meta", META_ACTIVE_KEY_ID)
    }

    /// Whether the V1 environment migration has run.
    pub fn v1_migrated(&self) -> Result<bool, StoreError> {
        Ok(Self::get(&self.meta, "meta", META_V1_MIGRATED)?.unwrap_or(false))
    }
}

#[cfg(test)]
pub(crate) mod tests;
