//! Fleet grants under a driven clock, for providers that enforce at a finer grain than
//! a minute.

use std::collections::HashMap;

use tokio::sync::mpsc;

use super::*;
use crate::store::{BackendRecord, Settings};

fn backend(rpm_limit: u32, window_seconds: u32) -> BackendRecord {
    BackendRecord {
        rpm_limit,
        window_seconds,
        tpm_limit: Some(6000),
        regions: vec![],
        ..crate::store::tests::backend("bkd_a", "a")
    }
}

fn config(b: BackendRecord) -> ConfigState {
    ConfigState {
        version: 1,
        backends: vec![(b, "sk-test".into())],
        pools: vec![],
        settings: Settings::default(),
        health: HashMap::new(),
        learned: HashMap::new(),
        client_keys: Vec::new(),
    }
}

fn snapshot(b: &BackendRecord) -> NodeSnapshot {
    std::sync::Arc::new(config(b.clone())).snapshot_for("", String::new())
}

/// Attaches `node` (a new process for each session) and returns the receiving end of its
/// session.
fn attach(fleet: &Fleet, node: &str, session: u64) -> mpsc::Receiver<FleetMessage> {
    attach_process(fleet, node, &format!("boot-{session}"), session)
}

/// Attaches `node`'s process `boot`.
fn attach_process(fleet: &Fleet, node: &str, boot: &str, session: u64) -> mpsc::Receiver<FleetMessage> {
    let (tx, rx) = mpsc::channel(16);
    fleet.attach(node, boot, session, "", tx);
    rx
}

/// The last grant `rx` received for the backend: (requests, tokens) per window.
fn grant(rx: &mut mpsc::Receiver<FleetMessage>) -> (u32, u32) {
    let mut last = None;
    while let Ok(msg) = rx.try_recv() {
        if let FleetMessage::Grants { grants, .. } = msg {
            last = grants.first().map(|g| (g.rpm, g.tpm));
        }
    }
    last.expect("a grant")
}

/// A report as a proxy makes it: its lease holds for a few seconds more.
fn demand(fleet: &Fleet, node: &str, demand: f64) {
    let d = BackendDemand {
        backend_id: "bkd_a".into(),
        demand,
        in_window: 0,
        lease_remaining: Duration::from_secs(4),
        ..Default::default()
    };
    fleet.demand(node, &[d]);
}

#[tokio::test(start_paused = true)]
async fn a_second_node_starts_with_nothing_while_the_first_may_use_the_whole_window() {
    let fleet = Fleet::new(FleetTiming::default());
    let b = backend(60, 10);
    let mut first = snapshot(&b);
    fleet.decorate("n1", &mut first);
    assert_eq!(first.backends[0].initial_share, Some(10), "the whole 10 per 10 s window");
    let mut second = snapshot(&b);
    fleet.decorate("n2", &mut second);
    assert_eq!(second.backends[0].initial_share, Some(0), "n1 may already have sent 10 in this window");
}

#[tokio::test(start_paused = true)]
async fn grants_split_the_window_limit_and_move_after_the_providers_window() {
    let fleet = Fleet::new(FleetTiming::default());
    let b = backend(60, 10);
    let state = config(b.clone());
    let mut rx1 = attach(&fleet, "n1", 1);
    let mut rx2 = attach(&fleet, "n2", 2);
    let mut snap = snapshot(&b);
    fleet.decorate("n1", &mut snap);
    // n1 held the whole window; n2 wants everything, n1 nothing.
    demand(&fleet, "n1", 0.0);
    demand(&fleet, "n2", 30.0);
    tokio::time::advance(Duration::from_secs(3)).await;
    fleet.regrant(&state);
    let (g1, g2) = (grant(&mut rx1), grant(&mut rx2));
    assert!(g1.0 + g2.0 <= 10, "{g1:?} + {g2:?} exceeds 10 per window");
    assert!(g2.0 <= 1, "n2 cannot grow while n1 may still be using its 10: {g2:?}");
    // Tokens per window follow the requests: 6000 TPM per 10 s is 1000.
    assert_eq!(g1.1, 1000 * g1.0 / 10);

    // One provider window (10 s) and the propagation allowance later, n1's old grant no
    // longer counts: n2 gets nearly all of it, long before a minute has passed.
    // (Rounds every second, as in production: leases are renewed and reports come in.)
    for _ in 0..12 {
        tokio::time::advance(Duration::from_secs(1)).await;
        demand(&fleet, "n1", 0.0);
        demand(&fleet, "n2", 30.0);
        fleet.regrant(&state);
        let (g1, g2) = (grant(&mut rx1), grant(&mut rx2));
        assert!(g1.0 + g2.0 <= 10, "{g1:?} + {g2:?}");
    }
    demand(&fleet, "n2", 30.0);
    fleet.regrant(&state);
    let g2 = grant(&mut rx2);
    assert!(g2.0 >= 8, "n2 should hold most of the window by now: {g2:?}");
}

#[tokio::test(start_paused = true)]
async fn a_report_under_the_new_grant_frees_a_decrease_before_the_old_grant_ages_out() {
    // 10 per 10 s: waiting for n1's old 10 to age out would take 11 s.
    let fleet = Fleet::new(FleetTiming::default());
    let b = backend(60, 10);
    let state = config(b.clone());
    let mut rx1 = attach(&fleet, "n1", 1);
    let mut rx2 = attach(&fleet, "n2", 2);
    fleet.decorate("n1", &mut snapshot(&b));
    demand(&fleet, "n1", 1.0);
    demand(&fleet, "n2", 100.0);
    fleet.regrant(&state);
    let (g1, g2) = (grant(&mut rx1).0, grant(&mut rx2).0);
    assert!(g1 < 10 && g2 <= 1, "the decrease applies at once, the increase waits: {g1} {g2}");

    // Two propagation delays later n1 reports: 2 admitted in the window, under its new grant.
    tokio::time::advance(2 * FleetTiming::default().propagation + Duration::from_millis(100)).await;
    let d = BackendDemand { backend_id: "bkd_a".into(), demand: 1.0, in_window: 2, ..Default::default() };
    fleet.demand("n1", &[d]);
    demand(&fleet, "n2", 100.0);
    fleet.regrant(&state);
    let (h1, h2) = (grant(&mut rx1).0, grant(&mut rx2).0);
    assert!(h2 >= 5, "n2 gets what n1 can no longer use, 2 s in, not 11: {h1} {h2}");
    assert!(h1.max(g1).max(2) + h2 <= 10, "{g1} {h1} {h2}");
}

/// A backend of 600 RPM (per minute windows) whose model "small" has its own 60 RPM.
fn backend_with_model_limit() -> BackendRecord {
    let mut b = backend(600, 60);
    b.tpm_limit = None;
    let mapping = crate::store::ModelMapping { rpm_limit: Some(60), tpm_limit: Some(6000), ..Default::default() };
    b.model_mappings = [("small".to_string(), mapping)].into_iter().collect();
    b
}

/// The last model grants `rx` received: model → (requests, tokens).
fn model_grants(rx: &mut mpsc::Receiver<FleetMessage>) -> HashMap<String, (u32, u32)> {
    let mut last = None;
    while let Ok(msg) = rx.try_recv() {
        if let FleetMessage::Grants { grants, .. } = msg {
            last = grants.first().map(|g| g.models.iter().map(|m| (m.model.clone(), (m.rpm, m.tpm))).collect());
        }
    }
    last.expect("a grant")
}

fn model_demand(fleet: &Fleet, node: &str, backend: f64, small: f64) {
    let small = ModelDemand { model: "small".into(), demand: small, ..Default::default() };
    // As a proxy reports: its lease holds (so its fallback share need not be reserved).
    let d = BackendDemand {
        backend_id: "bkd_a".into(),
        demand: backend,
        models: vec![small],
        lease_remaining: Duration::from_secs(4),
        ..Default::default()
    };
    fleet.demand(node, &[d]);
}

#[tokio::test(start_paused = true)]
async fn a_models_own_limit_is_split_by_the_models_demand_and_travels_with_the_backends_grant() {
    let fleet = Fleet::new(FleetTiming::default());
    let b = backend_with_model_limit();
    let state = config(b.clone());
    let mut rx1 = attach(&fleet, "n1", 1);
    let mut rx2 = attach(&fleet, "n2", 2);
    // Starting shares: the first node may use the whole model limit, the second nothing
    // while the first may still be using it.
    let mut first = snapshot(&b);
    fleet.decorate("n1", &mut first);
    assert_eq!(first.backends[0].model_shares, vec![("small".to_string(), 60)]);
    let mut second = snapshot(&b);
    fleet.decorate("n2", &mut second);
    assert_eq!(second.backends[0].model_shares, vec![("small".to_string(), 0)]);

    // Both nodes want the backend alike, but only n2 wants the small model: a window
    // later n2 holds nearly all of the model's limit, whatever the backend's split.
    for _ in 0..3 {
        model_demand(&fleet, "n1", 300.0, 0.0);
        model_demand(&fleet, "n2", 300.0, 120.0);
        fleet.regrant(&state);
        tokio::time::advance(Duration::from_secs(31)).await;
    }
    model_demand(&fleet, "n1", 300.0, 0.0);
    model_demand(&fleet, "n2", 300.0, 120.0);
    fleet.regrant(&state);
    let (m1, m2) = (model_grants(&mut rx1)["small"], model_grants(&mut rx2)["small"]);
    assert!(m1.0 + m2.0 <= 60, "{m1:?} + {m2:?} exceeds the model's 60");
    assert!(m2.0 >= 54, "the node that wants the model holds most of it: {m2:?}");
    // Tokens follow the requests: 6000 TPM for 60 RPM is 100 a request.
    assert_eq!(m2.1, 100 * m2.0);
}

#[tokio::test(start_paused = true)]
async fn a_node_that_connects_during_a_providers_pause_pauses_too() {
    let fleet = Fleet::new(FleetTiming::default());
    let b = backend(60, 60);
    fleet.exhausted("n1", "bkd_a", "", Duration::from_secs(20));
    let mut snap = snapshot(&b);
    fleet.decorate("n2", &mut snap);
    let remaining = snap.backends[0].exhausted_remaining_ms;
    assert!(remaining > 19_000 && remaining <= 20_000, "{remaining}");
}

#[tokio::test(start_paused = true)]
async fn a_models_own_429s_escalate_on_their_own_count_and_leave_the_backend_alone() {
    let fleet = Fleet::new(FleetTiming::default());
    let b = backend_with_model_limit();
    let mut rx = attach(&fleet, "n1", 1);
    fleet.decorate("n1", &mut snapshot(&b));
    let settings = Settings { cooldown_base_seconds: 10, cooldown_max_seconds: 600, ..Settings::default() };
    let event = |count: u32, model: &str| RateLimited {
        backend_id: "bkd_a".into(),
        consecutive_count: count,
        retry_after_ms: 0,
        model: model.into(),
    };
    let first = fleet.rate_limited("n1", &event(1, "small"), &settings).expect("a cooldown");
    assert_eq!((first.model.as_str(), first.consecutive_count, first.duration_ms), ("small", 1, 10_000));
    // A probe that knew the count and still got a 429 escalates the model's count.
    let second = fleet.rate_limited("n1", &event(2, "small"), &settings).expect("escalated");
    assert_eq!((second.consecutive_count, second.duration_ms), (2, 20_000));
    // The backend's own count is untouched: its first 429 is a first.
    let backend = fleet.rate_limited("n1", &event(1, ""), &settings).expect("a backend cooldown");
    assert_eq!((backend.model.as_str(), backend.consecutive_count), ("", 1));
    // A model the config does not limit cannot grow the fleet's state.
    assert!(fleet.rate_limited("n1", &event(1, "made-up"), &settings).is_none());
    let notices: Vec<CooldownNotice> = std::iter::from_fn(|| rx.try_recv().ok())
        .filter_map(|m| match m {
            FleetMessage::Cooldown(c) => Some(c),
            FleetMessage::Grants { .. } | FleetMessage::Budgets(_) => None,
        })
        .collect();
    let models: Vec<&str> = notices.iter().map(|c| c.model.as_str()).collect();
    assert_eq!(models, ["small", "small", ""]);
    // A snapshot made now carries the model's cooldown.
    let mut snap = snapshot(&b);
    fleet.decorate("n2", &mut snap);
    let cooling = &snap.backends[0].model_cooldowns;
    assert_eq!(cooling.len(), 1);
    assert_eq!((cooling[0].model.as_str(), cooling[0].consecutive_429), ("small", 2));
    assert!(cooling[0].cooldown_remaining_ms > 19_000);
    // A success for the model ends its cooldown only.
    fleet.recovered("n1", "bkd_a", "small");
    let mut snap = snapshot(&b);
    fleet.decorate("n2", &mut snap);
    assert!(snap.backends[0].model_cooldowns.is_empty());
    assert!(snap.backends[0].cooldown_remaining_ms > 0, "the backend still cools");
}

#[tokio::test(start_paused = true)]
async fn a_models_own_window_is_the_unit_of_its_grants() {
    // The model's 60 RPM enforced per 10 s: 10 per window to share, whatever the
    // backend's minute.
    let fleet = Fleet::new(FleetTiming::default());
    let mut b = backend_with_model_limit();
    b.model_mappings.get_mut("small").unwrap().window_seconds = Some(10);
    let state = config(b.clone());
    let mut rx1 = attach(&fleet, "n1", 1);
    let mut rx2 = attach(&fleet, "n2", 2);
    let mut first = snapshot(&b);
    fleet.decorate("n1", &mut first);
    assert_eq!(first.backends[0].model_shares, vec![("small".to_string(), 10)]);
    for _ in 0..4 {
        model_demand(&fleet, "n1", 300.0, 0.0);
        model_demand(&fleet, "n2", 300.0, 30.0);
        fleet.regrant(&state);
        tokio::time::advance(Duration::from_secs(6)).await;
    }
    let (m1, m2) = (model_grants(&mut rx1)["small"], model_grants(&mut rx2)["small"]);
    assert!(m1.0 + m2.0 <= 10, "{m1:?} + {m2:?} exceeds 10 per 10 s");
    assert!(m2.0 >= 8, "two model windows later n2 holds most of it: {m2:?}");
}

#[tokio::test(start_paused = true)]
async fn a_report_naming_the_round_it_runs_frees_a_decrease_without_waiting_for_the_propagation_allowance() {
    // As above, but n1's report names the allocation round of the grant it runs: the
    // control plane need not wait two propagation delays to know the decrease took effect.
    let fleet = Fleet::new(FleetTiming::default());
    let b = backend(60, 10);
    let state = config(b.clone());
    let mut rx1 = attach(&fleet, "n1", 1);
    let mut rx2 = attach(&fleet, "n2", 2);
    fleet.decorate("n1", &mut snapshot(&b));
    demand(&fleet, "n1", 1.0);
    demand(&fleet, "n2", 100.0);
    fleet.regrant(&state);
    let round = std::iter::from_fn(|| rx1.try_recv().ok())
        .find_map(|m| match m {
            FleetMessage::Grants { round, .. } => Some(round),
            FleetMessage::Cooldown(_) | FleetMessage::Budgets(_) => None,
        })
        .expect("a grant");
    let g2 = grant(&mut rx2).0;
    assert!(g2 <= 1, "the increase waits: {g2}");

    tokio::time::advance(Duration::from_millis(300)).await;
    let report = |round: u64| BackendDemand {
        backend_id: "bkd_a".into(),
        demand: 1.0,
        in_window: 2,
        lease_remaining: Duration::from_secs(4),
        grant_round: round,
        ..Default::default()
    };
    fleet.demand("n1", &[report(round)]);
    demand(&fleet, "n2", 100.0);
    fleet.regrant(&state);
    let h2 = grant(&mut rx2).0;
    assert!(h2 >= 5, "n2 gets what n1 no longer can use, 0.3 s after the decrease: {h2}");

    // The same report without the round proves nothing yet.
    let fleet = Fleet::new(FleetTiming::default());
    let _rx1 = attach(&fleet, "n1", 1);
    let mut rx2 = attach(&fleet, "n2", 2);
    fleet.decorate("n1", &mut snapshot(&b));
    demand(&fleet, "n1", 1.0);
    demand(&fleet, "n2", 100.0);
    fleet.regrant(&state);
    tokio::time::advance(Duration::from_millis(300)).await;
    fleet.demand("n1", &[report(0)]);
    demand(&fleet, "n2", 100.0);
    fleet.regrant(&state);
    assert!(grant(&mut rx2).0 <= 1);
}

mod keys;
mod sessions;
