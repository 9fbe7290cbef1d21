//! The ops endpoints of the control plane: `/health` and `/metrics`.

use std::sync::Arc;

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};

use crate::{metrics, state::Shared};

/// The ops router over `shared`, rendering metrics with `prometheus`.
pub fn router(shared: Arc<Shared>, prometheus: metrics_exporter_prometheus::PrometheusHandle) -> Router {
    Router::new()
        .route("/health", get(health_handler))
        .route("/metrics", get(metrics_handler))
        .with_state(OpsState { shared, prometheus })
}

#[derive(Clone)]
struct OpsState {
    shared: Arc<Shared>,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
}

/// Alive, with the store's kind and whether it answers now, this instance's name and
/// whether it leads (and which instance does, as far as known). A database outage says
/// `degraded` but stays 200: restarting the control plane would not bring the database back
/// (proxies keep serving their last config meanwhile).
async fn health_handler(State(ops): State<OpsState>) -> impl IntoResponse {
    let shared = ops.shared.clone();
    let reachable = tokio::task::spawn_blocking(move || shared.store.ping().is_ok()).await.unwrap_or(false);
    let cluster = &ops.shared.cluster;
    Json(serde_json::json!({
        "status": if reachable { "ok" } else { "degraded" },
        "config_version": ops.shared.store.config_version(),
        "store": ops.shared.store.kind(),
        "store_reachable": reachable,
        "instance": cluster.name(),
        "leader": cluster.leading(),
        "leader_instance": cluster.leader_name(),
    }))
}

async fn metrics_handler(State(ops): State<OpsState>) -> impl IntoResponse {
    metrics::store_size(ops.shared.store.size_on_disk());
    metrics::leader(ops.shared.cluster.leading());
    let mut text = ops.prometheus.render();
    let state = ops.shared.config().borrow().clone();
    let shared = ops.shared.clone();
    // Reads the day rollups: off the async workers.
    let keys = tokio::task::spawn_blocking(move || {
        crate::key_metrics::render(&shared.store, &shared.budgets, &state.client_keys, crate::util::now_ms())
    })
    .await
    .unwrap_or_default();
    text.push_str(&keys);
    (StatusCode::OK, [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
