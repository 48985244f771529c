//! How a job's call ends. [`settle`] decides, from the outcome and a few facts, what the job
//! becomes, what status the app gets and why: pure, unit-tested without a runtime. The I/O step
//! ([`Task::finish`]) then waits for a ResumeSink's acknowledgements, writes the job's final
//! state, publishes the event and sends the status.

use std::time::Duration;

use http::HeaderMap;
use reprise_jobs::{Finish, JobStatus, Write};
use tokio::time::Instant;

use super::{
    Outcome, Recipient, Task,
    read::{self, EndRead, HandedRead},
};
use crate::{
    config::AppCancel,
    events::JobEvent,
    grpc::{self, code},
    metrics::ReasonLabels,
};

/// How long after a call's end its connection may take to close and still count as the cause.
const APP_CONNECTION_GRACE: Duration = Duration::from_millis(5);
/// A call the app drops this close to its deadline was ended by the deadline.
const DEADLINE_SLACK: Duration = Duration::from_millis(50);
/// How long a ResumeSink has to acknowledge the end of a delivered stream.
const SINK_ACK_WAIT: Duration = Duration::from_secs(30);
/// How long a delivery that stopped because the ResumeSink went away waits before the job is
/// offered to the service's pods again: an app that restarts serves its sink again in about
/// this time, and a sink that stays away costs one takeover per this interval.
const SINK_RETRY_DELAY: Duration = Duration::from_secs(2);

/// What settles a call besides its outcome; gathered before [`settle`], which does no I/O.
pub(super) struct Facts<'a> {
    pub job_id: &'a str,
    /// The offset the app holds, as text.
    pub offset: Option<&'a str>,
    pub max_outage: Duration,
    pub on_app_cancel: AppCancel,
    /// The call's deadline had passed when it ended.
    pub deadline_passed: bool,
    /// The app's connection closed with the call (it went away, rather than cancelling).
    pub connection_lost: bool,
}

/// The end of a call: the job's final status (`None`: another owner has it, write nothing),
/// the status for the app (`None`: the app is gone) and the job's `last_error`.
#[derive(Debug, PartialEq)]
pub(super) struct Settled {
    pub status: Option<JobStatus>,
    pub app: Option<HeaderMap>,
    pub error: Option<String>,
}

/// Decides how the call ends.
pub(super) fn settle(outcome: Outcome, facts: &Facts<'_>) -> Settled {
    let Facts { job_id, .. } = *facts;
    let at = facts.offset.unwrap_or("(none)");
    let ends = |status, code, message: String, error| Settled {
        status: Some(status),
        app: Some(grpc::status_trailers(code, &message)),
        error,
    };
    match outcome {
        Outcome::Completed(trailers) => Settled {
            status: Some(JobStatus::Completed),
            app: Some(trailers),
            error: None,
        },
        Outcome::UpstreamStatus { error, trailers } => Settled {
            status: Some(JobStatus::Failed),
            app: Some(trailers),
            error: Some(error),
        },
        Outcome::Failed { code, error } => ends(
            JobStatus::Failed,
            code,
            format!("reprise: job {job_id}: {error}"),
            Some(error),
        ),
        Outcome::GaveUp { error } => ends(
            JobStatus::Interrupted,
            code::UNAVAILABLE,
            format!(
                "reprise: upstream unavailable for {}; job {job_id} is interrupted at offset {at}: {error}",
                humantime::format_duration(facts.max_outage),
            ),
            Some(error),
        ),
        Outcome::DeadlineExceeded => {
            let (status, why) =
                app_choice(facts.on_app_cancel, "its deadline (grpc-timeout) passed");
            let message = format!(
                "reprise: deadline exceeded; job {job_id} is {}",
                status.as_str()
            );
            ends(status, code::DEADLINE_EXCEEDED, message, Some(why))
        }
        Outcome::Shutdown => ends(
            JobStatus::Interrupted,
            code::UNAVAILABLE,
            format!("reprise: sidecar shutting down; job {job_id} is interrupted at offset {at}"),
            Some("sidecar shutting down".to_owned()),
        ),
        Outcome::AppGone => {
            let (status, why) = if facts.deadline_passed {
                // The app's own deadline fired (its client cancels the stream when it does):
                // the same choice as the sidecar enforcing `grpc-timeout`.
                app_choice(facts.on_app_cancel, "its deadline (grpc-timeout) passed")
            } else if facts.connection_lost {
                (
                    JobStatus::Interrupted,
                    "the app's connection closed (the app went away): resumable".to_owned(),
                )
            } else {
                app_choice(
                    facts.on_app_cancel,
                    "it cancelled the call on a live connection",
                )
            };
            Settled {
                status: Some(status),
                app: None,
                error: Some(why),
            }
        }
        Outcome::Fenced => Settled {
            status: None,
            app: Some(grpc::status_trailers(
                code::UNAVAILABLE,
                &format!("reprise: job {job_id} was taken over by another owner"),
            )),
            error: None,
        },
    }
}

/// What the job becomes when the app ended the call itself (`why`), by `on_app_cancel`.
fn app_choice(on_app_cancel: AppCancel, why: &str) -> (JobStatus, String) {
    match on_app_cancel {
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

impl Task {
    /// Ends the app's call with the right status and writes the job's final state.
    pub(super) async fn finish(mut self, mut outcome: Outcome) {
        // The upstream is done with, whatever ended the call (a deadline stops the attempt
        // where it was).
        self.pipe.stop();
        // A stream the upstream completed ends for the app once the app has read it: a job
        // `completed` with its tail unread would run afresh from the start when the app,
        // killed before reading it, asks again.
        if let (Outcome::Completed(_), Some(_), Some(app), None) =
            (&outcome, &self.slot, &self.app_connection, self.ack())
        {
            let began = Instant::now();
            let read = read::end_read(&self.pipe, app, &self.app_gone, &self.ctx.interrupt).await;
            let metrics = &self.ctx.metrics;
            let labels = crate::metrics::OutcomeLabels {
                outcome: read.label(),
            };
            metrics.end_reads.get_or_create(&labels).inc();
            metrics
                .end_read_wait_seconds
                .inc_by(began.elapsed().as_secs_f64());
            match read {
                EndRead::Read { .. } => {}
                EndRead::AppGone => outcome = Outcome::AppGone,
                EndRead::Shutdown => outcome = Outcome::Shutdown,
            }
        }
        let deadline_passed = self.deadline_passed();
        let connection_lost = matches!(outcome, Outcome::AppGone)
            && !deadline_passed
            && self.app_connection_lost().await;
        // A handoff says the app holds what it was handed, which is true of an app that reads
        // it all; one that dies first never does. So the app is given `handoff_read_wait` to
        // read it before the job's offset is written (its status comes after that).
        let handed_read = match (&outcome, &self.slot, &self.app_connection) {
            (Outcome::Shutdown, Some(_), Some(app))
                if self.ack().is_none() && !self.ctx.settings.handoff_read_wait.is_zero() =>
            {
                let read =
                    read::handed_read(&self.pipe, app, self.ctx.settings.handoff_read_wait).await;
                self.ctx
                    .metrics
                    .handoff_reads
                    .get_or_create(&crate::metrics::OutcomeLabels {
                        outcome: read.label(),
                    })
                    .inc();
                Some(read)
            }
            _ => None,
        };
        // What the app holds: everything the filter passed, which its body yields before the
        // status. If it is gone, only what its connection took (the rest died in the pipe),
        // and if its connection went too (it died), of that only what it surely read: the
        // job resumes at least one HTTP/2 window behind, so nothing it never read is skipped.
        let (held, mut messages, rewound) = match (&outcome, &self.slot, &self.app_connection) {
            (Outcome::AppGone, Some(guard), Some(app)) if connection_lost => {
                let (held, messages) = guard.slot.consumed(app.window.unread_bound());
                (held, messages, true)
            }
            (Outcome::Shutdown, Some(guard), Some(app))
                if handed_read.is_some_and(|r| r != HandedRead::Read) =>
            {
                let unread = match handed_read {
                    Some(HandedRead::NotRead {
                        unacked: Some(unacked),
                    }) => app.window.unread_of(unacked),
                    _ => app.window.unread_bound(),
                };
                let (held, messages) = guard.slot.consumed(unread);
                tracing::warn!(
                    job.id = %self.job_id,
                    found = handed_read.map_or("", HandedRead::label),
                    unread,
                    offset = held.as_ref().map(ToString::to_string).unwrap_or_default(),
                    "the app had not read what it was handed when the handoff was written: the job resumes where it surely had"
                );
                (held, messages, true)
            }
            (Outcome::AppGone, Some(guard), _) => {
                let (held, messages) = guard.slot.current();
                (held, messages, false)
            }
            _ => {
                let (held, messages) = self.pipe.position();
                (held, messages, false)
            }
        };
        let mut offset = held.as_ref().map(ToString::to_string);
        if rewound && offset.is_none() {
            // Back to the very start: "no offset yet" is the empty offset with no messages (a
            // missing one would keep the last checkpoint's).
            offset = Some(String::new());
        }
        let facts = Facts {
            job_id: &self.job_id,
            offset: offset.as_deref(),
            max_outage: self.method.max_outage,
            on_app_cancel: self.method.on_app_cancel,
            deadline_passed,
            connection_lost,
        };
        let Settled {
            mut status,
            mut app,
            mut error,
        } = settle(outcome, &facts);
        if let Some(ack) = self.ack().cloned() {
            // Deliver mode: the "app" is the ResumeSink pump. It gets the end of the stream
            // first; the job is complete only once the sink acknowledged every message, and it
            // holds exactly what was acknowledged.
            if let Some(trailers) = app.take() {
                self.reply(trailers);
            }
            let delivered = ack.wait_done(SINK_ACK_WAIT).await;
            if status == Some(JobStatus::Completed) && !delivered {
                status = Some(JobStatus::Interrupted);
                error = Some("the app's ResumeSink did not acknowledge every message".into());
            }
            (offset, messages) = ack.acked();
        }
        // The job's state first, so that when the app sees the status the job already says
        // what it holds (and, on shutdown, another pod has been told).
        // Where the job lives now: a job claimed in memory may have moved to Redis since.
        self.sync_home();
        let job = self.slot.take().map(|guard| guard.slot.job.clone());
        if let Some(status) = status {
            let finish = Finish {
                job_id: self.job_id.clone(),
                fence: self.fence,
                status,
                offset: offset.clone(),
                messages,
                error: error.clone(),
            };
            self.write_final_state(finish, job).await;
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
        tracing::info!(
            job.id = %job_id,
            status = status.map(|s| s.as_str()).unwrap_or("fenced"),
            messages,
            offset = offset.as_deref().unwrap_or(""),
            error = error.as_deref().unwrap_or(""),
            "stream ended"
        );
        // Last: the next identical request may claim the job now.
        drop(active);
    }

    /// Writes the job's final state (the owner writes a forgotten job back), counts it, and
    /// tells the other pods: a handoff waits for the broker's confirm (or the outbox) before
    /// the app's call ends, so the leaving pod has done its part when it exits.
    async fn write_final_state(&self, finish: Finish, job: Option<reprise_jobs::NewJob>) {
        let status = finish.status;
        let handoff = status == JobStatus::Interrupted && self.ctx.interrupt.is_cancelled();
        let written = self
            .ctx
            .store
            .finish_call(self.backend, &finish, job.as_ref())
            .await;
        if written == Some(Write::Fenced) {
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
        let event = JobEvent {
            job_id: &self.job_id,
            method: &self.method.name,
            offset: finish.offset.as_deref(),
            fence: self.fence,
        };
        match status {
            JobStatus::Interrupted if handoff && written.is_some() => {
                self.ctx
                    .events
                    .interrupted(&event, "sidecar shutting down")
                    .await;
            }
            // A delivery that stopped because the ResumeSink went away (the app died or
            // restarts): nobody else will ask for the job, so it is offered to the service's
            // pods again once the sink has had a moment to come back (this pod included).
            JobStatus::Interrupted
                if matches!(self.recipient, Recipient::ResumeSink(_))
                    && written == Some(Write::Ok) =>
            {
                let (ctx, job_id, method, offset, fence) = (
                    self.ctx.clone(),
                    self.job_id.clone(),
                    self.method.name.clone(),
                    finish.offset.clone(),
                    self.fence,
                );
                self.ctx.tracker.spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep(SINK_RETRY_DELAY) => {}
                        _ = ctx.interrupt.cancelled() => {}
                    }
                    let event = JobEvent {
                        job_id: &job_id,
                        method: &method,
                        offset: offset.as_deref(),
                        fence,
                    };
                    ctx.events
                        .interrupted(&event, "the ResumeSink went away during delivery")
                        .await;
                });
            }
            JobStatus::Completed => self.ctx.events.completed(&event),
            _ => {}
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
        let Some(connection) = self.app_connection.as_ref().map(|c| &c.closed) else {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(on_app_cancel: AppCancel) -> Facts<'static> {
        Facts {
            job_id: "job-1",
            offset: Some("42"),
            max_outage: Duration::from_secs(30),
            on_app_cancel,
            deadline_passed: false,
            connection_lost: false,
        }
    }

    fn app_status(s: &Settled) -> Option<(i32, String)> {
        s.app.as_ref().and_then(grpc::status_of)
    }

    #[test]
    fn an_outage_interrupts_the_job_at_the_offset_the_app_holds() {
        let s = settle(
            Outcome::GaveUp {
                error: "connection refused".into(),
            },
            &facts(AppCancel::Restart),
        );
        assert_eq!(s.status, Some(JobStatus::Interrupted));
        let (code, message) = app_status(&s).expect("a status");
        assert_eq!(code, code::UNAVAILABLE);
        assert!(
            message.contains("unavailable for 30s; job job-1 is interrupted at offset 42"),
            "{message}"
        );
        assert_eq!(s.error.as_deref(), Some("connection refused"));
    }

    #[test]
    fn an_app_that_went_away_can_resume_one_that_cancelled_follows_on_app_cancel() {
        let mut gone = facts(AppCancel::Restart);
        gone.connection_lost = true;
        let s = settle(Outcome::AppGone, &gone);
        assert_eq!(
            (s.status, s.app.is_none()),
            (Some(JobStatus::Interrupted), true)
        );

        let s = settle(Outcome::AppGone, &facts(AppCancel::Restart));
        assert_eq!(s.status, Some(JobStatus::Failed));
        assert!(
            s.error
                .as_deref()
                .is_some_and(|e| e.contains("on_app_cancel: restart"))
        );

        let s = settle(Outcome::AppGone, &facts(AppCancel::Resume));
        assert_eq!(s.status, Some(JobStatus::Interrupted));

        // A deadline that passed decides, whatever the connection did.
        let mut late = gone;
        late.deadline_passed = true;
        let s = settle(Outcome::AppGone, &late);
        assert_eq!(s.status, Some(JobStatus::Failed));
        assert!(s.error.as_deref().is_some_and(|e| e.contains("deadline")));
    }

    #[test]
    fn the_sidecars_own_deadline_and_failures_give_their_codes() {
        let s = settle(Outcome::DeadlineExceeded, &facts(AppCancel::Resume));
        assert_eq!(s.status, Some(JobStatus::Interrupted));
        assert_eq!(
            app_status(&s).map(|(c, _)| c),
            Some(code::DEADLINE_EXCEEDED)
        );

        let s = settle(
            Outcome::Failed {
                code: code::RESOURCE_EXHAUSTED,
                error: "too large".into(),
            },
            &facts(AppCancel::Restart),
        );
        assert_eq!(s.status, Some(JobStatus::Failed));
        assert_eq!(
            app_status(&s),
            Some((
                code::RESOURCE_EXHAUSTED,
                "reprise: job job-1: too large".into()
            ))
        );
    }

    #[test]
    fn a_fenced_job_writes_nothing_and_a_completed_one_passes_the_upstreams_trailers() {
        let s = settle(Outcome::Fenced, &facts(AppCancel::Restart));
        assert_eq!(s.status, None);
        assert_eq!(app_status(&s).map(|(c, _)| c), Some(code::UNAVAILABLE));

        let trailers = grpc::status_trailers(code::OK, "");
        let s = settle(
            Outcome::Completed(trailers.clone()),
            &facts(AppCancel::Restart),
        );
        assert_eq!(
            s,
            Settled {
                status: Some(JobStatus::Completed),
                app: Some(trailers),
                error: None,
            }
        );
    }
}
