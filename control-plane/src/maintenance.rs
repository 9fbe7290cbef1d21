//! Background maintenance: retention sweeps of the usage rollups and the cooldown history,
//! and periodic backups (the `Export` document) into `DATA_DIR/backups`.
//!
//! The work is plain functions of `now` so tests drive it without waiting; the two tasks
//! [`sweeps`] and [`backups`] only decide when to call them, re-read the settings each
//! time, and end when the control plane shuts down.

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use tokio::time::{Instant, sleep_until};
use tracing::{debug, info, warn};

use crate::{
    state::Shared,
    store::{Granularity, Settings, Store, StoreError},
    transfer::ExportDocument,
    util::now_ms,
};

/// How often retention sweeps run.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(600);
/// Delay of the first sweep after start: soon, but not in the way of start-up.
pub const FIRST_SWEEP_AFTER: Duration = Duration::from_secs(30);
/// How often the backup task checks whether a backup is due (the interval setting may
/// change at any time, and a restart must neither skip nor repeat a backup).
pub const BACKUP_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// Keys deleted per sled batch; the sweep task yields between batches.
const SWEEP_BATCH: usize = 1000;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
const BACKUP_PREFIX: &str = "sidecar-backup-";
const BACKUP_SUFFIX: &str = ".json";

/// Maintenance failures.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing or pruning backups failed.
    #[error("backups in {path}: {source}")]
    Io {
        /// The backup directory.
        path: String,
        /// Why.
        source: io::Error,
    },
}

/// What a sweep deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Per-minute rollup rows.
    pub minutes: usize,
    /// Per-hour rollup rows.
    pub hours: usize,
    /// Per-day rollup rows.
    pub days: usize,
    /// Cooldown history entries.
    pub cooldowns: usize,
}

impl Swept {
    fn add(&mut self, other: Swept) {
        self.minutes += other.minutes;
        self.hours += other.hours;
        self.days += other.days;
        self.cooldowns += other.cooldowns;
    }

    fn total(&self) -> usize {
        self.minutes + self.hours + self.days + self.cooldowns
    }

    /// Whether a step that may delete `batch` keys per target left nothing behind.
    fn finished(&self, batch: usize) -> bool {
        [self.minutes, self.hours, self.days, self.cooldowns].iter().all(|&n| n < batch)
    }
}

/// Start of what each granularity keeps at `now_ms`: rows whose bucket starts earlier are
/// deleted. Cooldown history is kept as long as the hourly rollups.
pub fn retention_cutoffs(settings: &Settings, now_ms: i64) -> [(Granularity, i64); 3] {
    let keep = |hours: i64| now_ms.saturating_sub(hours.max(1).saturating_mul(HOUR_MS));
    [
        (Granularity::Minute, keep(i64::from(settings.retention_minute_hours))),
        (Granularity::Hour, keep(i64::from(settings.retention_hour_days) * 24)),
        (Granularity::Day, keep(i64::from(settings.retention_day_days) * 24)),
    ]
}

/// Deletes up to `batch` keys per target that are past retention.
fn sweep_step(store: &Store, settings: &Settings, now_ms: i64, batch: usize) -> Result<Swept, StoreError> {
    let [(_, minutes), (_, hours), (_, days)] = retention_cutoffs(settings, now_ms);
    Ok(Swept {
        minutes: store.sweep_usage(Granularity::Minute, minutes, batch)?,
        hours: store.sweep_usage(Granularity::Hour, hours, batch)?,
        days: store.sweep_usage(Granularity::Day, days, batch)?,
        cooldowns: store.sweep_cooldowns(hours, batch)?,
    })
}

/// Deletes, by key range, every rollup row and cooldown older than its retention
/// (`retention_minute_hours`, `retention_hour_days` (also cooldowns),
/// `retention_day_days`) at `now_ms`.
pub fn sweep(store: &Store, settings: &Settings, now_ms: i64) -> Result<Swept, StoreError> {
    let mut total = Swept::default();
    loop {
        let step = sweep_step(store, settings, now_ms, SWEEP_BATCH)?;
        total.add(step);
        if step.finished(SWEEP_BATCH) {
            return Ok(total);
        }
    }
}

/// Runs [`sweep`] shortly after start and then every [`SWEEP_INTERVAL`], until shutdown.
/// Deletes in batches and yields between them, so a large first sweep (after a long
/// outage) never holds up the runtime and stops promptly at shutdown.
pub async fn sweeps(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown();
    let mut next = Instant::now() + FIRST_SWEEP_AFTER;
    loop {
        tokio::select! {
            _ = sleep_until(next) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        next = Instant::now() + SWEEP_INTERVAL;
        let settings = match shared.store.settings() {
            Ok(s) => s,
            Err(error) => {
                warn!(%error, "retention sweep skipped: cannot read settings");
                continue;
            }
        };
        let now = now_ms();
        let mut total = Swept::default();
        loop {
            match sweep_step(&shared.store, &settings, now, SWEEP_BATCH) {
                Ok(step) => {
                    total.add(step);
                    if step.finished(SWEEP_BATCH) || *shutdown.borrow() {
                        break;
                    }
                }
                Err(error) => {
                    warn!(%error, "retention sweep failed");
                    break;
                }
            }
            tokio::task::yield_now().await;
        }
        match total.total() {
            0 => debug!("retention sweep: nothing past retention"),
            _ => info!(
                minutes = total.minutes,
                hours = total.hours,
                days = total.days,
                cooldowns = total.cooldowns,
                "retention sweep deleted old usage and cooldowns"
            ),
        }
    }
}

/// Where backups go unless `SIDECAR_BACKUP_DIR` says otherwise: `DATA_DIR/backups`.
pub fn backup_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("backups")
}

/// A backup's file name: `sidecar-backup-<UTC time, YYYYMMDDTHHMMSSZ>.json`.
pub fn backup_name(at_ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(at_ms).unwrap_or(0));
    // RFC 3339 without its separators: sorts by time and is safe on every filesystem.
    let stamp: String =
        humantime::format_rfc3339_seconds(at).to_string().chars().filter(|c| !matches!(c, '-' | ':')).collect();
    format!("{BACKUP_PREFIX}{stamp}{BACKUP_SUFFIX}")
}

/// The time (unix ms) in a backup's file name; `None` for any other name.
pub fn parse_backup_name(name: &str) -> Option<i64> {
    let stamp = name.strip_prefix(BACKUP_PREFIX)?.strip_suffix(BACKUP_SUFFIX)?;
    let b = stamp.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() != 16 || !digits(0..8) || b[8] != b'T' || !digits(9..15) || b[15] != b'Z' {
        return None;
    }
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &stamp[0..4],
        &stamp[4..6],
        &stamp[6..8],
        &stamp[9..11],
        &stamp[11..13],
        &stamp[13..15]
    );
    let at = humantime::parse_rfc3339(&rfc3339).ok()?;
    i64::try_from(at.duration_since(UNIX_EPOCH).ok()?.as_millis()).ok()
}

/// Backups in `dir` as (time, path), oldest first; other files are ignored.
pub fn list_backups(dir: &Path) -> io::Result<Vec<(i64, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let at = entry.file_name().to_str().and_then(parse_backup_name);
        if let Some(at) = at
            && entry.file_type()?.is_file()
        {
            out.push((at, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Whether a backup is due at `now_ms` given the newest one's time.
pub fn backup_due(interval_hours: u32, newest_ms: Option<i64>, now_ms: i64) -> bool {
    match (interval_hours, newest_ms) {
        (0, _) => false,
        (_, None) => true,
        (hours, Some(newest)) => now_ms - newest >= i64::from(hours) * HOUR_MS,
    }
}

/// Writes `document` as the backup of `now_ms` into `dir` (created 0700), readable by
/// the owner only (0600: it holds sealed API keys), atomically: a temporary file is
/// written and synced, then renamed into place, so a crash never leaves half a backup
/// under a backup's name.
pub fn write_backup(dir: &Path, document: &[u8], now_ms: i64) -> io::Result<PathBuf> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder.create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    #[cfg(not(unix))]
    builder.create(dir)?;

    let name = backup_name(now_ms);
    let path = dir.join(&name);
    let temp = dir.join(format!(".{name}.tmp"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut file = options.open(&temp)?;
        // `mode` applies only to new files; a leftover temporary file is tightened too.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        file.write_all(document)?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)?;
        // Makes the rename itself durable.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map(|()| path)
}

/// Deletes backups in `dir` older than `retention_days` at `now_ms`, except the newest
/// one (so turning backups off never leaves none). Only files named like a backup are
/// touched. Returns the deleted paths.
pub fn prune_backups(dir: &Path, retention_days: u32, now_ms: i64) -> io::Result<Vec<PathBuf>> {
    let cutoff = now_ms - i64::from(retention_days.max(1)) * DAY_MS;
    let mut backups = list_backups(dir)?;
    backups.pop();
    let mut deleted = Vec::new();
    for (at, path) in backups {
        if at < cutoff {
            std::fs::remove_file(&path)?;
            deleted.push(path);
        }
    }
    Ok(deleted)
}

/// Takes a backup into `dir` if one is due at `now_ms` under the stored settings, then
/// prunes old ones. Returns the new backup's path, if one was written.
pub fn backup_if_due(store: &Store, dir: &Path, now_ms: i64) -> Result<Option<PathBuf>, MaintenanceError> {
    let settings = store.settings()?;
    let dir = dir.to_path_buf();
    let io_error = |source| MaintenanceError::Io { path: dir.display().to_string(), source };
    let newest = list_backups(&dir).map_err(io_error)?.last().map(|(at, _)| *at);
    if !backup_due(settings.backup_interval_hours, newest, now_ms) {
        return Ok(None);
    }
    let document = ExportDocument::from_store(store)?.to_json();
    let path = write_backup(&dir, &document, now_ms).map_err(io_error)?;
    for old in prune_backups(&dir, settings.backup_retention_days, now_ms).map_err(io_error)? {
        info!(path = %old.display(), "deleted a backup past retention");
    }
    Ok(Some(path))
}

/// Checks every [`BACKUP_CHECK_INTERVAL`] whether a backup is due (the first check one
/// interval after start) and takes it, until shutdown.
pub async fn backups(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(BACKUP_CHECK_INTERVAL) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        match backup_if_due(&shared.store, &shared.backup_dir, now_ms()) {
            Ok(Some(path)) => info!(path = %path.display(), "backup written"),
            Ok(None) => {}
            Err(error) => warn!(%error, "periodic backup failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{CooldownRecord, ReportRecord, UsageCounters};

    const NOW: i64 = 20_000 * DAY_MS + 12 * HOUR_MS;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.initialize(&Settings::default()).unwrap();
        (dir, store)
    }

    fn usage_at(store: &Store, seq: u64, minute_ms: i64) {
        let record = ReportRecord {
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
            };
            store.record_cooldown(&c).unwrap();
        }

        let swept = sweep(&store, &settings, NOW).unwrap();
        assert_eq!(swept, Swept { minutes: 3, hours: 2, days: 1, cooldowns: 1 });
        let minute = |t| Granularity::Minute.floor(t);
        assert_eq!(buckets(&store, Granularity::Minute), vec![minute(NOW - 47 * HOUR_MS), minute(NOW)]);
        let hour = |t| Granularity::Hour.floor(t);
        assert_eq!(
            buckets(&store, Granularity::Hour),
            vec![hour(NOW - 49 * HOUR_MS), hour(NOW - 47 * HOUR_MS), hour(NOW)]
        );
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
}
