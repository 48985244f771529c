//! The consume loop of `resume: deliver`: handoff events from the service's queue, each
//! handed-off job of a `deliver` method taken over and delivered to the app's ResumeSink, until
//! shutdown step 2.

use std::{collections::HashMap, sync::Arc, time::Duration};

use http::Uri;
use tokio_util::sync::CancellationToken;

use super::deliver::{TakeOverError, take_over};
use crate::{descriptors::ResumableMethod, events::Events, stream::StreamCtx};

/// Unacknowledged handoff events this pod holds at once.
const PREFETCH: u16 = 4;

/// Takes handed-off jobs of `deliver` methods from the service's queue and delivers them to
/// the app's ResumeSink, until `cancel` (shutdown step 2).
pub async fn consume(
    events: Arc<Events>,
    ctx: Arc<StreamCtx>,
    methods: HashMap<String, Arc<ResumableMethod>>,
    sink: Uri,
    cancel: CancellationToken,
) {
    let mut consumer = loop {
        match events.consume_queue(PREFETCH).await {
            None => return,
            Some(Ok(c)) => break c,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "handoff consumer not started yet; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    tracing::info!(service = %events.service(), "taking handoffs for resume: deliver methods");
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
        let store_error = match ctx.store.job(&job_id).await {
            Ok(Some(record)) => match take_over(&ctx, method, &sink, record).await {
                Ok(_) => None,
                Err(TakeOverError::Store(e)) => Some(e),
                Err(e @ TakeOverError::Unusable(_)) => {
                    // Redis keeps the job `interrupted`: an operator sees it with `reprise
                    // jobs`, and the recoverer offers it again (to a newer build, perhaps).
                    tracing::error!(job.id = %job_id, error = %e, "cannot take over a handed-off job");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => Some(e),
        };
        match store_error {
            None => {
                let _ = incoming.ack().await;
            }
            Some(e) => {
                // Redis is the truth: without it we cannot claim. The event goes back to the
                // queue (for this pod or another) instead of being dropped.
                tracing::warn!(job.id = %job_id, error = %e, "cannot claim a handed-off job yet; returning its event to the queue");
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = incoming.nack(true).await;
            }
        }
    }
}
