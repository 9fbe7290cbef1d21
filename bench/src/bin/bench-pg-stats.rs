//! Statistics on PostgreSQL at fleet scale: `--nodes` proxies (500) reporting one backend
//! and model for `--days` (30) — minute, hour and day rollup rows as the control plane
//! keeps them, minute rows for the whole span unless `--minute-days` says fewer —
//! generated in a private database (started as the tests do), then the statistics
//! queries an operator runs, through the control plane's own code (`stats::get_stats` on
//! the PostgreSQL store), each timed `--runs` times.
//!
//! Then the write paths: config writes (each one transaction with its version bump and
//! audit entry) one after another, as the control plane serialises them, and report
//! batches from `--writers` threads at once, as proxies send them.
//!
//! `cargo run --release -p sidecar-bench --bin bench-pg-stats` (several minutes: the
//! data set is about 22 million rows).

use std::{process::Command, time::Instant};

use clap::Parser;
use sidecar_control_plane::{
    stats::{Dim, StatsQuery, get_stats},
    store::{Actor, ConfigChange, Granularity, PgStore, ReportRecord, Settings, Store, UsageCounters},
};

#[derive(Parser)]
struct Args {
    /// Proxies reporting.
    #[arg(long, default_value_t = 500)]
    nodes: u32,
    /// Days of hour and day rows (and of minute rows, unless --minute-days).
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// Days of minute rows.
    #[arg(long)]
    minute_days: Option<u32>,
    /// Runs per query.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Threads sending report batches at once.
    #[arg(long, default_value_t = 8)]
    writers: usize,
}

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

fn psql(url: &str, sql: &str) -> anyhow::Result<()> {
    let out = Command::new("psql").args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql]).output()?;
    anyhow::ensure!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// Rows of `granularity` (code `g`), one per node per `step` over `buckets` buckets
/// ending at `end`, with counters in proportion to the bucket's length.
fn generate(url: &str, g: i16, step: i64, buckets: i64, end: i64, nodes: u32) -> anyhow::Result<()> {
    let per = step / MINUTE;
    let sql = format!(
        "INSERT INTO usage (granularity, bucket_ms, backend_id, model, node_id, key_id, pool, counters)
         SELECT {g}, {start}::bigint + b::bigint * {step}, 'bkd_bench', 'gpt-bench', 'node-' || n, '', 'primary',
                jsonb_build_object('attempts', {per} * 3, 'answered', {per} * 3, 'succeeded', {per} * 3,
                    'answered_errors', 0, 'errors_429', 0, 'errors_5xx', 0, 'errors_timeout', 0,
                    'errors_connect', 0, 'errors_4xx', 0, 'prompt_tokens', {per} * 300,
                    'completion_tokens', {per} * 90, 'total_tokens', {per} * 390, 'cost_usd', {per} * 0.0012,
                    'latency_ms_sum', {per} * 900, 'latency_histogram', jsonb_build_array(0, {per}, {per} * 2),
                    'ttft_ms_sum', 0, 'ttft_count', 0)
         FROM generate_series(0, {last}) b, generate_series(1, {nodes}) n",
        start = end - buckets * step,
        last = buckets - 1,
    );
    psql(url, &sql)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // A durable server (the tests' runs without fsync): writes are measured as they are.
    let url = sidecar_control_plane::testing::durable_database();
    let store = Store::with(PgStore::connect(&url)?);
    store.initialize(&Settings::default())?;
    // Data up to the start of the current hour, so every query sees full buckets.
    let now = sidecar_control_plane::util::now_ms();
    let end = now - now % HOUR;
    let days = i64::from(args.days);
    let minute_days = i64::from(args.minute_days.unwrap_or(args.days));
    let started = Instant::now();
    generate(&url, 2, DAY, days, end - end % DAY + DAY, args.nodes)?;
    generate(&url, 1, HOUR, days * 24, end, args.nodes)?;
    generate(&url, 0, MINUTE, minute_days * 24 * 60, end, args.nodes)?;
    psql(&url, "VACUUM ANALYZE usage")?;
    let rows = i64::from(args.nodes) * (days + days * 24 + minute_days * 24 * 60);
    println!(
        "generated {rows} rollup rows ({} nodes, {days} days; minute rows for {minute_days} days) in {:.0?}",
        args.nodes,
        started.elapsed()
    );

    let queries: [(&str, StatsQuery); 6] = [
        ("30 days, totals (day rows)", StatsQuery { since_ms: end - 30 * DAY, until_ms: end, ..Default::default() }),
        (
            "30 days by backend and model",
            StatsQuery {
                since_ms: end - 30 * DAY,
                until_ms: end,
                group_by: vec![Dim::Backend, Dim::Model],
                ..Default::default()
            },
        ),
        (
            "30 days by node",
            StatsQuery { since_ms: end - 30 * DAY, until_ms: end, group_by: vec![Dim::Node], ..Default::default() },
        ),
        (
            "30 days by hour (hour rows)",
            StatsQuery {
                since_ms: end - 30 * DAY,
                until_ms: end,
                granularity: Some(Granularity::Hour),
                group_by: vec![Dim::Time],
                ..Default::default()
            },
        ),
        (
            "24 hours by hour",
            StatsQuery { since_ms: end - DAY, until_ms: end, group_by: vec![Dim::Time], ..Default::default() },
        ),
        (
            "last hour by minute",
            StatsQuery { since_ms: end - HOUR, until_ms: end, group_by: vec![Dim::Time], ..Default::default() },
        ),
    ];
    if std::env::var_os("EXPLAIN").is_some() {
        for (g, since) in [(1, end - 30 * DAY), (2, end - 30 * DAY)] {
            let sql = format!(
                "EXPLAIN (ANALYZE, BUFFERS) SELECT 0, u.backend_id, u.model, '', '', u.pool, \
                 jsonb_build_object('attempts', coalesce(sum(c.attempts), 0)) \
                 FROM usage u, jsonb_to_record(u.counters) AS c(attempts bigint) \
                 WHERE u.granularity = {g} AND u.bucket_ms >= {since} AND u.bucket_ms < {end} GROUP BY 1, 2, 3, 4, 5, 6"
            );
            let out = Command::new("psql").args([url.as_str(), "-c", &sql]).output()?;
            println!("{}", String::from_utf8_lossy(&out.stdout));
        }
    }
    println!("| query | groups | requests counted | min ms | median ms |");
    println!("|---|---|---|---|---|");
    for (name, query) in queries {
        let mut times = Vec::new();
        let mut report = None;
        for _ in 0..args.runs.max(1) {
            let t = Instant::now();
            report = Some(get_stats(&store, &query)?);
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        let report = report.expect("one run");
        println!(
            "| {name} | {} | {} | {:.1} | {:.1} |",
            report.rows.len(),
            report.totals.answered,
            times[0],
            times[times.len() / 2]
        );
    }
    writes(&store, args.writers)?;
    Ok(())
}

/// Config writes per second (one at a time) and report batches per second (`writers` at
/// once, each a batch of 5 records from a node of its own).
fn writes(store: &Store, writers: usize) -> anyhow::Result<()> {
    const COMMITS: usize = 300;
    let t = Instant::now();
    for _ in 0..COMMITS {
        store.commit(ConfigChange::default(), &Actor::system(), "Bench", "bench")?;
    }
    let commits = COMMITS as f64 / t.elapsed().as_secs_f64();
    const BATCHES: u64 = 400;
    let minute = sidecar_control_plane::util::now_ms() / MINUTE * MINUTE;
    let record = |i: u64| ReportRecord {
        minute_ms: minute,
        backend_id: format!("bkd_{}", i % 5),
        model: "gpt-bench".into(),
        pool: "primary".into(),
        key_id: String::new(),
        counters: UsageCounters {
            attempts: 3,
            answered: 3,
            succeeded: 3,
            prompt_tokens: 300,
            latency_histogram: vec![0, 3],
            ..Default::default()
        },
    };
    let t = Instant::now();
    std::thread::scope(|scope| {
        for w in 0..writers {
            scope.spawn(move || {
                let node = format!("writer-{w}");
                for seq in 1..=BATCHES {
                    let batch: Vec<ReportRecord> = (0..5).map(record).collect();
                    store.apply_report(&node, "boot", seq, &batch).expect("report applied");
                }
            });
        }
    });
    let reports = (BATCHES * writers as u64) as f64 / t.elapsed().as_secs_f64();
    println!();
    println!("| write | per second |");
    println!("|---|---|");
    println!("| config writes, one at a time (transaction + version bump + audit) | {commits:.0} |");
    println!(
        "| report batches of 5 records, {writers} nodes at once (rollups of 3 granularities + exactly-once mark) | {reports:.0} |"
    );
    Ok(())
}
