//! `demo.v1.LedgerService`: signed positions resumed through a proto3 `optional` field.

use std::sync::Arc;

use futures::stream::BoxStream;
use reprise_proto::demo::v1::ledger_service_server::LedgerService;
use reprise_proto::demo::v1::{Entry, StreamEntriesRequest};
use tonic::{Request, Response, Status};
use tracing::info;

use super::echo;
use super::stream::Streams;
use crate::ledger::{note, positions};

pub(crate) struct LedgerApi {
    inclusive: bool,
    streams: Arc<Streams>,
}

impl LedgerApi {
    pub(crate) fn new(inclusive: bool, streams: Arc<Streams>) -> Self {
        Self { inclusive, streams }
    }
}

#[tonic::async_trait]
impl LedgerService for LedgerApi {
    type StreamEntriesStream = BoxStream<'static, Result<Entry, Status>>;

    async fn stream_entries(
        &self,
        request: Request<StreamEntriesRequest>,
    ) -> Result<Response<Self::StreamEntriesStream>, Status> {
        let echo = echo::echoed(request.metadata());
        let request = request.into_inner();
        // `after` is logged as Some(..) or None: whether the field was on the wire.
        info!(
            after = ?request.after_position,
            first = request.first,
            count = request.count,
            "StreamEntries"
        );
        let range = positions(
            request.first,
            request.count,
            request.after_position,
            self.inclusive,
        )
        .map_err(Status::invalid_argument)?;
        let entries = range.map(|position| Entry {
            position,
            note: note(position),
            settled_at: None,
        });
        let stream = self.streams.stream(entries, "StreamEntries", echo.clone());
        Ok(echo::response(stream, echo))
    }
}
