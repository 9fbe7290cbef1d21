//! The forwarded endpoints: which API serves each, the shape its errors take, and how its
//! answers carry usage.

use crate::{snapshot::Api, upstream::Dialect};

/// A path the proxy forwards to providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`
    Chat,
    /// `POST /v1/completions`
    Completions,
    /// `POST /v1/embeddings`
    Embeddings,
    /// `POST /v1/responses`
    Responses,
    /// `POST /v1/messages`
    Messages,
    /// `POST /v1/messages/count_tokens`
    CountTokens,
}

/// How the proxy's own errors are shaped for a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shape {
    /// `{"error":{"message","type"}}`
    #[default]
    OpenAi,
    /// `{"type":"error","error":{"type","message"}}`
    Anthropic,
}

impl Endpoint {
    const ALL: [Endpoint; 6] = [
        Endpoint::Chat,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Responses,
        Endpoint::Messages,
        Endpoint::CountTokens,
    ];

    /// The endpoint at `path`, if it is one.
    pub fn of(path: &str) -> Option<Endpoint> {
        Self::ALL.into_iter().find(|e| e.path() == path)
    }

    /// The client path (also the upstream path, under the backend's base URL).
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Responses => "/v1/responses",
            Endpoint::Messages => "/v1/messages",
            Endpoint::CountTokens => "/v1/messages/count_tokens",
        }
    }

    /// The API whose backends serve it.
    pub fn api(self) -> Api {
        match self {
            Endpoint::Messages | Endpoint::CountTokens => Api::Anthropic,
            _ => Api::OpenAi,
        }
    }

    /// How the proxy's own errors on it are shaped.
    pub fn shape(self) -> Shape {
        match self.api() {
            Api::Anthropic => Shape::Anthropic,
            Api::OpenAi => Shape::OpenAi,
        }
    }

    /// Where its answers carry usage.
    pub fn dialect(self) -> Dialect {
        match self {
            Endpoint::Messages | Endpoint::CountTokens => Dialect::Anthropic,
            Endpoint::Responses => Dialect::Responses,
            _ => Dialect::OpenAi,
        }
    }

    /// Streams carry usage only when asked (`stream_options.include_usage`): chat and
    /// completions. Responses and Messages streams always end with it.
    pub fn asks_for_usage(self) -> bool {
        matches!(self, Endpoint::Chat | Endpoint::Completions)
    }

    /// Tokens to hold for admission before the answer says how many were used: a
    /// quarter of the body's bytes (a rough count of its input tokens); none for a
    /// token count, which the provider does not bill as tokens.
    pub fn estimate(self, body_bytes: usize) -> u64 {
        match self {
            Endpoint::CountTokens => 0,
            _ => (body_bytes / 4) as u64,
        }
    }

    /// The path that serves `api`'s requests like this one, to name in an error.
    pub fn path_for(api: Api) -> &'static str {
        match api {
            Api::OpenAi => "/v1/chat/completions or /v1/responses",
            Api::Anthropic => "/v1/messages",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::ENDPOINTS;

    #[test]
    fn every_endpoint_has_an_upstream_target_of_its_api() {
        for e in Endpoint::ALL {
            assert!(ENDPOINTS.contains(&(e.path(), e.api())), "{e:?}");
            assert_eq!(Endpoint::of(e.path()), Some(e));
        }
        assert_eq!(ENDPOINTS.len(), Endpoint::ALL.len());
    }
}
