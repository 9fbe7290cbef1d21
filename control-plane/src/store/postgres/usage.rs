//! Usage rollups, report marks and the cooldown history on PostgreSQL.

use std::collections::BTreeMap;

use sqlx::{Postgres, Row, Transaction, types::Json};

use super::{PgStore, doc, granularity_code, to_i64};
use crate::store::{
    CooldownRecord, Granularity, ReportRecord, StoreError, UsageRow, UsageRows,
    usage::{UsageKeyParts, UsageValue, parse_usage_key, rollup_adds},
};

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
        let counters: Json<crate::store::UsageCounters> = row.get(7);
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

impl PgStore {
    pub(super) fn pg_apply_report(
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

    pub(super) fn pg_import_usage(
        &self,
        node_id: &str,
        records: &[(String, ReportRecord)],
    ) -> Result<usize, StoreError> {
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

    pub(super) fn pg_usage_rows(&self, granularity: Granularity, since_ms: i64, until_ms: i64) -> UsageRows {
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
                    let counters: Json<crate::store::UsageCounters> = row.get(6);
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

    /// Rollup rows summed in SQL over the dimensions `keep` leaves out: one row per
    /// (time, backend, model, node, key, pool) still distinguished. Counters are summed
    /// field by field; the histogram bucket by bucket, as long as the longest summed.
    pub(super) fn pg_usage_collapsed(
        &self,
        granularity: Granularity,
        since_ms: i64,
        until_ms: i64,
        keep: crate::store::UsageColumns,
    ) -> UsageRows {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(collapsed_sql);
        let lo = granularity.floor(since_ms).max(0);
        let hi = until_ms.max(0).max(lo);
        let read = self.run(move |pool| async move {
            let rows = sqlx::query(SQL.as_str())
                .bind(granularity_code(granularity))
                .bind(lo)
                .bind(hi)
                .bind(keep.time)
                .bind(keep.node)
                .bind(keep.key)
                .fetch_all(&pool)
                .await?;
            rows.into_iter()
                .map(|row| {
                    let Json(mut counters): Json<crate::store::UsageCounters> = row.try_get(6)?;
                    let len: Option<i32> = row.try_get(7)?;
                    counters.latency_histogram.truncate(len.unwrap_or(0).max(0) as usize);
                    Ok(UsageRow {
                        bucket_ms: row.try_get(0)?,
                        backend_id: row.try_get(1)?,
                        model: row.try_get(2)?,
                        node_id: row.try_get(3)?,
                        key_id: row.try_get(4)?,
                        pool: row.try_get(5)?,
                        counters,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(StoreError::from)
        });
        match read {
            Ok(rows) => Box::new(rows.into_iter().map(Ok)),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    pub(super) fn pg_sweep_usage(
        &self,
        granularity: Granularity,
        before_ms: i64,
        max: usize,
    ) -> Result<usize, StoreError> {
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

    pub(super) fn pg_record_cooldown(&self, record: &CooldownRecord) -> Result<(), StoreError> {
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

    pub(super) fn pg_cooldowns(&self, since_ms: i64, until_ms: i64) -> Result<Vec<CooldownRecord>, StoreError> {
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

    pub(super) fn pg_sweep_cooldowns(&self, before_ms: i64, max: usize) -> Result<usize, StoreError> {
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

/// The query behind [`PgStore::pg_usage_collapsed`]: $1 granularity, $2..$3 the bucket
/// range, $4 $5 $6 whether time, node and key stay distinguished. Each row's counters are
/// read once (`jsonb_to_record`), then summed column by column.
fn collapsed_sql() -> String {
    const COUNTS: [&str; 15] = [
        "attempts",
        "answered",
        "answered_errors",
        "succeeded",
        "errors_429",
        "errors_5xx",
        "errors_timeout",
        "errors_connect",
        "errors_4xx",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "latency_ms_sum",
        "ttft_ms_sum",
        "ttft_count",
    ];
    let mut fields: Vec<String> = COUNTS.iter().map(|f| format!("'{f}', coalesce(sum(c.{f}), 0)")).collect();
    fields.push("'cost_usd', coalesce(sum(c.cost_usd), 0)".to_owned());
    let buckets: Vec<String> = (0..=crate::store::LATENCY_BUCKETS_MS.len())
        .map(|i| format!("coalesce(sum((c.latency_histogram->>{i})::bigint), 0)"))
        .collect();
    fields.push(format!("'latency_histogram', jsonb_build_array({})", buckets.join(", ")));
    let columns: Vec<String> = COUNTS.iter().map(|f| format!("{f} bigint")).collect();
    format!(
        "SELECT CASE WHEN $4 THEN u.bucket_ms ELSE 0 END, u.backend_id, u.model, \
                CASE WHEN $5 THEN u.node_id ELSE '' END, CASE WHEN $6 THEN u.key_id ELSE '' END, u.pool, \
                jsonb_build_object({}), max(jsonb_array_length(c.latency_histogram)) \
         FROM usage u, jsonb_to_record(u.counters) AS c({}, cost_usd float8, latency_histogram jsonb) \
         WHERE u.granularity = $1 AND u.bucket_ms >= $2 AND u.bucket_ms < $3 \
         GROUP BY 1, 2, 3, 4, 5, 6",
        fields.join(", "),
        columns.join(", ")
    )
}
