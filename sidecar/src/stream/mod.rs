//! A resumable server-streaming call.
//!
//! The app's call is served by one task that owns the job: it opens the upstream stream and
//! hands it to the app's body ([`crate::pipe`]), which forwards whole messages whose offset is
//! above the last one forwarded and records that offset for the checkpointer. When the
//! upstream breaks (transport error, reset, GOAWAY or a retryable status) the task reconnects
//! with backoff and sends the original request again with the resume field set. The app sees
//! one stream; it sees a status only when the call really ends.

mod active;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use reprise_jobs::{Claim, Finish, JobStatus, NewJob, Owner};
use tokio::{sync::oneshot, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument as _;

use self::active::{ActiveGuard, ActiveJob, ActiveJobs, Counted};
use crate::{
    admin::{MethodLabels, Metrics, ReasonLabels},
    checkpoint::{Checkpointer, SlotGuard},
    config::AppCancel,
    deliver::AckState,
    descriptors::ResumableMethod,
    events::{Events, JobEvent},
    filter::Filter,
    grpc::{self, Deframer, Messages, ProxyBody, code},
    offset::Offset,
    pipe::{End, Pipe},
    proxy::{Upstream, UpstreamClient, error_chain, strip_hop_by_hop, upstream_uri},
    request,
    server::AppConnection,
    store::{Backend, Store},
};

/// Metadata an app may send to name its job instead of the derived id.
pub const JOB_ID_HEADER: &str = "x-reprise-job-id";

/// Everything a stream task needs, shared by all of them.
pub struct StreamCtx {
    pub upstream: Upstream,
    pub store: Arc<Store>,
    pub checkpointer: Arc<Checkpointer>,
    pub metrics: Arc<Metrics>,
    pub owner: Owner,
    pub service: String,
    pub lease_ttl: Duration,
    pub backoff: Duration,
    pub backoff_max: Duration,
    pub max_message_bytes: usize,
    /// Cancelled on shutdown (step 3): every stream interrupts, checkpoints, publishes its
    /// handoff event and ends its app call.
    pub shutdown: CancellationToken,
    /// Cancelled at shutdown step 1: new resumable calls are refused.
    pub draining: CancellationToken,
    pub events: Arc<Events>,
    pub tracker: TaskTracker,
    /// The jobs this process's tasks serve right now (see [`active`]).
    active: Arc<ActiveJobs>,
}

impl StreamCtx {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        upstream: Upstream,
        store: Arc<Store>,
        checkpointer: Arc<Checkpointer>,
        metrics: Arc<Metrics>,
        owner: Owner,
        service: String,
        config: &crate::config::Config,
        shutdown: CancellationToken,
        draining: CancellationToken,
        events: Arc<Events>,
        tracker: TaskTracker,
    ) -> Self {
        StreamCtx {
            upstream,
            store,
            checkpointer,
            metrics,
            owner,
            service,
            lease_ttl: config.lease_ttl,
            backoff: config.reconnect_backoff,
            backoff_max: config.reconnect_backoff_max,
            max_message_bytes: config.max_message_bytes,
            shutdown,
            draining,
            events,
            tracker,
            active: Arc::default(),
        }
    }
}

pub async fn handle(
    ctx: Arc<StreamCtx>,
    method: Arc<ResumableMethod>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    if ctx.draining.is_cancelled() {
        // Shutdown has begun: the app's retry lands on another pod (or on this one restarted).
        return grpc::trailers_only(code::UNAVAILABLE, "reprise: sidecar shutting down");
    }
    match Task::prepare(ctx, method, req).await {
        Ok((task, head)) => {
            let span =
                tracing::info_span!("stream", job.id = %task.job_id, method = %task.method.name);
            task.ctx.tracker.clone().spawn(task.run().instrument(span));
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

pub(crate) struct Task {
    ctx: Arc<StreamCtx>,
    method: Arc<ResumableMethod>,
    job_id: String,
    fence: u64,
    backend: Backend,
    /// The request message exactly as the app sent it (decompressed).
    original: Bytes,
    headers: HeaderMap,
    deadline: Option<Instant>,
    head: Option<oneshot::Sender<Response<ProxyBody>>>,
    /// The data path the app's body drives; holds the job's position (last offset forwarded,
    /// message count).
    pipe: PipeEnd,
    app_gone: CancellationToken,
    /// Registered with the checkpointer while the job is ours and running.
    slot: Option<SlotGuard>,
    /// This task's entry among the active jobs; dropped (on every exit, a panic included) it
    /// lets the next identical request in.
    active: ActiveGuard,
    /// Deliver mode: what the app's ResumeSink acknowledged (checkpoints follow it).
    ack: Option<Arc<AckState>>,
    /// Cancelled when the app's connection closes: tells an app that died (its connection
    /// went) from one that cancelled its call (the connection lives on).
    app_connection: Option<CancellationToken>,
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
    /// Reads the app's request, derives and claims the job. Returns the task and the receiver
    /// of the app's response (sent once the upstream answers or the call ends).
    async fn prepare(
        ctx: Arc<StreamCtx>,
        method: Arc<ResumableMethod>,
        req: Request<Incoming>,
    ) -> Result<(Task, oneshot::Receiver<Response<ProxyBody>>), Reply> {
        let (mut parts, body) = req.into_parts();
        let deadline = parts
            .headers
            .get(grpc::GRPC_TIMEOUT)
            .and_then(grpc::parse_timeout)
            .map(|d| Instant::now() + d);
        let original = read_request(&parts.headers, body, ctx.max_message_bytes).await?;
        let request = request::decode(&method, &original)
            .map_err(|e| reject(code::INVALID_ARGUMENT, format!("reprise: {e}")))?;
        let base_id = match parts.headers.get(JOB_ID_HEADER) {
            Some(v) => valid_job_id(v).ok_or_else(|| {
                reject(
                    code::INVALID_ARGUMENT,
                    format!(
                        "reprise: {JOB_ID_HEADER} must be 1-128 characters of A-Z a-z 0-9 . _ : -"
                    ),
                )
            })?,
            None => request::job_id(&ctx.service, &method, &request),
        };
        strip_hop_by_hop(&mut parts.headers);
        for h in [
            header::CONTENT_LENGTH.as_str(),
            grpc::GRPC_TIMEOUT,
            "grpc-encoding",
            JOB_ID_HEADER,
        ] {
            parts.headers.remove(h);
        }
        // Offsets must be readable: ask for uncompressed responses.
        parts
            .headers
            .insert("grpc-accept-encoding", HeaderValue::from_static("identity"));
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));

        let new_job = |job_id: &str| NewJob {
            job_id: job_id.to_owned(),
            service: ctx.service.clone(),
            method: method.name.clone(),
            request_b64: base64_encode(&original),
            request_json: request::to_json(&request),
            owner: ctx.owner.clone(),
            lease_ttl: ctx.lease_ttl,
        };
        let mut job_id = base_id.clone();
        let mut waited_for_lease = false;
        let (backend, fence, stored) = loop {
            if let Some(active) = ctx.active.get(&job_id) {
                if active.app_gone.is_cancelled() || active.done.is_cancelled() {
                    // Its app went away (crashed, restarted): let that task write `interrupted`
                    // first, then take the job over from its offset.
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), active.done.cancelled()).await;
                } else {
                    job_id = independent_id(&base_id);
                    continue;
                }
            }
            match ctx.store.claim(&new_job(&job_id)).await {
                (
                    _,
                    Claim::Busy {
                        owner,
                        lease_remaining,
                    },
                ) => {
                    if owner != ctx.owner && !waited_for_lease {
                        // Another owner: if it is dead its lease lapses and we take the job over;
                        // if it renews, it is alive and this call becomes an independent job.
                        waited_for_lease = true;
                        tracing::info!(
                            job.id = %job_id,
                            owner.pod = %owner.pod,
                            owner.instance = %owner.instance,
                            lease_remaining_ms = lease_remaining.as_millis() as u64,
                            "job is running under another owner; waiting for its lease"
                        );
                        tokio::time::sleep(lease_remaining + Duration::from_millis(50)).await;
                        continue;
                    }
                    tracing::info!(
                        job.id = %job_id,
                        owner.pod = %owner.pod,
                        "job is running under a live owner; serving this call as an independent job"
                    );
                    job_id = independent_id(&base_id);
                }
                (backend, Claim::Fresh { fence }) => break (backend, fence, None),
                (
                    backend,
                    Claim::Resumed {
                        fence,
                        offset,
                        messages,
                        previous_status,
                    },
                ) => {
                    let stored = Offset::from_stored(method.offset.leaf, offset.as_deref(), messages)
                        .map_err(|e| tracing::warn!(job.id = %job_id, error = %e, "ignoring unreadable stored offset"))
                        .ok()
                        .flatten();
                    tracing::info!(
                        job.id = %job_id,
                        from = %previous_status.as_str(),
                        offset = stored.as_ref().map(ToString::to_string).unwrap_or_default(),
                        "resuming job from its stored offset"
                    );
                    break (backend, fence, Some((stored, messages)));
                }
            }
        };
        let (stored, messages) = stored.unwrap_or((None, 0));
        // The app's own resume value counts too: it already holds everything up to it ("after
        // v"; with an inclusive resume field, everything before it). Where it moves the start,
        // it is written as the job's offset at the first checkpoint.
        let own = request::resume_value(&method, &request).and_then(|v| {
            if method.resume_inclusive {
                v.predecessor()
            } else {
                Some(v)
            }
        });
        let last = std::cmp::max(stored.clone(), own);
        let moved = last != stored;
        let job = new_job(&job_id);
        let app_connection = parts.extensions.get::<AppConnection>().map(|c| c.0.clone());
        let (mut task, head) = Task::new(
            ctx,
            method,
            Claimed {
                job,
                fence,
                backend,
                last,
                messages,
                moved,
            },
            original,
            parts.headers,
            deadline,
            None,
        );
        task.app_connection = app_connection;
        Ok((task, head))
    }

    /// A task for a claimed job. `ack` is set in deliver mode: the receiver of the response is
    /// the ResumeSink pump, and checkpoints follow its acknowledgements instead of forwarding.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        ctx: Arc<StreamCtx>,
        method: Arc<ResumableMethod>,
        claimed: Claimed,
        original: Bytes,
        headers: HeaderMap,
        deadline: Option<Instant>,
        ack: Option<Arc<AckState>>,
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
        let slot = ctx
            .checkpointer
            .register(job, fence, backend, last.clone(), messages);
        if moved {
            slot.slot.record(last.as_ref(), messages);
        }
        if let Some(ack) = &ack {
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
                original,
                headers,
                deadline,
                head: Some(head_tx),
                pipe,
                app_gone,
                slot: Some(slot),
                active,
                ack,
                app_connection: None,
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

    async fn attempts(&mut self) -> Outcome {
        let mut backoff = self.ctx.backoff;
        let mut outage_since: Option<Instant> = None;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            // An outage starts when the first attempt that fails began: its connect, handshake
            // and wait for response headers count against `max_outage` too.
            let started = Instant::now();
            let budget = self
                .method
                .max_outage
                .saturating_sub(outage_since.map_or(Duration::ZERO, |since| since.elapsed()));
            let step = self.attempt(budget).await;
            let (cause, error, progressed) = match step {
                Step::Done(outcome) => return outcome,
                Step::Broken {
                    cause,
                    error,
                    progressed,
                } => (cause, error, progressed),
            };
            if progressed {
                outage_since = None;
                backoff = self.ctx.backoff;
            }
            let since = *outage_since.get_or_insert(started);
            if since.elapsed() >= self.method.max_outage {
                return Outcome::GaveUp { error };
            }
            self.ctx
                .metrics
                .resumes
                .get_or_create(&ReasonLabels {
                    method: self.method.name.clone(),
                    reason: cause,
                })
                .inc();
            tracing::warn!(
                job.id = %self.job_id,
                attempt,
                cause,
                error = %error,
                offset = self.pipe.position().0.as_ref().map(ToString::to_string).unwrap_or_default(),
                "upstream stream broke; resuming"
            );
            let (store, job_id, fence, backend) = (
                self.ctx.store.clone(),
                self.job_id.clone(),
                self.fence,
                self.backend,
            );
            let note = format!("{cause}: {error}");
            tokio::spawn(async move { store.note_resume(backend, &job_id, fence, &note).await });
            // Right after progress the upstream most likely moved (restart, rollout): retry at
            // once. Repeated failures without progress back off exponentially, with jitter.
            let jittered = if progressed {
                Duration::ZERO
            } else {
                backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0)
            };
            tokio::select! {
                _ = tokio::time::sleep(jittered) => {}
                _ = app_gone(&mut self.head, &self.app_gone) => return Outcome::AppGone,
                _ = self.ctx.shutdown.cancelled() => return Outcome::Shutdown,
            }
            if !progressed {
                backoff = (backoff * 2).min(self.ctx.backoff_max);
            }
        }
    }

    /// One upstream call, from request to the end of its body. `budget` is what is left of
    /// `max_outage`: the longest the response headers may take unless the upstream is seen to
    /// be alive (see [`Task::response`]).
    async fn attempt(&mut self, budget: Duration) -> Step {
        let message = match &self.pipe.position().0 {
            Some(o) => match request::with_resume(&self.method.resume_path, &self.original, o) {
                Ok(b) => b,
                Err(error) => {
                    return Step::Done(Outcome::Failed {
                        code: code::INTERNAL,
                        error,
                    });
                }
            },
            None => self.original.clone(),
        };
        let body = Full::new(grpc::frame(&message))
            .map_err(|never| match never {})
            .boxed_unsync();
        let mut req = Request::new(body);
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = upstream_uri(self.ctx.upstream.uri(), Some(&self.method.path()));
        *req.version_mut() = http::Version::HTTP_2;
        *req.headers_mut() = self.headers.clone();
        if let Some(deadline) = self.deadline {
            req.headers_mut().insert(
                grpc::GRPC_TIMEOUT,
                grpc::encode_timeout(deadline.saturating_duration_since(Instant::now())),
            );
        }
        // Held until this attempt's body is done.
        let ctx = self.ctx.clone();
        let (client, _in_flight) = ctx.upstream.pick();
        let res = match self.response(client, req, budget).await {
            Ok(res) => res,
            Err(step) => return step,
        };
        if let Err(message) = self
            .ctx
            .upstream
            .check_metadata(res.headers(), "upstream response metadata")
        {
            // Not an outage: the same request would get the same headers again.
            let trailers = grpc::status_trailers(code::RESOURCE_EXHAUSTED, &message);
            return Step::Done(Outcome::UpstreamStatus {
                error: message,
                trailers,
            });
        }
        if res.status() != http::StatusCode::OK {
            let code = grpc::code_for_http_status(res.status());
            let error = format!("upstream answered HTTP {}", res.status());
            let trailers = grpc::status_trailers(code, &format!("reprise: {error}"));
            return self.status_step(code, error, trailers, false);
        }
        if let Some((code, message)) = grpc::status_of(res.headers()) {
            // Trailers-only: the whole reply is a status.
            let headers = res.into_parts().0.headers;
            return self.status_step(code, message, headers, false);
        }
        let (parts, body) = res.into_parts();
        let gzip = parts
            .headers
            .get("grpc-encoding")
            .is_some_and(|e| e.as_bytes() == b"gzip");
        if let Some(head) = self.head.take() {
            let mut headers = parts.headers;
            strip_hop_by_hop(&mut headers);
            headers.remove(header::CONTENT_LENGTH);
            // Compressed messages are forwarded decompressed (see `Filter`).
            headers.remove("grpc-encoding");
            // The app's connection taking a chunk moves the checkpoint, unless in deliver
            // mode, where acknowledgements do.
            let record = match (&self.slot, &self.ack) {
                (Some(g), None) => Some(g.slot.clone()),
                _ => None,
            };
            let body = self.pipe.body(record, self.app_gone.clone());
            let mut res = Response::new(body.boxed_unsync());
            *res.headers_mut() = headers;
            if head.send(res).is_err() {
                return Step::Done(Outcome::AppGone);
            }
        }
        // From here the app's body streams the upstream; this task waits for the attempt to
        // end, or for shutdown or the app going away, and then takes the upstream back.
        self.pipe.start(body, gzip, self.ctx.max_message_bytes);
        let end = tokio::select! {
            biased;
            _ = self.ctx.shutdown.cancelled() => None,
            _ = self.app_gone.cancelled() => Some(None),
            end = self.pipe.ended() => Some(Some(end)),
        };
        let progressed = self.pipe.stop();
        match end {
            None => Step::Done(Outcome::Shutdown),
            Some(None) => Step::Done(Outcome::AppGone),
            Some(Some(End::Trailers(trailers))) => {
                let (code, message) = grpc::status_of(&trailers).unwrap_or((
                    code::UNKNOWN,
                    "upstream trailers carry no grpc-status".into(),
                ));
                self.status_step(code, message, trailers, progressed)
            }
            Some(Some(End::Broken { cause, error })) => Step::Broken {
                cause,
                error,
                progressed,
            },
            Some(Some(End::Failed(unusable))) => Step::Done(Outcome::Failed {
                code: unusable.code,
                error: unusable.message,
            }),
            Some(Some(End::Fenced)) => Step::Done(Outcome::Fenced),
        }
    }

    /// What the job becomes when the app ended the call itself (`why`), by `on_app_cancel`.
    fn app_choice(&self, why: &str) -> (JobStatus, String) {
        match self.method.on_app_cancel {
            AppCancel::Restart => (
                JobStatus::Failed,
                format!(
                    "ended by the app: {why}; on_app_cancel: restart, so the next identical request starts from the beginning"
                ),
            ),
            AppCancel::Resume => (
                JobStatus::Interrupted,
                format!(
                    "ended by the app: {why}; on_app_cancel: resume, so the next identical request continues after what the app's connection took"
                ),
            ),
        }
    }

    /// Whether the call's deadline has passed (within a clock tick of it).
    fn deadline_passed(&self) -> bool {
        self.deadline
            .is_some_and(|d| Instant::now() + DEADLINE_SLACK >= d)
    }

    /// Whether the app's call ended because its connection did. A connection that fails
    /// resets its streams and ends in the same turn of its task, before this task runs; a
    /// few yields and a moment cover a multi-threaded runtime. Not longer: an app that cancels
    /// and then closes its channel at once (grpcio does, leaving a `with` block) must still
    /// read as a cancel.
    async fn app_connection_lost(&self) -> bool {
        let Some(connection) = &self.app_connection else {
            // Not a call from the app's listener (a takeover's sink pump): its peer went.
            return true;
        };
        for _ in 0..3 {
            if connection.is_cancelled() {
                return true;
            }
            tokio::task::yield_now().await;
        }
        tokio::time::timeout(APP_CONNECTION_GRACE, connection.cancelled())
            .await
            .is_ok()
    }

    /// The upstream's response headers. A server may hold them back until its first message
    /// (grpc-go does), so a long wait alone is no outage; but an upstream that accepts TCP and
    /// never speaks HTTP/2, or stopped answering, must not hang the call. So when `budget`
    /// runs out without headers, a probe (a gRPC health check on the same connection) asks
    /// whether the upstream answers at all: any response headers, whatever the status, mean
    /// it is alive and slow, and the wait goes on for another `max_outage`; none within the
    /// probe's own time is an outage (`no_response`), which ends the call once `max_outage`
    /// is spent.
    async fn response(
        &mut self,
        client: &UpstreamClient,
        req: Request<ProxyBody>,
        mut budget: Duration,
    ) -> Result<Response<Incoming>, Step> {
        let request = client.request(req);
        let mut request = std::pin::pin!(request);
        loop {
            let res = tokio::select! {
                r = request.as_mut() => r,
                _ = tokio::time::sleep(budget) => {
                    let probe = budget.clamp(PROBE_MIN, PROBE_MAX);
                    if probe_alive(client, self.ctx.upstream.uri(), probe).await {
                        tracing::debug!(job.id = %self.job_id, waited = ?budget, "upstream alive but no response headers yet; waiting on");
                        budget = self.method.max_outage;
                        continue;
                    }
                    let error = format!(
                        "no response headers from the upstream within {}, and it did not answer a health probe within {}",
                        humantime::format_duration(budget),
                        humantime::format_duration(probe)
                    );
                    tracing::warn!(job.id = %self.job_id, cause = "no_response", %error, "upstream silent; counting it as an outage");
                    return Err(Step::Broken {
                        cause: "no_response",
                        error,
                        progressed: false,
                    });
                }
                _ = app_gone(&mut self.head, &self.app_gone) => return Err(Step::Done(Outcome::AppGone)),
                _ = self.ctx.shutdown.cancelled() => return Err(Step::Done(Outcome::Shutdown)),
            };
            return res.map_err(|e| Step::Broken {
                cause: "connect",
                error: error_chain(&e),
                progressed: false,
            });
        }
    }

    fn status_step(
        &self,
        code: i32,
        message: String,
        trailers: HeaderMap,
        progressed: bool,
    ) -> Step {
        if code == code::OK {
            return Step::Done(Outcome::Completed(trailers));
        }
        let error = format!("{}: {message}", grpc::code::name(code));
        if self.method.retry_codes.contains(&code) {
            let cause = match code {
                code::UNAVAILABLE => "status_unavailable",
                code::INTERNAL => "status_internal",
                _ => "status_other",
            };
            Step::Broken {
                cause,
                error,
                progressed,
            }
        } else {
            Step::Done(Outcome::UpstreamStatus { error, trailers })
        }
    }

    /// Ends the app's call with the right status and writes the job's final state.
    async fn finish(mut self, outcome: Outcome) {
        // The upstream is done with, whatever ended the call (a deadline stops the attempt
        // where it was).
        self.pipe.stop();
        // What the app holds: everything the filter passed, which its body yields before the
        // status; if it is gone, only what its connection took (the rest died in the pipe).
        let (held, mut messages) = match (&outcome, &self.slot) {
            (Outcome::AppGone, Some(guard)) => guard.slot.current(),
            _ => self.pipe.position(),
        };
        let mut offset_text = held.as_ref().map(ToString::to_string);
        let (mut status, mut app, mut error) = match outcome {
            Outcome::Completed(trailers) => (Some(JobStatus::Completed), Some(trailers), None),
            Outcome::UpstreamStatus { error, trailers } => {
                (Some(JobStatus::Failed), Some(trailers), Some(error))
            }
            Outcome::Failed { code, error } => {
                let message = format!("reprise: job {}: {error}", self.job_id);
                (
                    Some(JobStatus::Failed),
                    Some(grpc::status_trailers(code, &message)),
                    Some(error),
                )
            }
            Outcome::GaveUp { error } => {
                let message = format!(
                    "reprise: upstream unavailable for {}; job {} is interrupted at offset {}: {error}",
                    humantime::format_duration(self.method.max_outage),
                    self.job_id,
                    offset_text.as_deref().unwrap_or("(none)")
                );
                (
                    Some(JobStatus::Interrupted),
                    Some(grpc::status_trailers(code::UNAVAILABLE, &message)),
                    Some(error),
                )
            }
            Outcome::DeadlineExceeded => {
                let (status, why) = self.app_choice("its deadline (grpc-timeout) passed");
                let message = format!(
                    "reprise: deadline exceeded; job {} is {}",
                    self.job_id,
                    status.as_str()
                );
                (
                    Some(status),
                    Some(grpc::status_trailers(code::DEADLINE_EXCEEDED, &message)),
                    Some(why),
                )
            }
            Outcome::Shutdown => {
                let message = format!(
                    "reprise: sidecar shutting down; job {} is interrupted at offset {}",
                    self.job_id,
                    offset_text.as_deref().unwrap_or("(none)")
                );
                (
                    Some(JobStatus::Interrupted),
                    Some(grpc::status_trailers(code::UNAVAILABLE, &message)),
                    Some("sidecar shutting down".to_owned()),
                )
            }
            Outcome::AppGone if self.deadline_passed() => {
                // The app's own deadline fired (its client cancels the stream when it does):
                // the same choice as the sidecar enforcing `grpc-timeout`.
                let (status, why) = self.app_choice("its deadline (grpc-timeout) passed");
                (Some(status), None, Some(why))
            }
            Outcome::AppGone => {
                let (status, why) = if self.app_connection_lost().await {
                    (
                        JobStatus::Interrupted,
                        "the app's connection closed (the app went away): resumable".to_owned(),
                    )
                } else {
                    self.app_choice("it cancelled the call on a live connection")
                };
                (Some(status), None, Some(why))
            }
            Outcome::Fenced => {
                let message = format!(
                    "reprise: job {} was taken over by another owner",
                    self.job_id
                );
                (
                    None,
                    Some(grpc::status_trailers(code::UNAVAILABLE, &message)),
                    None,
                )
            }
        };
        if let Some(ack) = self.ack.clone() {
            // Deliver mode: the "app" is the ResumeSink pump. It gets the end of the stream
            // first; the job is complete only once the sink acknowledged every message, and it
            // holds exactly what was acknowledged.
            if let Some(trailers) = app.take() {
                self.reply(trailers);
            }
            let delivered = ack.wait_done(Duration::from_secs(30)).await;
            if status == Some(JobStatus::Completed) && !delivered {
                status = Some(JobStatus::Interrupted);
                error = Some("the app's ResumeSink did not acknowledge every message".into());
            }
            (offset_text, messages) = ack.acked();
        }
        // The job's state first, so that when the app sees the status the job already says
        // what it holds (and, on shutdown, another pod has been told).
        let job = self.slot.take().map(|guard| guard.slot.job.clone());
        let handoff =
            matches!(status, Some(JobStatus::Interrupted)) && self.ctx.shutdown.is_cancelled();
        if let Some(status) = status {
            let finish = Finish {
                job_id: self.job_id.clone(),
                fence: self.fence,
                status,
                offset: offset_text.clone(),
                messages,
                error: error.clone(),
            };
            let written = self
                .ctx
                .store
                .finish(self.backend, &finish, job.as_ref())
                .await;
            if written == Some(reprise_jobs::Write::Fenced) {
                tracing::warn!(job.id = %self.job_id, "final job state refused: another owner holds the job");
            }
            self.ctx
                .metrics
                .jobs_finished
                .get_or_create(&ReasonLabels {
                    method: self.method.name.clone(),
                    reason: status.as_str(),
                })
                .inc();
            let job = JobEvent {
                job_id: &self.job_id,
                method: &self.method.name,
                offset: offset_text.as_deref(),
                fence: self.fence,
            };
            match status {
                // A handoff: wait for the broker's confirm (or the outbox) before the app's
                // call ends, so the leaving pod has done its part when it exits.
                JobStatus::Interrupted if handoff && written.is_some() => {
                    self.ctx
                        .events
                        .interrupted(&job, "sidecar shutting down")
                        .await;
                }
                JobStatus::Completed => self.ctx.events.completed(&job),
                _ => {}
            }
        }
        if let Some(trailers) = app {
            self.reply(trailers);
        }
        let Task {
            job_id,
            active,
            pipe,
            ..
        } = self;
        drop(pipe);
        let level_error = error.as_deref().unwrap_or("");
        tracing::info!(
            job.id = %job_id,
            status = status.map(|s| s.as_str()).unwrap_or("fenced"),
            messages,
            offset = offset_text.as_deref().unwrap_or(""),
            error = level_error,
            "stream ended"
        );
        drop(active);
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

/// Resolves when the app has gone away: before response headers, the handler was dropped;
/// after, the response body was.
/// How long after a call's end its connection may take to close and still count as the cause.
const APP_CONNECTION_GRACE: Duration = Duration::from_millis(5);
/// A call the app drops this close to its deadline was ended by the deadline.
const DEADLINE_SLACK: Duration = Duration::from_millis(50);

/// The longest and shortest wait for a liveness probe's answer.
const PROBE_MIN: Duration = Duration::from_millis(500);
const PROBE_MAX: Duration = Duration::from_secs(5);

/// Whether the upstream answers a gRPC health check on `client`'s connection within `within`:
/// any response headers count (a server without the health service answers UNIMPLEMENTED).
async fn probe_alive(client: &UpstreamClient, upstream: &Uri, within: Duration) -> bool {
    let body = Full::new(grpc::frame(&[]))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut req = Request::new(body);
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = upstream_uri(upstream, Some("/grpc.health.v1.Health/Check"));
    *req.version_mut() = http::Version::HTTP_2;
    let h = req.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    matches!(
        tokio::time::timeout(within, client.request(req)).await,
        Ok(Ok(_))
    )
}

async fn app_gone(
    head: &mut Option<oneshot::Sender<Response<ProxyBody>>>,
    body_gone: &CancellationToken,
) {
    match head {
        Some(h) => h.closed().await,
        None => body_gone.cancelled().await,
    }
}

/// Reads the single request message of a server-streaming call (decompressing gzip).
async fn read_request(headers: &HeaderMap, body: Incoming, max: usize) -> Result<Bytes, Reply> {
    let collected = Limited::new(body, max + 5).collect().await.map_err(|e| {
        reject(
            code::INVALID_ARGUMENT,
            format!("reprise: cannot read the request (max_message_bytes {max}): {e}"),
        )
    })?;
    let bytes = collected.to_bytes();
    let mut deframer = Deframer::new(max);
    let [_, whole] = deframer.push(bytes).map_err(|e| {
        reject(
            code::INVALID_ARGUMENT,
            format!("reprise: bad request frame: {e}"),
        )
    })?;
    let mut msgs: Vec<(bool, Bytes)> = Messages::new(whole).collect();
    if deframer.pending() > 0 {
        return Err(reject(
            code::INVALID_ARGUMENT,
            format!(
                "reprise: the request ended inside a message frame ({} bytes of an unfinished frame, its header included, after {} whole message(s))",
                deframer.pending(),
                msgs.len()
            ),
        ));
    }
    if msgs.len() != 1 {
        return Err(reject(
            code::INVALID_ARGUMENT,
            format!(
                "reprise: a server-streaming call carries exactly one request message, got {}",
                msgs.len()
            ),
        ));
    }
    let (compressed, message) = msgs.remove(0);
    if !compressed {
        return Ok(message);
    }
    match headers.get("grpc-encoding").map(HeaderValue::as_bytes) {
        Some(b"gzip") => match grpc::gunzip(&message, max) {
            Ok(plain) => Ok(plain.into()),
            Err(grpc::GunzipError::TooLarge { .. }) => Err(reject(
                code::INVALID_ARGUMENT,
                format!("reprise: request exceeds max_message_bytes ({max})"),
            )),
            Err(e @ grpc::GunzipError::Corrupt(_)) => Err(reject(
                code::INVALID_ARGUMENT,
                format!("reprise: cannot gunzip the request: {e}"),
            )),
        },
        // The gRPC spec: a compressed message without an encoding is a protocol error.
        None | Some(b"identity") => Err(reject(
            code::INTERNAL,
            "reprise: the request message is flagged compressed but the call declares no grpc-encoding".into(),
        )),
        other => Err(reject(
            code::UNIMPLEMENTED,
            format!(
                "reprise: request compression {:?} is not supported on resumable methods; valid: identity, gzip",
                other.map(String::from_utf8_lossy).unwrap_or_default()
            ),
        )),
    }
}

fn valid_job_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let ok = (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    ok.then(|| s.to_owned())
}

/// A second live call of the same logical request gets its own job (never a shared offset).
fn independent_id(base: &str) -> String {
    format!("{base}-{:08x}", rand::random::<u32>())
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_id_header_is_validated() {
        assert_eq!(
            valid_job_id(&HeaderValue::from_static("nightly-export:2026.11")),
            Some("nightly-export:2026.11".into())
        );
        assert_eq!(valid_job_id(&HeaderValue::from_static("has space")), None);
        assert_eq!(valid_job_id(&HeaderValue::from_static("")), None);
    }
}
