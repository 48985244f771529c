//! What the sidecar counts and how ready it is: the Prometheus registry with every metric, by
//! labels, and the readiness inputs that `/readyz` reports. Served by [`crate::admin`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub method: String,
    /// `passthrough` or `resumable`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub method: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `app` or `admin`.
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabels {
    pub listener: &'static str,
    /// `silent` (sent nothing within `preface_timeout`) or `limit` (`max_app_connections`).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

/// Every metric the sidecar exports. Hot-path counters are cloned once per stream, so a
/// message costs an atomic add, never a label lookup.
pub struct Metrics {
    registry: Registry,
    pub calls: Family<CallLabels, Counter>,
    pub streams_active: Family<MethodLabels, Gauge>,
    pub forwarded: Family<MethodLabels, Counter>,
    pub dropped: Family<ReasonLabels, Counter>,
    pub resumes: Family<ReasonLabels, Counter>,
    pub jobs_finished: Family<ReasonLabels, Counter>,
    pub checkpoint_writes: Counter,
    pub checkpoint_fenced: Counter,
    pub store_restores: Counter,
    pub store_adoptions: Counter,
    pub handoff_reads: Family<OutcomeLabels, Counter>,
    pub end_reads: Family<OutcomeLabels, Counter>,
    pub end_read_wait_seconds: Counter<f64, AtomicU64>,
    pub store_errors: Family<OpLabels, Counter>,
    pub store_degraded: Gauge,
    pub store_pending_final_states: Gauge,
    pub store_unconfirmed_final_states: Gauge,
    pub store_unconfirmed_dropped: Counter,
    pub store_final_states_rewritten: Counter,
    pub upstream_connects: Counter,
    pub accept_errors: Family<ListenerLabels, Counter>,
    pub connections_closed: Family<ClosedLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("reprise");
        let m = Metrics {
            calls: Family::default(),
            streams_active: Family::default(),
            forwarded: Family::default(),
            dropped: Family::default(),
            resumes: Family::default(),
            jobs_finished: Family::default(),
            checkpoint_writes: Counter::default(),
            checkpoint_fenced: Counter::default(),
            store_restores: Counter::default(),
            store_adoptions: Counter::default(),
            handoff_reads: Family::default(),
            end_reads: Family::default(),
            end_read_wait_seconds: Counter::default(),
            store_errors: Family::default(),
            store_degraded: Gauge::default(),
            store_pending_final_states: Gauge::default(),
            store_unconfirmed_final_states: Gauge::default(),
            store_unconfirmed_dropped: Counter::default(),
            store_final_states_rewritten: Counter::default(),
            upstream_connects: Counter::default(),
            accept_errors: Family::default(),
            connections_closed: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "calls",
            "Calls received from the app, by method and kind (passthrough, resumable)",
            m.calls.clone(),
        );
        registry.register(
            "streams_active",
            "Resumable streams in flight",
            m.streams_active.clone(),
        );
        registry.register(
            "messages_forwarded",
            "Messages of resumable streams forwarded to the app",
            m.forwarded.clone(),
        );
        registry.register(
            "messages_dropped",
            "Messages of resumable streams not forwarded, by reason (duplicate, out_of_order, malformed, missing_offset, oversized)",
            m.dropped.clone(),
        );
        registry.register(
            "resumes",
            "Upstream breaks a stream resumed from, by cause",
            m.resumes.clone(),
        );
        registry.register(
            "jobs_finished",
            "Resumable calls that ended, by job status (completed, failed, interrupted)",
            m.jobs_finished.clone(),
        );
        registry.register(
            "checkpoint_writes",
            "Offset checkpoints written to the job store",
            m.checkpoint_writes.clone(),
        );
        registry.register(
            "checkpoint_fenced",
            "Checkpoints refused because another owner holds the job",
            m.checkpoint_fenced.clone(),
        );
        registry.register(
            "store_restores",
            "Jobs written back to Redis from this sidecar's own state after Redis had lost them (restarted empty, failed over, flushed, evicted)",
            m.store_restores.clone(),
        );
        registry.register(
            "handoff_reads",
            "Streams interrupted by shutdown, by what the wait for the app to read what it was handed found (read: offset as handed; app_died: its connection closed, rewound a window; not_read: handoff_read_wait ran out, rewound to what the app gave window back for)",
            m.handoff_reads.clone(),
        );
        registry.register(
            "stream_end_reads",
            "Streams the upstream completed, by what the wait for the app to read up to the end found before it was handed the end (at_once: read already, or nothing to wait on; read: after a wait; app_gone: its call or connection went first, the job left resumable; shutdown: a SIGTERM came first and handed it off)",
            m.end_reads.clone(),
        );
        registry.register(
            "stream_end_read_wait_seconds",
            "Seconds completed streams waited in all for their app to read up to the end",
            m.end_read_wait_seconds.clone(),
        );
        registry.register(
            "store_adoptions",
            "Jobs claimed in memory while Redis was down and moved to Redis once it answered",
            m.store_adoptions.clone(),
        );
        registry.register(
            "store_errors",
            "Job store operations that failed, by operation",
            m.store_errors.clone(),
        );
        registry.register(
            "store_degraded",
            "1 while Redis is unreachable and offsets are kept in memory",
            m.store_degraded.clone(),
        );
        registry.register(
            "store_pending_final_states",
            "Final job states Redis did not take (it failed or timed out), kept and written once it answers",
            m.store_pending_final_states.clone(),
        );
        registry.register(
            "store_unconfirmed_final_states",
            "Final job states Redis took less than 5 s before this sidecar last saw the same Redis server answer: kept, and written again if its run_id changes (a restart or failover may have lost them)",
            m.store_unconfirmed_final_states.clone(),
        );
        registry.register(
            "store_unconfirmed_final_states_dropped",
            "Final job states let go unconfirmed because more than 65,536 waited (a Redis restart could then lose them)",
            m.store_unconfirmed_dropped.clone(),
        );
        registry.register(
            "store_final_states_rewritten",
            "Final job states written again after Redis restarted or failed over and had lost them",
            m.store_final_states_rewritten.clone(),
        );
        registry.register(
            "upstream_connects",
            "TCP connections opened to the upstream (at most `upstream_connections` at a time; more after breaks)",
            m.upstream_connects.clone(),
        );
        registry.register(
            "accept_errors",
            "accept() failures by listener (app, admin), each followed by a backoff: out of file descriptors and the like",
            m.accept_errors.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections the sidecar closed unserved, by listener and reason (silent: nothing sent within preface_timeout; limit: max_app_connections reached)",
            m.connections_closed.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Readiness inputs, flipped by the parts that know.
#[derive(Default)]
pub struct Health {
    pub serving: AtomicBool,
    pub draining: AtomicBool,
    /// False while a configured Redis is unreachable.
    pub store_ok: AtomicBool,
}

impl Health {
    pub fn ready(&self) -> Result<(), &'static str> {
        if !self.serving.load(Ordering::Relaxed) {
            return Err("not serving yet");
        }
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining");
        }
        if !self.store_ok.load(Ordering::Relaxed) {
            return Err("job store (redis) unreachable; offsets kept in memory");
        }
        Ok(())
    }
}
