//! The store seam: what the control plane's domain code needs of a store, as one trait
//! ([`StoreBackend`]) with two implementations — sled, embedded, for one control plane
//! (the default), and PostgreSQL, for several — and the handle the rest of the code holds
//! ([`Store`]), which dereferences to the trait and adds what every store does the same
//! way on top of it.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use futures::future::BoxFuture;

use super::{
    Actor, AuditRecord, BackendRecord, ClientKeyRecord, ConfigChange, CooldownRecord, Granularity, NodeRecord,
    PoolRecord, ReportRecord, Settings, SledStore, Spill, StoreError, TokenRecord, UsageCounters, UsageRow,
};

/// Which of a rollup row's dimensions a statistics query needs (backend, model and pool
/// always); the others may be summed away in the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageColumns {
    /// The time bucket.
    pub time: bool,
    /// The node.
    pub node: bool,
    /// The client key.
    pub key: bool,
}

/// Rollup rows as a store reads them, in key order.
pub type UsageRows = Box<dyn Iterator<Item = Result<UsageRow, StoreError>> + Send>;

/// Everything the domain code asks of a store. Calls are synchronous (a store may block
/// the calling thread briefly, as a disk read does); `flush` is the one wait.
pub trait StoreBackend: Send + Sync {
    /// Which store this is (`sled` or `postgres`), for `/health` and logs.
    fn kind(&self) -> &'static str;
    /// The current config version.
    fn config_version(&self) -> u64;
    /// Applies `change` in one transaction, bumps the config version once and appends an
    /// audit entry. Returns the new config version.
    fn commit(&self, change: ConfigChange, actor: &Actor, action: &str, target: &str) -> Result<u64, StoreError>;
    /// Whether the store answers now (a database round trip; always for an embedded store).
    fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Config versions committed by anyone (another control-plane instance on the same
    /// database included), as they become known; `None` for a store only this process
    /// writes.
    fn watch_versions(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    /// The link to other control-plane instances on the same store, for an instance
    /// named `name`; `None` for a store only this process uses (it then always leads).
    fn cluster(&self, _name: &str) -> Option<std::sync::Arc<dyn crate::cluster::ClusterLink>> {
        None
    }
    /// Waits until everything written so far is durable.
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Bytes the store takes.
    fn size_on_disk(&self) -> u64;
    /// Every backend, ordered by id.
    fn backends(&self) -> Result<Vec<BackendRecord>, StoreError>;
    /// One backend by id.
    fn backend(&self, id: &str) -> Result<Option<BackendRecord>, StoreError>;
    /// Every pool, in routing order.
    fn pools(&self) -> Result<Vec<PoolRecord>, StoreError>;
    /// The system settings, if stored.
    fn stored_settings(&self) -> Result<Option<Settings>, StoreError>;
    /// Every token record.
    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Id of the key the stored API keys are sealed with, if any was recorded.
    fn active_key_id(&self) -> Result<Option<String>, StoreError>;
    /// Whether the V1 environment migration has run.
    fn v1_migrated(&self) -> Result<bool, StoreError>;
    /// Every node the control plane has seen.
    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;
    /// One node by id.
    fn node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError>;
    /// Saves a node's record (not a config write).
    fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError>;
    /// Records when a token last authenticated (not a config write).
    fn touch_token(&self, id: &str, at_ms: i64) -> Result<(), StoreError>;
    /// When each token last authenticated, by token id.
    fn tokens_last_used(&self) -> Result<std::collections::HashMap<String, i64>, StoreError>;
    /// Appends an audit entry for something that is not a config write.
    fn audit_event(&self, actor: &Actor, action: &str, target: &str) -> Result<(), StoreError>;
    /// Audit entries in `[since_ms, until_ms)`.
    fn audit(&self, since_ms: i64, until_ms: i64) -> Result<Vec<AuditRecord>, StoreError>;
    /// Every client key, revoked ones included, ordered by id.
    fn client_keys(&self) -> Result<Vec<ClientKeyRecord>, StoreError>;
    /// Applies one usage report batch unless `(node_id, boot_id)` already applied `seq` or
    /// a later one, in one transaction with the mark. Returns whether it was applied.
    fn apply_report(
        &self,
        node_id: &str,
        boot_id: &str,
        seq: u64,
        records: &[ReportRecord],
    ) -> Result<bool, StoreError>;
    /// Adds usage history to the hour and day rollups under `node_id`, each `(mark,
    /// record)` once. Returns how many records were added.
    fn import_usage(&self, node_id: &str, records: &[(String, ReportRecord)]) -> Result<usize, StoreError>;
    /// Rollup rows of `granularity` whose bucket overlaps `[since_ms, until_ms)`, in key
    /// order (time, backend, model, node, key).
    fn usage_rows(&self, granularity: Granularity, since_ms: i64, until_ms: i64) -> UsageRows;
    /// As [`StoreBackend::usage_rows`], summed in the store over the dimensions `keep`
    /// leaves out (their values read as empty, time as 0), in no particular order; `None`
    /// when the store cannot (the caller then sums the rows itself).
    fn usage_collapsed(
        &self,
        _granularity: Granularity,
        _since_ms: i64,
        _until_ms: i64,
        _keep: UsageColumns,
    ) -> Option<UsageRows> {
        None
    }
    /// Deletes at most `max` rollup rows of `granularity` older than `before_ms`.
    fn sweep_usage(&self, granularity: Granularity, before_ms: i64, max: usize) -> Result<usize, StoreError>;
    /// Records a fleet-wide cooldown in the history.
    fn record_cooldown(&self, record: &CooldownRecord) -> Result<(), StoreError>;
    /// Cooldowns that started in `[since_ms, until_ms)`, oldest first.
    fn cooldowns(&self, since_ms: i64, until_ms: i64) -> Result<Vec<CooldownRecord>, StoreError>;
    /// Deletes at most `max` cooldowns that started before `before_ms`.
    fn sweep_cooldowns(&self, before_ms: i64, max: usize) -> Result<usize, StoreError>;
}

/// The store the control plane holds: one of the [`StoreBackend`]s.
#[derive(Clone)]
pub struct Store(Arc<dyn StoreBackend>);

impl std::ops::Deref for Store {
    type Target = dyn StoreBackend;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl Store {
    /// Opens (creating if needed) the sled store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Ok(Self(Arc::new(SledStore::open(dir)?)))
    }

    /// A store over `backend`.
    pub fn with(backend: impl StoreBackend + 'static) -> Self {
        Self(Arc::new(backend))
    }

    /// Creates what must exist from the first start: the built-in pools and the settings.
    pub fn initialize(&self, initial_settings: &Settings) -> Result<(), StoreError> {
        let pools = self.pools()?;
        let mut change = ConfigChange::default();
        for (name, order, description) in
            [("primary", 0, "Tried first."), ("fallback", 100, "Used when no primary backend can serve.")]
        {
            if !pools.iter().any(|p| p.name == name) {
                change.put_pools.push(PoolRecord {
                    name: name.into(),
                    order,
                    description: description.into(),
                    builtin: true,
                    spill: Spill::OnBusy,
                });
            }
        }
        if self.stored_settings()?.is_none() {
            change.settings = Some(initial_settings.clone());
        }
        if !change.put_pools.is_empty() || change.settings.is_some() {
            self.commit(change, &Actor::system(), "Initialize", "store")?;
        }
        Ok(())
    }

    /// The system settings.
    pub fn settings(&self) -> Result<Settings, StoreError> {
        Ok(self.stored_settings()?.unwrap_or_default())
    }

    /// [`StoreBackend::usage_rows`], collected.
    pub fn usage(&self, granularity: Granularity, since_ms: i64, until_ms: i64) -> Result<Vec<UsageRow>, StoreError> {
        self.usage_rows(granularity, since_ms, until_ms).collect()
    }

    /// Per-minute usage in `[since_ms, until_ms)` summed over nodes:
    /// (minute, backend id, model, counters), ordered by minute, backend, model.
    pub fn usage_minutes(
        &self,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<(i64, String, String, UsageCounters)>, StoreError> {
        let mut sums: BTreeMap<(i64, String, String), UsageCounters> = BTreeMap::new();
        for row in self.usage_rows(Granularity::Minute, since_ms, until_ms) {
            let row = row?;
            sums.entry((row.bucket_ms, row.backend_id, row.model)).or_default().merge(&row.counters);
        }
        Ok(sums.into_iter().map(|((minute, backend, model), counters)| (minute, backend, model, counters)).collect())
    }
}

/// The sled store behind the seam: its own methods.
impl StoreBackend for SledStore {
    fn kind(&self) -> &'static str {
        "sled"
    }
    fn config_version(&self) -> u64 {
        SledStore::config_version(self)
    }
    fn commit(&self, change: ConfigChange, actor: &Actor, action: &str, target: &str) -> Result<u64, StoreError> {
        SledStore::commit(self, change, actor, action, target)
    }
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(SledStore::flush(self))
    }
    fn size_on_disk(&self) -> u64 {
        SledStore::size_on_disk(self)
    }
    fn backends(&self) -> Result<Vec<BackendRecord>, StoreError> {
        SledStore::backends(self)
    }
    fn backend(&self, id: &str) -> Result<Option<BackendRecord>, StoreError> {
        SledStore::backend(self, id)
    }
    fn pools(&self) -> Result<Vec<PoolRecord>, StoreError> {
        SledStore::pools(self)
    }
    fn stored_settings(&self) -> Result<Option<Settings>, StoreError> {
        SledStore::stored_settings(self)
    }
    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        SledStore::tokens(self)
    }
    fn active_key_id(&self) -> Result<Option<String>, StoreError> {
        SledStore::active_key_id(self)
    }
    fn v1_migrated(&self) -> Result<bool, StoreError> {
        SledStore::v1_migrated(self)
    }
    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        SledStore::nodes(self)
    }
    fn node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        SledStore::node(self, id)
    }
    fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        SledStore::put_node(self, node)
    }
    fn touch_token(&self, id: &str, at_ms: i64) -> Result<(), StoreError> {
        SledStore::touch_token(self, id, at_ms)
    }
    fn tokens_last_used(&self) -> Result<std::collections::HashMap<String, i64>, StoreError> {
        SledStore::tokens_last_used(self)
    }
    fn audit_event(&self, actor: &Actor, action: &str, target: &str) -> Result<(), StoreError> {
        SledStore::audit_event(self, actor, action, target)
    }
    fn audit(&self, since_ms: i64, until_ms: i64) -> Result<Vec<AuditRecord>, StoreError> {
        SledStore::audit(self, since_ms, until_ms)
    }
    fn client_keys(&self) -> Result<Vec<ClientKeyRecord>, StoreError> {
        SledStore::client_keys(self)
    }
    fn apply_report(
        &self,
        node_id: &str,
        boot_id: &str,
        seq: u64,
        records: &[ReportRecord],
    ) -> Result<bool, StoreError> {
        SledStore::apply_report(self, node_id, boot_id, seq, records)
    }
    fn import_usage(&self, node_id: &str, records: &[(String, ReportRecord)]) -> Result<usize, StoreError> {
        SledStore::import_usage(self, node_id, records)
    }
    fn usage_rows(&self, granularity: Granularity, since_ms: i64, until_ms: i64) -> UsageRows {
        Box::new(SledStore::usage_rows(self, granularity, since_ms, until_ms))
    }
    fn sweep_usage(&self, granularity: Granularity, before_ms: i64, max: usize) -> Result<usize, StoreError> {
        SledStore::sweep_usage(self, granularity, before_ms, max)
    }
    fn record_cooldown(&self, record: &CooldownRecord) -> Result<(), StoreError> {
        SledStore::record_cooldown(self, record)
    }
    fn cooldowns(&self, since_ms: i64, until_ms: i64) -> Result<Vec<CooldownRecord>, StoreError> {
        SledStore::cooldowns(self, since_ms, until_ms)
    }
    fn sweep_cooldowns(&self, before_ms: i64, max: usize) -> Result<usize, StoreError> {
        SledStore::sweep_cooldowns(self, before_ms, max)
    }
}
