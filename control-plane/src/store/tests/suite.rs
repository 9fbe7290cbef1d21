//! The store suite: what every store must do, run on each (see tests.rs).

use super::{super::*, open};

#[test]
fn first_start_creates_builtin_pools_and_settings() {
    let (_dir, store) = open();
    let pools = store.pools().unwrap();
    let names: Vec<_> = pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["primary", "fallback"]);
    assert!(pools.iter().all(|p| p.builtin));
    assert_eq!(store.settings().unwrap(), Settings::default());
    assert_eq!(store.config_version(), 1);
}

#[test]
fn initialize_twice_changes_nothing() {
    let (_dir, store) = open();
    store.initialize(&Settings { queue_capacity: 7, ..Settings::default() }).unwrap();
    assert_eq!(store.config_version(), 1);
    assert_eq!(store.settings().unwrap().queue_capacity, 500);
}

#[test]
fn backend_round_trips_exactly() {
    let (_dir, store) = open();
    let b = backend("bkd_1", "one");
    let change = ConfigChange { put_backends: vec![b.clone()], ..Default::default() };
    let v = store.commit(change, &Actor::system(), "CreateBackend", "bkd_1").unwrap();
    assert_eq!(v, 2);
    assert_eq!(store.backend("bkd_1").unwrap(), Some(b.clone()));
    assert_eq!(store.backends().unwrap(), vec![b]);
}

#[test]
fn every_commit_appends_an_audit_entry() {
    let (_dir, store) = open();
    let actor = Actor { id: "tok_a".into(), role: "admin".into() };
    store
        .commit(
            ConfigChange { put_backends: vec![backend("bkd_1", "one")], ..Default::default() },
            &actor,
            "CreateBackend",
            "bkd_1",
        )
        .unwrap();
    let entries = store.audit(0, i64::MAX).unwrap();
    let last = entries.last().unwrap();
    assert_eq!((last.actor.as_str(), last.action.as_str(), last.target.as_str()), ("tok_a", "CreateBackend", "bkd_1"));
    assert_eq!(last.config_version, 2);
    assert_eq!(entries.len(), 2, "initialize + create");
}

#[test]
fn report_batches_apply_once_per_node_boot_and_seq() {
    let (_dir, store) = open();
    let counters = UsageCounters {
        attempts: 3,
        succeeded: 2,
        errors_429: 1,
        prompt_tokens: 10,
        latency_histogram: vec![1, 2],
        ..Default::default()
    };
    let recs = vec![ReportRecord {
        key_id: String::new(),
        minute_ms: 60_000,
        backend_id: "bkd_1".into(),
        model: "gpt-4o".into(),
        pool: "primary".into(),
        counters: counters.clone(),
    }];
    assert!(store.apply_report("n1", "boot1", 1, &recs).unwrap());
    assert!(!store.apply_report("n1", "boot1", 1, &recs).unwrap(), "retry must not apply");
    assert!(store.apply_report("n1", "boot1", 2, &recs).unwrap());
    assert!(!store.apply_report("n1", "boot1", 1, &recs).unwrap(), "an older seq must not apply");
    assert!(store.apply_report("n1", "boot2", 1, &recs).unwrap(), "a new boot starts its own sequence");
    assert!(store.apply_report("n2", "boot1", 1, &recs).unwrap(), "another node has its own sequence");
    let rows = store.usage_minutes(0, i64::MAX).unwrap();
    assert_eq!(rows.len(), 1);
    let (minute, backend, model, total) = &rows[0];
    assert_eq!((*minute, backend.as_str(), model.as_str()), (60_000, "bkd_1", "gpt-4o"));
    assert_eq!(total.attempts, 12);
    assert_eq!(total.succeeded, 8);
    assert_eq!(total.latency_histogram, vec![4, 8]);
}

#[test]
fn a_report_that_would_overflow_a_stored_total_is_refused_and_changes_nothing() {
    let (_dir, store) = open();
    let mut big = record(60_000, "bkd_1", "m", 1);
    big.counters.attempts = u64::MAX - 10;
    assert!(store.apply_report("n1", "b", 1, std::slice::from_ref(&big)).unwrap());
    let err = store.apply_report("n1", "b", 2, &[record(60_000, "bkd_1", "m", 11)]).unwrap_err();
    assert!(matches!(err, StoreError::Overflow { field: "attempts", .. }), "{err}");
    // Two records of one batch that overflow only together.
    let err = store.apply_report("n2", "b", 1, &[big.clone(), big]).unwrap_err();
    assert!(matches!(err, StoreError::Overflow { .. }), "{err}");
    let rows = store.usage_minutes(0, i64::MAX).unwrap();
    assert_eq!(rows.iter().map(|r| r.3.attempts).collect::<Vec<_>>(), [u64::MAX - 10], "no wrap, no partial write");
    // The refused seq did not count as applied: the node can still deliver seq 2.
    assert!(store.apply_report("n1", "b", 2, &[record(60_000, "bkd_1", "m", 1)]).unwrap());
}

#[test]
fn cooldowns_are_kept_by_start_time_and_equal_starts_do_not_collide() {
    let (_dir, store) = open();
    for c in [
        cooldown("b1", "n1", D + 2 * MINUTE),
        cooldown("b1", "n1", D),
        cooldown("b2", "n2", D),
        cooldown("b3", "n1", D - DAY),
    ] {
        store.record_cooldown(&c).unwrap();
    }
    let all = store.cooldowns(0, i64::MAX).unwrap();
    assert_eq!(all.len(), 4);
    let starts: Vec<_> = all.iter().map(|c| c.start_ms).collect();
    assert_eq!(starts, vec![D - DAY, D, D, D + 2 * MINUTE]);
    let today = store.cooldowns(D, D + 2 * MINUTE).unwrap();
    let backends: Vec<_> = today.iter().map(|c| c.backend_id.as_str()).collect();
    assert_eq!(backends, vec!["b1", "b2"], "until is exclusive");
    assert_eq!(today[0], cooldown("b1", "n1", D), "round trips exactly");
    assert_eq!(store.sweep_cooldowns(D, 100).unwrap(), 1);
    assert_eq!(store.cooldowns(0, i64::MAX).unwrap().len(), 3);
}

#[test]
fn imported_usage_lands_in_hours_and_days_once_per_row_and_never_in_minutes() {
    let (_dir, store) = open();
    let hour = 7 * 3_600_000;
    let rows = vec![
        ("u1".to_string(), record(hour, "bkd_1", "m", 4)),
        ("u2".to_string(), record(hour + 3_600_000, "bkd_1", "m", 6)),
    ];
    assert_eq!(store.import_usage("v2-import", &rows).unwrap(), 2);
    assert_eq!(store.import_usage("v2-import", &rows).unwrap(), 0, "each row once");
    let more = vec![rows[1].clone(), ("u3".to_string(), record(hour, "bkd_1", "m", 1))];
    assert_eq!(store.import_usage("v2-import", &more).unwrap(), 1, "only the new row");
    assert_eq!(store.import_usage("other-import", &rows).unwrap(), 2, "marks are per source");
    assert!(store.usage_minutes(0, i64::MAX).unwrap().is_empty(), "history has no minutes");
    let sum = |g| store.usage(g, 0, i64::MAX).unwrap().iter().map(|r| r.counters.attempts).sum::<u64>();
    assert_eq!((sum(Granularity::Hour), sum(Granularity::Day)), (21, 21));
}

#[test]
fn reports_roll_up_into_minutes_hours_and_days_across_boundaries() {
    let (_dir, store) = open();
    let batch = vec![
        record(D - MINUTE, "bkd_1", "gpt-4o", 1),
        record(D - 2 * MINUTE, "bkd_1", "gpt-4o", 2),
        record(D, "bkd_1", "gpt-4o", 4),
        record(D + HOUR + MINUTE, "bkd_2", "gpt-4o", 8),
    ];
    assert!(store.apply_report("n1", "boot", 1, &batch).unwrap());
    assert_eq!(
        buckets(&store, Granularity::Minute),
        vec![(D - 2 * MINUTE, 2), (D - MINUTE, 1), (D, 4), (D + HOUR + MINUTE, 8)]
    );
    assert_eq!(buckets(&store, Granularity::Hour), vec![(D - HOUR, 3), (D, 4), (D + HOUR, 8)]);
    assert_eq!(buckets(&store, Granularity::Day), vec![(D - DAY, 3), (D, 12)]);

    // Every counter is summed, not only attempts.
    let day = store.usage(Granularity::Day, D, D + DAY).unwrap();
    let total = day.iter().fold(UsageCounters::default(), |mut t, r| {
        t.merge(&r.counters);
        t
    });
    assert_eq!((total.answered, total.prompt_tokens, total.cost_usd), (12, 120, 6.0));
    assert_eq!(total.latency_histogram, vec![12, 0, 2]);

    // A retried batch changes no granularity; the next one adds to all three.
    assert!(!store.apply_report("n1", "boot", 1, &batch).unwrap());
    assert_eq!(buckets(&store, Granularity::Day), vec![(D - DAY, 3), (D, 12)]);
    let next = vec![record(D + 30 * MINUTE, "bkd_1", "gpt-4o", 16)];
    assert!(store.apply_report("n1", "boot", 2, &next).unwrap());
    assert_eq!(buckets(&store, Granularity::Day), vec![(D - DAY, 3), (D, 28)]);
    assert_eq!(buckets(&store, Granularity::Hour), vec![(D - HOUR, 3), (D, 20), (D + HOUR, 8)]);
}

#[test]
fn rows_are_kept_per_node_with_their_pool_and_minutes_sum_over_nodes() {
    let (_dir, store) = open();
    let mut r = record(D, "bkd_1", "m", 1);
    store.apply_report("n1", "b", 1, &[r.clone()]).unwrap();
    r.pool = "fallback".into();
    store.apply_report("n2", "b", 1, &[r.clone()]).unwrap();
    // The backend moved pools: the row records the pool of its latest report.
    r.pool = "batch".into();
    store.apply_report("n1", "b", 2, &[r.clone()]).unwrap();
    let rows = store.usage(Granularity::Hour, D, D + HOUR).unwrap();
    let seen: Vec<_> = rows.iter().map(|r| (r.node_id.as_str(), r.pool.as_str(), r.counters.attempts)).collect();
    assert_eq!(seen, vec![("n1", "batch", 2), ("n2", "fallback", 1)]);
    let minutes = store.usage_minutes(0, i64::MAX).unwrap();
    assert_eq!(minutes.len(), 1, "one row per (minute, backend, model)");
    assert_eq!(minutes[0].3.attempts, 3);
}

#[test]
fn a_range_includes_every_bucket_that_overlaps_it() {
    let (_dir, store) = open();
    let batch = vec![
        record(D - HOUR, "b", "m", 1),
        record(D + 10 * MINUTE, "b", "m", 2),
        record(D + HOUR, "b", "m", 4),
        record(D + 2 * HOUR, "b", "m", 8),
    ];
    store.apply_report("n", "b", 1, &batch).unwrap();
    // 00:30–01:00:00.001 overlaps the buckets of 00:00 and 01:00.
    let rows = store.usage(Granularity::Hour, D + 30 * MINUTE, D + HOUR + 1).unwrap();
    let got: Vec<_> = rows.iter().map(|r| r.bucket_ms).collect();
    assert_eq!(got, vec![D, D + HOUR]);
    // The end is exclusive: a bucket starting at `until` is not in the range.
    let rows = store.usage(Granularity::Hour, D, D + HOUR).unwrap();
    assert_eq!(rows.len(), 1);
    // Minute granularity sees only the minute that has data.
    let rows = store.usage(Granularity::Minute, D + 10 * MINUTE + 59_999, D + 11 * MINUTE).unwrap();
    assert_eq!(rows.len(), 1);
    assert!(store.usage(Granularity::Day, D + DAY, D).unwrap().is_empty());
}
