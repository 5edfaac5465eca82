//! The one API error type, mapped to responses in one place. Errors keep
//! Courier's shape: `{"message": "...", "type": "..."}`. A 500 says nothing
//! internal; its cause is logged here, once.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::ingest::IngestError;
use crate::store::StoreError;

/// The body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub message: String,
    /// `invalid_request_error` for 4xx, `api_error` for 5xx.
    #[serde(rename = "type")]
    pub kind: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid API key")]
    Unauthorized,
    /// A valid key without the scope the route needs.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("this route does not take this method")]
    MethodNotAllowed,
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// Queue full or database down: the caller should retry, after the
    /// configured `Retry-After` (written by [`retry_after`]).
    #[error("{reason}; retry later")]
    Unavailable { reason: &'static str },
    /// A feature the configuration leaves off: retrying will not help, so
    /// no `Retry-After`.
    #[error("{0}")]
    NotConfigured(String),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest(message.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable { .. } | ApiError::NotConfigured(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Overloaded => ApiError::Unavailable { reason: "hookrelay is overloaded" },
            IngestError::Unavailable => ApiError::Unavailable { reason: "the database is unavailable" },
            IngestError::ShuttingDown => ApiError::Unavailable { reason: "hookrelay is shutting down" },
            IngestError::Internal => ApiError::Internal("batch failed".into()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(source) => {
                tracing::warn!(error = %source, "database unavailable");
                ApiError::Unavailable { reason: "the database is unavailable" }
            }
            other => ApiError::Internal(other.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(source) = &self {
            tracing::error!(error = %source, "request failed");
        }
        let mut response = error_response(status, self.to_string());
        match self {
            ApiError::Unavailable { .. } => {
                response.extensions_mut().insert(RetryLater);
            }
            ApiError::Unauthorized => {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

/// An error answer in the one shape: `type` is `api_error` for a 5xx,
/// `invalid_request_error` otherwise.
pub fn error_response(status: StatusCode, message: String) -> Response {
    let kind = if status.is_server_error() { "api_error" } else { "invalid_request_error" };
    (status, Json(ErrorBody { message, kind })).into_response()
}

/// Marks an answer that should carry the configured `Retry-After`.
#[derive(Debug, Clone, Copy)]
struct RetryLater;

/// Writes the configured `Retry-After` (`ingest.retry_after_seconds`) on
/// every answer that asks the caller to come back: a full queue, a shutting
/// down process, or a database outage seen by any route, reads included.
pub async fn retry_after(State(seconds): State<u64>, req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    if response.extensions_mut().remove::<RetryLater>().is_some() {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}
