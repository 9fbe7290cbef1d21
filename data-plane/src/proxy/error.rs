//! The one place where request errors become HTTP responses: OpenAI-shaped bodies
//! (`{"error":{"message","type"}}`), the right status, and `Retry-After` when the client
//! should come back later.

use std::time::Duration;

use http::{HeaderValue, StatusCode, header};

use super::body::{ApiResponse, json};

/// Why the proxy answered a request itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// Body above the limit (declared or read).
    PayloadTooLarge(usize),
    /// The body did not arrive within the body timeout.
    BodyTimeout(Duration),
    /// Not a JSON object, or no `model`.
    BadRequest(String),
    /// No backend serves the model.
    ModelNotFound(String),
    /// Unknown path.
    NotFound(String),
    /// A known path with the wrong method: (method used, path, method expected).
    MethodNotAllowed(String, String, &'static str),
    /// No config applied yet.
    NotReady,
    /// The queue was full and this request had the lowest priority.
    QueueFull,
    /// No capacity within the request's wait limit.
    QueueTimeout(Duration),
    /// Every candidate is cooling down.
    Exhausted(Duration),
    /// Every attempt failed without an upstream answer to pass on.
    Upstream(String),
    /// No client key where one is needed, or an unknown or revoked one: the shown start
    /// of the key presented, if any.
    InvalidKey(Option<String>),
    /// The client key has expired.
    KeyExpired,
    /// The client key is disabled.
    KeyDisabled,
    /// The client key may not use the model (or no pool serving it).
    KeyScope(String),
    /// The client key's own request limit is used up (its share on this proxy); come
    /// back after this long.
    KeyRateLimited(Duration),
    /// The client key's spend budget is used up until this time (unix ms); come back
    /// after this long.
    BudgetExceeded(i64, Duration),
}

fn seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl ProxyError {
    /// Status, OpenAI error type, message and Retry-After.
    pub fn parts(&self) -> (StatusCode, &'static str, String, Option<Duration>) {
        match self {
            Self::PayloadTooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("request body is larger than the limit of {limit} bytes"),
                None,
            ),
            Self::BodyTimeout(limit) => (
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                format!("request body did not arrive within {} s (SIDECAR_BODY_TIMEOUT)", seconds(*limit)),
                None,
            ),
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, "invalid_request_error", m.clone(), None),
            Self::ModelNotFound(model) => (
                StatusCode::NOT_FOUND,
                "model_not_found",
                format!("The model `{}` is not served by this gateway", model.chars().take(200).collect::<String>()),
                None,
            ),
            Self::NotFound(path) => (
                StatusCode::NOT_FOUND,
                "not_found",
                format!("Unknown path {}", path.chars().take(200).collect::<String>()),
                None,
            ),
            Self::MethodNotAllowed(method, path, allowed) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                format!(
                    "Method {} is not allowed on {}; use {allowed}",
                    method.chars().take(20).collect::<String>(),
                    path.chars().take(200).collect::<String>()
                ),
                None,
            ),
            Self::NotReady => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "No configuration applied yet".into(),
                Some(Duration::from_secs(1)),
            ),
            Self::QueueFull => (
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_full",
                "Too many requests waiting; try again shortly".into(),
                Some(Duration::from_secs(1)),
            ),
            Self::QueueTimeout(retry) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                "No provider capacity within the wait limit".into(),
                Some(*retry),
            ),
            Self::Exhausted(retry) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "all_pools_exhausted",
                "All provider pools exhausted".into(),
                Some(*retry),
            ),
            Self::Upstream(m) => (StatusCode::BAD_GATEWAY, "upstream_error", m.clone(), None),
            Self::InvalidKey(None) => (
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "No API key provided. Send your Sidecar client key as `Authorization: Bearer sk-sc-...` (or `x-api-key`)."
                    .into(),
                None,
            ),
            Self::InvalidKey(Some(shown)) => (
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                format!("Incorrect API key provided: {shown}. It is unknown or revoked."),
                None,
            ),
            Self::KeyExpired => (StatusCode::UNAUTHORIZED, "key_expired", "This API key has expired.".into(), None),
            Self::KeyDisabled => (StatusCode::UNAUTHORIZED, "key_disabled", "This API key is disabled.".into(), None),
            Self::KeyRateLimited(retry) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                "This API key's request limit (requests per minute) is used up".into(),
                Some(*retry),
            ),
            Self::BudgetExceeded(reset_ms, retry) => (
                StatusCode::TOO_MANY_REQUESTS,
                "budget_exceeded",
                format!(
                    "This API key's budget for the period is spent; it resets at {}",
                    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis((*reset_ms).max(0) as u64))
                ),
                Some(*retry),
            ),
            Self::KeyScope(model) => (
                StatusCode::FORBIDDEN,
                "permission_denied",
                format!(
                    "This API key may not use the model `{}`",
                    model.chars().take(200).collect::<String>()
                ),
                None,
            ),
        }
    }

    /// The OpenAI-shaped error response.
    pub fn into_response(self) -> ApiResponse {
        let (status, kind, message, retry) = self.parts();
        let mut response = json(status, &serde_json::json!({ "error": { "message": message, "type": kind } }));
        if let Some(retry) = retry {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds(retry).max(1)));
        }
        match &self {
            Self::MethodNotAllowed(_, _, allowed) => {
                response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allowed));
            }
            // The rest of the body is not read: the connection cannot carry another
            // request, and a slow sender must not keep it.
            Self::PayloadTooLarge(_) | Self::BodyTimeout(_) => {
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}
