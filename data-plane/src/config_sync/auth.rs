//! The node token on every call to the control plane.

use tonic::{Request, Status, metadata::AsciiMetadataValue, service::Interceptor};

/// Adds `authorization: Bearer <node token>`.
#[derive(Clone)]
pub struct Bearer(pub Option<AsciiMetadataValue>);

impl Bearer {
    /// From a token, if any.
    pub fn new(token: Option<&str>) -> Self {
        Self(token.and_then(|t| format!("Bearer {t}").parse().ok()))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}
