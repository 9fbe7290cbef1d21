//! Routing under a driven clock: pool order, headroom preference, exclusion, the
//! emergency reserve, and the queue's priority and eviction rules.

use std::{collections::HashMap, sync::Arc, time::Duration};

use sidecar_proto::v1 as pb;
use tokio::time::Instant;

use super::*;
use crate::snapshot::{Api, Snapshot};

const MIN: Duration = Duration::from_secs(60);

fn backend(id: &str, pool: &str, rpm: u32) -> pb::SnapshotBackend {
    let mut mappings = HashMap::new();
    mappings.insert("m".to_string(), pb::ModelMapping { native_id: format!("{id}-native"), ..Default::default() });
    pb::SnapshotBackend {
        id: id.into(),
        name: id.into(),
        base_url: "http://127.0.0.1:1/v1".into(),
        api_key: "k".into(),
        timeout_seconds: 5,
        rpm_limit: rpm,
        pool: pool.into(),
        enabled: true,
        weight: 1,
        model_mappings: mappings,
        ..Default::default()
    }
}

fn bundle(backends: Vec<pb::SnapshotBackend>, now: Instant) -> Bundle {
    let settings = pb::Settings {
        cooldown_base_seconds: 30,
        cooldown_max_seconds: 600,
        queue_capacity: 3,
        queue_timeout_seconds: 30,
        low_priority_timeout_seconds: 2,
        emergency_fraction: 0.1,
        near_recovery_wait_seconds: 10,
        failure_threshold: 3,
        error_cooldown_seconds: 30,
        bucket_burst: 100,
        adaptive_retreat: false,
        ..Default::default()
    };
    let snap = pb::Snapshot {
        version: 1,
        backends,
        pools: vec![
            pb::Pool { name: "primary".into(), order: 0, ..Default::default() },
            pb::Pool { name: "fallback".into(), order: 100, ..Default::default() },
        ],
        settings: Some(settings),
        ..Default::default()
    };
    Bundle::prepare(&Snapshot::try_from(&snap).unwrap(), &Bundle::empty(MIN), MIN, now)
}

#[test]
fn the_first_pool_with_a_token_wins() {
    let now = Instant::now();
    let b = bundle(vec![backend("p", "primary", 1), backend("f", "fallback", 100)], now);
    let route = b.route(Api::OpenAi, "m").unwrap();
    let g = take(&route, &[], now, 0).unwrap();
    assert_eq!(g.backend.config.id, "p");
    assert_eq!(g.model.native_id.as_deref(), Some("p-native"));
    // The primary's only token is spent: the fallback serves.
    assert_eq!(take(&route, &[], now, 0).unwrap().backend.config.id, "f");
}

#[test]
fn within_a_pool_headroom_is_preferred() {
    let now = Instant::now();
    let b = bundle(vec![backend("busy", "primary", 100), backend("idle", "primary", 100)], now);
    let route = b.route(Api::OpenAi, "m").unwrap();
    let busy = b.backend("busy").unwrap();
    for _ in 0..90 {
        assert!(busy.state.limiter.lock().unwrap().try_acquire(now));
    }
    let picks: Vec<String> = (0..50).map(|_| take(&route, &[], now, 0).unwrap().backend.config.id.clone()).collect();
    let idle = picks.iter().filter(|p| *p == "idle").count();
    assert!(idle >= 40, "the backend with headroom should take most: {idle}/50");
}

#[test]
fn excluded_and_cooling_backends_are_skipped_and_assessed() {
    let now = Instant::now();
    let b = bundle(vec![backend("a", "primary", 100), backend("b", "primary", 100)], now);
    let route = b.route(Api::OpenAi, "m").unwrap();
    assert_eq!(take(&route, &["a".into()], now, 0).unwrap().backend.config.id, "b");
    let settings = b.settings.clone();
    for id in ["a", "b"] {
        b.backend(id).unwrap().state.cooldown.lock().unwrap().on_429(now, &settings, None);
    }
    // Both cool for 30 s, beyond the 10 s near-recovery wait.
    assert_eq!(assess(&route, &[], now, 0, &settings), Assessment::Exhausted(Some(now + Duration::from_secs(30))));
    assert!(take(&route, &[], now, 0).is_none());
    let later = now + Duration::from_secs(21);
    assert_eq!(
        assess(&route, &[], later, 0, &settings),
        Assessment::Wait(now + Duration::from_secs(30)),
        "within 10 s of recovery: wait"
    );
}

#[test]
fn the_emergency_reserve_is_separate_from_the_main_bucket() {
    let now = Instant::now();
    let b = bundle(vec![backend("a", "primary", 20)], now);
    let route = b.route(Api::OpenAi, "m").unwrap();
    let a = b.backend("a").unwrap();
    a.state.cooldown.lock().unwrap().on_429(now, &b.settings, None);
    let g = take_emergency(&route, &[], now).unwrap();
    assert!(g.emergency);
    assert_eq!(a.state.limiter.lock().unwrap().in_window(now), 0, "main bucket untouched");
    assert!(take_emergency(&route, &[], now).is_none(), "reserve of 10% of 20 RPM = 2 per minute, burst 1");
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let (base, max) = (Duration::from_secs(30), Duration::from_secs(600));
    let got: Vec<u64> = (1..=7).map(|n| backoff(base, max, n).as_secs()).collect();
    assert_eq!(got, [30, 60, 120, 240, 480, 600, 600]);
    assert_eq!(backoff(base, max, 200), max, "no overflow");
}

#[test]
fn state_survives_a_snapshot_that_keeps_the_backend() {
    let now = Instant::now();
    let first = bundle(vec![backend("a", "primary", 100)], now);
    first.backend("a").unwrap().state.cooldown.lock().unwrap().on_429(now, &first.settings, None);
    let mut snap = pb::Snapshot {
        version: 2,
        backends: vec![backend("a", "primary", 50), backend("new", "primary", 10)],
        pools: vec![pb::Pool { name: "primary".into(), ..Default::default() }],
        settings: Some(pb::Settings {
            cooldown_base_seconds: 30,
            cooldown_max_seconds: 600,
            queue_timeout_seconds: 30,
            failure_threshold: 3,
            bucket_burst: 3,
            ..Default::default()
        }),
        ..Default::default()
    };
    let second = Bundle::prepare(&Snapshot::try_from(&snap).unwrap(), &first, MIN, now);
    let a = second.backend("a").unwrap();
    assert!(Arc::ptr_eq(&a.state, &first.backend("a").unwrap().state));
    assert_eq!(a.state.cooldown.lock().unwrap().consecutive, 1, "cooldown carried over");
    assert_eq!(a.state.limiter.lock().unwrap().limit(), 50, "new limit applied in place");
    // A new key means a new upstream identity: fresh state.
    snap.backends[0].api_key = "other".into();
    let third = Bundle::prepare(&Snapshot::try_from(&snap).unwrap(), &second, MIN, now);
    assert_eq!(third.backend("a").unwrap().state.cooldown.lock().unwrap().consecutive, 0);
}

#[test]
fn the_queue_never_evicts_a_higher_priority_waiter() {
    let q = Queue::default();
    let (_, mut high) = q.push(Priority::High, (Api::OpenAi, "m"), &[], 0, 2).unwrap();
    let (_, mut normal) = q.push(Priority::Normal, (Api::OpenAi, "m"), &[], 0, 2).unwrap();
    assert!(q.push(Priority::Low, (Api::OpenAi, "m"), &[], 0, 2).is_err(), "the low newcomer is the one refused");
    assert!(q.push(Priority::Normal, (Api::OpenAi, "m"), &[], 0, 2).is_err(), "equal priority: the newcomer is newest");
    let (_, _urgent) = q.push(Priority::Urgent, (Api::OpenAi, "m"), &[], 0, 2).unwrap();
    assert!(matches!(normal.try_recv(), Ok(Decision::Evicted)));
    assert!(high.try_recv().is_err(), "the high waiter is still waiting");
    assert_eq!(q.depths(), [1, 1, 0, 0]);
}

/// Greedy demand for a minute against `backend`, offered every 10 ms: the admission times.
fn greedy_minute(bundle: &Bundle, start: Instant) -> Vec<Instant> {
    let state = &bundle.backends[0].state;
    let mut admitted = vec![];
    let mut t = start;
    while t < start + MIN {
        if state.limiter.lock().unwrap().try_acquire(t) {
            admitted.push(t);
        }
        t += Duration::from_millis(10);
    }
    admitted
}

/// The most admissions in any window of `len` starting at an admission.
fn most_in_any(admitted: &[Instant], len: Duration) -> usize {
    (0..admitted.len()).map(|i| admitted[i..].iter().take_while(|&&a| a < admitted[i] + len).count()).max().unwrap_or(0)
}

#[test]
fn a_finer_provider_window_holds_in_every_window_of_its_length_from_the_start() {
    // 60 RPM enforced per 10 s: at most 10 in any 10 s, even with a bucket of 100 at
    // start-up, and still the whole minute's 60 over greedy demand.
    let now = Instant::now();
    let mut b = backend("a", "primary", 60);
    b.window_seconds = 10;
    let admitted = greedy_minute(&bundle(vec![b], now), now);
    assert_eq!(most_in_any(&admitted, Duration::from_secs(10)), 10, "{admitted:?}");
    assert!(admitted.len() >= 54, "only {} of 60 used", admitted.len());

    // Per second as well.
    let mut b = backend("a", "primary", 600);
    b.window_seconds = 1;
    let admitted = greedy_minute(&bundle(vec![b], now), now);
    assert_eq!(most_in_any(&admitted, Duration::from_secs(1)), 10);
    assert!(admitted.len() >= 540, "only {} of 600 used", admitted.len());
}

#[test]
fn grants_and_starting_shares_are_per_provider_window() {
    let now = Instant::now();
    let mut b = backend("a", "primary", 60);
    b.window_seconds = 10;
    // A starting share of 0: another node may still use the whole window.
    b.initial_rpm_share = Some(0);
    let bundled = bundle(vec![b], now);
    let backend = &bundled.backends[0];
    assert!(!backend.state.limiter.lock().unwrap().try_acquire(now), "a share of 0 admits nothing");
    // A grant of 4 per 10 s window.
    {
        let mut quota = backend.state.quota.lock().unwrap();
        quota.grant = Some((4, None));
        quota.lease_until = Some(now + MIN * 2);
    }
    backend.state.apply_limits(&backend.config, &bundled.settings, MIN, now);
    let admitted = greedy_minute(&bundled, now);
    assert_eq!(most_in_any(&admitted, Duration::from_secs(10)), 4);
    assert!(admitted.len() >= 22, "{}", admitted.len());
}

#[test]
fn admissions_are_counted_as_demand_for_the_backend_and_the_models_own_limits() {
    // A node that runs at its grant without queueing still wants what it admits: the
    // fleet must hear it, or it shrinks the grant of a node that is using it all.
    use std::sync::atomic::Ordering::Relaxed;
    let now = Instant::now();
    let mut b = backend("a", "primary", 600);
    b.model_mappings.get_mut("m").unwrap().rpm_limit = Some(60);
    let bundled = bundle(vec![b], now);
    let route = bundled.route(Api::OpenAi, "m").unwrap();
    for _ in 0..3 {
        take(&route, &[], now, 0).expect("a token");
    }
    let state = &bundled.backends[0].state;
    assert_eq!(state.admitted.load(Relaxed), 3);
    assert_eq!(state.model_bucket("m").unwrap().admitted.load(Relaxed), 3);
    // Not the emergency reserve's probes: those are not the fleet's to grant.
    state.cooldown.lock().unwrap().on_429(now, &bundled.settings, None);
    take_emergency(&route, &[], now).expect("a probe");
    assert_eq!(state.admitted.load(Relaxed), 3);
}

#[test]
fn a_models_grant_sets_its_bucket_and_the_starting_share_holds_until_then() {
    let now = Instant::now();
    let mut b = backend("a", "primary", 600);
    b.model_mappings.get_mut("m").unwrap().rpm_limit = Some(60);
    b.initial_rpm_share = Some(300);
    b.initial_model_shares = [("m".to_string(), 5)].into_iter().collect();
    let bundled = bundle(vec![b], now);
    let backend = &bundled.backends[0];
    let limit = || backend.state.model_bucket("m").unwrap().limiter.lock().unwrap().limit();
    assert_eq!(limit(), 5, "the snapshot's starting share, not half the model's limit");
    {
        let mut quota = backend.state.quota.lock().unwrap();
        quota.grant = Some((300, None));
        quota.lease_until = Some(now + Duration::from_secs(5));
        let grant = ModelQuota { grant: (40, None), fallback: (30, None) };
        quota.models.insert("m".into(), grant);
    }
    backend.state.apply_limits(&backend.config, &bundled.settings, MIN, now);
    assert_eq!(limit(), 40, "the grant");
    let later = now + Duration::from_secs(6);
    backend.state.apply_limits(&backend.config, &bundled.settings, MIN, later);
    assert_eq!(limit(), 30, "the fallback once the lease has run out");
}

/// Once its lease runs out a node keeps to the smaller of its grant and its fallback share
/// for a window: the others' grants may still be in use in that window, and only they and
/// this grant add up to the limit. Then the fallback share (the fallback shares add up to
/// the limit).
#[test]
fn after_the_lease_a_node_waits_a_window_before_growing_to_its_fallback_share() {
    let now = Instant::now();
    let mut b = backend("a", "primary", 600);
    b.model_mappings.get_mut("m").unwrap().rpm_limit = Some(60);
    let bundled = bundle(vec![b], now);
    let backend = &bundled.backends[0];
    let backend_limit = || backend.state.limiter.lock().unwrap().limit();
    let model_limit = || backend.state.model_bucket("m").unwrap().limiter.lock().unwrap().limit();
    {
        let mut quota = backend.state.quota.lock().unwrap();
        quota.grant = Some((100, None));
        quota.fallback = (300, None);
        quota.lease_until = Some(now + Duration::from_secs(5));
        quota.models.insert("m".into(), ModelQuota { grant: (10, None), fallback: (30, None) });
    }
    let at = |secs: u64| {
        backend.state.apply_limits(&backend.config, &bundled.settings, MIN, now + Duration::from_secs(secs));
        (backend_limit(), model_limit())
    };
    assert_eq!(at(1), (100, 10), "the grants");
    assert_eq!(at(6), (100, 10), "a window after the lease, still the grants");
    assert_eq!(at(5 + MIN.as_secs() - 1), (100, 10));
    assert_eq!(at(5 + MIN.as_secs()), (300, 30), "then the fallback shares");
}

#[test]
fn a_snapshot_made_during_a_providers_pause_pauses_the_backend() {
    let now = Instant::now();
    let mut b = backend("a", "primary", 600);
    b.exhausted_remaining_ms = 20_000;
    let bundled = bundle(vec![b], now);
    let cooldown = bundled.backends[0].state.cooldown.lock().unwrap().clone();
    assert!(cooldown.is_exhausted(now + Duration::from_secs(19)), "{cooldown:?}");
    assert!(!cooldown.is_exhausted(now + Duration::from_secs(21)));
    assert_eq!(cooldown.consecutive, 0, "a pause is not a 429");
}

#[test]
fn a_model_with_its_own_window_is_limited_per_that_window() {
    // The key: 600 per minute; the model: 60 per minute, enforced per 10 s.
    let now = Instant::now();
    let mut b = backend("a", "primary", 600);
    let m = b.model_mappings.get_mut("m").unwrap();
    (m.rpm_limit, m.window_seconds) = (Some(60), Some(10));
    let bundled = bundle(vec![b], now);
    assert_eq!(bundled.backends[0].state.model_bucket("m").unwrap().limiter.lock().unwrap().limit(), 10);
    let route = bundled.route(Api::OpenAi, "m").unwrap();
    let mut admitted = vec![];
    let mut t = now;
    while t < now + MIN {
        if take(&route, &[], t, 0).is_some() {
            admitted.push(t);
        }
        t += Duration::from_millis(10);
    }
    assert_eq!(most_in_any(&admitted, Duration::from_secs(10)), 10, "{admitted:?}");
    assert!(admitted.len() >= 54, "only {} of 60 used", admitted.len());
}
