//! Key validation: `GET {base_url}/models` with the key, reporting what the upstream said.
//! The key never appears in the result, even if the upstream echoes it.

use std::time::{Duration, Instant};

use crate::store::Api;

/// What a probe found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeResult {
    /// The upstream answered 2xx.
    pub ok: bool,
    /// Its HTTP status; 0 when no HTTP answer came (connect error, timeout).
    pub http_status: u32,
    /// What happened, for people; never contains the key.
    pub message: String,
    /// How long it took.
    pub latency_ms: u32,
    /// Model ids the upstream listed.
    pub models: Vec<String>,
}

/// The HTTP client for key validation and health probes.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("sidecar-control/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client with rustls builds")
}

/// Calls `GET {base_url}/models` with `api_key` as a bearer token.
pub async fn probe(
    client: &reqwest::Client,
    (base_url, api): (&str, Api),
    api_key: &str,
    timeout: Duration,
) -> ProbeResult {
    let started = Instant::now();
    let url = format!("{}/models", base_url.trim_end_matches('/'));
    // The model list is the cheapest authenticated call of both APIs; each takes the key
    // its own way.
    let request = match api {
        Api::Openai => client.get(&url).bearer_auth(api_key),
        Api::Anthropic => client.get(&url).header("x-api-key", api_key).header("anthropic-version", "2023-06-01"),
    };
    let result = request.timeout(timeout).send().await;
    let latency_ms = started.elapsed().as_millis().min(u32::MAX as u128) as u32;
    let scrub = |text: &str| text.replace(api_key, &crate::crypto::mask(api_key));
    let response = match result {
        Ok(r) => r,
        Err(e) => {
            let what = if e.is_timeout() {
                format!("no answer within {} s", timeout.as_secs())
            } else if e.is_connect() {
                format!("could not connect to {url}")
            } else {
                format!("request failed: {}", scrub(&e.to_string()))
            };
            return ProbeResult { ok: false, http_status: 0, message: what, latency_ms, models: vec![] };
        }
    };
    let status = response.status();
    let body = response.bytes().await.unwrap_or_default();
    let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let models = json
        .as_ref()
        .and_then(|j| j.get("data"))
        .and_then(|d| d.as_array())
        .map(|items| items.iter().filter_map(|m| m.get("id")?.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let message = if status.is_success() {
        "key accepted".to_owned()
    } else {
        let upstream = json
            .as_ref()
            .and_then(|j| j.pointer("/error/message").or_else(|| j.get("message")).or_else(|| j.get("error")))
            .and_then(|m| m.as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect());
        let reason = status.canonical_reason().unwrap_or("");
        format!("{} {reason}: {}", status.as_u16(), scrub(upstream.trim()))
    };
    ProbeResult { ok: status.is_success(), http_status: status.as_u16() as u32, message, latency_ms, models }
}
