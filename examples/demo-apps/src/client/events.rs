//! `events`: StreamEvents, checked seq by seq against `after+1..=count`.

use std::time::Instant;

use reprise_proto::demo::v1::event_service_client::EventServiceClient;
use reprise_proto::demo::v1::{Event, Position, StreamEventsRequest};
use tonic::Code;

use super::{Connection, Summary, read_all};
use crate::events::{MAX_PAYLOAD_BYTES, PayloadPattern};

#[derive(Debug, Clone, Default)]
pub struct EventsOptions {
    pub count: u64,
    pub payload_bytes: u32,
    pub topic: String,
    pub after: u64,
    /// Sleep after every message: a slow consumer.
    pub slow: std::time::Duration,
}

/// Which sequence numbers arrived: a bitmap over the expected range, grown only as far as the
/// highest one received, so memory follows what actually came.
struct Check {
    first: u64,
    last: u64,
    seen: Vec<u64>,
    unique: u64,
    highest: u64,
    latest: u64,
    topic: String,
    pattern: PayloadPattern,
    summary: Summary,
}

impl Check {
    fn observe(&mut self, event: &Event) {
        let seq = event.cursor.map_or(0, |c| c.seq);
        if self.summary.received == 0 {
            self.summary.first = seq.to_string();
        }
        self.summary.received += 1;
        if event.topic != self.topic || event.payload != self.pattern.for_seq(seq) {
            self.summary.corrupt += 1;
        }
        if seq < self.first || seq > self.last {
            self.summary.unexpected += 1;
        } else {
            let index = (seq - self.first) as usize;
            let (word, bit) = (index / 64, 1u64 << (index % 64));
            if word >= self.seen.len() {
                self.seen.resize(word + 1, 0);
            }
            if self.seen[word] & bit != 0 {
                self.summary.duplicates += 1;
                self.latest = seq;
                return;
            }
            self.seen[word] |= bit;
            self.unique += 1;
        }
        if seq < self.highest {
            self.summary.out_of_order += 1;
        }
        self.highest = self.highest.max(seq);
        self.latest = seq;
    }
}

/// Streams StreamEvents and judges what arrived: seqs exactly `after+1..=count`, each once, in
/// order, with the topic and payload unchanged.
pub async fn stream_events(conn: &Connection, opts: &EventsOptions) -> Summary {
    let first = opts.after.saturating_add(1);
    let mut check = Check {
        first,
        last: opts.count,
        seen: Vec::new(),
        unique: 0,
        highest: 0,
        latest: 0,
        topic: opts.topic.clone(),
        // A request over the limit is refused by the server; don't build a giant pattern for it.
        pattern: PayloadPattern::new(opts.payload_bytes.min(MAX_PAYLOAD_BYTES) as usize),
        summary: Summary::new("events"),
    };
    let request = StreamEventsRequest {
        start: Some(Position {
            after_seq: opts.after,
        }),
        topic: opts.topic.clone(),
        count: opts.count,
        payload_bytes: opts.payload_bytes,
    };
    let started = Instant::now();
    let outcome = conn
        .within_deadline(async {
            let mut client = EventServiceClient::new(conn.channel());
            let response = client.stream_events(conn.request(request)).await?;
            check.summary.headers(response.metadata());
            read_all(&mut response.into_inner(), opts.slow, |event| {
                check.observe(&event);
                Ok(())
            })
            .await
        })
        .await;
    check.summary.ended(outcome);
    if check.summary.received > 0 {
        check.summary.last = check.latest.to_string();
    }
    let expected = if opts.count >= first {
        opts.count - first + 1
    } else {
        0
    };
    check.summary.missing = expected - check.unique;
    check.summary.finish(started, Code::Ok)
}
