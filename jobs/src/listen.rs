//! Accepting TCP connections without spinning or flooding the log when `accept` fails.
//!
//! When a process runs out of file descriptors (`EMFILE`, `ENFILE`) or kernel buffers, every
//! `accept` fails at once and keeps failing while the connection that could not be taken waits
//! in the backlog: a plain `loop { accept }` spins a core and writes a log line per turn. An
//! [`Acceptor`] backs off exponentially (5 ms doubling to 1 s, reset by the next success) and
//! logs at most one line per second, counting the failures it did not log. An error that
//! concerns one connection only (aborted or reset before it was taken) is retried at once.
//!
//! The state lives in the acceptor rather than in one call, so failures that alternate with
//! successes are rate-limited too. [`AcceptBackoff`] holds the decisions, with no I/O and no
//! clock of its own.

use std::{
    io,
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::net::{TcpListener, TcpStream};

/// The first wait after a failed accept.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// At most one log line per this long.
pub const LOG_EVERY: Duration = Duration::from_secs(1);

/// A listener whose [`accept`](Acceptor::accept) never fails: it waits out errors instead.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    label: &'static str,
    backoff: AcceptBackoff,
    failures: u64,
}

impl Acceptor {
    /// `label` names the listener in log lines (`admin`, `app`).
    pub fn new(listener: TcpListener, label: &'static str) -> Self {
        Self {
            listener,
            label,
            backoff: AcceptBackoff::default(),
            failures: 0,
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Failed accepts so far, for a metric.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// The next connection. Cancel-safe: dropped during a backoff, the next call waits no less.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(accepted) => {
                    if let Some(unlogged) = self.backoff.succeeded(Instant::now()) {
                        tracing::info!(
                            listener = self.label,
                            unlogged,
                            "accepting connections again"
                        );
                    }
                    return accepted;
                }
                Err(e) if concerns_one_connection(&e) => {
                    tracing::debug!(listener = self.label, error = %e, "accept: connection lost before it was taken");
                }
                Err(e) => {
                    self.failures += 1;
                    let failed = self.backoff.failed(Instant::now());
                    if let Some(unlogged) = failed.log {
                        tracing::warn!(
                            listener = self.label,
                            error = %e,
                            retry_in_ms = u64::try_from(failed.wait.as_millis()).unwrap_or(u64::MAX),
                            unlogged,
                            "accept failed (out of file descriptors?); backing off"
                        );
                    }
                    tokio::time::sleep(failed.wait).await;
                }
            }
        }
    }
}

/// Errors that end one connection and say nothing about the listener.
fn concerns_one_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// How long to wait after a failed accept, and when to log.
#[derive(Debug, Default, Clone)]
pub struct AcceptBackoff {
    /// The last wait; zero after a success.
    delay: Duration,
    logged_at: Option<Instant>,
    /// Failures since the last line that no line mentioned.
    unlogged: u64,
}

/// What to do after one failed accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptFailed {
    pub wait: Duration,
    /// `Some(n)`: log this failure, saying that `n` earlier ones were not logged.
    pub log: Option<u64>,
}

impl AcceptBackoff {
    /// One failed accept at `now`.
    pub fn failed(&mut self, now: Instant) -> AcceptFailed {
        self.delay = if self.delay.is_zero() {
            FIRST_BACKOFF
        } else {
            (self.delay * 2).min(MAX_BACKOFF)
        };
        let log = self
            .may_log(now)
            .then(|| std::mem::take(&mut self.unlogged));
        if log.is_none() {
            self.unlogged += 1;
        }
        AcceptFailed {
            wait: self.delay,
            log,
        }
    }

    /// A successful accept at `now`: the backoff starts over. `Some(n)` when `n` failures
    /// were not logged and a line may be written now.
    pub fn succeeded(&mut self, now: Instant) -> Option<u64> {
        self.delay = Duration::ZERO;
        (self.unlogged > 0 && self.may_log(now)).then(|| std::mem::take(&mut self.unlogged))
    }

    fn may_log(&mut self, now: Instant) -> bool {
        let due = self
            .logged_at
            .is_none_or(|at| now.saturating_duration_since(at) >= LOG_EVERY);
        if due {
            self.logged_at = Some(now);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn waits_double_from_5ms_to_1s_and_start_over_after_a_success() {
        let mut b = AcceptBackoff::default();
        let t0 = Instant::now();
        let waits: Vec<u64> = (0..10)
            .map(|i| b.failed(t0 + ms(i)).wait.as_millis() as u64)
            .collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded(t0 + ms(20));
        assert_eq!(b.failed(t0 + ms(30)).wait, FIRST_BACKOFF);
    }

    #[test]
    fn one_line_per_second_counting_the_failures_not_logged() {
        let mut b = AcceptBackoff::default();
        let t0 = Instant::now();
        // A failure every 100 ms for 3 s.
        let logged: Vec<(u64, u64)> = (0..30u64)
            .filter_map(|i| b.failed(t0 + ms(i * 100)).log.map(|n| (i, n)))
            .collect();
        assert_eq!(logged, [(0, 0), (10, 9), (20, 9)]);
    }

    #[test]
    fn failures_between_successes_are_rate_limited_too() {
        let mut b = AcceptBackoff::default();
        let t0 = Instant::now();
        let mut lines = 0;
        for i in 0..100u64 {
            let at = t0 + ms(i * 10);
            lines += usize::from(b.failed(at).log.is_some());
            lines += usize::from(b.succeeded(at + ms(1)).is_some());
        }
        assert_eq!(lines, 1, "one line in the first second");
        assert_eq!(b.succeeded(t0 + ms(1000)), Some(99), "then the count");
        assert_eq!(b.succeeded(t0 + ms(2000)), None, "nothing left to say");
    }
}
