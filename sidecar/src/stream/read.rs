//! Whether the app has read what its call was handed, as far as its HTTP/2 library tells
//! (`crate::appwindow` keeps each stream's DATA and the window the app gave back for it), and
//! the two waits built on it: a SIGTERM handoff's, bounded by `handoff_read_wait`, before it
//! writes where the job stands; and a completed stream's, before its end is given to the app,
//! so that a job is `completed` only once the app has read it (the soak's finding 2).
//!
//! [`read_by`] decides from one stream's figures and is unit-tested without a runtime;
//! [`seen`] finds the call's stream; the waits poll them.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{appwindow::StreamFlow, listen::AppConnection, pipe::Pipe};

/// How often a wait looks again whether the app has read what it was handed.
const READ_POLL: Duration = Duration::from_millis(10);
/// An app that keeps up with its stream reads each message as it comes: it is taken to have
/// read the last one its lag after it was sent (the longest of its last few updates', times
/// [`READ_RATE_MARGIN`]), at least [`MIN_READ`].
const MIN_READ: Duration = Duration::from_millis(20);
/// How long a handoff waits on a stream the app has never given window back for, for its
/// first update. Nothing else says whether the app read any of it (an app that reads
/// everything at once sends none until a third of tonic's 2 MiB window is read), so without
/// one it is not read.
const FIRST_UPDATE_WAIT: Duration = Duration::from_millis(500);
/// An app that was behind within this long reads at the pace of its window updates.
const BEHIND_RECENTLY: Duration = Duration::from_secs(30);
/// How much longer than its measured rate says an app that is behind is given for its last
/// bytes.
const READ_RATE_MARGIN: f64 = 1.5;

/// Whether the app has read what the sidecar sent it on a stream, as far as its HTTP/2 library
/// tells. Its library gives the window back as the app's code reads, in steps (a quarter of the
/// window for grpc-go, half of what the sender may still send for h2 and nghttp2), so: all
/// given back is read; more than half the window not given back is not; and a stream it has
/// never given window back for is not either, since nothing measured how it reads (the
/// soak's finding 20: a slow app, 126 messages behind, taken to have read them half a second
/// after the last DATA). Within that, the app has read the rest once both of these say so:
/// its lag (how long after a byte was written its updates reached it) counted from the last
/// DATA; and, if it was behind recently (its updates came while it held most of its window
/// unread), the pace of its last two updates counted from the last. Both with a margin.
pub(super) fn read_by(f: &StreamFlow, window: u64, now: std::time::Instant) -> bool {
    let unacked = f.unacked();
    if unacked == 0 {
        return true;
    }
    if unacked > window / 2 {
        return false;
    }
    let Some(lag) = f.lag() else {
        return false;
    };
    let margin = |d: Duration| d.mul_f64(READ_RATE_MARGIN).max(MIN_READ);
    let kept_up = f.last_sent.map(|t| t + margin(lag));
    let behind = f
        .last_backlogged()
        .is_some_and(|t| now.saturating_duration_since(t) < BEHIND_RECENTLY);
    let paced = f.read_rate().filter(|_| behind).map(|(rate, at)| {
        at + Duration::try_from_secs_f64(READ_RATE_MARGIN * unacked as f64 / rate)
            .unwrap_or(BEHIND_RECENTLY)
    });
    kept_up.max(paced).is_some_and(|t| now >= t)
}

/// What the app has read of its call's DATA, now.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Seen {
    /// All of it, as far as [`read_by`] tells.
    Read,
    /// Not yet: `unacked` bytes not given back, on a stream whose reading was measured.
    Reading { unacked: u64 },
    /// The app never gave this stream's window back: nothing measures its reading.
    Unmeasured { unacked: u64 },
    /// Some of it is not yet written to the app's connection (hyper holds it, or the body has
    /// not yielded it), waiting for the app's window.
    Unwritten,
    /// No open stream of the connection has exactly what the body yielded.
    Unknown,
}

/// Finds the call's stream as the one whose DATA is exactly what its body yielded (the server's
/// side of hyper does not say which stream a call is) and judges it. Several calls that
/// yielded as much: the least any of them may have read.
fn seen(pipe: &Pipe, app: &AppConnection) -> Seen {
    let Some(yielded) = pipe.yielded_all() else {
        return Seen::Unwritten;
    };
    if yielded == 0 {
        return Seen::Read;
    }
    let flows = app.window.streams_with_sent(yielded);
    if flows.is_empty() {
        return if app.window.unwritten() > 0 {
            Seen::Unwritten
        } else {
            Seen::Unknown
        };
    }
    let (window, now) = (app.window.stream_window(), std::time::Instant::now());
    if flows.iter().all(|f| read_by(f, window, now)) {
        return Seen::Read;
    }
    let unacked = flows.iter().map(StreamFlow::unacked).max().unwrap_or(0);
    if flows.iter().any(|f| f.lag().is_none()) {
        Seen::Unmeasured { unacked }
    } else {
        Seen::Reading { unacked }
    }
}

/// What a shutdown's wait for the app to read what it was handed found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum HandedRead {
    /// As far as the app's window updates and read rate tell, it has read it all.
    Read,
    /// The app's connection closed first: what it held unread died with it.
    AppDied,
    /// `handoff_read_wait` ran out, or the app gave nothing back to measure it by, with
    /// `unacked` bytes not given back (`None`: hyper still held some, or the call's stream
    /// could not be told from another's).
    NotRead { unacked: Option<u64> },
}

impl EndRead {
    pub(super) fn label(self) -> &'static str {
        match self {
            EndRead::Read { waited: false } => "at_once",
            EndRead::Read { waited: true } => "read",
            EndRead::AppGone => "app_gone",
            EndRead::Shutdown => "shutdown",
        }
    }
}

impl HandedRead {
    pub(super) fn label(self) -> &'static str {
        match self {
            HandedRead::Read => "read",
            HandedRead::AppDied => "app_died",
            HandedRead::NotRead { .. } => "not_read",
        }
    }
}

/// A handoff's wait: up to `wait` until the app has read what the call's body handed its
/// connection, or its connection closes. A stream the app never gave window back for gets
/// [`FIRST_UPDATE_WAIT`] to give some.
pub(super) async fn handed_read(pipe: &Pipe, app: &AppConnection, wait: Duration) -> HandedRead {
    let began = Instant::now();
    let until = began + wait;
    loop {
        let unacked = match seen(pipe, app) {
            Seen::Read => return HandedRead::Read,
            Seen::Reading { unacked } => Some(unacked),
            Seen::Unmeasured { unacked } if Instant::now() >= began + FIRST_UPDATE_WAIT => {
                return HandedRead::NotRead {
                    unacked: Some(unacked),
                };
            }
            Seen::Unmeasured { unacked } => Some(unacked),
            Seen::Unwritten | Seen::Unknown => None,
        };
        if app.closed.is_cancelled() {
            return HandedRead::AppDied;
        }
        if Instant::now() >= until {
            return HandedRead::NotRead { unacked };
        }
        tokio::select! {
            _ = app.closed.cancelled() => {}
            _ = tokio::time::sleep(READ_POLL) => {}
        }
    }
}

/// What a completed stream's wait for the app to read up to its end found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum EndRead {
    /// Read (or nothing can tell: a stream never given window back, or one not found); at
    /// once, or after a wait.
    Read { waited: bool },
    /// The app's call went (its body was dropped: a cancel, or its connection closed).
    AppGone,
    /// The sidecar is shutting down: the handoff's wait takes over.
    Shutdown,
}

/// A completed stream's wait, before its end (the upstream's status) is handed to the app:
/// while its library shows it has not read what came before, as long as it takes. An app that
/// reads gets its end a moment after its last message (its lag, at least [`MIN_READ`]); one
/// that dies first leaves its job resumable where it surely was, instead of `completed` with
/// its tail unread, which its identical request would have run afresh from the start. A stream
/// the app never gave window back for ends at once: waiting would show nothing.
pub(super) async fn end_read(
    pipe: &Pipe,
    app: &AppConnection,
    app_gone: &CancellationToken,
    interrupt: &CancellationToken,
) -> EndRead {
    let mut waited = false;
    loop {
        match seen(pipe, app) {
            Seen::Read | Seen::Unmeasured { .. } | Seen::Unknown => {
                return EndRead::Read { waited };
            }
            Seen::Reading { .. } | Seen::Unwritten => {}
        }
        tokio::select! {
            _ = app_gone.cancelled() => return EndRead::AppGone,
            _ = interrupt.cancelled() => return EndRead::Shutdown,
            _ = tokio::time::sleep(READ_POLL) => {}
        }
        waited = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handed_data_is_read_once_the_window_is_given_back_or_the_apps_lag_and_pace_say_so() {
        let t0 = std::time::Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let w = 65_535u32;
        let flow = |sent, last_sent, credits: &[(std::time::Instant, u32)]| {
            StreamFlow::sent_and_credited(sent, last_sent, w, credits)
        };
        // All given back: read, at once.
        assert!(read_by(&flow(50_000, t0, &[(t0, 50_000)]), 65_535, t0));
        // More than half the window not given back: not read, however long.
        let f = flow(60_000, t0, &[(t0, 10_000)]);
        assert!(!read_by(&f, 65_535, ms(60_000)));
        // Behind (60,000 unread at its first update), then 10,000 more read in 100 ms:
        // 100,000 B/s, so the 30,000 left take 0.3 s, 0.45 s with the margin.
        let f = flow(60_000, t0, &[(t0, 20_000), (ms(100), 10_000)]);
        assert_eq!(f.unacked(), 30_000);
        assert!(!read_by(&f, 65_535, ms(100 + 440)));
        assert!(read_by(&f, 65_535, ms(100 + 451)));
        // 5,000 B/s: 6 s for the 30,000 left, 9 s with the margin.
        let slow = flow(60_000, t0, &[(t0, 20_000), (ms(2_000), 10_000)]);
        assert!(!read_by(&slow, 65_535, ms(2_000 + 8_900)));
        assert!(read_by(&slow, 65_535, ms(2_000 + 9_001)));
        // Kept up, its updates 40 ms after the data: 60 ms after the last DATA, however
        // slowly its updates came.
        let f = flow(30_000, ms(50), &[(ms(90), 16_384)]);
        assert!(!read_by(&f, 65_535, ms(100)));
        assert!(read_by(&f, 65_535, ms(110)));
        // No update yet: nothing says the app read any of it, however long ago it was sent.
        let f = flow(20_000, ms(50), &[]);
        assert!(!read_by(&f, 65_535, ms(60_000)));
        let trickle = flow(40_000, ms(90_000), &[(t0, 16_384), (ms(60_000), 16_384)]);
        assert!(read_by(&trickle, 65_535, ms(90_500)));
    }
}
