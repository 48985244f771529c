//! The one shape every server stream has: items come from a lazy iterator (no task per stream,
//! no per-message allocation beyond the message itself), and between items the stream paces
//! itself (`--delay-us`), notices shutdown and injects the configured faults.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};
use tracing::{error, info};

use super::echo;
use super::faults::SignalFaults;

/// How long an `--exit-after` exit waits so the connection tasks can write what the streams
/// already produced: a client that keeps up then has all N messages.
const EXIT_FLUSH: Duration = Duration::from_millis(20);

/// Exit code of an `--exit-after` crash.
pub const EXIT_AFTER_CODE: i32 = 3;

/// State shared by every stream of the process.
#[derive(Debug)]
pub(crate) struct Streams {
    delay: Duration,
    exit_after: Option<u64>,
    unavailable_after: Option<u64>,
    sent_total: AtomicU64,
    shutdown: CancellationToken,
    faults: Arc<SignalFaults>,
}

struct State<I> {
    items: I,
    sent: u64,
    method: &'static str,
    echo: MetadataMap,
    streams: Arc<Streams>,
    /// The SIGUSR1 count when the stream began.
    unavailable_epoch: u64,
}

impl Streams {
    pub(crate) fn new(
        delay: Duration,
        exit_after: Option<u64>,
        unavailable_after: Option<u64>,
        shutdown: CancellationToken,
        faults: Arc<SignalFaults>,
    ) -> Self {
        Self {
            delay,
            exit_after,
            unavailable_after,
            sent_total: AtomicU64::new(0),
            shutdown,
            faults,
        }
    }

    /// Turns `items` into a response stream under this process's pacing and faults. A stream
    /// that ends early ends with a status carrying `echo`, so the echoed metadata still
    /// reaches the client (in the trailers).
    pub(crate) fn stream<T, I>(
        self: &Arc<Self>,
        items: I,
        method: &'static str,
        echo: MetadataMap,
    ) -> BoxStream<'static, Result<T, Status>>
    where
        I: Iterator<Item = T> + Send + 'static,
        T: Send + 'static,
    {
        let state = State {
            items,
            sent: 0,
            method,
            echo,
            streams: Arc::clone(self),
            unavailable_epoch: self.faults.unavailable_epoch(),
        };
        stream::unfold(Some(state), |state| async move {
            let mut state = state?;
            let streams = &*state.streams;
            if !streams.delay.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(streams.delay) => {}
                    () = streams.shutdown.cancelled() => {}
                }
            }
            // Pull before deciding on a fault: a stream with nothing left ends OK, so a client
            // that resumes after an injected fault eventually completes.
            let item = state.items.next()?;
            if streams.shutdown.is_cancelled() {
                let status = echo::status(Code::Unavailable, "server shutting down", &state.echo);
                return Some((Err(status), None));
            }
            if streams.faults.unavailable_epoch() != state.unavailable_epoch {
                info!(
                    method = state.method,
                    sent = state.sent,
                    "injecting UNAVAILABLE (SIGUSR1)"
                );
                let status =
                    echo::status(Code::Unavailable, "injected fault (SIGUSR1)", &state.echo);
                return Some((Err(status), None));
            }
            if let Some(limit) = streams.unavailable_after.filter(|&l| state.sent >= l) {
                info!(
                    method = state.method,
                    sent = state.sent,
                    "injecting UNAVAILABLE"
                );
                let message = format!("injected fault after {limit} messages");
                let status = echo::status(Code::Unavailable, message, &state.echo);
                return Some((Err(status), None));
            }
            streams.count_sent().await;
            state.sent += 1;
            Some((Ok(item), Some(state)))
        })
        .boxed()
    }

    /// Counts one message towards `--exit-after`, and crashes the process when it would be one
    /// too many.
    async fn count_sent(&self) {
        let before = self.sent_total.fetch_add(1, Ordering::Relaxed);
        let Some(limit) = self.exit_after else {
            return;
        };
        if before < limit {
            return;
        }
        if before == limit {
            error!(
                limit,
                "--exit-after reached: exiting abruptly without shutdown"
            );
        }
        // Park this stream (and any other that gets here) so the encoded messages are written,
        // then go without closing anything: the kernel resets the connections.
        tokio::time::sleep(EXIT_FLUSH).await;
        std::process::exit(EXIT_AFTER_CODE);
    }
}
