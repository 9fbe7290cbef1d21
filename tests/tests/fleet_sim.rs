//! The fleet simulator (`sidecar_tests::sim`) on a representative subset: the real
//! allocator and the proxies' real limiter and grant handling under a driven clock. The
//! full table: `cargo run --release -p sidecar-tests --bin fleet-sim` (docs/benchmarks.md).

use std::time::Duration;

use proptest::prelude::*;
use sidecar_tests::sim::{Event, LimitKind, Scenario, patterns, run};

const SKEW: [f64; 8] = [40.0, 20.0, 10.0, 10.0, 5.0, 5.0, 5.0, 5.0];

fn assert_within_limit(s: &Scenario, max_in_window: u32) {
    assert!(max_in_window <= s.limit, "{}: {max_in_window} in one window, over the limit of {}", s.name, s.limit);
}

#[tokio::test(start_paused = true)]
async fn four_and_eight_nodes_use_at_least_95_percent_of_the_limit_under_even_and_skewed_demand() {
    for n in [4, 8] {
        let per_sec = 2.0;
        for s in [
            Scenario::new("even 2×", n, 120, patterns::even(2.0 * per_sec, n)),
            Scenario::new("skewed 3×", n, 120, patterns::skewed(3.0 * per_sec, &SKEW, n)),
        ] {
            let s = Scenario { duration: Duration::from_secs(150), ..s };
            let o = run(&s).await;
            assert_within_limit(&s, o.max_in_window);
            eprintln!("{} × {n}: min {:.3} mean {:.3}", s.name, o.min_utilisation, o.mean_utilisation);
            assert!(o.mean_utilisation >= 0.95, "{} × {n}: mean use {:.3}", s.name, o.mean_utilisation);
            assert!(o.min_utilisation >= 0.93, "{} × {n}: lowest window {:.3}", s.name, o.min_utilisation);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn demand_that_moves_between_nodes_is_followed_at_the_fleets_pace() {
    // All the demand moves to the next node every 20 s. The new node's window budget can
    // grow only as the old node's admissions leave the window; pacing at its share of the
    // fleet's rate (not at its small grant) lets it take them as they do.
    let s = Scenario {
        duration: Duration::from_secs(150),
        ..Scenario::new("moving 2×", 4, 120, patterns::moving(4.0, 4, Duration::from_secs(20)))
    };
    let o = run(&s).await;
    assert_within_limit(&s, o.max_in_window);
    eprintln!("moving: min {:.3} mean {:.3}", o.min_utilisation, o.mean_utilisation);
    assert!(o.mean_utilisation >= 0.84, "mean use {:.3}", o.mean_utilisation);
}

/// A node leaving (with a goodbye), one joining, one cut off from the control plane for
/// `outage` (past its 5 s lease when longer: it then serves on its fallback share), and,
/// if `crash`, one more stopping without a word.
fn churn(n: usize, outage: Duration, crash: bool) -> Vec<(Duration, Event)> {
    let mut events = vec![
        (Duration::from_secs(40), Event::Leave(0)),
        (Duration::from_secs(50), Event::Join(n - 1)),
        (Duration::from_secs(45), Event::Disconnect(1)),
        (Duration::from_secs(45) + outage, Event::Reconnect(1)),
    ];
    if crash && n > 3 {
        events.push((Duration::from_secs(30), Event::Crash(2)));
    }
    events
}

/// The whole fleet loses the control plane at 40 s for `outage`.
fn fleet_outage(n: usize, outage: Duration) -> Vec<(Duration, Event)> {
    (0..n)
        .flat_map(|i| {
            [(Duration::from_secs(40), Event::Disconnect(i)), (Duration::from_secs(40) + outage, Event::Reconnect(i))]
        })
        .collect()
}

/// Every node's process restarts in turn from 40 s, `gap` apart (a rolling deploy).
fn rolling_restart(n: usize, gap: Duration) -> Vec<(Duration, Event)> {
    (0..n).map(|i| (Duration::from_secs(40) + gap * i as u32, Event::Restart(i))).collect()
}

/// The case the property test found before a cut-off node's fallback share was held:
/// seven proxies share 18 requests per 10 s; one is cut off for 7 s, past its 5 s lease,
/// and serves on its fallback share (its lease over) while the others, still connected,
/// were handed what it had held.
#[tokio::test(start_paused = true)]
async fn a_node_cut_off_past_its_lease_serves_on_a_share_nobody_else_was_given() {
    for (outage, load) in [(7, 2.0), (12, 3.0), (20, 1.5)] {
        let nodes = 7;
        let mut s = Scenario::new("cut off", nodes, 18, patterns::skewed(load * 1.8, &[1.0; 7], nodes));
        s.window = Duration::from_secs(10);
        s.duration = Duration::from_secs(90);
        s.events = vec![
            (Duration::from_secs(60), Event::Disconnect(1)),
            (Duration::from_secs(60 + outage), Event::Reconnect(1)),
        ];
        let o = run(&s).await;
        eprintln!("outage {outage} s, load {load}: most in a window {}", o.max_in_window);
        assert_within_limit(&s, o.max_in_window);
    }
}

/// A client key's fleet-wide requests per minute rides the same allocator: never over it
/// in any minute, and used under skewed and moving demand at 4, 8 and 16 proxies, with a
/// node leaving and one cut off on the way.
#[tokio::test(start_paused = true)]
async fn a_keys_limit_is_never_exceeded_and_is_used_across_the_fleet() {
    let skew = [40.0, 20.0, 10.0, 10.0, 5.0, 5.0, 5.0, 5.0];
    for n in [4, 8, 16] {
        let limit = 120u32.max(15 * n as u32);
        let per_sec = f64::from(limit) / 60.0;
        for (name, pattern, churn_events) in [
            ("skewed 3x", patterns::skewed(3.0 * per_sec, &skew, n), false),
            ("moving 2x", patterns::moving(2.0 * per_sec, n, Duration::from_secs(20)), false),
            ("skewed 3x, churn", patterns::skewed(3.0 * per_sec, &skew, n), true),
        ] {
            let mut s = Scenario::new(name, n, limit, pattern);
            s.kind = LimitKind::Key;
            if churn_events {
                s.events = churn(n, Duration::from_secs(10), true);
            }
            let o = run(&s).await;
            eprintln!(
                "key, {name}, {n} nodes: most {} of {limit}, use min/mean {:.2}/{:.2}",
                o.max_in_window, o.min_utilisation, o.mean_utilisation
            );
            assert_within_limit(&s, o.max_in_window);
            if !churn_events {
                assert!(o.mean_utilisation >= 0.8, "{name}, {n} nodes: mean use {:.2}", o.mean_utilisation);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Never over the limit (a backend's, or a client key's) in any window, whatever the demand, churn (a node leaving, one
    /// joining, one cut off for up to 30 s, past its lease, one crashing), the whole fleet
    /// losing the control plane for up to 30 s, message delays, grant interval and
    /// provider window.
    #[test]
    fn the_fleet_never_exceeds_the_limit_in_any_window(
        nodes in 2usize..8,
        limit in 10u32..300,
        weights in prop::collection::vec(0.0f64..10.0, 8),
        load in 0.5f64..4.0,
        delay_ms in 0u64..900,
        interval_ms in prop::sample::select(vec![250u64, 500, 1000]),
        window_s in prop::sample::select(vec![10u64, 30, 60]),
        events in 0u8..4,
        outage_s in 1u64..30,
        crash in any::<bool>(),
        key in any::<bool>(),
    ) {
        // A client key's limit is per minute.
        let window = Duration::from_secs(if key { 60 } else { window_s });
        let per_sec = f64::from(limit) / window.as_secs_f64();
        let weights: Vec<f64> = weights.iter().map(|w| w + 0.01).collect();
        let mut s = Scenario::new("random", nodes, limit, patterns::skewed(load * per_sec, &weights, nodes));
        s.window = window;
        s.duration = Duration::from_secs(90);
        s.delay = Duration::from_millis(delay_ms);
        s.timing.interval = Duration::from_millis(interval_ms);
        if key {
            s.kind = LimitKind::Key;
        }
        let outage = Duration::from_secs(outage_s);
        s.events = match events {
            1 => churn(nodes, outage, crash),
            2 => fleet_outage(nodes, outage),
            3 => rolling_restart(nodes, outage / 4),
            _ => Vec::new(),
        };
        let o = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(run(&s));
        prop_assert!(o.max_in_window <= s.limit, "{} in one window of {:?}, limit {}", o.max_in_window, window, s.limit);
    }
}

/// Cases the property test found: the whole fleet reconnecting after a 1 s outage (each
/// node's reports were forgotten, and the allocator grew grants within bounds that
/// together exceeded the limit), and a rolling restart (a new process remembers nothing
/// its predecessor admitted in the window).
#[tokio::test(start_paused = true)]
async fn a_fleet_that_reconnects_or_restarts_together_stays_within_the_limit() {
    let weights = [8.74, 1.32, 0.01, 2.3];
    let per_sec = 11.0 / 30.0;
    let mut s = Scenario::new("reconnect", 4, 11, patterns::skewed(1.17 * per_sec, &weights, 4));
    s.window = Duration::from_secs(30);
    s.duration = Duration::from_secs(90);
    s.delay = Duration::ZERO;
    s.timing.interval = Duration::from_millis(250);
    s.events = fleet_outage(4, Duration::from_secs(1));
    let o = run(&s).await;
    assert_within_limit(&s, o.max_in_window);

    let mut s =
        Scenario::new("rolling restart", 5, 78, patterns::skewed(3.0 * 78.0 / 10.0, &[4.0, 1.0, 1.0, 1.0, 1.0], 5));
    s.window = Duration::from_secs(10);
    s.duration = Duration::from_secs(70);
    s.events = rolling_restart(5, Duration::from_secs(1));
    let o = run(&s).await;
    assert_within_limit(&s, o.max_in_window);
}
