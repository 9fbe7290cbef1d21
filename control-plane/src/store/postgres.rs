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
    collections::BTreeMap,
    future::Future,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use futures::future::BoxFuture;
use serde::{Serialize, de::DeserializeOwned};
use sqlx::{AssertSqlSafe, PgPool, Postgres, Row, Transaction, postgres::PgPoolOptions, types::Json};

use super::{
    Actor, AuditRecord, BackendRecord, ClientKeyRecord, ConfigChange, CooldownRecord, Granularity, NodeRecord,
    PoolRecord, ReportRecord, Settings, StoreBackend, StoreError, TokenRecord, UsageRow, UsageRows,
    usage::{UsageKeyParts, UsageValue, parse_usage_key, rollup_adds},
};
use crate::util::now_ms;

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
    /// The config version as this instance last read or wrote it.
    config_version: AtomicU64,
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
        let store = Self { pool, rt: Some(rt), config_version: AtomicU64::new(0) };
        let version = store.read_config_version()?;
        store.config_version.store(version, Ordering::SeqCst);
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

/// `items` as (key, document) rows.
fn rows_of<T: Serialize>(items: &[T], key: impl Fn(&T) -> &str) -> Vec<(String, serde_json::Value)> {
    items.iter().map(|i| (key(i).to_owned(), serde_json::to_value(i).expect("records serialize"))).collect()
}

/// Upserts `(key, doc)` rows into `table` (its key column `column`).
async fn put_docs(
    tx: &mut Transaction<'_, Postgres>,
    table: &'static str,
    column: &'static str,
    rows: Vec<(String, serde_json::Value)>,
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO {table} ({column}, doc) VALUES ($1, $2) ON CONFLICT ({column}) DO UPDATE SET doc = EXCLUDED.doc"
    );
    for (key, value) in rows {
        // Table and column names are this module's own constants.
        sqlx::query(AssertSqlSafe(sql.as_str())).bind(key).bind(Json(value)).execute(&mut **tx).await?;
    }
    Ok(())
}

async fn delete_keys(
    tx: &mut Transaction<'_, Postgres>,
    table: &'static str,
    column: &'static str,
    keys: &[String],
) -> Result<(), StoreError> {
    if !keys.is_empty() {
        let sql = format!("DELETE FROM {table} WHERE {column} = ANY($1)");
        sqlx::query(AssertSqlSafe(sql)).bind(keys).execute(&mut **tx).await?;
    }
    Ok(())
}

async fn put_meta<T: Serialize + Sync>(
    tx: &mut Transaction<'_, Postgres>,
    key: &str,
    value: &T,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value")
        .bind(key)
        .bind(doc(value))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn commit(
    pool: PgPool,
    change: ConfigChange,
    (actor, action, target): (Actor, String, String),
) -> Result<u64, StoreError> {
    let mut tx = pool.begin().await?;
    let current: Json<u64> = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'config_version' FOR UPDATE")
        .fetch_one(&mut *tx)
        .await?;
    let version = (current.0 + 1).max(change.min_version.unwrap_or(0));
    let backends = rows_of(&change.put_backends, |b| &b.id);
    let pools = rows_of(&change.put_pools, |p| &p.name);
    let tokens = rows_of(&change.put_tokens, |t| &t.id);
    let client_keys = rows_of(&change.put_client_keys, |k| &k.id);
    let settings = change
        .settings
        .as_ref()
        .map(|s| vec![("system".to_owned(), serde_json::to_value(s).expect("settings serialize"))]);
    put_docs(&mut tx, "backends", "id", backends).await?;
    delete_keys(&mut tx, "backends", "id", &change.delete_backends).await?;
    put_docs(&mut tx, "pools", "name", pools).await?;
    delete_keys(&mut tx, "pools", "name", &change.delete_pools).await?;
    if let Some(settings) = settings {
        put_docs(&mut tx, "settings", "key", settings).await?;
    }
    put_docs(&mut tx, "tokens", "id", tokens).await?;
    delete_keys(&mut tx, "tokens", "id", &change.delete_tokens).await?;
    delete_keys(&mut tx, "token_used", "id", &change.delete_tokens).await?;
    put_docs(&mut tx, "client_keys", "id", client_keys).await?;
    if let Some(key_id) = &change.active_key_id {
        put_meta(&mut tx, "active_key_id", key_id).await?;
    }
    if change.mark_v1_migrated {
        put_meta(&mut tx, "v1_migrated", &true).await?;
    }
    put_meta(&mut tx, "config_version", &version).await?;
    let at_ms = now_ms();
    let entry = AuditRecord::new(at_ms, &actor, &action, &target, version);
    sqlx::query("INSERT INTO audit (at_ms, doc) VALUES ($1, $2)")
        .bind(at_ms)
        .bind(doc(&entry))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(version)
}

/// Adds `adds` (per granularity: sled rollup key → value) into the usage table inside `tx`:
/// the rows there are read and locked, merged with overflow checks, and written back.
async fn merge_usage(
    tx: &mut Transaction<'_, Postgres>,
    adds: Vec<(Granularity, BTreeMap<Vec<u8>, UsageValue>)>,
) -> Result<(), StoreError> {
    let mut rows: Vec<(Granularity, UsageKeyParts, UsageValue)> = Vec::new();
    for (g, map) in adds {
        for (key, value) in map {
            let parts = parse_usage_key(&key).expect("keys made by rollup_adds parse");
            rows.push((g, parts, value));
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    let col = |f: &dyn Fn(&(Granularity, UsageKeyParts, UsageValue)) -> String| -> Vec<String> {
        rows.iter().map(f).collect()
    };
    let gs: Vec<i16> = rows.iter().map(|r| granularity_code(r.0)).collect();
    let buckets: Vec<i64> = rows.iter().map(|r| r.1.bucket_ms).collect();
    let (backends, models) = (col(&|r| r.1.backend_id.clone()), col(&|r| r.1.model.clone()));
    let (nodes, keys) = (col(&|r| r.1.node_id.clone()), col(&|r| r.1.key_id.clone()));
    let existing = sqlx::query(
        "SELECT u.granularity, u.bucket_ms, u.backend_id, u.model, u.node_id, u.key_id, u.pool, u.counters
         FROM usage u
         JOIN UNNEST($1::int2[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[])
           AS t(g, b, be, m, n, k)
           ON u.granularity = t.g AND u.bucket_ms = t.b AND u.backend_id = t.be AND u.model = t.m
          AND u.node_id = t.n AND u.key_id = t.k
         FOR UPDATE OF u",
    )
    .bind(&gs)
    .bind(&buckets)
    .bind(&backends)
    .bind(&models)
    .bind(&nodes)
    .bind(&keys)
    .fetch_all(&mut **tx)
    .await?;
    type RowKey = (i16, i64, String, String, String, String);
    let mut stored: BTreeMap<RowKey, UsageValue> = BTreeMap::new();
    for row in existing {
        let key: RowKey = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4), row.get(5));
        let counters: Json<super::UsageCounters> = row.get(7);
        stored.insert(key, UsageValue { pool: row.get(6), counters: counters.0 });
    }
    let mut pools = Vec::with_capacity(rows.len());
    let mut counters = Vec::with_capacity(rows.len());
    for (i, (g, _, add)) in rows.iter().enumerate() {
        let key: RowKey =
            (gs[i], buckets[i], backends[i].clone(), models[i].clone(), nodes[i].clone(), keys[i].clone());
        let mut value = stored.remove(&key).unwrap_or_default();
        value.checked_merge(add, g.tree_name())?;
        pools.push(value.pool);
        counters.push(serde_json::to_string(&value.counters).expect("counters serialize"));
    }
    sqlx::query(
        "INSERT INTO usage (granularity, bucket_ms, backend_id, model, node_id, key_id, pool, counters)
         SELECT g, b, be, m, n, k, p, c::jsonb
         FROM UNNEST($1::int2[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[])
           AS t(g, b, be, m, n, k, p, c)
         ON CONFLICT (granularity, bucket_ms, backend_id, model, node_id, key_id)
         DO UPDATE SET pool = EXCLUDED.pool, counters = EXCLUDED.counters",
    )
    .bind(&gs)
    .bind(&buckets)
    .bind(&backends)
    .bind(&models)
    .bind(&nodes)
    .bind(&keys)
    .bind(&pools)
    .bind(&counters)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Serialises the transaction with every other one that takes the same `lock` (a node's
/// reports, an import's marks).
async fn xact_lock(tx: &mut Transaction<'_, Postgres>, lock: String) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))").bind(lock).execute(&mut **tx).await?;
    Ok(())
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
        let version = self.run(|pool| commit(pool, change, who))?;
        self.config_version.fetch_max(version, Ordering::SeqCst);
        Ok(version)
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
        let seq = to_i64(seq, "report_marks")?;
        let adds = rollup_adds(node_id, records, Granularity::ALL)?;
        let adds: Vec<_> = Granularity::ALL.into_iter().zip(adds).collect();
        let (node_id, boot_id) = (node_id.to_owned(), boot_id.to_owned());
        self.run(|pool| async move {
            let mut tx = pool.begin().await?;
            xact_lock(&mut tx, format!("report:{node_id}")).await?;
            let last: Option<i64> =
                sqlx::query_scalar("SELECT seq FROM report_marks WHERE node_id = $1 AND boot_id = $2")
                    .bind(&node_id)
                    .bind(&boot_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if last.is_some_and(|last| seq <= last) {
                return Ok(false);
            }
            merge_usage(&mut tx, adds).await?;
            sqlx::query(
                "INSERT INTO report_marks (node_id, boot_id, seq) VALUES ($1, $2, $3)
                 ON CONFLICT (node_id, boot_id) DO UPDATE SET seq = EXCLUDED.seq",
            )
            .bind(&node_id)
            .bind(&boot_id)
            .bind(seq)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    fn import_usage(&self, node_id: &str, records: &[(String, ReportRecord)]) -> Result<usize, StoreError> {
        let (node_id, records) = (node_id.to_owned(), records.to_vec());
        self.run(|pool| async move {
            let mut tx = pool.begin().await?;
            xact_lock(&mut tx, format!("import:{node_id}")).await?;
            let mut new = Vec::new();
            for (mark, record) in &records {
                let inserted =
                    sqlx::query("INSERT INTO import_marks (node_id, mark) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                        .bind(&node_id)
                        .bind(mark)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                if inserted == 1 {
                    new.push(record);
                }
            }
            let of = [Granularity::Hour, Granularity::Day];
            let adds = rollup_adds(&node_id, new.iter().copied(), of)?;
            merge_usage(&mut tx, of.into_iter().zip(adds).collect()).await?;
            tx.commit().await?;
            Ok(new.len())
        })
    }

    fn usage_rows(&self, granularity: Granularity, since_ms: i64, until_ms: i64) -> UsageRows {
        let lo = granularity.floor(since_ms).max(0);
        let hi = until_ms.max(0).max(lo);
        let read = self.run(|pool| async move {
            let rows = sqlx::query(
                "SELECT bucket_ms, backend_id, model, node_id, key_id, pool, counters FROM usage
                 WHERE granularity = $1 AND bucket_ms >= $2 AND bucket_ms < $3
                 ORDER BY bucket_ms, backend_id COLLATE \"C\", model COLLATE \"C\", node_id COLLATE \"C\",
                          key_id COLLATE \"C\"",
            )
            .bind(granularity_code(granularity))
            .bind(lo)
            .bind(hi)
            .fetch_all(&pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|row| {
                    let counters: Json<super::UsageCounters> = row.get(6);
                    UsageRow {
                        bucket_ms: row.get(0),
                        backend_id: row.get(1),
                        model: row.get(2),
                        node_id: row.get(3),
                        key_id: row.get(4),
                        pool: row.get(5),
                        counters: counters.0,
                    }
                })
                .collect::<Vec<_>>())
        });
        match read {
            Ok(rows) => Box::new(rows.into_iter().map(Ok)),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    fn sweep_usage(&self, granularity: Granularity, before_ms: i64, max: usize) -> Result<usize, StoreError> {
        self.run(|pool| async move {
            let n = sqlx::query(
                "DELETE FROM usage WHERE ctid IN (
                   SELECT ctid FROM usage WHERE granularity = $1 AND bucket_ms < $2 LIMIT $3)",
            )
            .bind(granularity_code(granularity))
            .bind(before_ms)
            .bind(max as i64)
            .execute(&pool)
            .await?
            .rows_affected();
            Ok(n as usize)
        })
    }

    fn record_cooldown(&self, record: &CooldownRecord) -> Result<(), StoreError> {
        let record = record.clone();
        self.run(|pool| async move {
            sqlx::query("INSERT INTO cooldowns (start_ms, doc) VALUES ($1, $2)")
                .bind(record.start_ms)
                .bind(doc(&record))
                .execute(&pool)
                .await?;
            Ok(())
        })
    }

    fn cooldowns(&self, since_ms: i64, until_ms: i64) -> Result<Vec<CooldownRecord>, StoreError> {
        self.run(|pool| async move {
            let rows: Vec<Json<CooldownRecord>> = sqlx::query_scalar(
                "SELECT doc FROM cooldowns WHERE start_ms >= $1 AND start_ms < $2 ORDER BY start_ms, id",
            )
            .bind(since_ms)
            .bind(until_ms)
            .fetch_all(&pool)
            .await?;
            Ok(rows.into_iter().map(|j| j.0).collect())
        })
    }

    fn sweep_cooldowns(&self, before_ms: i64, max: usize) -> Result<usize, StoreError> {
        self.run(|pool| async move {
            let n = sqlx::query(
                "DELETE FROM cooldowns WHERE id IN (SELECT id FROM cooldowns WHERE start_ms < $1 LIMIT $2)",
            )
            .bind(before_ms)
            .bind(max as i64)
            .execute(&pool)
            .await?
            .rows_affected();
            Ok(n as usize)
        })
    }
}
