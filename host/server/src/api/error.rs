//! The API's error type: every failure becomes `{"error": code, "message":
//! what to fix}` with the right status (the answer is
//! [`taskflow_http::HttpError`]'s, shared with the load balancer), and
//! internal details stay in the log. Here: how each error of the service and
//! of a request's parsing is answered.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use taskflow_http::HttpError;

use taskflow_backend::blobs::BlobError;
use taskflow_backend::storage::StorageError;
use taskflow_runtime::PluginError;

use crate::service::ServiceError;

pub use taskflow_http::ErrorBody;

/// An error answered by the API: an [`HttpError`], made here from each
/// error of the service, the runtime and request parsing.
#[derive(Debug)]
pub struct ApiError(HttpError);

impl ApiError {
    /// An error with an explicit status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self(HttpError::new(status, code, message))
    }

    /// `400 invalid_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self(HttpError::bad_request(message))
    }

    /// `404 not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self(HttpError::not_found(message))
    }

    /// `500 internal`, logging `cause` (which the client does not see).
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        Self(HttpError::internal(cause))
    }

    /// `503 unavailable`, logging `cause`.
    pub fn unavailable(cause: &dyn std::fmt::Display) -> Self {
        Self(HttpError::unavailable(cause))
    }

    /// The same error, telling the client when to try again.
    pub fn with_retry_after(self, seconds: u32) -> Self {
        Self(self.0.with_retry_after(seconds))
    }

    /// The answer's status.
    pub fn status(&self) -> StatusCode {
        self.0.status()
    }

    /// The answer's machine-readable code.
    pub fn code(&self) -> &'static str {
        self.0.code()
    }

    /// The answer's message.
    pub fn message(&self) -> &str {
        self.0.message()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::Validation(e) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_task",
                e.to_string(),
            ),
            ServiceError::UnknownPlugin(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_plugin",
                error.to_string(),
            ),
            ServiceError::NotFound(_) => Self::not_found(error.to_string()),
            ServiceError::NotCancellable { .. } => {
                Self::new(StatusCode::CONFLICT, "not_cancellable", error.to_string())
            }
            ServiceError::NotRetryable { .. } => {
                Self::new(StatusCode::CONFLICT, "not_retryable", error.to_string())
            }
            ServiceError::Storage(StorageError::InvalidCursor(_) | StorageError::InvalidLimit) => {
                Self::bad_request(error.to_string())
            }
            ServiceError::Storage(StorageError::Unavailable(_)) | ServiceError::Queue(_) => {
                Self::unavailable(&error)
            }
            ServiceError::Storage(StorageError::OutcomeUnknown(_)) => {
                tracing::error!(error = %error, "the answer to a commit was lost");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "outcome_unknown",
                    "the database stopped answering while it stored this request: it may or may not be stored; send it again with the same idempotency_key to get the stored task, or look for it before sending it again without one",
                )
            }
            ServiceError::Storage(_) => Self::internal(&error),
            ServiceError::Blob(BlobError::Unavailable(_)) => Self::unavailable(&error),
            ServiceError::Blob(_) => Self::internal(&error),
            ServiceError::Plugin(e) => e.into(),
        }
    }
}

impl From<PluginError> for ApiError {
    fn from(error: PluginError) -> Self {
        match error {
            PluginError::InvalidName(_) => Self::bad_request(error.to_string()),
            PluginError::NotFound(_) => Self::not_found(error.to_string()),
            PluginError::TooLarge(_) => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                error.to_string(),
            ),
            PluginError::NotWasm
            | PluginError::CoreModule
            | PluginError::Compile(_)
            | PluginError::IncompatibleContract { .. }
            | PluginError::WrongWorld(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_plugin",
                error.to_string(),
            ),
            PluginError::Io { .. } => Self::internal(&error),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ),
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    "the request body is too large; see TASKFLOW_MAX_BODY_BYTES",
                )
            }
            JsonRejection::BytesRejection(_) => {
                Self::bad_request("the request body could not be read")
            }
            JsonRejection::JsonSyntaxError(e) => {
                Self::bad_request(format!("the body is not valid JSON: {}", e.body_text()))
            }
            JsonRejection::JsonDataError(e) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                format!(
                    "the JSON does not match the expected shape: {}",
                    e.body_text()
                ),
            ),
            other => Self::bad_request(other.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::bad_request(rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request(rejection.body_text())
    }
}

/// JSON body extractor whose rejections are [`ApiError`]s.
#[derive(Debug, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// Query extractor whose rejections are [`ApiError`]s.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);
