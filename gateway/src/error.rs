//! The gateway's error type, rendered as the contract's JSON error body (§6).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tidings_shared::ErrorCode;
use tidings_shared::frame::ErrorBody;

/// Everything the gateway can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A protocol-level error from the shared crate.
    #[error(transparent)]
    Shared(#[from] tidings_shared::Error),
    /// A metric could not be registered (a bug).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The listener could not be bound or served.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// An error with an explicit code and message, for HTTP handlers.
    #[error("{message}")]
    Api {
        /// The contract code.
        code: ErrorCode,
        /// The human-readable message.
        message: String,
    },
}

impl Error {
    /// An API error with `code`.
    pub fn api(code: ErrorCode, message: impl Into<String>) -> Self {
        Error::Api {
            code,
            message: message.into(),
        }
    }

    /// The contract code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Shared(e) => e.code(),
            Error::Api { code, .. } => *code,
            Error::Metrics(_) | Error::Io(_) => ErrorCode::Internal,
        }
    }
}

impl From<axum::extract::rejection::JsonRejection> for Error {
    /// A body that is not the expected JSON: 413 when over the size limit, else 400 with
    /// serde's message (which names the field at fault).
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ErrorCode::TooLarge
        } else {
            ErrorCode::BadRequest
        };
        Error::api(code, e.body_text())
    }
}

/// Result with the gateway's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(serde::Serialize)]
struct ErrorResponse {
    error: ErrorBody,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let code = self.code();
        let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        (
            status,
            Json(ErrorResponse {
                error: ErrorBody::new(code, self.to_string()),
            }),
        )
            .into_response()
    }
}
