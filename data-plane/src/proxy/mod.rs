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
use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{Value, value::RawValue};

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

/// A parsed request: the JSON object's top-level fields kept raw (a long `messages`
/// array is validated but never turned into a tree), its model and whether it streams.
pub(crate) struct ParsedRequest {
    pub body: BTreeMap<String, Box<RawValue>>,
    pub model: String,
    pub stream: bool,
    pub size: usize,
}

impl ParsedRequest {
    /// The body for one upstream attempt: `model` set to `model`, and for streams
    /// `stream_options.include_usage` asked for unless the client decided it.
    pub(crate) fn upstream_body(&mut self, model: &str, want_usage: bool) -> Result<Bytes, ProxyError> {
        let raw = |v: &serde_json::Value| RawValue::from_string(v.to_string()).expect("a value serializes to JSON");
        self.body.insert("model".into(), raw(&Value::String(model.to_owned())));
        if want_usage {
            let mut options: serde_json::Map<String, Value> = match self.body.get("stream_options") {
                Some(v) => serde_json::from_str(v.get())
                    .map_err(|_| ProxyError::BadRequest("`stream_options` must be an object".into()))?,
                None => serde_json::Map::new(),
            };
            if !options.contains_key("include_usage") {
                options.insert("include_usage".into(), Value::Bool(true));
                self.body.insert("stream_options".into(), raw(&Value::Object(options)));
            }
        }
        Ok(Bytes::from(serde_json::to_vec(&self.body).expect("raw JSON values serialize")))
    }
}

async fn read_body(body: Body, limit: usize) -> Result<ParsedRequest, ProxyError> {
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return Err(ProxyError::PayloadTooLarge(limit));
        }
        Err(_) => return Err(ProxyError::BadRequest("could not read the request body".into())),
    };
    let body: BTreeMap<String, Box<RawValue>> = match serde_json::from_slice(&bytes) {
        Ok(body) => body,
        Err(e) if e.is_data() => return Err(ProxyError::BadRequest("request body must be a JSON object".into())),
        Err(e) => return Err(ProxyError::BadRequest(format!("request body is not valid JSON: {e}"))),
    };
    let model = match body.get("model").map(|v| serde_json::from_str::<Value>(v.get())) {
        Some(Ok(Value::String(m))) if !m.is_empty() => m,
        Some(_) => return Err(ProxyError::BadRequest("`model` must be a non-empty string".into())),
        None => return Err(ProxyError::BadRequest("you must provide a `model` parameter".into())),
    };
    let stream = body.get("stream").is_some_and(|v| v.get().trim() == "true");
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(text: &str) -> Result<ParsedRequest, ProxyError> {
        read_body(Body::from(text.to_owned()), 1 << 20).await
    }

    #[tokio::test]
    async fn the_model_is_rewritten_and_everything_else_passes_as_sent() {
        let mut r =
            parse(r#"{"model":"gpt","messages":[{"role":"user","content":"h\u00e9 \"x\""}],"temperature":0.70}"#)
                .await
                .unwrap();
        assert_eq!((r.model.as_str(), r.stream), ("gpt", false));
        let out: Value = serde_json::from_slice(&r.upstream_body("native/gpt", false).unwrap()).unwrap();
        assert_eq!(out["model"], "native/gpt");
        assert_eq!(out["messages"][0]["content"], "h\u{e9} \"x\"");
        assert!(out.get("stream_options").is_none());
        let text = String::from_utf8(r.upstream_body("n", false).unwrap().to_vec()).unwrap();
        assert!(text.contains(r#""temperature":0.70"#), "numbers pass untouched: {text}");
    }

    #[tokio::test]
    async fn streams_ask_for_usage_unless_the_client_decided() {
        let mut r = parse(r#"{"model":"m","stream":true}"#).await.unwrap();
        assert!(r.stream);
        let out: Value = serde_json::from_slice(&r.upstream_body("m", true).unwrap()).unwrap();
        assert_eq!(out["stream_options"]["include_usage"], true);
        let mut r =
            parse(r#"{"model":"m","stream":true,"stream_options":{"include_usage":false,"x":1}}"#).await.unwrap();
        let out: Value = serde_json::from_slice(&r.upstream_body("m", true).unwrap()).unwrap();
        assert_eq!(out["stream_options"]["include_usage"], false);
        assert_eq!(out["stream_options"]["x"], 1);
    }

    #[tokio::test]
    async fn bad_bodies_are_refused_clearly() {
        let msg = |r: Result<ParsedRequest, ProxyError>| r.err().map(|e| e.parts().2).unwrap_or_default();
        assert!(msg(parse("[1]").await).contains("JSON object"));
        assert!(msg(parse("{nope").await).contains("not valid JSON"));
        assert!(msg(parse(r#"{"messages":[]}"#).await).contains("`model`"));
        assert!(msg(parse(r#"{"model":7}"#).await).contains("non-empty string"));
        let big = read_body(Body::from(vec![b' '; 100]), 10).await;
        assert!(matches!(big, Err(ProxyError::PayloadTooLarge(10))));
    }
}
