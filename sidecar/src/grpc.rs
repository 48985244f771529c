//! gRPC over HTTP/2 at the byte level: message framing, status trailers, `grpc-timeout`.
//! Errors become gRPC statuses here, in one place, so the app always gets trailers.

use std::{ops::Range, time::Duration};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response};
use http_body_util::{BodyExt, Empty, combinators::UnsyncBoxBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body every response of the proxy carries.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// gRPC status codes used by the proxy itself.
pub mod code {
    pub const OK: i32 = 0;
    pub const CANCELLED: i32 = 1;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNKNOWN: i32 = 2;

    /// Every code's canonical name, by number: the one table of the sidecar (logs, errors,
    /// and the lower-case names `retry_codes` accepts).
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];

    /// The canonical upper-case name, for logs and errors.
    pub fn name(code: i32) -> &'static str {
        usize::try_from(code)
            .ok()
            .and_then(|i| NAMES.get(i))
            .copied()
            .unwrap_or("UNKNOWN_CODE")
    }

    /// The code of a name, in any case (`unavailable` → 14).
    pub fn from_name(name: &str) -> Option<i32> {
        NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name))
            .and_then(|i| i32::try_from(i).ok())
    }
}

pub const GRPC_STATUS: &str = "grpc-status";
pub const GRPC_MESSAGE: &str = "grpc-message";
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The status carried by `headers` (trailers, or the headers of a trailers-only response).
pub fn status_of(headers: &HeaderMap) -> Option<(i32, String)> {
    let code = headers.get(GRPC_STATUS)?.to_str().ok()?.parse().ok()?;
    let message = headers
        .get(GRPC_MESSAGE)
        .map(|m| percent_decode(m.as_bytes()))
        .unwrap_or_default();
    Some((code, message))
}

pub fn status_trailers(code: i32, message: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(GRPC_STATUS, HeaderValue::from(code));
    if !message.is_empty()
        && let Ok(v) = HeaderValue::from_bytes(percent_encode(message).as_bytes())
    {
        h.insert(GRPC_MESSAGE, v);
    }
    h
}

/// A trailers-only response: the status rides in the headers and the body is empty.
/// A header block's size as HTTP/2 counts it against SETTINGS_MAX_HEADER_LIST_SIZE (RFC 9113
/// §6.5.2): every field's name and value plus 32 bytes.
pub fn header_list_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum()
}

/// `Err` with the status message when `headers` (the `what` of a call) exceed `max` bytes.
pub fn check_metadata(headers: &HeaderMap, max: usize, what: &str) -> Result<(), String> {
    let size = header_list_size(headers);
    if size > max {
        return Err(format!(
            "reprise: {what} of {size} bytes exceeds max_metadata_bytes ({max})"
        ));
    }
    Ok(())
}

pub fn trailers_only(code: i32, message: &str) -> Response<ProxyBody> {
    let mut res = Response::new(
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    let h = res.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.extend(status_trailers(code, message));
    res
}

/// The gRPC spec's mapping from an HTTP status of a non-gRPC reply to a gRPC code.
pub fn code_for_http_status(status: http::StatusCode) -> i32 {
    match status.as_u16() {
        400 => code::INTERNAL,
        401 => 16,
        403 => 7,
        404 => code::UNIMPLEMENTED,
        429 | 502..=504 => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(b: &[u8]) -> String {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&String::from_utf8_lossy(&b[i + 1..i + 3]), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `grpc-timeout` (`1S`, `100m`, ...). An invalid value is ignored, as gRPC servers do.
pub fn parse_timeout(v: &HeaderValue) -> Option<Duration> {
    let s = v.to_str().ok()?;
    if s.len() < 2 || s.len() > 9 {
        return None;
    }
    let (digits, unit) = s.split_at(s.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Encodes a timeout with at most 8 digits, rounding up so a deadline is never shortened to 0.
pub fn encode_timeout(d: Duration) -> HeaderValue {
    let micros = d.as_micros().max(1);
    let value = if micros < 100_000_000 {
        format!("{micros}u")
    } else if d.as_millis() < 100_000_000 {
        format!("{}m", d.as_millis())
    } else {
        format!("{}S", d.as_secs().min(99_999_999))
    };
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("99999999S"))
}

/// One length-prefixed, uncompressed gRPC message.
pub fn frame(msg: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + msg.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out.freeze()
}

/// Why a compressed message could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GunzipError {
    #[error("decompressed, it exceeds max_message_bytes ({max})")]
    TooLarge { max: usize },
    #[error("not gzip: {0}")]
    Corrupt(std::io::Error),
}

/// Decompresses one gzip message, producing at most `max` bytes: a compressed message of a few
/// KiB can expand a thousandfold, so the output is cut at `max + 1` bytes and refused, never
/// held whole. The one gunzip of the sidecar (requests and upstream messages alike).
pub fn gunzip(compressed: &[u8], max: usize) -> Result<Vec<u8>, GunzipError> {
    use std::io::Read as _;
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(compressed)
        .take(max as u64 + 1)
        .read_to_end(&mut plain)
        .map_err(GunzipError::Corrupt)?;
    if plain.len() > max {
        return Err(GunzipError::TooLarge { max });
    }
    Ok(plain)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("message of {len} bytes exceeds max_message_bytes ({max})")]
    TooLarge { len: usize, max: usize },
    #[error("invalid compression flag {0}")]
    BadFlag(u8),
}

/// Splits a byte stream into whole gRPC messages without copying when a chunk holds whole
/// messages (the common case): only a message cut across chunks is buffered.
#[derive(Debug)]
pub struct Deframer {
    pending: BytesMut,
    max: usize,
}

impl Deframer {
    pub fn new(max: usize) -> Self {
        Deframer {
            pending: BytesMut::new(),
            max,
        }
    }

    /// Adds `chunk`; returns the bytes of every message now whole, as at most two buffers:
    /// the message that was cut across chunks (completed by copying only its missing bytes),
    /// then the whole messages of the rest of the chunk (a slice of it, not a copy).
    pub fn push(&mut self, mut chunk: Bytes) -> Result<[Bytes; 2], FrameError> {
        let straddler = if self.pending.is_empty() {
            Bytes::new()
        } else {
            match self.complete(&mut chunk)? {
                Some(message) => message,
                None => return Ok([Bytes::new(), Bytes::new()]),
            }
        };
        let whole = self.whole_prefix(&chunk)?;
        self.keep(&chunk[whole..]);
        Ok([straddler, chunk.slice(..whole)])
    }

    /// Completes the message cut at the end of the previous chunk with the head of `chunk`
    /// (copying only its missing bytes, which are taken off `chunk`). `None`: it is still
    /// incomplete and `chunk` is used up; also `None` when no message was pending.
    pub fn complete(&mut self, chunk: &mut Bytes) -> Result<Option<Bytes>, FrameError> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        // Complete the header first, then the message it announces.
        if self.pending.len() < 5 {
            let take = (5 - self.pending.len()).min(chunk.len());
            self.pending.extend_from_slice(&chunk.split_to(take));
            if self.pending.len() < 5 {
                return Ok(None);
            }
        }
        let len = self.header_len(&self.pending)?;
        let take = (5 + len - self.pending.len()).min(chunk.len());
        self.pending.extend_from_slice(&chunk.split_to(take));
        if self.pending.len() < 5 + len {
            return Ok(None);
        }
        Ok(Some(self.pending.split().freeze()))
    }

    /// Keeps `tail`, the start of a message cut at the end of a chunk, for [`Self::complete`].
    pub fn keep(&mut self, tail: &[u8]) {
        if !tail.is_empty() {
            self.pending.extend_from_slice(tail);
        }
    }

    /// The largest message accepted.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Checks one message header: its compression flag and its length against the limit.
    #[inline]
    pub fn check_header(flag: u8, len: usize, max: usize) -> Result<(), FrameError> {
        if flag > 1 {
            return Err(FrameError::BadFlag(flag));
        }
        if len > max {
            return Err(FrameError::TooLarge { len, max });
        }
        Ok(())
    }

    fn header_len(&self, header: &[u8]) -> Result<usize, FrameError> {
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        Self::check_header(header[0], len, self.max)?;
        Ok(len)
    }

    /// Bytes of a message started but not finished.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn whole_prefix(&self, buf: &[u8]) -> Result<usize, FrameError> {
        let mut pos = 0;
        while buf.len() - pos >= 5 {
            let len = self.header_len(&buf[pos..pos + 5])?;
            if buf.len() - pos - 5 < len {
                break;
            }
            pos += 5 + len;
        }
        Ok(pos)
    }
}

/// Iterates `(compressed, payload)` over a buffer of whole messages from [`Deframer::push`].
pub struct Messages {
    buf: Bytes,
    pos: usize,
}

impl Messages {
    pub fn new(buf: Bytes) -> Self {
        Messages { buf, pos: 0 }
    }

    /// Byte offset of the next message's header.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl Messages {
    /// The next message's compressed flag and where its payload lies in the buffer, without
    /// slicing it out (no reference count taken).
    pub fn next_range(&mut self) -> Option<(bool, Range<usize>)> {
        let header = self.buf.get(self.pos..self.pos + 5)?;
        let compressed = header[0] == 1;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let start = self.pos + 5;
        self.pos = start + len;
        Some((compressed, start..start + len))
    }
}

impl Iterator for Messages {
    type Item = (bool, Bytes);

    fn next(&mut self) -> Option<(bool, Bytes)> {
        let (compressed, range) = self.next_range()?;
        Some((compressed, self.buf.slice(range)))
    }
}

/// The full `source()` chain, so "connection refused" is not hidden behind "client error".
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn code_names_and_numbers_are_one_table() {
        for c in 0..=16 {
            assert_eq!(code::from_name(code::name(c)), Some(c));
        }
        assert_eq!(code::from_name("unavailable"), Some(code::UNAVAILABLE));
        assert_eq!(code::name(17), "UNKNOWN_CODE");
        assert_eq!(code::name(-1), "UNKNOWN_CODE");
        assert_eq!(code::from_name("sometimes"), None);
    }

    #[test]
    fn gunzip_is_bounded_by_max() {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&[7u8; 1000]).expect("gzip into memory");
        let compressed = gz.finish().expect("gzip into memory");
        assert_eq!(gunzip(&compressed, 1000).expect("fits").len(), 1000);
        assert!(matches!(
            gunzip(&compressed, 999),
            Err(GunzipError::TooLarge { max: 999 })
        ));
        assert!(matches!(
            gunzip(b"not gzip", 1000),
            Err(GunzipError::Corrupt(_))
        ));
    }
    use super::*;

    #[test]
    fn deframer_splits_and_joins_across_chunks() {
        let mut all = Vec::new();
        for i in 0..5u8 {
            all.extend_from_slice(&frame(&vec![i; usize::from(i) * 3]));
        }
        for cut in 1..all.len() {
            let mut d = Deframer::new(1024);
            let mut out = Vec::new();
            for part in [&all[..cut], &all[cut..]] {
                for whole in d.push(Bytes::copy_from_slice(part)).expect("valid") {
                    out.extend(Messages::new(whole).map(|(_, m)| m));
                }
            }
            assert_eq!(out.len(), 5, "cut at {cut}");
            assert_eq!(out[4].as_ref(), &[4u8; 12]);
            assert_eq!(d.pending(), 0);
        }
        // Byte by byte: every message still comes out whole, once.
        let mut d = Deframer::new(1024);
        let mut out = Vec::new();
        for b in &all {
            for whole in d.push(Bytes::copy_from_slice(&[*b])).expect("valid") {
                out.extend(Messages::new(whole).map(|(_, m)| m));
            }
        }
        assert_eq!(out.len(), 5);
        assert_eq!(out[3].as_ref(), &[3u8; 9]);
    }

    #[test]
    fn deframer_rejects_oversized_and_bad_flags() {
        let mut d = Deframer::new(4);
        assert_eq!(
            d.push(frame(b"hello")),
            Err(FrameError::TooLarge { len: 5, max: 4 })
        );
        // Also when the oversized header arrives split across chunks.
        let mut d = Deframer::new(4);
        assert!(d.push(Bytes::from_static(&[0, 0, 0])).is_ok());
        assert_eq!(
            d.push(Bytes::from_static(&[0, 9, 1])),
            Err(FrameError::TooLarge { len: 9, max: 4 })
        );
        let mut d = Deframer::new(4);
        assert_eq!(
            d.push(Bytes::from_static(&[7, 0, 0, 0, 0])),
            Err(FrameError::BadFlag(7))
        );
    }

    #[test]
    fn timeouts_round_trip() {
        for (text, d) in [
            ("1S", Duration::from_secs(1)),
            ("100m", Duration::from_millis(100)),
            ("5M", Duration::from_secs(300)),
        ] {
            assert_eq!(parse_timeout(&HeaderValue::from_static(text)), Some(d));
            assert_eq!(parse_timeout(&encode_timeout(d)), Some(d));
        }
        assert_eq!(parse_timeout(&HeaderValue::from_static("1x")), None);
        assert_eq!(parse_timeout(&HeaderValue::from_static("123456789S")), None);
    }

    #[test]
    fn status_messages_are_percent_encoded() {
        let t = status_trailers(14, "job 42: 100% gone\né");
        assert_eq!(
            t.get(GRPC_MESSAGE).map(|v| v.as_bytes()),
            Some(&b"job 42: 100%25 gone%0A%C3%A9"[..])
        );
        assert_eq!(status_of(&t), Some((14, "job 42: 100% gone\né".to_owned())));
    }
}
