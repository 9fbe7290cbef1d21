//! A scriptable mock OpenAI-compatible provider upstream, on port 0.
//!
//! Serves `POST /v1/chat/completions`, `POST /v1/completions`, `POST /v1/embeddings` and
//! `GET /v1/models` over plain HTTP/1.1 and HTTP/2 (h2c, prior knowledge) on the same port.
//! It is built on hyper directly (not axum) so that a scripted reply can cut the
//! connection before or in the middle of a response.
//!
//! Behaviour of a non-`/models` call, in order:
//! 1. the call is recorded (with status `0` until the status is known);
//! 2. bearer key check → `401` with an OpenAI-shaped error;
//! 3. the mock's own RPM limit ([`MockUpstream::set_rpm_limit`]) → `429`
//!    `rate_limit_exceeded` with `Retry-After`, counted as a violation;
//! 4. the call is admitted: the next scripted [`Reply`] is taken from the FIFO queue
//!    ([`MockUpstream::push`]), or the default ([`MockUpstream::set_default`]) if the queue
//!    is empty;
//! 5. the mock waits the global latency ([`MockUpstream::set_latency`]) plus the reply's own
//!    latency ([`MockUpstream::push_with_latency`]);
//! 6. the reply is played.
//!
//! `GET /v1/models` is recorded and checks the key, but is never scripted, delayed or
//! rate-limited.

use std::{
    collections::VecDeque,
    convert::Infallible,
    error::Error as StdError,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{
    HeaderMap, Method, Request, Response, StatusCode,
    body::{Frame, Incoming},
    header::{self, HeaderValue},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinSet};

type BoxError = Box<dyn StdError + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

/// The fixed usage every chat/completions reply reports.
const PROMPT_TOKENS: u64 = 10;
const COMPLETION_TOKENS: u64 = 5;
/// Content chunks of a stream answered by [`Reply::Ok`].
const DEFAULT_STREAM_CHUNKS: usize = 5;
const MODELS_PATH: &str = "/v1/models";

/// A scripted way to answer one call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Reply {
    /// The normal answer: `200` with an OpenAI-shaped JSON body echoing the request's
    /// `model` and reporting usage `{prompt_tokens: 10, completion_tokens: 5,
    /// total_tokens: 15}` (embeddings: `{prompt_tokens: 10, total_tokens: 10}`). If the
    /// request has `"stream": true` (chat and completions only), answers like
    /// [`Reply::Stream`] with 5 chunks and no delay.
    #[default]
    Ok,
    /// A `200` `text/event-stream` answer whatever the request asked for: `chunks` content
    /// chunks (one body frame each, flushed individually, `chunk_delay` apart), then — only
    /// if the request had `"stream_options": {"include_usage": true}` — a usage chunk with
    /// `"choices": []`, then `data: [DONE]`.
    Stream {
        /// Number of content chunks.
        chunks: usize,
        /// Delay before every chunk after the first (also before the usage and `[DONE]`
        /// events).
        chunk_delay: Duration,
    },
    /// Answers `status` with an OpenAI-shaped JSON error body (or `body` verbatim, served as
    /// `application/json`) and a `Retry-After: <retry_after>` header when given.
    Status {
        /// The HTTP status code.
        status: u16,
        /// The `Retry-After` header value, if any (e.g. `"2"`).
        retry_after: Option<String>,
        /// A body replacing the default OpenAI-shaped error.
        body: Option<String>,
    },
    /// Never answers: the request stays pending until the client goes away or the mock is
    /// stopped.
    Hang,
    /// Closes the connection without sending any response.
    Drop,
    /// Sends `200` headers and `after_chunks` SSE content chunks, then aborts the body with
    /// an error so the connection (HTTP/1) or stream (HTTP/2) is cut.
    DropMidStream {
        /// Content chunks sent before the cut.
        after_chunks: usize,
    },
}

impl Reply {
    /// `Reply::Status` with `status`, the default error body and no `Retry-After`.
    pub fn status(status: u16) -> Self {
        Self::Status { status, retry_after: None, body: None }
    }

    /// A `429` with `Retry-After: <retry_after_secs>` and the default error body.
    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        Self::Status { status: 429, retry_after: Some(retry_after_secs.to_string()), body: None }
    }
}

/// A call the mock received.
#[derive(Debug, Clone)]
pub struct Call {
    /// When the request (head and body) had been received.
    pub at: Instant,
    /// Request method, e.g. `POST`.
    pub method: String,
    /// Request path, without the query string, e.g. `/v1/chat/completions`.
    pub path: String,
    /// Request headers as received.
    pub headers: HeaderMap,
    /// Request body as received.
    pub body: Bytes,
    /// Status answered; `0` while the call is still in progress (including [`Reply::Hang`])
    /// and for calls answered with [`Reply::Drop`]. [`Reply::DropMidStream`] records `200`
    /// (the status it sent before cutting the stream).
    pub status: u16,
    /// The `authorization` header, if any (a shortcut for `header("authorization")`).
    pub authorization: Option<String>,
}

impl Call {
    /// The body parsed as JSON, or [`Value::Null`] if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The value of header `name` (case-insensitive), if present and valid text. For a
    /// repeated header, the first value.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }
}

struct Inner {
    calls: Vec<(u64, Call)>,
    next_id: u64,
    script: VecDeque<(Reply, Duration)>,
    default: Reply,
    latency: Duration,
    rpm: Option<(u32, Duration)>,
    admitted: VecDeque<Instant>,
    violations: usize,
    /// Per-model strict windows (by the model id the mock receives): limit, window and
    /// admissions, and 429s they caused.
    model_limits: std::collections::HashMap<String, (u32, Duration, VecDeque<Instant>, usize)>,
    /// Whether (and how) admitted calls report where the key stands against the limit.
    limit_headers: Option<LimitHeaders>,
}

/// How the mock reports its RPM limit on every admitted call, as real providers do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHeaders {
    /// `x-ratelimit-{limit,remaining,reset}-requests`, the reset as a Go duration (`1.5s`).
    OpenAi,
    /// `anthropic-ratelimit-requests-{limit,remaining,reset}`, the reset as RFC 3339.
    Anthropic,
}

struct Shared {
    valid_keys: Vec<String>,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, call: Call) -> u64 {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.calls.push((id, call));
        id
    }

    fn set_status(&self, id: u64, status: u16) {
        let mut inner = self.lock();
        if let Some((_, call)) = inner.calls.iter_mut().rev().find(|(i, _)| *i == id) {
            call.status = status;
        }
    }

    fn key_ok(&self, authorization: Option<&str>) -> bool {
        let Some(key) = authorization.and_then(|a| a.strip_prefix("Bearer ")) else {
            return false;
        };
        let key = key.trim();
        if self.valid_keys.is_empty() { !key.is_empty() } else { self.valid_keys.iter().any(|v| v == key) }
    }
}

/// Aborts the server task when the last [`MockUpstream`] clone goes away.
struct ServerGuard {
    task: tokio::task::AbortHandle,
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A scriptable mock OpenAI-compatible upstream. Cheap to clone; all clones share the same
/// server, script and recording. The server stops when the last clone is dropped or on
/// [`MockUpstream::stop`].
#[derive(Clone)]
pub struct MockUpstream {
    /// Where it listens (`127.0.0.1:<port>`).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    guard: Arc<ServerGuard>,
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl MockUpstream {
    /// Starts a mock on `127.0.0.1:0` that accepts the bearer keys `valid_keys`; an empty
    /// slice accepts any non-empty bearer key (a request without `Authorization: Bearer …`
    /// is still answered `401`).
    pub async fn start(valid_keys: &[&str]) -> Self {
        let shared = Arc::new(Shared {
            valid_keys: valid_keys.iter().map(|k| k.to_string()).collect(),
            inner: Mutex::new(Inner {
                calls: Vec::new(),
                next_id: 0,
                script: VecDeque::new(),
                default: Reply::Ok,
                latency: Duration::ZERO,
                rpm: None,
                admitted: VecDeque::new(),
                violations: 0,
                model_limits: Default::default(),
                limit_headers: None,
            }),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve(listener, shared.clone()));
        Self { addr, shared, guard: Arc::new(ServerGuard { task: task.abort_handle() }) }
    }

    /// The base URL clients configure, with the `/v1` prefix: `http://ADDR/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Stops the server now: the listener closes and every open connection (including
    /// hanging and streaming ones) is dropped. Not graceful.
    pub fn stop(&self) {
        self.guard.task.abort();
    }

    /// Queues `reply` for the next admitted non-`/models` call (FIFO), with no extra
    /// latency beyond [`MockUpstream::set_latency`].
    pub fn push(&self, reply: Reply) {
        self.push_with_latency(reply, Duration::ZERO);
    }

    /// Queues `reply` for the next admitted non-`/models` call (FIFO); the mock waits
    /// `latency` (on top of the global latency) before playing it.
    pub fn push_with_latency(&self, reply: Reply, latency: Duration) {
        self.shared.lock().script.push_back((reply, latency));
    }

    /// Sets the reply used when the queue is empty (initially [`Reply::Ok`]).
    pub fn set_default(&self, reply: Reply) {
        self.shared.lock().default = reply;
    }

    /// Sets a latency waited before every reply of an admitted non-`/models` call
    /// (initially zero); a reply's own latency is added to it.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// Number of scripted replies still queued.
    pub fn pending_replies(&self) -> usize {
        self.shared.lock().script.len()
    }

    /// Enforces the mock's own strict sliding-window limit on non-`/models` calls: a call
    /// arriving when `limit` calls have been admitted in the last `window` is answered
    /// `429` (`rate_limit_exceeded`, `Retry-After` = whole seconds until the oldest
    /// admission leaves the window, at least 1) and counted in
    /// [`MockUpstream::violations`]. Rejected and unauthorized calls are not admitted.
    /// Admissions made before this call still count.
    pub fn set_rpm_limit(&self, limit: u32, window: Duration) {
        self.shared.lock().rpm = Some((limit, window));
    }

    /// Removes the limit set by [`MockUpstream::set_rpm_limit`].
    pub fn clear_rpm_limit(&self) {
        self.shared.lock().rpm = None;
    }

    /// Calls answered `429` because of the mock's own RPM limit.
    pub fn violations(&self) -> usize {
        self.shared.lock().violations
    }

    /// Enforces a strict sliding window for one model (the `model` the mock receives,
    /// i.e. the native id), on top of [`MockUpstream::set_rpm_limit`]: as real providers
    /// limit models separately on one key. A call over it is answered `429` naming the
    /// model, counted in [`MockUpstream::model_violations`], and not admitted in the
    /// key's window.
    pub fn set_model_limit(&self, model: &str, limit: u32, window: Duration) {
        self.shared.lock().model_limits.insert(model.to_owned(), (limit, window, VecDeque::new(), 0));
    }

    /// Reports the RPM limit (see [`MockUpstream::set_rpm_limit`]; for a model with its
    /// own limit, [`MockUpstream::set_model_limit`], that model's, as OpenAI does) on every
    /// admitted call in `style`: the limit, what is left of it after this call, and when
    /// the whole budget is back (the newest admission leaves the window).
    pub fn send_limit_headers(&self, style: LimitHeaders) {
        self.shared.lock().limit_headers = Some(style);
    }

    /// Calls answered `429` because of `model`'s own limit.
    pub fn model_violations(&self, model: &str) -> usize {
        self.shared.lock().model_limits.get(model).map_or(0, |m| m.3)
    }

    /// Every call received so far (including `/models` and calls still in progress), in
    /// arrival order.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().calls.iter().map(|(_, c)| c.clone()).collect()
    }

    /// The calls to `path` (exact match, without query string, e.g.
    /// `/v1/chat/completions`).
    pub fn calls_to(&self, path: &str) -> Vec<Call> {
        self.shared.lock().calls.iter().filter(|(_, c)| c.path == path).map(|(_, c)| c.clone()).collect()
    }

    /// Number of calls answered with a 2xx status on paths other than `/v1/models`.
    pub fn served(&self) -> usize {
        self.shared.lock().calls.iter().filter(|(_, c)| c.path != MODELS_PATH && (200..300).contains(&c.status)).count()
    }

    /// Clears the recorded calls and the violation count. The script, default reply,
    /// latency, RPM limit and the RPM window's admissions are kept.
    pub fn reset(&self) {
        let mut inner = self.shared.lock();
        inner.calls.clear();
        inner.violations = 0;
    }

    /// [`MockUpstream::reset`], and the RPM window starts empty: what came before (a
    /// warm-up) counts for nothing.
    pub fn reset_all(&self) {
        self.reset();
        self.shared.lock().admitted.clear();
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    // Connections live in this set so that aborting this task drops all of them.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    conns.spawn(async move {
                        let service = service_fn(move |req| handle(shared.clone(), req));
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completions,
    Embeddings,
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, BoxError> {
    answer(shared, req).await.map(provider_headers)
}

async fn answer(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, BoxError> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let path = parts.uri.path().to_owned();
    let authorization = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let id = shared.record(Call {
        at: Instant::now(),
        method: parts.method.to_string(),
        path: path.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
        status: 0,
        authorization: authorization.clone(),
    });
    let respond = |resp: Response<Body>| {
        shared.set_status(id, resp.status().as_u16());
        Ok(resp)
    };

    let kind = match (&parts.method, path.as_str()) {
        (&Method::GET, MODELS_PATH) => {
            return respond(if shared.key_ok(authorization.as_deref()) {
                json_response(
                    StatusCode::OK,
                    &json!({"object": "list", "data": [
                        {"id": "m1", "object": "model", "created": 0, "owned_by": "mock"},
                        {"id": "m2", "object": "model", "created": 0, "owned_by": "mock"},
                    ]}),
                )
            } else {
                unauthorized()
            });
        }
        (&Method::POST, "/v1/chat/completions") => Kind::Chat,
        (&Method::POST, "/v1/completions") => Kind::Completions,
        (&Method::POST, "/v1/embeddings") => Kind::Embeddings,
        (_, MODELS_PATH | "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings") => {
            return respond(error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("method {} not allowed on {path}", parts.method),
                "invalid_request_error",
                None,
            ));
        }
        _ => {
            return respond(error_response(
                StatusCode::NOT_FOUND,
                &format!("unknown path {path}"),
                "invalid_request_error",
                Some("not_found"),
            ));
        }
    };
    if !shared.key_ok(authorization.as_deref()) {
        return respond(unauthorized());
    }

    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = request.get("model").cloned().unwrap_or_else(|| Value::from("mock-model"));
    let wants_stream = request.get("stream").and_then(Value::as_bool) == Some(true);
    let include_usage = request.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true);

    // Admission (own RPM limit), then take the scripted reply.
    let (reply, latency, limit_headers) = {
        let mut inner = shared.lock();
        let now = Instant::now();
        if let Some((limit, window)) = inner.rpm {
            while inner.admitted.front().is_some_and(|t| now.duration_since(*t) >= window) {
                inner.admitted.pop_front();
            }
            if inner.admitted.len() >= limit as usize {
                inner.violations += 1;
                let wait =
                    inner.admitted.front().map(|t| (*t + window).saturating_duration_since(now)).unwrap_or(window);
                let secs = (wait.as_secs_f64().ceil() as u64).max(1);
                drop(inner);
                let mut resp = error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    &format!(
                        "Rate limit reached on requests per min (RPM): Limit {limit}, Used {limit}, \
                         Requested 1. Please try again in {secs}s."
                    ),
                    "requests",
                    Some("rate_limit_exceeded"),
                );
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
                return respond(resp);
            }
        }
        let model_name = model.as_str().unwrap_or_default().to_owned();
        if let Some((limit, window, admitted, violations)) = inner.model_limits.get_mut(&model_name) {
            while admitted.front().is_some_and(|t| now.duration_since(*t) >= *window) {
                admitted.pop_front();
            }
            if admitted.len() >= *limit as usize {
                *violations += 1;
                let wait = admitted.front().map(|t| (*t + *window).saturating_duration_since(now)).unwrap_or(*window);
                let secs = (wait.as_secs_f64().ceil() as u64).max(1);
                let limit = *limit;
                drop(inner);
                let mut resp = error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    &format!(
                        "Rate limit reached for {model_name} on requests per min (RPM): Limit {limit}, Used {limit}, \
                         Requested 1. Please try again in {secs}s."
                    ),
                    "requests",
                    Some("rate_limit_exceeded"),
                );
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
                return respond(resp);
            }
            admitted.push_back(now);
        }
        inner.admitted.push_back(now);
        // A model with its own limit reports its own budget, as OpenAI does per model;
        // otherwise the key's.
        let budget = match inner.model_limits.get(&model_name) {
            Some((limit, window, admitted, _)) => Some((*limit, *window, admitted.len(), admitted.back().copied())),
            None => {
                inner.rpm.map(|(limit, window)| (limit, window, inner.admitted.len(), inner.admitted.back().copied()))
            }
        };
        let limit_headers = match (inner.limit_headers, budget) {
            (Some(style), Some((limit, window, used, newest))) => {
                let remaining = limit.saturating_sub(used as u32);
                // As OpenAI documents it: until the budget is back to its initial state,
                // when the newest admission leaves the window.
                let reset = newest.map_or(window, |t| (t + window).saturating_duration_since(now));
                let mut h = HeaderMap::new();
                let v = |s: String| HeaderValue::from_str(&s).unwrap();
                match style {
                    LimitHeaders::OpenAi => {
                        h.insert("x-ratelimit-limit-requests", v(limit.to_string()));
                        h.insert("x-ratelimit-remaining-requests", v(remaining.to_string()));
                        h.insert("x-ratelimit-reset-requests", v(format!("{:.3}s", reset.as_secs_f64())));
                    }
                    LimitHeaders::Anthropic => {
                        let at = std::time::SystemTime::now() + reset;
                        h.insert("anthropic-ratelimit-requests-limit", v(limit.to_string()));
                        h.insert("anthropic-ratelimit-requests-remaining", v(remaining.to_string()));
                        h.insert(
                            "anthropic-ratelimit-requests-reset",
                            v(humantime::format_rfc3339_millis(at).to_string()),
                        );
                    }
                }
                Some(h)
            }
            _ => None,
        };
        let (reply, own) = inner.script.pop_front().unwrap_or_else(|| (inner.default.clone(), Duration::ZERO));
        (reply, inner.latency + own, limit_headers)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let respond = |mut resp: Response<Body>| {
        if let Some(h) = &limit_headers {
            // Replaces the default headers' values of the same names.
            for (name, value) in h {
                resp.headers_mut().insert(name.clone(), value.clone());
            }
        }
        respond(resp)
    };
    let stream_kind = if kind == Kind::Completions { Kind::Completions } else { Kind::Chat };
    match reply {
        Reply::Ok if wants_stream && kind != Kind::Embeddings => respond(sse_response(
            stream_events(stream_kind, &model, DEFAULT_STREAM_CHUNKS, include_usage),
            Duration::ZERO,
            false,
        )),
        Reply::Ok => respond(json_response(StatusCode::OK, &ok_body(kind, &model))),
        Reply::Stream { chunks, chunk_delay } => {
            respond(sse_response(stream_events(stream_kind, &model, chunks, include_usage), chunk_delay, false))
        }
        Reply::Status { status, retry_after, body } => {
            let status = StatusCode::from_u16(status)?;
            let mut resp = match body {
                Some(body) => {
                    let mut resp = full(status, Bytes::from(body));
                    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    resp
                }
                None => {
                    let (kind, code) = match status.as_u16() {
                        429 => ("requests", Some("rate_limit_exceeded")),
                        401 => ("invalid_request_error", Some("invalid_api_key")),
                        400..=499 => ("invalid_request_error", None),
                        _ => ("server_error", None),
                    };
                    error_response(status, &format!("mock upstream scripted status {}", status.as_u16()), kind, code)
                }
            };
            if let Some(retry_after) = retry_after {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::try_from(retry_after)?);
            }
            respond(resp)
        }
        Reply::Hang => std::future::pending().await,
        Reply::Drop => Err("mock upstream: scripted connection drop".into()),
        Reply::DropMidStream { after_chunks } => {
            // One chunk more than sent, so none of the sent ones carries `finish_reason`.
            let mut events = stream_events(stream_kind, &model, after_chunks + 1, false);
            events.truncate(after_chunks);
            respond(sse_response(events, Duration::ZERO, true))
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn usage() -> Value {
    json!({
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
    })
}

fn ok_body(kind: Kind, model: &Value) -> Value {
    let created = now_secs();
    match kind {
        Kind::Chat => json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the mock upstream."},
                "finish_reason": "stop",
            }],
            "usage": usage(),
        }),
        Kind::Completions => json!({
            "id": "cmpl-mock",
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "text": "Hello from the mock upstream.",
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": usage(),
        }),
        Kind::Embeddings => json!({
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3, 0.4]}],
            "model": model,
            "usage": {"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS},
        }),
    }
}

/// SSE events (each a complete `data: …\n\n`): `chunks` content chunks, the usage chunk if
/// asked, then `[DONE]`.
fn stream_events(kind: Kind, model: &Value, chunks: usize, include_usage: bool) -> Vec<Bytes> {
    let created = now_secs();
    let (id, object) = match kind {
        Kind::Completions => ("cmpl-mock", "text_completion"),
        _ => ("chatcmpl-mock", "chat.completion.chunk"),
    };
    let event = |v: &Value| Bytes::from(format!("data: {v}\n\n"));
    let mut events = Vec::with_capacity(chunks + 2);
    for i in 0..chunks {
        let finish = if i + 1 == chunks { Value::from("stop") } else { Value::Null };
        let text = format!("tok{i} ");
        let choice = match kind {
            Kind::Completions => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
            }
            _ => {
                let delta =
                    if i == 0 { json!({"role": "assistant", "content": text}) } else { json!({"content": text}) };
                json!({"index": 0, "delta": delta, "finish_reason": finish})
            }
        };
        events.push(event(&json!({
            "id": id,
            "object": object,
            "created": created,
            "model": model,
            "choices": [choice],
        })));
    }
    if include_usage {
        events.push(event(&json!({
            "id": id,
            "object": object,
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage(),
        })));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

/// A `200` SSE response sending each event as its own frame. Between frames the body
/// returns `Pending` at least once (a sleep of `delay`, or a yield), so hyper flushes every
/// frame separately. With `fail_at_end`, the body ends with an error instead of cleanly.
fn sse_response(events: Vec<Bytes>, delay: Duration, fail_at_end: bool) -> Response<Body> {
    let mut items: VecDeque<Option<Bytes>> = events.into_iter().map(Some).collect();
    if fail_at_end {
        items.push_back(None);
    }
    let frames = futures::stream::unfold((items, true), move |(mut items, first)| async move {
        let item = items.pop_front()?;
        if !first {
            if delay.is_zero() {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(delay).await;
            }
        }
        let frame = match item {
            Some(data) => Ok(Frame::data(data)),
            None => Err(BoxError::from("mock upstream: scripted drop mid-stream")),
        };
        Some((frame, (items, false)))
    });
    let mut resp = Response::new(UnsyncBoxBody::new(StreamBody::new(frames)));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

fn full(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(body).map_err(|never: Infallible| match never {}).boxed_unsync());
    *resp.status_mut() = status;
    resp
}

/// Headers a real provider sends with every answer: who it is (which a gateway should not
/// pass on) and where the key stands against its limits (which it should).
fn provider_headers(mut resp: Response<Body>) -> Response<Body> {
    let h = resp.headers_mut();
    h.insert(header::SERVER, HeaderValue::from_static("BaseHTTP/0.6 Python/3.11.7"));
    h.insert("x-powered-by", HeaderValue::from_static("mock-provider"));
    // Unless the mock reports its real limit (MockUpstream::send_limit_headers), in
    // either family.
    if !h.contains_key("anthropic-ratelimit-requests-remaining") {
        // A limit above any test backend's, so that proxies learning limits from these
        // headers learn nothing from the defaults.
        h.entry("x-ratelimit-limit-requests").or_insert(HeaderValue::from_static("1000000"));
        h.entry("x-ratelimit-remaining-requests").or_insert(HeaderValue::from_static("999999"));
    }
    h.insert("x-request-id", HeaderValue::from_static("req_mock"));
    resp
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut resp = full(status, Bytes::from(value.to_string()));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error_response(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Response<Body> {
    json_response(status, &json!({"error": {"message": message, "type": kind, "param": null, "code": code}}))
}

fn unauthorized() -> Response<Body> {
    error_response(
        StatusCode::UNAUTHORIZED,
        "Incorrect API key provided",
        "invalid_request_error",
        Some("invalid_api_key"),
    )
}
