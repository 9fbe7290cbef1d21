//! Limiter math under a driven clock.

use std::time::Duration;

use tokio::time::Instant;

use super::window::SLOTS;
use super::*;

const MIN: Duration = Duration::from_secs(60);

/// Admits greedily at every `step` for `total`, returning admission times.
fn run(l: &mut RequestLimiter, start: Instant, step: Duration, total: Duration) -> Vec<Instant> {
    let mut out = Vec::new();
    let mut t = start;
    while t < start + total {
        while l.try_acquire(t) {
            out.push(t);
        }
        t += step;
    }
    out
}

fn max_in_any_window(times: &[Instant], window: Duration) -> usize {
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi].duration_since(times[lo]) >= window {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

#[test]
fn never_more_than_the_limit_in_any_window() {
    for (limit, burst) in [(1, 3), (2, 3), (40, 3), (60, 10), (600, 3), (7, 7)] {
        let start = Instant::now();
        let mut l = RequestLimiter::new(limit, burst, MIN, start);
        let times = run(&mut l, start, Duration::from_millis(50), Duration::from_secs(300));
        let max = max_in_any_window(&times, MIN);
        assert!(max <= limit as usize, "limit {limit} burst {burst}: {max} in one window");
        // Even when arrival jitter stretches the window by just under the margin.
        let max = max_in_any_window(&times, MIN + Duration::from_millis(590));
        assert!(max <= limit as usize, "limit {limit}: {max} within the margin");
        // And the limiter does not starve: over 5 minutes it admits close to 5 × limit.
        assert!(times.len() as u32 >= limit * 5 - limit, "limit {limit}: only {} admitted", times.len());
    }
}

#[test]
fn admissions_are_spread_not_spent_at_once() {
    let start = Instant::now();
    let mut l = RequestLimiter::new(60, 3, MIN, start);
    let times = run(&mut l, start, Duration::from_millis(10), Duration::from_secs(10));
    // 3 at once, then about one per second.
    assert!((12..=14).contains(&times.len()), "{}", times.len());
    assert_eq!(times.iter().filter(|&&t| t == start).count(), 3);
}

#[test]
fn next_available_is_exact() {
    let start = Instant::now();
    let mut l = RequestLimiter::new(60, 1, MIN, start);
    assert!(l.try_acquire(start));
    assert!(!l.try_acquire(start));
    let next = l.next_available(start);
    assert_eq!(next.duration_since(start).as_millis(), 1000);
    assert!(l.try_acquire(next));
}

#[test]
fn the_window_binds_when_the_bucket_would_allow_more() {
    let start = Instant::now();
    let mut l = RequestLimiter::new(2, 2, MIN, start);
    assert!(l.try_acquire(start) && l.try_acquire(start));
    // The bucket refills in 30 s, but two admissions are in the window until 60 s
    // (plus the 1% safety margin).
    assert_eq!(l.next_available(start + Duration::from_secs(31)), start + MIN + MIN / 100);
}

#[test]
fn refund_returns_the_admission() {
    let start = Instant::now();
    let mut l = RequestLimiter::new(1, 1, MIN, start);
    assert!(l.try_acquire(start));
    l.refund(start);
    assert!(l.try_acquire(start));
}

#[test]
fn reconfigure_keeps_the_log() {
    let start = Instant::now();
    let mut l = RequestLimiter::new(10, 10, MIN, start);
    for _ in 0..10 {
        assert!(l.try_acquire(start));
    }
    l.reconfigure(20, 10, MIN, start);
    let t = start + Duration::from_secs(30);
    let admitted = (0..20).filter(|_| l.try_acquire(t)).count();
    assert!(admitted <= 10, "raising the limit must count the 10 already spent: {admitted}");
}

#[test]
fn token_window_reserves_and_settles() {
    let start = Instant::now();
    let mut w = TokenWindow::new(1000, MIN);
    let id = w.reserve(start, 600);
    assert!(w.next_available(start, 600) > start, "600 + 600 > 1000");
    w.settle(id, 100);
    assert_eq!(w.next_available(start, 600), start, "settled to 100");
    w.reserve(start, 900);
    assert_eq!(w.next_available(start, 600), start + MIN);
    assert_eq!(w.used(start + MIN), 0);
}

#[test]
fn token_window_lets_one_oversized_request_through_an_empty_window() {
    let start = Instant::now();
    let mut w = TokenWindow::new(100, MIN);
    assert_eq!(w.next_available(start, 5000), start);
}

#[test]
fn retreat_steps_down_on_429s_and_recovers_after_calm() {
    let mut t = Instant::now();
    let mut r = Retreat::new(40);
    for i in 0..40 {
        r.record(t, i % 5 == 0); // 20% 429s
    }
    assert_eq!(r.tick(t, 40), 30);
    assert_eq!(r.tick(t, 40), 23, "each tick while above 5%");
    for _ in 0..20 {
        r.tick(t, 40);
    }
    assert_eq!(r.effective().round() as u32, 5, "floor");
    t += Duration::from_secs(61);
    r.tick(t, 40); // calm starts (no sample)
    t += Duration::from_secs(60);
    assert_eq!(r.tick(t, 40), 5, "not yet 120 s calm");
    t += Duration::from_secs(61);
    assert_eq!(r.tick(t, 40), 7, "+2 per tick after 120 s");
    assert_eq!(r.tick(t, 40), 9);
}

#[test]
fn retreat_needs_a_minimum_sample() {
    let t = Instant::now();
    let mut r = Retreat::new(40);
    for _ in 0..5 {
        r.record(t, true);
    }
    assert_eq!(r.tick(t, 40), 40);
}

#[test]
fn a_limit_of_zero_admits_nothing_until_raised() {
    let start = Instant::now();
    let mut l = RequestLimiter::new(0, 3, MIN, start);
    assert!(!l.try_acquire(start));
    assert!(!l.try_acquire(start + MIN * 2));
    l.reconfigure(2, 3, MIN, start + MIN * 2);
    assert!(l.try_acquire(start + MIN * 2 + Duration::from_secs(30)));
}

#[test]
fn large_limits_use_constant_memory_and_still_never_exceed() {
    let start = Instant::now();
    let limit = 100_000;
    let mut l = RequestLimiter::new(limit, 1000, MIN, start);
    let times = run(&mut l, start, Duration::from_millis(5), Duration::from_secs(180));
    assert!(max_in_any_window(&times, MIN) <= limit as usize);
    assert!(times.len() >= (limit as usize) * 2, "slots cost at most one slot of throughput: {}", times.len());
    assert!(l.admitted.entries.len() <= SLOTS as usize + 2, "{} log entries", l.admitted.entries.len());
}
