//! Per-key figures in `/metrics`, bounded: one series per key would grow with the number
//! of keys, so only the top [`TOP`] keys by spend today (UTC) and the top [`TOP`] keys by
//! share of their budget used are exported, labelled by the key's id, name and team from
//! the config (never anything a client sent). A key that leaves a top list has no series
//! from the next scrape on. Every key's figures are in the API (`GetStats` by key,
//! `GetKey`'s spend).
//!
//! Rendered at scrape time from the day rollups and the budgets' running spend, so every
//! control plane reports what its store holds.

use std::{collections::HashMap, fmt::Write};

use crate::{
    budgets::{Budgets, period},
    store::{BudgetPeriod, ClientKeyRecord, Granularity, Store},
};

/// How many keys each list holds.
pub const TOP: usize = 10;

/// Escapes a label value for the text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn key_labels(k: &ClientKeyRecord) -> String {
    format!("key_id=\"{}\",key=\"{}\",team=\"{}\"", label(&k.id), label(&k.name), label(&k.team))
}

/// The per-key metrics in Prometheus text format for `keys` (the live ones) at `now_ms`.
pub fn render(store: &Store, budgets: &Budgets, keys: &[ClientKeyRecord], now_ms: i64) -> String {
    let mut out = String::new();
    // Spend and requests today, per key the config knows.
    let (day_start, _) = period(BudgetPeriod::Day, now_ms);
    let mut today: HashMap<&str, (f64, u64)> = HashMap::new();
    for row in store.usage_rows(Granularity::Day, day_start, now_ms + 1).flatten() {
        if row.bucket_ms < day_start {
            continue;
        }
        if let Some(k) = keys.iter().find(|k| k.id == row.key_id) {
            let e = today.entry(k.id.as_str()).or_default();
            e.0 += row.counters.cost_usd;
            e.1 += row.counters.answered;
        }
    }
    let mut top: Vec<(&ClientKeyRecord, f64, u64)> =
        keys.iter().filter_map(|k| today.get(k.id.as_str()).map(|(usd, n)| (k, *usd, *n))).collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.id.cmp(&b.0.id)));
    top.truncate(TOP);
    let _ = writeln!(
        out,
        "# HELP sidecar_control_key_spend_usd Spend of the client key today (UTC), from reported usage; only the top {TOP} keys by spend.\n# TYPE sidecar_control_key_spend_usd gauge"
    );
    for (k, usd, _) in &top {
        let _ = writeln!(out, "sidecar_control_key_spend_usd{{{}}} {usd}", key_labels(k));
    }
    let _ = writeln!(
        out,
        "# HELP sidecar_control_key_requests Requests of the client key answered today (UTC), those the proxies refused included; only the top {TOP} keys by spend.\n# TYPE sidecar_control_key_requests gauge"
    );
    for (k, _, n) in &top {
        let _ = writeln!(out, "sidecar_control_key_requests{{{}}} {n}", key_labels(k));
    }
    // Budgets: share used in the current period.
    let mut used: Vec<(&ClientKeyRecord, f64, f64)> = keys
        .iter()
        .filter(|k| k.budget_usd > 0.0)
        .filter_map(|k| budgets.spent(store, k, now_ms).ok().map(|spent| (k, spent / k.budget_usd, spent)))
        .collect();
    used.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.id.cmp(&b.0.id)));
    used.truncate(TOP);
    let _ = writeln!(
        out,
        "# HELP sidecar_control_key_budget_used_ratio Share of the client key's budget spent in its period (1 = spent); only the top {TOP} keys by that share.\n# TYPE sidecar_control_key_budget_used_ratio gauge"
    );
    for (k, ratio, _) in &used {
        let _ = writeln!(out, "sidecar_control_key_budget_used_ratio{{{}}} {ratio}", key_labels(k));
    }
    let _ = writeln!(
        out,
        "# HELP sidecar_control_key_budget_remaining_usd What is left of the client key's budget in its period; the same keys.\n# TYPE sidecar_control_key_budget_remaining_usd gauge"
    );
    for (k, _, spent) in &used {
        let _ = writeln!(
            out,
            "sidecar_control_key_budget_remaining_usd{{{}}} {}",
            key_labels(k),
            (k.budget_usd - spent).max(0.0)
        );
    }
    out
}
