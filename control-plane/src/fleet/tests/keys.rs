//! Client keys' limits split across the fleet under a driven clock.

use tokio::sync::mpsc;

use super::*;

/// The last key grant `rx` received.
fn key_grant(rx: &mut mpsc::Receiver<FleetMessage>) -> KeyGrant {
    let mut last = None;
    while let Ok(msg) = rx.try_recv() {
        if let FleetMessage::Grants { keys, .. } = msg {
            last = keys.first().cloned();
        }
    }
    last.expect("a key grant")
}

/// A client key record with these limits (0 = none).
fn key(id: &str, rpm_limit: u32, tpm_limit: u32, max_concurrent: u32) -> crate::store::ClientKeyRecord {
    crate::store::ClientKeyRecord {
        id: id.into(),
        rpm_limit,
        tpm_limit,
        max_concurrent,
        enabled: true,
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_keys_request_limit_is_split_by_demand_and_never_over_it() {
    let fleet = Fleet::new(FleetTiming::default());
    let b = backend(600, 60);
    let mut state = config(b.clone());
    state.client_keys = vec![key("key_a", 30, 0, 0)];
    let mut rx1 = attach(&fleet, "n1", 1);
    let mut rx2 = attach(&fleet, "n2", 2);
    let key_grant = |rx: &mut mpsc::Receiver<FleetMessage>| key_grant(rx).rpm;
    let key_demand = |node: &str, demand: f64| {
        let d =
            KeyDemand { key_id: "key_a".into(), demand, lease_remaining: Duration::from_secs(4), ..Default::default() };
        fleet.key_demand(node, &[d]);
    };
    fleet.regrant(&state);
    let (g1, g2) = (key_grant(&mut rx1), key_grant(&mut rx2));
    assert!(g1 + g2 <= 30, "{g1} + {g2}");
    // n1 wants 9 times what n2 does; over a minute the split follows.
    for _ in 0..70 {
        tokio::time::advance(Duration::from_secs(1)).await;
        key_demand("n1", 90.0);
        key_demand("n2", 10.0);
        fleet.regrant(&state);
        let (g1, g2) = (key_grant(&mut rx1), key_grant(&mut rx2));
        assert!(g1 + g2 <= 30, "{g1} + {g2}");
    }
    key_demand("n1", 90.0);
    key_demand("n2", 10.0);
    fleet.regrant(&state);
    let (g1, g2) = (key_grant(&mut rx1), key_grant(&mut rx2));
    assert!(g1 >= 24 && g2 >= 1 && g1 + g2 <= 30, "{g1} {g2}");
    // A key without a limit gets no grants; a report on it cannot grow the map.
    state.client_keys[0].rpm_limit = 0;
    fleet.regrant(&state);
    key_demand("n1", 90.0);
    assert!(fleet.keys.lock().unwrap().is_empty());
}

/// Tokens and requests in flight are not paced on a node: one that has used nothing of
/// its grant may take all of it at once, before a smaller grant reaches it. So another
/// node gets none of it until the first reports running a smaller grant — unlike
/// requests, whose bucket refills over the window. With a paced bound here the second
/// node would get ~96% of the limit while the first could still spend all of it.
#[tokio::test(start_paused = true)]
async fn a_nodes_unused_token_or_concurrency_grant_is_not_given_to_another_until_it_shrinks() {
    let fleet = Fleet::new(FleetTiming::default());
    let mut state = config(backend(600, 60));
    state.client_keys = vec![key("key_t", 0, 100_000, 600)];
    let mut rx1 = attach(&fleet, "n1", 1);
    let use_of = |demand: f64, in_use: u32| Some(LimitUse { demand, in_use, fill: 1.0, granted: 0 });
    let report = |node: &str, demand: f64, round: u64| {
        let d = KeyDemand {
            key_id: "key_t".into(),
            lease_remaining: Duration::from_secs(4),
            grant_round: round,
            tokens: use_of(demand * 1000.0, 0),
            concurrent: use_of(demand, 0),
            ..Default::default()
        };
        fleet.key_demand(node, &[d]);
    };
    let round = || fleet.round.load(std::sync::atomic::Ordering::Relaxed);
    // n1 alone, wanting it all, gets the whole limit.
    for _ in 0..70 {
        tokio::time::advance(Duration::from_secs(1)).await;
        report("n1", 1000.0, round());
        fleet.regrant(&state);
    }
    let g = key_grant(&mut rx1);
    assert_eq!((g.tpm, g.concurrent), (100_000, 600));
    assert_eq!((g.rpm, g.pace), (0, 0), "the key has no request limit");
    // n2 arrives wanting it all; n1, which has used nothing, wants little from now on.
    let mut rx2 = attach(&fleet, "n2", 2);
    tokio::time::advance(Duration::from_millis(500)).await;
    report("n1", 1.0, round());
    report("n2", 1000.0, 0);
    fleet.regrant(&state);
    let (g1, g2) = (key_grant(&mut rx1), key_grant(&mut rx2));
    assert!(g1.tpm < 100_000 && g1.concurrent < 600, "n1's grants shrink: {g1:?}");
    assert_eq!((g2.tpm, g2.concurrent), (0, 0), "n1 may still spend its whole grant at once: {g2:?}");
    // Once n1 reports running the smaller grant, n2 gets the rest.
    tokio::time::advance(Duration::from_millis(500)).await;
    report("n1", 1.0, round());
    report("n2", 1000.0, 0);
    fleet.regrant(&state);
    let (g1b, g2) = (key_grant(&mut rx1), key_grant(&mut rx2));
    assert!(g2.tpm > 0 && g2.concurrent > 0, "{g2:?}");
    assert!(g1.tpm.max(g1b.tpm) + g2.tpm <= 100_000, "{g1:?} {g1b:?} {g2:?}");
    assert!(g1.concurrent.max(g1b.concurrent) + g2.concurrent <= 600, "{g1:?} {g1b:?} {g2:?}");
    // Each limit's map entry goes with the limit.
    state.client_keys[0].tpm_limit = 0;
    fleet.regrant(&state);
    let limits: Vec<KeyLimit> = fleet.keys.lock().unwrap().keys().map(|(_, l)| *l).collect();
    assert_eq!(limits, [KeyLimit::Concurrent]);
}
