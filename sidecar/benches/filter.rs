//! The resumable path's per-message work on its own: cut upstream DATA frames into messages,
//! read each one's offset, keep those above the last one forwarded. Prints nanoseconds per
//! message for the frame sizes the end-to-end benchmark's scenarios see (one stream: about
//! 32 KiB frames; 100 streams sharing one connection's window: a few KiB).
//!
//! `cargo bench -p reprise-sidecar --bench filter` (a program that prints numbers, not a test).

use std::{
    collections::VecDeque,
    hint::black_box,
    time::{Duration, Instant},
};

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;
use reprise_proto::demo::v1::{Cursor, Event};
use reprise_sidecar::{
    filter::{Chunk, Filter},
    grpc::Deframer,
    metrics::Metrics,
    offset::{self, LeafKind, OffsetPath, Presence, Step},
};

const MESSAGES: u64 = 200_000;
const ROUNDS: usize = 15;

/// The end-to-end benchmark's stream: Events of about 100 bytes, seq 1, 2, 3, ...
fn stream() -> Bytes {
    let mut out = BytesMut::new();
    for seq in 1..=MESSAGES {
        let event = Event {
            cursor: Some(Cursor { seq }),
            topic: "bench-000001-0042".into(),
            payload: vec![b'a'; 80],
        };
        let len = event.encoded_len();
        out.put_u8(0);
        out.put_u32(len as u32);
        event.encode(&mut out).expect("a BytesMut grows");
    }
    out.freeze()
}

/// `all` cut into frames of `size` bytes (the last one shorter), mostly mid-message.
fn frames(all: &Bytes, size: usize) -> Vec<Bytes> {
    (0..all.len())
        .step_by(size)
        .map(|start| all.slice(start..(start + size).min(all.len())))
        .collect()
}

/// One pass over the frames; the time it took.
fn pass(frames: &[Bytes], metrics: &Metrics) -> Duration {
    let path = OffsetPath::plain(&[1, 1], LeafKind::UInt64, Presence::Implicit);
    let mut filter = Filter::new(
        "demo.v1.EventService/StreamEvents",
        path,
        "cursor.seq".into(),
        "bench".into(),
        metrics,
        None,
        0,
    );
    filter.start_attempt(false);
    let mut deframer = Deframer::new(4 << 20);
    let mut out: VecDeque<Chunk> = VecDeque::with_capacity(4);
    let mut took = Duration::ZERO;
    for frame in frames {
        // As the sidecar gets a frame: just copied out of the socket into a fresh buffer, so
        // in the cache (the timing starts after the copy).
        let frame = Bytes::copy_from_slice(frame);
        let started = Instant::now();
        if let Err(e) = filter.push(frame, &mut deframer, &mut out) {
            panic!("the benchmark's stream is valid: {e}");
        }
        black_box(&out);
        out.clear();
        took += started.elapsed();
    }
    assert_eq!(filter.messages, MESSAGES, "every message forwarded");
    took
}

fn main() {
    let all = stream();
    let metrics = Metrics::default();
    println!(
        "filter: {MESSAGES} messages of {} bytes framed, best and median of {ROUNDS} passes",
        all.len() as u64 / MESSAGES
    );
    find_alone(
        &all,
        &OffsetPath::plain(&[1, 1], LeafKind::UInt64, Presence::Implicit),
        "",
    );
    // The same path with `cursor` in a oneof whose other member (5) never comes.
    let in_oneof = OffsetPath::new(
        vec![
            Step {
                number: 1,
                group: false,
                clears: vec![5].into(),
            },
            Step::plain(1),
        ],
        LeafKind::UInt64,
        Presence::Implicit,
    );
    find_alone(&all, &in_oneof, ", oneof");
    for size in [32 * 1024, 16 * 1024, 4 * 1024, 1024] {
        let frames = frames(&all, size);
        let mut times: Vec<Duration> = (0..ROUNDS).map(|_| pass(&frames, &metrics)).collect();
        times.sort();
        let per_msg = |d: Duration| d.as_nanos() as f64 / MESSAGES as f64;
        println!(
            "  frames of {:>5} B: {:6.2} ns/msg best, {:6.2} median",
            size,
            per_msg(times[0]),
            per_msg(times[ROUNDS / 2])
        );
    }
}
/// `offset::find` alone, over every message in stream order: how much of the filter's time
/// is reading the offset out of the protobuf bytes. `path` is `cursor.seq` as a plain path, or
/// with `cursor` in a oneof (the walk that handles oneofs and groups).
fn find_alone(all: &Bytes, path: &OffsetPath, what: &str) {
    let mut payloads = Vec::new();
    let mut pos = 0;
    while let Some(h) = all.get(pos..pos + 5) {
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
        payloads.push(pos + 5..pos + 5 + len);
        pos += 5 + len;
    }
    let mut best = Duration::MAX;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for r in &payloads {
            black_box(offset::find(&all[r.clone()], path).ok());
        }
        best = best.min(started.elapsed());
    }
    println!(
        "  {:<27} {:6.2} ns/msg best",
        format!("offset::find alone{what}:"),
        best.as_nanos() as f64 / MESSAGES as f64
    );
}
