//! Faults injected while the server runs, by signal (`--faults-on-signal`), for soaks that
//! break streams at moments of their choosing:
//!
//! - SIGUSR1: every stream in flight ends with `UNAVAILABLE` before its next message (a server
//!   that sheds load); streams that start later are not touched.
//! - SIGUSR2: every response in flight is reset (HTTP/2 `RST_STREAM` with `INTERNAL_ERROR`, as
//!   a proxy or a crashing handler leaves it) before its next frame.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tracing::info;

/// The number of each fault injected so far: a stream or response compares it with the
/// number it saw when it began.
#[derive(Debug, Default)]
pub struct SignalFaults {
    unavailable: AtomicU64,
    reset: AtomicU64,
}

impl SignalFaults {
    pub fn unavailable_epoch(&self) -> u64 {
        self.unavailable.load(Ordering::Acquire)
    }

    pub fn reset_epoch(&self) -> u64 {
        self.reset.load(Ordering::Acquire)
    }

    pub fn inject_unavailable(&self) {
        let n = self.unavailable.fetch_add(1, Ordering::AcqRel) + 1;
        info!(n, "SIGUSR1: ending every stream in flight with UNAVAILABLE");
    }

    pub fn inject_reset(&self) {
        let n = self.reset.fetch_add(1, Ordering::AcqRel) + 1;
        info!(n, "SIGUSR2: resetting every response in flight");
    }
}

/// Why a response was reset: hyper answers a body error with `RST_STREAM`.
#[derive(Debug, thiserror::Error)]
#[error("injected reset (SIGUSR2)")]
pub struct InjectedReset;

/// A response body that fails (so its stream is reset) once a reset was injected after the
/// response began.
pub struct ResettableBody {
    inner: tonic::body::Body,
    epoch: u64,
    faults: Arc<SignalFaults>,
}

impl ResettableBody {
    pub fn wrap(inner: tonic::body::Body, faults: Arc<SignalFaults>) -> tonic::body::Body {
        let epoch = faults.reset_epoch();
        tonic::body::Body::new(ResettableBody {
            inner,
            epoch,
            faults,
        })
    }
}

impl Body for ResettableBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.faults.reset_epoch() != self.epoch {
            return Poll::Ready(Some(Err(Box::new(InjectedReset))));
        }
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
