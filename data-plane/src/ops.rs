//! The ops port: `/health` (liveness), `/health/ready` (503 until a config is applied),
//! `/status` (V1-compatible JSON) and `/metrics` (Prometheus).

use std::sync::{Arc, atomic::Ordering};

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::{routing::Priority, state::Shared};

/// The ops router.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/health/ready", get(ready))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            (StatusCode::NOT_FOUND, Json(json!({ "error": { "message": "not found", "type": "not_found" } })))
        })
        .with_state(shared)
}

async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    let version = shared.bundle.load().version;
    if version == 0 {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "reason": "no configuration applied yet" })),
        )
            .into_response()
    } else {
        Json(json!({ "status": "ready", "config_version": version })).into_response()
    }
}

fn backends_json(shared: &Shared, now: Instant) -> Vec<Value> {
    let bundle = shared.bundle.load();
    bundle
        .backends
        .iter()
        .map(|b| {
            let s = &b.state;
            let (tokens, limit, burst, in_window) = {
                let mut l = s.limiter.lock().expect("limiter lock");
                (l.tokens(now), l.limit(), l.burst(), l.in_window(now))
            };
            let cooldown = s.cooldown.lock().expect("cooldown lock").clone();
            let health = s.health.lock().expect("health lock").clone();
            let remaining = cooldown.cooling_until(now).map(|u| u.duration_since(now).as_secs_f64());
            let error_remaining = health.error_until(now).map(|u| u.duration_since(now).as_secs_f64());
            let status = if !b.config.enabled {
                "disabled"
            } else if error_remaining.is_some() {
                "error"
            } else if remaining.is_some() {
                "cooling"
            } else {
                "healthy"
            };
            let retreat = s.retreat.lock().expect("retreat lock").effective();
            let models: serde_json::Map<String, Value> = s
                .models
                .lock()
                .expect("models lock")
                .iter()
                .map(|(name, bucket)| {
                    let mut l = bucket.limiter.lock().expect("model limiter lock");
                    let tokens = (l.tokens(now) * 100.0).round() / 100.0;
                    let tpm = bucket.tpm.lock().expect("model tpm lock").as_mut().map(|w| (w.used(now), w.limit()));
                    let cooldown = bucket.cooldown.lock().expect("model cooldown lock").clone();
                    let remaining = cooldown.cooling_until(now).map(|u| u.duration_since(now).as_secs_f64());
                    let bucket = json!({
                        "cooldown": { "remaining_seconds": remaining, "consecutive_429": cooldown.consecutive, "paused": cooldown.is_exhausted(now) },
                        "tokens": tokens,
                        "limit_per_window": l.limit(),
                        "in_window": l.in_window(now),
                        "tokens_used_in_window": tpm.map(|t| t.0),
                        "token_limit_per_window": tpm.map(|t| t.1),
                    });
                    (name.clone(), bucket)
                })
                .collect();
            json!({
                "id": b.config.id,
                "name": b.config.name,
                "pool": b.config.pool,
                "api": b.config.api.as_str(),
                "status": status,
                "rpm_limit": b.config.rpm_limit,
                "window_seconds": b.config.window_seconds,
                "bucket": { "tokens": (tokens * 100.0).round() / 100.0, "capacity": burst, "limit_per_window": limit, "in_window": in_window },
                "cooldown": { "remaining_seconds": remaining, "consecutive_429": cooldown.consecutive },
                "health": { "consecutive_failures": health.failures, "error_remaining_seconds": error_remaining, "reason": health.reason },
                "effective_rpm": retreat,
                "in_flight": s.in_flight.load(Ordering::Relaxed),
                "models": models,
            })
        })
        .collect()
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let now = Instant::now();
    let c = &shared.counters;
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let depths = shared.queue.depths();
    let bundle = shared.bundle.load();
    let backends = backends_json(&shared, now);
    let tokens: f64 = backends.iter().filter_map(|b| b["bucket"]["tokens"].as_f64()).sum();
    let capacity: u64 = backends.iter().filter_map(|b| b["bucket"]["capacity"].as_u64()).sum();
    let cooldowns: Vec<Value> = backends
        .iter()
        .filter(|b| b["cooldown"]["remaining_seconds"].is_number())
        .map(|b| json!({ "backend": b["id"], "remaining_seconds": b["cooldown"]["remaining_seconds"], "consecutive_429": b["cooldown"]["consecutive_429"] }))
        .collect();
    Json(json!({
        "requests": {
            "total": n(&c.total),
            "succeeded": n(&c.succeeded),
            "ratelimited": n(&c.ratelimited),
            "exhausted": n(&c.exhausted),
            "fallback": n(&c.fallback),
            "emergency": n(&c.emergency),
            "retries": n(&c.retries),
        },
        "errors": {
            "queue_full_rejects": n(&c.queue_full_rejects),
            "upstream_errors": n(&c.upstream_errors),
            "client_errors": n(&c.client_errors),
        },
        "queue": {
            "depth": Priority::ALL.iter().map(|p| (p.as_str().to_owned(), json!(depths[*p as usize]))).collect::<serde_json::Map<String, Value>>(),
            "size": depths.iter().sum::<usize>(),
            "capacity": bundle.settings.queue_capacity,
        },
        "token_bucket": { "tokens": (tokens * 100.0).round() / 100.0, "capacity": capacity },
        "buckets": backends,
        "cooldowns": cooldowns,
        "config_version": bundle.version,
        "control_plane": {
            "connected": shared.sync.connected.load(Ordering::Relaxed),
            "last_error": shared.sync.last_error.lock().expect("status lock").clone(),
        },
        "connections": { "open": shared.connections.open(), "max": shared.connections.max() },
        "node_id": shared.node_id,
        "uptime_seconds": shared.started.elapsed().as_secs(),
    }))
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let now = Instant::now();
    let m = &shared.metrics;
    let depths = shared.queue.depths();
    for p in Priority::ALL {
        m.gauge("sidecar_queue_depth", &[("priority", p.as_str())], depths[p as usize] as f64);
    }
    let bundle = shared.bundle.load();
    m.gauge("sidecar_config_version", &[], bundle.version as f64);
    m.gauge(
        "sidecar_control_plane_connected",
        &[],
        if shared.sync.connected.load(Ordering::Relaxed) { 1.0 } else { 0.0 },
    );
    m.gauge("sidecar_uptime_seconds", &[], shared.started.elapsed().as_secs_f64());
    m.gauge("sidecar_report_outbox_depth", &[], shared.outbox.len() as f64);
    m.gauge("sidecar_connections_open", &[], shared.connections.open() as f64);
    m.gauge("sidecar_connections_max", &[], shared.connections.max() as f64);
    for b in &bundle.backends {
        let id = b.config.id.as_str();
        m.backend_counters_at_zero(id);
        let s = &b.state;
        let (tokens, limit, in_window) = {
            let mut l = s.limiter.lock().expect("limiter lock");
            (l.tokens(now), l.limit(), l.in_window(now))
        };
        let window_minutes = b.config.window(bundle.window).as_secs_f64() / 60.0;
        let cooldown = s.cooldown.lock().expect("cooldown lock").clone();
        let remaining = cooldown.cooling_until(now).map_or(0.0, |u| u.duration_since(now).as_secs_f64());
        let error = s.health.lock().expect("health lock").error_until(now).is_some();
        m.gauge("sidecar_tokens_available", &[("backend", id)], tokens);
        m.gauge("sidecar_effective_rate_rpm", &[("backend", id)], f64::from(limit) / window_minutes);
        m.gauge("sidecar_backend_requests_in_window", &[("backend", id)], f64::from(in_window));
        m.gauge("sidecar_backend_cooling", &[("backend", id)], if remaining > 0.0 { 1.0 } else { 0.0 });
        m.gauge("sidecar_cooldown_remaining_seconds", &[("backend", id)], remaining);
        m.gauge("sidecar_backend_consecutive_429", &[("backend", id)], f64::from(cooldown.consecutive));
        m.gauge("sidecar_backend_error", &[("backend", id)], if error { 1.0 } else { 0.0 });
        // Only models with their own limits have a bucket: bounded by the config.
        for (model, bucket) in s.models.lock().expect("models lock").iter() {
            let (tokens, limit, in_window) = {
                let mut l = bucket.limiter.lock().expect("model limiter lock");
                (l.tokens(now), l.limit(), l.in_window(now))
            };
            let labels = [("backend", id), ("model", model.as_str())];
            m.gauge("sidecar_model_tokens_available", &labels, tokens);
            m.gauge("sidecar_model_effective_rate_rpm", &labels, f64::from(limit) / window_minutes);
            m.gauge("sidecar_model_requests_in_window", &labels, f64::from(in_window));
        }
    }
    (StatusCode::OK, [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render()).into_response()
}
