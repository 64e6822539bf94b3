//! The one error type of Tarmac, and how it reaches an HTTP client.
//!
//! Domain cases say what the caller did wrong; the wrapped sources are failures of ours. A 4xx
//! carries a message meant for the client. A 5xx says nothing internal and is logged once, with
//! its cause chain, where it is turned into a response.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failure's cause, kept for the logs.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// Well-formed, but not acceptable as it stands (an idempotency key reused for another
    /// request).
    #[error("{0}")]
    Unprocessable(String),
    #[error("request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// A request beyond what the server reads: too long a URL (414), too many header bytes
    /// (431), a body that does not arrive in time (408).
    #[error("{1}")]
    Limit(StatusCode, String),
    /// A system we depend on failed: the database, an AWS service. Its cause is kept for the
    /// logs; `retryable` says whether trying again later may succeed (a timeout, throttling, a
    /// busy database) or not (a missing table, a refused permission).
    #[error("{context}")]
    Backend {
        context: String,
        #[source]
        source: BoxError,
        retryable: bool,
    },
    #[error("I/O error")]
    Io(#[from] std::io::Error),
    #[error("JSON error")]
    Json(#[from] serde_json::Error),
    /// A broken invariant of ours.
    #[error("{0}")]
    Internal(String),
    /// A provider we called (AWS STS, say) refused; the message is the provider's, for the user.
    #[error("{0}")]
    Upstream(String),
}

impl Error {
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound(what.into())
    }
    pub fn invalid(what: impl Into<String>) -> Self {
        Self::Invalid(what.into())
    }
    pub fn conflict(what: impl Into<String>) -> Self {
        Self::Conflict(what.into())
    }
    pub fn internal(what: impl Into<String>) -> Self {
        Self::Internal(what.into())
    }
    pub fn backend(
        context: impl Into<String>,
        source: impl Into<BoxError>,
        retryable: bool,
    ) -> Self {
        Self::Backend {
            context: context.into(),
            source: source.into(),
            retryable,
        }
    }

    /// Whether the same request may succeed later, untouched: a backend's passing fault, or an
    /// I/O error. A caller that can (a queue consumer, a tick) hands such work back; anything
    /// else would fail the same way again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Backend { retryable, .. } => *retryable,
            Self::Io(_) => true,
            _ => false,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Limit(status, _) => *status,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::Backend {
                retryable: true, ..
            } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Backend { .. } | Self::Io(_) | Self::Json(_) | Self::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// Whether a client sees only "internal server error" for this error: every 5xx but a
    /// provider's refusal, whose message is meant for the user.
    pub fn is_internal(&self) -> bool {
        self.status().is_server_error() && !matches!(self, Self::Upstream(_))
    }

    /// The error and every source below it, for logs.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            out.push_str(": ");
            out.push_str(&cause.to_string());
            source = cause.source();
        }
        out
    }
}

/// The Pulumi error body: `{"code": <status>, "message": "..."}`.
pub fn error_body(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "code": status.as_u16(), "message": message });
    (status, axum::Json(body)).into_response()
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if self.is_internal() {
            tracing::error!(error = %self.chain(), "request failed");
            return error_body(status, "internal server error");
        }
        error_body(status, &self.to_string())
    }
}
