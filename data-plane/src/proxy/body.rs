//! The API's response type: either a small body the proxy wrote itself (errors, model
//! lists, an upstream error passed on) or an upstream body streaming through with its
//! accounting tap. One enum instead of a boxed body: no allocation or dynamic call per
//! frame on the hot path.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body::{Body, Frame, SizeHint};

use crate::upstream::TappedBody;

/// A response from the API.
pub type ApiResponse = http::Response<ProxyBody>;

/// A response body. Not boxed: a forwarded answer (the tapped body) is the common case,
/// and boxing it would cost an allocation per response to save bytes only in the
/// proxy's own small answers.
#[allow(clippy::large_enum_variant)]
pub enum ProxyBody {
    /// Bytes already in hand (taken by the first poll).
    Full(Option<Bytes>),
    /// An upstream body passed through frame by frame.
    Tapped(TappedBody),
}

impl ProxyBody {
    /// A body of `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self::Full((!bytes.is_empty()).then_some(bytes))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Tapped(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(bytes) => bytes.is_none(),
            Self::Tapped(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Tapped(body) => body.size_hint(),
        }
    }
}

/// A JSON response with `status`.
pub fn json(status: StatusCode, value: &serde_json::Value) -> ApiResponse {
    let mut response = http::Response::new(ProxyBody::full(serde_json::to_vec(value).expect("JSON serializes")));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn a_full_body_is_sent_once_with_its_length() {
        let body = ProxyBody::full("hello");
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(!body.is_end_stream());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
        let empty = ProxyBody::full(Bytes::new());
        assert!(empty.is_end_stream());
        assert_eq!(empty.size_hint().exact(), Some(0));
    }
}
