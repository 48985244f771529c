//! The API server's errors: a `Status` object with the HTTP code, a machine-readable reason and
//! the real one's message. [`ApiError`] is the small value the write path returns; it becomes a
//! response only at the edge (`serve.rs`).

use http::StatusCode;
use serde_json::{Value, json};

/// A failed request, as the API server reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) code: StatusCode,
    pub(crate) reason: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    #[cold]
    pub(crate) fn not_found(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("pods {name:?} not found"),
        )
    }

    /// A path or method the fake does not serve.
    #[cold]
    pub(crate) fn no_route() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    #[cold]
    pub(crate) fn already_exists(name: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("pods {name:?} already exists"),
        )
    }

    /// A precondition (`metadata.resourceVersion`, `metadata.uid`) that the stored pod no longer
    /// meets.
    #[cold]
    pub(crate) fn conflict(name: &str, why: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!("Operation cannot be fulfilled on pods {name:?}: {why}"),
        )
    }

    #[cold]
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    #[cold]
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message)
    }

    #[cold]
    pub(crate) fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            message,
        )
    }

    #[cold]
    pub(crate) fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message)
    }

    #[cold]
    pub(crate) fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("the request body is larger than {limit} bytes"),
        )
    }

    pub(crate) fn status(&self) -> Value {
        status_object(self.code, self.reason, &self.message)
    }
}

/// `{"kind":"Status",…,"status":"Failure",…}`, as every error of the API server.
pub(crate) fn status_object(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16()
    })
}
