//! Usage statistics and cooldown history queries: a time range (never a row count), a
//! granularity, filters and groups over the rollup rows, with backend names and node
//! regions attached from the current records.

use std::collections::HashMap;

use sidecar_proto::v1 as pb;

use super::convert::usage_totals_to_pb as usage_totals;
use tonic::Status;

use crate::{
    store::{BackendRecord, CooldownRecord, Granularity, Store, UsageCounters, UsageRow},
    util::now_ms,
    validate::{FieldError, field_error},
};

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

/// The requested granularity, or for `""`/`auto` the one the range's length calls for.
fn granularity(text: &str, since_ms: i64, until_ms: i64) -> Result<Granularity, FieldError> {
    match text {
        "" | "auto" => Ok(match until_ms - since_ms {
            span if span <= AUTO_MINUTE_MAX_MS => Granularity::Minute,
            span if span <= AUTO_HOUR_MAX_MS => Granularity::Hour,
            _ => Granularity::Day,
        }),
        other => Granularity::parse(other)
            .ok_or_else(|| field_error("granularity", format!("expected minute, hour, day or auto, got {other:?}"))),
    }
}

/// What rows can be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dim {
    Time,
    Backend,
    Model,
    Pool,
    Region,
    Node,
}

fn group_by(names: &[String]) -> Result<Vec<Dim>, FieldError> {
    let mut dims = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let dim = match name.trim() {
            "time" => Dim::Time,
            "backend" => Dim::Backend,
            "model" => Dim::Model,
            "pool" => Dim::Pool,
            "region" => Dim::Region,
            "node" => Dim::Node,
            other => {
                return Err(field_error(
                    format!("group_by[{i}]"),
                    format!("expected time, backend, model, pool, region or node, got {other:?}"),
                ));
            }
        };
        if !dims.contains(&dim) {
            dims.push(dim);
        }
    }
    Ok(dims)
}

/// Current names and places: backends by id, node regions by node id.
struct Lookup {
    backends: HashMap<String, BackendRecord>,
    regions: HashMap<String, String>,
}

impl Lookup {
    fn load(store: &Store) -> Result<Self, Status> {
        Ok(Self {
            backends: store.backends()?.into_iter().map(|b| (b.id.clone(), b)).collect(),
            regions: store.nodes()?.into_iter().map(|n| (n.id, n.region)).collect(),
        })
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
fn passes(filter: &pb::StatsFilter, row: &UsageRow, region: &str, lookup: &Lookup) -> bool {
    let any = |list: &[String], value: &str| list.is_empty() || list.iter().any(|v| v == value);
    (filter.backends.is_empty() || filter.backends.iter().any(|b| lookup.is_backend(b, &row.backend_id)))
        && any(&filter.models, &row.model)
        && any(&filter.pools, &row.pool)
        && any(&filter.regions, region)
        && any(&filter.nodes, &row.node_id)
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
}

impl GroupKey {
    fn of(row: &UsageRow, region: &str, dims: &[Dim]) -> Self {
        let mut key = GroupKey::default();
        for dim in dims {
            match dim {
                Dim::Time => key.bucket_ms = row.bucket_ms,
                Dim::Backend => key.backend_id.clone_from(&row.backend_id),
                Dim::Model => key.model.clone_from(&row.model),
                Dim::Pool => key.pool.clone_from(&row.pool),
                Dim::Region => key.region = region.to_owned(),
                Dim::Node => key.node_id.clone_from(&row.node_id),
            }
        }
        key
    }

    fn into_row(self, lookup: &Lookup, counters: &UsageCounters) -> pb::StatsRow {
        pb::StatsRow {
            bucket_ms: self.bucket_ms,
            backend_name: lookup.name(&self.backend_id).to_owned(),
            backend_id: self.backend_id,
            model: self.model,
            pool: self.pool,
            region: self.region,
            node_id: self.node_id,
            totals: Some(usage_totals(counters)),
        }
    }
}

/// Rows in group order: time, then backend name (id for unnamed ones), model, pool,
/// region, node.
fn sort_rows(rows: &mut [pb::StatsRow]) {
    rows.sort_by(|a, b| {
        (a.bucket_ms, &a.backend_name, &a.backend_id, &a.model)
            .cmp(&(b.bucket_ms, &b.backend_name, &b.backend_id, &b.model))
            .then_with(|| (&a.pool, &a.region, &a.node_id).cmp(&(&b.pool, &b.region, &b.node_id)))
    });
}

/// Usage over a time range, by granularity, filtered and grouped.
///
/// Buckets are aligned to the granularity (UTC days); a range that does not start or end
/// on a bucket edge includes every bucket that overlaps it, so the figures can cover up
/// to one bucket more at each end than the range asked for.
pub(super) fn get_stats(store: &Store, request: &pb::GetStatsRequest) -> Result<pb::GetStatsResponse, Status> {
    let (since, until) = resolve_range(request.since_ms, request.until_ms, now_ms())?;
    let granularity = granularity(request.granularity.trim(), since, until)?;
    let dims = group_by(&request.group_by)?;
    let filter = request.filter.clone().unwrap_or_default();
    let lookup = Lookup::load(store)?;

    let mut totals = UsageCounters::default();
    let mut groups: HashMap<GroupKey, UsageCounters> = HashMap::new();
    // Backend id → (counters, pool of its latest row).
    let mut backends: HashMap<String, (UsageCounters, String)> = HashMap::new();
    for row in store.usage_rows(granularity, since, until) {
        let row = row?;
        let region = lookup.region(&row.node_id);
        if !passes(&filter, &row, region, &lookup) {
            continue;
        }
        totals.merge(&row.counters);
        let entry = backends.entry(row.backend_id.clone()).or_default();
        entry.0.merge(&row.counters);
        if !row.pool.is_empty() {
            entry.1.clone_from(&row.pool);
        }
        if !dims.is_empty() {
            groups.entry(GroupKey::of(&row, region, &dims)).or_default().merge(&row.counters);
        }
    }

    let mut rows: Vec<pb::StatsRow> =
        groups.into_iter().map(|(key, counters)| key.into_row(&lookup, &counters)).collect();
    sort_rows(&mut rows);
    let mut by_backend: Vec<pb::StatsRow> = backends
        .into_iter()
        .map(|(backend_id, (counters, last_pool))| {
            // A backend's current pool; for deleted ones the pool it was last seen in.
            let pool = lookup.backends.get(&backend_id).map_or(last_pool, |b| b.pool.clone());
            GroupKey { backend_id, pool, ..Default::default() }.into_row(&lookup, &counters)
        })
        .collect();
    sort_rows(&mut by_backend);
    Ok(pb::GetStatsResponse {
        since_ms: since,
        until_ms: until,
        granularity: granularity.as_str().to_owned(),
        totals: Some(usage_totals(&totals)),
        rows,
        by_backend,
    })
}

fn cooldown_to_pb(c: CooldownRecord, lookup: &Lookup) -> pb::CooldownEvent {
    pb::CooldownEvent {
        backend_name: lookup.name(&c.backend_id).to_owned(),
        backend_id: c.backend_id,
        node_id: c.node_id,
        consecutive_count: c.consecutive_count,
        duration_ms: c.duration_ms,
        retry_after_ms: c.retry_after_ms,
        start_ms: c.start_ms,
        end_ms: c.end_ms,
    }
}

/// Fleet-wide cooldowns that started in the range, newest first.
pub(super) fn list_cooldowns(
    store: &Store,
    request: &pb::ListCooldownsRequest,
) -> Result<pb::ListCooldownsResponse, Status> {
    let (since, until) = resolve_range(request.since_ms, request.until_ms, now_ms())?;
    let lookup = Lookup::load(store)?;
    let backend = request.backend.trim();
    let node = request.node.trim();
    let mut events: Vec<pb::CooldownEvent> = store
        .cooldowns(since, until)?
        .into_iter()
        .filter(|c| backend.is_empty() || lookup.is_backend(backend, &c.backend_id))
        .filter(|c| node.is_empty() || c.node_id == node)
        .map(|c| cooldown_to_pb(c, &lookup))
        .collect();
    // Stored oldest first (ties in the order recorded); the newest matter most.
    events.reverse();
    Ok(pb::ListCooldownsResponse { events })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 20_000 * DAY_MS + 12 * HOUR_MS;

    #[test]
    fn range_defaults_to_the_last_24_hours_and_refuses_an_inverted_one() {
        assert_eq!(resolve_range(0, 0, NOW).unwrap(), (NOW + 1 - DAY_MS, NOW + 1));
        assert_eq!(resolve_range(5, 0, NOW).unwrap(), (5, NOW + 1));
        assert_eq!(resolve_range(0, NOW, NOW).unwrap(), (NOW - DAY_MS, NOW));
        let e = resolve_range(NOW, NOW - 1, NOW).unwrap_err();
        assert_eq!(e.field, "until_ms");
        assert_eq!(resolve_range(-1, 0, NOW).unwrap_err().field, "since_ms");
    }

    #[test]
    fn auto_granularity_follows_the_range_length() {
        let g = |span: i64| granularity("", NOW - span, NOW).unwrap();
        assert_eq!(g(HOUR_MS), Granularity::Minute);
        assert_eq!(g(6 * HOUR_MS), Granularity::Minute);
        assert_eq!(g(6 * HOUR_MS + 1), Granularity::Hour);
        assert_eq!(g(14 * DAY_MS), Granularity::Hour);
        assert_eq!(g(14 * DAY_MS + 1), Granularity::Day);
        assert_eq!(granularity("auto", NOW - 30 * DAY_MS, NOW).unwrap(), Granularity::Day);
        assert_eq!(granularity("hour", 0, 1).unwrap(), Granularity::Hour);
        let e = granularity("week", 0, 1).unwrap_err();
        assert_eq!(e.field, "granularity");
        assert!(e.to_string().contains("week"), "{e}");
    }

    #[test]
    fn group_by_accepts_known_dimensions_once_each() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(group_by(&names(&["time", "model", "time"])).unwrap(), vec![Dim::Time, Dim::Model]);
        let e = group_by(&names(&["model", "colour"])).unwrap_err();
        assert_eq!(e.field, "group_by[1]");
    }

    #[test]
    fn totals_map_answered_requests_and_average_latency() {
        let c = UsageCounters {
            attempts: 4,
            answered: 3,
            answered_errors: 1,
            succeeded: 2,
            errors_429: 2,
            latency_ms_sum: 400,
            latency_histogram: vec![1, 3],
            ..Default::default()
        };
        let t = usage_totals(&c);
        assert_eq!((t.requests, t.succeeded, t.errors, t.rate_limited, t.attempts), (3, 2, 1, 2, 4));
        assert_eq!(t.avg_latency_ms, 100.0);
        assert_eq!(t.latency_histogram.len(), crate::store::LATENCY_BUCKETS_MS.len() + 1);
        assert_eq!(&t.latency_histogram[..3], &[1, 3, 0]);
        assert_eq!(usage_totals(&UsageCounters::default()).avg_latency_ms, 0.0);
    }

    fn store_with_backends() -> (tempfile::TempDir, Store) {
        use crate::{
            crypto::MasterKey,
            store::{Actor, BackendRecord, ConfigChange, NodeRecord, Settings, Source},
        };
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.initialize(&Settings::default()).unwrap();
        let key = MasterKey::from_hex(&MasterKey::generate_hex()).unwrap();
        let backend = |id: &str, name: &str, pool: &str| BackendRecord {
            id: id.into(),
            name: name.into(),
            label: String::new(),
            base_url: "https://api.example.com/v1".into(),
            api_key: key.seal("sk-test-0123456789abcdef"),
            api_key_masked: "sk-tes****cdef".into(),
            timeout_seconds: 120,
            rpm_limit: 40,
            tpm_limit: None,
            window_seconds: 60,
            pool: pool.into(),
            enabled: true,
            weight: 1,
            model_mappings: Default::default(),
            regions: vec![],
            source: Source::Api,
            metadata: Default::default(),
            created_at_ms: 0,
            updated_at_ms: 0,
            resource_version: 1,
        };
        let change = ConfigChange {
            put_backends: vec![backend("bkd_a", "alpha", "primary"), backend("bkd_b", "beta", "fallback")],
            ..Default::default()
        };
        store.commit(change, &Actor::system(), "Test", "b").unwrap();
        for (id, region) in [("n-eu", "eu"), ("n-us", "us")] {
            store.put_node(&NodeRecord { id: id.into(), region: region.into(), ..Default::default() }).unwrap();
        }
        (dir, store)
    }

    fn report(store: &Store, node: &str, seq: u64, rows: &[(i64, &str, &str, &str, u64)]) {
        let records: Vec<_> = rows
            .iter()
            .map(|&(minute_ms, backend, model, pool, answered)| crate::store::ReportRecord {
                minute_ms,
                backend_id: backend.into(),
                model: model.into(),
                pool: pool.into(),
                counters: UsageCounters { attempts: answered, answered, succeeded: answered, ..Default::default() },
            })
            .collect();
        assert!(store.apply_report(node, "boot", seq, &records).unwrap());
    }

    fn stats(store: &Store, f: impl FnOnce(&mut pb::GetStatsRequest)) -> pb::GetStatsResponse {
        let mut request =
            pb::GetStatsRequest { since_ms: NOW - HOUR_MS, until_ms: NOW + HOUR_MS, ..Default::default() };
        f(&mut request);
        get_stats(store, &request).unwrap()
    }

    fn requests(r: &pb::StatsRow) -> u64 {
        r.totals.as_ref().unwrap().requests
    }

    #[test]
    fn stats_filter_group_and_name_rows_by_current_records() {
        let (_dir, store) = store_with_backends();
        let m = NOW - NOW % 60_000;
        report(
            &store,
            "n-eu",
            1,
            &[(m, "bkd_a", "gpt", "primary", 1), (m, "bkd_b", "gpt", "fallback", 2), (m + 60_000, "", "nope", "", 4)],
        );
        report(&store, "n-us", 1, &[(m, "bkd_a", "llama", "primary", 8)]);

        let all = stats(&store, |_| {});
        assert_eq!(all.granularity, "minute");
        assert_eq!(all.totals.as_ref().unwrap().requests, 15);
        assert!(all.rows.is_empty(), "no group_by: totals only");
        let by_backend: Vec<_> = all
            .by_backend
            .iter()
            .map(|r| (r.backend_id.as_str(), r.backend_name.as_str(), r.pool.as_str(), requests(r)))
            .collect();
        assert_eq!(
            by_backend,
            vec![("", "", "", 4), ("bkd_a", "alpha", "primary", 9), ("bkd_b", "beta", "fallback", 2)]
        );

        let grouped = stats(&store, |r| r.group_by = vec!["time".into(), "region".into()]);
        let rows: Vec<_> =
            grouped.rows.iter().map(|r| (r.bucket_ms, r.region.as_str(), r.backend_id.as_str(), requests(r))).collect();
        assert_eq!(rows, vec![(m, "eu", "", 3), (m, "us", "", 8), (m + 60_000, "eu", "", 4)]);

        // Backends by name (any case) or id; dimensions combine with AND.
        let filtered = stats(&store, |r| {
            r.filter = Some(pb::StatsFilter {
                backends: vec!["ALPHA".into(), "bkd_b".into()],
                regions: vec!["eu".into()],
                ..Default::default()
            });
            r.group_by = vec!["backend".into()];
        });
        let rows: Vec<_> = filtered.rows.iter().map(|r| (r.backend_name.as_str(), requests(r))).collect();
        assert_eq!(rows, vec![("alpha", 1), ("beta", 2)]);
        let pools = stats(&store, |r| {
            r.filter = Some(pb::StatsFilter {
                pools: vec!["primary".into()],
                models: vec!["llama".into()],
                nodes: vec!["n-us".into()],
                ..Default::default()
            });
        });
        assert_eq!(pools.totals.unwrap().requests, 8);

        // The hour holding the range's start is included whole.
        let hourly = stats(&store, |r| {
            r.since_ms = m + 1;
            r.until_ms = m + 2;
            r.granularity = "hour".into();
            r.group_by = vec!["time".into()];
        });
        assert_eq!(hourly.rows.len(), 1);
        assert_eq!(hourly.rows[0].bucket_ms, NOW - NOW % HOUR_MS);
        assert_eq!(requests(&hourly.rows[0]), 15);
    }

    #[test]
    fn list_cooldowns_returns_recorded_events_newest_first_with_filters() {
        let (_dir, store) = store_with_backends();
        let cooldown = |backend: &str, node: &str, start_ms: i64, count: u32| CooldownRecord {
            backend_id: backend.into(),
            node_id: node.into(),
            consecutive_count: count,
            duration_ms: 30_000 * u64::from(count),
            retry_after_ms: 0,
            start_ms,
            end_ms: start_ms + 30_000 * i64::from(count),
        };
        store.record_cooldown(&cooldown("bkd_a", "n-eu", NOW - 2 * HOUR_MS, 1)).unwrap();
        store.record_cooldown(&cooldown("bkd_a", "n-us", NOW - HOUR_MS, 2)).unwrap();
        store.record_cooldown(&cooldown("bkd_b", "n-eu", NOW - 30 * 60_000, 1)).unwrap();
        store.record_cooldown(&cooldown("bkd_a", "n-eu", NOW - 3 * DAY_MS, 1)).unwrap();
        let list = |backend: &str, node: &str| {
            list_cooldowns(
                &store,
                &pb::ListCooldownsRequest {
                    since_ms: NOW - DAY_MS,
                    until_ms: NOW,
                    backend: backend.into(),
                    node: node.into(),
                },
            )
            .unwrap()
            .events
        };
        let all = list("", "");
        let seen: Vec<_> =
            all.iter().map(|e| (e.backend_name.as_str(), e.node_id.as_str(), e.consecutive_count)).collect();
        assert_eq!(seen, vec![("beta", "n-eu", 1), ("alpha", "n-us", 2), ("alpha", "n-eu", 1)]);
        assert_eq!(all[1].duration_ms, 60_000);
        assert_eq!(all[1].end_ms - all[1].start_ms, 60_000);
        assert_eq!(list("alpha", "").len(), 2);
        assert_eq!(list("bkd_a", "n-eu").len(), 1);
        assert_eq!(list("", "n-eu").len(), 2);
        assert!(list("nobody", "").is_empty());
        let e = list_cooldowns(
            &store,
            &pb::ListCooldownsRequest { since_ms: NOW, until_ms: NOW - 1, ..Default::default() },
        )
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("until_ms"), "{}", e.message());
    }
}
