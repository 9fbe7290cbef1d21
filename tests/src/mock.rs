//! A scriptable mock provider upstream (OpenAI-shaped), on port 0.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};

/// A call the mock received.
#[derive(Debug, Clone)]
pub struct Call {
    /// Request path.
    pub path: String,
    /// The `authorization` header, if any.
    pub authorization: Option<String>,
}

#[derive(Default)]
struct Inner {
    valid_keys: Vec<String>,
    calls: Vec<Call>,
}

/// A mock upstream: `GET /v1/models` answers 200 with a model list for a valid bearer key
/// and 401 with an OpenAI-shaped error otherwise.
#[derive(Clone)]
pub struct MockUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl MockUpstream {
    /// Starts a mock that accepts `valid_keys`.
    pub async fn start(valid_keys: &[&str]) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            valid_keys: valid_keys.iter().map(|k| k.to_string()).collect(),
            calls: Vec::new(),
        }));
        let app = Router::new()
            .route("/v1/models", get(models))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, inner }
    }

    /// The base URL clients configure, with the `/v1` prefix.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Calls received so far.
    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().unwrap().calls.clone()
    }
}

async fn models(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap) -> Response {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut inner = inner.lock().unwrap();
    inner.calls.push(Call {
        path: "/v1/models".into(),
        authorization: authorization.clone(),
    });
    let ok = authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .is_some_and(|k| inner.valid_keys.iter().any(|v| v == k));
    if ok {
        Json(serde_json::json!({"object": "list", "data": [{"id": "m1", "object": "model"}, {"id": "m2", "object": "model"}]}))
            .into_response()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})),
        )
            .into_response()
    }
}
