//! One client request through to a response: admission, the upstream attempt, and what
//! each upstream answer means — pass it through (2xx, other 4xx), or cool down / count a
//! failure and try the next candidate (429, 5xx, 401/403, timeout, connect error). Retries
//! happen only before any response byte has gone to the client.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::time::Instant;

use super::{
    ParsedRequest,
    admit::admit,
    attempt::{Abandonable, Answer, Attempt, X_SIDECAR_ATTEMPTS, X_SIDECAR_BACKEND},
    body::{ApiResponse, ProxyBody},
    caller::Caller,
    endpoint::Endpoint,
    error::ProxyError,
};
use crate::{
    report::UsageEvent,
    routing::{Backend, Grant, KeyPermit, Priority},
    snapshot::Api,
    state::{Counters, Shared},
    upstream::{self, HttpClient},
};

/// At most this many upstream attempts per client request.
const MAX_ATTEMPTS: u32 = 5;
/// Error bodies are read up to this size (to pass on the last one).
pub(super) const ERROR_BODY_LIMIT: usize = 64 * 1024;

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

/// The backends serving `model` in pools the caller's key may not use (none for most
/// keys); all of them is a 403.
fn outside_scope(shared: &Shared, caller: &Caller, api: Api, model: &str) -> Result<Vec<String>, ProxyError> {
    let Some(key) = caller.key().filter(|k| !k.pools.is_empty()) else { return Ok(Vec::new()) };
    let Some(route) = shared.bundle.load().route(api, model) else { return Ok(Vec::new()) };
    let mut outside = Vec::new();
    let mut inside = false;
    for tier in &route.tiers {
        if key.allows_pool(&tier.pool) {
            inside = true;
        } else {
            outside.extend(tier.members.iter().map(|(b, _)| b.config.id.clone()));
        }
    }
    if inside { Ok(outside) } else { Err(ProxyError::KeyScope(model.to_owned())) }
}

/// A request continuing a stored response (`previous_response_id`) goes to the backend
/// that made it, when this proxy knows which: every other candidate is excluded. If that
/// backend is not a candidate any more (removed, another API), any candidate may take it.
fn pin_to_origin(shared: &Shared, caller: &Caller, request: &ParsedRequest, api: Api, exclude: &mut Vec<String>) {
    let Some(id) = &request.previous_response_id else { return };
    let Some(origin) = shared.origins.get_for(id, caller.key().map(|k| &*k.id)) else { return };
    let Some(route) = shared.bundle.load().route(api, &request.model) else { return };
    let holder = |b: &Backend| b.config.id == *origin.backend_id;
    if !route.members().any(|(b, _)| holder(b)) {
        return;
    }
    exclude.extend(route.members().filter(|(b, _)| !holder(b)).map(|(b, _)| b.config.id.clone()));
}

/// Serves one parsed request.
pub(crate) async fn serve(
    shared: &Arc<Shared>,
    client: &HttpClient,
    endpoint: Endpoint,
    headers: &HeaderMap,
    request: ParsedRequest,
    priority: Priority,
    (caller, permit, trace): (&Caller, Option<Arc<KeyPermit>>, Option<Arc<sidecar_otel::Span>>),
) -> Result<ApiResponse, ProxyError> {
    let settings = shared.bundle.load().settings.clone();
    let wait = if priority == Priority::Low { settings.low_priority_timeout } else { settings.queue_timeout };
    let deadline = Instant::now() + wait;
    let estimate = endpoint.estimate(request.size);
    let (api, path) = (endpoint.api(), endpoint.path());
    // Ask for the usage chunk so streamed requests are accounted too; if the client did
    // not ask for it, it is taken out of the stream again on the way back.
    let want_usage = request.stream && endpoint.asks_for_usage();
    let strip_usage = want_usage && !request.usage_asked;
    let model: Arc<str> = request.model.as_str().into();
    let key: Option<Arc<str>> = caller.key().map(|k| k.id.clone());
    let mut exclude: Vec<String> = outside_scope(shared, caller, api, &request.model)?;
    pin_to_origin(shared, caller, &request, api, &mut exclude);
    let mut last: Option<Failure> = None;
    let mut attempts = 0;
    let arrived = Instant::now();
    loop {
        let grant = match admit(shared, (api, &request.model), priority, &exclude, estimate, deadline).await {
            Ok(grant) => grant,
            Err(e) => return give_up(shared, (&model, &key), e, last, attempts),
        };
        attempts += 1;
        if attempts == 1
            && let Some(span) = &trace
        {
            let waited = arrived.elapsed().as_secs_f64() * 1000.0;
            span.set([sidecar_otel::KeyValue::new("sidecar.queue_wait_ms", waited)]);
        }
        let backend = grant.backend.clone();
        let config = &backend.config;
        let native = grant.model.native_id.clone().unwrap_or_else(|| request.model.clone());
        let body = request.upstream_body(&native, want_usage)?;
        let uri = config.target(path).cloned().ok_or_else(|| ProxyError::NotFound(path.to_owned()))?;
        let mut upstream_request = upstream::build_request(uri, headers, (config.api, &config.authorization), body)
            .map_err(|e| ProxyError::Upstream(format!("could not build the upstream request: {e}")))?;
        let trace = trace.as_ref().zip(shared.traces.as_ref()).map(|(span, traces)| {
            let attempt = attempt_span(traces, span, &grant, attempts);
            // The provider sees the attempt as the parent of whatever it traces.
            traces.inject(&attempt, upstream_request.headers_mut());
            (span.clone(), attempt)
        });

        let attempt = Attempt::start(
            shared,
            grant,
            (model.clone(), key.clone(), permit.clone()),
            (request.stream, strip_usage, endpoint.dialect()),
            (attempts, trace),
        );
        let (outcome, attempt) =
            Abandonable::new(upstream::send(client, upstream_request, config.timeout), attempt).await;
        let failure = match attempt.settle(&settings, outcome) {
            Answer::Pass(response) => return Ok(attempt.respond(response)),
            Answer::Failed { response, rate_limited } => {
                let response = match response {
                    Some(response) => {
                        let (parts, body) = response.into_parts();
                        // Boxed: a failure path, kept out of the hot future's size.
                        let bytes = Box::pin(upstream::read_small(body, ERROR_BODY_LIMIT, config.timeout)).await;
                        Some((parts.status, upstream::response_headers(parts.headers), bytes))
                    }
                    None => None,
                };
                Failure { backend: backend.clone(), response, rate_limited }
            }
            Answer::RateLimited { response, retry_after } => {
                let (parts, body) = response.into_parts();
                let bytes = Box::pin(upstream::read_small(body, ERROR_BODY_LIMIT, config.timeout)).await;
                attempt.cool(&settings, retry_after, &bytes);
                let response = Some((parts.status, upstream::response_headers(parts.headers), bytes));
                Failure { backend: backend.clone(), response, rate_limited: true }
            }
        };
        // A backend that answered 429 is cooling now, so routing skips it by itself; it
        // stays eligible for the near-recovery wait and the emergency channel. Other
        // failures are excluded for the rest of this request.
        if !failure.rate_limited {
            exclude.push(backend.config.id.clone());
        }
        last = Some(failure);
        if attempts >= MAX_ATTEMPTS {
            return give_up(
                shared,
                (&model, &key),
                ProxyError::Upstream("every attempt failed".into()),
                last,
                attempts,
            );
        }
        shared.metrics.retry(if last.as_ref().is_some_and(|f| f.rate_limited) { "429" } else { "failure" });
        Counters::bump(&shared.counters.retries);
    }
}

/// A child span of the request for one upstream attempt.
fn attempt_span(
    traces: &sidecar_otel::Traces,
    request: &sidecar_otel::Span,
    grant: &Grant,
    n: u32,
) -> sidecar_otel::Span {
    use sidecar_otel::KeyValue;
    let config = &grant.backend.config;
    request.set([
        KeyValue::new("sidecar.attempts", i64::from(n)),
        KeyValue::new("sidecar.backend", config.id.clone()),
        KeyValue::new("sidecar.pool", config.pool.clone()),
    ]);
    let attributes = vec![
        KeyValue::new("sidecar.attempt", i64::from(n)),
        KeyValue::new("sidecar.backend", config.id.clone()),
        KeyValue::new("sidecar.pool", config.pool.clone()),
        KeyValue::new("sidecar.emergency", grant.emergency),
        KeyValue::new("gen_ai.response.model", grant.model.native_id.clone().unwrap_or_default()),
    ];
    traces.child("upstream attempt", sidecar_otel::Kind::Client, Some(request), attributes)
}

/// No more attempts: pass on the last upstream error if it was not a 429 (a 5xx says
/// more than a generic error), otherwise the proxy's own error.
fn give_up(
    shared: &Shared,
    (model, key): (&Arc<str>, &Option<Arc<str>>),
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
        key_id: key.clone(),
    });
    let mut response = http::Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}
