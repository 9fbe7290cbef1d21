//! Background maintenance: retention sweeps of the usage rollups and the cooldown history,
//! and periodic backups (the `Export` document) into `DATA_DIR/backups`.
//!
//! The work is plain functions of `now` so tests drive it without waiting; the two tasks
//! [`sweeps`] and [`backups`] only decide when to call them, re-read the settings each
//! time, and end when the control plane shuts down.

mod backup;

use std::{io, sync::Arc, time::Duration};

pub use backup::{
    backup_dir, backup_due, backup_if_due, backup_name, backups, list_backups, parse_backup_name, prune_backups,
    write_backup,
};

use tokio::time::{Instant, sleep_until};
use tracing::{debug, info, warn};

use crate::{
    state::Shared,
    store::{Granularity, Settings, Store, StoreError},
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
        // With several instances on one store, the leader sweeps.
        if !shared.cluster.leading() {
            continue;
        }
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

#[cfg(test)]
mod tests;
