//! Talking to providers: the HTTPS client (rustls with the bundled, system and
//! `SIDECAR_UPSTREAM_CA` roots, HTTP/2 where the provider negotiates it, keep-alive), of
//! which each API worker thread builds its own, with its own connection pool; request
//! building (model rewrite, key, header hygiene); and classification of what came back.

mod body;
pub mod ratelimit;
mod sse;
mod usage;

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::snapshot::Api;

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const ANTHROPIC_VERSION_HEADER: HeaderName = HeaderName::from_static("anthropic-version");
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

pub use body::{Finished, TappedBody};
pub use sse::UsageChunkFilter;
pub use usage::{Dialect, Usage, UsageScanner};

/// An upstream client: one per API worker thread, each with its own connection pool (see
/// `workers`); the TLS config behind them is shared.
pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An error and its sources, `: `-joined.
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The roots provider certificates are checked against: Mozilla's (bundled), the
/// system's (where it has any), and `extra` PEM certificates (SIDECAR_UPSTREAM_CA), for
/// providers behind a private CA or a corporate TLS proxy.
pub fn tls_config(extra: &[rustls::pki_types::CertificateDer<'static>]) -> std::sync::Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    roots.add_parsable_certificates(extra.iter().cloned());
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    std::sync::Arc::new(config)
}

/// Builds one worker's client: connect timeout, keep-alive pool, HTTP/1.1 and HTTP/2 by
/// ALPN, certificates checked against `tls`'s roots.
pub fn client(connect_timeout: Duration, tls: &rustls::ClientConfig) -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(https)
}

/// Why an attempt failed before a usable response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptError {
    /// No response headers within the backend's timeout.
    Timeout,
    /// The connection could not be made.
    Connect,
    /// The connection failed after it was made (reset, protocol error).
    Io,
}

impl AttemptError {
    /// Label for metrics and usage.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptError::Timeout => "timeout",
            AttemptError::Connect => "connect",
            AttemptError::Io => "io",
        }
    }
}

/// Request headers never forwarded: hop-by-hop headers, the client's own credentials,
/// and headers the proxy sets itself.
fn dropped_request_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
            | "authorization"
            | "x-api-key"
            | "api-key"
            | "cookie"
            | "openai-organization"
            | "openai-project"
            | "accept-encoding"
            | "x-priority"
    )
}

/// Response headers never passed back (hop-by-hop).
/// Upstream response headers that do not reach the client: hop-by-hop ones, the
/// provider's software banner (`server`, `x-powered-by`: the client talks to Sidecar, and
/// the banner only helps an attacker), `alt-svc` (it would point the client's HTTP/3 at
/// the provider's endpoint under the proxy's name) and `set-cookie` (the provider's
/// session, like the client's cookies that are not sent upstream). Everything else passes,
/// `x-ratelimit-*`, `retry-after`, `x-request-id` and `openai-*` included.
fn dropped_response_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "server"
            | "x-powered-by"
            | "alt-svc"
            | "set-cookie"
    )
}

fn named_in_connection(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// Removes the headers `dropped` names, and those the `Connection` header names. The
/// names are looked at once each; only headers actually present are removed.
fn strip(headers: &mut HeaderMap, dropped: fn(&HeaderName) -> bool) {
    let named = named_in_connection(headers);
    let gone: Vec<HeaderName> = headers.keys().filter(|n| dropped(n) || named.contains(n)).cloned().collect();
    for name in gone {
        headers.remove(name);
    }
}

/// The upstream URI: the base URL's origin and prefix, then the client path without its
/// `/v1` (the base URL already carries the version), so a path is never `/v1/v1`.
pub fn target_uri(origin: &Uri, prefix: &str, client_path: &str) -> Result<Uri, http::Error> {
    let rest = client_path.strip_prefix("/v1").unwrap_or(client_path);
    let mut parts = origin.clone().into_parts();
    parts.path_and_query = Some(format!("{prefix}{rest}").parse()?);
    Ok(Uri::from_parts(parts)?)
}

/// The `anthropic-version` sent when the client sent none.
pub const ANTHROPIC_VERSION: HeaderValue = HeaderValue::from_static("2023-06-01");

/// Builds the upstream request: the client's headers minus the dropped ones (its own
/// credentials among them), the backend's key the way its API takes it (`Authorization`
/// for OpenAI, `x-api-key` and an `anthropic-version` for Anthropic), identity encoding
/// (so bytes pass through untouched and usage stays readable).
pub fn build_request(
    uri: Uri,
    client_headers: &HeaderMap,
    (api, credential): (Api, &HeaderValue),
    body: Bytes,
) -> Result<Request<Full<Bytes>>, http::Error> {
    build(http::Method::POST, uri, client_headers, (api, credential), body)
}

/// [`build_request`] with any method.
pub fn build(
    method: http::Method,
    uri: Uri,
    client_headers: &HeaderMap,
    (api, credential): (Api, &HeaderValue),
    body: Bytes,
) -> Result<Request<Full<Bytes>>, http::Error> {
    let mut headers = client_headers.clone();
    strip(&mut headers, dropped_request_header);
    match api {
        Api::OpenAi => {
            headers.insert(header::AUTHORIZATION, credential.clone());
        }
        Api::Anthropic => {
            headers.insert(X_API_KEY, credential.clone());
            headers.entry(ANTHROPIC_VERSION_HEADER).or_insert(ANTHROPIC_VERSION);
        }
    }
    headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let mut request = Request::builder().method(method).uri(uri).body(Full::new(body))?;
    *request.headers_mut() = headers;
    Ok(request)
}

/// Response headers for the client: the upstream's minus hop-by-hop ones.
pub fn response_headers(mut upstream: HeaderMap) -> HeaderMap {
    strip(&mut upstream, dropped_response_header);
    upstream
}

/// Sends one attempt and waits for response headers, up to `timeout`. The future owns
/// what it needs, so it can outlive the client request that started it.
pub fn send(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
    timeout: Duration,
) -> impl Future<Output = Result<Response<Incoming>, AttemptError>> + Send + 'static {
    // A refcount, not a copy: only a failed connect formats it.
    let host = request.uri().authority().cloned();
    let response = client.request(request);
    async move {
        match tokio::time::timeout(timeout, response).await {
            Err(_) => Err(AttemptError::Timeout),
            Ok(Err(e)) if e.is_connect() => {
                // The cause (refused, DNS, a certificate the roots do not trust…) names
                // the host only: the request and its key are not in the error.
                tracing::warn!(upstream = ?host.map(|h| h.to_string()), cause = %causes(&e), "connecting to the provider failed");
                Err(AttemptError::Connect)
            }
            Ok(Err(_)) => Err(AttemptError::Io),
            Ok(Ok(r)) => Ok(r),
        }
    }
}

/// Reads a (non-2xx) response body, at most `limit` bytes, within `timeout`.
pub async fn read_small(body: Incoming, limit: usize, timeout: Duration) -> Bytes {
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        _ => Bytes::new(),
    }
}

/// The cooldown floor an upstream asked for: `Retry-After` in seconds or as an HTTP
/// date, else (Anthropic) the latest `anthropic-ratelimit-*-reset` of a budget the
/// headers say is spent (`*-remaining: 0`), capped at a day.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let Some(value) = headers.get(header::RETRY_AFTER) else {
        return anthropic_reset(headers);
    };
    let value = value.to_str().ok()?.trim();
    let d = match value.parse::<f64>() {
        // Capped before the conversion, which panics above u64::MAX seconds.
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Duration::from_secs_f64(secs.min(86_400.0)),
        Ok(_) => return None,
        Err(_) => {
            httpdate::parse_http_date(value).ok()?.duration_since(std::time::SystemTime::now()).unwrap_or_default()
        }
    };
    Some(d.min(Duration::from_secs(86_400)))
}

/// When Anthropic's spent budgets come back (its `anthropic-ratelimit-*` headers, read by
/// [`ratelimit::parse`]): the latest reset among the budgets whose `remaining` is 0 or,
/// when none says 0, the earliest reset given.
fn anthropic_reset(headers: &HeaderMap) -> Option<Duration> {
    if !headers.keys().any(|n| n.as_str().starts_with("anthropic-ratelimit-")) {
        return None;
    }
    let limits = ratelimit::parse(headers, std::time::SystemTime::now());
    let budgets = [limits.requests, limits.tokens, limits.input_tokens, limits.output_tokens];
    let budgets = budgets.iter().flatten();
    let spent = budgets.clone().filter(|b| b.remaining == Some(0)).filter_map(|b| b.reset).max();
    spent.or_else(|| budgets.filter_map(|b| b.reset).min())
}

/// How an upstream status is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// 2xx: pass through.
    Success,
    /// 429: cool down, try the next candidate.
    RateLimited,
    /// 401/403: the key is bad; mark `error`, try the next candidate.
    Auth,
    /// 5xx: passive-health failure, try the next candidate.
    ServerError,
    /// Any other 4xx: the request itself is wrong; pass through, no retry.
    ClientError,
}

/// Classifies an upstream status.
pub fn classify(status: StatusCode) -> StatusClass {
    match status.as_u16() {
        200..=299 => StatusClass::Success,
        429 => StatusClass::RateLimited,
        401 | 403 => StatusClass::Auth,
        500..=599 => StatusClass::ServerError,
        _ => StatusClass::ClientError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_never_double_the_version_prefix() {
        let origin: Uri = "https://api.example.com/".parse().unwrap();
        assert_eq!(
            target_uri(&origin, "/v1", "/v1/chat/completions").unwrap().to_string(),
            "https://api.example.com/v1/chat/completions"
        );
        assert_eq!(
            target_uri(&origin, "/openai/v1", "/v1/embeddings").unwrap().to_string(),
            "https://api.example.com/openai/v1/embeddings"
        );
        assert_eq!(
            target_uri(&origin, "", "/v1/completions").unwrap().to_string(),
            "https://api.example.com/completions"
        );
    }

    #[test]
    fn client_credentials_and_hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer client-secret"),
            ("x-api-key", "client-secret"),
            ("cookie", "a=b"),
            ("connection", "keep-alive, x-custom-hop"),
            ("x-custom-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("accept-encoding", "gzip"),
            ("content-type", "application/json"),
            ("x-request-id", "abc"),
            ("x-priority", "high"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let key = HeaderValue::from_static("Bearer backend-key");
        let r =
            build_request("http://u/x".parse().unwrap(), &h, (Api::OpenAi, &key), Bytes::from_static(b"{}")).unwrap();
        let out = r.headers();
        assert_eq!(out["authorization"], "Bearer backend-key");
        assert_eq!(out["accept-encoding"], "identity");
        assert_eq!(out["content-length"], "2");
        assert_eq!(out["content-type"], "application/json");
        assert_eq!(out["x-request-id"], "abc");
        for gone in ["x-api-key", "cookie", "connection", "x-custom-hop", "keep-alive", "x-priority"] {
            assert!(!out.contains_key(gone), "{gone} forwarded");
        }
    }

    #[test]
    fn anthropic_backends_get_their_key_as_x_api_key_and_a_version() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer sk-sc-client"),
            ("x-api-key", "sk-sc-client"),
            ("anthropic-beta", "prompt-caching-2024-07-31"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let key = HeaderValue::from_static("sk-ant-backend");
        let send = |h: &HeaderMap| {
            build_request("http://u/v1/messages".parse().unwrap(), h, (Api::Anthropic, &key), Bytes::new()).unwrap()
        };
        let r = send(&h);
        let out = r.headers();
        assert_eq!(out["x-api-key"], "sk-ant-backend", "the backend's key, never the client's");
        assert!(!out.contains_key("authorization"), "the client's bearer key is not forwarded");
        assert_eq!(out["anthropic-version"], "2023-06-01", "a version is always sent");
        assert_eq!(out["anthropic-beta"], "prompt-caching-2024-07-31");
        h.insert("anthropic-version", HeaderValue::from_static("2026-10-21"));
        assert_eq!(send(&h).headers()["anthropic-version"], "2026-10-21", "the client's version wins");
    }

    #[test]
    fn anthropic_rate_limit_resets_stand_in_for_a_missing_retry_after() {
        let in_secs = |s: u64| {
            humantime::format_rfc3339_millis(std::time::SystemTime::now() + Duration::from_secs(s)).to_string()
        };
        let mut h = HeaderMap::new();
        h.insert("anthropic-ratelimit-requests-remaining", HeaderValue::from_static("0"));
        h.insert("anthropic-ratelimit-requests-reset", HeaderValue::from_str(&in_secs(30)).unwrap());
        h.insert("anthropic-ratelimit-tokens-remaining", HeaderValue::from_static("5000"));
        h.insert("anthropic-ratelimit-tokens-reset", HeaderValue::from_str(&in_secs(2)).unwrap());
        let d = retry_after(&h).unwrap();
        assert!(d > Duration::from_secs(27) && d <= Duration::from_secs(30), "the spent budget's reset: {d:?}");
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)), "Retry-After wins");
        h.remove(header::RETRY_AFTER);
        h.insert("anthropic-ratelimit-requests-remaining", HeaderValue::from_static("3"));
        let d = retry_after(&h).unwrap();
        assert!(d <= Duration::from_secs(2), "none spent: the earliest reset: {d:?}");
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn hop_by_hop_response_headers_are_dropped_and_the_rest_kept() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("content-type", "text/event-stream"),
            ("x-request-id", "r1"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h.append("x-request-id", HeaderValue::from_static("r2"));
        let out = response_headers(h);
        let mut kept: Vec<_> = out.iter().map(|(k, v)| format!("{k}={}", v.to_str().unwrap())).collect();
        kept.sort();
        assert_eq!(kept, ["content-type=text/event-stream", "x-request-id=r1", "x-request-id=r2"]);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        h.insert(header::RETRY_AFTER, HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap());
        let d = retry_after(&h).unwrap();
        assert!(d > Duration::from_secs(115) && d <= Duration::from_secs(120), "{d:?}");
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn statuses_are_classified() {
        assert_eq!(classify(StatusCode::OK), StatusClass::Success);
        assert_eq!(classify(StatusCode::TOO_MANY_REQUESTS), StatusClass::RateLimited);
        assert_eq!(classify(StatusCode::UNAUTHORIZED), StatusClass::Auth);
        assert_eq!(classify(StatusCode::FORBIDDEN), StatusClass::Auth);
        assert_eq!(classify(StatusCode::BAD_GATEWAY), StatusClass::ServerError);
        assert_eq!(classify(StatusCode::BAD_REQUEST), StatusClass::ClientError);
        // Anthropic's "overloaded": a server error (next candidate, no cooldown).
        assert_eq!(classify(StatusCode::from_u16(529).unwrap()), StatusClass::ServerError);
    }
}
