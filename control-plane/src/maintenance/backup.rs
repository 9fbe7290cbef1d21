//! Periodic backups: the `Export` document written atomically into the backup
//! directory (one file per backup, named by its time), pruned by age.

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use tracing::{info, warn};

use super::{BACKUP_CHECK_INTERVAL, DAY_MS, HOUR_MS, MaintenanceError};
use crate::{state::Shared, store::Store, transfer::ExportDocument, util::now_ms};

const BACKUP_PREFIX: &str = "sidecar-backup-";
const BACKUP_SUFFIX: &str = ".json";

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
        // With several instances on one store, the leader takes backups.
        if !shared.cluster.leading() {
            continue;
        }
        match backup_if_due(&shared.store, &shared.backup_dir, now_ms()) {
            Ok(Some(path)) => info!(path = %path.display(), "backup written"),
            Ok(None) => {}
            Err(error) => warn!(%error, "periodic backup failed"),
        }
    }
}
