//! Start-up and serving: node identity, the control-plane channel, the cached config,
//! then the API and ops ports and the background tasks (sync, queue dispatcher, usage
//! reporter, retreat ticks) until shutdown, which drains in-flight requests and flushes
//! usage before returning.

use std::{future::Future, path::Path, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use tokio::{net::TcpListener, sync::watch, task::JoinSet, time::Instant};
use tracing::{info, warn};

use crate::{
    config::ProxyConfig,
    config_sync::{self, Cache, NodeIdentity, Syncer},
    metrics::Metrics,
    ops,
    report::{self, Outbox},
    routing::{Bundle, Queue},
    state::{Counters, Shared, SyncStatus},
    workers::Workers,
};

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The data directory cannot be used.
    #[error("data directory {0}: {1}")]
    DataDir(String, std::io::Error),
    /// The control plane URL is unusable.
    #[error("SIDECAR_CONTROL_URL: {0}")]
    ControlUrl(String),
    /// A CA, certificate or key for the control-plane link cannot be used.
    #[error("{setting} ({path}): {reason}")]
    Tls {
        /// The setting naming the file.
        setting: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Traces cannot be exported as configured.
    #[error("SIDECAR_OTLP_ENDPOINT: {0}")]
    Otlp(String),
}

/// Histogram samples are folded into buckets every this many one-second ticks.
const UPKEEP_EVERY: u64 = 5;
/// Adaptive retreat is evaluated every this many one-second ticks.
const RETREAT_EVERY: u64 = 10;
/// How long shutdown keeps trying to deliver usage.
const REPORT_DRAIN: Duration = Duration::from_secs(5);

/// A proxy, ready to serve.
pub struct Proxy {
    shared: Arc<Shared>,
    syncer: Syncer,
    usage_rx: tokio::sync::mpsc::Receiver<report::UsageEvent>,
    client: config_sync::ControlClients,
    boot_id: String,
    outbox_capacity: usize,
    grace: Duration,
    window: Duration,
    workers: usize,
    header_timeout: Duration,
    api_tls: Option<tokio_rustls::TlsAcceptor>,
}

fn node_id(config: &ProxyConfig) -> Result<String, InitError> {
    if let Some(id) = &config.node_id {
        return Ok(id.clone());
    }
    let path = config.data_dir.join("node_id");
    let err = |e| InitError::DataDir(config.data_dir.display().to_string(), e);
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        _ => {
            let id = format!("node-{}", crate::random_hex(6));
            std::fs::write(&path, &id).map_err(err)?;
            Ok(id)
        }
    }
}

impl Proxy {
    /// Prepares a proxy: data dir, node id, channel to the control plane (connected
    /// lazily), and the cached config if there is one.
    pub fn new(config: &ProxyConfig) -> Result<Self, InitError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| InitError::DataDir(config.data_dir.display().to_string(), e))?;
        restrict(&config.data_dir);
        let node_id = node_id(config)?;
        let client = config_sync::connect(config)?;
        let outbox_dir = config.data_dir.join("outbox");
        let (outbox, recovered) = Outbox::open(&outbox_dir, config.outbox_capacity)
            .map_err(|e| InitError::DataDir(outbox_dir.display().to_string(), e))?;
        if recovered.batches > 0 {
            info!(batches = recovered.batches, "usage outbox: delivering batches a previous run left undelivered");
        }
        let metrics = Metrics::new();
        let (usage, usage_rx) = report::channel(metrics.clone());
        let (events_tx, events_rx) = tokio::sync::mpsc::channel(1024);
        let upstream_ca = match &config.upstream_ca {
            Some(path) => crate::tls::certificates("SIDECAR_UPSTREAM_CA", path)?,
            None => Vec::new(),
        };
        let shared = Arc::new(Shared {
            upstream_tls: crate::upstream::tls_config(&upstream_ca),
            bundle: Arc::new(ArcSwap::from_pointee(Bundle::empty(config.rate_window))),
            queue: Arc::new(Queue::default()),
            usage,
            metrics,
            events: events_tx,
            sync: SyncStatus::default(),
            counters: Counters::default(),
            max_body_bytes: config.max_body_bytes,
            body_timeout: config.body_timeout,
            connections: Arc::new(crate::state::Connections::new(config.max_connections)),
            started: Instant::now(),
            node_id: node_id.clone(),
            in_flight: Default::default(),
            outbox: Arc::new(outbox),
            allow_anonymous: config.allow_anonymous,
            origins: Default::default(),
            traces: config
                .otlp_endpoint
                .as_deref()
                .map(|url| sidecar_otel::Traces::start(url, "sidecar-proxy"))
                .transpose()
                .map_err(InitError::Otlp)?,
        });
        if let Some(url) = &config.otlp_endpoint {
            info!(collector = %sidecar_otel::describe(url), "exporting traces (OTLP/HTTP)");
        }
        if config.allow_anonymous && !config.listen.ip().is_loopback() {
            warn!(
                listen = %config.listen,
                "SIDECAR_ALLOW_ANONYMOUS is true on a non-loopback listener: anyone who can reach this proxy spends its provider keys without a client key"
            );
        }
        let boot_id = crate::random_hex(8);
        let cache = match &config.cache_key {
            Some(key) => Some(Cache::new(&config.data_dir, key)),
            None => {
                warn!(
                    "SIDECAR_CACHE_KEY is not set: the config is not cached on disk, so this proxy cannot start while the control plane is down"
                );
                None
            }
        };
        let identity = NodeIdentity { node_id, region: config.region.clone(), boot_id: boot_id.clone() };
        let syncer = Syncer::new(shared.clone(), client.clone(), identity, cache, config.rate_window, events_rx);
        syncer.load_cache();
        Ok(Self {
            shared,
            syncer,
            usage_rx,
            client,
            boot_id,
            outbox_capacity: config.outbox_capacity,
            grace: config.shutdown_grace,
            window: config.rate_window,
            workers: config.workers,
            header_timeout: config.header_timeout,
            api_tls: config.api_tls.as_ref().map(|(cert, key)| crate::tls::api_acceptor(cert, key)).transpose()?,
        })
    }

    /// Shared state (tests read counters and the bundle).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serves the API on `api` and ops on `ops` until `shutdown` resolves. Then: stop
    /// accepting, let in-flight requests finish (up to the grace period), deliver the
    /// last usage batches, return.
    pub async fn serve(
        self,
        api: TcpListener,
        ops: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let shared = self.shared;
        let (stop_tasks_tx, stop_tasks) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(self.syncer.run(stop_tasks.clone()));
        tasks.spawn(shared.queue.clone().run(shared.bundle.clone(), stop_tasks.clone()));
        tasks.spawn(limit_ticks(shared.clone(), self.window, stop_tasks.clone()));
        let outbox = shared.outbox.clone();
        let (last_batch_tx, last_batch) = watch::channel(false);
        let mut reporting = JoinSet::new();
        reporting.spawn(report::aggregate(
            self.usage_rx,
            outbox.clone(),
            report::Batching {
                node_id: shared.node_id.clone(),
                boot_id: self.boot_id.clone(),
                capacity: self.outbox_capacity,
                interval: Duration::from_secs(1),
            },
            shared.metrics.clone(),
            stop_tasks.clone(),
            last_batch_tx,
        ));
        reporting.spawn(report::deliver(
            outbox,
            self.client,
            self.boot_id,
            shared.metrics.clone(),
            last_batch,
            REPORT_DRAIN,
        ));

        info!(
            addr = %api.local_addr()?,
            node = %shared.node_id,
            workers = self.workers,
            max_connections = shared.connections.max(),
            https = self.api_tls.is_some(),
            "serving the OpenAI-compatible API"
        );
        info!(addr = %ops.local_addr()?, "serving /health, /health/ready, /status, /metrics");
        let workers = Workers::start(api, self.workers, self.header_timeout, self.api_tls.clone(), shared.clone())?;
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let ops_server =
            axum::serve(ops, ops::router(shared.clone())).with_graceful_shutdown(stopped(stop_tasks.clone()));
        let ops_task = tokio::spawn(async move { ops_server.await });
        shutdown.await;
        info!("shutting down: no new connections; finishing in-flight requests");
        let grace = self.grace;
        if !workers.shutdown(grace).await {
            warn!(grace_seconds = grace.as_secs(), "in-flight requests did not finish in time; closing them");
        }
        // Responses still draining (clients that left mid-stream) finish their accounting
        // before the last batch is cut.
        shared.in_flight.wait_idle(grace).await;
        let _ = stop_tasks_tx.send(true);
        while reporting.join_next().await.is_some() {}
        tasks.shutdown().await;
        let _ = ops_task.await;
        if let Some(traces) = &shared.traces {
            traces.shutdown().await;
        }
        info!("proxy stopped");
        Ok(())
    }
}

#[cfg(unix)]
fn restrict(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
}

#[cfg(not(unix))]
fn restrict(_dir: &Path) {}

/// Once a second: re-apply every backend's limits (a grant's lease may have run out, so
/// the fallback share applies); every tenth tick, evaluate adaptive retreat (timed,
/// never per response); every fifth, fold metric samples into their buckets.
async fn limit_ticks(shared: Arc<Shared>, window: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        n += 1;
        if n.is_multiple_of(UPKEEP_EVERY) {
            shared.metrics.upkeep();
        }
        let bundle = shared.bundle.load();
        let now = Instant::now();
        for b in &bundle.backends {
            if bundle.settings.adaptive_retreat && n.is_multiple_of(RETREAT_EVERY) {
                b.state.retreat.lock().expect("retreat lock").tick(now, b.config.rpm_limit);
            }
            b.state.apply_limits(&b.config, &bundle.settings, window, now);
        }
        // A key's lease running out moves it to its fallback share too.
        for (key, state) in bundle.limited_keys() {
            state.apply_limits(key, window, now);
        }
    }
}
