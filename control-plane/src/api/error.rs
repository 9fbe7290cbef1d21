//! The one error type of the API layer, and the one place it becomes a gRPC status.
//! Domain errors convert into it; storage and internal failures are logged here and
//! reach the caller only as a pointer to the log (they may carry paths or ids, never
//! secrets, but a caller can do nothing with them).

use tonic::Status;
use tracing::error;

use crate::{
    auth::AuthError, snapshot::StateError, stats::StatsError, store::StoreError, transfer::TransferError,
    validate::FieldError,
};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field of the request is invalid (INVALID_ARGUMENT, with the field's path in the
    /// `sidecar-field` metadata).
    #[error(transparent)]
    Field(#[from] FieldError),
    /// The request is malformed as a whole (INVALID_ARGUMENT, no field to name).
    #[error("{0}")]
    Invalid(String),
    /// What the request names does not exist (NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state: a stale resource version, a pool in
    /// use, the last admin token (FAILED_PRECONDITION).
    #[error("{0}")]
    Conflict(String),
    /// No valid credential (UNAUTHENTICATED).
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid credential that may not do this (PERMISSION_DENIED).
    #[error("{0}")]
    Permission(String),
    /// The caller took too long (DEADLINE_EXCEEDED).
    #[error("{0}")]
    Timeout(String),
    /// The service cannot answer now (UNAVAILABLE).
    #[error("{0}")]
    Unavailable(String),
    /// The store failed (INTERNAL; logged).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The new config could not be published (INTERNAL; logged).
    #[error(transparent)]
    Publish(#[from] StateError),
    /// A status from the transport (a broken stream), passed on as it is.
    #[error("{}", .0.message())]
    Wire(Status),
    /// Anything else that is our fault (INTERNAL; logged).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// An invalid field.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Field(crate::validate::field_error(field, reason))
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthenticated(m) => Self::Unauthenticated(m.to_owned()),
            AuthError::Denied(m) => Self::Permission(m),
        }
    }
}

impl From<StatsError> for ApiError {
    fn from(e: StatsError) -> Self {
        match e {
            StatsError::Field(e) => e.into(),
            StatsError::Store(e) => e.into(),
        }
    }
}

impl From<TransferError> for ApiError {
    fn from(e: TransferError) -> Self {
        match e {
            TransferError::Field(e) => e.into(),
            TransferError::Store(e) => e.into(),
            TransferError::Publish(e) => e.into(),
            e @ TransferError::Key { .. } => Self::Internal(e.to_string()),
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let clip = |m: &str| crate::util::clip_to(m, crate::util::MAX_ERROR_MESSAGE).to_string();
        match e {
            ApiError::Field(e) => {
                // Field paths and reasons may quote input (a map key, a rejected value):
                // never more than a bounded message goes back.
                let mut status = Status::invalid_argument(clip(&e.to_string()));
                if e.field.len() <= 256
                    && let Ok(field) = e.field.parse()
                {
                    // Lets the console put the message next to the field without parsing text.
                    status.metadata_mut().insert("sidecar-field", field);
                }
                status
            }
            ApiError::Invalid(m) => Status::invalid_argument(m),
            ApiError::NotFound(m) => Status::not_found(m),
            ApiError::Conflict(m) => Status::failed_precondition(m),
            ApiError::Unauthenticated(m) => Status::unauthenticated(m),
            ApiError::Permission(m) => Status::permission_denied(m),
            ApiError::Timeout(m) => Status::deadline_exceeded(m),
            ApiError::Unavailable(m) => Status::unavailable(m),
            ApiError::Store(e) => {
                error!(error = %e, "store failure");
                Status::internal("storage error; see the control plane's log")
            }
            ApiError::Publish(e) => {
                error!(error = %e, "config publication failure");
                Status::internal("could not publish the config; see the control plane's log")
            }
            ApiError::Wire(status) => status,
            ApiError::Internal(m) => {
                error!(error = %m, "internal error");
                Status::internal(clip(&m))
            }
        }
    }
}

/// Result of an API handler.
pub type ApiResult<T> = Result<T, ApiError>;
