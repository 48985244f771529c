//! `demo.v1.EventService`: a feed with a nested integer ordering key (`cursor.seq`).

use std::sync::Arc;

use futures::stream::BoxStream;
use reprise_proto::demo::v1::event_service_server::EventService;
use reprise_proto::demo::v1::{Cursor, Event, StreamEventsRequest};
use tonic::{Request, Response, Status};
use tracing::info;

use super::echo;
use super::stream::Streams;
use crate::events::{MAX_PAYLOAD_BYTES, PayloadPattern, first_seq};

pub(crate) struct EventApi {
    inclusive: bool,
    streams: Arc<Streams>,
}

impl EventApi {
    pub(crate) fn new(inclusive: bool, streams: Arc<Streams>) -> Self {
        Self { inclusive, streams }
    }
}

#[tonic::async_trait]
impl EventService for EventApi {
    type StreamEventsStream = BoxStream<'static, Result<Event, Status>>;

    async fn stream_events(
        &self,
        request: Request<StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let echo = echo::echoed(request.metadata());
        let request = request.into_inner();
        let after = request.start.map_or(0, |start| start.after_seq);
        info!(
            after,
            topic = %request.topic,
            count = request.count,
            payload_bytes = request.payload_bytes,
            "StreamEvents"
        );
        if request.payload_bytes > MAX_PAYLOAD_BYTES {
            return Err(Status::invalid_argument(format!(
                "payload_bytes {} is over the limit of {MAX_PAYLOAD_BYTES}",
                request.payload_bytes
            )));
        }
        let pattern = PayloadPattern::new(request.payload_bytes as usize);
        let topic = request.topic;
        let events = (first_seq(after, self.inclusive)..=request.count).map(move |seq| Event {
            cursor: Some(Cursor { seq }),
            topic: topic.clone(),
            payload: pattern.for_seq(seq).to_vec(),
        });
        let stream = self.streams.stream(events, "StreamEvents", echo.clone());
        Ok(echo::response(stream, echo))
    }
}
