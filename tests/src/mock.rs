//! A scriptable mock provider upstream (OpenAI-compatible, Anthropic Messages and OpenAI
//! Responses), on port 0.
//!
//! Serves over plain HTTP/1.1 and HTTP/2 (h2c, prior knowledge) on the same port:
//! - OpenAI: `POST /v1/chat/completions`, `POST /v1/completions`, `POST /v1/embeddings` and
//!   `GET /v1/models` (bearer key);
//! - Anthropic Messages: `POST /v1/messages` and `POST /v1/messages/count_tokens` (key in
//!   `x-api-key`, same valid-key rule as the bearer key; `anthropic-version` required;
//!   every error Anthropic-shaped: `{"type":"error","error":{"type","message"}}`);
//! - OpenAI Responses: `POST /v1/responses`, and `GET`/`DELETE /v1/responses/{id}` and
//!   `POST /v1/responses/{id}/cancel` (bearer key). Every response the mock produces gets
//!   the id `resp_<port>_<n>` and is stored (id → body) until deleted
//!   ([`MockUpstream::response_ids`]); a `previous_response_id` this mock does not hold is
//!   answered `400` `previous_response_not_found`, so a test can tell which backend a
//!   follow-up reached.
//!
//! The shapes, constants and event orders are those of `notes/wire.md`. Wrong methods on
//! known paths are answered `405`, unknown paths `404`.
//!
//! It is built on hyper directly (not axum) so that a scripted reply can cut the
//! connection before or in the middle of a response.
//!
//! Behaviour of a scripted call (every `POST` route above but `/v1/responses/{id}/cancel`),
//! in order:
//! 1. the call is recorded (with status `0` until the status is known);
//! 2. key check → `401` (bearer, OpenAI-shaped; `x-api-key` on `/v1/messages*`,
//!    `authentication_error`); then, on `/v1/messages*`, a missing `anthropic-version` →
//!    `400`; on `/v1/responses`, an unknown `previous_response_id` → `400`;
//! 3. the mock's own RPM limit ([`MockUpstream::set_rpm_limit`]) and per-model limits
//!    ([`MockUpstream::set_model_limit`]) → `429` with `Retry-After`, counted as a violation
//!    (`rate_limit_exceeded`, or Anthropic's `rate_limit_error` on `/v1/messages*`);
//! 4. the call is admitted: the next scripted [`Reply`] is taken from the FIFO queue
//!    ([`MockUpstream::push`]), or the default ([`MockUpstream::set_default`]) if the queue
//!    is empty;
//! 5. the mock waits the global latency ([`MockUpstream::set_latency`]) plus the reply's own
//!    latency ([`MockUpstream::push_with_latency`]);
//! 6. the reply is played, in the route's own format.
//!
//! `GET /v1/models` and the stored-response routes (`GET`/`DELETE /v1/responses/{id}`,
//! `POST /v1/responses/{id}/cancel`) are recorded and check the bearer key, but are never
//! scripted, delayed or rate-limited.

use std::{
    collections::{HashMap, VecDeque},
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

/// The fixed usage every chat/completions reply reports (also the input and output tokens
/// of Anthropic and Responses answers).
const PROMPT_TOKENS: u64 = 10;
const COMPLETION_TOKENS: u64 = 5;
/// Anthropic usage: `cache_creation_input_tokens` and `cache_read_input_tokens`.
const ANTHROPIC_CACHE_CREATION_TOKENS: u64 = 2;
const ANTHROPIC_CACHE_READ_TOKENS: u64 = 4;
/// The placeholder `output_tokens` of an Anthropic stream's `message_start`.
const ANTHROPIC_START_OUTPUT_TOKENS: u64 = 1;
/// Responses usage: `input_tokens_details.cached_tokens` and
/// `output_tokens_details.reasoning_tokens`.
const RESPONSES_CACHED_TOKENS: u64 = 4;
const RESPONSES_REASONING_TOKENS: u64 = 2;
/// The text of every non-streamed answer.
const MOCK_TEXT: &str = "Hello from the mock upstream.";
/// Content chunks of a stream answered by [`Reply::Ok`].
const DEFAULT_STREAM_CHUNKS: usize = 5;
/// Events of an Anthropic stream before its first text delta: `message_start`,
/// `content_block_start`, `ping`.
const ANTHROPIC_OPENING_EVENTS: usize = 3;
/// Events of a Responses stream before its first text delta: `response.created`,
/// `response.in_progress`, `response.output_item.added`, `response.content_part.added`.
const RESPONSES_OPENING_EVENTS: usize = 4;
const MODELS_PATH: &str = "/v1/models";
const CHAT_PATH: &str = "/v1/chat/completions";
const COMPLETIONS_PATH: &str = "/v1/completions";
const EMBEDDINGS_PATH: &str = "/v1/embeddings";
const MESSAGES_PATH: &str = "/v1/messages";
const COUNT_TOKENS_PATH: &str = "/v1/messages/count_tokens";
const RESPONSES_PATH: &str = "/v1/responses";
/// Prefix of the stored-response routes (`/v1/responses/{id}`, `…/{id}/cancel`).
const RESPONSE_ITEM_PREFIX: &str = "/v1/responses/";

/// A scripted way to answer one call. Each reply is played in the format of the route it
/// answers (see `notes/wire.md`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Reply {
    /// The normal answer: `200` with a JSON body echoing the request's `model` and
    /// reporting fixed usage:
    /// - chat/completions: OpenAI-shaped, usage `{prompt_tokens: 10, completion_tokens: 5,
    ///   total_tokens: 15}` (embeddings: `{prompt_tokens: 10, total_tokens: 10}`);
    /// - `/v1/messages`: an Anthropic message, usage `{input_tokens: 10, output_tokens: 5,
    ///   cache_creation_input_tokens: 2, cache_read_input_tokens: 4}`;
    /// - `/v1/messages/count_tokens`: `{"input_tokens": 10}`;
    /// - `/v1/responses`: a stored response `resp_<port>_<n>`, usage `{input_tokens: 10,
    ///   input_tokens_details: {cached_tokens: 4}, output_tokens: 5,
    ///   output_tokens_details: {reasoning_tokens: 2}, total_tokens: 15}`.
    ///
    /// If the request has `"stream": true` (all but embeddings and count_tokens), answers
    /// like [`Reply::Stream`] with 5 chunks and no delay.
    #[default]
    Ok,
    /// A `200` `text/event-stream` answer whatever the request asked for, one body frame per
    /// event (flushed individually, `chunk_delay` apart), with `chunks` text chunks
    /// (`"tok0 "`, `"tok1 "`, …):
    /// - chat/completions/embeddings: the content chunks, then — only if the request had
    ///   `"stream_options": {"include_usage": true}` — a usage chunk with `"choices": []`,
    ///   then `data: [DONE]`;
    /// - `/v1/messages*`: Anthropic named events (`message_start`, `content_block_start`,
    ///   `ping`, one `content_block_delta` per chunk, `content_block_stop`, `message_delta`,
    ///   `message_stop`);
    /// - `/v1/responses`: Responses events (`response.created`, `response.in_progress`,
    ///   `response.output_item.added`, `response.content_part.added`, one
    ///   `response.output_text.delta` per chunk, `response.output_text.done`,
    ///   `response.content_part.done`, `response.output_item.done`, `response.completed`
    ///   with the usage); the completed response is stored.
    Stream {
        /// Number of content chunks.
        chunks: usize,
        /// Delay before every event after the first (also before the closing events).
        chunk_delay: Duration,
    },
    /// Answers `status` with a JSON error body in the route's shape (Anthropic
    /// `{"type":"error","error":{"type","message"}}` on `/v1/messages*`, the type by status:
    /// `429` `rate_limit_error`, `529` `overloaded_error`, `5xx` `api_error`, …; OpenAI
    /// `{"error":{…}}` elsewhere), or `body` verbatim (served as `application/json`), and a
    /// `Retry-After: <retry_after>` header when given.
    Status {
        /// The HTTP status code.
        status: u16,
        /// The `Retry-After` header value, if any (e.g. `"2"`).
        retry_after: Option<String>,
        /// A body replacing the default error body.
        body: Option<String>,
    },
    /// Never answers: the request stays pending until the client goes away or the mock is
    /// stopped.
    Hang,
    /// Closes the connection without sending any response.
    Drop,
    /// Sends `200` headers, the route's opening stream events if it has any (Anthropic:
    /// `message_start`, `content_block_start`, `ping`; Responses: `response.created` to
    /// `response.content_part.added`) and `after_chunks` content chunks, then aborts the body
    /// with an error so the connection (HTTP/1) or stream (HTTP/2) is cut. No closing or
    /// usage event is sent, and no response is stored.
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
    model_limits: HashMap<String, (u32, Duration, VecDeque<Instant>, usize)>,
    /// Whether (and how) admitted calls report where the key stands against the limit.
    limit_headers: Option<LimitHeaders>,
    /// The `<n>` of the last Responses id handed out (`resp_<port>_<n>`).
    last_response: u64,
    /// Every response stored (produced and not deleted), by id.
    responses: HashMap<String, Value>,
    /// The ids of the responses stored, in order (deleted ones included).
    response_ids: Vec<String>,
}

/// The identity of a Responses API response being produced.
struct NewResponse {
    /// `resp_<port>_<n>`.
    id: String,
    /// The id of its output message, `msg_<port>_<n>`.
    item_id: String,
    created_at: u64,
    model: Value,
    /// The request's `previous_response_id`, or null.
    previous: Value,
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
    /// The port the mock listens on (part of the Responses ids).
    port: u16,
    inner: Mutex<Inner>,
    /// Admitted calls being answered now, and the most at once.
    in_flight: std::sync::atomic::AtomicUsize,
    max_in_flight: std::sync::atomic::AtomicUsize,
}

/// Counts an admitted call as being answered until it is dropped (when its answer is
/// produced).
struct Answering<'a>(&'a Shared);

impl<'a> Answering<'a> {
    fn new(shared: &'a Shared) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let now = shared.in_flight.fetch_add(1, SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, SeqCst);
        Self(shared)
    }
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
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
        authorization.and_then(|a| a.strip_prefix("Bearer ")).is_some_and(|key| self.key_valid(key))
    }

    /// Whether `key` (a bearer key, or an `x-api-key`) is accepted.
    fn key_valid(&self, key: &str) -> bool {
        let key = key.trim();
        if self.valid_keys.is_empty() { !key.is_empty() } else { self.valid_keys.iter().any(|v| v == key) }
    }

    /// Hands out the next Responses id (`resp_<port>_<n>`, `n` from 1).
    fn new_response(&self, model: &Value, previous: &Value) -> NewResponse {
        let n = {
            let mut inner = self.lock();
            inner.last_response += 1;
            inner.last_response
        };
        NewResponse {
            id: format!("resp_{}_{n}", self.port),
            item_id: format!("msg_{}_{n}", self.port),
            created_at: now_secs(),
            model: model.clone(),
            previous: previous.clone(),
        }
    }

    fn store_response(&self, id: &str, body: &Value) {
        let mut inner = self.lock();
        inner.responses.insert(id.to_owned(), body.clone());
        inner.response_ids.push(id.to_owned());
    }

    fn knows_response(&self, id: &str) -> bool {
        self.lock().responses.contains_key(id)
    }

    /// `GET`/`DELETE /v1/responses/{id}`, or (`cancel`) `POST /v1/responses/{id}/cancel`.
    fn manage_response(&self, method: &Method, id: &str, cancel: bool) -> Response<Body> {
        let found = {
            let mut inner = self.lock();
            if cancel {
                inner.responses.get_mut(id).map(|stored| {
                    stored["status"] = Value::from("cancelled");
                    stored.clone()
                })
            } else if *method == Method::DELETE {
                inner.responses.remove(id).map(|_| json!({"id": id, "object": "response.deleted", "deleted": true}))
            } else {
                inner.responses.get(id).cloned()
            }
        };
        match found {
            Some(body) => json_response(StatusCode::OK, &body),
            None => error_response(
                StatusCode::NOT_FOUND,
                &format!("Response with id '{id}' not found."),
                "invalid_request_error",
                None,
            ),
        }
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
    /// Starts a mock on `127.0.0.1:0` that accepts the keys `valid_keys` (as bearer keys,
    /// and as `x-api-key` on the Anthropic routes); an empty slice accepts any non-empty key
    /// (a request without `Authorization: Bearer …`, or without `x-api-key` on the Anthropic
    /// routes, is still answered `401`).
    pub async fn start(valid_keys: &[&str]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            valid_keys: valid_keys.iter().map(|k| k.to_string()).collect(),
            port: addr.port(),
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
                last_response: 0,
                responses: HashMap::new(),
                response_ids: Vec::new(),
            }),
            in_flight: Default::default(),
            max_in_flight: Default::default(),
        });
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

    /// How many admitted calls were being answered at once, at most, since the start
    /// (a call counts from its admission until its answer, or its stream's head, is
    /// produced: a non-streamed answer after its latency).
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Number of calls answered with a 2xx status on paths other than `/v1/models` and the
    /// stored-response routes (`/v1/responses/{id}…`): the scripted calls served.
    pub fn served(&self) -> usize {
        self.shared
            .lock()
            .calls
            .iter()
            .filter(|(_, c)| {
                c.path != MODELS_PATH && !c.path.starts_with(RESPONSE_ITEM_PREFIX) && (200..300).contains(&c.status)
            })
            .count()
    }

    /// The ids (`resp_<port>_<n>`) of the Responses API responses this mock produced and
    /// stored, in order, including those deleted since (not those of streams cut by
    /// [`Reply::DropMidStream`]). Not cleared by [`MockUpstream::reset`].
    pub fn response_ids(&self) -> Vec<String> {
        self.shared.lock().response_ids.clone()
    }

    /// Clears the recorded calls and the violation count. The script, default reply,
    /// latency, RPM limit, the RPM window's admissions and the stored responses are kept.
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
    /// Anthropic `POST /v1/messages`.
    Messages,
    /// Anthropic `POST /v1/messages/count_tokens`.
    CountTokens,
    /// OpenAI `POST /v1/responses`.
    Responses,
}

impl Kind {
    /// Whether errors on this route are Anthropic-shaped.
    fn is_anthropic(self) -> bool {
        matches!(self, Kind::Messages | Kind::CountTokens)
    }
}

/// Whether `path` is one of the Anthropic routes (or under them), whose errors are
/// Anthropic-shaped.
fn is_anthropic_path(path: &str) -> bool {
    path == MESSAGES_PATH || path.starts_with("/v1/messages/")
}

/// `/v1/responses/{id}` → `(id, false)`, `/v1/responses/{id}/cancel` → `(id, true)`.
fn response_item_path(path: &str) -> Option<(&str, bool)> {
    let rest = path.strip_prefix(RESPONSE_ITEM_PREFIX)?;
    let (id, cancel) = match rest.strip_suffix("/cancel") {
        Some(id) => (id, true),
        None => (rest, false),
    };
    (!id.is_empty() && !id.contains('/')).then_some((id, cancel))
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
    let anthropic_path = is_anthropic_path(&path);

    // The stored-response routes: never scripted, delayed or rate-limited.
    if let Some((response_id, cancel)) = response_item_path(&path) {
        let allowed = if cancel {
            parts.method == Method::POST
        } else {
            parts.method == Method::GET || parts.method == Method::DELETE
        };
        if !allowed {
            return respond(error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("method {} not allowed on {path}", parts.method),
                "invalid_request_error",
                None,
            ));
        }
        if !shared.key_ok(authorization.as_deref()) {
            return respond(unauthorized());
        }
        return respond(shared.manage_response(&parts.method, response_id, cancel));
    }

    let kind = match (&parts.method, path.as_str()) {
        (&Method::GET, MODELS_PATH) => {
            // As OpenAI (a bearer key) or as Anthropic (`x-api-key` with a version).
            let anthropic_key = parts
                .headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .filter(|_| parts.headers.contains_key("anthropic-version"));
            let accepted =
                shared.key_ok(authorization.as_deref()) || anthropic_key.is_some_and(|k| shared.key_valid(k));
            return respond(if accepted {
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
        (&Method::POST, CHAT_PATH) => Kind::Chat,
        (&Method::POST, COMPLETIONS_PATH) => Kind::Completions,
        (&Method::POST, EMBEDDINGS_PATH) => Kind::Embeddings,
        (&Method::POST, MESSAGES_PATH) => Kind::Messages,
        (&Method::POST, COUNT_TOKENS_PATH) => Kind::CountTokens,
        (&Method::POST, RESPONSES_PATH) => Kind::Responses,
        (
            _,
            MODELS_PATH | CHAT_PATH | COMPLETIONS_PATH | EMBEDDINGS_PATH | MESSAGES_PATH | COUNT_TOKENS_PATH
            | RESPONSES_PATH,
        ) => {
            let message = format!("method {} not allowed on {path}", parts.method);
            return respond(if anthropic_path {
                anthropic_error(StatusCode::METHOD_NOT_ALLOWED, &message)
            } else {
                error_response(StatusCode::METHOD_NOT_ALLOWED, &message, "invalid_request_error", None)
            });
        }
        _ => {
            let message = format!("unknown path {path}");
            return respond(if anthropic_path {
                anthropic_error(StatusCode::NOT_FOUND, &message)
            } else {
                error_response(StatusCode::NOT_FOUND, &message, "invalid_request_error", Some("not_found"))
            });
        }
    };
    let anthropic = kind.is_anthropic();
    if anthropic {
        let api_key = parts.headers.get("x-api-key").and_then(|v| v.to_str().ok());
        if !api_key.is_some_and(|key| shared.key_valid(key)) {
            return respond(anthropic_error(StatusCode::UNAUTHORIZED, "invalid x-api-key"));
        }
        if !parts.headers.contains_key("anthropic-version") {
            return respond(anthropic_error(StatusCode::BAD_REQUEST, "anthropic-version header is required"));
        }
    } else if !shared.key_ok(authorization.as_deref()) {
        return respond(unauthorized());
    }

    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = request.get("model").cloned().unwrap_or_else(|| Value::from("mock-model"));
    let wants_stream = request.get("stream").and_then(Value::as_bool) == Some(true);
    let include_usage = request.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true);
    let previous = request.get("previous_response_id").cloned().unwrap_or(Value::Null);

    // A follow-up of a response this mock does not hold (not admitted).
    let unknown_previous =
        previous.as_str().filter(|_| kind == Kind::Responses).filter(|prev| !shared.knows_response(prev));
    if let Some(prev) = unknown_previous {
        return respond(json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": {
                "message": format!("Previous response with id '{prev}' not found."),
                "type": "invalid_request_error",
                "param": "previous_response_id",
                "code": "previous_response_not_found",
            }}),
        ));
    }

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
                return respond(rate_limited(
                    anthropic,
                    &format!(
                        "Rate limit reached on requests per min (RPM): Limit {limit}, Used {limit}, \
                         Requested 1. Please try again in {secs}s."
                    ),
                    secs,
                ));
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
                return respond(rate_limited(
                    anthropic,
                    &format!(
                        "Rate limit reached for {model_name} on requests per min (RPM): Limit {limit}, Used {limit}, \
                         Requested 1. Please try again in {secs}s."
                    ),
                    secs,
                ));
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
    let _answering = Answering::new(&shared);
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
    // The SSE events of a stream of `chunks` text chunks in the route's format, and how many
    // of them come before the first chunk. A Responses stream gets a new id, and its
    // completed response is stored if `store`.
    let events_of = |chunks: usize, store: bool| -> (Vec<Bytes>, usize) {
        match kind {
            Kind::Messages | Kind::CountTokens => (anthropic_stream_events(&model, chunks), ANTHROPIC_OPENING_EVENTS),
            Kind::Responses => {
                let new = shared.new_response(&model, &previous);
                let (events, completed) = responses_stream_events(&new, chunks);
                if store {
                    shared.store_response(&new.id, &completed);
                }
                (events, RESPONSES_OPENING_EVENTS)
            }
            Kind::Chat | Kind::Completions | Kind::Embeddings => {
                (stream_events(stream_kind, &model, chunks, include_usage), 0)
            }
        }
    };
    match reply {
        Reply::Ok if wants_stream && !matches!(kind, Kind::Embeddings | Kind::CountTokens) => {
            let (events, _) = events_of(DEFAULT_STREAM_CHUNKS, true);
            respond(sse_response(events, Duration::ZERO, false))
        }
        Reply::Ok => {
            let body = match kind {
                Kind::Messages => anthropic_message(&model),
                Kind::CountTokens => json!({"input_tokens": PROMPT_TOKENS}),
                Kind::Responses => {
                    let new = shared.new_response(&model, &previous);
                    let body = completed_response(&new, MOCK_TEXT);
                    shared.store_response(&new.id, &body);
                    body
                }
                Kind::Chat | Kind::Completions | Kind::Embeddings => ok_body(kind, &model),
            };
            respond(json_response(StatusCode::OK, &body))
        }
        Reply::Stream { chunks, chunk_delay } => {
            let (events, _) = events_of(chunks, true);
            respond(sse_response(events, chunk_delay, false))
        }
        Reply::Status { status, retry_after, body } => {
            let status = StatusCode::from_u16(status)?;
            let mut resp = match body {
                Some(body) => {
                    let mut resp = full(status, Bytes::from(body));
                    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    resp
                }
                None if anthropic => {
                    anthropic_error(status, &format!("mock upstream scripted status {}", status.as_u16()))
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
            // One chunk more than sent, so none of the sent ones carries `finish_reason`
            // (and the cut comes before any closing event).
            let (mut events, opening) = events_of(after_chunks + 1, false);
            events.truncate(opening + after_chunks);
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

/// The normal OpenAI chat, completions or embeddings answer. The other kinds never get here
/// (they have their own answers); they share the chat arm only to keep the match exhaustive.
fn ok_body(kind: Kind, model: &Value) -> Value {
    let created = now_secs();
    match kind {
        Kind::Chat | Kind::Messages | Kind::CountTokens | Kind::Responses => json!({
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

/// One text chunk of a stream: `"tok<i> "`.
fn chunk_text(i: usize) -> String {
    format!("tok{i} ")
}

/// A named SSE event: `event: <name>\ndata: <json>\n\n`.
fn named_event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

fn anthropic_usage(output_tokens: u64) -> Value {
    json!({
        "input_tokens": PROMPT_TOKENS,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": ANTHROPIC_CACHE_CREATION_TOKENS,
        "cache_read_input_tokens": ANTHROPIC_CACHE_READ_TOKENS,
    })
}

/// The normal `/v1/messages` answer.
fn anthropic_message(model: &Value) -> Value {
    json!({
        "id": "msg_mock",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": MOCK_TEXT}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": anthropic_usage(COMPLETION_TOKENS),
    })
}

/// An Anthropic Messages stream with `chunks` text deltas: the [`ANTHROPIC_OPENING_EVENTS`]
/// opening events, the deltas, then `content_block_stop`, `message_delta` (with the
/// output tokens) and `message_stop`.
fn anthropic_stream_events(model: &Value, chunks: usize) -> Vec<Bytes> {
    let mut events = Vec::with_capacity(chunks + 6);
    events.push(named_event(
        "message_start",
        &json!({"type": "message_start", "message": {
            "id": "msg_mock",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": anthropic_usage(ANTHROPIC_START_OUTPUT_TOKENS),
        }}),
    ));
    events.push(named_event(
        "content_block_start",
        &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ));
    events.push(named_event("ping", &json!({"type": "ping"})));
    for i in 0..chunks {
        events.push(named_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": chunk_text(i)}}),
        ));
    }
    events.push(named_event("content_block_stop", &json!({"type": "content_block_stop", "index": 0})));
    events.push(named_event(
        "message_delta",
        &json!({
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": COMPLETION_TOKENS},
        }),
    ));
    events.push(named_event("message_stop", &json!({"type": "message_stop"})));
    events
}

fn responses_usage() -> Value {
    json!({
        "input_tokens": PROMPT_TOKENS,
        "input_tokens_details": {"cached_tokens": RESPONSES_CACHED_TOKENS},
        "output_tokens": COMPLETION_TOKENS,
        "output_tokens_details": {"reasoning_tokens": RESPONSES_REASONING_TOKENS},
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
    })
}

/// A Responses API response object.
fn response_object(new: &NewResponse, status: &str, output: Value, usage: Value) -> Value {
    json!({
        "id": new.id,
        "object": "response",
        "created_at": new.created_at,
        "status": status,
        "model": new.model,
        "output": output,
        "previous_response_id": new.previous,
        "parallel_tool_calls": true,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage,
    })
}

/// The response's output message: with `text` as its one `output_text` part, or (`None`)
/// no content yet.
fn output_message(item_id: &str, status: &str, text: Option<&str>) -> Value {
    let content = match text {
        Some(text) => json!([{"type": "output_text", "text": text, "annotations": []}]),
        None => json!([]),
    };
    json!({"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content})
}

/// The completed response answering `text`, with the usage.
fn completed_response(new: &NewResponse, text: &str) -> Value {
    response_object(new, "completed", json!([output_message(&new.item_id, "completed", Some(text))]), responses_usage())
}

/// A Responses stream with `chunks` text deltas (the first [`RESPONSES_OPENING_EVENTS`]
/// events come before them), every event carrying its `type` and `sequence_number`; and
/// the completed response it ends with.
fn responses_stream_events(new: &NewResponse, chunks: usize) -> (Vec<Bytes>, Value) {
    let text: String = (0..chunks).map(chunk_text).collect();
    let completed = completed_response(new, &text);
    let in_progress = response_object(new, "in_progress", json!([]), Value::Null);
    let item_id = new.item_id.as_str();
    let mut events = Vec::with_capacity(chunks + 8);
    let mut sequence_number: u64 = 0;
    let mut push = |kind: &str, mut data: Value| {
        if let Value::Object(map) = &mut data {
            map.insert("type".to_owned(), Value::from(kind));
            map.insert("sequence_number".to_owned(), Value::from(sequence_number));
        }
        sequence_number += 1;
        events.push(named_event(kind, &data));
    };
    push("response.created", json!({"response": in_progress}));
    push("response.in_progress", json!({"response": in_progress}));
    push(
        "response.output_item.added",
        json!({"output_index": 0, "item": output_message(item_id, "in_progress", None)}),
    );
    push(
        "response.content_part.added",
        json!({
            "item_id": item_id,
            "output_index": 0,
            "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": []},
        }),
    );
    for i in 0..chunks {
        push(
            "response.output_text.delta",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "delta": chunk_text(i)}),
        );
    }
    push("response.output_text.done", json!({"item_id": item_id, "output_index": 0, "content_index": 0, "text": text}));
    push(
        "response.content_part.done",
        json!({
            "item_id": item_id,
            "output_index": 0,
            "content_index": 0,
            "part": {"type": "output_text", "text": text, "annotations": []},
        }),
    );
    push(
        "response.output_item.done",
        json!({"output_index": 0, "item": output_message(item_id, "completed", Some(&text))}),
    );
    push("response.completed", json!({"response": completed}));
    (events, completed)
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

/// An Anthropic-shaped error: `{"type":"error","error":{"type":T,"message":M}}`, `T` by
/// status.
fn anthropic_error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(
        status,
        &json!({"type": "error", "error": {"type": anthropic_error_type(status.as_u16()), "message": message}}),
    )
}

/// Anthropic's error type for `status`.
fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// The mock's own `429` (Anthropic-shaped if `anthropic`), with `Retry-After`.
fn rate_limited(anthropic: bool, message: &str, retry_after_secs: u64) -> Response<Body> {
    let mut resp = if anthropic {
        anthropic_error(StatusCode::TOO_MANY_REQUESTS, message)
    } else {
        error_response(StatusCode::TOO_MANY_REQUESTS, message, "requests", Some("rate_limit_exceeded"))
    };
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    resp
}

fn unauthorized() -> Response<Body> {
    error_response(
        StatusCode::UNAUTHORIZED,
        "Incorrect API key provided",
        "invalid_request_error",
        Some("invalid_api_key"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits named SSE events into `(event name, data)`.
    fn parse(events: &[Bytes]) -> Vec<(String, Value)> {
        events
            .iter()
            .map(|e| {
                let text = std::str::from_utf8(e).unwrap().strip_suffix("\n\n").unwrap();
                let (name, data) = text.split_once('\n').unwrap();
                let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                (name.strip_prefix("event: ").unwrap().to_owned(), data)
            })
            .collect()
    }

    #[test]
    fn responses_stream_numbers_every_event_and_ends_with_the_usage() {
        let new = NewResponse {
            id: "resp_1_1".to_owned(),
            item_id: "msg_1_1".to_owned(),
            created_at: 0,
            model: json!("m"),
            previous: Value::Null,
        };
        let (events, completed) = responses_stream_events(&new, 2);
        let events = parse(&events);
        let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (k, (name, data)) in events.iter().enumerate() {
            assert_eq!(data["type"], name.as_str());
            assert_eq!(data["sequence_number"], k as u64);
        }
        assert_eq!(events[0].1["response"]["status"], "in_progress");
        assert_eq!(events[0].1["response"]["usage"], Value::Null);
        assert_eq!(events[0].1["response"]["output"], json!([]));
        assert_eq!(events[4].1["delta"], "tok0 ");
        assert_eq!(events[6].1["text"], "tok0 tok1 ");
        assert_eq!(events[9].1["response"], completed);
        assert_eq!(completed["id"], "resp_1_1");
        assert_eq!(completed["status"], "completed");
        assert_eq!(completed["output"][0]["id"], "msg_1_1");
        assert_eq!(completed["output"][0]["content"][0]["text"], "tok0 tok1 ");
        assert_eq!(completed["usage"], responses_usage());
        assert_eq!(completed["usage"]["total_tokens"], 15);
    }

    #[test]
    fn anthropic_stream_frames_and_error_types() {
        let events = parse(&anthropic_stream_events(&json!("claude-x"), 1));
        let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        for (name, data) in &events {
            assert_eq!(data["type"], name.as_str());
        }
        assert_eq!(events[0].1["message"]["usage"]["output_tokens"], 1);
        assert_eq!(events[0].1["message"]["model"], "claude-x");
        assert_eq!(events[5].1["usage"]["output_tokens"], 5);

        assert_eq!(anthropic_error_type(429), "rate_limit_error");
        assert_eq!(anthropic_error_type(529), "overloaded_error");
        assert_eq!(anthropic_error_type(503), "api_error");
        assert_eq!(anthropic_error_type(401), "authentication_error");
        assert_eq!(anthropic_error_type(404), "not_found_error");
        assert_eq!(anthropic_error_type(400), "invalid_request_error");
    }

    #[test]
    fn response_item_paths() {
        assert_eq!(response_item_path("/v1/responses/resp_1_2"), Some(("resp_1_2", false)));
        assert_eq!(response_item_path("/v1/responses/resp_1_2/cancel"), Some(("resp_1_2", true)));
        assert_eq!(response_item_path("/v1/responses"), None);
        assert_eq!(response_item_path("/v1/responses/"), None);
        assert_eq!(response_item_path("/v1/responses/a/b"), None);
    }
}
