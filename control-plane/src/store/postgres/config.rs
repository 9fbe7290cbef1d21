//! Config writes on PostgreSQL: one transaction per change, under the version row's lock.

use serde::Serialize;
use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction, types::Json};

use super::doc;
use crate::{
    store::{Actor, AuditRecord, ConfigChange, StoreError},
    util::now_ms,
};

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

pub(super) async fn commit(
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
    // Wakes the other instances when the transaction commits (they re-read the version).
    sqlx::query("SELECT pg_notify('sidecar_config', $1)").bind(version.to_string()).execute(&mut *tx).await?;
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
