//! The data path of a resumable call: the app's response body reads the upstream itself.
//!
//! While an attempt streams, its upstream body and deframer sit in the `Pipe`, and the
//! app's `AppBody` drives them: each time hyper asks for the next frame for the app, the
//! body reads an upstream frame, filters it and hands it over in the same poll. A chunk
//! crosses no task between the two connections, and only when the app's stream has room is
//! the upstream read: what the app cannot take yet stays unread under the upstream's
//! flow-control window. (A stream task in between, with a queue to the body, cost one more
//! task wake-up and queue trip per chunk: docs/benchmarks.md, "The data path in the body".)
//!
//! The stream task keeps the control: it opens each attempt and hands it to the pipe, waits
//! for the attempt to end (upstream status, break, unreadable message, lost fence), and takes
//! the upstream back on shutdown even when the app is not reading. The app gets every chunk
//! the filter has passed before the status the task ends the call with.

use std::{
    collections::VecDeque,
    future::poll_fn,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use crate::{
    checkpoint::Slot,
    filter::{Chunk, Filter, Unusable},
    grpc::{BoxError, Deframer, error_chain},
    offset::Offset,
};

/// How an attempt's upstream response ended, as the app's body saw it.
pub(crate) enum End {
    /// The upstream's trailers (its status).
    Trailers(HeaderMap),
    /// The stream broke without a status.
    Broken { cause: &'static str, error: String },
    /// A message the sidecar cannot read or hold: the job fails.
    Failed(Unusable),
    /// Another owner holds the job now.
    Fenced,
}

pub(crate) struct Pipe {
    inner: Mutex<Inner>,
}

struct Inner {
    /// The job's position and per-message work; lives as long as the job.
    filter: Filter,
    /// The running attempt's upstream body, while one streams.
    flow: Option<Flow>,
    /// Frames for the app, in order: what the filter passed, then the final trailers.
    ready: VecDeque<Chunk>,
    /// How the attempt ended, until the task takes it.
    end: Option<End>,
    /// After `ready`, the app's body ends.
    closed: bool,
    /// The DATA bytes the app's body has yielded to hyper in this call.
    yielded: u64,
    /// The job's checkpoint slot, checked after every upstream frame: when a write was
    /// refused (the fence is lost), another owner holds the job and the attempt ends.
    slot: Arc<Slot>,
    body_waker: Option<Waker>,
    task_waker: Option<Waker>,
}

struct Flow {
    upstream: Incoming,
    deframer: Deframer,
}

impl Pipe {
    pub fn new(filter: Filter, slot: Arc<Slot>) -> Arc<Pipe> {
        Arc::new(Pipe {
            inner: Mutex::new(Inner {
                filter,
                flow: None,
                ready: VecDeque::with_capacity(2),
                end: None,
                closed: false,
                yielded: 0,
                slot,
                body_waker: None,
                task_waker: None,
            }),
        })
    }

    /// The lock; a poisoned one (a panic while held) still holds consistent data: every
    /// change under it is a plain field update.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last offset forwarded and the message count.
    pub fn position(&self) -> (Option<Offset>, u64) {
        let inner = self.lock();
        (inner.filter.last.clone(), inner.filter.messages)
    }

    /// The DATA bytes the app's body has yielded to hyper in this call, once it has yielded
    /// every chunk the filter passed (`None` while some wait for the app's stream to have room).
    pub fn yielded_all(&self) -> Option<u64> {
        let inner = self.lock();
        (!inner.ready.iter().any(|c| c.frame.is_data())).then_some(inner.yielded)
    }

    /// Hands an attempt's upstream body to the app's body, which streams it from now on.
    pub fn start(&self, upstream: Incoming, gzip: bool, max_message_bytes: usize) {
        let mut inner = self.lock();
        inner.filter.start_attempt(gzip);
        inner.end = None;
        inner.flow = Some(Flow {
            upstream,
            deframer: Deframer::new(max_message_bytes),
        });
        if let Some(w) = inner.body_waker.take() {
            w.wake();
        }
    }

    /// Resolves when the running attempt has ended.
    pub async fn ended(&self) -> End {
        poll_fn(|cx| {
            let mut inner = self.lock();
            match inner.end.take() {
                Some(end) => Poll::Ready(end),
                None => {
                    set_waker(&mut inner.task_waker, cx);
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Takes the upstream back (dropping it resets the upstream stream) and reports whether
    /// the attempt forwarded anything. What the filter passed stays queued for the app.
    pub fn stop(&self) -> bool {
        let mut inner = self.lock();
        let flow = inner.flow.take();
        inner.end = None;
        inner.filter.end_attempt();
        let progressed = inner.filter.progressed;
        drop(inner);
        drop(flow);
        progressed
    }

    /// Ends the app's body with `trailers`, after every frame still queued.
    pub fn finish(&self, trailers: HeaderMap) {
        let mut inner = self.lock();
        if !inner.closed {
            inner.ready.push_back(Chunk::trailers(trailers));
        }
        close(&mut inner);
    }

    /// Ends the app's body after every frame still queued (without a status when none was
    /// sent: the app sees a broken stream, never a hung one).
    pub fn close(&self) {
        close(&mut self.lock());
    }

    /// The body the app's response carries. `slot` (the job's checkpoint slot) is set unless
    /// in deliver mode, where acknowledgements move the checkpoint, not what the app's
    /// connection takes.
    pub fn body(self: &Arc<Self>, slot: Option<Arc<Slot>>, gone: CancellationToken) -> AppBody {
        AppBody {
            pipe: self.clone(),
            slot,
            gone,
        }
    }
}

fn close(inner: &mut Inner) {
    inner.closed = true;
    if let Some(w) = inner.body_waker.take() {
        w.wake();
    }
}

fn set_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// The app's response body. hyper polls it only when the app's HTTP/2 stream has room, so
/// what it yields is on its way to the app.
pub(crate) struct AppBody {
    pipe: Arc<Pipe>,
    /// Moved to each chunk's position as the app's connection takes it.
    slot: Option<Arc<Slot>>,
    /// Cancelled when the body is dropped: the app went away (or its call ended).
    gone: CancellationToken,
}

impl Drop for AppBody {
    fn drop(&mut self) {
        self.gone.cancel();
    }
}

impl Body for AppBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut guard = this.pipe.lock();
        let inner = &mut *guard;
        loop {
            if let Some(chunk) = inner.ready.pop_front() {
                let bytes = chunk.frame.data_ref().map_or(0, |d| d.len() as u64);
                inner.yielded += bytes;
                if let (Some(slot), Some((offset, messages))) = (&this.slot, &chunk.progress) {
                    slot.handed(offset, *messages, bytes);
                }
                return Poll::Ready(Some(Ok(chunk.frame)));
            }
            if inner.closed {
                return Poll::Ready(None);
            }
            let Some(flow) = inner.flow.as_mut() else {
                set_waker(&mut inner.body_waker, cx);
                return Poll::Pending;
            };
            let frame = std::task::ready!(Pin::new(&mut flow.upstream).poll_frame(cx));
            let end = match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => inner
                        .filter
                        .push(data, &mut flow.deframer, &mut inner.ready)
                        .err()
                        .map(End::Failed)
                        .or_else(|| inner.slot.lost().then_some(End::Fenced)),
                    Err(frame) => frame.into_trailers().ok().map(End::Trailers),
                },
                Some(Err(e)) => Some(End::Broken {
                    cause: classify(&e),
                    error: error_chain(&e),
                }),
                None => Some(End::Broken {
                    cause: "eof",
                    error: "upstream ended the stream without a status".into(),
                }),
            };
            if let Some(end) = end {
                // The task decides what comes next; the upstream is done with either way.
                inner.flow = None;
                inner.end = Some(end);
                if let Some(w) = inner.task_waker.take() {
                    w.wake();
                }
            }
        }
    }
}

/// Names what broke, for the `resumes` metric.
fn classify(e: &hyper::Error) -> &'static str {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            if h2.is_go_away() {
                return "goaway";
            }
            if h2.is_reset() {
                return "reset";
            }
            if h2.is_io() {
                return "transport";
            }
        }
        cur = err.source();
    }
    "transport"
}
