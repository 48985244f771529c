//! The one-line JSON summary every client command prints.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use super::{code_name, metadata_json};

/// What a call delivered, judged against what it should have.
///
/// - `duplicates`: messages whose key had already arrived in this call.
/// - `out_of_order`: other messages whose key is not above every key before it.
/// - `missing` / `unexpected`: expected keys that never arrived / keys that should not have
///   (users: without `--expect-users` only ids not after `--after` count as unexpected).
/// - `corrupt`: messages whose content is wrong for their key (users: role filter, and the
///   full record with `--expect-users`; events: topic and payload; chat: echo text; data:
///   UserID and Name of the Value; ledger: the note of the position).
/// - `status` / `message`: how the call ended (`OK` or a gRPC code name such as `UNAVAILABLE`).
/// - `headers` / `trailers`: the response metadata (binary values as hex).
/// - `ok`: the call ended with the expected status and every count above is 0.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    pub kind: String,
    pub received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub missing: u64,
    pub unexpected: u64,
    pub corrupt: u64,
    pub first: String,
    pub last: String,
    pub status: String,
    pub message: String,
    pub elapsed_ms: u64,
    pub ok: bool,
    pub headers: BTreeMap<String, String>,
    pub trailers: BTreeMap<String, String>,
}

impl Summary {
    pub(crate) fn new(kind: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            status: code_name(Code::Ok).to_owned(),
            ..Self::default()
        }
    }

    /// Records one message's key as first/last.
    pub(crate) fn saw(&mut self, key: &str) {
        if self.received == 0 {
            self.first = key.to_owned();
        }
        self.received += 1;
        key.clone_into(&mut self.last);
    }

    pub(crate) fn headers(&mut self, metadata: &MetadataMap) {
        self.headers = metadata_json(metadata);
    }

    /// Records how the call ended; `trailers` are those of an OK end (an error carries its own).
    pub(crate) fn ended(&mut self, outcome: Result<Option<MetadataMap>, Status>) {
        match outcome {
            Ok(trailers) => {
                if let Some(trailers) = trailers {
                    self.trailers = metadata_json(&trailers);
                }
            }
            Err(status) => {
                self.status = code_name(status.code()).to_owned();
                self.message = status.message().to_owned();
                self.trailers = metadata_json(status.metadata());
            }
        }
    }

    /// Fills in `elapsed_ms` and `ok`: the call must have ended with `expected` and every
    /// count of a wrong message must be 0.
    pub(crate) fn finish(mut self, started: Instant, expected: Code) -> Self {
        self.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.ok = self.status == code_name(expected)
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.missing == 0
            && self.unexpected == 0
            && self.corrupt == 0;
        self
    }

    /// The summary as one JSON line (no trailing newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#))
    }
}
