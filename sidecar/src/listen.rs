//! Accepting connections, the same way on every listener (the app's and the admin one).
//!
//! - An accept error (out of file descriptors, `EMFILE`/`ENFILE`, is the usual one) backs off
//!   exponentially from 5 ms to 1 s, reset by the next success, so a listener never spins; the
//!   warning is written at most once a second, with the number of errors it stands for.
//! - A connection that sends nothing within `preface_timeout` is closed (a port scanner, a
//!   client stuck before its first byte): it would hold a file descriptor forever otherwise.
//! - The app listener holds at most `max_app_connections` open; one more is closed at once.
//!
//! Every refusal is counted (`reprise_accept_errors_total`, `reprise_connections_closed_total`).

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use prometheus_client::metrics::counter::Counter;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};

use crate::admin::{ClosedLabels, ListenerLabels, Metrics};

const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one warning per listener per this long.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Binds `addr` for the configuration key `key`; the error names the key (exit 2: a port in use
/// is a configuration problem, as linkerd2-proxy and Envoy report it).
pub async fn bind(key: &str, addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("key `{key}`: cannot listen on {addr}: {e}"))
}

/// The exponential backoff and the rate limit of the warning, apart from any socket.
#[derive(Debug)]
pub struct ErrorPacer {
    backoff: Duration,
    last_log: Option<Instant>,
    suppressed: u64,
}

impl Default for ErrorPacer {
    fn default() -> Self {
        ErrorPacer {
            backoff: BACKOFF_MIN,
            last_log: None,
            suppressed: 0,
        }
    }
}

impl ErrorPacer {
    /// An error at `now`: how long to pause, and `Some(errors)` when a warning is due, standing
    /// for that many errors (this one and those suppressed since the last warning).
    pub fn failed(&mut self, now: Instant) -> (Duration, Option<u64>) {
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        self.suppressed += 1;
        let due = self
            .last_log
            .is_none_or(|at| now.duration_since(at) >= LOG_EVERY);
        if !due {
            return (pause, None);
        }
        self.last_log = Some(now);
        let errors = std::mem::take(&mut self.suppressed);
        (pause, Some(errors))
    }

    pub fn succeeded(&mut self) {
        self.backoff = BACKOFF_MIN;
    }
}

/// A listener that accepts with backoff and counts what it refuses.
pub struct Listener {
    inner: TcpListener,
    name: &'static str,
    pacer: ErrorPacer,
    errors: Counter,
    silent: Counter,
    preface_timeout: Duration,
    /// The app listener's bound on open connections.
    slots: Option<(Arc<Semaphore>, Counter)>,
}

/// An accepted connection; holds its place under the connection limit until dropped.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    _slot: Option<OwnedSemaphorePermit>,
    preface_timeout: Duration,
    silent: Counter,
}

impl Accepted {
    /// Waits for the connection's first byte, at most `preface_timeout`. False (and counted)
    /// when the peer sent nothing or closed: the caller drops the connection.
    pub async fn spoke(&self) -> bool {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(self.preface_timeout, self.stream.peek(&mut byte)).await {
            Ok(Ok(n)) if n > 0 => true,
            Ok(_) => false,
            Err(_) => {
                self.silent.inc();
                tracing::debug!(peer = %self.peer, timeout = ?self.preface_timeout, "closed a connection that sent nothing");
                false
            }
        }
    }
}

impl Listener {
    pub fn new(
        inner: TcpListener,
        name: &'static str,
        metrics: &Metrics,
        preface_timeout: Duration,
    ) -> Self {
        Listener {
            inner,
            name,
            pacer: ErrorPacer::default(),
            errors: metrics
                .accept_errors
                .get_or_create(&ListenerLabels { listener: name })
                .clone(),
            silent: metrics
                .connections_closed
                .get_or_create(&ClosedLabels {
                    listener: name,
                    reason: "silent",
                })
                .clone(),
            preface_timeout,
            slots: None,
        }
    }

    /// Holds at most `max` connections open at once; past it, new ones are closed at once.
    pub fn limit(mut self, max: usize, metrics: &Metrics) -> Self {
        let refused = metrics
            .connections_closed
            .get_or_create(&ClosedLabels {
                listener: self.name,
                reason: "limit",
            })
            .clone();
        self.slots = Some((Arc::new(Semaphore::new(max)), refused));
        self
    }

    /// The next connection under the limit. Errors never end the loop: they pause it.
    pub async fn accept(&mut self) -> Accepted {
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) => {
                    self.pacer.succeeded();
                    let slot = match &self.slots {
                        None => None,
                        Some((slots, refused)) => match slots.clone().try_acquire_owned() {
                            Ok(permit) => Some(permit),
                            Err(_) => {
                                refused.inc();
                                tracing::debug!(%peer, listener = self.name, "connection limit reached; closed a new connection");
                                continue;
                            }
                        },
                    };
                    return Accepted {
                        stream,
                        peer,
                        _slot: slot,
                        preface_timeout: self.preface_timeout,
                        silent: self.silent.clone(),
                    };
                }
                Err(e) => {
                    self.errors.inc();
                    let (pause, log) = self.pacer.failed(Instant::now());
                    if let Some(errors) = log {
                        tracing::warn!(
                            listener = self.name,
                            error = %e,
                            errors,
                            pause_ms = pause.as_millis() as u64,
                            "accept failed; backing off"
                        );
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_back_off_and_warn_once_a_second_with_a_count() {
        let mut pacer = ErrorPacer::default();
        let t0 = Instant::now();
        assert_eq!(pacer.failed(t0), (Duration::from_millis(5), Some(1)));
        let mut pauses = Vec::new();
        for i in 1..=10 {
            let (pause, log) = pacer.failed(t0 + Duration::from_millis(i));
            assert_eq!(log, None, "suppressed within the second");
            pauses.push(pause.as_millis());
        }
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        let (_, log) = pacer.failed(t0 + Duration::from_secs(1));
        assert_eq!(
            log,
            Some(11),
            "the warning stands for every error since the last"
        );
        pacer.succeeded();
        let (pause, log) = pacer.failed(t0 + Duration::from_millis(1500));
        assert_eq!((pause, log), (Duration::from_millis(5), None));
    }
}
