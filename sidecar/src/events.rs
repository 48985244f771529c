//! Handoff events on RabbitMQ: what a stream tells the other pods of its service when it is
//! interrupted, and the consumer through which a `resume: deliver` sidecar takes jobs over.
//!
//! Redis is the truth; events only make takeovers fast. An event the broker cannot take goes to
//! the Redis outbox and is published once the broker is back. Without `amqp_url` nothing is
//! published and nothing is consumed.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::Uri;
use reprise_jobs::{
    BusConfig, ConsumerCanceller, Event, EventBus, EventKind, Outbox, Owner, Publisher, RedisStore,
    Sent,
};
use tokio_util::sync::CancellationToken;

use crate::{config::redact, deliver, descriptors::ResumableMethod, stream::StreamCtx};

/// The job fields an event carries.
pub struct JobEvent<'a> {
    pub job_id: &'a str,
    pub method: &'a str,
    pub offset: Option<&'a str>,
    pub fence: u64,
}

pub struct Events {
    service: String,
    owner: Owner,
    bus: Option<(EventBus, Publisher)>,
    canceller: Mutex<Option<ConsumerCanceller>>,
}

impl Events {
    /// No broker: events are not published.
    pub fn disabled(service: &str, owner: &Owner) -> Events {
        Events {
            service: service.to_owned(),
            owner: owner.clone(),
            bus: None,
            canceller: Mutex::new(None),
        }
    }

    /// Starts the bus (it connects, and reconnects, in the background) with the Redis outbox.
    pub fn start(
        url: &str,
        prefix: &str,
        service: &str,
        owner: &Owner,
        redis: &RedisStore,
    ) -> Result<Events, String> {
        let config = BusConfig::new(url, prefix)
            .with_connection_name(format!("reprise-sidecar {}/{}", owner.pod, owner.instance));
        let bus = EventBus::start(config)
            .map_err(|e| format!("key `amqp_url` ({}): {e}", redact(url)))?;
        let publisher = Publisher::new(bus.clone(), Outbox::new(redis));
        // Declare the service's queue up front, so the first handoff published during a
        // shutdown does not pay for it (and events wait in it before any consumer runs).
        let (declarer, service_name) = (bus.clone(), service.to_owned());
        tokio::spawn(async move {
            if declarer
                .wait_connected(Duration::from_secs(60))
                .await
                .is_ok()
                && let Err(e) = declarer.declare_service(&service_name).await
            {
                tracing::warn!(error = %e, "cannot declare the service's resume queue yet");
            }
        });
        Ok(Events {
            service: service.to_owned(),
            owner: owner.clone(),
            bus: Some((bus, publisher)),
            canceller: Mutex::new(None),
        })
    }

    /// Publishes the outbox's events whenever the broker is reachable, until `cancel`.
    pub fn spawn_drainer(&self, cancel: CancellationToken) {
        if let Some((_, publisher)) = &self.bus {
            tokio::spawn(publisher.clone().run_drainer(cancel));
        }
    }

    fn event(&self, kind: EventKind, job: &JobEvent<'_>, reason: &str) -> Event {
        let (id, service, method, fence) =
            (job.job_id, self.service.as_str(), job.method, job.fence);
        match kind {
            EventKind::JobCompleted => {
                Event::job_completed(id, service, method, fence, &self.owner)
            }
            _ => Event::job_interrupted(id, service, method, fence, &self.owner),
        }
        .with_offset(job.offset.map(str::to_owned))
        .with_reason(reason)
    }

    /// `job.interrupted.{service}`; returns once the broker confirmed it or it is in the outbox.
    pub async fn interrupted(&self, job: &JobEvent<'_>, reason: &str) {
        let Some((_, publisher)) = &self.bus else {
            return;
        };
        let event = self.event(EventKind::JobInterrupted, job, reason);
        match publisher.publish(&event).await {
            Ok(Sent::Published) => {
                tracing::info!(job.id = job.job_id, "published job.interrupted (confirmed)");
            }
            Ok(Sent::Queued) => {
                tracing::warn!(
                    job.id = job.job_id,
                    "broker unreachable: job.interrupted is in the outbox"
                );
            }
            Err(e) => tracing::error!(
                job.id = job.job_id,
                error = %e,
                "job.interrupted neither published nor queued; the job waits in Redis for a request or the recoverer"
            ),
        }
    }

    /// `job.completed.{service}`, published in the background (informational).
    pub fn completed(&self, job: &JobEvent<'_>) {
        let Some((_, publisher)) = &self.bus else {
            return;
        };
        let event = self.event(EventKind::JobCompleted, job, "completed");
        let publisher = publisher.clone();
        tokio::spawn(async move {
            if let Err(e) = publisher.publish(&event).await {
                tracing::debug!(error = %e, "job.completed not published");
            }
        });
    }

    /// Shutdown step 2: stop taking handoffs.
    pub async fn cancel_consumer(&self) {
        let canceller = self.canceller.lock().ok().and_then(|mut c| c.take());
        if let Some(c) = canceller {
            c.cancel().await;
        }
    }

    /// Shutdown step 5: close the channel, then the connection.
    pub async fn close(&self) {
        if let Some((bus, _)) = &self.bus
            && let Err(e) = bus.close().await
        {
            tracing::warn!(error = %e, "closing the AMQP connection");
        }
    }

    /// Takes handed-off jobs of `deliver` methods from the service's queue and delivers them to
    /// the app's ResumeSink, until `cancel` (shutdown step 2).
    pub async fn consume(
        self: Arc<Self>,
        ctx: Arc<StreamCtx>,
        methods: HashMap<String, Arc<ResumableMethod>>,
        sink: Uri,
        cancel: CancellationToken,
    ) {
        let Some((bus, _)) = &self.bus else {
            return;
        };
        let mut consumer = loop {
            match bus.consume(&self.service, 4).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %e, "handoff consumer not started yet; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        if let Ok(mut c) = self.canceller.lock() {
            *c = Some(consumer.canceller());
        }
        tracing::info!(service = %self.service, "taking handoffs for resume: deliver methods");
        loop {
            let incoming = tokio::select! {
                _ = cancel.cancelled() => break,
                i = consumer.recv() => match i {
                    Some(i) => i,
                    None => break,
                },
            };
            let event = &incoming.event;
            let method = event
                .method
                .as_deref()
                .and_then(|m| methods.get(m))
                .cloned();
            let (Some(job_id), Some(method), true) =
                (event.job_id.clone(), method, event.kind.is_handoff())
            else {
                // Not a job this pod delivers (on_request jobs wait for their app).
                let _ = incoming.ack().await;
                continue;
            };
            match ctx.store.job(&job_id).await {
                Ok(Some(record)) => match deliver::take_over(&ctx, method, &sink, record).await {
                    Ok(_) => {
                        let _ = incoming.ack().await;
                    }
                    Err(e) => {
                        tracing::warn!(job.id = %job_id, error = %e, "cannot take over a handed-off job");
                        let _ = incoming.nack(false).await;
                    }
                },
                Ok(None) => {
                    let _ = incoming.ack().await;
                }
                Err(e) => {
                    // Redis is the truth: without it we cannot claim. Let another pod try.
                    tracing::warn!(job.id = %job_id, error = %e, "cannot read a handed-off job");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let _ = incoming.nack(true).await;
                }
            }
        }
    }
}
