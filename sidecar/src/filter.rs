//! The per-message work of a resumable call: cut the upstream's bytes into messages, read each
//! one's offset and keep only those above the last one forwarded.
//!
//! A [`Filter`] lives as long as its job and carries the job's position (the last offset
//! forwarded and the message count) across attempts. It forwards bytes as slices of the
//! upstream's chunks, without copying, and counts every message it does not forward.

use std::{collections::VecDeque, io::Read as _, sync::Arc};

use bytes::Bytes;
use flate2::read::GzDecoder;
use http_body::Frame;
use prometheus_client::metrics::counter::Counter;

use crate::{
    admin::{MethodLabels, Metrics, ReasonLabels},
    descriptors::ResumableMethod,
    grpc::{self, Deframer, Messages},
    offset::{self, Found, Offset},
};

/// What travels to the app's response body: a frame, and for data the offset of its last
/// message and the message count, which become the job's checkpoint once the app's
/// connection has taken the frame (not when it is queued: a queued frame dies with us).
pub(crate) struct Chunk {
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

struct Counters {
    forwarded: Counter,
    duplicate: Counter,
    out_of_order: Counter,
    malformed: Counter,
    missing_offset: Counter,
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
        }
    }
}

pub(crate) struct Filter {
    method: Arc<ResumableMethod>,
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
    pub fn new(
        method: Arc<ResumableMethod>,
        job_id: String,
        metrics: &Metrics,
        last: Option<Offset>,
        messages: u64,
    ) -> Self {
        Filter {
            counters: Counters::new(metrics, &method.name),
            method,
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
    /// a message the sidecar cannot read (it was counted).
    pub fn push(
        &mut self,
        data: Bytes,
        deframer: &mut Deframer,
        out: &mut VecDeque<Chunk>,
    ) -> Result<(), String> {
        let buffers = deframer.push(data).map_err(|e| {
            self.counters.malformed.inc();
            format!("upstream sent an unreadable message: {e}")
        })?;
        let before = self.messages;
        for whole in buffers {
            if !whole.is_empty() {
                self.filter(whole, out)?;
            }
        }
        if self.messages > before {
            self.progressed = true;
            self.counters.forwarded.inc_by(self.messages - before);
        }
        Ok(())
    }

    /// Keeps the messages above the last forwarded offset; adds the bytes to forward to `out`,
    /// as slices of `whole` (no copy) unless a message had to be decompressed.
    ///
    /// Per message this only reads: offsets are compared where they lie in `whole` (`Found`),
    /// and `self.last` is made an owned `Offset` once per run of kept messages.
    fn filter(&mut self, whole: Bytes, out: &mut VecDeque<Chunk>) -> Result<(), String> {
        let mut run_start = 0;
        // The last kept message's offset while it is still only a place in `whole`.
        let mut pending: Option<Found> = None;
        let mut msgs = Messages::new(whole.clone());
        loop {
            let start = msgs.position();
            let Some((compressed, range)) = msgs.next_range() else {
                break;
            };
            let end = msgs.position();
            if compressed {
                // Rare: decompress, then compare against an owned `last`.
                self.settle(&mut pending, &whole);
                let framed = self.gunzip(&whole[range])?;
                let payload = framed.slice(5..);
                let offset = self.offset_in(&payload)?.to_offset(&payload);
                let keep = self.last.as_ref().is_none_or(|last| offset > *last);
                if start > run_start {
                    out.push_back(self.forward(whole.slice(run_start..start)));
                }
                run_start = end;
                if keep {
                    self.replaying = false;
                    self.last = Some(offset);
                    self.messages += 1;
                    out.push_back(self.forward(framed));
                } else {
                    self.dropped(&offset);
                }
                continue;
            }
            let found = match self.offset_in(&whole[range.clone()]) {
                Ok(f) => f.shifted(range.start),
                Err(error) => {
                    self.settle(&mut pending, &whole);
                    return Err(error);
                }
            };
            let keep = match (&pending, &self.last) {
                (Some(p), _) => found.cmp_found(p, &whole).is_gt(),
                (None, Some(last)) => found.cmp_offset(&whole, last).is_gt(),
                (None, None) => true,
            };
            if keep {
                self.replaying = false;
                pending = Some(found);
                self.messages += 1;
                continue;
            }
            self.settle(&mut pending, &whole);
            if start > run_start {
                out.push_back(self.forward(whole.slice(run_start..start)));
            }
            run_start = end;
            self.dropped(&found.to_offset(&whole));
        }
        self.settle(&mut pending, &whole);
        if whole.len() > run_start {
            out.push_back(self.forward(whole.slice(run_start..)));
        }
        Ok(())
    }

    /// Makes the last kept message's offset, if it is only a place in `whole`, `self.last`.
    fn settle(&mut self, pending: &mut Option<Found>, whole: &Bytes) {
        if let Some(found) = pending.take() {
            self.last = Some(found.to_offset(whole));
        }
    }

    /// The offset of one message's payload; a message without one, or unreadable, fails the job.
    #[inline]
    fn offset_in(&self, payload: &[u8]) -> Result<Found, String> {
        match offset::find(payload, &self.method.offset) {
            Ok(Some(found)) => Ok(found),
            Ok(None) => Err(self.no_offset(None)),
            Err(e) => Err(self.no_offset(Some(e))),
        }
    }

    /// Why a message has no usable offset, counted; off the per-message path.
    #[cold]
    fn no_offset(&self, error: Option<offset::WireError>) -> String {
        match error {
            None => {
                self.counters.missing_offset.inc();
                format!(
                    "upstream message {} has no offset field {}",
                    self.messages + 1,
                    self.method.offset_field
                )
            }
            Some(e) => {
                self.counters.malformed.inc();
                format!("upstream message {} is unreadable: {e}", self.messages + 1)
            }
        }
    }

    /// A compressed message's payload, decompressed and framed again (uncompressed).
    fn gunzip(&self, payload: &[u8]) -> Result<Bytes, String> {
        if !self.gzip {
            self.counters.malformed.inc();
            return Err("upstream sent a compressed message without grpc-encoding: gzip".into());
        }
        let mut plain = Vec::new();
        if let Err(e) = GzDecoder::new(payload).read_to_end(&mut plain) {
            self.counters.malformed.inc();
            return Err(format!("cannot gunzip an upstream message: {e}"));
        }
        Ok(grpc::frame(&plain))
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
