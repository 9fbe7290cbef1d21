//! The control plane's store on PostgreSQL, for more than one control-plane instance on
//! one database (`SIDECAR_STORE=postgres://…`). The same records as the sled store:
//! config entities as JSON documents, usage rollups in one table keyed by granularity,
//! bucket, backend, model, node and client key (schema in `migrations/`, applied at open).
//!
//! - A config write and its version bump are one transaction; the version is one row of
//!   `meta`, locked by the transaction, so versions strictly increase across instances.
//! - A report batch and its mark (`report_marks`: the highest batch applied per node
//!   process) commit together, whichever instance receives it; a node's batches are
//!   serialised by a transaction-scoped advisory lock on the node id.
//!
//! The domain code calls the store synchronously, as it does sled. Queries run on a small
//! runtime of the store's own (so a caller on any runtime, or none, can wait for one), and
//! the caller's thread waits for the answer, as it would for a disk read.

use std::{
    future::Future,
    sync::Arc,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use futures::future::BoxFuture;
use serde::{Serialize, de::DeserializeOwned};
use sqlx::{PgPool, postgres::PgPoolOptions, types::Json};

use super::{
    Actor, AuditRecord, BackendRecord, ClientKeyRecord, ConfigChange, CooldownRecord, Granularity, NodeRecord,
    PoolRecord, ReportRecord, Settings, StoreBackend, StoreError, TokenRecord, UsageRows,
};
use crate::util::now_ms;

mod cluster;
mod config;
mod follow;
mod usage;

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Database(format!("migrating the schema: {e}"))
    }
}

/// The store on PostgreSQL.
pub struct PgStore {
    pool: PgPool,
    /// Runs the queries; `None` once dropped.
    rt: Option<tokio::runtime::Runtime>,
    /// The config version as this instance last read, wrote or heard of it.
    config_version: Arc<AtomicU64>,
    /// Tells the control plane of a version another instance committed.
    versions: tokio::sync::watch::Sender<u64>,
    /// The link to the other instances, once asked for.
    cluster: std::sync::OnceLock<Arc<cluster::PgCluster>>,
}

fn granularity_code(g: Granularity) -> i16 {
    match g {
        Granularity::Minute => 0,
        Granularity::Hour => 1,
        Granularity::Day => 2,
    }
}

fn to_i64(n: u64, what: &'static str) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Overflow { tree: what, field: "seq" })
}

/// `value` as a JSON document.
fn doc<T: Serialize>(value: &T) -> Json<&T> {
    Json(value)
}

impl PgStore {
    /// Connects to `url` (`postgres://user:pass@host:port/db`) and brings the schema up to
    /// date. The URL is never logged (it may hold a password).
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sidecar-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Database(format!("starting the store's runtime: {e}")))?;
        let url = url.to_owned();
        let pool = wait(&rt, async move {
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect(&url)
                .await
                .map_err(|e| StoreError::Database(format!("connecting to PostgreSQL: {e}")))?;
            sqlx::migrate!("./migrations").run(&pool).await?;
            Ok(pool)
        })?;
        let (versions, _) = tokio::sync::watch::channel(0);
        let store = Self {
            pool,
            rt: Some(rt),
            config_version: Arc::new(AtomicU64::new(0)),
            versions,
            cluster: std::sync::OnceLock::new(),
        };
        let version = store.read_config_version()?;
        store.config_version.store(version, Ordering::SeqCst);
        store.versions.send_replace(version);
        let follow = follow::follow(store.pool.clone(), store.config_version.clone(), store.versions.clone());
        store.rt.as_ref().expect("the runtime runs").spawn(follow);
        Ok(store)
    }

    /// Runs `f` with the pool on the store's runtime and waits for it.
    fn run<T, F>(&self, f: impl FnOnce(PgPool) -> F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        wait(self.rt.as_ref().expect("the store's runtime runs until drop"), f(self.pool.clone()))
    }

    /// The config version as the database holds it now.
    pub fn read_config_version(&self) -> Result<u64, StoreError> {
        self.run(|pool| async move {
            let v: Json<u64> =
                sqlx::query_scalar("SELECT value FROM meta WHERE key = 'config_version'").fetch_one(&pool).await?;
            Ok(v.0)
        })
    }

    fn docs<T: DeserializeOwned + Send + Unpin + 'static>(&self, sql: &'static str) -> Result<Vec<T>, StoreError> {
        self.run(|pool| async move {
            let rows: Vec<Json<T>> = sqlx::query_scalar(sql).fetch_all(&pool).await?;
            Ok(rows.into_iter().map(|j| j.0).collect())
        })
    }

    fn doc_by<T: DeserializeOwned + Send + Unpin + 'static>(
        &self,
        sql: &'static str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let key = key.to_owned();
        self.run(|pool| async move {
            let row: Option<Json<T>> = sqlx::query_scalar(sql).bind(key).fetch_optional(&pool).await?;
            Ok(row.map(|j| j.0))
        })
    }

    fn meta<T: DeserializeOwned + Send + Unpin + 'static>(&self, key: &'static str) -> Result<Option<T>, StoreError> {
        self.doc_by("SELECT value FROM meta WHERE key = $1", key)
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Dropped on an async worker (a test's runtime), a runtime may not block.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Runs `fut` on `rt` and waits on this thread for its result.
fn wait<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().map_err(|_| StoreError::Database("the store's runtime stopped".into()))?
}

impl StoreBackend for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn config_version(&self) -> u64 {
        self.config_version.load(Ordering::SeqCst)
    }

    fn commit(&self, change: ConfigChange, actor: &Actor, action: &str, target: &str) -> Result<u64, StoreError> {
        let who = (actor.clone(), action.to_owned(), target.to_owned());
        let version = self.run(|pool| config::commit(pool, change, who))?;
        // This instance publishes its own writes; the watch is for the others'.
        self.config_version.fetch_max(version, Ordering::SeqCst);
        Ok(version)
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.read_config_version().map(|_| ())
    }

    fn watch_versions(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.versions.subscribe())
    }

    fn cluster(&self, name: &str) -> Option<Arc<dyn crate::cluster::ClusterLink>> {
        let rt = self.rt.as_ref().expect("the store's runtime runs until drop");
        let link = self.cluster.get_or_init(|| cluster::PgCluster::start(rt, self.pool.clone(), name));
        Some(link.clone())
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        // A committed transaction is durable.
        Box::pin(async { Ok(()) })
    }

    fn size_on_disk(&self) -> u64 {
        self.run(|pool| async move {
            let n: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())").fetch_one(&pool).await?;
            Ok(n.max(0) as u64)
        })
        .unwrap_or(0)
    }

    fn backends(&self) -> Result<Vec<BackendRecord>, StoreError> {
        self.docs("SELECT doc FROM backends ORDER BY id COLLATE \"C\"")
    }

    fn backend(&self, id: &str) -> Result<Option<BackendRecord>, StoreError> {
        self.doc_by("SELECT doc FROM backends WHERE id = $1", id)
    }

    fn pools(&self) -> Result<Vec<PoolRecord>, StoreError> {
        let mut pools: Vec<PoolRecord> = self.docs("SELECT doc FROM pools")?;
        pools.sort_by(|a, b| a.order.cmp(&b.order).then_with(|| a.name.cmp(&b.name)));
        Ok(pools)
    }

    fn stored_settings(&self) -> Result<Option<Settings>, StoreError> {
        self.doc_by("SELECT doc FROM settings WHERE key = $1", "system")
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.docs("SELECT doc FROM tokens ORDER BY id COLLATE \"C\"")
    }

    fn active_key_id(&self) -> Result<Option<String>, StoreError> {
        self.meta("active_key_id")
    }

    fn v1_migrated(&self) -> Result<bool, StoreError> {
        Ok(self.meta("v1_migrated")?.unwrap_or(false))
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.docs("SELECT doc FROM nodes ORDER BY id COLLATE \"C\"")
    }

    fn node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.doc_by("SELECT doc FROM nodes WHERE id = $1", id)
    }

    fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        let node = node.clone();
        self.run(|pool| async move {
            sqlx::query(
                "INSERT INTO nodes (id, doc) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET doc = EXCLUDED.doc",
            )
            .bind(&node.id)
            .bind(doc(&node))
            .execute(&pool)
            .await?;
            Ok(())
        })
    }

    fn touch_token(&self, id: &str, at_ms: i64) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.run(|pool| async move {
            sqlx::query(
                "INSERT INTO token_used (id, at_ms) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET at_ms = EXCLUDED.at_ms",
            )
            .bind(id)
            .bind(at_ms)
            .execute(&pool)
            .await?;
            Ok(())
        })
    }

    fn tokens_last_used(&self) -> Result<std::collections::HashMap<String, i64>, StoreError> {
        self.run(|pool| async move {
            let rows: Vec<(String, i64)> = sqlx::query_as("SELECT id, at_ms FROM token_used").fetch_all(&pool).await?;
            Ok(rows.into_iter().collect())
        })
    }

    fn audit_event(&self, actor: &Actor, action: &str, target: &str) -> Result<(), StoreError> {
        let at_ms = now_ms();
        let entry = AuditRecord::new(at_ms, actor, action, target, self.config_version());
        self.run(|pool| async move {
            sqlx::query("INSERT INTO audit (at_ms, doc) VALUES ($1, $2)")
                .bind(at_ms)
                .bind(doc(&entry))
                .execute(&pool)
                .await?;
            Ok(())
        })
    }

    fn audit(&self, since_ms: i64, until_ms: i64) -> Result<Vec<AuditRecord>, StoreError> {
        self.run(|pool| async move {
            let rows: Vec<Json<AuditRecord>> =
                sqlx::query_scalar("SELECT doc FROM audit WHERE at_ms >= $1 AND at_ms < $2 ORDER BY at_ms, id")
                    .bind(since_ms)
                    .bind(until_ms)
                    .fetch_all(&pool)
                    .await?;
            Ok(rows.into_iter().map(|j| j.0).collect())
        })
    }

    fn client_keys(&self) -> Result<Vec<ClientKeyRecord>, StoreError> {
        self.docs("SELECT doc FROM client_keys ORDER BY id COLLATE \"C\"")
    }

    fn apply_report(
        &self,
        node_id: &str,
        boot_id: &str,
        seq: u64,
        records: &[ReportRecord],
    ) -> Result<bool, StoreError> {
        self.pg_apply_report(node_id, boot_id, seq, records)
    }

    fn import_usage(&self, node_id: &str, records: &[(String, ReportRecord)]) -> Result<usize, StoreError> {
        self.pg_import_usage(node_id, records)
    }

    fn usage_rows(&self, granularity: Granularity, since_ms: i64, until_ms: i64) -> UsageRows {
        self.pg_usage_rows(granularity, since_ms, until_ms)
    }

    fn usage_collapsed(
        &self,
        granularity: Granularity,
        since_ms: i64,
        until_ms: i64,
        keep: super::UsageColumns,
    ) -> Option<UsageRows> {
        Some(self.pg_usage_collapsed(granularity, since_ms, until_ms, keep))
    }

    fn sweep_usage(&self, granularity: Granularity, before_ms: i64, max: usize) -> Result<usize, StoreError> {
        self.pg_sweep_usage(granularity, before_ms, max)
    }

    fn record_cooldown(&self, record: &CooldownRecord) -> Result<(), StoreError> {
        self.pg_record_cooldown(record)
    }

    fn cooldowns(&self, since_ms: i64, until_ms: i64) -> Result<Vec<CooldownRecord>, StoreError> {
        self.pg_cooldowns(since_ms, until_ms)
    }

    fn sweep_cooldowns(&self, before_ms: i64, max: usize) -> Result<usize, StoreError> {
        self.pg_sweep_cooldowns(before_ms, max)
    }
}
