//! Noticing config writes of other control-plane instances on the same database: a
//! commit notifies channel `sidecar_config`; this instance listens, and on a notification
//! — or every [`POLL`], since notifications are lost while the listening connection is
//! down — re-reads the version row. A higher version is passed on; the control plane then
//! reloads its config and pushes it to the proxies connected to it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sqlx::{PgPool, postgres::PgListener, types::Json};
use tokio::sync::watch;
use tracing::{debug, warn};

/// How often the version is read even without a notification.
pub(super) const POLL: Duration = Duration::from_secs(1);

async fn read(pool: &PgPool) -> Option<u64> {
    let v: Result<Json<u64>, _> =
        sqlx::query_scalar("SELECT value FROM meta WHERE key = 'config_version'").fetch_one(pool).await;
    v.map(|j| j.0).map_err(|e| debug!(error = %e, "reading the config version")).ok()
}

/// Runs until the store's runtime stops.
pub(super) async fn follow(pool: PgPool, cached: Arc<AtomicU64>, versions: watch::Sender<u64>) {
    let mut listener: Option<PgListener> = None;
    let mut backoff = Duration::from_millis(200);
    loop {
        if listener.is_none() {
            match PgListener::connect_with(&pool).await {
                Ok(mut l) => match l.listen("sidecar_config").await {
                    Ok(()) => {
                        listener = Some(l);
                        backoff = Duration::from_millis(200);
                    }
                    Err(e) => warn!(error = %e, "could not listen for config changes; polling"),
                },
                Err(e) => warn!(error = %e, "could not open the listening connection; polling"),
            }
        }
        let woke = match listener.as_mut() {
            Some(l) => match tokio::time::timeout(POLL, l.recv()).await {
                Ok(Ok(_)) | Err(_) => true,
                Ok(Err(e)) => {
                    warn!(error = %e, "the listening connection broke; polling until it is back");
                    listener = None;
                    false
                }
            },
            None => {
                tokio::time::sleep(backoff.min(POLL)).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                true
            }
        };
        if !woke {
            continue;
        }
        if let Some(v) = read(&pool).await
            && v > cached.fetch_max(v, Ordering::SeqCst)
        {
            versions.send_if_modified(|held| {
                let newer = v > *held;
                *held = (*held).max(v);
                newer
            });
        }
    }
}
