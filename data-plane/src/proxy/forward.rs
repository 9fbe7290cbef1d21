//! One client request through to a response: admission, the upstream attempt, and what
//! each upstream answer means — pass it through (2xx, other 4xx), or cool down / count a
//! failure and try the next candidate (429, 5xx, 401/403, timeout, connect error). Retries
//! happen only before any response byte has gone to the client.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{
    ParsedRequest,
    admit::admit,
    body::{ApiResponse, ProxyBody},
    error::ProxyError,
};
use crate::{
    report::{Outcome, UsageEvent},
    routing::{Backend, Grant, Priority},
    snapshot::{Cost, Settings},
    state::{Counters, Shared},
    upstream::{self, AttemptError, HttpClient, StatusClass, TappedBody, Usage},
};

/// At most this many upstream attempts per client request.
const MAX_ATTEMPTS: u32 = 5;
/// Error bodies are read up to this size (to pass on the last one).
const ERROR_BODY_LIMIT: usize = 64 * 1024;

const X_SIDECAR_BACKEND: HeaderName = HeaderName::from_static("x-sidecar-backend");
const X_SIDECAR_POOL: HeaderName = HeaderName::from_static("x-sidecar-pool");
const X_SIDECAR_ATTEMPTS: HeaderName = HeaderName::from_static("x-sidecar-attempts");
const X_SIDECAR_DEGRADED: HeaderName = HeaderName::from_static("x-sidecar-degraded");

/// An attempt that failed, kept in case it is the last.
struct Failure {
    backend: Arc<Backend>,
    response: Option<(StatusCode, HeaderMap, Bytes)>,
    rate_limited: bool,
}

/// Counts a request the proxy answered itself.
pub(crate) fn count_error(shared: &Shared, e: &ProxyError) {
    let c = &shared.counters;
    match e {
        ProxyError::QueueFull => Counters::bump(&c.queue_full_rejects),
        ProxyError::QueueTimeout(_) => Counters::bump(&c.ratelimited),
        ProxyError::Exhausted(_) => Counters::bump(&c.exhausted),
        ProxyError::Upstream(_) => Counters::bump(&c.upstream_errors),
        _ => Counters::bump(&c.client_errors),
    }
}

fn cost(usage: &Usage, cost: &Cost) -> f64 {
    let cached = usage.cached.min(usage.prompt);
    let prompt = if cost.cache_read > 0.0 {
        (usage.prompt - cached) as f64 * cost.input + cached as f64 * cost.cache_read
    } else {
        usage.prompt as f64 * cost.input
    };
    prompt + usage.completion as f64 * cost.output
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

/// Serves one parsed request.
pub(crate) async fn serve(
    shared: &Arc<Shared>,
    client: &HttpClient,
    path: &'static str,
    headers: &HeaderMap,
    request: ParsedRequest,
    priority: Priority,
) -> Result<ApiResponse, ProxyError> {
    let settings = shared.bundle.load().settings.clone();
    let wait = if priority == Priority::Low { settings.low_priority_timeout } else { settings.queue_timeout };
    let deadline = Instant::now() + wait;
    let estimate = (request.size / 4) as u64;
    // Ask for the usage chunk so streamed requests are accounted too.
    let want_usage = request.stream && path != "/v1/embeddings";
    let model: Arc<str> = request.model.as_str().into();
    let mut exclude: Vec<String> = Vec::new();
    let mut last: Option<Failure> = None;
    let mut attempts = 0;
    loop {
        let grant = match admit(shared, &request.model, priority, &exclude, estimate, deadline).await {
            Ok(grant) => grant,
            Err(e) => return give_up(shared, &model, e, last, attempts),
        };
        attempts += 1;
        let backend = grant.backend.clone();
        let config = &backend.config;
        let native = grant.model.native_id.clone().unwrap_or_else(|| request.model.clone());
        let body = request.upstream_body(&native, want_usage)?;
        let uri = config.target(path).cloned().ok_or_else(|| ProxyError::NotFound(path.to_owned()))?;
        let upstream_request = upstream::build_request(uri, headers, &config.authorization, body)
            .map_err(|e| ProxyError::Upstream(format!("could not build the upstream request: {e}")))?;

        backend.state.started();
        shared.in_flight.start();
        let sent = Instant::now();
        let outcome = upstream::send(client, upstream_request, config.timeout).await;
        let failure = match outcome {
            Err(kind) => {
                backend.state.finished();
                shared.in_flight.finish();
                grant_settle(&grant, None);
                attempt_failed(shared, &settings, &grant, &model, kind_outcome(kind), kind.as_str(), sent);
                Failure { backend: backend.clone(), response: None, rate_limited: false }
            }
            Ok(response) => match upstream::classify(response.status()) {
                StatusClass::Success | StatusClass::ClientError => {
                    return Ok(respond(shared, grant, response, request.stream, model, attempts, sent));
                }
                class => {
                    backend.state.finished();
                    shared.in_flight.finish();
                    grant_settle(&grant, None);
                    let (parts, body) = response.into_parts();
                    let retry_after = upstream::retry_after(&parts.headers);
                    // Boxed: a failure path, kept out of the hot future's size.
                    let bytes = Box::pin(upstream::read_small(body, ERROR_BODY_LIMIT, config.timeout)).await;
                    let rate_limited = class == StatusClass::RateLimited;
                    let now = Instant::now();
                    match class {
                        StatusClass::RateLimited => {
                            on_rate_limited(shared, &settings, &grant, retry_after, now);
                            attempt_failed(shared, &settings, &grant, &model, Outcome::RateLimited, "429", sent);
                        }
                        StatusClass::Auth => {
                            warn!(backend = %config.id, status = parts.status.as_u16(), "upstream refused the key; backend marked error");
                            backend.state.health.lock().expect("health lock").on_auth_error(now, &settings);
                            attempt_failed(shared, &settings, &grant, &model, Outcome::ClientError, "auth", sent);
                        }
                        _ => {
                            backend.state.health.lock().expect("health lock").on_failure(now, &settings, "5xx");
                            attempt_failed(shared, &settings, &grant, &model, Outcome::ServerError, "5xx", sent);
                        }
                    }
                    Failure {
                        backend: backend.clone(),
                        response: Some((parts.status, upstream::response_headers(parts.headers), bytes)),
                        rate_limited,
                    }
                }
            },
        };
        // A backend that answered 429 is cooling now, so routing skips it by itself; it
        // stays eligible for the near-recovery wait and the emergency channel. Other
        // failures are excluded for the rest of this request.
        if !failure.rate_limited {
            exclude.push(backend.config.id.clone());
        }
        last = Some(failure);
        if attempts >= MAX_ATTEMPTS {
            return give_up(shared, &model, ProxyError::Upstream("every attempt failed".into()), last, attempts);
        }
        shared.metrics.retry(if last.as_ref().is_some_and(|f| f.rate_limited) { "429" } else { "failure" });
        Counters::bump(&shared.counters.retries);
    }
}

fn kind_outcome(kind: AttemptError) -> Outcome {
    match kind {
        AttemptError::Timeout => Outcome::Timeout,
        AttemptError::Connect | AttemptError::Io => Outcome::Connect,
    }
}

fn grant_settle(grant: &Grant, tokens: Option<u64>) {
    if let (Some(id), Some(w)) = (grant.tpm_reservation, grant.backend.state.tpm.lock().expect("tpm lock").as_mut()) {
        w.settle(id, tokens.unwrap_or(0));
    }
}

/// Records a failed attempt: passive health (for timeouts and connect errors), the usage
/// event, metrics.
fn attempt_failed(
    shared: &Shared,
    settings: &Settings,
    grant: &Grant,
    model: &Arc<str>,
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
    });
}

/// A 429: escalate the backend's cooldown (floored by Retry-After) and tell the control
/// plane at once.
fn on_rate_limited(
    shared: &Shared,
    settings: &Settings,
    grant: &Grant,
    retry_after: Option<std::time::Duration>,
    now: Instant,
) {
    let backend = &grant.backend;
    let (applied, count) = {
        let mut cooldown = backend.state.cooldown.lock().expect("cooldown lock");
        let d = cooldown.on_429(now, settings, retry_after);
        (d, cooldown.consecutive)
    };
    backend.state.retreat.lock().expect("retreat lock").record(now, true);
    warn!(backend = %backend.config.id, count, cooldown_ms = applied.as_millis() as u64, "upstream 429: cooling down");
    let event = sidecar_proto::v1::RateLimitEvent {
        backend_id: backend.config.id.clone(),
        retry_after_ms: retry_after.map_or(0, |d| d.as_millis() as u64),
        cooldown_ms: applied.as_millis() as u64,
        consecutive_count: count,
        at_ms: crate::now_ms(),
    };
    let _ = shared.events.try_send(sidecar_proto::v1::node_message::Kind::RateLimited(event));
}

/// Passes an upstream response through: status, headers minus hop-by-hop ones, the
/// `X-Sidecar-*` headers, and the body frame by frame with accounting on the side.
fn respond(
    shared: &Arc<Shared>,
    grant: Grant,
    response: http::Response<hyper::body::Incoming>,
    stream: bool,
    model: Arc<str>,
    attempts: u32,
    sent: Instant,
) -> ApiResponse {
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
        if had_429s {
            // The fleet-wide count starts over too.
            let recovered =
                sidecar_proto::v1::BackendRecovered { backend_id: backend.config.id.clone(), at_ms: crate::now_ms() };
            let _ = shared.events.try_send(sidecar_proto::v1::node_message::Kind::Recovered(recovered));
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
    let body = TappedBody::new(body, is_sse, sent, backend.config.timeout, move |done| {
        let backend = &grant.backend;
        backend.state.finished();
        grant_settle(&grant, done.usage.map(|u| u.total));
        let outcome = match (success, done.error) {
            (true, None) => Outcome::Success,
            (true, Some("timeout")) => Outcome::Timeout,
            (true, Some(_)) => Outcome::Connect,
            (false, _) => Outcome::ClientError,
        };
        let cost_usd = done.usage.map_or(0.0, |u| cost(&u, &grant.model.cost));
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
        });
        // Last: shutdown waits for this before cutting the final usage batch.
        finish_shared.in_flight.finish();
    });
    let mut response = http::Response::new(ProxyBody::Tapped(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// No more attempts: pass on the last upstream error if it was not a 429 (a 5xx says
/// more than a generic error), otherwise the proxy's own error.
fn give_up(
    shared: &Shared,
    model: &Arc<str>,
    e: ProxyError,
    last: Option<Failure>,
    attempts: u32,
) -> Result<ApiResponse, ProxyError> {
    let Some(failure) = last else { return Err(e) };
    if failure.rate_limited && matches!(e, ProxyError::Exhausted(_) | ProxyError::QueueTimeout(_)) {
        return Err(e);
    }
    let Some((status, mut headers, body)) = failure.response else {
        return Err(match e {
            ProxyError::Exhausted(_) | ProxyError::QueueTimeout(_) | ProxyError::Upstream(_) => {
                ProxyError::Upstream(format!("no backend answered ({attempts} attempts)"))
            }
            other => other,
        });
    };
    shared.metrics.request(&failure.backend.config.id, &failure.backend.config.pool, status.as_u16());
    if let Some(v) = &failure.backend.config.name_header {
        headers.insert(X_SIDECAR_BACKEND, v.clone());
    }
    headers.insert(X_SIDECAR_ATTEMPTS, HeaderValue::from(attempts));
    headers.remove(http::header::CONTENT_LENGTH);
    // The attempt itself was accounted when it failed; this records the answer.
    shared.usage.record(UsageEvent {
        at_ms: crate::now_ms(),
        backend_id: failure.backend.config.id.as_str().into(),
        pool: failure.backend.config.pool.as_str().into(),
        model: model.clone(),
        attempt: None,
        answered: Some(false),
        usage: None,
        cost_usd: 0.0,
        latency: Duration::ZERO,
        ttft: None,
    });
    let mut response = http::Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}
