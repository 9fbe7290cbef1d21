//! Every metric the control plane exports: name, HELP text and labels, in one place.
//! Labels are bounded: RPC method names and gRPC codes, never client-supplied strings.

use std::sync::OnceLock;

use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and describes every metric.
/// Several control planes in one process (tests) share it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (e.g. by an embedding test
            // harness); our handle then renders nothing, which is harmless.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_gauge!("sidecar_control_nodes_connected", "Data-plane nodes with an open Sync stream.");
    describe_gauge!("sidecar_control_config_version", "Current config version.");
    describe_gauge!(
        "sidecar_control_leader",
        "1 while this instance leads (runs the fleet allocator, sweeps, backups, probes); always 1 on sled."
    );
    describe_gauge!("sidecar_control_store_size_bytes", "Size of the sled store on disk.");
    describe_counter!("sidecar_control_snapshot_pushes_total", "Config snapshots sent to nodes.");
    describe_counter!("sidecar_control_snapshot_acks_total", "Snapshots nodes acknowledged (applied).");
    describe_counter!("sidecar_control_snapshot_nacks_total", "Snapshots nodes rejected.");
    describe_counter!("sidecar_control_admin_requests_total", "AdminService requests by method and gRPC code.");
    describe_counter!(
        "sidecar_control_reports_total",
        "Report batches by result (applied, duplicate, invalid, refused)."
    );
    describe_counter!("sidecar_control_rate_limit_events_total", "429 events nodes sent on the Sync stream.");
    // Every series with a fixed label set exists from the start at 0, so dashboards and
    // `rate()`/`increase()` alerts see the first event as one, not as a new series.
    for name in [
        "sidecar_control_snapshot_pushes_total",
        "sidecar_control_snapshot_acks_total",
        "sidecar_control_snapshot_nacks_total",
        "sidecar_control_rate_limit_events_total",
    ] {
        counter!(name).increment(0);
    }
    for result in ["applied", "duplicate", "invalid", "refused"] {
        counter!("sidecar_control_reports_total", "result" => result).increment(0);
    }
    gauge!("sidecar_control_nodes_connected").set(0.0);
}

/// An AdminService call finished.
pub fn admin_request(method: &'static str, code: tonic::Code) {
    counter!("sidecar_control_admin_requests_total", "method" => method, "code" => code_name(code)).increment(1);
}

/// The config version changed.
pub fn config_version(version: u64) {
    gauge!("sidecar_control_config_version").set(version as f64);
}

/// The number of connected nodes changed.
/// Whether this instance leads now.
pub fn leader(leading: bool) {
    gauge!("sidecar_control_leader").set(if leading { 1.0 } else { 0.0 });
}

/// Connected nodes.
pub fn nodes_connected(n: usize) {
    gauge!("sidecar_control_nodes_connected").set(n as f64);
}

/// A snapshot was sent.
pub fn snapshot_pushed() {
    counter!("sidecar_control_snapshot_pushes_total").increment(1);
}

/// A node acknowledged or rejected a snapshot.
pub fn snapshot_answer(ack: bool) {
    if ack {
        counter!("sidecar_control_snapshot_acks_total").increment(1);
    } else {
        counter!("sidecar_control_snapshot_nacks_total").increment(1);
    }
}

/// A report batch was handled.
pub fn report(result: &'static str) {
    counter!("sidecar_control_reports_total", "result" => result).increment(1);
}

/// A node reported a 429.
pub fn rate_limit_event() {
    counter!("sidecar_control_rate_limit_events_total").increment(1);
}

/// Store size, sampled at scrape time.
pub fn store_size(bytes: u64) {
    gauge!("sidecar_control_store_size_bytes").set(bytes as f64);
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
