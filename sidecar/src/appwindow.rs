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
//! SETTINGS frames from what the app sends. It forwards every byte unchanged, and a frame it
//! cannot parse only stops the parsing: the bound then stays at the largest value seen.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// HTTP/2's initial values before any SETTINGS frame (RFC 9113, section 6.5.2).
const DEFAULT_WINDOW: u32 = 65_535;
const DEFAULT_MAX_FRAME: u32 = 16_384;
/// What hyper may hold for a stream beyond the app's window (`server.rs` sets
/// `max_send_buf_size` to this).
pub const SEND_BUFFER: u64 = 16 * 1024;
const PREFACE_LEN: usize = 24;
const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;
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
}

impl Default for AppWindow {
    fn default() -> Self {
        AppWindow {
            window: AtomicU32::new(DEFAULT_WINDOW),
            max_frame: AtomicU32::new(DEFAULT_MAX_FRAME),
            addrs: None,
            handed: AtomicU64::new(0),
            written: AtomicU64::new(0),
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
}

/// Where the parser is in the app's byte stream.
#[derive(Debug)]
struct Parser {
    preface_left: usize,
    header: FrameHeader,
    payload_left: usize,
    settings: Option<Vec<u8>>,
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
            settings: None,
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
                if let Some(s) = &mut self.settings {
                    s.extend_from_slice(&bytes[..n]);
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
        let (kind, flags) = (h[3], h[4]);
        self.payload_left = len;
        self.settings = None;
        if kind == SETTINGS && flags & ACK == 0 {
            if len > MAX_SETTINGS_PAYLOAD {
                self.stopped = true;
                return;
            }
            self.settings = Some(Vec::with_capacity(len));
        }
        if len == 0 {
            self.end_frame(window);
        }
    }

    fn end_frame(&mut self, window: &AppWindow) {
        if let Some(payload) = self.settings.take() {
            window.settings(&payload);
        }
    }
}

/// Counts the DATA payload bytes in what hyper writes (the server's side has no preface).
#[derive(Debug, Default)]
struct DataCounter {
    header: FrameHeader,
    payload_left: usize,
    data: bool,
}

impl DataCounter {
    fn feed(&mut self, mut bytes: &[u8]) -> u64 {
        let mut counted = 0;
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                if self.data {
                    counted += n as u64;
                }
                self.payload_left -= n;
                bytes = &bytes[n..];
            } else if let Some(h) = self.header.fill(&mut bytes) {
                self.payload_left = FrameHeader::payload_len(h);
                // hyper never pads DATA frames, so the payload is all data.
                self.data = h[3] == 0x0;
            }
        }
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
        let n = self.written.feed(bytes);
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
            let n: u64 = bytes.chunks(step).map(|b| c.feed(b)).sum();
            assert_eq!(n, 1017, "step {step}");
        }
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
