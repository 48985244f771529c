//! The recovery scenario's output: a line per run, percentiles per path and measure, the way
//! from the start to B's first message step by step, and the JSON of one path.

use std::collections::BTreeMap;

use serde_json::json;

use super::{Via, run::Run};
use crate::timing::{
    self, Percentiles, Table, count_problems, opt_ms, print_problems, print_rank_note, steps_json,
};

const TABLE: Table = Table { width: 26 };

/// The way from the start to B's first message: (name, from, to), where a point is `start`
/// (0), `lease_expiry`, a milestone of the logs, or `t_resumed`.
const KUBE_STEPS: [(&str, &str, &str); 3] = [
    ("pod_event_to_orphaned", "start", "recoverer_orphaned"),
    (
        "orphaned_to_b_took_over",
        "recoverer_orphaned",
        "b_took_over",
    ),
    ("b_took_over_to_sink", "b_took_over", "t_resumed"),
];
const LEASE_STEPS: [(&str, &str, &str); 4] = [
    ("sigkill_to_lease_expiry", "start", "lease_expiry"),
    (
        "lease_expiry_to_orphaned",
        "lease_expiry",
        "recoverer_orphaned",
    ),
    (
        "orphaned_to_b_took_over",
        "recoverer_orphaned",
        "b_took_over",
    ),
    ("b_took_over_to_sink", "b_took_over", "t_resumed"),
];

fn point(r: &Run, name: &str) -> Option<f64> {
    match name {
        "start" => Some(0.0),
        "lease_expiry" => r.t_lease_expiry_ms,
        "t_resumed" => r.t_resumed_ms,
        milestone => r.timeline_ms.get(milestone).copied(),
    }
}

/// The runs of one path and how they were set up.
pub struct Summary {
    pub via: Via,
    pub reconcile_interval: String,
    pub lease_ttl: String,
    pub runs: Vec<Run>,
}

impl Summary {
    fn of(&self, measure: impl Fn(&Run) -> Option<f64>) -> Option<Percentiles> {
        Percentiles::of(self.runs.iter().filter_map(measure))
    }

    /// (label, JSON name, percentiles) of each measure of this path.
    fn measures(&self) -> Vec<(&'static str, &'static str, Option<Percentiles>)> {
        let orphaned = self.of(|r| r.t_orphaned_ms);
        let resumed = self.of(|r| r.t_resumed_ms);
        match self.via {
            Via::Kube => vec![
                ("pod event → orphaned", "t_orphaned_ms", orphaned),
                ("pod event → B's sink", "t_resumed_ms", resumed),
            ],
            Via::Lease => vec![
                (
                    "SIGKILL → lease expiry",
                    "t_lease_expiry_ms",
                    self.of(|r| r.t_lease_expiry_ms),
                ),
                ("SIGKILL → orphaned", "t_orphaned_ms", orphaned),
                ("SIGKILL → B's sink", "t_resumed_ms", resumed),
            ],
        }
    }

    /// Each step's duration over the runs (runs whose logs lack either end are left out).
    fn steps(&self) -> Vec<(&'static str, Percentiles)> {
        let steps: &[(&'static str, &str, &str)] = match self.via {
            Via::Kube => &KUBE_STEPS,
            Via::Lease => &LEASE_STEPS,
        };
        timing::steps(steps, &self.runs, point)
    }

    fn duplicates(&self) -> Option<Percentiles> {
        self.of(|r| r.duplicates.map(|d| d as f64))
    }

    /// Every WARN/ERROR line without its timestamp, and how often it came.
    fn log_problems(&self) -> BTreeMap<String, usize> {
        count_problems(self.runs.iter().flat_map(|r| &r.log_problems))
    }

    pub fn correct(&self) -> bool {
        self.runs.iter().all(|r| r.failures.is_empty())
    }

    pub fn print(&self) {
        let n = self.runs.len();
        println!();
        match self.via {
            Via::Kube => println!(
                "kube path: {n} run(s), reconcile_interval {}, lease_ttl {}; ms from the pod \
                 update (sidecar container terminated, exit code 137, OOMKilled)",
                self.reconcile_interval, self.lease_ttl
            ),
            Via::Lease => println!(
                "lease path (kube: false): {n} run(s), reconcile_interval {}, lease_ttl {}; ms \
                 from the SIGKILL",
                self.reconcile_interval, self.lease_ttl
            ),
        }
        TABLE.print_head();
        for (label, _, p) in self.measures() {
            TABLE.print_row(label, p.as_ref(), n);
        }
        println!(
            "  orphaned: the job's hash no longer `running` under pod-a; B's sink: its first \
             record; both polled every 1 ms"
        );
        print_rank_note(n);
        println!(
            "  step by step (the recoverer's `job orphaned` and pod-b's `took over` log lines; \
             the steps add up to B's sink):"
        );
        for (name, p) in self.steps() {
            TABLE.print_row(name, Some(&p), n);
        }
        TABLE.print_row("duplicates (messages)", self.duplicates().as_ref(), n);
        println!(
            "  duplicates: admins A's app received past the checkpoint, so B's sink got them too"
        );
        print_problems(
            "  WARN/ERROR lines over all runs (timestamps dropped, counted):",
            &self.log_problems(),
        );
        for r in &self.runs {
            for f in &r.failures {
                println!("  {} run {:02} FAILED: {f}", self.via, r.run);
            }
        }
    }

    pub fn json(&self) -> serde_json::Value {
        let mut out = json!({
            "path": self.via.to_string(),
            "reconcile_interval": self.reconcile_interval,
            "lease_ttl": self.lease_ttl,
            "steps_ms": steps_json(self.steps()),
            "duplicates": self.duplicates(),
            "runs": self.runs,
            "log_problem_lines": self.log_problems(),
            "correct": self.correct(),
        });
        for (_, name, p) in self.measures() {
            out[name] = json!(p);
        }
        out
    }
}

pub fn print_run(via: Via, r: &Run, runs: usize) {
    let verdict = if r.failures.is_empty() {
        "ok".to_owned()
    } else {
        format!("FAILED ({})", r.failures.len())
    };
    let lease = r
        .t_lease_expiry_ms
        .map_or(String::new(), |t| format!("lease expiry {t:.1} ms, "));
    println!(
        "  {via} run {:>2}/{runs}: {lease}orphaned {}, B's sink {}; A's app {} + B's sink {} \
         admins, {} duplicate(s); {verdict}",
        r.run,
        opt_ms(r.t_orphaned_ms),
        opt_ms(r.t_resumed_ms),
        r.app_a_users,
        r.sink_b_users,
        r.duplicates.map_or("-".into(), |d| d.to_string()),
    );
}
