//! `data`: the talk's `pb.Server/GetData`, checked Value by Value against `Offset .. N`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use reprise_proto::pb::DataRequest;
use reprise_proto::pb::server_client::ServerClient;
use tonic::Code;

use super::range::RangeCheck;
use super::{ClientError, Connection, Summary, open_record, read_all};
use crate::seed::{data, values};

#[derive(Debug, Clone, Default)]
pub struct DataOptions {
    /// The server's `--data`: Values `0 .. expect` exist.
    pub expect: u32,
    /// `DataRequest.Offset`: from this Value, inclusive.
    pub offset: i32,
    /// Sleep after every message: a slow consumer.
    pub slow: Duration,
    /// Append every received Value as a line, written per message.
    pub record: Option<PathBuf>,
}

/// Streams GetData and judges what arrived: Values exactly `max(offset, 0) .. expect`, each
/// once, in order, each with the UserID and Name of its Value. Fails only on local problems
/// (the record file); every gRPC outcome is in the summary.
pub async fn get_data(conn: &Connection, opts: &DataOptions) -> Result<Summary, ClientError> {
    let range = values(opts.offset, opts.expect);
    let expected = i128::from(range.start)..i128::from(range.end);
    let mut check = RangeCheck::new("data", expected, open_record(opts.record.as_ref())?);
    let request = DataRequest {
        offset: opts.offset,
    };
    let started = Instant::now();
    let outcome = conn
        .within_deadline(async {
            let mut client = ServerClient::new(conn.channel());
            let response = client.get_data(conn.request(request)).await?;
            check.summary.headers(response.metadata());
            read_all(&mut response.into_inner(), opts.slow, |message| {
                let corrupt = message != data(message.value);
                check.observe(message.value.into(), corrupt)
            })
            .await
        })
        .await;
    check.summary.ended(outcome);
    check.compare();
    Ok(check.summary.finish(started, Code::Ok))
}
