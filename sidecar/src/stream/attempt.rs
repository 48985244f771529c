//! One job's upstream attempts: each sends the app's request (with the resume field from the
//! second on), waits for response headers (probing a silent upstream), hands the body to the
//! pipe and waits for the attempt to end. A break is retried with backoff until `max_outage`.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request, Response, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::{sync::oneshot, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{Outcome, Recipient, Step, Task};
use crate::{
    grpc::{self, ProxyBody, code, error_chain},
    metrics::ReasonLabels,
    pipe::End,
    request,
    upstream::{UpstreamClient, strip_hop_by_hop, upstream_uri},
};

impl Task {
    pub(super) async fn attempts(&mut self) -> Outcome {
        let mut backoff = self.ctx.settings.backoff;
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
                backoff = self.ctx.settings.backoff;
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
            self.sync_home();
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
                _ = self.ctx.interrupt.cancelled() => return Outcome::Shutdown,
            }
            if !progressed {
                backoff = (backoff * 2).min(self.ctx.settings.backoff_max);
            }
        }
    }

    /// One upstream call, from request to the end of its body. `budget` is what is left of
    /// `max_outage`: the longest the response headers may take unless the upstream is seen to
    /// be alive (see [`Task::response`]).
    async fn attempt(&mut self, budget: Duration) -> Step {
        let req = match self.upstream_request() {
            Ok(req) => req,
            Err(step) => return step,
        };
        // Held until this attempt's body is done.
        let ctx = self.ctx.clone();
        let (client, _in_flight) = ctx.upstream.pick();
        let res = match self.response(client, req, budget).await {
            Ok(res) => res,
            Err(step) => return step,
        };
        let (parts, body) = match self.streaming_response(res) {
            Ok(streaming) => streaming,
            Err(step) => return step,
        };
        let gzip = parts
            .headers
            .get("grpc-encoding")
            .is_some_and(|e| e.as_bytes() == b"gzip");
        if let Some(head) = self.head.take()
            && let Err(step) = self.answer_app(head, parts.headers)
        {
            return step;
        }
        self.stream_attempt(body, gzip).await
    }

    /// The request of the next attempt: the app's, with the resume field set to the last
    /// offset forwarded (none on the first attempt), and what is left of its deadline.
    fn upstream_request(&self) -> Result<Request<ProxyBody>, Step> {
        let message = match &self.pipe.position().0 {
            Some(o) => request::with_resume(&self.method.resume_path, &self.original, o).map_err(
                |error| {
                    Step::Done(Outcome::Failed {
                        code: code::INTERNAL,
                        error,
                    })
                },
            )?,
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
        Ok(req)
    }

    /// The upstream's response when it streams messages; a status in its headers (an HTTP
    /// error, a trailers-only reply, metadata over the limit) ends the attempt instead.
    fn streaming_response(
        &self,
        res: Response<Incoming>,
    ) -> Result<(http::response::Parts, Incoming), Step> {
        if let Err(message) = self
            .ctx
            .upstream
            .check_metadata(res.headers(), "upstream response metadata")
        {
            // Not an outage: the same request would get the same headers again.
            let trailers = grpc::status_trailers(code::RESOURCE_EXHAUSTED, &message);
            return Err(Step::Done(Outcome::UpstreamStatus {
                error: message,
                trailers,
            }));
        }
        if res.status() != http::StatusCode::OK {
            let code = grpc::code_for_http_status(res.status());
            let error = format!("upstream answered HTTP {}", res.status());
            let trailers = grpc::status_trailers(code, &format!("reprise: {error}"));
            return Err(self.status_step(code, error, trailers, false));
        }
        if let Some((code, message)) = grpc::status_of(res.headers()) {
            // Trailers-only: the whole reply is a status.
            let headers = res.into_parts().0.headers;
            return Err(self.status_step(code, message, headers, false));
        }
        Ok(res.into_parts())
    }

    /// The first attempt that streams answers the app: the upstream's headers, and a body
    /// that reads the pipe.
    fn answer_app(
        &mut self,
        head: oneshot::Sender<Response<ProxyBody>>,
        mut headers: HeaderMap,
    ) -> Result<(), Step> {
        strip_hop_by_hop(&mut headers);
        headers.remove(header::CONTENT_LENGTH);
        // Compressed messages are forwarded decompressed (see `Filter`).
        headers.remove("grpc-encoding");
        // The app's connection taking a chunk moves the checkpoint, unless in deliver
        // mode, where acknowledgements do.
        let slot = match (&self.slot, &self.recipient) {
            (Some(g), Recipient::App) => Some(g.slot.clone()),
            _ => None,
        };
        let body = self.pipe.body(slot, self.app_gone.clone());
        let mut res = Response::new(body.boxed_unsync());
        *res.headers_mut() = headers;
        head.send(res).map_err(|_| Step::Done(Outcome::AppGone))
    }

    /// From here the app's body streams the upstream; this task waits for the attempt to end,
    /// or for shutdown or the app going away, and then takes the upstream back.
    async fn stream_attempt(&mut self, body: Incoming, gzip: bool) -> Step {
        self.pipe
            .start(body, gzip, self.ctx.settings.max_message_bytes);
        let end = tokio::select! {
            biased;
            _ = self.ctx.interrupt.cancelled() => None,
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
                _ = self.ctx.interrupt.cancelled() => return Err(Step::Done(Outcome::Shutdown)),
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
}

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

/// Resolves when the app has gone away: before response headers, the handler was dropped;
/// after, the response body was.
pub(super) async fn app_gone(
    head: &mut Option<oneshot::Sender<Response<ProxyBody>>>,
    body_gone: &CancellationToken,
) {
    match head {
        Some(h) => h.closed().await,
        None => body_gone.cancelled().await,
    }
}
