//! The OpenAI-compatible API: request parsing, admission, forwarding with retries on the
//! next candidate, the response passed through, and accounting.

mod admit;
pub mod error;
mod forward;

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, Uri},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use http_body_util::{BodyExt, Limited};
use serde_json::{Map, Value};

pub use error::ProxyError;

use crate::{routing::Priority, state::Shared};

/// Builds the API router. Layers, outermost first: none beyond axum's routing — the body
/// limit is enforced while reading (413), errors become OpenAI-shaped responses in
/// [`ProxyError`], and every response carries the `X-Sidecar-*` headers set in `forward`.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(|s, h, b| completion(s, h, b, "/v1/chat/completions")))
        .route("/v1/completions", post(|s, h, b| completion(s, h, b, "/v1/completions")))
        .route("/v1/embeddings", post(|s, h, b| completion(s, h, b, "/v1/embeddings")))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .fallback(|uri: Uri| async move { ProxyError::NotFound(uri.path().to_owned()) })
        .with_state(shared)
}

/// A parsed request: the JSON object, its model and whether it streams.
pub(crate) struct ParsedRequest {
    pub body: Map<String, Value>,
    pub model: String,
    pub stream: bool,
    pub size: usize,
}

async fn read_body(body: Body, limit: usize) -> Result<ParsedRequest, ProxyError> {
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return Err(ProxyError::PayloadTooLarge(limit));
        }
        Err(_) => {
            return Err(ProxyError::BadRequest("could not read the request body".into()));
        }
    };
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ProxyError::BadRequest(format!("request body is not valid JSON: {e}")))?;
    let Value::Object(body) = value else {
        return Err(ProxyError::BadRequest("request body must be a JSON object".into()));
    };
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(_) => {
            return Err(ProxyError::BadRequest("`model` must be a non-empty string".into()));
        }
        None => {
            return Err(ProxyError::BadRequest("you must provide a `model` parameter".into()));
        }
    };
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    Ok(ParsedRequest { body, model, stream, size: bytes.len() })
}

async fn completion(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body, path: &'static str) -> Response {
    crate::state::Counters::bump(&shared.counters.total);
    let request = match read_body(body, shared.max_body_bytes).await {
        Ok(r) => r,
        Err(e) => return reject(&shared, e, ""),
    };
    if shared.bundle.load().version == 0 {
        return reject(&shared, ProxyError::NotReady, &request.model);
    }
    let model = request.model.clone();
    let priority = Priority::from_header(headers.get("x-priority").and_then(|v| v.to_str().ok()));
    match forward::serve(&shared, path, &headers, request, priority).await {
        Ok(response) => response,
        Err(e) => reject(&shared, e, &model),
    }
}

/// The proxy answers the request itself: counted, accounted (as answered by no
/// backend), and turned into an OpenAI-shaped error.
fn reject(shared: &Shared, e: ProxyError, model: &str) -> Response {
    forward::count_error(shared, &e);
    shared.metrics.request("none", "none", e.parts().0.as_u16());
    shared.usage.record(crate::report::UsageEvent {
        at_ms: crate::now_ms(),
        backend_id: "".into(),
        pool: "".into(),
        model: model.chars().take(256).collect::<String>().into(),
        attempt: None,
        answered: Some(false),
        usage: None,
        cost_usd: 0.0,
        latency: std::time::Duration::ZERO,
        ttft: None,
    });
    e.into_response()
}

fn model_object(id: &str, created: i64) -> Value {
    serde_json::json!({ "id": id, "object": "model", "created": created, "owned_by": "sidecar" })
}

async fn list_models(State(shared): State<Arc<Shared>>) -> Response {
    let bundle = shared.bundle.load();
    let data: Vec<Value> = bundle.models.iter().map(|m| model_object(m, 0)).collect();
    Json(serde_json::json!({ "object": "list", "data": data })).into_response()
}

async fn get_model(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let bundle = shared.bundle.load();
    if bundle.models.contains(&id) {
        Json(model_object(&id, 0)).into_response()
    } else {
        ProxyError::ModelNotFound(id).into_response()
    }
}
