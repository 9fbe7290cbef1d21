//! How a node's sessions and processes bear on its share: reconnects, restarts, a goodbye,
//! a node cut off from us, and the fallback share.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_restarted_node_is_not_trusted_to_remember_the_window_its_predecessor_used() {
    let fleet = Fleet::new(FleetTiming::default());
    let b = backend(60, 60);
    let state = config(b.clone());
    let _rx1 = attach(&fleet, "n1", 1);
    let mut rx2 = attach(&fleet, "n2", 2);
    fleet.decorate("n1", &mut snapshot(&b));
    tokio::time::advance(Duration::from_secs(3)).await;
    // n1 restarts: a new session whose limiter starts empty.
    let _rx1 = attach(&fleet, "n1", 3);
    demand(&fleet, "n1", 1.0);
    demand(&fleet, "n2", 100.0);
    fleet.regrant(&state);
    tokio::time::advance(2 * FleetTiming::default().propagation + Duration::from_millis(100)).await;
    demand(&fleet, "n1", 1.0);
    demand(&fleet, "n2", 100.0);
    fleet.regrant(&state);
    assert!(grant(&mut rx2).0 <= 1, "the old process may have sent 60 in this minute");
}

#[tokio::test(start_paused = true)]
async fn the_same_process_reconnecting_keeps_what_it_reported() {
    // 10 per 10 s. n1 held it all and reported using 2 under a smaller grant; n2 wants
    // it. n1 loses the stream and comes back as the same process: its report still
    // bounds what it used, so n2 may grow at once; a new process says nothing about
    // its predecessor's use, so n2 may not.
    for (boot, n2_may_grow) in [("p1", true), ("p2", false)] {
        let fleet = Fleet::new(FleetTiming::default());
        let b = backend(60, 10);
        let state = config(b.clone());
        let _rx1 = attach_process(&fleet, "n1", "p1", 1);
        let mut rx2 = attach_process(&fleet, "n2", "q1", 2);
        fleet.decorate("n1", &mut snapshot(&b));
        demand(&fleet, "n1", 1.0);
        demand(&fleet, "n2", 100.0);
        fleet.regrant(&state);
        tokio::time::advance(2 * FleetTiming::default().propagation + Duration::from_millis(100)).await;
        let d = BackendDemand {
            backend_id: "bkd_a".into(),
            demand: 1.0,
            in_window: 2,
            lease_remaining: Duration::from_secs(4),
            ..Default::default()
        };
        fleet.demand("n1", &[d]);
        fleet.detach("n1", 1, false);
        let _rx1 = attach_process(&fleet, "n1", boot, 3);
        demand(&fleet, "n2", 100.0);
        fleet.regrant(&state);
        let g2 = grant(&mut rx2).0;
        if n2_may_grow {
            assert!(g2 >= 5, "n1's report still holds after it reconnects: {g2}");
        } else {
            assert!(g2 <= 1, "a new process of n1 says nothing of what its predecessor sent: {g2}");
        }
    }
}

/// The fallback share `rx` last received: requests per window once the lease runs out.
fn fallback(rx: &mut mpsc::Receiver<FleetMessage>) -> u32 {
    let mut last = None;
    while let Ok(msg) = rx.try_recv() {
        if let FleetMessage::Grants { grants, .. } = msg {
            last = grants.first().map(|g| g.fallback_rpm);
        }
    }
    last.expect("a grant")
}

#[tokio::test(start_paused = true)]
async fn a_node_lost_without_a_goodbye_keeps_its_fallback_share_for_the_hold() {
    // 60 per 10 s between two nodes: 30 each as a fallback share. n1 goes away; once its
    // lease and window are over, n2's fallback share is the whole limit only if n1 said
    // goodbye: a node merely cut off from us serves on its 30 until the hold ends.
    for goodbye in [true, false] {
        let timing = FleetTiming { lost_hold: Duration::from_secs(60), ..FleetTiming::default() };
        let fleet = Fleet::new(timing);
        let b = backend(360, 10);
        let state = config(b.clone());
        let _rx1 = attach(&fleet, "n1", 1);
        let mut rx2 = attach(&fleet, "n2", 2);
        demand(&fleet, "n1", 10.0);
        demand(&fleet, "n2", 10.0);
        fleet.regrant(&state);
        assert_eq!(fallback(&mut rx2), 30);
        fleet.detach("n1", 1, goodbye);
        // Past n1's lease (5 s) and a window (10 s) after it.
        let mut share = 0;
        for _ in 0..20 {
            tokio::time::advance(Duration::from_secs(1)).await;
            demand(&fleet, "n2", 10.0);
            fleet.regrant(&state);
            share = fallback(&mut rx2);
        }
        if goodbye {
            assert_eq!(share, 60, "n1 said goodbye: n2 may fall back to the whole limit");
        } else {
            assert_eq!(share, 30, "n1 may still serve on its 30: {share}");
            // After the hold n1 counts as gone.
            for _ in 0..60 {
                tokio::time::advance(Duration::from_secs(1)).await;
                demand(&fleet, "n2", 10.0);
                fleet.regrant(&state);
                share = fallback(&mut rx2);
            }
            assert_eq!(share, 60, "the hold is over");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_node_whose_lease_is_known_to_hold_does_not_keep_its_fallback_share_reserved() {
    // The fallback share (limit ÷ nodes = 30) is what a node runs once its lease has run
    // out. A node whose last report (here older than two propagation delays, so its
    // window use alone bounds nothing) said its lease still holds cannot switch to it
    // before then, so the busy node may have that capacity.
    let busy_grant = |lease: Duration| async move {
        let fleet = Fleet::new(FleetTiming::default());
        let state = config(backend(60, 60));
        let _rx1 = attach(&fleet, "n1", 1);
        let mut rx2 = attach(&fleet, "n2", 2);
        // n1 holds most of the limit for 30 s, then goes idle and n2 wants everything.
        for round in 0..32 {
            let (d1, d2) = if round < 12 { (600.0, 0.0) } else { (0.0, 600.0) };
            for (node, demand) in [("n1", d1), ("n2", d2)] {
                let d = BackendDemand {
                    backend_id: "bkd_a".into(),
                    demand,
                    in_window: 0,
                    lease_remaining: lease,
                    ..Default::default()
                };
                fleet.demand(node, &[d]);
            }
            tokio::time::advance(Duration::from_millis(2500)).await;
            fleet.regrant(&state);
        }
        grant(&mut rx2).0
    };
    let known = busy_grant(Duration::from_secs(5)).await;
    assert!(known >= 45, "the busy node gets three quarters of the limit within 20 s: {known}");
    let unknown = busy_grant(Duration::ZERO).await;
    assert!(unknown <= 30, "without the lease the idle node's fallback stays reserved: {unknown}");
}

#[tokio::test(start_paused = true)]
async fn nodes_gone_for_good_are_forgotten() {
    // A hundred node ids come and go (half with a goodbye, half lost, some restarted):
    // once their leases, windows and holds are over, nothing of them is kept.
    let timing = FleetTiming { lost_hold: Duration::from_secs(10), ..FleetTiming::default() };
    let fleet = Fleet::new(timing);
    let b = backend(60, 10);
    let state = config(b.clone());
    for i in 0..100u64 {
        let node = format!("n{i}");
        let _rx = attach(&fleet, &node, 2 * i);
        fleet.regrant(&state);
        if i % 3 == 0 {
            let _rx = attach(&fleet, &node, 2 * i + 1);
            fleet.regrant(&state);
        }
        fleet.detach(&node, 2 * i + u64::from(i % 3 == 0), i % 2 == 0);
    }
    for _ in 0..40 {
        tokio::time::advance(Duration::from_secs(1)).await;
        fleet.regrant(&state);
    }
    assert!(fleet.boots.lock().unwrap().is_empty(), "processes remembered: {}", fleet.boots.lock().unwrap().len());
    let backends = fleet.backends.lock().unwrap();
    assert!(backends.values().all(|f| f.shares.0.is_empty()), "shares kept for nodes long gone");
}

#[tokio::test(start_paused = true)]
async fn a_new_allocator_counts_the_share_a_node_reports_running_until_it_runs_one_of_ours() {
    // A control plane that takes over (a new leader, or one restarted) never issued n1's
    // grant: n1 reports running 60 of 60 and has used 50 of it. Giving n2 its demand at
    // once would let n1 admit 10 more and n2 60 in one window.
    let fleet = Fleet::new(FleetTiming::default());
    let b = backend(60, 60);
    let state = config(b.clone());
    let mut rx1 = attach(&fleet, "n1", 1);
    let mut rx2 = attach(&fleet, "n2", 2);
    let running = |node: &str, granted: u32, round: u64| {
        let d = BackendDemand {
            backend_id: "bkd_a".into(),
            demand: if node == "n1" { 1.0 } else { 100.0 },
            in_window: if node == "n1" { 50 } else { 0 },
            lease_remaining: Duration::from_secs(4),
            granted,
            grant_round: round,
            ..Default::default()
        };
        fleet.demand(node, &[d]);
    };
    running("n1", 60, 7);
    running("n2", 0, 0);
    fleet.regrant(&state);
    let first = grant(&mut rx2).0;
    assert_eq!(first, 0, "n1 may still admit up to 60 in this window");
    // Once n1 reports running our grant, the old one no longer binds it.
    let ours = match rx1.try_recv() {
        Ok(FleetMessage::Grants { round, grants, .. }) => (round, grants[0].rpm),
        other => panic!("no grant for n1: {other:?}"),
    };
    tokio::time::advance(Duration::from_millis(1100)).await;
    running("n1", ours.1, ours.0);
    running("n2", 0, 0);
    fleet.regrant(&state);
    tokio::time::advance(Duration::from_millis(1100)).await;
    running("n1", ours.1, ours.0);
    fleet.regrant(&state);
    let later = grant(&mut rx2).0;
    assert!((5..=10).contains(&later), "n2 grows into what n1 has not used once n1 runs a grant of ours: {later}");
}
