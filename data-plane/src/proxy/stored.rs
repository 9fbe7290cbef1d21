//! `GET` and `DELETE /v1/responses/{id}`, `POST /v1/responses/{id}/cancel`: a stored
//! response lives in the provider account that made it, so these go to that backend
//! (see [`super::origins`]), or get 404 when this proxy does not know the id. They are
//! not admitted through the limiter (they generate no tokens) and not accounted as
//! usage; the request metric counts them.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::{ApiResponse, ProxyBody, ProxyError, caller_of};
use crate::{
    state::Shared,
    upstream::{self, Dialect, HttpClient, TappedBody},
};

/// A cancel or lookup carries at most this much body.
const BODY_LIMIT: usize = 64 * 1024;

pub(super) async fn serve<B>(shared: &Arc<Shared>, client: &HttpClient, request: Request<B>, rest: &str) -> ApiResponse
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let path = request.uri().path().to_owned();
    let (id, allowed) = match rest.split_once('/') {
        None if !rest.is_empty() => (rest, "GET, DELETE"),
        Some((id, "cancel")) if !id.is_empty() => (id, "POST"),
        _ => return ProxyError::NotFound(path).into_response(),
    };
    let method = request.method().clone();
    let fits = match allowed {
        "POST" => method == Method::POST,
        _ => method == Method::GET || method == Method::DELETE,
    };
    if !fits {
        return ProxyError::MethodNotAllowed(method.to_string(), path, allowed).into_response();
    }
    let caller = match caller_of(shared, request.headers()) {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    let bundle = shared.bundle.load();
    if bundle.version == 0 {
        return ProxyError::NotReady.into_response();
    }
    // Only the key that made a response reaches it: another key's lookup is told what
    // it would be told of an id that does not exist.
    let origin = shared.origins.get_for(id, caller.key().map(|k| &*k.id));
    let Some(backend) = origin.and_then(|o| bundle.backend(&o.backend_id).cloned()) else {
        return ProxyError::ResponseNotFound(id.to_owned()).into_response();
    };
    let config = &backend.config;
    let path_and_query = request.uri().path_and_query().map_or(path.as_str(), |p| p.as_str()).to_owned();
    let (parts, body) = request.into_parts();
    let body = match http_body_util::Limited::new(body, BODY_LIMIT).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => return ProxyError::PayloadTooLarge(BODY_LIMIT).into_response(),
    };
    let upstream_request = upstream::target_uri(&config.origin, &config.path_prefix, &path_and_query).and_then(|uri| {
        upstream::build(method.clone(), uri, &parts.headers, (config.api, &config.authorization), body)
    });
    let upstream_request = match upstream_request {
        Ok(r) => r,
        Err(e) => return ProxyError::BadRequest(format!("cannot forward this request: {e}")).into_response(),
    };
    let sent = Instant::now();
    let response = match upstream::send(client, upstream_request, config.timeout).await {
        Ok(r) => r,
        Err(e) => {
            shared.metrics.upstream_error(&config.id, e.as_str());
            return ProxyError::Upstream(format!("the backend holding this response did not answer ({})", e.as_str()))
                .into_response();
        }
    };
    let status = response.status();
    shared.metrics.request(&config.id, &config.pool, status.as_u16());
    if method == Method::DELETE && status.is_success() {
        shared.origins.forget(id);
    }
    let (parts, body) = response.into_parts();
    let body = TappedBody::new(body, (false, Dialect::OpenAi), false, sent, config.timeout, |_| {});
    let mut response = http::Response::new(ProxyBody::Tapped(body));
    *response.status_mut() = status;
    *response.headers_mut() = upstream::response_headers(parts.headers);
    if let Some(v) = &config.name_header {
        response.headers_mut().insert(super::attempt::X_SIDECAR_BACKEND, v.clone());
    }
    response
}
