//! The load generator: K concurrent `StreamEvents` calls over one HTTP/2 connection (as one
//! tonic channel of an app would make them), each checked message by message against what
//! the demo server must send.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use prost::Message as _;
use reprise_proto::demo::v1::{
    Cursor, Event, Position, StreamEventsRequest, event_service_client::EventServiceClient,
};
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

/// The demo server's payload text (examples/demo-apps/README.md): a repeating alphanumeric
/// text starting at offset `seq % 36`.
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// One run's shape.
#[derive(Debug, Clone)]
pub struct Load {
    pub streams: usize,
    pub per_stream: u64,
    pub payload_bytes: u32,
    /// Makes every stream's request (hence the sidecar's job id) unique: `{tag}-{stream}`.
    pub tag: String,
    pub timeout: Duration,
}

impl Load {
    pub fn topic(&self, stream: usize) -> String {
        format!("{}-{stream:04}", self.tag)
    }
}

/// The payload size that makes a mid-stream Event encode to about `target` bytes.
pub fn payload_for_event_bytes(target: usize, topic_len: usize, seq: u64) -> u32 {
    let bare = event_len(topic_len, seq, 0);
    // A payload of n bytes adds n plus its tag and length prefix (1 + 1 for n < 128).
    target.saturating_sub(bare + 2) as u32
}

/// The encoded size of an Event (without the 5-byte gRPC frame header).
pub fn event_len(topic_len: usize, seq: u64, payload_bytes: u32) -> usize {
    Event {
        cursor: Some(Cursor { seq }),
        topic: "t".repeat(topic_len),
        payload: vec![0; payload_bytes as usize],
    }
    .encoded_len()
}

/// What one run delivered.
#[derive(Debug)]
pub struct Outcome {
    /// Messages received that were exactly the expected ones.
    pub messages: u64,
    /// First request to the end of the last call (its trailers follow its last message).
    pub elapsed: Duration,
    /// One line per stream that was not exact.
    pub failures: Vec<String>,
}

pub async fn run(target: &str, load: &Load) -> anyhow::Result<Outcome> {
    // Connect before the clock starts: the run measures streaming, not the TCP handshake.
    let channel = Endpoint::from_shared(target.to_owned())?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {target}"))?;
    let pattern: Arc<[u8]> = ALPHABET
        .iter()
        .copied()
        .cycle()
        .take(load.payload_bytes as usize + ALPHABET.len())
        .collect();

    let started = Instant::now();
    let mut calls = JoinSet::new();
    for stream in 0..load.streams {
        let call = one_stream(
            channel.clone(),
            load.topic(stream),
            load.per_stream,
            load.payload_bytes,
            pattern.clone(),
        );
        calls.spawn(tokio::time::timeout(load.timeout, call));
    }
    let mut outcome = Outcome {
        messages: 0,
        elapsed: Duration::ZERO,
        failures: Vec::new(),
    };
    while let Some(joined) = calls.join_next().await {
        let stream = match joined {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => {
                outcome
                    .failures
                    .push(format!("a stream did not end within {:?}", load.timeout));
                continue;
            }
            Err(e) => {
                outcome.failures.push(format!("a stream task failed: {e}"));
                continue;
            }
        };
        outcome.messages += stream.good;
        outcome.elapsed = outcome.elapsed.max(stream.ended.duration_since(started));
        if let Some(failure) = stream.failure {
            outcome.failures.push(failure);
        }
    }
    Ok(outcome)
}

struct StreamResult {
    good: u64,
    ended: Instant,
    failure: Option<String>,
}

/// One call: every event must be seq `n` for the n-th message, with the topic and payload the
/// server derives from it, and the call must end OK after exactly `count` of them.
async fn one_stream(
    channel: Channel,
    topic: String,
    count: u64,
    payload_bytes: u32,
    pattern: Arc<[u8]>,
) -> StreamResult {
    let mut result = StreamResult {
        good: 0,
        ended: Instant::now(),
        failure: None,
    };
    let request = StreamEventsRequest {
        start: Some(Position { after_seq: 0 }),
        topic: topic.clone(),
        count,
        payload_bytes,
    };
    let mut client = EventServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let mut stream = match client.stream_events(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            result.failure = Some(format!("{topic}: call failed: {status}"));
            result.ended = Instant::now();
            return result;
        }
    };
    let mut received = 0u64;
    let mut wrong = 0u64;
    let mut first_wrong = None;
    let end = loop {
        match stream.message().await {
            Ok(Some(event)) => {
                received += 1;
                let seq = event.cursor.map_or(0, |c| c.seq);
                let offset = (seq % ALPHABET.len() as u64) as usize;
                let payload_ok = pattern
                    .get(offset..offset + payload_bytes as usize)
                    .is_some_and(|p| p == event.payload.as_slice());
                if seq == received && event.topic == topic && payload_ok {
                    result.good += 1;
                } else {
                    wrong += 1;
                    first_wrong.get_or_insert((received, seq));
                }
            }
            Ok(None) => break Ok(()),
            Err(status) => break Err(status),
        }
    };
    result.ended = Instant::now();
    let mut problems = Vec::new();
    if let Err(status) = end {
        problems.push(format!(
            "ended with {:?}: {}",
            status.code(),
            status.message()
        ));
    }
    if received != count {
        problems.push(format!("{received} of {count} messages"));
    }
    if let Some((n, seq)) = first_wrong {
        problems.push(format!(
            "{wrong} wrong messages, the first being message {n} with seq {seq}"
        ));
    }
    if !problems.is_empty() {
        result.failure = Some(format!("{topic}: {}", problems.join("; ")));
    }
    result
}
