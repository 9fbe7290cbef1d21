//! The client API — OpenAI's chat, completions, embeddings and Responses, Anthropic's
//! Messages — request parsing, admission, forwarding with retries on the next candidate,
//! the response passed through, and accounting.

mod admit;
mod attempt;
pub mod body;
pub mod caller;
pub mod endpoint;
pub mod error;
mod forward;
pub mod origins;
mod stored;

use std::{ops::Range, sync::Arc};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::{Value, value::RawValue};

pub use body::{ApiResponse, ProxyBody};
pub use endpoint::{Endpoint, Shape};
pub use error::ProxyError;

use sidecar_otel::KeyValue;

use crate::{routing::Priority, snapshot, state::Shared, upstream::HttpClient};

/// Serves one API request. Routing is a match on the path: the forwarded endpoints
/// (POST), a stored response by id (`/v1/responses/{id}`, to the backend that made it),
/// and the model list answered locally (GET); anything else is an OpenAI-shaped 404 or
/// 405. Errors on the Anthropic paths are Anthropic-shaped. Every response carries the
/// `X-Sidecar-*` headers set in `forward`; the body limit is enforced while reading (413).
pub async fn handle<B>(shared: &Arc<Shared>, client: &HttpClient, request: Request<B>) -> ApiResponse
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let path = request.uri().path();
    if let Some(endpoint) = Endpoint::of(path) {
        if request.method() != Method::POST {
            return ProxyError::MethodNotAllowed(request.method().to_string(), path.to_owned(), "POST")
                .into_response_as(endpoint.shape());
        }
        let caller = match caller_of(shared, request.headers()) {
            Ok(caller) => caller,
            Err(e) => return reject(shared, e, "", None, endpoint.shape()),
        };
        let (parts, body) = request.into_parts();
        return completion(shared, client, parts.headers, body, endpoint, caller).await;
    }
    if let Some(rest) = path.strip_prefix("/v1/responses/") {
        let rest = rest.to_owned();
        return stored::serve(shared, client, request, &rest).await;
    }
    let model = match path.strip_prefix("/v1/models") {
        Some("") => None,
        Some(rest) if rest.len() > 1 && rest.starts_with('/') => Some(&rest[1..]),
        _ => return ProxyError::NotFound(path.to_owned()).into_response(),
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return ProxyError::MethodNotAllowed(request.method().to_string(), path.to_owned(), "GET").into_response();
    }
    let caller = match caller_of(shared, request.headers()) {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    match model {
        None => list_models(shared, &caller),
        Some(id) => get_model(shared, &caller, &percent_encoding::percent_decode_str(id).decode_utf8_lossy()),
    }
}

/// Who calls, by the client key the request presents (see [`caller`]).
fn caller_of(shared: &Shared, headers: &HeaderMap) -> Result<caller::Caller, ProxyError> {
    caller::authenticate(&shared.bundle.load(), headers, shared.allow_anonymous, crate::now_ms())
}

/// A parsed request: the body as the client sent it, and where in it the fields the
/// proxy may change are. A long `messages` array is validated but never copied or
/// turned into a tree; the upstream body is the client's bytes with only the model
/// (and, for streams, `stream_options`) spliced in.
pub(crate) struct ParsedRequest {
    bytes: Bytes,
    pub model: String,
    pub stream: bool,
    /// The client's `stream_options` has `include_usage` (true or false): the client
    /// decided whether it gets the usage chunk.
    pub usage_asked: bool,
    /// Responses: the stored response this one continues.
    pub previous_response_id: Option<String>,
    pub size: usize,
    model_at: Range<usize>,
    options_at: Option<Range<usize>>,
    /// Offset of the object's closing brace.
    close_at: usize,
}

/// The top-level fields the proxy reads; everything else is validated and skipped.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    stream: Option<&'a RawValue>,
    #[serde(borrow)]
    stream_options: Option<&'a RawValue>,
    #[serde(borrow)]
    previous_response_id: Option<&'a RawValue>,
}

/// Where `raw` (borrowed from `text`) sits in `text`.
fn span(text: &str, raw: &RawValue) -> Range<usize> {
    let start = raw.get().as_ptr() as usize - text.as_ptr() as usize;
    start..start + raw.get().len()
}

impl ParsedRequest {
    pub(crate) fn parse(bytes: Bytes) -> Result<Self, ProxyError> {
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| ProxyError::BadRequest("request body is not valid JSON: it is not UTF-8".into()))?;
        if !text.trim_start().starts_with('{') {
            return Err(ProxyError::BadRequest("request body must be a JSON object".into()));
        }
        let fields: Fields<'_> = serde_json::from_str(text).map_err(|e| {
            ProxyError::BadRequest(if e.is_data() {
                format!("request body must be a JSON object with valid fields: {e}")
            } else {
                format!("request body is not valid JSON: {e}")
            })
        })?;
        let model = match fields.model.map(|v| serde_json::from_str::<String>(v.get())) {
            Some(Ok(m)) if !m.is_empty() => m,
            Some(_) => return Err(ProxyError::BadRequest("`model` must be a non-empty string".into())),
            None => return Err(ProxyError::BadRequest("you must provide a `model` parameter".into())),
        };
        let stream = fields.stream.is_some_and(|v| v.get() == "true");
        let model_at = span(text, fields.model.expect("checked above"));
        let options_at = fields.stream_options.map(|v| span(text, v));
        let usage_asked = fields.stream_options.is_some_and(|v| {
            serde_json::from_str::<serde_json::Map<String, Value>>(v.get())
                .is_ok_and(|o| o.contains_key("include_usage"))
        });
        let previous_response_id =
            match fields.previous_response_id.map(|v| serde_json::from_str::<Option<String>>(v.get())) {
                None | Some(Ok(None)) => None,
                Some(Ok(Some(id))) => Some(id),
                Some(Err(_)) => return Err(ProxyError::BadRequest("`previous_response_id` must be a string".into())),
            };
        let close_at = text.trim_end().len() - 1;
        Ok(Self {
            size: bytes.len(),
            model,
            stream,
            usage_asked,
            previous_response_id,
            model_at,
            options_at,
            close_at,
            bytes,
        })
    }

    /// The body for one upstream attempt: `model` set to `model`, and for streams
    /// `stream_options.include_usage` asked for unless the client decided it. Every
    /// other byte is the client's.
    pub(crate) fn upstream_body(&self, model: &str, want_usage: bool) -> Result<Bytes, ProxyError> {
        let mut edits: Vec<(Range<usize>, Vec<u8>)> = Vec::with_capacity(2);
        if model != self.model {
            edits.push((self.model_at.clone(), serde_json::to_vec(model).expect("a string serializes")));
        }
        if want_usage {
            match &self.options_at {
                // The client decided; its choice is sent as it is.
                _ if self.usage_asked => {}
                None => {
                    edits.push((self.close_at..self.close_at, br#","stream_options":{"include_usage":true}"#.to_vec()))
                }
                Some(at) => {
                    let mut options: serde_json::Map<String, Value> = serde_json::from_slice(&self.bytes[at.clone()])
                        .map_err(|e| {
                        // The body check accepts what JSON allows in a string (a lone
                        // surrogate escape, found by the fuzzer); reading it needs more.
                        let why =
                            if e.is_data() { "must be an object".to_owned() } else { format!("cannot be read: {e}") };
                        ProxyError::BadRequest(format!("`stream_options` {why}"))
                    })?;
                    options.insert("include_usage".into(), Value::Bool(true));
                    edits.push((at.clone(), serde_json::to_vec(&options).expect("an object serializes")));
                }
            }
        }
        if edits.is_empty() {
            return Ok(self.bytes.clone());
        }
        edits.sort_by_key(|(at, _)| at.start);
        let mut out = Vec::with_capacity(self.bytes.len() + edits.iter().map(|(_, v)| v.len()).sum::<usize>());
        let mut from = 0;
        for (at, value) in &edits {
            out.extend_from_slice(&self.bytes[from..at.start]);
            out.extend_from_slice(value);
            from = at.end;
        }
        out.extend_from_slice(&self.bytes[from..]);
        Ok(Bytes::from(out))
    }
}

async fn read_body<B>(body: B, limit: usize) -> Result<ParsedRequest, ProxyError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return Err(ProxyError::PayloadTooLarge(limit));
        }
        Err(_) => return Err(ProxyError::BadRequest("could not read the request body".into())),
    };
    ParsedRequest::parse(bytes)
}

async fn completion<B>(
    shared: &Arc<Shared>,
    client: &HttpClient,
    headers: HeaderMap,
    body: B,
    endpoint: Endpoint,
    caller: caller::Caller,
) -> ApiResponse
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    // With trace export on, one span per request, continuing the client's trace; it ends
    // when the answer has been passed on in full (the response body holds it).
    let Some(traces) = &shared.traces else {
        return serve_completion(shared, client, headers, body, endpoint, (caller, None)).await;
    };
    let attributes = vec![KeyValue::new("http.request.method", "POST"), KeyValue::new("url.path", endpoint.path())];
    let span = Arc::new(traces.serve(endpoint.path(), &headers, attributes));
    let response = serve_completion(shared, client, headers, body, endpoint, (caller, Some(span.clone()))).await;
    let status = response.status();
    span.set([KeyValue::new("http.response.status_code", i64::from(status.as_u16()))]);
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        span.fail(status.canonical_reason().unwrap_or("error"));
    }
    response
}

async fn serve_completion<B>(
    shared: &Arc<Shared>,
    client: &HttpClient,
    headers: HeaderMap,
    body: B,
    endpoint: Endpoint,
    (caller, trace): (caller::Caller, Option<Arc<sidecar_otel::Span>>),
) -> ApiResponse
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let shape = endpoint.shape();
    crate::state::Counters::bump(&shared.counters.total);
    // A declared length above the limit is refused before any body byte is read.
    let declared = headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > shared.max_body_bytes as u64) {
        return reject(shared, ProxyError::PayloadTooLarge(shared.max_body_bytes), "", caller.key(), shape);
    }
    // The timer is armed only if the body is not already there when first polled.
    let read = tokio::time::timeout(shared.body_timeout, read_body(body, shared.max_body_bytes));
    let request = match read.await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return reject(shared, e, "", caller.key(), shape),
        Err(_) => return reject(shared, ProxyError::BodyTimeout(shared.body_timeout), "", caller.key(), shape),
    };
    if shared.bundle.load().version == 0 {
        return reject(shared, ProxyError::NotReady, &request.model, caller.key(), shape);
    }
    if !caller.allows_model(&request.model) {
        return reject(shared, ProxyError::KeyScope(request.model.clone()), &request.model, caller.key(), shape);
    }
    let permit = match caller.key() {
        Some(key) => {
            let estimate = endpoint.estimate(request.size);
            let now = tokio::time::Instant::now();
            match caller::admit(&shared.bundle.load(), key, estimate, now, crate::now_ms()) {
                Ok(permit) => permit,
                Err(e) => return reject(shared, e, &request.model, caller.key(), shape),
            }
        }
        None => None,
    };
    let model = request.model.clone();
    let priority = Priority::from_header(headers.get("x-priority").and_then(|v| v.to_str().ok()));
    if let Some(span) = &trace {
        span.set([
            KeyValue::new("gen_ai.request.model", model.clone()),
            KeyValue::new("sidecar.priority", priority.as_str()),
            KeyValue::new("sidecar.stream", request.stream),
        ]);
    }
    match forward::serve(shared, client, endpoint, &headers, request, priority, (&caller, permit.clone(), trace)).await
    {
        Ok(response) => response,
        Err(e) => {
            // Nothing was used of the key's tokens: no answer came through.
            if let Some(permit) = &permit {
                permit.settle(0);
            }
            reject(shared, e, &model, caller.key(), shape)
        }
    }
}

/// The proxy answers the request itself: counted, accounted (as answered by no
/// backend), and turned into an OpenAI-shaped error.
fn reject(
    shared: &Shared,
    e: ProxyError,
    model: &str,
    key: Option<&Arc<snapshot::ClientKey>>,
    shape: Shape,
) -> ApiResponse {
    forward::count_error(shared, &e);
    shared.metrics.request("none", "none", e.parts().0.as_u16());
    if let Some(reason) = e.key_refusal() {
        shared.metrics.key_refused(reason);
    }
    shared.usage.record(crate::report::UsageEvent {
        at_ms: crate::now_ms(),
        backend_id: "".into(),
        pool: "".into(),
        model: usage_model(shared, model),
        attempt: None,
        answered: Some(false),
        usage: None,
        cost_usd: 0.0,
        latency: std::time::Duration::ZERO,
        ttft: None,
        key_id: key.map(|k| k.id.clone()),
    });
    e.into_response_as(shape)
}

/// The model a request the proxy answered itself is accounted under: the canonical
/// name if some backend serves it, else one fixed key. A client's raw `model` string
/// never becomes a usage key, so random names cannot grow the store.
fn usage_model(shared: &Shared, model: &str) -> Arc<str> {
    if model.is_empty() {
        return "".into();
    }
    let bundle = shared.bundle.load();
    match bundle.models.binary_search_by(|m| m.as_str().cmp(model)) {
        Ok(i) => bundle.models[i].as_str().into(),
        Err(_) => UNROUTED.into(),
    }
}

/// The usage key of requests for a model no backend serves.
pub const UNROUTED: &str = "(unrouted)";

fn model_object(id: &str, created: i64) -> Value {
    serde_json::json!({ "id": id, "object": "model", "created": created, "owned_by": "sidecar" })
}

fn list_models(shared: &Shared, caller: &caller::Caller) -> ApiResponse {
    let bundle = shared.bundle.load();
    let data: Vec<Value> =
        bundle.models.iter().filter(|m| caller.allows_model(m)).map(|m| model_object(m, 0)).collect();
    body::json(StatusCode::OK, &serde_json::json!({ "object": "list", "data": data }))
}

fn get_model(shared: &Shared, caller: &caller::Caller, id: &str) -> ApiResponse {
    let bundle = shared.bundle.load();
    if bundle.models.iter().any(|m| m == id) && caller.allows_model(id) {
        body::json(StatusCode::OK, &model_object(id, 0))
    } else {
        ProxyError::ModelNotFound(id.to_owned()).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(text: &str) -> Result<ParsedRequest, ProxyError> {
        read_body(http_body_util::Full::new(Bytes::from(text.to_owned())), 1 << 20).await
    }

    #[tokio::test]
    async fn the_model_is_rewritten_and_everything_else_passes_as_sent() {
        let r = parse(r#"{"model":"gpt","messages":[{"role":"user","content":"h\u00e9 \"x\""}],"temperature":0.70}"#)
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
        let r = parse(r#"{"model":"m","stream":true}"#).await.unwrap();
        assert!(r.stream);
        let out: Value = serde_json::from_slice(&r.upstream_body("m", true).unwrap()).unwrap();
        assert_eq!(out["stream_options"]["include_usage"], true);
        let r = parse(r#"{"model":"m","stream":true,"stream_options":{"include_usage":false,"x":1}}"#).await.unwrap();
        let out: Value = serde_json::from_slice(&r.upstream_body("m", true).unwrap()).unwrap();
        assert_eq!(out["stream_options"]["include_usage"], false);
        assert_eq!(out["stream_options"]["x"], 1);
    }

    #[tokio::test]
    async fn stream_options_that_cannot_be_read_are_refused_by_what_is_wrong() {
        let refusal = |body: &'static str| async move {
            match parse(body).await.unwrap().upstream_body("m", true) {
                Err(ProxyError::BadRequest(m)) => m,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            refusal(r#"{"model":"m","stream":true,"stream_options":5}"#).await,
            "`stream_options` must be an object"
        );
        // Found by the fuzzer: a lone surrogate in a key passes the body check, which
        // skips over strings, but cannot be read; the message used to say "must be an
        // object" of what is one.
        let m = refusal(r#"{"model":"m","stream":true,"stream_options":{"\udeee":1}}"#).await;
        assert!(m.starts_with("`stream_options` cannot be read:") && m.contains("surrogate"), "{m}");
    }

    #[tokio::test]
    async fn bad_bodies_are_refused_clearly() {
        let msg = |r: Result<ParsedRequest, ProxyError>| r.err().map(|e| e.parts().2).unwrap_or_default();
        assert!(msg(parse("[1]").await).contains("JSON object"));
        assert!(msg(parse("{nope").await).contains("not valid JSON"));
        assert!(msg(parse(r#"{"messages":[]}"#).await).contains("`model`"));
        assert!(msg(parse(r#"{"model":7}"#).await).contains("non-empty string"));
        let big = read_body(http_body_util::Full::new(Bytes::from(vec![b' '; 100])), 10).await;
        assert!(matches!(big, Err(ProxyError::PayloadTooLarge(10))));
        assert!(msg(parse(r#"{"model":"a","model":"b"}"#).await).contains("duplicate field `model`"));
        assert!(msg(parse(r#"{"model":"a"} x"#).await).contains("not valid JSON"));
        assert!(msg(parse(r#"{"model":"a","messages":[1,}"#).await).contains("not valid JSON"));
    }

    #[tokio::test]
    async fn the_upstream_body_is_the_clients_bytes_with_only_the_model_spliced_in() {
        let sent = "{ \"messages\": [ {\"role\":\"user\"} ],\n  \"model\" : \"gpt\", \"n\": 1.50 }\n";
        let r = parse(sent).await.unwrap();
        let same = r.upstream_body("gpt", false).unwrap();
        assert_eq!(same, sent, "nothing to change: the bytes pass as sent");
        let out = String::from_utf8(r.upstream_body("vendor/\"gpt\"", false).unwrap().to_vec()).unwrap();
        assert_eq!(out, sent.replace("\"gpt\"", "\"vendor/\\\"gpt\\\"\""));
        let streamed = parse(r#"{"stream":true,"model":"m"}  "#).await.unwrap();
        let out = String::from_utf8(streamed.upstream_body("native", true).unwrap().to_vec()).unwrap();
        assert_eq!(out, r#"{"stream":true,"model":"native","stream_options":{"include_usage":true}}  "#);
    }
}
