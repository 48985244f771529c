//! The per-message work of a resumable call: cut the upstream's bytes into messages, read each
//! one's offset and keep only those above the last one forwarded.
//!
//! A [`Filter`] lives as long as its job and carries the job's position (the last offset
//! forwarded and the message count) across attempts. It forwards bytes as slices of the
//! upstream's chunks, without copying, and counts every message it does not forward.

use std::collections::VecDeque;

use bytes::Bytes;
use http_body::Frame;
use prometheus_client::metrics::counter::Counter;

use crate::{
    grpc::{self, Deframer},
    metrics::{MethodLabels, Metrics, ReasonLabels},
    offset::{self, Found, Offset, OffsetPath},
};

/// What travels to the app's response body: a frame, and for data the offset of its last
/// message and the message count, which become the job's checkpoint once the app's
/// connection has taken the frame (not when it is queued: a queued frame dies with us).
pub struct Chunk {
    pub frame: Frame<Bytes>,
    pub progress: Option<(Offset, u64)>,
}

impl Chunk {
    pub fn trailers(trailers: http::HeaderMap) -> Chunk {
        Chunk {
            frame: Frame::trailers(trailers),
            progress: None,
        }
    }
}

/// Why the job's upstream messages cannot be forwarded: the job fails and the app's call ends
/// with `code` (`RESOURCE_EXHAUSTED` for a message over `max_message_bytes`, as gRPC libraries
/// answer one; `INTERNAL` for a message the sidecar cannot read).
#[derive(Debug, Clone, PartialEq)]
pub struct Unusable {
    pub code: i32,
    pub message: String,
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, grpc::code::name(self.code))
    }
}

impl Unusable {
    fn internal(message: String) -> Self {
        Unusable {
            code: grpc::code::INTERNAL,
            message,
        }
    }
}

struct Counters {
    forwarded: Counter,
    duplicate: Counter,
    out_of_order: Counter,
    malformed: Counter,
    missing_offset: Counter,
    oversized: Counter,
}

impl Counters {
    fn new(m: &Metrics, method: &str) -> Self {
        let reason = |reason| {
            m.dropped
                .get_or_create(&ReasonLabels {
                    method: method.to_owned(),
                    reason,
                })
                .clone()
        };
        Counters {
            forwarded: m
                .forwarded
                .get_or_create(&MethodLabels {
                    method: method.to_owned(),
                })
                .clone(),
            duplicate: reason("duplicate"),
            out_of_order: reason("out_of_order"),
            malformed: reason("malformed"),
            missing_offset: reason("missing_offset"),
            oversized: reason("oversized"),
        }
    }
}

pub struct Filter {
    /// Where the offset is in a response message, and the config's name for it (for errors).
    path: OffsetPath,
    offset_field: String,
    job_id: String,
    counters: Counters,
    /// The last offset forwarded to the app (queued to its body).
    pub last: Option<Offset>,
    /// Messages forwarded in the job's whole life.
    pub messages: u64,
    /// This attempt's messages arrive compressed (`grpc-encoding: gzip`).
    gzip: bool,
    /// While nothing has been forwarded in this attempt, messages at or below the last
    /// forwarded offset are the server replaying the resume point: duplicates. After that,
    /// a message that goes backwards breaks the ordering contract.
    replaying: bool,
    /// This attempt forwarded at least one message.
    pub progressed: bool,
    /// Messages at or below the resume point dropped in this attempt.
    duplicates: u64,
    out_of_order_logged: u64,
}

impl Filter {
    /// A filter for `method`'s responses, with the job's position so far.
    pub fn new(
        method: &str,
        path: OffsetPath,
        offset_field: String,
        job_id: String,
        metrics: &Metrics,
        last: Option<Offset>,
        messages: u64,
    ) -> Self {
        Filter {
            counters: Counters::new(metrics, method),
            path,
            offset_field,
            job_id,
            last,
            messages,
            gzip: false,
            replaying: false,
            progressed: false,
            duplicates: 0,
            out_of_order_logged: 0,
        }
    }

    /// Resets the per-attempt state when an upstream response starts.
    pub fn start_attempt(&mut self, gzip: bool) {
        self.gzip = gzip;
        self.replaying = self.last.is_some();
        self.progressed = false;
        self.duplicates = 0;
    }

    /// Logs the resume point's duplicates once per attempt (each is counted as it is dropped).
    pub fn end_attempt(&mut self) {
        if self.duplicates > 0 {
            tracing::info!(
                job.id = %self.job_id,
                dropped = self.duplicates,
                offset = self.last.as_ref().map(ToString::to_string).unwrap_or_default(),
                "dropped messages at or below the resume offset (already forwarded)"
            );
            self.duplicates = 0;
        }
    }

    /// Takes one upstream DATA frame and adds what to forward to `out`. An error ends the job:
    /// a message the sidecar cannot read (it was counted); the messages before it are in
    /// `out`.
    pub fn push(
        &mut self,
        mut data: Bytes,
        deframer: &mut Deframer,
        out: &mut VecDeque<Chunk>,
    ) -> Result<(), Unusable> {
        let before = self.messages;
        let max = deframer.max();
        // A message cut at the end of the last frame, completed by copying its missing bytes;
        // then the messages of this frame, walked where they lie; then the start of the next
        // cut message, kept.
        let result = match deframer.complete(&mut data) {
            Err(e) => Err(self.unreadable(e)),
            Ok(None) if deframer.pending() > 0 => Ok(()),
            Ok(straddler) => straddler
                .map_or(Ok(0), |message| self.filter(&message, max, out))
                .and_then(|_| self.filter(&data, max, out))
                .map(|used| deframer.keep(&data[used..])),
        };
        if self.messages > before {
            self.progressed = true;
            self.counters.forwarded.inc_by(self.messages - before);
        }
        result
    }

    /// Keeps the whole messages at the start of `buf` whose offset is above the last one
    /// forwarded, and adds the bytes to forward to `out` as slices of `buf` (no copy) unless
    /// a message had to be decompressed. Returns how many bytes those whole messages take:
    /// the rest is a message cut at the end of the frame.
    ///
    /// This is the per-message path, and one walk: each header is checked and each offset
    /// read and compared where it lies (`Found`); `self.last` is made an owned `Offset` once
    /// per run of kept messages, and each run becomes one chunk.
    fn filter(
        &mut self,
        buf: &Bytes,
        max: usize,
        out: &mut VecDeque<Chunk>,
    ) -> Result<usize, Unusable> {
        let bytes: &[u8] = buf;
        let mut pos = 0;
        let mut run_start = 0;
        // The last kept message's offset while it is still only a place in `buf`.
        let mut pending: Option<Found> = None;
        let result = loop {
            let Some(header) = bytes.get(pos..pos + 5) else {
                break Ok(());
            };
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            if let Err(e) = Deframer::check_header(header[0], len, max) {
                break Err(self.unreadable(e));
            }
            let start = pos + 5;
            let end = start + len;
            let Some(payload) = bytes.get(start..end) else {
                break Ok(());
            };
            if header[0] == 1 {
                // Rare: decompress, then compare against an owned `last`.
                self.settle(&mut pending, buf);
                let (framed, offset) = match self.gunzip(payload, max) {
                    Ok(framed) => match self.offset_in(&framed[5..]) {
                        Ok(found) => {
                            let offset = found.shifted(5).to_offset(&framed);
                            (framed, offset)
                        }
                        Err(e) => break Err(e),
                    },
                    Err(e) => break Err(e),
                };
                if pos > run_start {
                    out.push_back(self.forward(buf.slice(run_start..pos)));
                }
                run_start = end;
                pos = end;
                if self.last.as_ref().is_none_or(|last| offset > *last) {
                    self.replaying = false;
                    self.last = Some(offset);
                    self.messages += 1;
                    out.push_back(self.forward(framed));
                } else {
                    self.dropped(&offset);
                }
                continue;
            }
            let found = match self.offset_in(payload) {
                Ok(f) => f.shifted(start),
                Err(e) => break Err(e),
            };
            let keep = match (&pending, &self.last) {
                (Some(p), _) => found.cmp_found(p, bytes).is_gt(),
                (None, Some(last)) => found.cmp_offset(bytes, last).is_gt(),
                (None, None) => true,
            };
            if keep {
                self.replaying = false;
                pending = Some(found);
                self.messages += 1;
                pos = end;
                continue;
            }
            self.settle(&mut pending, buf);
            if pos > run_start {
                out.push_back(self.forward(buf.slice(run_start..pos)));
            }
            run_start = end;
            pos = end;
            self.dropped(&found.to_offset(buf));
        };
        // What was kept up to here goes to the app, also before an error: those messages
        // are good, and the app gets them before the status that ends its call.
        self.settle(&mut pending, buf);
        if pos > run_start {
            out.push_back(self.forward(buf.slice(run_start..pos)));
        }
        result.map(|()| pos)
    }

    /// A message whose frame header is bad, or says it is over `max_message_bytes`; counted.
    #[cold]
    fn unreadable(&self, e: grpc::FrameError) -> Unusable {
        if let grpc::FrameError::TooLarge { .. } = e {
            return self.oversized(e);
        }
        self.counters.malformed.inc();
        Unusable::internal(format!("upstream sent an unreadable message: {e}"))
    }

    /// The next message is over `max_message_bytes` (framed, or once gunzipped); counted.
    #[cold]
    fn oversized(&self, e: impl std::fmt::Display) -> Unusable {
        self.counters.oversized.inc();
        Unusable {
            code: grpc::code::RESOURCE_EXHAUSTED,
            message: format!("upstream message {}: {e}", self.messages + 1),
        }
    }

    /// Makes the last kept message's offset, if it is only a place in `buf`, `self.last`.
    fn settle(&mut self, pending: &mut Option<Found>, buf: &Bytes) {
        if let Some(found) = pending.take() {
            self.last = Some(found.to_offset(buf));
        }
    }

    /// The offset of one message's payload; a message without one, or unreadable, fails the job.
    #[inline]
    fn offset_in(&self, payload: &[u8]) -> Result<Found, Unusable> {
        match offset::find(payload, &self.path) {
            Ok(Some(found)) => Ok(found),
            Ok(None) => Err(self.no_offset(None)),
            Err(e) => Err(self.no_offset(Some(e))),
        }
    }

    /// Why a message has no usable offset, counted; off the per-message path.
    #[cold]
    fn no_offset(&self, error: Option<offset::WireError>) -> Unusable {
        Unusable::internal(match error {
            None => {
                self.counters.missing_offset.inc();
                format!(
                    "upstream message {} has no offset field {}",
                    self.messages + 1,
                    self.offset_field
                )
            }
            Some(e) => {
                self.counters.malformed.inc();
                format!("upstream message {} is unreadable: {e}", self.messages + 1)
            }
        })
    }

    /// A compressed message's payload, decompressed (at most `max` bytes) and framed again
    /// (uncompressed).
    #[cold]
    fn gunzip(&self, payload: &[u8], max: usize) -> Result<Bytes, Unusable> {
        if !self.gzip {
            self.counters.malformed.inc();
            return Err(Unusable::internal(
                "upstream sent a compressed message without grpc-encoding: gzip".into(),
            ));
        }
        match grpc::gunzip(payload, max) {
            Ok(plain) => Ok(grpc::frame(&plain)),
            Err(e @ grpc::GunzipError::TooLarge { .. }) => Err(self.oversized(e)),
            Err(e) => {
                self.counters.malformed.inc();
                Err(Unusable::internal(format!(
                    "cannot gunzip upstream message {}: {e}",
                    self.messages + 1
                )))
            }
        }
    }

    /// Counts (and logs) a message at or below the last forwarded offset.
    fn dropped(&mut self, offset: &Offset) {
        if !self.replaying {
            self.counters.out_of_order.inc();
            self.out_of_order_logged += 1;
            if self.out_of_order_logged <= 10 {
                tracing::warn!(job.id = %self.job_id, offset = %offset, "dropped a message out of order: the upstream must stream in strictly ascending offset order");
            }
        } else {
            self.counters.duplicate.inc();
            self.duplicates += 1;
            tracing::debug!(job.id = %self.job_id, offset = %offset, "dropped a message at or below the last forwarded offset");
        }
    }

    /// Bytes to forward, ending with the message that set the current `last`.
    fn forward(&self, bytes: Bytes) -> Chunk {
        Chunk {
            frame: Frame::data(bytes),
            progress: self.last.clone().map(|o| (o, self.messages)),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};
    use prost::Message as _;
    use reprise_proto::demo::v1::{Cursor, Event};

    use super::*;
    use crate::offset::{LeafKind, Presence};

    const METHOD: &str = "demo.v1.EventService/StreamEvents";

    fn message(seq: Option<u64>) -> Vec<u8> {
        let event = Event {
            cursor: seq.map(|seq| Cursor { seq }),
            topic: "t".into(),
            payload: vec![b'p'; (seq.unwrap_or(0) % 7) as usize],
        };
        let mut out = BytesMut::new();
        out.put_u8(0);
        out.put_u32(event.encoded_len() as u32);
        event.encode(&mut out).expect("a BytesMut grows");
        out.to_vec()
    }

    fn stream(seqs: &[Option<u64>]) -> Vec<u8> {
        seqs.iter().flat_map(|&s| message(s)).collect()
    }

    fn filter(metrics: &Metrics, last: Option<i128>) -> Filter {
        filter_with(metrics, last, Presence::Implicit)
    }

    fn filter_with(metrics: &Metrics, last: Option<i128>, presence: Presence) -> Filter {
        let path = OffsetPath::plain(&[1, 1], LeafKind::UInt64, presence);
        let mut f = Filter::new(
            METHOD,
            path,
            "cursor.seq".into(),
            "job".into(),
            metrics,
            last.map(Offset::Int),
            0,
        );
        f.start_attempt(false);
        f
    }

    /// Pushes `bytes` in frames of `size`; what was forwarded, and the first error.
    fn run(f: &mut Filter, bytes: &[u8], size: usize) -> (Vec<u8>, Option<String>) {
        let mut deframer = Deframer::new(1 << 20);
        let mut out = VecDeque::new();
        let mut error = None;
        for frame in bytes.chunks(size) {
            if let Err(e) = f.push(Bytes::copy_from_slice(frame), &mut deframer, &mut out) {
                error = Some(e.message);
                break;
            }
        }
        let forwarded = out
            .into_iter()
            .flat_map(|c| c.frame.into_data().map(|d| d.to_vec()).unwrap_or_default())
            .collect();
        (forwarded, error)
    }

    fn dropped(m: &Metrics, reason: &'static str) -> u64 {
        m.dropped
            .get_or_create(&ReasonLabels {
                method: METHOD.into(),
                reason,
            })
            .get()
    }

    #[test]
    fn frames_cut_anywhere_forward_every_message_once_in_order() {
        let seqs: Vec<Option<u64>> = (1..=40).map(Some).collect();
        let bytes = stream(&seqs);
        for size in 1..=bytes.len() {
            let m = Metrics::default();
            let mut f = filter(&m, None);
            let (forwarded, error) = run(&mut f, &bytes, size);
            assert_eq!(error, None, "frames of {size}");
            assert_eq!(forwarded, bytes, "frames of {size}");
            assert_eq!(f.messages, 40);
            assert_eq!(f.last, Some(Offset::Int(40)));
        }
    }

    #[test]
    fn a_resumed_attempt_drops_what_was_forwarded_and_counts_it() {
        let seqs: Vec<Option<u64>> = (1..=20).map(Some).collect();
        let bytes = stream(&seqs);
        for size in [1, 7, 50, 4096] {
            let m = Metrics::default();
            // An inclusive server replays 1..=12 after a resume at 12.
            let mut f = filter(&m, Some(12));
            let (forwarded, error) = run(&mut f, &bytes, size);
            assert_eq!(error, None);
            assert_eq!(forwarded, stream(&seqs[12..]), "frames of {size}");
            assert_eq!(dropped(&m, "duplicate"), 12);
            assert_eq!(dropped(&m, "out_of_order"), 0);
        }
    }

    #[test]
    fn a_message_going_backwards_is_dropped_and_counted() {
        let seqs = [Some(1), Some(2), Some(5), Some(3), Some(6)];
        let m = Metrics::default();
        let mut f = filter(&m, None);
        let (forwarded, error) = run(&mut f, &stream(&seqs), 4096);
        assert_eq!(error, None);
        assert_eq!(forwarded, stream(&[Some(1), Some(2), Some(5), Some(6)]));
        assert_eq!(dropped(&m, "out_of_order"), 1);
    }

    #[test]
    fn a_message_without_offset_ends_the_job_after_the_ones_before_it() {
        // With explicit presence (say `optional uint64 seq`), an absent leaf is no offset.
        let seqs = [Some(1), Some(2), None, Some(4)];
        for size in [1, 9, 4096] {
            let m = Metrics::default();
            let mut f = filter_with(&m, None, Presence::Explicit);
            let (forwarded, error) = run(&mut f, &stream(&seqs), size);
            let error = error.expect("the job fails");
            assert!(
                error.contains("message 3 has no offset field cursor.seq"),
                "{error}"
            );
            assert_eq!(forwarded, stream(&[Some(1), Some(2)]), "frames of {size}");
            assert_eq!(f.last, Some(Offset::Int(2)));
            assert_eq!(dropped(&m, "missing_offset"), 1);
        }
    }

    #[test]
    fn an_absent_implicit_offset_is_its_default_and_streams_may_start_at_zero() {
        // `Cursor.seq` is a proto3 uint64 without `optional`: seq 0 is not on the wire, and a
        // message without a cursor at all reads as the default cursor, seq 0 too.
        assert_eq!(
            message(Some(0))[5..7],
            [0x0a, 0x00],
            "an empty cursor: no seq bytes"
        );
        for first in [Some(0), None] {
            let seqs = [first, Some(1), Some(2)];
            for size in [1, 6, 4096] {
                let m = Metrics::default();
                let mut f = filter(&m, None);
                let (forwarded, error) = run(&mut f, &stream(&seqs), size);
                assert_eq!(error, None, "frames of {size}");
                assert_eq!(forwarded, stream(&seqs), "frames of {size}");
                assert_eq!(f.messages, 3);
                assert_eq!(f.last, Some(Offset::Int(2)));
            }
        }
        let seqs = [Some(0), Some(1), Some(2)];
        // Resumed after 0: the server's replay of 0 is a duplicate, not a missing offset.
        let m = Metrics::default();
        let mut f = filter(&m, Some(0));
        let (forwarded, error) = run(&mut f, &stream(&seqs), 4096);
        assert_eq!(error, None);
        assert_eq!(forwarded, stream(&seqs[1..]));
        assert_eq!(dropped(&m, "duplicate"), 1);
        assert_eq!(dropped(&m, "missing_offset"), 0);
    }

    #[test]
    fn a_bad_frame_header_is_an_error_not_a_guess() {
        let mut bytes = stream(&[Some(1)]);
        bytes.extend_from_slice(&[7, 0, 0, 0, 1, 0]);
        let m = Metrics::default();
        let mut f = filter(&m, None);
        let (forwarded, error) = run(&mut f, &bytes, 4096);
        assert!(error.expect("fails").contains("invalid compression flag 7"));
        assert_eq!(forwarded, stream(&[Some(1)]));
        assert_eq!(dropped(&m, "malformed"), 1);

        let mut huge = stream(&[Some(1)]);
        huge.extend_from_slice(&[0, 0x7f, 0, 0, 0]);
        let m = Metrics::default();
        let mut f = filter(&m, None);
        let (_, error) = run(&mut f, &huge, 3);
        assert!(error.expect("fails").contains("exceeds max_message_bytes"));
    }

    /// One message gzip-compressed as a gRPC frame with the compressed flag.
    fn gzipped(plain: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(plain).expect("gzip into memory");
        let body = gz.finish().expect("gzip into memory");
        let mut out = vec![1];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn a_compressed_message_is_forwarded_decompressed() {
        let m = Metrics::default();
        let mut f = filter(&m, None);
        f.start_attempt(true);
        let mut bytes = gzipped(&message(Some(1))[5..]);
        bytes.extend(message(Some(2)));
        let (forwarded, error) = run(&mut f, &bytes, 4096);
        assert_eq!(error, None);
        assert_eq!(forwarded, stream(&[Some(1), Some(2)]));
    }

    #[test]
    fn a_compressed_message_over_max_message_bytes_is_refused_not_inflated() {
        // ~16 MiB of one repeated byte gzips to ~16 KiB: under a 64 KiB limit compressed, far
        // over it decompressed. The gunzip stops at the limit (max + 1 bytes) instead.
        let mut plain = message(Some(2))[5..].to_vec();
        plain.extend(std::iter::repeat_n(0u8, 16 << 20));
        let bomb = gzipped(&plain);
        let max = 64 << 10;
        assert!(bomb.len() < max, "{} bytes compressed", bomb.len());

        let m = Metrics::default();
        let mut f = filter(&m, None);
        f.start_attempt(true);
        let mut bytes = message(Some(1));
        bytes.extend(&bomb);
        let mut deframer = Deframer::new(max);
        let mut out = VecDeque::new();
        let error = f
            .push(Bytes::from(bytes), &mut deframer, &mut out)
            .expect_err("a message over max_message_bytes once decompressed");
        assert_eq!(error.code, grpc::code::RESOURCE_EXHAUSTED, "{error:?}");
        assert!(
            error
                .message
                .contains("upstream message 2: decompressed, it exceeds max_message_bytes (65536)"),
            "{error:?}"
        );
        assert_eq!(dropped(&m, "oversized"), 1);
        assert_eq!(dropped(&m, "malformed"), 0);
        // The message before it still reaches the app.
        let forwarded: Vec<u8> = out
            .into_iter()
            .flat_map(|c| c.frame.into_data().map(|d| d.to_vec()).unwrap_or_default())
            .collect();
        assert_eq!(forwarded, message(Some(1)));
    }

    #[test]
    fn an_uncompressed_message_over_max_message_bytes_is_counted_oversized() {
        let m = Metrics::default();
        let mut f = filter(&m, None);
        let mut deframer = Deframer::new(8);
        let mut out = VecDeque::new();
        let error = f
            .push(Bytes::from(message(Some(100))), &mut deframer, &mut out)
            .expect_err("over 8 bytes");
        assert_eq!(error.code, grpc::code::RESOURCE_EXHAUSTED, "{error:?}");
        assert_eq!(dropped(&m, "oversized"), 1);
    }
}
