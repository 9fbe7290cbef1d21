//! State shared by the request path, the sync task, the reporter and the ops endpoints.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use arc_swap::ArcSwap;
use tokio::{
    sync::{Notify, mpsc},
    time::Instant,
};

use crate::{
    metrics::Metrics,
    report::{NodeEvent, UsageSink},
    routing::{Bundle, Queue},
};

/// Request counters for `/status` (V1 names where V1 had them).
#[derive(Debug, Default)]
#[allow(missing_docs)]
pub struct Counters {
    pub total: AtomicU64,
    pub succeeded: AtomicU64,
    pub ratelimited: AtomicU64,
    pub exhausted: AtomicU64,
    pub queue_full_rejects: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub client_errors: AtomicU64,
    pub emergency: AtomicU64,
    pub fallback: AtomicU64,
    pub retries: AtomicU64,
}

impl Counters {
    /// Adds one.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Connection state of the Sync stream.
#[derive(Debug, Default)]
pub struct SyncStatus {
    /// The stream is open.
    pub connected: AtomicBool,
    /// Last error talking to the control plane.
    pub last_error: Mutex<String>,
}

/// Upstream requests in flight across all backends, so shutdown can wait for the last
/// response (and its accounting) before the final usage batch is cut.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicU64,
    idle: Notify,
}

impl InFlight {
    /// One more request in flight.
    pub fn start(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    /// One request done (its accounting recorded).
    pub fn finish(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Requests in flight.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Waits until nothing is in flight, or `limit` passes.
    pub async fn wait_idle(&self, limit: std::time::Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return;
            }
        }
    }
}

/// Open client connections, shared by every API worker, against `SIDECAR_MAX_CONNECTIONS`.
#[derive(Debug)]
pub struct Connections {
    open: AtomicU64,
    max: u64,
    /// Unix ms of the last "connection refused" log line (at most one a second).
    last_warned_ms: AtomicU64,
}

/// One admitted client connection; the slot frees when it drops.
#[derive(Debug)]
pub struct ConnectionSlot(Arc<Connections>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Connections {
    /// Room for `max` open connections.
    pub fn new(max: usize) -> Self {
        Self { open: AtomicU64::new(0), max: max as u64, last_warned_ms: AtomicU64::new(0) }
    }

    /// A slot for a new connection, or `None` at the cap.
    pub fn admit(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let open = self.open.fetch_add(1, Ordering::AcqRel);
        if open >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnectionSlot(self.clone()))
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Acquire)
    }

    /// The cap.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Whether a refusal at `now_ms` should be logged: at most once a second.
    pub fn should_warn(&self, now_ms: u64) -> bool {
        let last = self.last_warned_ms.load(Ordering::Relaxed);
        now_ms >= last + 1000
            && self.last_warned_ms.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

/// Everything the proxy's tasks share.
pub struct Shared {
    /// The config in force; one load per request.
    pub bundle: Arc<ArcSwap<Bundle>>,
    /// TLS for provider connections: bundled, system and SIDECAR_UPSTREAM_CA roots.
    pub upstream_tls: Arc<rustls::ClientConfig>,
    /// Requests waiting for capacity.
    pub queue: Arc<Queue>,
    /// Usage events to the reporter.
    pub usage: UsageSink,
    /// Metrics.
    pub metrics: Metrics,
    /// 429 and recovery events to the Sync stream (sent at once, not batched).
    pub events: mpsc::Sender<NodeEvent>,
    /// Sync stream state.
    pub sync: SyncStatus,
    /// /status counters.
    pub counters: Counters,
    /// Request body limit.
    pub max_body_bytes: usize,
    /// Longest a request body may take to arrive.
    pub body_timeout: std::time::Duration,
    /// Open client connections on the API port, against their cap.
    pub connections: Arc<Connections>,
    /// Process start.
    pub started: Instant,
    /// This node's id.
    pub node_id: String,
    /// Upstream requests in flight.
    pub in_flight: InFlight,
    /// Usage batches waiting for the control plane.
    pub outbox: Arc<crate::report::Outbox>,
    /// Requests without a client key are served.
    pub allow_anonymous: bool,
    /// Which backend made each stored response this proxy forwarded (Responses API).
    pub origins: crate::proxy::origins::Origins,
    /// OpenTelemetry trace export, when `SIDECAR_OTLP_ENDPOINT` is set.
    pub traces: Option<sidecar_otel::Traces>,
}
