//! Usage statistics and cooldown history queries: a time range (never a row count), a
//! granularity, filters and groups over the rollup rows, with backend names and node
//! regions attached from the current records.

use std::collections::HashMap;

use crate::{
    store::{BackendRecord, CooldownRecord, Granularity, Store, StoreError, UsageColumns, UsageCounters, UsageRow},
    util::now_ms,
    validate::{FieldError, field_error},
};

/// A statistics query failed.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// A bad query field.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A usage query: a time range, a granularity, filters and groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsQuery {
    /// Start, unix ms (inclusive); 0 = 24 hours before `until_ms`.
    pub since_ms: i64,
    /// End, unix ms (exclusive); 0 = now.
    pub until_ms: i64,
    /// `None` = chosen from the range's length.
    pub granularity: Option<Granularity>,
    /// Which rows count.
    pub filter: StatsFilter,
    /// Dimensions to group by, in order; repeats are ignored.
    pub group_by: Vec<Dim>,
}

/// Which rows a query counts: any listed value within a dimension, every dimension.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsFilter {
    /// Backend ids or current names (any case).
    pub backends: Vec<String>,
    /// Canonical models.
    pub models: Vec<String>,
    /// Pools.
    pub pools: Vec<String>,
    /// Node regions.
    pub regions: Vec<String>,
    /// Node ids.
    pub nodes: Vec<String>,
    /// Client key ids or current names (any case); "" = requests without a key.
    pub keys: Vec<String>,
    /// Teams of client keys.
    pub teams: Vec<String>,
}

/// One group's figures; dimensions not grouped by stay empty (0 for time).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsRow {
    /// Start of the time bucket.
    pub bucket_ms: i64,
    /// Backend id ("" = the proxy itself).
    pub backend_id: String,
    /// Its current name ("" for the proxy and deleted backends).
    pub backend_name: String,
    /// Canonical model.
    pub model: String,
    /// Pool.
    pub pool: String,
    /// Node region.
    pub region: String,
    /// Node id.
    pub node_id: String,
    /// Client key id ("" = requests without one).
    pub key_id: String,
    /// Its current name.
    pub key_name: String,
    /// Its current team.
    pub team: String,
    /// The figures.
    pub counters: UsageCounters,
}

/// A query's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsReport {
    /// The range answered.
    pub since_ms: i64,
    /// The range answered.
    pub until_ms: i64,
    /// The granularity answered.
    pub granularity: Granularity,
    /// Everything that passed the filter.
    pub totals: UsageCounters,
    /// One row per group, in group order.
    pub rows: Vec<StatsRow>,
    /// The same figures per backend.
    pub by_backend: Vec<StatsRow>,
}

/// A cooldown with its backend's current name.
#[derive(Debug, Clone, PartialEq)]
pub struct CooldownView {
    /// The stored event.
    pub record: CooldownRecord,
    /// The backend's current name ("" if deleted).
    pub backend_name: String,
}

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
/// Range used when a query gives no start.
const DEFAULT_RANGE_MS: i64 = DAY_MS;
/// Longest range `auto` answers per minute.
const AUTO_MINUTE_MAX_MS: i64 = 6 * HOUR_MS;
/// Longest range `auto` answers per hour; longer ranges are per day.
const AUTO_HOUR_MAX_MS: i64 = 14 * DAY_MS;

/// Resolves a query's `[since, until)`: `until` 0 = now (inclusive), `since` 0 = 24 hours
/// before `until`.
fn resolve_range(since_ms: i64, until_ms: i64, now_ms: i64) -> Result<(i64, i64), FieldError> {
    if since_ms < 0 {
        return Err(field_error("since_ms", "must not be negative"));
    }
    if until_ms < 0 {
        return Err(field_error("until_ms", "must not be negative"));
    }
    let until = match until_ms {
        0 => now_ms + 1,
        t => t,
    };
    let since = match since_ms {
        0 => (until - DEFAULT_RANGE_MS).max(0),
        t => t,
    };
    if until < since {
        return Err(field_error("until_ms", format!("must not be before since_ms ({since}), got {until}")));
    }
    Ok((since, until))
}

/// The requested granularity, or (for `None`) the one the range's length calls for.
fn granularity(wanted: Option<Granularity>, since_ms: i64, until_ms: i64) -> Granularity {
    wanted.unwrap_or(match until_ms - since_ms {
        span if span <= AUTO_MINUTE_MAX_MS => Granularity::Minute,
        span if span <= AUTO_HOUR_MAX_MS => Granularity::Hour,
        _ => Granularity::Day,
    })
}

/// What rows can be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Dim {
    Time,
    Backend,
    Model,
    Pool,
    Region,
    Node,
    Key,
    Team,
}

/// The dimensions in order, each once.
fn group_by(dims: &[Dim]) -> Vec<Dim> {
    let mut out = Vec::new();
    for dim in dims {
        if !out.contains(dim) {
            out.push(*dim);
        }
    }
    out
}

/// Current names and places: backends by id, node regions by node id, client keys'
/// names and teams by key id.
struct Lookup {
    backends: HashMap<String, BackendRecord>,
    regions: HashMap<String, String>,
    keys: HashMap<String, (String, String)>,
}

impl Lookup {
    fn load(store: &Store) -> Result<Self, StoreError> {
        Ok(Self {
            backends: store.backends()?.into_iter().map(|b| (b.id.clone(), b)).collect(),
            regions: store.nodes()?.into_iter().map(|n| (n.id, n.region)).collect(),
            keys: store.client_keys()?.into_iter().map(|k| (k.id, (k.name, k.team))).collect(),
        })
    }

    /// A client key's current (name, team); empty for no key.
    fn key(&self, key_id: &str) -> (&str, &str) {
        self.keys.get(key_id).map_or(("", ""), |(name, team)| (name.as_str(), team.as_str()))
    }

    /// Whether `wanted` (an id, or a current name in any case) names `key_id`.
    fn is_key(&self, wanted: &str, key_id: &str) -> bool {
        wanted == key_id || {
            let name = self.key(key_id).0;
            !name.is_empty() && name.eq_ignore_ascii_case(wanted)
        }
    }

    /// The backend's current name; empty for the proxy itself and deleted backends.
    fn name(&self, backend_id: &str) -> &str {
        self.backends.get(backend_id).map_or("", |b| &b.name)
    }

    fn region(&self, node_id: &str) -> &str {
        self.regions.get(node_id).map_or("", String::as_str)
    }

    /// Whether `wanted` (an id, or a current name in any case) names `backend_id`.
    fn is_backend(&self, wanted: &str, backend_id: &str) -> bool {
        wanted == backend_id || {
            let name = self.name(backend_id);
            !name.is_empty() && name.eq_ignore_ascii_case(wanted)
        }
    }
}

/// Whether a row passes the filter: any listed value within a dimension, every dimension.
fn passes(filter: &StatsFilter, row: &UsageRow, region: &str, lookup: &Lookup) -> bool {
    let any = |list: &[String], value: &str| list.is_empty() || list.iter().any(|v| v == value);
    (filter.backends.is_empty() || filter.backends.iter().any(|b| lookup.is_backend(b, &row.backend_id)))
        && any(&filter.models, &row.model)
        && any(&filter.pools, &row.pool)
        && any(&filter.regions, region)
        && any(&filter.nodes, &row.node_id)
        && (filter.keys.is_empty() || filter.keys.iter().any(|k| lookup.is_key(k, &row.key_id)))
        && any(&filter.teams, lookup.key(&row.key_id).1)
}

/// One group's identity; dimensions not grouped by stay empty (0 for time).
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    bucket_ms: i64,
    backend_id: String,
    model: String,
    pool: String,
    region: String,
    node_id: String,
    key_id: String,
    team: String,
}

impl GroupKey {
    fn of(row: &UsageRow, (region, team): (&str, &str), dims: &[Dim]) -> Self {
        let mut key = GroupKey::default();
        for dim in dims {
            match dim {
                Dim::Time => key.bucket_ms = row.bucket_ms,
                Dim::Backend => key.backend_id.clone_from(&row.backend_id),
                Dim::Model => key.model.clone_from(&row.model),
                Dim::Pool => key.pool.clone_from(&row.pool),
                Dim::Region => key.region = region.to_owned(),
                Dim::Node => key.node_id.clone_from(&row.node_id),
                Dim::Key => key.key_id.clone_from(&row.key_id),
                Dim::Team => key.team = team.to_owned(),
            }
        }
        key
    }

    fn into_row(self, lookup: &Lookup, counters: UsageCounters) -> StatsRow {
        StatsRow {
            bucket_ms: self.bucket_ms,
            backend_name: lookup.name(&self.backend_id).to_owned(),
            backend_id: self.backend_id,
            model: self.model,
            pool: self.pool,
            region: self.region,
            node_id: self.node_id,
            key_name: lookup.key(&self.key_id).0.to_owned(),
            key_id: self.key_id,
            team: self.team,
            counters,
        }
    }
}

/// Rows in group order: time, then backend name (id for unnamed ones), model, pool,
/// region, node.
fn sort_rows(rows: &mut [StatsRow]) {
    rows.sort_by(|a, b| {
        (a.bucket_ms, &a.backend_name, &a.backend_id, &a.model)
            .cmp(&(b.bucket_ms, &b.backend_name, &b.backend_id, &b.model))
            .then_with(|| (&a.pool, &a.region, &a.node_id).cmp(&(&b.pool, &b.region, &b.node_id)))
            .then_with(|| (&a.team, &a.key_name, &a.key_id).cmp(&(&b.team, &b.key_name, &b.key_id)))
    });
}

/// Usage over a time range, by granularity, filtered and grouped.
///
/// Buckets are aligned to the granularity (UTC days); a range that does not start or end
/// on a bucket edge includes every bucket that overlaps it, so the figures can cover up
/// to one bucket more at each end than the range asked for.
pub fn get_stats(store: &Store, query: &StatsQuery) -> Result<StatsReport, StatsError> {
    let (since, until) = resolve_range(query.since_ms, query.until_ms, now_ms())?;
    let granularity = granularity(query.granularity, since, until);
    let dims = group_by(&query.group_by);
    let filter = &query.filter;
    let lookup = Lookup::load(store)?;

    let mut totals = UsageCounters::default();
    let mut groups: HashMap<GroupKey, UsageCounters> = HashMap::new();
    // Backend id → (counters, pool of its latest row).
    let mut backends: HashMap<String, (UsageCounters, String)> = HashMap::new();
    // Only the dimensions the query filters or groups on: a store that can sums the rest
    // away itself (on PostgreSQL, in SQL), instead of handing over a row per node and key.
    let needs = |d: &[Dim]| d.iter().any(|d| dims.contains(d));
    let keep = UsageColumns {
        time: needs(&[Dim::Time]),
        node: needs(&[Dim::Node, Dim::Region]) || !filter.nodes.is_empty() || !filter.regions.is_empty(),
        key: needs(&[Dim::Key, Dim::Team]) || !filter.keys.is_empty() || !filter.teams.is_empty(),
    };
    let rows = store.usage_collapsed(granularity, since, until, keep);
    for row in rows.unwrap_or_else(|| store.usage_rows(granularity, since, until)) {
        let row = row?;
        let region = lookup.region(&row.node_id);
        if !passes(filter, &row, region, &lookup) {
            continue;
        }
        totals.merge(&row.counters);
        let entry = backends.entry(row.backend_id.clone()).or_default();
        entry.0.merge(&row.counters);
        if !row.pool.is_empty() {
            entry.1.clone_from(&row.pool);
        }
        if !dims.is_empty() {
            groups
                .entry(GroupKey::of(&row, (region, lookup.key(&row.key_id).1), &dims))
                .or_default()
                .merge(&row.counters);
        }
    }

    let mut rows: Vec<StatsRow> = groups.into_iter().map(|(key, counters)| key.into_row(&lookup, counters)).collect();
    sort_rows(&mut rows);
    let mut by_backend: Vec<StatsRow> = backends
        .into_iter()
        .map(|(backend_id, (counters, last_pool))| {
            // A backend's current pool; for deleted ones the pool it was last seen in.
            let pool = lookup.backends.get(&backend_id).map_or(last_pool, |b| b.pool.clone());
            GroupKey { backend_id, pool, ..Default::default() }.into_row(&lookup, counters)
        })
        .collect();
    sort_rows(&mut by_backend);
    Ok(StatsReport { since_ms: since, until_ms: until, granularity, totals, rows, by_backend })
}

/// Which cooldowns to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CooldownQuery {
    /// Start, unix ms; 0 = 24 hours before `until_ms`.
    pub since_ms: i64,
    /// End, unix ms; 0 = now.
    pub until_ms: i64,
    /// Only this backend (id or name); empty = all.
    pub backend: String,
    /// Only cooldowns caused by this node; empty = all.
    pub node: String,
}

/// Fleet-wide cooldowns that started in the range, newest first.
pub fn list_cooldowns(store: &Store, query: &CooldownQuery) -> Result<Vec<CooldownView>, StatsError> {
    let (since, until) = resolve_range(query.since_ms, query.until_ms, now_ms())?;
    let lookup = Lookup::load(store)?;
    let backend = query.backend.trim();
    let node = query.node.trim();
    let mut events: Vec<CooldownView> = store
        .cooldowns(since, until)?
        .into_iter()
        .filter(|c| backend.is_empty() || lookup.is_backend(backend, &c.backend_id))
        .filter(|c| node.is_empty() || c.node_id == node)
        .map(|c| CooldownView { backend_name: lookup.name(&c.backend_id).to_owned(), record: c })
        .collect();
    // Stored oldest first (ties in the order recorded); the newest matter most.
    events.reverse();
    Ok(events)
}

#[cfg(test)]
mod tests;
