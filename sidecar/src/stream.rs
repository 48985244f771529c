//! A resumable server-streaming call.
//!
//! The app's call is served by one task that owns the job: it opens the upstream stream,
//! forwards whole messages whose offset is above the last one forwarded, records that offset
//! for the checkpointer, and when the upstream breaks (transport error, reset, GOAWAY or a
//! retryable status) it reconnects with backoff and sends the original request again with the
//! resume field set. The app sees one stream; it sees a status only when the call really ends.

use std::{
    collections::HashMap,
    io::Read as _,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use flate2::read::GzDecoder;
use http::{HeaderMap, HeaderValue, Request, Response, header};
use http_body::Frame;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use prost_reflect::DynamicMessage;
use reprise_jobs::{Claim, Finish, JobStatus, NewJob, Owner};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument as _;

use crate::{
    admin::{MethodLabels, Metrics, ReasonLabels},
    checkpoint::{Checkpointer, Slot, SlotGuard},
    deliver::AckState,
    descriptors::ResumableMethod,
    events::{Events, JobEvent},
    grpc::{self, BoxError, Deframer, Messages, ProxyBody, code},
    offset::{self, Found, Offset},
    proxy::{Upstream, error_chain, strip_hop_by_hop, upstream_uri},
    request,
    store::{Backend, Store},
};

/// Metadata an app may send to name its job instead of the derived id.
pub const JOB_ID_HEADER: &str = "x-reprise-job-id";
/// Response chunks (one upstream DATA frame's messages each) queued between the stream task and
/// the app's connection. The task takes a frame from the upstream only once there is room, so
/// per stream the sidecar holds this chunk, the one hyper is sending and what h2 buffers
/// (`max_send_buf_size`); everything else waits unread under the upstream's window.
const CHANNEL_DEPTH: usize = 1;

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
    active: Mutex<HashMap<String, ActiveJob>>,
}

/// A job a task of this process is serving right now.
#[derive(Clone)]
struct ActiveJob {
    app: mpsc::WeakSender<Chunk>,
    done: CancellationToken,
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
            active: Mutex::new(HashMap::new()),
        }
    }

    fn active(&self, job_id: &str) -> Option<ActiveJob> {
        self.active.lock().ok()?.get(job_id).cloned()
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

type AppTx = mpsc::Sender<Chunk>;

/// What travels to the app's response body: a frame, and for data the offset of its last
/// message and the message count, which become the job's checkpoint once the app's
/// connection has taken the frame (not when it is queued: a queued frame dies with us).
pub(crate) struct Chunk {
    frame: Frame<Bytes>,
    progress: Option<(Offset, u64)>,
}

/// The app's response body: frames from the stream task. Polled by hyper only when the app's
/// HTTP/2 window has room, so what it yields is on its way to the app.
struct AppBody {
    rx: mpsc::Receiver<Chunk>,
    /// Set unless in deliver mode (where acknowledgements move the checkpoint).
    slot: Option<Arc<Slot>>,
}

impl http_body::Body for AppBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|chunk| {
            chunk.map(|c| {
                if let (Some(slot), Some((offset, messages))) = (&self.slot, &c.progress) {
                    slot.record(Some(offset), *messages);
                }
                Ok(c.frame)
            })
        })
    }
}

/// A job this sidecar now owns, and where it starts.
pub(crate) struct Claimed {
    pub job_id: String,
    pub fence: u64,
    pub backend: Backend,
    pub last: Option<Offset>,
    pub messages: u64,
}

pub(crate) struct Task {
    ctx: Arc<StreamCtx>,
    method: Arc<ResumableMethod>,
    job_id: String,
    fence: u64,
    backend: Backend,
    request: DynamicMessage,
    /// The request message exactly as the app sent it (decompressed).
    original: Bytes,
    headers: HeaderMap,
    deadline: Option<Instant>,
    /// The last offset forwarded to the app.
    last: Option<Offset>,
    messages: u64,
    head: Option<oneshot::Sender<Response<ProxyBody>>>,
    rx: Option<mpsc::Receiver<Chunk>>,
    tx: AppTx,
    /// The offset and count of the last message queued to the app's body.
    sent: (Option<Offset>, u64),
    /// Registered with the checkpointer while the job is ours and running.
    slot: Option<SlotGuard>,
    done: CancellationToken,
    counters: Counters,
    /// Deliver mode: what the app's ResumeSink acknowledged (checkpoints follow it).
    ack: Option<Arc<AckState>>,
    /// Messages at or below the resume point dropped in the current attempt.
    attempt_duplicates: u64,
    out_of_order_logged: u64,
}

struct Counters {
    forwarded: Counter,
    duplicate: Counter,
    out_of_order: Counter,
    malformed: Counter,
    missing_offset: Counter,
}

impl Counters {
    fn new(m: &Metrics, method: &str) -> Self {
        let reason = |reason| {
            m.dropped
                .get_or_create(&ReasonLabels {
                    method: method.to_owned(),
                    reason,
                })
                .clone()
        };
        Counters {
            forwarded: m
                .forwarded
                .get_or_create(&MethodLabels {
                    method: method.to_owned(),
                })
                .clone(),
            duplicate: reason("duplicate"),
            out_of_order: reason("out_of_order"),
            malformed: reason("malformed"),
            missing_offset: reason("missing_offset"),
        }
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
    /// The sidecar cannot go on (a message it cannot read): job `failed`.
    Failed {
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
            if let Some(active) = ctx.active(&job_id) {
                let app_gone = active.app.upgrade().is_none_or(|tx| tx.is_closed());
                if app_gone {
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
                    let stored = offset.and_then(|text| {
                    Offset::parse(method.offset.leaf, &text)
                        .map_err(|e| tracing::warn!(job.id = %job_id, error = %e, "ignoring unreadable stored offset"))
                        .ok()
                });
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
        // The app's own resume value counts too: it already holds everything up to it.
        let last = std::cmp::max(stored, request::resume_value(&method, &request));

        Ok(Task::new(
            ctx,
            method,
            Claimed {
                job_id,
                fence,
                backend,
                last,
                messages,
            },
            request,
            original,
            parts.headers,
            deadline,
            None,
        ))
    }

    /// A task for a claimed job. `ack` is set in deliver mode: the receiver of the response is
    /// the ResumeSink pump, and checkpoints follow its acknowledgements instead of forwarding.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        ctx: Arc<StreamCtx>,
        method: Arc<ResumableMethod>,
        claimed: Claimed,
        request: DynamicMessage,
        original: Bytes,
        headers: HeaderMap,
        deadline: Option<Instant>,
        ack: Option<Arc<AckState>>,
    ) -> (Task, oneshot::Receiver<Response<ProxyBody>>) {
        let Claimed {
            job_id,
            fence,
            backend,
            last,
            messages,
        } = claimed;
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let (head_tx, head_rx) = oneshot::channel();
        let done = CancellationToken::new();
        if let Ok(mut active) = ctx.active.lock() {
            active.insert(
                job_id.clone(),
                ActiveJob {
                    app: tx.downgrade(),
                    done: done.clone(),
                },
            );
        }
        let slot =
            ctx.checkpointer
                .register(job_id.clone(), fence, backend, last.clone(), messages);
        if let Some(ack) = &ack {
            ack.attach(slot.slot.clone(), last.clone(), messages);
        }
        let counters = Counters::new(&ctx.metrics, &method.name);
        (
            Task {
                ctx,
                method,
                job_id,
                fence,
                backend,
                request,
                original,
                headers,
                deadline,
                sent: (last.clone(), messages),
                last,
                messages,
                head: Some(head_tx),
                rx: Some(rx),
                tx,
                slot: Some(slot),
                done,
                counters,
                ack,
                attempt_duplicates: 0,
                out_of_order_logged: 0,
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
        let active = self
            .ctx
            .metrics
            .streams_active
            .get_or_create(&MethodLabels {
                method: self.method.name.clone(),
            })
            .clone();
        active.inc();
        let outcome = match self.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, self.attempts())
                .await
                .unwrap_or(Outcome::DeadlineExceeded),
            None => self.attempts().await,
        };
        self.finish(outcome).await;
        active.dec();
    }

    async fn attempts(&mut self) -> Outcome {
        let mut backoff = self.ctx.backoff;
        let mut outage_since: Option<Instant> = None;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.attempt_duplicates = 0;
            let step = self.attempt().await;
            self.log_duplicates();
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
            let since = *outage_since.get_or_insert_with(Instant::now);
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
                offset = self.last.as_ref().map(ToString::to_string).unwrap_or_default(),
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
                _ = app_gone(&mut self.head, &self.tx) => return Outcome::AppGone,
                _ = self.ctx.shutdown.cancelled() => return Outcome::Shutdown,
            }
            if !progressed {
                backoff = (backoff * 2).min(self.ctx.backoff_max);
            }
        }
    }

    /// One upstream call, from request to the end of its body.
    async fn attempt(&mut self) -> Step {
        let message = match &self.last {
            Some(o) => match request::with_resume(&self.method, &self.request, o) {
                Ok(b) => b,
                Err(error) => return Step::Done(Outcome::Failed { error }),
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
        let (client, _in_flight) = self.ctx.upstream.pick();
        let res = tokio::select! {
            r = client.request(req) => r,
            _ = app_gone(&mut self.head, &self.tx) => return Step::Done(Outcome::AppGone),
            _ = self.ctx.shutdown.cancelled() => return Step::Done(Outcome::Shutdown),
        };
        let res = match res {
            Ok(r) => r,
            Err(e) => {
                return Step::Broken {
                    cause: "connect",
                    error: error_chain(&e),
                    progressed: false,
                };
            }
        };
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
        let (parts, mut body) = res.into_parts();
        let gzip = parts
            .headers
            .get("grpc-encoding")
            .is_some_and(|e| e.as_bytes() == b"gzip");
        if let (Some(head), Some(rx)) = (self.head.take(), self.rx.take()) {
            let mut headers = parts.headers;
            strip_hop_by_hop(&mut headers);
            headers.remove(header::CONTENT_LENGTH);
            // Compressed messages are forwarded decompressed (see `filter`).
            headers.remove("grpc-encoding");
            let slot = match (&self.slot, &self.ack) {
                (Some(g), None) => Some(g.slot.clone()),
                _ => None,
            };
            let mut res = Response::new(AppBody { rx, slot }.boxed_unsync());
            *res.headers_mut() = headers;
            if head.send(res).is_err() {
                return Step::Done(Outcome::AppGone);
            }
        }
        let mut deframer = Deframer::new(self.ctx.max_message_bytes);
        // While nothing has been forwarded in this attempt, messages at or below the last
        // forwarded offset are the server replaying the resume point: duplicates. After that,
        // a message that goes backwards breaks the ordering contract.
        let mut replaying = self.last.is_some();
        let mut progressed = false;
        let tx = self.tx.clone();
        // What one upstream frame leaves to forward: reused, not allocated per frame.
        let mut chunks: Vec<Chunk> = Vec::with_capacity(2);
        // Made once per attempt, not per frame: each makes and drops a waiter registration.
        let token = self.ctx.shutdown.clone();
        let shutdown = token.cancelled();
        tokio::pin!(shutdown);
        let app_closed = tx.closed();
        tokio::pin!(app_closed);
        loop {
            // Room in the app's queue first, then a frame from the upstream: data the app
            // cannot take yet stays under the upstream connection's flow-control window (one
            // bound for all streams) instead of in this task's hands.
            let permit = tokio::select! {
                biased;
                _ = &mut shutdown => return Step::Done(Outcome::Shutdown),
                p = tx.reserve() => match p {
                    Ok(p) => p,
                    Err(_) => return Step::Done(Outcome::AppGone),
                },
            };
            let frame = tokio::select! {
                biased;
                _ = &mut shutdown => return Step::Done(Outcome::Shutdown),
                _ = &mut app_closed => return Step::Done(Outcome::AppGone),
                f = body.frame() => f,
            };
            let frame = match frame {
                None => {
                    return Step::Broken {
                        cause: "eof",
                        error: "upstream ended the stream without a status".into(),
                        progressed,
                    };
                }
                Some(Err(e)) => {
                    return Step::Broken {
                        cause: classify(&e),
                        error: error_chain(&e),
                        progressed,
                    };
                }
                Some(Ok(frame)) => frame,
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    let Ok(trailers) = frame.into_trailers() else {
                        continue;
                    };
                    let (code, message) = grpc::status_of(&trailers).unwrap_or((
                        code::UNKNOWN,
                        "upstream trailers carry no grpc-status".into(),
                    ));
                    return self.status_step(code, message, trailers, progressed);
                }
            };
            let buffers = match deframer.push(data) {
                Ok(b) => b,
                Err(e) => {
                    self.counters.malformed.inc();
                    return Step::Done(Outcome::Failed {
                        error: format!("upstream sent an unreadable message: {e}"),
                    });
                }
            };
            let before = self.messages;
            chunks.clear();
            for whole in buffers {
                if whole.is_empty() {
                    continue;
                }
                match self.filter(whole, gzip, &mut replaying, &mut chunks) {
                    Ok(()) => {}
                    Err(outcome) => return Step::Done(outcome),
                }
            }
            let mut permit = Some(permit);
            for chunk in chunks.drain(..) {
                let progress = chunk.progress.clone();
                if let Some(p) = permit.take() {
                    p.send(chunk);
                } else {
                    let sent = tokio::select! {
                        biased;
                        _ = &mut shutdown => return Step::Done(Outcome::Shutdown),
                        r = tx.send(chunk) => r,
                    };
                    if sent.is_err() {
                        return Step::Done(Outcome::AppGone);
                    }
                }
                // In the app's body now: it gets it before any status we send.
                if let Some((offset, messages)) = progress {
                    self.sent = (Some(offset), messages);
                }
            }
            if self.messages > before {
                progressed = true;
                self.counters.forwarded.inc_by(self.messages - before);
            }
            if self.slot.as_ref().is_some_and(|s| s.slot.lost()) {
                return Step::Done(Outcome::Fenced);
            }
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

    /// Keeps the messages above the last forwarded offset; adds the bytes to forward to `out`,
    /// as slices of `whole` (no copy) unless a message had to be decompressed.
    ///
    /// Per message this only reads: offsets are compared where they lie in `whole` (`Found`),
    /// and `self.last` is made an owned `Offset` once per run of kept messages.
    fn filter(
        &mut self,
        whole: Bytes,
        gzip: bool,
        replaying: &mut bool,
        out: &mut Vec<Chunk>,
    ) -> Result<(), Outcome> {
        let mut run_start = 0;
        // The last kept message's offset while it is still only a place in `whole`.
        let mut pending: Option<Found> = None;
        let mut msgs = Messages::new(whole.clone());
        loop {
            let start = msgs.position();
            let Some((compressed, range)) = msgs.next_range() else {
                break;
            };
            let end = msgs.position();
            if compressed {
                // Rare: decompress, then compare against an owned `last`.
                self.settle(&mut pending, &whole);
                let framed = self.gunzip(&whole[range], gzip)?;
                let payload = framed.slice(5..);
                let offset = self.offset_in(&payload)?.to_offset(&payload);
                let keep = self.last.as_ref().is_none_or(|last| offset > *last);
                if start > run_start {
                    out.push(self.forward(whole.slice(run_start..start)));
                }
                run_start = end;
                if keep {
                    *replaying = false;
                    self.last = Some(offset);
                    self.messages += 1;
                    out.push(self.forward(framed));
                } else {
                    self.dropped(&offset, *replaying);
                }
                continue;
            }
            let found = match self.offset_in(&whole[range.clone()]) {
                Ok(f) => f.shifted(range.start),
                Err(outcome) => {
                    self.settle(&mut pending, &whole);
                    return Err(outcome);
                }
            };
            let keep = match (&pending, &self.last) {
                (Some(p), _) => found.cmp_found(p, &whole).is_gt(),
                (None, Some(last)) => found.cmp_offset(&whole, last).is_gt(),
                (None, None) => true,
            };
            if keep {
                *replaying = false;
                pending = Some(found);
                self.messages += 1;
                continue;
            }
            self.settle(&mut pending, &whole);
            if start > run_start {
                out.push(self.forward(whole.slice(run_start..start)));
            }
            run_start = end;
            self.dropped(&found.to_offset(&whole), *replaying);
        }
        self.settle(&mut pending, &whole);
        if whole.len() > run_start {
            out.push(self.forward(whole.slice(run_start..)));
        }
        Ok(())
    }

    /// Makes the last kept message's offset, if it is only a place in `whole`, `self.last`.
    fn settle(&mut self, pending: &mut Option<Found>, whole: &Bytes) {
        if let Some(found) = pending.take() {
            self.last = Some(found.to_offset(whole));
        }
    }

    /// The offset of one message's payload; a message without one, or unreadable, fails the job.
    #[inline]
    fn offset_in(&self, payload: &[u8]) -> Result<Found, Outcome> {
        match offset::find(payload, &self.method.offset) {
            Ok(Some(found)) => Ok(found),
            Ok(None) => Err(self.no_offset(None)),
            Err(e) => Err(self.no_offset(Some(e))),
        }
    }

    /// Why a message has no usable offset, counted; off the per-message path.
    #[cold]
    fn no_offset(&self, error: Option<offset::WireError>) -> Outcome {
        match error {
            None => {
                self.counters.missing_offset.inc();
                Outcome::Failed {
                    error: format!(
                        "upstream message {} has no offset field {}",
                        self.messages + 1,
                        self.method.offset_field
                    ),
                }
            }
            Some(e) => {
                self.counters.malformed.inc();
                Outcome::Failed {
                    error: format!("upstream message {} is unreadable: {e}", self.messages + 1),
                }
            }
        }
    }

    /// A compressed message's payload, decompressed and framed again (uncompressed).
    fn gunzip(&self, payload: &[u8], gzip: bool) -> Result<Bytes, Outcome> {
        if !gzip {
            self.counters.malformed.inc();
            return Err(Outcome::Failed {
                error: "upstream sent a compressed message without grpc-encoding: gzip".into(),
            });
        }
        let mut plain = Vec::new();
        if let Err(e) = GzDecoder::new(payload).read_to_end(&mut plain) {
            self.counters.malformed.inc();
            return Err(Outcome::Failed {
                error: format!("cannot gunzip an upstream message: {e}"),
            });
        }
        Ok(grpc::frame(&plain))
    }

    /// Counts (and logs) a message at or below the last forwarded offset.
    fn dropped(&mut self, offset: &Offset, replaying: bool) {
        if !replaying {
            self.counters.out_of_order.inc();
            self.out_of_order_logged += 1;
            if self.out_of_order_logged <= 10 {
                tracing::warn!(job.id = %self.job_id, offset = %offset, "dropped a message out of order: the upstream must stream in strictly ascending offset order");
            }
        } else {
            self.counters.duplicate.inc();
            self.attempt_duplicates += 1;
            tracing::debug!(job.id = %self.job_id, offset = %offset, "dropped a message at or below the last forwarded offset");
        }
    }

    /// Bytes to forward, ending with the message that set the current `last`.
    fn forward(&self, bytes: Bytes) -> Chunk {
        Chunk {
            frame: Frame::data(bytes),
            progress: self.last.clone().map(|o| (o, self.messages)),
        }
    }

    fn log_duplicates(&self) {
        if self.attempt_duplicates > 0 {
            tracing::info!(
                job.id = %self.job_id,
                dropped = self.attempt_duplicates,
                offset = self.last.as_ref().map(ToString::to_string).unwrap_or_default(),
                "dropped messages at or below the resume offset (already forwarded)"
            );
        }
    }

    /// Ends the app's call with the right status and writes the job's final state.
    async fn finish(mut self, outcome: Outcome) {
        // What the app holds: everything queued to its body, which it reads before the status;
        // if it is gone, only what its connection took (the rest died in our queue).
        let (held, held_messages) = match (&outcome, &self.slot) {
            (Outcome::AppGone, Some(guard)) => guard.slot.current(),
            _ => self.sent.clone(),
        };
        self.messages = held_messages;
        let mut offset_text = held.as_ref().map(ToString::to_string);
        let (mut status, mut app, mut error) = match outcome {
            Outcome::Completed(trailers) => (Some(JobStatus::Completed), Some(trailers), None),
            Outcome::UpstreamStatus { error, trailers } => {
                (Some(JobStatus::Failed), Some(trailers), Some(error))
            }
            Outcome::Failed { error } => {
                let message = format!("reprise: job {}: {error}", self.job_id);
                (
                    Some(JobStatus::Failed),
                    Some(grpc::status_trailers(code::INTERNAL, &message)),
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
                let message = format!(
                    "reprise: deadline exceeded; job {} is interrupted",
                    self.job_id
                );
                (
                    Some(JobStatus::Interrupted),
                    Some(grpc::status_trailers(code::DEADLINE_EXCEEDED, &message)),
                    Some("deadline exceeded".to_owned()),
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
            Outcome::AppGone => (
                Some(JobStatus::Interrupted),
                None,
                Some("app cancelled or disconnected".to_owned()),
            ),
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
                self.reply(trailers).await;
            }
            let delivered = ack.wait_done(Duration::from_secs(30)).await;
            if status == Some(JobStatus::Completed) && !delivered {
                status = Some(JobStatus::Interrupted);
                error = Some("the app's ResumeSink did not acknowledge every message".into());
            }
            (offset_text, self.messages) = ack.acked();
        }
        // The job's state first, so that when the app sees the status the job already says
        // what it holds (and, on shutdown, another pod has been told).
        drop(self.slot.take());
        let handoff =
            matches!(status, Some(JobStatus::Interrupted)) && self.ctx.shutdown.is_cancelled();
        if let Some(status) = status {
            let finish = Finish {
                job_id: self.job_id.clone(),
                fence: self.fence,
                status,
                offset: offset_text.clone(),
                messages: self.messages,
                error: error.clone(),
            };
            let written = self.ctx.store.finish(self.backend, &finish).await;
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
            self.reply(trailers).await;
        }
        let Task {
            ctx,
            job_id,
            messages,
            done,
            tx,
            ..
        } = self;
        drop(tx);
        let level_error = error.as_deref().unwrap_or("");
        tracing::info!(
            job.id = %job_id,
            status = status.map(|s| s.as_str()).unwrap_or("fenced"),
            messages,
            offset = offset_text.as_deref().unwrap_or(""),
            error = level_error,
            "stream ended"
        );
        if let Ok(mut active) = ctx.active.lock() {
            active.remove(&job_id);
        }
        done.cancel();
    }

    /// Sends the final status: as trailers after the messages, or as a trailers-only reply if
    /// the app has not had response headers yet.
    async fn reply(&mut self, mut trailers: HeaderMap) {
        trailers.remove(header::CONTENT_TYPE);
        trailers.remove(header::CONTENT_LENGTH);
        if let Some(head) = self.head.take() {
            let mut res = grpc::trailers_only(code::OK, "");
            res.headers_mut().remove(grpc::GRPC_STATUS);
            res.headers_mut().extend(trailers);
            let _ = head.send(res);
        } else {
            let chunk = Chunk {
                frame: Frame::trailers(trailers),
                progress: None,
            };
            let _ = self.tx.send(chunk).await;
        }
    }
}

/// Resolves when the app has gone away: before response headers, the handler was dropped;
/// after, the response body was.
async fn app_gone(head: &mut Option<oneshot::Sender<Response<ProxyBody>>>, tx: &AppTx) {
    match head {
        Some(h) => h.closed().await,
        None => tx.closed().await,
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
    if msgs.len() != 1 || deframer.pending() > 0 {
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
        Some(b"gzip") => {
            let mut plain = Vec::new();
            GzDecoder::new(message.as_ref())
                .take(max as u64 + 1)
                .read_to_end(&mut plain)
                .map_err(|e| {
                    reject(
                        code::INVALID_ARGUMENT,
                        format!("reprise: cannot gunzip the request: {e}"),
                    )
                })?;
            if plain.len() > max {
                return Err(reject(
                    code::INVALID_ARGUMENT,
                    format!("reprise: request exceeds max_message_bytes ({max})"),
                ));
            }
            Ok(plain.into())
        }
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
