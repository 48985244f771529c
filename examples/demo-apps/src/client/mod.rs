//! The verifying client: every command prints one JSON line saying what arrived and whether
//! it is exactly what a correct server (or a correct sidecar in front of one) must send.

mod chat;
mod data;
mod events;
mod get;
mod ledger;
mod range;
mod summary;
mod users;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tonic::metadata::{KeyAndValueRef, MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::server::MAX_METADATA_BYTES;
use tonic::{Code, Request, Status};

pub use chat::{ChatOptions, chat};
pub use data::{DataOptions, get_data};
pub use events::{EventsOptions, stream_events};
pub use get::{GetReport, get_user};
pub use ledger::{LedgerOptions, stream_entries};
pub use summary::Summary;
pub use users::{UsersOptions, list_users};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid --target {target:?}: {source}")]
    Target {
        target: String,
        source: tonic::transport::Error,
    },
    #[error("invalid --metadata {0:?}: {1}")]
    Metadata(String, String),
    #[error("opening the --record file {path}: {source}")]
    Record {
        path: String,
        source: std::io::Error,
    },
}

/// The channel plus what every call carries: `--metadata` and the `--timeout` deadline.
#[derive(Debug, Clone)]
pub struct Connection {
    channel: Channel,
    metadata: MetadataMap,
    timeout: Option<Duration>,
}

impl Connection {
    /// Connects lazily: an unreachable target shows up as an UNAVAILABLE call, reported in the
    /// summary like any other status.
    /// `window`: the HTTP/2 initial stream window the client announces (tonic's default, 2 MiB,
    /// when `None`): what it may hold unread, so what a sidecar replays after a death.
    pub fn new(
        target: &str,
        metadata: &[(String, String)],
        timeout: Option<Duration>,
        window: Option<u32>,
    ) -> Result<Self, ClientError> {
        let endpoint =
            Endpoint::from_shared(target.to_owned()).map_err(|source| ClientError::Target {
                target: target.to_owned(),
                source,
            })?;
        // grpc-go's default limit for received metadata (hyper's own is 16 KiB).
        let channel = endpoint
            .tcp_nodelay(true)
            .http2_max_header_list_size(MAX_METADATA_BYTES)
            .initial_stream_window_size(window)
            .connect_lazy();
        let mut map = MetadataMap::new();
        for (key, value) in metadata {
            let bad = |e: &dyn std::fmt::Display| {
                ClientError::Metadata(format!("{key}={value}"), e.to_string())
            };
            let key = key.to_ascii_lowercase();
            if key.ends_with("-bin") {
                let key = MetadataKey::from_bytes(key.as_bytes()).map_err(|e| bad(&e))?;
                map.append_bin(key, MetadataValue::from_bytes(value.as_bytes()));
            } else {
                let key = MetadataKey::from_bytes(key.as_bytes()).map_err(|e| bad(&e))?;
                let value = value.parse().map_err(|e| bad(&e))?;
                map.append(key, value);
            }
        }
        Ok(Self {
            channel,
            metadata: map,
            timeout,
        })
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// A request with the connection's metadata and deadline.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        *request.metadata_mut() = self.metadata.clone();
        if let Some(timeout) = self.timeout {
            request.set_timeout(timeout);
        }
        request
    }

    /// Runs a whole call under the deadline. The server only enforces `grpc-timeout` until
    /// the response headers; a gRPC deadline covers the call to its last message.
    pub async fn within_deadline<T>(
        &self,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        match self.timeout {
            None => call.await,
            Some(timeout) => tokio::time::timeout(timeout, call)
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded("client deadline exceeded"))),
        }
    }
}

/// Reads a server stream to its end: each message to `each`, then a pause of `slow` (the app's
/// own work per message, `--slow-us`); the trailers at the end.
pub(crate) async fn read_all<T>(
    stream: &mut tonic::Streaming<T>,
    slow: Duration,
    mut each: impl FnMut(T) -> Result<(), Status>,
) -> Result<Option<MetadataMap>, Status> {
    while let Some(message) = stream.message().await? {
        each(message)?;
        if !slow.is_zero() {
            tokio::time::sleep(slow).await;
        }
    }
    stream.trailers().await
}

/// Opens a `--record` file for appending, if one is asked for.
pub(crate) fn open_record(path: Option<&PathBuf>) -> Result<Option<File>, ClientError> {
    let Some(path) = path else {
        return Ok(None);
    };
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(Some)
        .map_err(|source| ClientError::Record {
            path: path.display().to_string(),
            source,
        })
}

/// Parses `key=value`.
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got {text:?}"))
}

/// The canonical name of a gRPC status code, as grpc-go and grpcio print it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Application metadata as a JSON-friendly map: ASCII values as text, binary (`-bin`) values
/// as lowercase hex of the decoded bytes, repeated keys joined with ", ". Protocol keys
/// (`content-type`, `grpc-*`) are left out, as grpcio leaves them out: the status has its own
/// fields.
pub fn metadata_json(metadata: &MetadataMap) -> BTreeMap<String, String> {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    let protocol = |key: &str| key == "content-type" || key.starts_with("grpc-");
    for entry in metadata.iter() {
        let (key, value) = match entry {
            KeyAndValueRef::Ascii(key, value) => (
                key.as_str(),
                String::from_utf8_lossy(value.as_encoded_bytes()).into_owned(),
            ),
            KeyAndValueRef::Binary(key, value) => (
                key.as_str(),
                value
                    .to_bytes()
                    .map(hex::encode)
                    .unwrap_or_else(|_| "<undecodable>".to_owned()),
            ),
        };
        if protocol(key) {
            continue;
        }
        map.entry(key.to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    map
}
