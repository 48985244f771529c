//! How much of a stream the app's HTTP/2 stack may hold unread: its flow-control window, as
//! the app's own SETTINGS frames give it, read off the bytes the app sends the sidecar.
//!
//! A message the sidecar hands to the app's connection is not yet in the app's code. It may sit
//! in hyper's send buffer, in the socket buffers or in the app's HTTP/2 library, and HTTP/2
//! flow control bounds all of that by the stream's window (what the app lets the sender have
//! unacknowledged). When the app dies, what it had not read is gone with it. So the job resumes
//! from a message at least that far behind what was handed over (`checkpoint::Slot::consumed`),
//! and the app gets those messages again rather than never.
//!
//! [`Tap`] wraps the app's TCP stream and parses only frame headers and the payloads of
//! SETTINGS and WINDOW_UPDATE frames from what the app sends. It forwards every byte unchanged,
//! and a frame it cannot parse only stops the parsing: the bound then stays at the largest value
//! seen.
//!
//! It also keeps, per HTTP/2 stream the sidecar is sending on, the DATA written and the window
//! the app gave back for it ([`StreamFlow`]): an app's HTTP/2 library returns a stream's window
//! as the app's code reads (grpc-go once a quarter of the window is read, h2 and nghttp2 once
//! half is), so what it has not given back is what it may hold unread. A SIGTERM handoff waits
//! on that before it says where the job stands (`stream::finish`).

use std::{
    collections::{HashMap, VecDeque},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::{
        Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// HTTP/2's initial values before any SETTINGS frame (RFC 9113, section 6.5.2).
const DEFAULT_WINDOW: u32 = 65_535;
const DEFAULT_MAX_FRAME: u32 = 16_384;
/// What hyper may hold for a stream beyond the app's window (`server.rs` sets
/// `max_send_buf_size` to this).
pub const SEND_BUFFER: u64 = 16 * 1024;
const PREFACE_LEN: usize = 24;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const WINDOW_UPDATE: u8 = 0x8;
const ACK: u8 = 0x1;
const END_STREAM: u8 = 0x1;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

/// The largest stream window and frame size the app has asked for on one connection, and the
/// connection's two addresses (the sidecar's first), to find its send queue.
#[derive(Debug)]
pub struct AppWindow {
    window: AtomicU32,
    max_frame: AtomicU32,
    addrs: Option<(SocketAddr, SocketAddr)>,
    /// DATA bytes every response body on the connection yielded to hyper, and DATA payload
    /// bytes hyper wrote to the socket: the difference is what hyper still holds.
    handed: AtomicU64,
    written: AtomicU64,
    /// The streams the sidecar has written DATA on and not yet ended, by stream id.
    streams: Mutex<HashMap<u32, StreamFlow>>,
}

/// One HTTP/2 stream's DATA the sidecar wrote to the app and the window the app gave back for
/// it (its WINDOW_UPDATE increments on the stream: what its library says its code consumed).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamFlow {
    pub sent: u64,
    pub credited: u64,
    /// When DATA was last written on it.
    pub last_sent: Option<Instant>,
    /// Writes of DATA not yet given back, sampled (written before, through, when): a write
    /// becomes a sample once `spacing` bytes or [`SAMPLE_EVERY`] have passed since the last
    /// one, so every write between two samples came within [`SAMPLE_EVERY`] of the first.
    /// That is how an update tells how long after it was written the app read the byte it
    /// reached.
    sends: VecDeque<(u64, u64, Instant)>,
    /// The app's latest update (when, and how much it gave back) and when the one before came.
    last_credit: Option<(Instant, u32)>,
    previous_credit: Option<Instant>,
    /// The latest update that came while the app held most of its window unread: the app's
    /// reading, not the data's arrival, set the pace then.
    last_backlogged: Option<Instant>,
    /// How long after they were written the app read the bytes its last few updates reached.
    lags: [Option<Duration>; LAGS],
    next_lag: usize,
}

/// Updates whose lag is remembered; samples of what was written, at most.
const LAGS: usize = 4;
const MAX_SEND_SAMPLES: usize = 128;
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

impl StreamFlow {
    fn new() -> Self {
        StreamFlow {
            sent: 0,
            credited: 0,
            last_sent: None,
            sends: VecDeque::new(),
            last_credit: None,
            previous_credit: None,
            last_backlogged: None,
            lags: [None; LAGS],
            next_lag: 0,
        }
    }

    /// A stream that was sent `sent` bytes, last at `last_sent`, and given these credits.
    #[cfg(test)]
    pub fn sent_and_credited(
        sent: u64,
        last_sent: Instant,
        window: u32,
        credits: &[(Instant, u32)],
    ) -> Self {
        let mut f = StreamFlow::new();
        f.sent(sent, last_sent, u64::MAX);
        for &(t, c) in credits {
            f.credit(c, t, window);
        }
        f
    }

    /// What the app received on the stream and has not said it consumed.
    pub fn unacked(&self) -> u64 {
        self.sent.saturating_sub(self.credited)
    }

    /// When the app last gave window back while it was behind (it held more than three
    /// quarters of its window unread).
    pub fn last_backlogged(&self) -> Option<Instant> {
        self.last_backlogged
    }

    /// Bytes per second the app's code read between its last two updates, and when the last
    /// came (`None` before two).
    pub fn read_rate(&self) -> Option<(f64, Instant)> {
        let ((t1, increment), t0) = (self.last_credit?, self.previous_credit?);
        let secs = t1.duration_since(t0).as_secs_f64();
        (secs > 0.0).then(|| (f64::from(increment) / secs, t1))
    }

    /// The longest of the last few lags between writing a byte and the app's update that
    /// reached it (`None` before an update).
    pub fn lag(&self) -> Option<Duration> {
        self.lags.iter().flatten().max().copied()
    }

    fn sent(&mut self, bytes: u64, now: Instant, spacing: u64) {
        let before = self.sent;
        self.sent += bytes;
        self.last_sent = Some(now);
        if self
            .sends
            .back()
            .is_none_or(|&(_, to, t)| self.sent >= to + spacing || now >= t + SAMPLE_EVERY)
        {
            self.sends.push_back((before, self.sent, now));
            if self.sends.len() > MAX_SEND_SAMPLES {
                self.sends.pop_front();
            }
        }
    }

    fn credit(&mut self, increment: u32, now: Instant, window: u32) {
        if self.unacked() > u64::from(window) / 4 * 3 {
            self.last_backlogged = Some(now);
        }
        self.credited += u64::from(increment);
        self.previous_credit = self.last_credit.map(|(t, _)| t);
        self.last_credit = Some((now, increment));
        // When the byte the update reached was written: in the first sampled write through it,
        // or else in a write less than SAMPLE_EVERY after the sample before (counted from that
        // sample: the lag is then at most SAMPLE_EVERY too long).
        let covering = self.sends.partition_point(|&(_, to, _)| to < self.credited);
        let written = match self.sends.get(covering) {
            Some(&(from, _, t)) if from < self.credited => Some(t),
            _ => self
                .sends
                .get(covering.wrapping_sub(1))
                .or(self.sends.front())
                .map(|&(_, _, t)| t),
        };
        if let Some(t) = written {
            self.lags[self.next_lag] = Some(now.saturating_duration_since(t));
            self.next_lag = (self.next_lag + 1) % LAGS;
        }
        self.sends.drain(..covering.saturating_sub(1));
    }
}

impl Default for AppWindow {
    fn default() -> Self {
        AppWindow {
            window: AtomicU32::new(DEFAULT_WINDOW),
            max_frame: AtomicU32::new(DEFAULT_MAX_FRAME),
            addrs: None,
            handed: AtomicU64::new(0),
            written: AtomicU64::new(0),
            streams: Mutex::new(HashMap::new()),
        }
    }
}

impl AppWindow {
    /// The window of a connection from `peer` to the sidecar's `local` address.
    pub fn for_connection(local: Option<SocketAddr>, peer: SocketAddr) -> Self {
        AppWindow {
            addrs: local.map(|l| (l, peer)),
            ..AppWindow::default()
        }
    }

    /// A response body on this connection yielded `bytes` of DATA to hyper.
    pub fn took(&self, bytes: u64) {
        self.handed.fetch_add(bytes, Ordering::Relaxed);
    }

    /// What hyper holds, not yet written to the socket (read before the socket's queue, so
    /// that nothing moving from one to the other between the two reads is missed).
    pub fn unwritten(&self) -> u64 {
        let written = self.written.load(Ordering::Acquire);
        self.handed.load(Ordering::Acquire).saturating_sub(written)
    }

    /// The most bytes of one stream that a sidecar killed now would leave undelivered: what
    /// hyper held (`unwritten`, read first) and what its kernel had not yet got acknowledged on
    /// the app's connection (`queues`, read from /proc after). What the app's kernel has is
    /// the app's to read, sidecar or not. Without the connection in `queues`, the whole window.
    pub fn unsent_bound(&self, unwritten: u64, queues: &SendQueues) -> u64 {
        match self.addrs.and_then(|a| queues.get(&a)) {
            Some(queued) => queued + unwritten,
            None => self.unread_bound(),
        }
    }

    /// The most bytes of one stream that can have been handed to the app's connection and not
    /// reached the app: its window, hyper's send buffer, and two frames for what the app's
    /// gRPC library has taken from HTTP/2 and not yet handed to the app's code. The caller adds
    /// the largest message, because a library may open the window for one message larger than
    /// the window.
    pub fn unread_bound(&self) -> u64 {
        u64::from(self.window.load(Ordering::Relaxed))
            + 2 * u64::from(self.max_frame.load(Ordering::Relaxed))
            + SEND_BUFFER
    }

    /// The open streams on which the sidecar has written exactly `sent` DATA bytes: those that
    /// may be the call whose body yielded that much (the server's side of hyper does not say
    /// which stream a call is; several calls may have yielded the same).
    pub fn streams_with_sent(&self, sent: u64) -> Vec<StreamFlow> {
        self.lock_streams()
            .values()
            .filter(|f| f.sent == sent)
            .cloned()
            .collect()
    }

    /// What the app may hold unread of a stream it has not given `unacked` bytes of window back
    /// for: those, and two frames its gRPC library took from HTTP/2 and has not yet handed on.
    pub fn unread_of(&self, unacked: u64) -> u64 {
        unacked + 2 * u64::from(self.max_frame.load(Ordering::Relaxed))
    }

    /// The app's stream window (the largest it asked for).
    pub fn stream_window(&self) -> u64 {
        u64::from(self.window.load(Ordering::Relaxed))
    }

    fn lock_streams(&self) -> std::sync::MutexGuard<'_, HashMap<u32, StreamFlow>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// DATA written in one write to the socket, by stream (taken out of `sent`): one lock and
    /// one clock read per write, however many frames it carried.
    fn sent_on(&self, sent: &mut Vec<(u32, u64)>) {
        if sent.is_empty() {
            return;
        }
        // Samples a sixteenth of the window apart: a window's worth of history in 16.
        let spacing = (self.stream_window() / 16).max(1024);
        let now = Instant::now();
        let mut streams = self.lock_streams();
        for (stream, bytes) in sent.drain(..) {
            streams
                .entry(stream)
                .or_insert_with(StreamFlow::new)
                .sent(bytes, now, spacing);
        }
    }

    /// A stream ended (END_STREAM from the sidecar, RST_STREAM either way): forgotten.
    fn ended(&self, stream: u32) {
        self.lock_streams().remove(&stream);
    }

    /// The app gave window back on a stream the sidecar is sending on (connection-level
    /// updates say nothing of one stream's reading: grpc-go sends them as it reads the socket).
    fn window_update(&self, stream: u32, increment: u32) {
        let window = self.window.load(Ordering::Relaxed);
        if let Some(f) = self.lock_streams().get_mut(&stream) {
            f.credit(increment, Instant::now(), window);
        }
    }

    fn settings(&self, payload: &[u8]) {
        for entry in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([entry[0], entry[1]]);
            let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
            match id {
                SETTINGS_INITIAL_WINDOW_SIZE => {
                    self.window.fetch_max(value, Ordering::Relaxed);
                }
                SETTINGS_MAX_FRAME_SIZE => {
                    self.max_frame.fetch_max(value, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    }
}

/// Bytes in each TCP connection's send queue not yet acknowledged by the peer, by (local,
/// remote) address: the `tx_queue` column of /proc/self/net/tcp and tcp6.
pub type SendQueues = HashMap<(SocketAddr, SocketAddr), u64>;

/// Reads the send queues of this network namespace's TCP sockets (empty where /proc has no
/// such files: off Linux every bound falls back to the window).
pub fn send_queues() -> SendQueues {
    let mut out = HashMap::new();
    for file in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(file) {
            parse_send_queues(&text, &mut out);
        }
    }
    out
}

fn parse_send_queues(text: &str, out: &mut SendQueues) {
    for line in text.lines().skip(1) {
        let mut f = line.split_whitespace();
        let (Some(_), Some(local), Some(remote), Some(_state), Some(queues)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let (Some(local), Some(remote)) = (proc_addr(local), proc_addr(remote)) else {
            continue;
        };
        let Some(tx) = queues
            .split_once(':')
            .and_then(|(tx, _)| u64::from_str_radix(tx, 16).ok())
        else {
            continue;
        };
        out.insert((local, remote), tx);
    }
}

/// `0100007F:1F91` (IPv4) or 32 hex digits and a port (IPv6): each 32-bit group is printed as
/// the host's integer of the network-order bytes, so it reads back little-endian.
fn proc_addr(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let group = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_le_bytes(),
        )
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(group(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&group(i)?);
            }
            let v6 = Ipv6Addr::from(b);
            // An IPv4 peer on a dual-stack socket: the address the sidecar was told.
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// An HTTP/2 frame header (9 bytes) gathered across reads or writes of any size.
#[derive(Debug, Default)]
struct FrameHeader {
    bytes: [u8; 9],
    have: usize,
}

impl FrameHeader {
    /// Takes what the header still lacks from the front of `bytes`; the whole header once it
    /// is complete (and starts over for the next one).
    fn fill(&mut self, bytes: &mut &[u8]) -> Option<[u8; 9]> {
        let n = (9 - self.have).min(bytes.len());
        self.bytes[self.have..self.have + n].copy_from_slice(&bytes[..n]);
        self.have += n;
        *bytes = &bytes[n..];
        (self.have == 9).then(|| {
            self.have = 0;
            self.bytes
        })
    }

    fn payload_len(h: [u8; 9]) -> usize {
        (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2])
    }

    fn stream(h: [u8; 9]) -> u32 {
        u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff
    }
}

/// Where the parser is in the app's byte stream.
#[derive(Debug)]
struct Parser {
    preface_left: usize,
    header: FrameHeader,
    payload_left: usize,
    /// The payload of the frame being read, for a SETTINGS (non-ACK) or WINDOW_UPDATE frame:
    /// its kind, its stream and the bytes so far.
    collecting: Option<(u8, u32, Vec<u8>)>,
    /// A frame longer than any SETTINGS frame can be: the stream is not HTTP/2 as this parser
    /// knows it, so it stops looking.
    stopped: bool,
}

/// SETTINGS payloads past this are not a real app's (each setting is 6 bytes).
const MAX_SETTINGS_PAYLOAD: usize = 6 * 64;

impl Parser {
    fn new() -> Self {
        Parser {
            preface_left: PREFACE_LEN,
            header: FrameHeader::default(),
            payload_left: 0,
            collecting: None,
            stopped: false,
        }
    }

    fn feed(&mut self, mut bytes: &[u8], window: &AppWindow) {
        while !bytes.is_empty() && !self.stopped {
            if self.preface_left > 0 {
                let n = self.preface_left.min(bytes.len());
                self.preface_left -= n;
                bytes = &bytes[n..];
            } else if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                if let Some((_, _, payload)) = &mut self.collecting {
                    payload.extend_from_slice(&bytes[..n]);
                }
                self.payload_left -= n;
                bytes = &bytes[n..];
                if self.payload_left == 0 {
                    self.end_frame(window);
                }
            } else if let Some(header) = self.header.fill(&mut bytes) {
                self.begin_frame(header, window);
            }
        }
    }

    fn begin_frame(&mut self, h: [u8; 9], window: &AppWindow) {
        let len = FrameHeader::payload_len(h);
        let (kind, flags, stream) = (h[3], h[4], FrameHeader::stream(h));
        self.payload_left = len;
        self.collecting = None;
        match kind {
            SETTINGS if flags & ACK == 0 => {
                if len > MAX_SETTINGS_PAYLOAD {
                    self.stopped = true;
                    return;
                }
                self.collecting = Some((kind, stream, Vec::with_capacity(len)));
            }
            WINDOW_UPDATE if stream != 0 && len == 4 => {
                self.collecting = Some((kind, stream, Vec::with_capacity(4)));
            }
            RST_STREAM => window.ended(stream),
            _ => {}
        }
        if len == 0 {
            self.end_frame(window);
        }
    }

    fn end_frame(&mut self, window: &AppWindow) {
        match self.collecting.take() {
            Some((SETTINGS, _, payload)) => window.settings(&payload),
            Some((WINDOW_UPDATE, stream, payload)) => {
                if let Ok(b) = <[u8; 4]>::try_from(payload.as_slice()) {
                    // The top bit is reserved.
                    window.window_update(stream, u32::from_be_bytes(b) & 0x7fff_ffff);
                }
            }
            _ => {}
        }
    }
}

/// Counts the DATA payload bytes in what hyper writes (the server's side has no preface), in
/// all and per stream, and forgets each stream hyper ends.
#[derive(Debug, Default)]
struct DataCounter {
    header: FrameHeader,
    payload_left: usize,
    /// The frame being written is DATA.
    data: bool,
    /// Its stream, while that stream is open (its last DATA frame counts only in all).
    stream: Option<u32>,
    /// DATA per stream in the write being fed, for [`AppWindow::sent_on`] (kept to reuse).
    sent: Vec<(u32, u64)>,
}

impl DataCounter {
    fn feed(&mut self, mut bytes: &[u8], window: &AppWindow) -> u64 {
        let mut counted = 0;
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                if self.data {
                    counted += n as u64;
                }
                if let Some(stream) = self.stream {
                    match self.sent.last_mut() {
                        Some((s, bytes)) if *s == stream => *bytes += n as u64,
                        _ => self.sent.push((stream, n as u64)),
                    }
                }
                self.payload_left -= n;
                bytes = &bytes[n..];
            } else if let Some(h) = self.header.fill(&mut bytes) {
                self.payload_left = FrameHeader::payload_len(h);
                let (kind, flags, stream) = (h[3], h[4], FrameHeader::stream(h));
                // hyper never pads DATA frames, so the payload is all data.
                self.data = kind == DATA;
                self.stream = self.data.then_some(stream);
                let ends = match kind {
                    DATA | HEADERS => flags & END_STREAM != 0,
                    RST_STREAM => true,
                    _ => false,
                };
                if ends {
                    self.stream = None;
                    // What came before on the stream first, or it would outlive its end.
                    window.sent_on(&mut self.sent);
                    window.ended(stream);
                }
            }
        }
        window.sent_on(&mut self.sent);
        counted
    }
}

/// The app's connection, read through the parser, its writes counted.
pub struct Tap<S> {
    inner: S,
    parser: Parser,
    written: DataCounter,
    window: std::sync::Arc<AppWindow>,
}

impl<S> Tap<S> {
    pub fn new(inner: S, window: std::sync::Arc<AppWindow>) -> Self {
        Tap {
            inner,
            parser: Parser::new(),
            written: DataCounter::default(),
            window,
        }
    }

    fn wrote(&mut self, bytes: &[u8]) {
        let n = self.written.feed(bytes, &self.window);
        if n > 0 {
            self.window.written.fetch_add(n, Ordering::Release);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            this.parser.feed(&buf.filled()[before..], &this.window);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            this.wrote(&buf[..n]);
        }
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = res {
            for b in bufs {
                if n == 0 {
                    break;
                }
                let take = n.min(b.len());
                this.wrote(&b[..take]);
                n -= take;
            }
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A response body whose DATA is counted as handed to hyper on its connection (every call's,
/// pass-through ones too, so that `AppWindow::unwritten` matches what hyper writes).
pub fn counted(
    body: crate::grpc::ProxyBody,
    window: std::sync::Arc<AppWindow>,
) -> crate::grpc::ProxyBody {
    use http_body_util::BodyExt as _;
    Counted {
        inner: body,
        window,
    }
    .boxed_unsync()
}

struct Counted {
    inner: crate::grpc::ProxyBody,
    window: std::sync::Arc<AppWindow>,
}

impl http_body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = crate::grpc::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &res
            && let Some(data) = frame.data_ref()
        {
            self.window.took(data.len() as u64);
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn setting(id: u16, value: u32) -> Vec<u8> {
        let mut s = id.to_be_bytes().to_vec();
        s.extend_from_slice(&value.to_be_bytes());
        s
    }

    /// A client's first bytes: the preface, its SETTINGS, a WINDOW_UPDATE, HEADERS, a
    /// SETTINGS ACK and a later SETTINGS that grows the window (as grpc-go's BDP estimator does).
    fn client_bytes() -> Vec<u8> {
        let mut b = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let mut s = setting(SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20);
        s.extend(setting(SETTINGS_MAX_FRAME_SIZE, 32_768));
        s.extend(setting(0x3, 100));
        b.extend(frame(SETTINGS, 0, 0, &s));
        b.extend(frame(0x8, 0, 0, &5_000_000u32.to_be_bytes()));
        b.extend(frame(0x1, 0x4, 1, &[0x82, 0x86, 0x84]));
        b.extend(frame(SETTINGS, ACK, 0, &[]));
        b.extend(frame(0x0, 0x1, 1, &[0, 0, 0, 0, 2, 8, 1]));
        b.extend(frame(
            SETTINGS,
            0,
            0,
            &setting(SETTINGS_INITIAL_WINDOW_SIZE, 4 << 20),
        ));
        b
    }

    #[test]
    fn the_largest_window_and_frame_the_app_asked_for_whatever_the_read_sizes() {
        let bytes = client_bytes();
        for step in [1, 2, 5, 9, 24, 1000] {
            let w = AppWindow::default();
            let mut p = Parser::new();
            for chunk in bytes.chunks(step) {
                p.feed(chunk, &w);
            }
            assert_eq!(w.window.load(Ordering::Relaxed), 4 << 20, "step {step}");
            assert_eq!(w.max_frame.load(Ordering::Relaxed), 32_768, "step {step}");
            assert!(!p.stopped);
        }
    }

    #[test]
    fn send_queues_are_read_from_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:3A99 0100007F:C350 01 0001E240:00000000 00:00000000 00000000     0        0 1 1 0 20 4 30 10 -1\n\
   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n";
        let mut q = SendQueues::new();
        parse_send_queues(text, &mut q);
        let key: (SocketAddr, SocketAddr) = (
            "127.0.0.1:15001".parse().expect("addr"),
            "127.0.0.1:50000".parse().expect("addr"),
        );
        assert_eq!(q.get(&key), Some(&123_456));
        let six = "x\n   0: 0000000000000000FFFF00000100007F:3A99 0000000000000000FFFF00000100007F:C350 01 00000010:00000000 00:0 0 0 0 1\n";
        let mut q = SendQueues::new();
        parse_send_queues(six, &mut q);
        assert_eq!(q.get(&key), Some(&16));
        let w = AppWindow::for_connection(Some(key.0), key.1);
        assert_eq!(w.unsent_bound(100, &q), 16 + 100);
        assert_eq!(w.unsent_bound(100, &SendQueues::new()), w.unread_bound());
        // This process's own table parses (whatever it holds).
        let _ = send_queues();
    }

    #[test]
    fn only_data_payload_is_counted_as_written_whatever_the_write_sizes() {
        let mut bytes = frame(SETTINGS, 0, 0, &setting(SETTINGS_MAX_FRAME_SIZE, 1 << 20));
        bytes.extend(frame(0x1, 0x4, 1, &[0x88]));
        bytes.extend(frame(0x0, 0, 1, &[7; 1000]));
        bytes.extend(frame(0x6, 0, 0, &[0; 8]));
        bytes.extend(frame(0x0, 0x1, 3, &[7; 17]));
        for step in [1, 3, 9, 100, 5000] {
            let mut c = DataCounter::default();
            let w = AppWindow::default();
            let n: u64 = bytes.chunks(step).map(|b| c.feed(b, &w)).sum();
            assert_eq!(n, 1017, "step {step}");
        }
    }

    #[test]
    fn each_open_stream_keeps_its_data_sent_and_the_window_the_app_gave_back() {
        let w = AppWindow::default();
        let mut out = frame(0x1, 0x4, 1, &[0x88]);
        out.extend(frame(DATA, 0, 1, &[7; 1000]));
        out.extend(frame(DATA, 0, 3, &[7; 300]));
        out.extend(frame(DATA, 0, 5, &[7; 300]));
        out.extend(frame(DATA, 0, 1, &[7; 500]));
        out.extend(frame(HEADERS, 0x5, 3, &[0x88]));
        // The end of stream 7 counts in all, not on the stream, which is gone.
        out.extend(frame(DATA, 0x1, 7, &[7; 40]));
        let mut c = DataCounter::default();
        let written: u64 = out.chunks(7).map(|b| c.feed(b, &w)).sum();
        assert_eq!(written, 2140);

        let mut app = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        app.extend(frame(SETTINGS, 0, 0, &[]));
        // A connection-level update says nothing of one stream.
        app.extend(frame(WINDOW_UPDATE, 0, 0, &900u32.to_be_bytes()));
        app.extend(frame(WINDOW_UPDATE, 0, 1, &600u32.to_be_bytes()));
        app.extend(frame(
            WINDOW_UPDATE,
            0,
            1,
            &(0x8000_0000u32 | 300).to_be_bytes(),
        ));
        // Ended streams and streams never sent on are not kept.
        app.extend(frame(WINDOW_UPDATE, 0, 3, &300u32.to_be_bytes()));
        app.extend(frame(WINDOW_UPDATE, 0, 9, &300u32.to_be_bytes()));
        app.extend(frame(RST_STREAM, 0, 5, &8u32.to_be_bytes()));
        let mut p = Parser::new();
        for chunk in app.chunks(5) {
            p.feed(chunk, &w);
        }
        let flows = w.streams_with_sent(1500);
        assert_eq!(flows.len(), 1);
        assert_eq!(
            (flows[0].sent, flows[0].credited, flows[0].unacked()),
            (1500, 900, 600)
        );
        assert!(w.streams_with_sent(300).is_empty(), "3 ended, 5 was reset");
        assert_eq!(w.lock_streams().len(), 1);
        assert_eq!(w.stream_window(), 65_535);
    }

    #[test]
    fn the_read_rate_is_the_last_update_over_the_time_since_the_one_before() {
        let t0 = Instant::now();
        let later = t0 + std::time::Duration::from_millis(500);
        let mut f = StreamFlow::sent_and_credited(60_000, t0, 65_535, &[(t0, 1000)]);
        assert_eq!(f.read_rate(), None, "one update is no rate");
        assert_eq!(f.last_backlogged(), Some(t0), "60,000 of 65,535 unread");
        f.credit(2000, later, 65_535);
        let (rate, at) = f.read_rate().expect("two updates");
        assert!((rate - 4000.0).abs() < 1e-6, "{rate}");
        assert_eq!(at, later);
        assert_eq!(f.unacked(), 57_000);
        let f = StreamFlow::sent_and_credited(20_000, t0, 65_535, &[(t0, 16_384)]);
        assert_eq!(f.last_backlogged(), None, "it kept up");
    }

    #[test]
    fn the_lag_is_how_long_after_a_byte_was_written_an_update_reached_it() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + std::time::Duration::from_millis(n);
        let mut f = StreamFlow::new();
        for i in 0..40u64 {
            // 1 KiB every 10 ms: every write is a sample.
            f.sent(1024, ms(i * 10), 1 << 20);
        }
        assert_eq!(f.lag(), None);
        // Byte 16,384 was written at 150 ms (the 16th KiB).
        f.credit(16_384, ms(250), 65_535);
        assert_eq!(f.lag(), Some(std::time::Duration::from_millis(100)));
        assert_eq!(
            f.sends.len(),
            26,
            "samples behind the one before the credit are dropped"
        );
        f.credit(40_960 - 16_384, ms(400), 65_535);
        assert_eq!(
            f.lag(),
            Some(std::time::Duration::from_millis(100)),
            "the longest of the last"
        );
        // Writes less than SAMPLE_EVERY apart: a byte between samples counts from the one
        // before.
        let mut g = StreamFlow::new();
        for i in 0..10u64 {
            g.sent(100, ms(i), 1 << 20);
        }
        assert_eq!(g.sends.len(), 1);
        g.credit(500, ms(30), 65_535);
        assert_eq!(g.lag(), Some(std::time::Duration::from_millis(30)));
        // Four quick updates later the slow one is forgotten.
        for t in [500u64, 600, 700, 800] {
            f.sent(4096, ms(t), 4096);
            f.credit(4096, ms(t + 5), 65_535);
        }
        assert_eq!(f.lag(), Some(std::time::Duration::from_millis(5)));
    }

    #[test]
    fn defaults_until_settings_say_otherwise_and_garbage_only_stops_the_parser() {
        let w = AppWindow::default();
        assert_eq!(w.unread_bound(), 65_535 + 2 * 16_384 + SEND_BUFFER);
        let mut p = Parser::new();
        let mut b = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        b.extend(frame(SETTINGS, 0, 0, &vec![0xff; 4096]));
        b.extend(frame(
            SETTINGS,
            0,
            0,
            &setting(SETTINGS_INITIAL_WINDOW_SIZE, 1 << 30),
        ));
        p.feed(&b, &w);
        assert!(p.stopped);
        assert_eq!(w.window.load(Ordering::Relaxed), 65_535);
    }
}
