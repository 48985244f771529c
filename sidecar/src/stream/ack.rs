//! `resume: deliver`'s acknowledgements: what the app's ResumeSink has acknowledged, which is
//! where the job's checkpoints stand (not what was sent: a message sent but never acknowledged
//! is delivered again by whoever resumes the job next). The stream task holds one when its
//! recipient is a sink; the pump in [`crate::handoff::deliver`] feeds it.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::watch;

use crate::{checkpoint::Slot, offset::Offset};

/// What the sink acknowledged: the offset and count the job may be checkpointed at.
pub struct AckState {
    inner: Mutex<Acked>,
    done: watch::Sender<Option<bool>>,
}

struct Acked {
    slot: Option<Arc<Slot>>,
    offset: Option<Offset>,
    messages: u64,
}

impl AckState {
    pub fn new() -> Arc<AckState> {
        Arc::new(AckState {
            inner: Mutex::new(Acked {
                slot: None,
                offset: None,
                messages: 0,
            }),
            done: watch::channel(None).0,
        })
    }

    /// Called when the task registers its checkpoint slot: the starting point.
    pub(crate) fn attach(&self, slot: Arc<Slot>, offset: Option<Offset>, messages: u64) {
        if let Ok(mut a) = self.inner.lock() {
            a.slot = Some(slot);
            a.offset = offset;
            a.messages = messages;
        }
    }

    pub(crate) fn acked_to(&self, offset: Offset, messages: u64) {
        if let Ok(mut a) = self.inner.lock() {
            if let Some(slot) = &a.slot {
                slot.record(Some(&offset), messages);
            }
            a.offset = Some(offset);
            a.messages = messages;
        }
    }

    /// The last acknowledged offset (text) and message count.
    pub fn acked(&self) -> (Option<String>, u64) {
        self.inner
            .lock()
            .map(|a| (a.offset.as_ref().map(ToString::to_string), a.messages))
            .unwrap_or((None, 0))
    }

    pub(crate) fn set_done(&self, delivered_all: bool) {
        self.done.send_replace(Some(delivered_all));
    }

    /// Whether the sink acknowledged the whole stream, waiting at most `within`.
    pub async fn wait_done(&self, within: Duration) -> bool {
        let mut rx = self.done.subscribe();
        let result = tokio::time::timeout(within, rx.wait_for(Option::is_some)).await;
        matches!(result, Ok(Ok(v)) if *v == Some(true))
    }
}
