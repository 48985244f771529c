//! `ledger`: `demo.v1.LedgerService/StreamEntries`, checked position by position.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use reprise_proto::demo::v1::StreamEntriesRequest;
use reprise_proto::demo::v1::ledger_service_client::LedgerServiceClient;
use tonic::Code;

use super::range::RangeCheck;
use super::{ClientError, Connection, Summary, open_record, read_all};
use crate::ledger::{note, positions};

#[derive(Debug, Clone, Default)]
pub struct LedgerOptions {
    pub first: i64,
    pub count: u64,
    /// `after_position`, sent only when set (explicit presence: `Some(0)` is on the wire).
    pub after: Option<i64>,
    /// Sleep after every message: a slow consumer.
    pub slow: Duration,
    /// Append every received position as a line, written per message.
    pub record: Option<PathBuf>,
}

/// Streams StreamEntries and judges what arrived against a strictly-after server: positions
/// exactly `first .. first + count`, after `after` when set, each once, in order, each with its
/// note. A request the server must refuse (past the largest sint64) is expected to end with
/// INVALID_ARGUMENT.
pub async fn stream_entries(
    conn: &Connection,
    opts: &LedgerOptions,
) -> Result<Summary, ClientError> {
    let (expected, code) = match positions(opts.first, opts.count, opts.after, false) {
        Ok(range) => (i128::from(range.start)..i128::from(range.end), Code::Ok),
        Err(_) => (0..0, Code::InvalidArgument),
    };
    let mut check = RangeCheck::new("ledger", expected, open_record(opts.record.as_ref())?);
    let request = StreamEntriesRequest {
        after_position: opts.after,
        first: opts.first,
        count: opts.count,
    };
    let started = Instant::now();
    let outcome = conn
        .within_deadline(async {
            let mut client = LedgerServiceClient::new(conn.channel());
            let response = client.stream_entries(conn.request(request)).await?;
            check.summary.headers(response.metadata());
            read_all(&mut response.into_inner(), opts.slow, |entry| {
                let corrupt = entry.note != note(entry.position);
                check.observe(entry.position.into(), corrupt)
            })
            .await
        })
        .await;
    check.summary.ended(outcome);
    check.compare();
    Ok(check.summary.finish(started, code))
}
