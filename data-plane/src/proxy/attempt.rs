//! One upstream attempt and its accounting. An attempt is accounted exactly once,
//! whoever finishes it: the request's own task, or — when the client goes away while the
//! upstream is still working on the request — a background task that waits for the
//! answer. The provider bills an abandoned request all the same, and a 429 it ends with
//! must still cool the backend down.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::body::{ApiResponse, ProxyBody};
use crate::{
    report::{BackendExhausted, BackendRecovered, LimitLearned, NodeEvent, Outcome, RateLimitEvent, UsageEvent},
    routing::{Grant, KeyPermit},
    snapshot::{Cost, Settings},
    state::{Counters, Shared},
    upstream::{self, AttemptError, Dialect, StatusClass, TappedBody, Usage},
};

use super::origins::Origin;

pub(crate) const X_SIDECAR_BACKEND: HeaderName = HeaderName::from_static("x-sidecar-backend");
const X_SIDECAR_POOL: HeaderName = HeaderName::from_static("x-sidecar-pool");
pub(super) const X_SIDECAR_ATTEMPTS: HeaderName = HeaderName::from_static("x-sidecar-attempts");
const X_SIDECAR_DEGRADED: HeaderName = HeaderName::from_static("x-sidecar-degraded");

type Upstream = http::Response<Incoming>;
type Pending = Pin<Box<dyn Future<Output = Result<Upstream, AttemptError>> + Send>>;

/// An attempt under way: what accounting it needs, whoever finishes it.
pub(super) struct Attempt {
    shared: Arc<Shared>,
    grant: Grant,
    model: Arc<str>,
    /// The client key's id, for accounting.
    key: Option<Arc<str>>,
    /// The client key's admission, held until the answer ends (settled with its tokens).
    permit: Option<Arc<KeyPermit>>,
    /// The client asked for a stream.
    stream: bool,
    /// The proxy asked for the stream's usage chunk on the client's behalf: it is read
    /// for accounting and not passed on.
    strip_usage: bool,
    /// Where the answer carries usage.
    dialect: Dialect,
    /// This attempt's number (1-based).
    attempts: u32,
    /// When the request went upstream.
    sent: Instant,
    /// The request's span and this attempt's, when traces are exported.
    trace: Option<(Arc<sidecar_otel::Span>, sidecar_otel::Span)>,
}

/// What an upstream answer means for the client request, once accounted.
pub(super) enum Answer {
    /// 2xx or a 4xx other than 429/401/403: goes to the client as it is.
    Pass(Upstream),
    /// Failed (and already accounted): try the next candidate. The upstream's error
    /// answer, if there was one.
    Failed { response: Option<Upstream>, rate_limited: bool },
    /// A 429 for a model with its own limits, accounted but not yet cooled: whether the
    /// model or the whole backend cools depends on the error body, which the caller reads
    /// and hands to [`Attempt::cool`]. Then as `Failed` with `rate_limited`.
    RateLimited { response: Upstream, retry_after: Option<std::time::Duration> },
}

impl Attempt {
    /// Counts the attempt in flight (for routing by load, and for shutdown) from now on.
    pub(super) fn start(
        shared: &Arc<Shared>,
        grant: Grant,
        (model, key, permit): (Arc<str>, Option<Arc<str>>, Option<Arc<KeyPermit>>),
        (stream, strip_usage, dialect): (bool, bool, Dialect),
        (attempts, trace): (u32, Option<(Arc<sidecar_otel::Span>, sidecar_otel::Span)>),
    ) -> Self {
        grant.backend.state.started();
        if let Some(bucket) = &grant.model.bucket {
            bucket.0.in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        shared.in_flight.start();
        let sent = Instant::now();
        Self { shared: shared.clone(), grant, model, key, permit, stream, strip_usage, dialect, attempts, sent, trace }
    }

    /// Accounts for how the upstream answered (or did not). A failure is recorded in full
    /// here — cooldown, health, usage event — before its error body is read.
    pub(super) fn settle(&self, settings: &Settings, outcome: Result<Upstream, AttemptError>) -> Answer {
        let grant = &self.grant;
        let backend = &grant.backend;
        let response = match outcome {
            Ok(response) => {
                learn_limits(&self.shared, grant, response.headers());
                response
            }
            Err(kind) => {
                self.traced(None, kind.as_str());
                grant_settle(grant, None);
                attempt_failed(
                    &self.shared,
                    settings,
                    grant,
                    (&self.model, &self.key),
                    kind_outcome(kind),
                    kind.as_str(),
                    self.sent,
                );
                release(&self.shared, grant);
                return Answer::Failed { response: None, rate_limited: false };
            }
        };
        let class = upstream::classify(response.status());
        let now = Instant::now();
        let (outcome, kind) = match class {
            StatusClass::Success | StatusClass::ClientError => return Answer::Pass(response),
            StatusClass::RateLimited => {
                // For a model with its own limits the error body decides what cools
                // (`Attempt::cool`, once the caller has read it).
                if grant.model.bucket.is_none() {
                    on_rate_limited(
                        &self.shared,
                        settings,
                        grant,
                        upstream::retry_after(response.headers()),
                        now,
                        None,
                    );
                }
                (Outcome::RateLimited, "429")
            }
            StatusClass::Auth => {
                let status = response.status().as_u16();
                warn!(backend = %backend.config.id, status, "upstream refused the key; backend marked error");
                backend.state.health.lock().expect("health lock").on_auth_error(now, settings);
                (Outcome::ClientError, "auth")
            }
            StatusClass::ServerError => {
                backend.state.health.lock().expect("health lock").on_failure(now, settings, "5xx");
                (Outcome::ServerError, "5xx")
            }
        };
        self.traced(Some(response.status()), kind);
        grant_settle(grant, None);
        attempt_failed(&self.shared, settings, grant, (&self.model, &self.key), outcome, kind, self.sent);
        release(&self.shared, grant);
        if class == StatusClass::RateLimited && grant.model.bucket.is_some() {
            return Answer::RateLimited { retry_after: upstream::retry_after(response.headers()), response };
        }
        Answer::Failed { response: Some(response), rate_limited: class == StatusClass::RateLimited }
    }

    /// Records a failed attempt on its span: the upstream's status if it answered, and why
    /// it failed.
    fn traced(&self, status: Option<StatusCode>, why: &'static str) {
        if let Some((_, span)) = &self.trace {
            if let Some(status) = status {
                span.set([sidecar_otel::KeyValue::new("http.response.status_code", i64::from(status.as_u16()))]);
            }
            span.set([sidecar_otel::KeyValue::new("error.type", why)]);
            span.fail(why);
        }
    }

    /// Cools what a 429 for a model with its own limits was about: the model alone when
    /// the provider's error names it (OpenAI: "Rate limit reached for gpt-4o in
    /// organization …"; others likewise), else the whole backend.
    pub(super) fn cool(&self, settings: &Settings, retry_after: Option<std::time::Duration>, body: &[u8]) {
        let grant = &self.grant;
        let native = grant.model.native_id.as_deref().unwrap_or(&self.model);
        let model = grant.model.bucket.as_ref().filter(|_| upstream::ratelimit::names_model(body, native));
        on_rate_limited(&self.shared, settings, grant, retry_after, Instant::now(), model.map(|m| &*m.0));
    }

    /// Passes an upstream response through: status, headers minus hop-by-hop ones, the
    /// `X-Sidecar-*` headers, and the body frame by frame with accounting on the side.
    pub(super) fn respond(self, response: Upstream) -> ApiResponse {
        let Attempt { shared, grant, model, key, permit, stream, strip_usage, dialect, attempts, sent, trace } = self;
        let backend = grant.backend.clone();
        let status = response.status();
        let success = status.is_success();
        if success {
            let (was_cooling, had_429s) = {
                let mut cooldown = backend.state.cooldown.lock().expect("cooldown lock");
                let was = (cooldown.until.is_some(), cooldown.consecutive > 0);
                cooldown.on_success();
                was
            };
            let model_had_429s = grant.model.bucket.as_ref().is_some_and(|m| {
                let mut cooldown = m.0.cooldown.lock().expect("model cooldown lock");
                let had = cooldown.consecutive > 0;
                cooldown.on_success();
                had
            });
            // The fleet-wide count starts over too.
            let recovered = |model: String| {
                let recovered =
                    BackendRecovered { backend_id: backend.config.id.clone(), at_ms: crate::now_ms(), model };
                let _ = shared.events.try_send(NodeEvent::Recovered(recovered));
            };
            if had_429s {
                recovered(String::new());
            }
            if model_had_429s && let Some(m) = &grant.model.bucket {
                recovered(m.0.name.clone());
            }
            backend.state.health.lock().expect("health lock").on_success();
            backend.state.retreat.lock().expect("retreat lock").record(Instant::now(), false);
            if was_cooling {
                // An emergency success ended a cooldown: waiters may use the backend again.
                shared.queue.wake();
            }
            Counters::bump(&shared.counters.succeeded);
            if backend.pool_rank > 0 && !grant.emergency {
                Counters::bump(&shared.counters.fallback);
            }
        } else {
            Counters::bump(&shared.counters.client_errors);
        }
        let metrics =
            backend.metrics.get_or_init(|| shared.metrics.backend(&backend.config.id, &backend.config.pool)).clone();
        metrics.request(status.as_u16());
        let (parts, body) = response.into_parts();
        let mut headers = upstream::response_headers(parts.headers);
        sidecar_headers(&mut headers, &grant, attempts);

        let finish_shared = shared.clone();
        let is_sse = stream && success;
        let strip_usage = is_sse && strip_usage;
        if strip_usage {
            // The body may come out shorter than the upstream said.
            headers.remove(http::header::CONTENT_LENGTH);
        }
        if let Some((_, span)) = &trace {
            span.set([sidecar_otel::KeyValue::new("http.response.status_code", i64::from(status.as_u16()))]);
        }
        let body = TappedBody::new(body, (is_sse, dialect), strip_usage, sent, backend.config.timeout, move |done| {
            // Both spans end with the answer: with its tokens, or how it broke off.
            if let Some((request, attempt)) = &trace {
                for span in [&**request, attempt] {
                    if let Some(u) = done.usage {
                        span.set([
                            sidecar_otel::KeyValue::new("gen_ai.usage.input_tokens", u.prompt as i64),
                            sidecar_otel::KeyValue::new("gen_ai.usage.output_tokens", u.completion as i64),
                        ]);
                    }
                    if let Some(error) = done.error {
                        span.fail(error);
                    }
                }
            }
            let backend = &grant.backend;
            if let Some(id) = &done.response_id
                && success
            {
                let origin = Origin { backend_id: backend.config.id.as_str().into(), key_id: key.clone() };
                finish_shared.origins.record(id, origin);
            }
            grant_settle(&grant, done.usage.map(|u| u.total));
            if let Some(permit) = &permit {
                permit.settle(done.usage.map_or(0, |u| u.total));
            }
            let outcome = match (success, done.error) {
                (true, None) => Outcome::Success,
                (true, Some("timeout")) => Outcome::Timeout,
                (true, Some(_)) => Outcome::Connect,
                (false, _) => Outcome::ClientError,
            };
            let cost_usd = done.usage.map_or(0.0, |u| cost(&u, &grant.model.cost));
            if cost_usd > 0.0
                && let Some(key) = &key
                && let Some(budget) = finish_shared.bundle.load().key_budget(key)
            {
                budget.spend(cost_usd);
            }
            metrics.upstream_latency(
                done.elapsed.as_secs_f64(),
                if is_sse { done.ttft.map(|t| t.as_secs_f64()) } else { None },
            );
            finish_shared.usage.record(UsageEvent {
                at_ms: crate::now_ms(),
                backend_id: backend.config.id.as_str().into(),
                pool: backend.config.pool.as_str().into(),
                model,
                attempt: Some(outcome),
                answered: Some(success),
                usage: done.usage,
                cost_usd,
                latency: done.elapsed,
                ttft: if is_sse { done.ttft } else { None },
                key_id: key,
            });
            release(&finish_shared, &grant);
        });
        let mut response = http::Response::new(ProxyBody::Tapped(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }
}

/// The upstream half of an attempt, polled by the request's task. If the request's task
/// drops it (the client went away) before the upstream answered, the wait moves to a
/// background task and the answer is accounted there: settled, and a body drained for
/// its usage (see [`TappedBody`]).
pub(super) struct Abandonable {
    pending: Option<(Pending, Attempt)>,
}

impl Abandonable {
    pub(super) fn new(
        send: impl Future<Output = Result<Upstream, AttemptError>> + Send + 'static,
        attempt: Attempt,
    ) -> Self {
        Self { pending: Some((Box::pin(send), attempt)) }
    }
}

impl Future for Abandonable {
    type Output = (Result<Upstream, AttemptError>, Attempt);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (send, _) = self.pending.as_mut().expect("Abandonable polled after completion");
        let outcome = std::task::ready!(send.as_mut().poll(cx));
        let (_, attempt) = self.pending.take().expect("pending");
        Poll::Ready((outcome, attempt))
    }
}

impl Drop for Abandonable {
    fn drop(&mut self) {
        let Some((send, attempt)) = self.pending.take() else { return };
        let mut orphan = Orphan(Some(attempt));
        // Without a runtime (the process is going down) the orphan settles as it drops.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            let outcome = send.await;
            let attempt = orphan.0.take().expect("an orphan is settled once");
            let settings = attempt.shared.bundle.load().settings.clone();
            match attempt.settle(&settings, outcome) {
                // Dropped at once: the body drains in the background and is accounted.
                Answer::Pass(response) => drop(attempt.respond(response)),
                Answer::RateLimited { response, retry_after } => {
                    let timeout = attempt.grant.backend.config.timeout;
                    let body =
                        upstream::read_small(response.into_body(), super::forward::ERROR_BODY_LIMIT, timeout).await;
                    attempt.cool(&settings, retry_after, &body);
                }
                Answer::Failed { .. } => {}
            }
        });
    }
}

/// An abandoned attempt waiting for its answer. If it is dropped first (its runtime shuts
/// down), it is settled as a broken connection, so it is still accounted and no longer
/// counted in flight.
struct Orphan(Option<Attempt>);

impl Drop for Orphan {
    fn drop(&mut self) {
        if let Some(attempt) = self.0.take() {
            let bundle = attempt.shared.bundle.load();
            attempt.settle(&bundle.settings, Err(AttemptError::Io));
        }
    }
}

/// What a response cost: prompt tokens at the input price, except those read from or
/// written to a cache, at the cache prices where the mapping has them.
fn cost(usage: &Usage, cost: &Cost) -> f64 {
    let read = if cost.cache_read > 0.0 { usage.cached.min(usage.prompt) } else { 0 };
    let written = if cost.cache_write > 0.0 { usage.cache_write.min(usage.prompt - read) } else { 0 };
    let plain = usage.prompt - read - written;
    plain as f64 * cost.input
        + read as f64 * cost.cache_read
        + written as f64 * cost.cache_write
        + usage.completion as f64 * cost.output
}

fn sidecar_headers(headers: &mut HeaderMap, grant: &Grant, attempts: u32) {
    let b = &grant.backend;
    if let Some(v) = &b.config.name_header {
        headers.insert(X_SIDECAR_BACKEND, v.clone());
    }
    if let Some(v) = &b.config.pool_header {
        headers.insert(X_SIDECAR_POOL, v.clone());
    }
    headers.insert(X_SIDECAR_ATTEMPTS, HeaderValue::from(attempts));
    if grant.emergency {
        headers.insert(X_SIDECAR_DEGRADED, HeaderValue::from_static("emergency"));
    } else if b.pool_rank > 0 {
        headers.insert(X_SIDECAR_DEGRADED, HeaderValue::from_static("fallback"));
    }
}

/// The attempt no longer holds its backend or shutdown. Call it last, after the usage
/// event: shutdown waits for in-flight attempts before it cuts the final usage batch.
fn release(shared: &Shared, grant: &Grant) {
    grant.backend.state.finished();
    if let Some(bucket) = &grant.model.bucket {
        bucket.0.in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
    shared.in_flight.finish();
}

fn kind_outcome(kind: AttemptError) -> Outcome {
    match kind {
        AttemptError::Timeout => Outcome::Timeout,
        AttemptError::Connect | AttemptError::Io => Outcome::Connect,
    }
}

fn grant_settle(grant: &Grant, tokens: Option<u64>) {
    grant.settle(tokens.unwrap_or(0));
}

/// Records a failed attempt: passive health (for timeouts and connect errors), the usage
/// event, metrics.
fn attempt_failed(
    shared: &Shared,
    settings: &Settings,
    grant: &Grant,
    (model, key): (&Arc<str>, &Option<Arc<str>>),
    outcome: Outcome,
    kind: &'static str,
    sent: Instant,
) {
    let backend = &grant.backend;
    if matches!(outcome, Outcome::Timeout | Outcome::Connect) {
        backend.state.health.lock().expect("health lock").on_failure(Instant::now(), settings, kind);
    }
    if outcome != Outcome::RateLimited {
        backend.state.retreat.lock().expect("retreat lock").record(Instant::now(), false);
    }
    shared.metrics.upstream_error(&backend.config.id, kind);
    Counters::bump(&shared.counters.upstream_errors);
    debug!(backend = %backend.config.id, kind, "attempt failed");
    shared.usage.record(UsageEvent {
        at_ms: crate::now_ms(),
        backend_id: backend.config.id.as_str().into(),
        pool: backend.config.pool.as_str().into(),
        model: model.clone(),
        attempt: Some(outcome),
        answered: None,
        usage: None,
        cost_usd: 0.0,
        latency: sent.elapsed(),
        ttft: None,
        key_id: key.clone(),
    });
}

/// The provider's own rate-limit headers, on every response: when they say the request
/// budget is spent (what is left is already claimed by this node's other requests in
/// flight), the backend pauses until the reported reset — here at once, and on every node
/// through the control plane — so the 429 never comes. For a model with its own limits the
/// headers are that model's budget (a provider that limits per model, as OpenAI does,
/// reports per model), so only the model pauses, and they say nothing about the key's
/// limit. A pause is not a 429: it does not escalate.
fn learn_limits(shared: &Shared, grant: &Grant, headers: &HeaderMap) {
    use std::sync::atomic::Ordering::Relaxed;
    if !grant.backend.config.learn_limits {
        return;
    }
    let limits = upstream::ratelimit::parse(headers, std::time::SystemTime::now());
    let backend = &grant.backend;
    let model = grant.model.bucket.as_ref().map(|b| &*b.0);
    // A lower limit than configured: the control plane holds the fleet to it (once per
    // config; never used to raise a limit).
    if model.is_none()
        && let Some(reported) = limits.requests.and_then(|b| b.limit).map(|l| u32::try_from(l).unwrap_or(u32::MAX))
        && reported < backend.config.rpm_limit
        && backend.state.learned_rpm.swap(reported, Relaxed) != reported
    {
        warn!(backend = %backend.config.id, configured = backend.config.rpm_limit, reported, "the provider reports a lower request limit than configured");
        let event = LimitLearned { backend_id: backend.config.id.clone(), rpm_limit: reported, at_ms: crate::now_ms() };
        let _ = shared.events.try_send(NodeEvent::LimitLearned(event));
    }
    let Some(upstream::ratelimit::Budget { remaining: Some(remaining), reset: Some(reset), .. }) = limits.requests
    else {
        return;
    };
    let in_flight = model.map_or(&backend.state.in_flight, |m| &m.in_flight);
    let others_in_flight = in_flight.load(Relaxed).saturating_sub(1);
    if remaining > others_in_flight || reset.is_zero() {
        return;
    }
    let now = Instant::now();
    {
        let mut cooldown = model.map_or(&backend.state.cooldown, |m| &m.cooldown).lock().expect("cooldown lock");
        if cooldown.exhausted_until.is_some_and(|u| u >= now + reset) {
            return;
        }
        cooldown.exhausted_for(now, reset);
    }
    let name = model.map(|m| m.name.clone()).unwrap_or_default();
    warn!(backend = %backend.config.id, model = %name, remaining, reset_ms = reset.as_millis() as u64, "the provider reports the request budget spent: pausing until its reset");
    let event = BackendExhausted { backend_id: backend.config.id.clone(), reset, at_ms: crate::now_ms(), model: name };
    let _ = shared.events.try_send(NodeEvent::Exhausted(event));
}

/// A 429: escalate the cooldown of the backend (or of `model` alone, when the provider
/// said the limit was the model's), floored by Retry-After, and tell the control plane
/// at once.
fn on_rate_limited(
    shared: &Shared,
    settings: &Settings,
    grant: &Grant,
    retry_after: Option<std::time::Duration>,
    now: Instant,
    model: Option<&crate::routing::ModelBucket>,
) {
    let backend = &grant.backend;
    let (applied, count) = {
        let mut cooldown = model.map_or(&backend.state.cooldown, |m| &m.cooldown).lock().expect("cooldown lock");
        let d = cooldown.on_429(now, settings, retry_after);
        (d, cooldown.consecutive)
    };
    if model.is_none() {
        // Adaptive retreat is about the key's limit, not one model's.
        backend.state.retreat.lock().expect("retreat lock").record(now, true);
    }
    let name = model.map(|m| m.name.clone()).unwrap_or_default();
    warn!(backend = %backend.config.id, model = %name, count, cooldown_ms = applied.as_millis() as u64, "upstream 429: cooling down");
    let event = RateLimitEvent {
        backend_id: backend.config.id.clone(),
        retry_after,
        cooldown: applied,
        consecutive_count: count,
        at_ms: crate::now_ms(),
        model: name,
    };
    let _ = shared.events.try_send(NodeEvent::RateLimited(event));
}
