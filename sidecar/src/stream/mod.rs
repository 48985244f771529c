//! A resumable server-streaming call.
//!
//! The app's call is served by one task that owns the job: it opens the upstream stream and
//! hands it to the app's body ([`crate::pipe`]), which forwards whole messages whose offset is
//! above the last one forwarded and records that offset for the checkpointer. When the
//! upstream breaks (transport error, reset, GOAWAY or a retryable status) the task reconnects
//! with backoff and sends the original request again with the resume field set. The app sees
//! one stream; it sees a status only when the call really ends.

mod ack;
mod active;
mod attempt;
mod call;
mod claim;
mod finish;
mod read;

pub use self::ack::AckState;
pub(crate) use self::call::Call;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, header};
use hyper::body::Incoming;
use reprise_jobs::{NewJob, Owner};
use tokio::{sync::oneshot, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument as _;

use self::active::{ActiveGuard, ActiveJob, ActiveJobs, Counted};
use crate::{
    checkpoint::{Checkpointer, SlotGuard},
    descriptors::ResumableMethod,
    events::Events,
    filter::Filter,
    grpc::{self, ProxyBody, code},
    metrics::{MethodLabels, Metrics},
    offset::Offset,
    pipe::Pipe,
    store::{Backend, Store},
    upstream::Upstream,
};

/// Metadata an app may send to name its job instead of the derived id.
pub const JOB_ID_HEADER: &str = "x-reprise-job-id";

/// Everything a stream task needs, shared by all of them; built once by [`crate::app`].
pub struct StreamCtx {
    /// The service's upstream connections: every attempt picks one.
    pub upstream: Upstream,
    /// The job store (Redis, or memory while it is down): claims and final states.
    pub store: Arc<Store>,
    /// Writes the running jobs' offsets to the store every `checkpoint_interval` and renews
    /// their leases.
    pub checkpointer: Arc<Checkpointer>,
    pub metrics: Arc<Metrics>,
    /// This sidecar process: the owner every job it claims records.
    pub owner: Owner,
    /// Publishes the handoff events (`interrupted` on shutdown, `completed`).
    pub events: Arc<Events>,
    /// The configuration every stream shares.
    pub settings: StreamSettings,
    /// Cancelled at shutdown step 1 (the sidecar stops accepting): new resumable calls are
    /// refused.
    pub accept: CancellationToken,
    /// Cancelled at shutdown step 3: every stream interrupts, checkpoints, publishes its
    /// handoff event and ends its app call.
    pub interrupt: CancellationToken,
    /// Every stream task, so that shutdown step 4 can wait for them.
    pub tracker: TaskTracker,
    /// The jobs this process's tasks serve right now (see [`active`]).
    pub(crate) active: Arc<ActiveJobs>,
}

/// The configuration every stream shares (per-method settings are in [`ResumableMethod`]).
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// The logical service (`service`): part of every derived job id and the handoff queue.
    pub service: String,
    pub lease_ttl: Duration,
    /// First reconnect delay after a failure without progress; doubles up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
    pub max_message_bytes: usize,
    /// How long a stream interrupted by shutdown waits for the app to read what it was handed.
    pub handoff_read_wait: Duration,
}

impl StreamSettings {
    pub fn from_config(config: &crate::config::Config) -> Self {
        StreamSettings {
            service: config.service.clone(),
            lease_ttl: config.lease_ttl,
            backoff: config.reconnect_backoff,
            backoff_max: config.reconnect_backoff_max,
            max_message_bytes: config.max_message_bytes,
            handoff_read_wait: config.handoff_read_wait,
        }
    }
}

/// Serves one call of a resumable method: reads and claims the job ([`claim`]), spawns the
/// [`Task`] that owns it, and answers the app with the response the task sends (headers once
/// the upstream answers, or a status when the call ends first).
pub async fn handle(
    ctx: Arc<StreamCtx>,
    method: Arc<ResumableMethod>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    if ctx.accept.is_cancelled() {
        // Shutdown has begun: the app's retry lands on another pod (or on this one restarted).
        return grpc::trailers_only(code::UNAVAILABLE, "reprise: sidecar shutting down");
    }
    match Task::prepare(ctx, method, req).await {
        Ok((task, head)) => {
            task.spawn();
            head.await.unwrap_or_else(|_| {
                grpc::trailers_only(
                    code::INTERNAL,
                    "reprise: stream task ended without a response",
                )
            })
        }
        Err(res) => *res,
    }
}

/// A job this sidecar now owns, and where it starts.
pub(crate) struct Claimed {
    /// The job as claimed: what the owner writes back if the store forgets it.
    pub job: NewJob,
    pub fence: u64,
    pub backend: Backend,
    pub last: Option<Offset>,
    pub messages: u64,
    /// `last` is not what the store holds (the app's own resume value moved it): write it.
    pub moved: bool,
}

/// Who reads the stream a task serves.
pub(crate) enum Recipient {
    /// The app's own call: checkpoints follow what its connection took.
    App,
    /// `resume: deliver`: the app's ResumeSink, through the pump of
    /// [`crate::handoff::deliver`]; checkpoints follow its acknowledgements.
    ResumeSink(Arc<AckState>),
}

/// The task that owns one job while this sidecar serves it: it makes the upstream attempts
/// ([`attempt`]), resumes after each break, and writes the job's final state and the app's
/// status ([`finish`]). Created from an app's call ([`claim`]) or a takeover
/// ([`crate::handoff::deliver`]).
pub(crate) struct Task {
    ctx: Arc<StreamCtx>,
    method: Arc<ResumableMethod>,
    job_id: String,
    /// The job's fence as claimed (or as adopted by Redis, see [`Task::sync_home`]): every
    /// write carries it, so a zombie's writes are refused.
    fence: u64,
    /// Where the job lives (Redis, or memory while Redis is down, until it moves to Redis).
    backend: Backend,
    /// The request message exactly as the app sent it (decompressed).
    original: Bytes,
    /// The headers every attempt sends (see [`Call::headers`]).
    headers: HeaderMap,
    deadline: Option<Instant>,
    /// The app's response, sent once the upstream answers (or the call ends first).
    head: Option<oneshot::Sender<Response<ProxyBody>>>,
    /// The data path the app's body drives; holds the job's position (last offset forwarded,
    /// message count).
    pipe: PipeEnd,
    /// Cancelled when the app's response body is dropped.
    app_gone: CancellationToken,
    /// Registered with the checkpointer while the job is ours and running.
    slot: Option<SlotGuard>,
    /// This task's entry among the active jobs; dropped (on every exit, a panic included) it
    /// lets the next identical request in.
    active: ActiveGuard,
    recipient: Recipient,
    /// Its `closed` is cancelled when the app's connection closes: tells an app that died
    /// (its connection went) from one that cancelled its call (the connection lives on).
    app_connection: Option<crate::listen::AppConnection>,
}

/// The task's hold on its pipe: however the task ends (even by a panic), the app's body
/// ends after what is queued, never hangs.
struct PipeEnd(Arc<Pipe>);

impl std::ops::Deref for PipeEnd {
    type Target = Arc<Pipe>;

    fn deref(&self) -> &Arc<Pipe> {
        &self.0
    }
}

impl Drop for PipeEnd {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// How one upstream attempt ended.
enum Step {
    /// The upstream broke; resume from the last forwarded offset.
    Broken {
        cause: &'static str,
        error: String,
        progressed: bool,
    },
    Done(Outcome),
}

/// How the call ends.
enum Outcome {
    /// Upstream status OK (its trailers, or headers of a trailers-only reply).
    Completed(HeaderMap),
    /// A status the method is not configured to resume on: forwarded as it is.
    UpstreamStatus {
        error: String,
        trailers: HeaderMap,
    },
    GaveUp {
        error: String,
    },
    DeadlineExceeded,
    AppGone,
    Shutdown,
    /// The sidecar cannot go on (a message it cannot read, or too large): job `failed`, the
    /// app's call ends with `code`.
    Failed {
        code: i32,
        error: String,
    },
    /// Another owner holds the job now: stop without writing anything.
    Fenced,
}

type Reply = Box<Response<ProxyBody>>;

fn reject(code: i32, message: String) -> Reply {
    tracing::warn!(code = grpc::code::name(code), %message, "resumable call rejected");
    Box::new(grpc::trailers_only(code, &message))
}

impl Task {
    /// A task for a claimed job, serving `call` to `recipient`.
    pub(crate) fn new(
        ctx: Arc<StreamCtx>,
        method: Arc<ResumableMethod>,
        claimed: Claimed,
        call: Call,
        recipient: Recipient,
    ) -> (Task, oneshot::Receiver<Response<ProxyBody>>) {
        let Claimed {
            job,
            fence,
            backend,
            last,
            messages,
            moved,
        } = claimed;
        let job_id = job.job_id.clone();
        let (head_tx, head_rx) = oneshot::channel();
        let app_gone = CancellationToken::new();
        let active = ctx.active.begin(
            &job_id,
            ActiveJob {
                app_gone: app_gone.clone(),
                done: CancellationToken::new(),
            },
        );
        // Deliver mode's acknowledgements move the checkpoint; else the app's connection does.
        let app = match &recipient {
            Recipient::App => call.app_connection.as_ref().map(|c| c.window.clone()),
            Recipient::ResumeSink(_) => None,
        };
        let slot = ctx
            .checkpointer
            .register(job, fence, backend, (last.clone(), messages), app);
        if moved {
            slot.slot.record(last.as_ref(), messages);
        }
        if let Recipient::ResumeSink(ack) = &recipient {
            ack.attach(slot.slot.clone(), last.clone(), messages);
        }
        let filter = Filter::new(
            &method.name,
            method.offset.clone(),
            method.offset_field.clone(),
            job_id.clone(),
            &ctx.metrics,
            last,
            messages,
        );
        let pipe = PipeEnd(Pipe::new(filter, slot.slot.clone()));
        (
            Task {
                ctx,
                method,
                job_id,
                fence,
                backend,
                original: call.original,
                headers: call.headers,
                deadline: call.deadline,
                head: Some(head_tx),
                pipe,
                app_gone,
                slot: Some(slot),
                active,
                recipient,
                app_connection: call.app_connection,
            },
            head_rx,
        )
    }

    /// Runs the job to its end; the caller has the response receiver.
    pub(crate) fn spawn(self) {
        let span = tracing::info_span!("stream", job.id = %self.job_id, method = %self.method.name);
        self.ctx.tracker.clone().spawn(self.run().instrument(span));
    }

    async fn run(mut self) {
        let _active = Counted::inc(
            self.ctx
                .metrics
                .streams_active
                .get_or_create(&MethodLabels {
                    method: self.method.name.clone(),
                })
                .clone(),
        );
        let outcome = match self.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, self.attempts())
                .await
                .unwrap_or(Outcome::DeadlineExceeded),
            None => self.attempts().await,
        };
        self.finish(outcome).await;
    }

    /// Deliver mode's acknowledgements, when the recipient is a ResumeSink.
    fn ack(&self) -> Option<&Arc<AckState>> {
        match &self.recipient {
            Recipient::App => None,
            Recipient::ResumeSink(ack) => Some(ack),
        }
    }

    /// Takes the job's backend and fence from its slot: a job claimed in memory while Redis
    /// was down moves to Redis once it answers (`Checkpointer::adopt`), under a new fence.
    fn sync_home(&mut self) {
        if let Some(guard) = &self.slot {
            let home = guard.slot.home();
            (self.backend, self.fence) = (home.backend, home.fence);
        }
    }

    /// Sends the final status: as trailers after the messages, or as a trailers-only reply if
    /// the app has not had response headers yet.
    fn reply(&mut self, mut trailers: HeaderMap) {
        trailers.remove(header::CONTENT_TYPE);
        trailers.remove(header::CONTENT_LENGTH);
        if let Some(head) = self.head.take() {
            let mut res = grpc::trailers_only(code::OK, "");
            res.headers_mut().remove(grpc::GRPC_STATUS);
            res.headers_mut().extend(trailers);
            let _ = head.send(res);
        } else {
            self.pipe.finish(trailers);
        }
    }
}
