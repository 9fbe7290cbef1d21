//! Usage rollups and cooldown history: reports applied exactly once into per-minute,
//! per-hour and per-day trees, range queries, and retention sweeps by key range.
//!
//! Usage keys are `big-endian bucket start ‖ backend id ‖ 0 ‖ model ‖ 0 ‖ node id
//! [‖ 0 ‖ client key id]` (the key part only for requests that presented one), so a
//! time range is one key-range scan and retention deletes a key prefix range. The pool
//! lives in the value: a backend may move between pools, and the value records the pool
//! it was in when the usage happened.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sled::{Batch, Transactional, Tree, transaction::TransactionalTree};

use super::{CooldownRecord, SledStore, StoreError, UsageCounters, decode, encode, tx_abort, tx_error};

/// Size of a rollup's time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Granularity {
    /// One minute (tree `usage_m`).
    Minute,
    /// One hour (tree `usage_h`).
    Hour,
    /// One UTC day (tree `usage_d`).
    Day,
}

impl Granularity {
    /// Every granularity, finest first.
    pub const ALL: [Granularity; 3] = [Granularity::Minute, Granularity::Hour, Granularity::Day];

    /// Length of one bucket in ms.
    pub fn bucket_ms(self) -> i64 {
        match self {
            Granularity::Minute => 60_000,
            Granularity::Hour => 3_600_000,
            Granularity::Day => 86_400_000,
        }
    }

    /// Start of the bucket holding `ms` (buckets are aligned to the unix epoch, so days
    /// start at 00:00 UTC).
    pub fn floor(self, ms: i64) -> i64 {
        ms - ms.rem_euclid(self.bucket_ms())
    }

    /// The API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    /// Parses the API's name.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "minute" => Granularity::Minute,
            "hour" => Granularity::Hour,
            "day" => Granularity::Day,
            _ => return None,
        })
    }

    pub(super) fn tree_name(self) -> &'static str {
        match self {
            Granularity::Minute => "usage_m",
            Granularity::Hour => "usage_h",
            Granularity::Day => "usage_d",
        }
    }
}

/// One record of a usage report: what one node saw of one (minute, backend, model).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportRecord {
    /// Start of the minute, unix ms.
    pub minute_ms: i64,
    /// Backend id; empty for requests the proxy answered itself.
    pub backend_id: String,
    /// Canonical model name.
    pub model: String,
    /// The backend's pool when the usage happened.
    pub pool: String,
    /// The client key's id ("" = none or unknown).
    pub key_id: String,
    /// The counts.
    pub counters: UsageCounters,
}

/// One stored rollup row: usage of one (bucket, backend, model, node).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageRow {
    /// Start of the time bucket, unix ms.
    pub bucket_ms: i64,
    /// Backend id; empty for requests the proxy answered itself.
    pub backend_id: String,
    /// Canonical model name.
    pub model: String,
    /// The node that reported it (empty for rows written before nodes were recorded).
    pub node_id: String,
    /// The backend's pool as last reported for this row.
    pub pool: String,
    /// The client key's id ("" = requests without one, and rows from before keys).
    pub key_id: String,
    /// The counts.
    pub counters: UsageCounters,
}

/// The stored value of a rollup row. Rows written before the pool was recorded are
/// plain `UsageCounters`, which read as this with an empty pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct UsageValue {
    #[serde(default)]
    pub(super) pool: String,
    #[serde(flatten)]
    pub(super) counters: UsageCounters,
}

impl UsageValue {
    pub(super) fn checked_merge(&mut self, other: &UsageValue, tree: &'static str) -> Result<(), StoreError> {
        self.counters.checked_merge(&other.counters).map_err(|field| StoreError::Overflow { tree, field })?;
        if !other.pool.is_empty() {
            self.pool.clone_from(&other.pool);
        }
        Ok(())
    }
}

/// Rollup key: big-endian bucket start, backend, 0, model, 0, node, and for requests
/// with a client key, 0 and the key's id.
pub(super) fn usage_key(bucket_ms: i64, backend_id: &str, model: &str, node_id: &str, key_id: &str) -> Vec<u8> {
    let mut key =
        [&time_bytes(bucket_ms)[..], backend_id.as_bytes(), &[0], model.as_bytes(), &[0], node_id.as_bytes()].concat();
    if !key_id.is_empty() {
        key.push(0);
        key.extend_from_slice(key_id.as_bytes());
    }
    key
}

/// A rollup key's parts.
pub(super) struct UsageKeyParts {
    pub(super) bucket_ms: i64,
    pub(super) backend_id: String,
    pub(super) model: String,
    pub(super) node_id: String,
    pub(super) key_id: String,
}

/// Parses a rollup key. Keys written before nodes were recorded end after the model, and
/// keys of requests without a client key (and all from before keys) after the node; they
/// read with an empty node or key.
pub(super) fn parse_usage_key(key: &[u8]) -> Option<UsageKeyParts> {
    let (time, rest) = key.split_at_checked(8)?;
    let bucket_ms = i64::try_from(u64::from_be_bytes(time.try_into().ok()?)).ok()?;
    let mut parts = rest.splitn(4, |&b| b == 0);
    let text = |part: Option<&[u8]>| part.map(|p| String::from_utf8(p.to_vec()));
    let backend_id = text(parts.next())?.ok()?;
    let model = text(parts.next())?.ok()?;
    let node_id = text(parts.next()).transpose().ok()?.unwrap_or_default();
    let key_id = text(parts.next()).transpose().ok()?.unwrap_or_default();
    Some(UsageKeyParts { bucket_ms, backend_id, model, node_id, key_id })
}

fn time_bytes(ms: i64) -> [u8; 8] {
    (ms.max(0) as u64).to_be_bytes()
}

/// Cooldown key: big-endian start, then a unique id so equal starts do not collide.
fn cooldown_key(start_ms: i64, id: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&time_bytes(start_ms));
    key[8..].copy_from_slice(&id.to_be_bytes());
    key
}

/// Adds `adds` (key → value) into one rollup tree inside a transaction.
fn merge_into(
    tree: &TransactionalTree,
    name: &'static str,
    adds: &BTreeMap<Vec<u8>, UsageValue>,
) -> Result<(), sled::transaction::ConflictableTransactionError<StoreError>> {
    for (key, add) in adds {
        let mut value = match tree.get(key)? {
            Some(v) => decode::<UsageValue>(name, &v).map_err(tx_abort)?,
            None => UsageValue::default(),
        };
        value.checked_merge(add, name).map_err(tx_abort)?;
        tree.insert(key.as_slice(), encode(&value))?;
    }
    Ok(())
}

/// `records` of node `node_id` summed per rollup key, one map per granularity of `of`.
/// Summed before writing: records often share an hour or day key.
pub(super) fn rollup_adds<'a, const N: usize>(
    node_id: &str,
    records: impl IntoIterator<Item = &'a ReportRecord>,
    of: [Granularity; N],
) -> Result<[BTreeMap<Vec<u8>, UsageValue>; N], StoreError> {
    let mut adds: [BTreeMap<Vec<u8>, UsageValue>; N] = std::array::from_fn(|_| BTreeMap::new());
    for r in records {
        for (g, adds) in of.iter().zip(adds.iter_mut()) {
            let key = usage_key(g.floor(r.minute_ms), &r.backend_id, &r.model, node_id, &r.key_id);
            let add = UsageValue { pool: r.pool.clone(), counters: r.counters.clone() };
            adds.entry(key).or_default().checked_merge(&add, g.tree_name())?;
        }
    }
    Ok(adds)
}

/// Deletes at most `max` keys below `end` (exclusive) from `tree`, in one batch.
fn remove_below(tree: &Tree, end: &[u8], max: usize) -> Result<usize, StoreError> {
    let mut batch = Batch::default();
    let mut count = 0;
    for key in tree.range(..end).keys().take(max) {
        batch.remove(key?);
        count += 1;
    }
    if count > 0 {
        tree.apply_batch(batch)?;
    }
    Ok(count)
}

impl SledStore {
    fn rollup(&self, granularity: Granularity) -> &Tree {
        match granularity {
            Granularity::Minute => &self.usage_m,
            Granularity::Hour => &self.usage_h,
            Granularity::Day => &self.usage_d,
        }
    }

    /// Applies one usage report batch unless `(node_id, boot_id)` already applied `seq`
    /// or a later one. Returns whether it was applied. The minute, hour and day rollups
    /// and the high-water mark change in one transaction, so a batch is counted exactly
    /// once in every granularity (a retried batch changes nothing).
    pub fn apply_report(
        &self,
        node_id: &str,
        boot_id: &str,
        seq: u64,
        records: &[ReportRecord],
    ) -> Result<bool, StoreError> {
        let seq_key = [node_id.as_bytes(), &[0], boot_id.as_bytes()].concat();
        // Summed before the transaction: sled may run the closure more than once.
        let adds = rollup_adds(node_id, records, Granularity::ALL)?;
        (&self.usage_m, &self.usage_h, &self.usage_d, &self.report_seq)
            .transaction(|(minutes, hours, days, seqs)| {
                let last = match seqs.get(&seq_key)? {
                    Some(v) => Some(decode::<u64>("report_seq", &v).map_err(tx_abort)?),
                    None => None,
                };
                if last.is_some_and(|last| seq <= last) {
                    return Ok(false);
                }
                merge_into(minutes, "usage_m", &adds[0])?;
                merge_into(hours, "usage_h", &adds[1])?;
                merge_into(days, "usage_d", &adds[2])?;
                seqs.insert(seq_key.as_slice(), encode(&seq))?;
                Ok(true)
            })
            .map_err(tx_error)
    }

    /// Adds usage history from another system to the hour and day rollups under node
    /// `node_id`: each `(mark, record)` once — a mark this store has seen is skipped —
    /// in one transaction with the marks. Returns how many records were added.
    pub fn import_usage(&self, node_id: &str, records: &[(String, ReportRecord)]) -> Result<usize, StoreError> {
        let mark = |m: &str| [b"import\0", node_id.as_bytes(), &[0], m.as_bytes()].concat();
        (&self.usage_h, &self.usage_d, &self.report_seq)
            .transaction(|(hours, days, marks)| {
                // Which rows are new is known only inside the transaction.
                let mut new = Vec::new();
                for (m, r) in records {
                    if marks.get(mark(m))?.is_none() {
                        marks.insert(mark(m), encode(&1u64))?;
                        new.push(r);
                    }
                }
                let adds = rollup_adds(node_id, new.iter().copied(), [Granularity::Hour, Granularity::Day])
                    .map_err(tx_abort)?;
                merge_into(hours, "usage_h", &adds[0])?;
                merge_into(days, "usage_d", &adds[1])?;
                Ok(new.len())
            })
            .map_err(tx_error)
    }

    /// Rollup rows of `granularity` whose bucket overlaps `[since_ms, until_ms)`: the
    /// bucket holding `since_ms` and every later one that starts before `until_ms`, in key
    /// order (time, backend, model, node). Rows are read as the iterator advances, so a
    /// long range is never held in memory at once.
    pub fn usage_rows(
        &self,
        granularity: Granularity,
        since_ms: i64,
        until_ms: i64,
    ) -> impl Iterator<Item = Result<UsageRow, StoreError>> + use<> {
        let name = granularity.tree_name();
        let lo = time_bytes(granularity.floor(since_ms));
        let hi = time_bytes(until_ms.max(0)).max(lo);
        self.rollup(granularity).range(lo..hi).map(move |item| {
            let (k, v) = item?;
            let UsageKeyParts { bucket_ms, backend_id, model, node_id, key_id } = parse_usage_key(&k)
                .ok_or_else(|| StoreError::Corrupt { tree: name, reason: "malformed key".into() })?;
            let value: UsageValue = decode(name, &v)?;
            Ok(UsageRow { bucket_ms, backend_id, model, node_id, key_id, pool: value.pool, counters: value.counters })
        })
    }

    /// Deletes at most `max` rollup rows of `granularity` whose bucket starts before
    /// `before_ms`; returns how many it deleted (fewer than `max`: nothing older is left).
    pub fn sweep_usage(&self, granularity: Granularity, before_ms: i64, max: usize) -> Result<usize, StoreError> {
        remove_below(self.rollup(granularity), &time_bytes(before_ms), max)
    }

    /// Records a fleet-wide cooldown in the history (tree `cooldowns`, keyed by start).
    pub fn record_cooldown(&self, record: &CooldownRecord) -> Result<(), StoreError> {
        let key = cooldown_key(record.start_ms, self.db.generate_id()?);
        self.cooldowns.insert(key, encode(record))?;
        Ok(())
    }

    /// Cooldowns that started in `[since_ms, until_ms)`, oldest first.
    pub fn cooldowns(&self, since_ms: i64, until_ms: i64) -> Result<Vec<CooldownRecord>, StoreError> {
        let lo = cooldown_key(since_ms, 0);
        let hi = cooldown_key(until_ms, 0);
        if hi <= lo {
            return Ok(Vec::new());
        }
        self.cooldowns.range(lo..hi).values().map(|v| decode("cooldowns", &v?)).collect()
    }

    /// Deletes at most `max` cooldowns that started before `before_ms`; returns how many
    /// it deleted.
    pub fn sweep_cooldowns(&self, before_ms: i64, max: usize) -> Result<usize, StoreError> {
        remove_below(&self.cooldowns, &time_bytes(before_ms), max)
    }
}
