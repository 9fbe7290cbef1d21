//! `sidecarctl stats` and `sidecarctl cooldowns`: usage and cooldown history over a time
//! range, as tables or as a flat JSON view for scripts.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use sidecar_proto::v1 as pb;

use crate::{
    cli::{CooldownsArgs, Format, StatsArgs, TimeArg},
    commands::{Ctx, now_ms},
    output::{Table, granularity_name, line, print_fields, print_json, time},
};

/// Parses `--since`/`--until`: a duration ago (`1h`, `2days`), an RFC 3339 time
/// (`2024-10-04T12:00:00Z`), a date (`2024-10-04`, midnight UTC) or unix ms.
pub(crate) fn parse_time(text: &str) -> Result<TimeArg, String> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return match ms {
            0.. => Ok(TimeArg::At(ms)),
            _ => Err(format!("a time cannot be negative, got {text}")),
        };
    }
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(TimeArg::Ago(ago));
    }
    let full = match text.len() {
        10 => format!("{text}T00:00:00Z"),
        _ => text.to_owned(),
    };
    humantime::parse_rfc3339_weak(&full)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .map(TimeArg::At)
        .ok_or_else(|| {
            format!(
                "expected a duration ago (30m, 1h, 7days), an RFC 3339 time \
                 (2024-10-04T12:00:00Z), a date (2024-10-04) or unix ms, got {text:?}"
            )
        })
}

/// The unix ms a time argument stands for at `now`.
fn resolve(t: TimeArg, now: i64) -> i64 {
    match t {
        TimeArg::At(ms) => ms,
        TimeArg::Ago(d) => now.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).max(1),
    }
}

/// Runs `stats`.
pub(crate) async fn stats(ctx: &mut Ctx, args: StatsArgs) -> anyhow::Result<()> {
    let now = now_ms();
    let request = pb::GetStatsRequest {
        since_ms: resolve(args.since, now),
        until_ms: args.until.map_or(0, |t| resolve(t, now)),
        granularity: args.granularity.map_or(pb::Granularity::Unspecified, |g| g.to_pb()) as i32,
        filter: Some(pb::StatsFilter {
            backends: args.backends,
            models: args.models,
            pools: args.pools,
            regions: args.regions,
            nodes: args.nodes,
            keys: args.keys,
            teams: args.teams,
        }),
        group_by: args.group_by.iter().map(|d| d.to_pb() as i32).collect(),
    };
    let resp = ctx.admin.get_stats(request.clone()).await?.into_inner();
    match ctx.format {
        Format::Json => print_json(&stats_view(&resp)),
        Format::Table => {
            print_fields(&totals_fields(&resp))?;
            line("")?;
            backend_table(&resp.by_backend).print()?;
            if !resp.rows.is_empty() {
                line("")?;
                rows_table(&request.group_by, &resp.rows).print()?;
            }
            Ok(())
        }
    }
}

/// Usage totals as a JSON object of their fields.
fn totals_object(totals: Option<&pb::UsageTotals>) -> Map<String, Value> {
    let totals = totals.cloned().unwrap_or_default();
    match serde_json::to_value(totals) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// A row with its totals' fields next to its identity, not nested.
fn flat_row(row: &pb::StatsRow) -> Value {
    let mut map = Map::new();
    map.insert("bucket_ms".into(), json!(row.bucket_ms));
    map.insert("backend_id".into(), json!(row.backend_id));
    map.insert("backend_name".into(), json!(row.backend_name));
    map.insert("model".into(), json!(row.model));
    map.insert("pool".into(), json!(row.pool));
    map.insert("region".into(), json!(row.region));
    map.insert("node_id".into(), json!(row.node_id));
    map.extend(totals_object(row.totals.as_ref()));
    Value::Object(map)
}

/// The JSON view of `stats`: `totals` with the UsageTotals fields, and `by_backend` and
/// `rows` as flat objects (identity and figures side by side).
pub(crate) fn stats_view(resp: &pb::GetStatsResponse) -> Value {
    json!({
        "since_ms": resp.since_ms,
        "until_ms": resp.until_ms,
        "granularity": granularity_name(resp.granularity),
        "totals": Value::Object(totals_object(resp.totals.as_ref())),
        "by_backend": resp.by_backend.iter().map(flat_row).collect::<Vec<_>>(),
        "rows": resp.rows.iter().map(flat_row).collect::<Vec<_>>(),
    })
}

/// A cost in USD with enough digits for per-token prices.
fn usd(cost: f64) -> String {
    format!("{cost:.6}")
}

fn totals_fields(resp: &pb::GetStatsResponse) -> Vec<(&'static str, String)> {
    let t = resp.totals.clone().unwrap_or_default();
    let ttft = match t.ttft_count {
        0 => "-".to_owned(),
        n => format!("{:.0} ms avg over {n} streams", t.ttft_ms_sum as f64 / n as f64),
    };
    vec![
        (
            "range",
            format!("{} to {} (per {})", time(resp.since_ms), time(resp.until_ms), granularity_name(resp.granularity)),
        ),
        ("requests", t.requests.to_string()),
        ("succeeded", t.succeeded.to_string()),
        ("errors", t.errors.to_string()),
        ("rate_limited", t.rate_limited.to_string()),
        (
            "attempts",
            format!(
                "{} (429 {}, 5xx {}, timeout {}, connect {}, 4xx {})",
                t.attempts, t.rate_limited, t.errors_5xx, t.errors_timeout, t.errors_connect, t.errors_4xx
            ),
        ),
        ("tokens", format!("{} prompt, {} completion, {} total", t.prompt_tokens, t.completion_tokens, t.total_tokens)),
        ("cost_usd", usd(t.cost_usd)),
        ("avg_latency_ms", format!("{:.1}", t.avg_latency_ms)),
        ("ttft", ttft),
    ]
}

/// How a backend is shown: its name, else its id, and `(proxy)` for answers the proxy
/// gave itself.
fn backend_label(id: &str, name: &str) -> String {
    match (id, name) {
        ("", _) => "(proxy)".to_owned(),
        (id, "") => id.to_owned(),
        (_, name) => name.to_owned(),
    }
}

const FIGURES: [&str; 7] = ["REQUESTS", "SUCCEEDED", "ERRORS", "429", "PROMPT", "COMPLETION", "COST"];

fn figures(row: &pb::StatsRow) -> Vec<String> {
    let t = row.totals.clone().unwrap_or_default();
    vec![
        t.requests.to_string(),
        t.succeeded.to_string(),
        t.errors.to_string(),
        t.rate_limited.to_string(),
        t.prompt_tokens.to_string(),
        t.completion_tokens.to_string(),
        usd(t.cost_usd),
    ]
}

fn backend_table(rows: &[pb::StatsRow]) -> Table {
    let mut header = vec!["BACKEND"];
    header.extend(FIGURES);
    let mut t = Table::new(&header);
    for row in rows {
        let mut cells = vec![backend_label(&row.backend_id, &row.backend_name)];
        cells.extend(figures(row));
        t.row(cells);
    }
    t
}

/// A grouping's column: its title and how a row fills it.
type Column = (&'static str, fn(&pb::StatsRow) -> String);

/// Grouped rows: one column per grouping, in the order asked, then the figures.
fn rows_table(group_by: &[i32], rows: &[pb::StatsRow]) -> Table {
    let columns: Vec<Column> = group_by
        .iter()
        .filter_map(|dim| -> Option<Column> {
            Some(match pb::StatsDimension::try_from(*dim).ok()? {
                pb::StatsDimension::Time => ("TIME", |r| time(r.bucket_ms)),
                pb::StatsDimension::Backend => ("BACKEND", |r| backend_label(&r.backend_id, &r.backend_name)),
                pb::StatsDimension::Model => ("MODEL", |r| r.model.clone()),
                pb::StatsDimension::Pool => ("POOL", |r| r.pool.clone()),
                pb::StatsDimension::Region => ("REGION", |r| r.region.clone()),
                pb::StatsDimension::Node => ("NODE", |r| r.node_id.clone()),
                pb::StatsDimension::Key => {
                    ("KEY", |r| if r.key_id.is_empty() { "-".into() } else { r.key_name.clone() })
                }
                pb::StatsDimension::Team => ("TEAM", |r| if r.team.is_empty() { "-".into() } else { r.team.clone() }),
                pb::StatsDimension::Unspecified => return None,
            })
        })
        .collect();
    let mut header: Vec<&'static str> = columns.iter().map(|(h, _)| *h).collect();
    header.extend(FIGURES);
    let mut t = Table::new(&header);
    for row in rows {
        let mut cells: Vec<String> = columns.iter().map(|(_, cell)| cell(row)).collect();
        cells.extend(figures(row));
        t.row(cells);
    }
    t
}

/// Runs `cooldowns`.
pub(crate) async fn cooldowns(ctx: &mut Ctx, args: CooldownsArgs) -> anyhow::Result<()> {
    let now = now_ms();
    let request = pb::ListCooldownsRequest {
        since_ms: resolve(args.since, now),
        until_ms: args.until.map_or(0, |t| resolve(t, now)),
        backend: args.backend.unwrap_or_default(),
        node: args.node.unwrap_or_default(),
    };
    let resp = ctx.admin.list_cooldowns(request).await?.into_inner();
    if ctx.format == Format::Json {
        return print_json(&resp);
    }
    let mut t = Table::new(&["START", "END", "BACKEND", "NODE", "COUNT", "DURATION", "RETRY_AFTER"]);
    for e in &resp.events {
        t.row(vec![
            time(e.start_ms),
            time(e.end_ms),
            backend_label(&e.backend_id, &e.backend_name),
            e.node_id.clone(),
            e.consecutive_count.to_string(),
            seconds(e.duration_ms),
            match e.retry_after_ms {
                0 => "-".to_owned(),
                ms => seconds(ms),
            },
        ]);
    }
    Ok(t.print()?)
}

/// Milliseconds as a short human duration, e.g. `1m 30s`.
fn seconds(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms.div_ceil(1000))).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_durations_ago_dates_rfc3339_or_unix_ms() {
        assert_eq!(parse_time("1h").unwrap(), TimeArg::Ago(Duration::from_secs(3600)));
        assert_eq!(parse_time("2024-10-04").unwrap(), TimeArg::At(1_728_000_000_000));
        assert_eq!(parse_time("2024-10-04T01:00:00Z").unwrap(), TimeArg::At(1_728_003_600_000));
        assert_eq!(parse_time("1728000000000").unwrap(), TimeArg::At(1_728_000_000_000));
        assert!(parse_time("yesterday").unwrap_err().contains("RFC 3339"));
        assert!(parse_time("-5").is_err());
        assert_eq!(resolve(TimeArg::Ago(Duration::from_secs(1)), 5_000), 4_000);
        assert_eq!(resolve(TimeArg::At(7), 5_000), 7);
    }

    #[test]
    fn the_json_view_is_flat_per_backend_and_per_row() {
        let totals = pb::UsageTotals {
            requests: 3,
            succeeded: 2,
            errors: 1,
            rate_limited: 1,
            prompt_tokens: 10,
            completion_tokens: 5,
            cost_usd: 0.5,
            ..Default::default()
        };
        let row = pb::StatsRow {
            backend_id: "bkd_1".into(),
            backend_name: "one".into(),
            totals: Some(totals.clone()),
            ..Default::default()
        };
        let resp = pb::GetStatsResponse {
            since_ms: 1,
            until_ms: 2,
            granularity: pb::Granularity::Minute as i32,
            totals: Some(totals),
            rows: vec![row.clone()],
            by_backend: vec![row],
        };
        let v = stats_view(&resp);
        for key in ["requests", "succeeded", "errors", "rate_limited", "prompt_tokens", "completion_tokens", "cost_usd"]
        {
            assert!(v["totals"][key].is_number(), "totals.{key}: {v}");
            assert!(v["by_backend"][0][key].is_number(), "by_backend.{key}: {v}");
            assert!(v["rows"][0][key].is_number(), "rows.{key}: {v}");
        }
        assert_eq!(v["by_backend"][0]["backend_name"], "one");
        assert!(v["by_backend"][0].get("totals").is_none(), "not nested");
        assert_eq!(v["granularity"], "minute");
        assert_eq!((v["since_ms"].as_i64(), v["until_ms"].as_i64()), (Some(1), Some(2)));
    }

    #[test]
    fn grouped_rows_show_one_column_per_grouping() {
        let row = pb::StatsRow {
            model: "gpt".into(),
            node_id: "n1".into(),
            totals: Some(pb::UsageTotals { requests: 4, ..Default::default() }),
            ..Default::default()
        };
        let text = rows_table(&[pb::StatsDimension::Node as i32, pb::StatsDimension::Model as i32], &[row]).render();
        let mut lines = text.lines();
        assert!(lines.next().unwrap().starts_with("NODE  MODEL  REQUESTS"), "{text}");
        assert!(lines.next().unwrap().starts_with("n1    gpt    4"), "{text}");
        assert_eq!(backend_label("", ""), "(proxy)");
        assert_eq!(backend_label("bkd_9", ""), "bkd_9");
    }
}
