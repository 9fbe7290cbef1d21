//! The one place where request errors become HTTP responses: OpenAI-shaped bodies
//! (`{"error":{"message","type"}}`) or, on the Anthropic routes, Anthropic-shaped ones
//! (`{"type":"error","error":{"type","message"}}`), the right status, and `Retry-After`
//! when the client should come back later.

use std::time::Duration;

use http::{HeaderValue, StatusCode, header};

use super::{
    body::{ApiResponse, json},
    endpoint::{Endpoint, Shape},
};
use crate::{routing::KeyRefusal, snapshot::Api};

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
    /// No backend of the route's API serves the model, but backends of this API do.
    WrongApi(String, Api),
    /// Unknown path.
    NotFound(String),
    /// A stored response (Responses API) this proxy does not know.
    ResponseNotFound(String),
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
    /// One of the client key's own limits is used up (its share on this proxy): which,
    /// and when to come back.
    KeyRateLimited(KeyRefusal),
    /// The client key's spend budget is used up until this time (unix ms); come back
    /// after this long.
    BudgetExceeded(i64, Duration),
}

/// Every reason a request is refused for its client key (a metric's label values).
pub const KEY_REFUSALS: [&str; 8] =
    ["invalid", "expired", "disabled", "scope", "requests", "tokens", "concurrent", "budget"];

fn seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl ProxyError {
    /// Why the request was refused for its client key, if it was (one of [`KEY_REFUSALS`]).
    pub fn key_refusal(&self) -> Option<&'static str> {
        Some(match self {
            Self::InvalidKey(_) => "invalid",
            Self::KeyExpired => "expired",
            Self::KeyDisabled => "disabled",
            Self::KeyScope(_) => "scope",
            Self::KeyRateLimited(KeyRefusal::Requests(_)) => "requests",
            Self::KeyRateLimited(KeyRefusal::Tokens(_)) => "tokens",
            Self::KeyRateLimited(KeyRefusal::Concurrent) => "concurrent",
            Self::BudgetExceeded(..) => "budget",
            _ => return None,
        })
    }

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
            Self::WrongApi(model, api) => (
                StatusCode::NOT_FOUND,
                "model_not_found",
                format!(
                    "The model `{}` is served by {} backends; call {}",
                    model.chars().take(200).collect::<String>(),
                    api.as_str(),
                    Endpoint::path_for(*api)
                ),
                None,
            ),
            Self::ResponseNotFound(id) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!(
                    "Response with id '{}' not found. This proxy reaches a stored response only if it forwarded the request that made it, with the same client key.",
                    id.chars().take(200).collect::<String>()
                ),
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
            Self::KeyRateLimited(refusal) => {
                let (what, retry) = match refusal {
                    KeyRefusal::Requests(retry) => ("request limit (requests per minute) is used up", *retry),
                    KeyRefusal::Tokens(retry) => ("token limit (tokens per minute) is used up", *retry),
                    KeyRefusal::Concurrent => {
                        ("concurrency limit is reached (too many requests in flight)", Duration::from_secs(1))
                    }
                };
                (StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded", format!("This API key's {what}"), Some(retry))
            }
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
        self.into_response_as(Shape::OpenAi)
    }

    /// The error response in `shape`. Anthropic's error types go by status (its SDKs
    /// read the status; the type says the same in words), the message says what exactly.
    pub fn into_response_as(self, shape: Shape) -> ApiResponse {
        let (status, kind, message, retry) = self.parts();
        let body = match shape {
            Shape::OpenAi => serde_json::json!({ "error": { "message": message, "type": kind } }),
            Shape::Anthropic => {
                serde_json::json!({ "type": "error", "error": { "type": anthropic_type(status), "message": message } })
            }
        };
        let mut response = json(status, &body);
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

/// Anthropic's error type for a status.
fn anthropic_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn body(response: ApiResponse) -> serde_json::Value {
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap()
    }

    #[tokio::test]
    async fn errors_on_anthropic_routes_take_anthropics_shape_with_the_same_status_and_retry_after() {
        let cases = [
            (ProxyError::QueueTimeout(Duration::from_millis(1500)), 429, "rate_limit_error", Some("2")),
            (ProxyError::Exhausted(Duration::from_secs(3)), 503, "overloaded_error", Some("3")),
            (ProxyError::ModelNotFound("m".into()), 404, "not_found_error", None),
            (ProxyError::InvalidKey(None), 401, "authentication_error", None),
            (ProxyError::KeyScope("m".into()), 403, "permission_error", None),
            (ProxyError::BadRequest("no".into()), 400, "invalid_request_error", None),
            (ProxyError::PayloadTooLarge(10), 413, "request_too_large", None),
            (ProxyError::Upstream("x".into()), 502, "api_error", None),
        ];
        for (e, status, kind, retry) in cases {
            let message = e.parts().2;
            let openai = e.clone().into_response();
            let response = e.into_response_as(Shape::Anthropic);
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(openai.status().as_u16(), status);
            assert_eq!(response.headers().get("retry-after").map(|v| v.to_str().unwrap()), retry);
            let json = body(response).await;
            assert_eq!(json, serde_json::json!({"type": "error", "error": {"type": kind, "message": message}}));
            assert!(body(openai).await["error"]["message"].is_string());
        }
    }

    #[test]
    fn a_model_on_the_other_api_names_the_path_that_serves_it() {
        let m = ProxyError::WrongApi("claude-x".into(), Api::Anthropic).parts().2;
        assert_eq!(m, "The model `claude-x` is served by anthropic backends; call /v1/messages");
    }
}
