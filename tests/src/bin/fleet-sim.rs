//! The fleet simulator's results table (see `sidecar_tests::sim`): utilisation and
//! overshoot for 4, 8, 16 and 50 nodes under several demand patterns, as Markdown.
//!
//! `cargo run --release -p sidecar-tests --bin fleet-sim [-- --quick]`

use std::time::Duration;

use sidecar_tests::sim::{Event, LimitKind, Scenario, patterns, run_blocking};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if std::env::args().any(|a| a == "--e2e") {
        // The end-to-end scenario of the issue: 8 proxies, 120 RPM, 3× demand skewed
        // 40/20/10/10/5/5/5/5, 75 s; the best 60 s window, start-up included.
        let skew = [40.0, 20.0, 10.0, 10.0, 5.0, 5.0, 5.0, 5.0];
        let mut s = Scenario::new("e2e", 8, 120, patterns::skewed(6.0, &skew, 8));
        s.duration = Duration::from_secs(75);
        let o = run_blocking(&s);
        println!(
            "best 60 s window {:.0}% of the limit, most in any window {}",
            100.0 * o.best_from_start,
            o.max_in_window
        );
        return;
    }
    if std::env::args().any(|a| a == "--trace") {
        let per_sec = 2.0;
        let s = Scenario::new("trace", 4, 120, patterns::moving(2.0 * per_sec, 4, Duration::from_secs(20)));
        trace(&run_blocking(&s), 180);
        return;
    }
    let sizes: &[usize] = if quick { &[4, 8] } else { &[4, 8, 16, 50] };
    println!(
        "| scenario | nodes | limit/min | max in any window | min / mean / best use per window | refused (while unused) |"
    );
    println!("|---|---|---|---|---|---|");
    for &n in sizes {
        let limit = 120u32.max(15 * n as u32);
        let per_sec = f64::from(limit) / 60.0;
        let skew = [40.0, 20.0, 10.0, 10.0, 5.0, 5.0, 5.0, 5.0];
        let mut scenarios = vec![
            Scenario::new("even, 2× the limit", n, limit, patterns::even(2.0 * per_sec, n)),
            Scenario::new("skewed 40/20/10/10/5/5/5/5, 3×", n, limit, patterns::skewed(3.0 * per_sec, &skew, n)),
            Scenario::new("one hot node (2×), others 1% each", n, limit, patterns::hot(2.0 * per_sec, 0.01 * per_sec)),
            Scenario::new(
                "all demand (2×) moves every 20 s",
                n,
                limit,
                patterns::moving(2.0 * per_sec, n, Duration::from_secs(20)),
            ),
        ];
        let mut churn = Scenario::new(
            "skewed 3×, a node leaves, one joins, one loses the CP for 10 s",
            n,
            limit,
            patterns::skewed(3.0 * per_sec, &skew, n),
        );
        churn.events = vec![
            (Duration::from_secs(60), Event::Leave(0)),
            (Duration::from_secs(90), Event::Join(n - 1)),
            (Duration::from_secs(100), Event::Disconnect(1)),
            (Duration::from_secs(110), Event::Reconnect(1)),
        ];
        scenarios.push(churn);
        let mut moving_low = Scenario::new(
            "all demand (2×) moves every 20 s, low priority (2 s in the queue)",
            n,
            limit,
            patterns::moving(2.0 * per_sec, n, Duration::from_secs(20)),
        );
        moving_low.queue_timeout = Duration::from_secs(2);
        scenarios.push(moving_low);
        let mut late =
            Scenario::new("skewed 3×, every message 500 ms late", n, limit, patterns::skewed(3.0 * per_sec, &skew, n));
        late.delay = Duration::from_millis(500);
        scenarios.push(late);
        // A client key's fleet-wide limit (requests over a proxy's share refused at once).
        let mut key_skewed = Scenario::new(
            "client key: skewed 40/20/10/10/5/5/5/5, 3×",
            n,
            limit,
            patterns::skewed(3.0 * per_sec, &skew, n),
        );
        key_skewed.kind = LimitKind::Key;
        scenarios.push(key_skewed);
        let mut key_moving = Scenario::new(
            "client key: all demand (2×) moves every 20 s",
            n,
            limit,
            patterns::moving(2.0 * per_sec, n, Duration::from_secs(20)),
        );
        key_moving.kind = LimitKind::Key;
        scenarios.push(key_moving);
        for s in scenarios {
            let o = run_blocking(&s);
            let lag = if s.name.contains("all demand") { shift_lag(&o, n, per_sec) } else { String::new() };
            println!(
                "| {}{lag} | {n} | {} | {} {} | {:.0}% / {:.0}% / {:.0}% | {} ({}) |",
                s.name,
                s.limit,
                o.max_in_window,
                if o.max_in_window <= o.limit { "✓" } else { "**over**" },
                100.0 * o.min_utilisation,
                100.0 * o.mean_utilisation,
                100.0 * o.best_utilisation,
                o.refused,
                o.refused_while_unused,
            );
        }
    }
}

/// Per-second admissions of each node, for looking at one scenario closely.
#[allow(dead_code)]
fn trace(o: &sidecar_tests::sim::Outcome, secs: u64) {
    for s in 0..secs {
        let counts: Vec<String> = (0..o.per_node.len())
            .map(|n| format!("{:>3}", (o.rate(n, Duration::from_secs(s), Duration::from_secs(s + 1))) as u32))
            .collect();
        eprintln!("{s:>4}s {}", counts.join(" "));
    }
}

/// For demand that moves to the next node every 20 s: after each move (from two windows
/// in), how long until the new node admits at 90% of the limit's rate over 2 s; the median
/// and the slowest, as a suffix for the scenario's name.
fn shift_lag(o: &sidecar_tests::sim::Outcome, nodes: usize, per_sec: f64) -> String {
    let mut lags = Vec::new();
    let mut t0 = 120u64;
    while t0 + 20 <= 180 {
        let node = (t0 / 20) as usize % nodes;
        let lag = (0..18u64).find(|d| {
            let from = Duration::from_secs(t0 + d);
            o.rate(node, from, from + Duration::from_secs(2)) >= 0.9 * per_sec
        });
        lags.push(lag.map_or(20, |d| d));
        t0 += 20;
    }
    lags.sort_unstable();
    format!(" (new node at 90% after {} s, slowest {} s)", lags[lags.len() / 2], lags[lags.len() - 1])
}
