//! Every metric the proxy exports: name, HELP and labels, in one place. Each proxy owns
//! its recorder (several proxies can share a process in tests). Labels are bounded:
//! backend id, pool, priority, status class, error kind — never a model string from a
//! client. Per-backend gauges are computed at scrape time from the live state, so they
//! are always current.

use std::sync::Arc;

use metrics::{Counter, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

static META: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, None);

const LATENCY_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// Handles for one backend's per-request metrics.
#[derive(Debug, Clone)]
pub struct BackendMetrics {
    requests: [Counter; 4],
    latency: Histogram,
    ttft: Histogram,
}

impl BackendMetrics {
    /// A client request this backend answered.
    pub fn request(&self, status: u16) {
        self.requests[class_index(status)].increment(1);
    }

    /// An upstream response ended.
    pub fn upstream_latency(&self, seconds: f64, ttft: Option<f64>) {
        self.latency.record(seconds);
        if let Some(t) = ttft {
            self.ttft.record(t);
        }
    }
}

/// The `kind` label values of `sidecar_upstream_errors_total`.
const UPSTREAM_ERROR_KINDS: [&str; 6] = ["429", "5xx", "timeout", "connect", "io", "auth"];

const CLASSES: [&str; 4] = ["2xx", "4xx", "5xx", "other"];

fn class_index(status: u16) -> usize {
    match status {
        200..=299 => 0,
        400..=499 => 1,
        500..=599 => 2,
        _ => 3,
    }
}

/// The proxy's metrics.
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    Key::from_parts(name, labels.iter().map(|(k, v)| Label::new(*k, v.to_string())).collect::<Vec<_>>())
}

impl Metrics {
    /// A recorder with every metric described.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("non-empty buckets")
            .build_recorder();
        let handle = recorder.handle();
        let m = Self { recorder: Arc::new(recorder), handle };
        m.describe();
        m.register_at_zero();
        m
    }

    /// Every counter that is not per backend exists from the start at 0, so an alert on
    /// its `rate()` has a series to read before the first increment.
    fn register_at_zero(&self) {
        for name in [
            "sidecar_report_outbox_dropped_total",
            "sidecar_usage_events_dropped_total",
            "sidecar_connections_rejected_total",
            "sidecar_report_batches_rejected_total",
        ] {
            self.counter(name, &[]).increment(0);
        }
        for priority in crate::routing::Priority::ALL {
            for reason in ["full", "timeout"] {
                self.counter("sidecar_queue_rejected_total", &[("priority", priority.as_str()), ("reason", reason)])
                    .increment(0);
            }
        }
        for reason in ["429", "failure"] {
            self.counter("sidecar_retries_total", &[("reason", reason)]).increment(0);
        }
        for reason in crate::proxy::error::KEY_REFUSALS {
            self.counter("sidecar_key_refusals_total", &[("reason", reason)]).increment(0);
        }
        for priority in crate::routing::Priority::ALL {
            let _registered = self.histogram("sidecar_queue_latency_seconds", &[("priority", priority.as_str())]);
        }
    }

    fn describe(&self) {
        let r = &self.recorder;
        let d = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            (KeyName::from_const_str(name), unit, SharedString::const_str(help))
        };
        for (name, unit, help) in [
            d(
                "sidecar_requests_total",
                None,
                "Client requests answered, by backend, pool and status class (backend/pool \"none\" when no backend answered).",
            ),
            d(
                "sidecar_upstream_errors_total",
                None,
                "Failed upstream attempts by backend and kind (429, 5xx, timeout, connect, io, auth).",
            ),
            d("sidecar_retries_total", None, "Attempts moved to the next candidate, by reason."),
            d(
                "sidecar_key_refusals_total",
                None,
                "Requests refused for their client key, by reason (invalid, expired, disabled, scope, requests, tokens, concurrent, budget); per key in the API, not here.",
            ),
            d("sidecar_emergency_requests_total", None, "Requests sent through a backend's emergency reserve."),
            d(
                "sidecar_queue_rejected_total",
                None,
                "Requests refused by the queue, by priority and reason (full, timeout).",
            ),
            d("sidecar_report_outbox_dropped_total", None, "Usage batches dropped because the outbox was full."),
            d("sidecar_usage_events_dropped_total", None, "Usage events dropped because the reporter fell behind."),
            d(
                "sidecar_report_batches_rejected_total",
                None,
                "Usage batches the control plane refused as invalid (dropped; see the proxy's error log).",
            ),
            d(
                "sidecar_connections_rejected_total",
                None,
                "Client connections closed at once because SIDECAR_MAX_CONNECTIONS were open.",
            ),
        ] {
            r.describe_counter(name, unit, help);
        }
        for (name, unit, help) in [
            d(
                "sidecar_upstream_latency_seconds",
                Some(Unit::Seconds),
                "Time from sending a request upstream to the end of its response.",
            ),
            d(
                "sidecar_ttft_seconds",
                Some(Unit::Seconds),
                "Time from sending a request upstream to its first body byte.",
            ),
            d("sidecar_queue_latency_seconds", Some(Unit::Seconds), "Time requests waited in the queue, by priority."),
        ] {
            r.describe_histogram(name, unit, help);
        }
        for (name, unit, help) in [
            d("sidecar_queue_depth", None, "Requests waiting, by priority."),
            d("sidecar_tokens_available", None, "Tokens in each backend's bucket."),
            d("sidecar_effective_rate_rpm", None, "Requests per minute each backend's limiter allows now."),
            d("sidecar_backend_requests_in_window", None, "Requests admitted to each backend in the current window."),
            d(
                "sidecar_model_tokens_available",
                None,
                "Tokens in the bucket of each model with its own limits, per backend.",
            ),
            d(
                "sidecar_model_effective_rate_rpm",
                None,
                "This node's share of each model's own limit, per minute, per backend.",
            ),
            d(
                "sidecar_model_requests_in_window",
                None,
                "Requests admitted for each model with its own limits, per backend, in the current window.",
            ),
            d("sidecar_backend_cooling", None, "1 while a backend cools down after 429s."),
            d("sidecar_cooldown_remaining_seconds", Some(Unit::Seconds), "Seconds until each backend's cooldown ends."),
            d("sidecar_backend_consecutive_429", None, "Consecutive 429s per backend (reset by a success)."),
            d("sidecar_backend_error", None, "1 while a backend is in passive-health error."),
            d("sidecar_config_version", None, "Config version this proxy runs."),
            d("sidecar_control_plane_connected", None, "1 while the Sync stream to the control plane is open."),
            d("sidecar_report_outbox_depth", None, "Usage batches waiting for the control plane's ack."),
            d("sidecar_uptime_seconds", Some(Unit::Seconds), "Seconds since the proxy started."),
            d("sidecar_connections_open", None, "Client connections open on the API port."),
            d("sidecar_connections_max", None, "The API port's connection cap (SIDECAR_MAX_CONNECTIONS)."),
        ] {
            r.describe_gauge(name, unit, help);
        }
    }

    fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.recorder.register_counter(&key(name, labels), &META)
    }

    fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        self.recorder.register_histogram(&key(name, labels), &META)
    }

    /// Sets a gauge.
    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)], value: f64) {
        self.recorder.register_gauge(&key(name, labels), &META).set(value);
    }

    /// A client request was answered.
    pub fn request(&self, backend: &str, pool: &str, status: u16) {
        let class = CLASSES[class_index(status)];
        self.counter("sidecar_requests_total", &[("backend", backend), ("pool", pool), ("status_class", class)])
            .increment(1);
    }

    /// Handles for one backend's per-request metrics.
    pub fn backend(&self, backend: &str, pool: &str) -> BackendMetrics {
        BackendMetrics {
            requests: CLASSES.map(|class| {
                self.counter("sidecar_requests_total", &[("backend", backend), ("pool", pool), ("status_class", class)])
            }),
            latency: self.histogram("sidecar_upstream_latency_seconds", &[("backend", backend)]),
            ttft: self.histogram("sidecar_ttft_seconds", &[("backend", backend)]),
        }
    }

    /// A backend's counters exist at 0 before its first event (called at scrape time for
    /// every backend in the config; adding 0 changes nothing).
    pub fn backend_counters_at_zero(&self, backend: &str) {
        self.counter("sidecar_emergency_requests_total", &[("backend", backend)]).increment(0);
        for kind in UPSTREAM_ERROR_KINDS {
            self.counter("sidecar_upstream_errors_total", &[("backend", backend), ("kind", kind)]).increment(0);
        }
    }

    /// An upstream attempt failed.
    pub fn upstream_error(&self, backend: &str, kind: &'static str) {
        self.counter("sidecar_upstream_errors_total", &[("backend", backend), ("kind", kind)]).increment(1);
    }

    /// A request was refused for its client key.
    pub fn key_refused(&self, reason: &'static str) {
        self.counter("sidecar_key_refusals_total", &[("reason", reason)]).increment(1);
    }

    /// An attempt moved on to the next candidate.
    pub fn retry(&self, reason: &'static str) {
        self.counter("sidecar_retries_total", &[("reason", reason)]).increment(1);
    }

    /// A request went through the emergency reserve.
    pub fn emergency(&self, backend: &str) {
        self.counter("sidecar_emergency_requests_total", &[("backend", backend)]).increment(1);
    }

    /// The queue refused a request.
    pub fn queue_rejected(&self, priority: &'static str, reason: &'static str) {
        self.counter("sidecar_queue_rejected_total", &[("priority", priority), ("reason", reason)]).increment(1);
    }

    /// A request waited in the queue.
    pub fn queue_wait(&self, priority: &'static str, seconds: f64) {
        self.histogram("sidecar_queue_latency_seconds", &[("priority", priority)]).record(seconds);
    }

    /// Usage batches were dropped from a full outbox.
    pub fn outbox_dropped(&self, n: u64) {
        self.counter("sidecar_report_outbox_dropped_total", &[]).increment(n);
    }

    /// A client connection was closed at the connection cap.
    pub fn connection_rejected(&self) {
        self.counter("sidecar_connections_rejected_total", &[]).increment(1);
    }

    /// The control plane refused a usage batch as invalid.
    pub fn report_rejected(&self) {
        self.counter("sidecar_report_batches_rejected_total", &[]).increment(1);
    }

    /// A usage event was dropped.
    pub fn usage_event_dropped(&self) {
        self.counter("sidecar_usage_events_dropped_total", &[]).increment(1);
    }

    /// Folds recorded histogram samples into their buckets. The exporter keeps raw
    /// samples until then, so without this memory would grow with every request between
    /// scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}
