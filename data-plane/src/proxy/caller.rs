//! Who is calling: the client key a request presents (`Authorization: Bearer sk-sc-…` or
//! `x-api-key`), checked against the hashes in the current bundle — a hash and a map
//! lookup, no network hop — or an anonymous caller where this proxy allows them.
//!
//! Only credentials that look like Sidecar keys (`sk-sc-`) are checked: an SDK that
//! insists on some API key may send a placeholder to a proxy that allows anonymous use.
//! A Sidecar key is always checked, even where anonymous use is allowed.

use std::sync::Arc;

use http::HeaderMap;
use sha2::{Digest, Sha256};

use super::error::ProxyError;
use crate::{
    routing::{Bundle, KeyPermit},
    snapshot::ClientKey,
};

/// What every client key starts with.
const KEY_PREFIX: &str = "sk-sc-";

/// The caller of one request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No client key, on a proxy that allows that.
    Anonymous,
    /// A valid client key.
    Key(Arc<ClientKey>),
}

impl Caller {
    /// Whether the caller may ask for `model` (canonical).
    pub fn allows_model(&self, model: &str) -> bool {
        match self {
            Caller::Anonymous => true,
            Caller::Key(k) => k.allows_model(model),
        }
    }

    /// The key, if any.
    pub fn key(&self) -> Option<&Arc<ClientKey>> {
        match self {
            Caller::Anonymous => None,
            Caller::Key(k) => Some(k),
        }
    }
}

/// Admits one request of `estimate` tokens for `key` at `now` (unix ms `now_ms`):
/// refused while its budget is spent (before its shares are taken: a refused request does
/// not use them up), then by its own limits (requests, tokens, requests in flight). Both
/// answer before any provider capacity is asked for. The permit, for a key with limits,
/// is held while the request is in flight.
pub fn admit(
    bundle: &Bundle,
    key: &ClientKey,
    estimate: u64,
    now: tokio::time::Instant,
    now_ms: i64,
) -> Result<Option<Arc<KeyPermit>>, ProxyError> {
    if let Some(reset_ms) = bundle.key_budget(&key.id).and_then(|b| b.exhausted(now_ms)) {
        let retry = std::time::Duration::from_millis((reset_ms - now_ms).max(1000) as u64);
        return Err(ProxyError::BudgetExceeded(reset_ms, retry));
    }
    match bundle.limited_key(&key.id) {
        Some((key, state)) => match state.try_admit(key, now, estimate) {
            Ok(permit) => Ok(Some(Arc::new(permit))),
            Err(refusal) => Err(ProxyError::KeyRateLimited(refusal)),
        },
        None => Ok(None),
    }
}

/// The Sidecar key a request presents, if it presents one.
fn presented(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let x_api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim);
    [bearer, x_api_key].into_iter().flatten().find(|k| k.starts_with(KEY_PREFIX))
}

/// How a key is shown in an error: its start only.
fn shown(key: &str) -> String {
    let start: String = key.chars().take(KEY_PREFIX.len() + 4).collect();
    format!("{start}…")
}

/// Checks the caller of a request at `now_ms` (unix ms).
pub fn authenticate(
    bundle: &Bundle,
    headers: &HeaderMap,
    allow_anonymous: bool,
    now_ms: i64,
) -> Result<Caller, ProxyError> {
    let Some(secret) = presented(headers) else {
        return if allow_anonymous { Ok(Caller::Anonymous) } else { Err(ProxyError::InvalidKey(None)) };
    };
    let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    let key = bundle.client_key(&hash).ok_or_else(|| ProxyError::InvalidKey(Some(shown(secret))))?;
    if !key.enabled {
        return Err(ProxyError::KeyDisabled);
    }
    if key.expires_at_ms.is_some_and(|at| at <= now_ms) {
        return Err(ProxyError::KeyExpired);
    }
    Ok(Caller::Key(key.clone()))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn only_sidecar_keys_are_read_from_either_header() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert("authorization", HeaderValue::from_static("Bearer sk-placeholder"));
        assert_eq!(presented(&h), None, "a placeholder some SDK insists on is not a Sidecar key");
        h.insert("x-api-key", HeaderValue::from_static("sk-sc-abc"));
        assert_eq!(presented(&h), Some("sk-sc-abc"));
        h.insert("authorization", HeaderValue::from_static("Bearer sk-sc-def"));
        assert_eq!(presented(&h), Some("sk-sc-def"), "the bearer token comes first");
        assert_eq!(shown("sk-sc-0123456789"), "sk-sc-0123…");
    }

    fn bundle(keys: Vec<ClientKey>) -> Bundle {
        let snapshot = crate::snapshot::Snapshot {
            version: 1,
            nonce: String::new(),
            backends: Vec::new(),
            pools: Vec::new(),
            settings: Default::default(),
            client_keys: keys,
        };
        let window = std::time::Duration::from_secs(60);
        Bundle::prepare(&snapshot, &Bundle::empty(window), window, tokio::time::Instant::now())
    }

    fn key(secret: &str, enabled: bool, expires_at_ms: Option<i64>) -> ClientKey {
        ClientKey {
            id: "key_1".into(),
            hash: Sha256::digest(secret.as_bytes()).into(),
            team: "".into(),
            models: Vec::new(),
            pools: Vec::new(),
            rpm_limit: 0,
            tpm_limit: 0,
            max_concurrent: 0,
            expires_at_ms,
            enabled,
            initial_share: None,
            initial_tpm_share: None,
            initial_concurrent_share: None,
            has_budget: false,
        }
    }

    fn with(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_str(key).unwrap());
        h
    }

    #[test]
    fn a_key_is_valid_until_it_expires_and_only_while_enabled() {
        let b = bundle(vec![key("sk-sc-good", true, Some(1_000)), key("sk-sc-off", false, None)]);
        assert!(matches!(authenticate(&b, &with("sk-sc-good"), false, 999), Ok(Caller::Key(_))));
        assert_eq!(authenticate(&b, &with("sk-sc-good"), false, 1_000).unwrap_err(), ProxyError::KeyExpired);
        assert_eq!(authenticate(&b, &with("sk-sc-off"), true, 0).unwrap_err(), ProxyError::KeyDisabled);
        // A Sidecar key is checked even where anonymous use is allowed.
        assert!(matches!(authenticate(&b, &with("sk-sc-bad"), true, 0), Err(ProxyError::InvalidKey(Some(_)))));
        assert!(matches!(authenticate(&b, &HeaderMap::new(), true, 0), Ok(Caller::Anonymous)));
        assert_eq!(authenticate(&b, &HeaderMap::new(), false, 0).unwrap_err(), ProxyError::InvalidKey(None));
    }
}
