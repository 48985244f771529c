//! Handoff events: what a stream tells other pods when it ends. Without `amqp_url` nothing is
//! published (the job in Redis is the truth either way; events only make takeovers fast).

/// The job fields an event carries.
pub struct JobEvent<'a> {
    pub job_id: &'a str,
    pub method: &'a str,
    pub offset: Option<&'a str>,
    pub fence: u64,
}

#[derive(Default)]
pub struct Events {}

impl Events {
    /// `job.interrupted.{service}`; returns once the broker confirmed it or it is in the outbox.
    pub async fn interrupted(&self, job: &JobEvent<'_>, reason: &str) {
        tracing::debug!(
            job.id = job.job_id,
            reason,
            "no event bus configured; interrupted event not published"
        );
    }

    /// Shutdown step 2: stop taking handoffs.
    pub async fn cancel_consumer(&self) {}

    /// Shutdown step 5: close the channel, then the connection.
    pub async fn close(&self) {}

    /// `job.completed.{service}`, published in the background.
    pub fn completed(&self, job: &JobEvent<'_>) {
        tracing::trace!(
            job.id = job.job_id,
            "no event bus configured; completed event not published"
        );
    }
}
