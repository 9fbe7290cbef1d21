//! Retention sweeps and backups, driven by `now`.

use std::path::Path;

use super::*;
use crate::store::{CooldownRecord, ReportRecord, UsageCounters};
use crate::transfer::ExportDocument;

const NOW: i64 = 20_000 * DAY_MS + 12 * HOUR_MS;

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.initialize(&Settings::default()).unwrap();
    (dir, store)
}

fn usage_at(store: &Store, seq: u64, minute_ms: i64) {
    let record = ReportRecord {
        key_id: String::new(),
        minute_ms: Granularity::Minute.floor(minute_ms),
        backend_id: "bkd_1".into(),
        model: "m".into(),
        pool: "primary".into(),
        counters: UsageCounters { attempts: 1, ..Default::default() },
    };
    assert!(store.apply_report("n1", "boot", seq, &[record]).unwrap());
}

fn buckets(store: &Store, g: Granularity) -> Vec<i64> {
    let mut b: Vec<i64> = store.usage(g, 0, i64::MAX).unwrap().iter().map(|r| r.bucket_ms).collect();
    b.dedup();
    b
}

#[test]
fn sweep_deletes_each_granularity_past_its_own_retention() {
    let (_dir, store) = open();
    let settings = Settings::default(); // 48 h, 90 d, 730 d
    let times = [
        NOW - 1000 * DAY_MS, // past every retention
        NOW - 100 * DAY_MS,  // only days keep it
        NOW - 49 * HOUR_MS,  // hours and days keep it
        NOW - 47 * HOUR_MS,  // everything keeps it
        NOW,
    ];
    for (i, t) in times.iter().enumerate() {
        usage_at(&store, i as u64 + 1, *t);
    }
    for start in [NOW - 100 * DAY_MS, NOW - 80 * DAY_MS] {
        let c = CooldownRecord {
            backend_id: "bkd_1".into(),
            node_id: "n1".into(),
            consecutive_count: 1,
            duration_ms: 30_000,
            retry_after_ms: 0,
            start_ms: start,
            end_ms: start + 30_000,
            model: String::new(),
        };
        store.record_cooldown(&c).unwrap();
    }

    let swept = sweep(&store, &settings, NOW).unwrap();
    assert_eq!(swept, Swept { minutes: 3, hours: 2, days: 1, cooldowns: 1 });
    let minute = |t| Granularity::Minute.floor(t);
    assert_eq!(buckets(&store, Granularity::Minute), vec![minute(NOW - 47 * HOUR_MS), minute(NOW)]);
    let hour = |t| Granularity::Hour.floor(t);
    assert_eq!(buckets(&store, Granularity::Hour), vec![hour(NOW - 49 * HOUR_MS), hour(NOW - 47 * HOUR_MS), hour(NOW)]);
    let day = |t| Granularity::Day.floor(t);
    assert_eq!(buckets(&store, Granularity::Day), vec![day(NOW - 100 * DAY_MS), day(NOW - 49 * HOUR_MS), day(NOW)]);
    let cooldowns = store.cooldowns(0, i64::MAX).unwrap();
    assert_eq!(cooldowns.len(), 1);
    assert_eq!(cooldowns[0].start_ms, NOW - 80 * DAY_MS);

    // A second sweep finds nothing; shorter retention settings take effect at once.
    assert_eq!(sweep(&store, &settings, NOW).unwrap(), Swept::default());
    let short = Settings { retention_minute_hours: 1, ..Settings::default() };
    assert_eq!(sweep(&store, &short, NOW).unwrap().minutes, 1);
    assert_eq!(buckets(&store, Granularity::Minute), vec![minute(NOW)]);
}

#[test]
fn sweep_handles_more_rows_than_one_batch() {
    let (_dir, store) = open();
    let old = NOW - 3 * DAY_MS;
    let records: Vec<_> = (0..SWEEP_BATCH as i64 + 5)
        .map(|i| ReportRecord {
            key_id: String::new(),
            minute_ms: old + i * 60_000,
            backend_id: "b".into(),
            model: "m".into(),
            pool: String::new(),
            counters: UsageCounters { attempts: 1, ..Default::default() },
        })
        .collect();
    store.apply_report("n", "b", 1, &records).unwrap();
    let swept = sweep(&store, &Settings::default(), NOW).unwrap();
    assert_eq!(swept.minutes, SWEEP_BATCH + 5);
    assert!(store.usage(Granularity::Minute, 0, i64::MAX).unwrap().is_empty());
}

#[test]
fn backup_names_carry_a_sortable_utc_time() {
    let at = 1_700_000_000_000;
    assert_eq!(backup_name(at), "sidecar-backup-20231114T221320Z.json");
    assert_eq!(parse_backup_name(&backup_name(at)), Some(at));
    assert!(backup_name(at) < backup_name(at + 1000));
    for other in [
        "sidecar-backup-.json",
        "sidecar-backup-20231114T221320Z.json.tmp",
        ".sidecar-backup-20231114T221320Z.json.tmp",
        "sidecar-backup-2023111xT221320Z.json",
        "sidecar-backup-20231314T221320Z.json",
        "backup.json",
    ] {
        assert_eq!(parse_backup_name(other), None, "{other}");
    }
}

#[test]
fn backups_are_due_by_the_interval_and_never_when_off() {
    assert!(backup_due(24, None, NOW));
    assert!(!backup_due(24, Some(NOW - 23 * HOUR_MS), NOW));
    assert!(backup_due(24, Some(NOW - 24 * HOUR_MS), NOW));
    assert!(!backup_due(0, None, NOW));
}

#[test]
fn backups_are_written_privately_and_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let backups = backup_dir(dir.path());
    let path = write_backup(&backups, b"{\"a\":1}", NOW).unwrap();
    assert_eq!(path, backups.join(backup_name(NOW)));
    assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}");
    let names: Vec<_> =
        std::fs::read_dir(&backups).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names, vec![backup_name(NOW)], "no temporary file is left");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&backups), 0o700);
    }
}

#[test]
fn prune_deletes_only_old_backups_and_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for age_days in [9, 8, 6, 0] {
        write_backup(d, b"{}", NOW - age_days * DAY_MS).unwrap();
    }
    std::fs::write(d.join("notes.json"), "keep").unwrap();
    std::fs::write(d.join("sidecar-backup-manual.json"), "keep").unwrap();
    let deleted = prune_backups(d, 7, NOW).unwrap();
    assert_eq!(deleted, vec![d.join(backup_name(NOW - 9 * DAY_MS)), d.join(backup_name(NOW - 8 * DAY_MS))]);
    let left: Vec<i64> = list_backups(d).unwrap().iter().map(|(at, _)| *at).collect();
    assert_eq!(left, vec![NOW - 6 * DAY_MS, NOW]);
    assert!(d.join("notes.json").exists() && d.join("sidecar-backup-manual.json").exists());

    // Long after the last backup (backups turned off), the newest one stays.
    let deleted = prune_backups(d, 7, NOW + 30 * DAY_MS).unwrap();
    assert_eq!(deleted.len(), 1);
    assert_eq!(list_backups(d).unwrap().len(), 1);
}

#[test]
fn a_due_backup_is_the_export_document_and_respects_the_settings() {
    let (dir, store) = open();
    let written = backup_if_due(&store, &backup_dir(dir.path()), NOW).unwrap().unwrap();
    let doc: ExportDocument = serde_json::from_slice(&std::fs::read(&written).unwrap()).unwrap();
    assert_eq!(doc.format, "sidecar-export");
    assert_eq!(doc.config_version, store.config_version());
    assert_eq!(doc.pools.len(), 2);
    // Not due again within the interval; due after it, and old ones are pruned.
    assert!(backup_if_due(&store, &backup_dir(dir.path()), NOW + HOUR_MS).unwrap().is_none());
    let later = NOW + 8 * DAY_MS;
    backup_if_due(&store, &backup_dir(dir.path()), later).unwrap().unwrap();
    let left: Vec<i64> = list_backups(&backup_dir(dir.path())).unwrap().iter().map(|(at, _)| *at).collect();
    assert_eq!(left, vec![later], "the 8-day-old backup was pruned");

    // Interval 0 turns backups off.
    let off = Settings { backup_interval_hours: 0, ..store.settings().unwrap() };
    store
        .commit(
            crate::store::ConfigChange { settings: Some(off), ..Default::default() },
            &crate::store::Actor::system(),
            "UpdateSettings",
            "settings",
        )
        .unwrap();
    assert!(backup_if_due(&store, &backup_dir(dir.path()), later + 30 * DAY_MS).unwrap().is_none());
}
