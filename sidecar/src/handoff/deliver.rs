//! `resume: deliver`: this sidecar takes over a job another pod handed off, resumes the
//! upstream stream itself, and delivers the rest to the local app's `reprise.v1.ResumeSink`.
//!
//! The stream task is the same as for an app's call; only its "app" differs: a pump reads the
//! response body (whole gRPC messages, then the status), sends each message to the sink and
//! reads its acknowledgements. Checkpoints follow the acknowledgements, so a message the sink
//! never acknowledged is delivered again by whoever resumes the job next.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, Response, Uri, header};
use http_body_util::BodyExt;
use reprise_jobs::{Claim, JobRecord, JobStatus, NewJob};
use reprise_proto::reprise::v1::{
    Delivery, End, Message, Start, delivery::Kind, resume_sink_client::ResumeSinkClient,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument as _;

use crate::{
    descriptors::ResumableMethod,
    grpc::{self, Deframer, Messages, ProxyBody, code},
    offset::{self, Offset},
    request,
    stream::{AckState, Call, Claimed, Recipient, StreamCtx, Task},
};

/// Why a handoff was not taken.
#[derive(Debug)]
pub enum TakeOverError {
    /// The job store did not answer: another try (here or on another pod) may succeed.
    Store(String),
    /// The stored job cannot be resumed by this build (its request no longer decodes).
    Unusable(String),
}

impl std::fmt::Display for TakeOverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TakeOverError::Store(e) => write!(f, "job store: {e}"),
            TakeOverError::Unusable(e) => f.write_str(e),
        }
    }
}

/// Takes over `job_id` if it is still waiting (`interrupted` or `orphaned`) and starts
/// delivering it to `sink`. `Ok(false)`: nothing to do (another pod was faster, or it is done).
pub async fn take_over(
    ctx: &Arc<StreamCtx>,
    method: Arc<ResumableMethod>,
    sink: &Uri,
    record: JobRecord,
) -> Result<bool, TakeOverError> {
    if !matches!(record.status, JobStatus::Interrupted | JobStatus::Orphaned) {
        return Ok(false);
    }
    let original = base64::engine::general_purpose::STANDARD
        .decode(&record.request_b64)
        .map_err(|e| TakeOverError::Unusable(format!("stored request is not base64: {e}")))?;
    // A stored request that no longer decodes cannot be resumed: say so now.
    let decoded = request::decode(&method, &original).map_err(TakeOverError::Unusable)?;
    let new_job = NewJob {
        job_id: record.job_id.clone(),
        service: record.service.clone(),
        method: record.method.clone(),
        request_b64: record.request_b64.clone(),
        request_json: record.request_json.clone(),
        owner: ctx.owner.clone(),
        lease_ttl: ctx.settings.lease_ttl,
        resume: method.mode,
    };
    let (backend, claim) = ctx
        .store
        .take_over(&new_job)
        .await
        .map_err(TakeOverError::Store)?;
    let Some(Claim::Resumed {
        fence,
        offset,
        messages,
        previous_status,
    }) = claim
    else {
        return Ok(false);
    };
    let last = Offset::from_stored(method.offset.leaf, offset.as_deref(), messages)
        .map_err(|e| tracing::warn!(job.id = %record.job_id, error = %e, "ignoring unreadable stored offset"))
        .ok()
        .flatten();
    tracing::info!(
        job.id = %record.job_id,
        from.pod = %record.owner.pod,
        from = previous_status.as_str(),
        offset = last.as_ref().map(ToString::to_string).unwrap_or_default(),
        "took over a handed-off job; delivering the rest to the app's ResumeSink"
    );
    let start = start_message(&record, last.as_ref(), previous_status, &original);
    let ack = AckState::new();
    let (task, head) = Task::new(
        ctx.clone(),
        method.clone(),
        Claimed {
            job: new_job,
            fence,
            backend,
            last,
            messages,
            moved: false,
        },
        Call {
            original: original.into(),
            request: decoded,
            headers: upstream_headers(),
            deadline: None,
            base_id: record.job_id.clone(),
            app_connection: None,
        },
        Recipient::ResumeSink(ack.clone()),
    );
    task.spawn();
    let pump = Pump {
        sink: sink.clone(),
        method,
        ack,
        next_seq: messages + 1,
        max_message_bytes: ctx.settings.max_message_bytes,
    };
    let span = tracing::info_span!("deliver", job.id = %record.job_id);
    ctx.tracker.spawn(pump.run(head, start).instrument(span));
    Ok(true)
}

/// The sink's first message: which job it gets, from where, and why.
fn start_message(
    record: &JobRecord,
    last: Option<&Offset>,
    previous_status: JobStatus,
    original: &[u8],
) -> Start {
    Start {
        job_id: record.job_id.clone(),
        service: record.service.clone(),
        method: record.method.clone(),
        request: original.to_vec(),
        request_json: record.request_json.clone(),
        offset: last.as_ref().map(ToString::to_string).unwrap_or_default(),
        from_pod: record.owner.pod.clone(),
        reason: previous_status.as_str().to_owned(),
    }
}

/// The original call's metadata is not stored (it may carry credentials): a takeover sends only
/// what gRPC needs.
fn upstream_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    h.insert("grpc-accept-encoding", HeaderValue::from_static("identity"));
    h
}

struct Pump {
    sink: Uri,
    method: Arc<ResumableMethod>,
    ack: Arc<AckState>,
    next_seq: u64,
    max_message_bytes: usize,
}

impl Pump {
    async fn run(self, head: oneshot::Receiver<Response<ProxyBody>>, start: Start) {
        let ack = self.ack.clone();
        match self.deliver(head, start).await {
            Ok(()) => ack.set_done(true),
            Err(e) => {
                tracing::warn!(error = %e, "delivery to the app's ResumeSink stopped; the job stays resumable from the last acknowledged offset");
                ack.set_done(false);
            }
        }
    }

    async fn deliver(
        mut self,
        head: oneshot::Receiver<Response<ProxyBody>>,
        start: Start,
    ) -> Result<(), String> {
        let channel = tonic::transport::Endpoint::from(self.sink.clone())
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("cannot reach the ResumeSink at {}: {e}", self.sink))?;
        let (out, out_rx) = mpsc::channel::<Delivery>(64);
        send(&out, Kind::Start(start)).await?;
        let mut client = ResumeSinkClient::new(channel);
        let pending: Arc<Mutex<VecDeque<(u64, Offset)>>> = Arc::default();
        // The call is opened by the reader: some gRPC servers (grpcio) send response headers
        // only with their first Ack, so messages must flow before the headers arrive.
        let (state, in_flight) = (self.ack.clone(), pending.clone());
        let reader = tokio::spawn(async move {
            let acks = client
                .deliver(ReceiverStream::new(out_rx))
                .await
                .map_err(|s| format!("ResumeSink/Deliver: {}: {}", s.code(), s.message()))?
                .into_inner();
            read_acks(acks, in_flight, state).await
        });

        let res = head
            .await
            .map_err(|_| "the stream task ended without a response")?;
        let (parts, mut body) = res.into_parts();
        let end = if let Some((code, message)) = grpc::status_of(&parts.headers) {
            End { code, message }
        } else {
            let mut deframer = Deframer::new(self.max_message_bytes);
            loop {
                match body.frame().await {
                    None => {
                        break End {
                            code: code::UNKNOWN,
                            message: "stream ended without a status".into(),
                        };
                    }
                    Some(Err(e)) => return Err(format!("stream task: {e}")),
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => {
                            for whole in deframer.push(data).map_err(|e| e.to_string())? {
                                self.forward(whole, &out, &pending).await?;
                            }
                        }
                        Err(frame) => {
                            let trailers = frame.into_trailers().unwrap_or_default();
                            let (code, message) = grpc::status_of(&trailers)
                                .unwrap_or((code::UNKNOWN, String::new()));
                            break End { code, message };
                        }
                    },
                }
            }
        };
        let complete = end.code == code::OK;
        send(&out, Kind::End(end)).await?;
        drop(out);
        // The sink answers the end of our stream by ending its acks.
        reader.await.map_err(|e| format!("ack reader: {e}"))??;
        let unacked = pending.lock().map(|p| p.len()).unwrap_or(usize::MAX);
        if unacked > 0 {
            return Err(format!(
                "the sink ended with {unacked} message(s) unacknowledged"
            ));
        }
        if complete {
            Ok(())
        } else {
            Err("the upstream stream did not complete".into())
        }
    }

    /// Sends every message in `whole` as a `Delivery`, remembering each seq's offset.
    async fn forward(
        &mut self,
        whole: bytes::Bytes,
        out: &mpsc::Sender<Delivery>,
        pending: &Mutex<VecDeque<(u64, Offset)>>,
    ) -> Result<(), String> {
        for (_, payload) in Messages::new(whole) {
            let offset = offset::extract(&payload, &self.method.offset)
                .map_err(|e| e.to_string())?
                .ok_or("message without offset")?;
            let seq = self.next_seq;
            self.next_seq += 1;
            if let Ok(mut p) = pending.lock() {
                p.push_back((seq, offset.clone()));
            }
            let message = Message {
                seq,
                offset: offset.to_string(),
                payload: payload.to_vec(),
            };
            send(out, Kind::Message(message)).await?;
        }
        Ok(())
    }
}

async fn send(out: &mpsc::Sender<Delivery>, kind: Kind) -> Result<(), String> {
    out.send(Delivery { kind: Some(kind) })
        .await
        .map_err(|_| "the ResumeSink closed the call".to_owned())
}

/// Moves the acknowledged point forward as acks arrive (an ack covers every seq up to it).
async fn read_acks(
    mut acks: tonic::Streaming<reprise_proto::reprise::v1::Ack>,
    pending: Arc<Mutex<VecDeque<(u64, Offset)>>>,
    state: Arc<AckState>,
) -> Result<(), String> {
    loop {
        let ack = match acks.message().await {
            Ok(Some(a)) => a,
            Ok(None) => return Ok(()),
            Err(s) => return Err(format!("ResumeSink acks: {}: {}", s.code(), s.message())),
        };
        let mut last = None;
        if let Ok(mut p) = pending.lock() {
            while p.front().is_some_and(|(seq, _)| *seq <= ack.seq) {
                last = p.pop_front();
            }
        }
        if let Some((seq, offset)) = last {
            state.acked_to(offset, seq);
        }
    }
}
