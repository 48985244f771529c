//! Metadata echo: what lets a test see that the sidecar carries headers and trailers both ways.

use std::sync::OnceLock;

use tonic::metadata::{Ascii, KeyAndValueRef, MetadataMap, MetadataValue};
use tonic::{Code, Status};

/// The prefix of request metadata keys the server copies back.
pub const ECHO_PREFIX: &str = "x-echo-";

/// The `x-pad` value every GetUser response carries, if the server was started with padding.
static PADDING: OnceLock<MetadataValue<Ascii>> = OnceLock::new();

/// Pads every GetUser response's metadata with `x-pad` of `bytes` bytes (0: none).
pub(crate) fn pad_with(bytes: usize) {
    if bytes > 0
        && let Ok(value) = MetadataValue::try_from("p".repeat(bytes))
    {
        let _ = PADDING.set(value);
    }
}

/// Adds the padding, if any, to a unary response's metadata.
pub(crate) fn padded(mut echo: MetadataMap) -> MetadataMap {
    if let Some(pad) = PADDING.get() {
        echo.insert("x-pad", pad.clone());
    }
    echo
}

/// The request's `x-echo-*` entries (ASCII and binary), for the response's initial metadata
/// and for the trailers of an error.
pub(crate) fn echoed(request: &MetadataMap) -> MetadataMap {
    let mut echo = MetadataMap::new();
    for entry in request.iter() {
        match entry {
            KeyAndValueRef::Ascii(key, value) if key.as_str().starts_with(ECHO_PREFIX) => {
                echo.append(key, value.clone());
            }
            KeyAndValueRef::Binary(key, value) if key.as_str().starts_with(ECHO_PREFIX) => {
                echo.append_bin(key, value.clone());
            }
            _ => {}
        }
    }
    echo
}

/// A status that carries the echoed metadata, so it reaches the client in the trailers.
pub(crate) fn status(code: Code, message: impl Into<String>, echo: &MetadataMap) -> Status {
    Status::with_metadata(code, message, echo.clone())
}

/// Attaches the echoed metadata to a response's initial metadata.
pub(crate) fn response<T>(message: T, echo: MetadataMap) -> tonic::Response<T> {
    let mut response = tonic::Response::new(message);
    *response.metadata_mut() = echo;
    response
}
