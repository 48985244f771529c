//! The handoff scenario's output: a line per run, percentiles over the runs, the median
//! timeline from the sidecars' logs, and one JSON line.

use std::collections::BTreeMap;

use serde_json::json;

use super::{
    check::milestone_names,
    run::{DeliverRun, OnRequestRun},
};
use crate::timing::{
    self, Percentiles, Table, count_problems, opt_ms, print_problems, print_rank_note, steps_json,
};

const TABLE: Table = Table { width: 23 };

/// The way from SIGTERM to each measure, step by step: (name, from, to), where a point is a
/// milestone of the logs, `sigterm` (0), `t_resumed` or `t_exit`. B's way: the first four
/// steps, then `b_first_delivery`; A's: the first three, then `a_steps_4_5`, `a_process_exit`.
const STEPS: [(&str, &str, &str); 7] = [
    ("step1_drain", "sigterm", "a_drain_over"),
    ("step2_cancel_consumer", "a_drain_over", "a_interrupting"),
    ("step3_interrupt_publish", "a_interrupting", "a_published"),
    ("b_claim", "a_published", "b_took_over"),
    ("b_first_delivery", "b_took_over", "t_resumed"),
    ("a_steps_4_5", "a_published", "a_complete"),
    ("a_process_exit", "a_complete", "t_exit"),
];

fn point(r: &DeliverRun, name: &str) -> Option<f64> {
    match name {
        "sigterm" => Some(0.0),
        "t_resumed" => r.t_resumed_ms,
        "t_exit" => r.t_exit_ms,
        milestone => r.timeline_ms.get(milestone).copied(),
    }
}

pub struct Summary<'a> {
    pub drain_period: &'a str,
    pub runs: &'a [DeliverRun],
    pub on_request: &'a [OnRequestRun],
}

impl Summary<'_> {
    fn of(&self, measure: impl Fn(&DeliverRun) -> Option<f64>) -> Option<Percentiles> {
        Percentiles::of(self.runs.iter().filter_map(measure))
    }

    fn t_exit(&self) -> Option<Percentiles> {
        self.of(|r| r.t_exit_ms)
    }

    fn t_resumed(&self) -> Option<Percentiles> {
        self.of(|r| r.t_resumed_ms)
    }

    /// Each milestone that the logs showed, in the order of the shutdown.
    fn timeline(&self) -> Vec<(&'static str, Percentiles)> {
        milestone_names()
            .filter_map(|name| {
                let values = self
                    .runs
                    .iter()
                    .filter_map(|r| r.timeline_ms.get(name).copied());
                Some((name, Percentiles::of(values)?))
            })
            .collect()
    }

    /// Each step's duration over the runs (runs whose logs lack either end are left out).
    fn steps(&self) -> Vec<(&'static str, Percentiles)> {
        timing::steps(&STEPS, self.runs, point)
    }

    fn on_request_interrupted(&self) -> Option<Percentiles> {
        Percentiles::of(self.on_request.iter().filter_map(|r| r.t_interrupted_ms))
    }

    fn on_request_exit(&self) -> Option<Percentiles> {
        Percentiles::of(self.on_request.iter().filter_map(|r| r.t_exit_ms))
    }

    /// Every WARN/ERROR line of the sidecars without its timestamp, and how often it came.
    fn log_problems(&self) -> BTreeMap<String, usize> {
        count_problems(self.runs.iter().flat_map(|r| &r.log_problems))
    }

    pub fn exact(&self) -> bool {
        self.runs.iter().all(|r| r.failures.is_empty())
            && self.on_request.iter().all(|r| r.failures.is_empty())
    }

    pub fn print(&self) {
        let n = self.runs.len();
        println!();
        println!(
            "handoff (resume: deliver): {n} run(s), drain_period {}; ms from SIGTERM to pod-a",
            self.drain_period
        );
        TABLE.print_head();
        for (name, p) in [
            ("t_exit", self.t_exit()),
            ("t_resumed", self.t_resumed()),
            ("t_app_last", self.of(|r| r.t_app_last_ms)),
            ("gap", self.of(|r| r.gap_ms)),
        ] {
            TABLE.print_row(name, p.as_ref(), n);
        }
        println!(
            "  t_app_last: the last message at A's app after the SIGTERM (none in some runs); \
             gap = t_resumed - t_app_last (the stream stood still); polled every 1 ms"
        );
        print_rank_note(n);
        println!(
            "  where the time goes, step by step (from the sidecars' log lines; B: the first 5 \
             add up to t_resumed, A: the first 3 and the last 2 to t_exit):"
        );
        for (name, p) in self.steps() {
            TABLE.print_row(name, Some(&p), n);
        }
        if !self.on_request.is_empty() {
            println!(
                "on_request: {} run(s), pod-a alone; ms from SIGTERM",
                self.on_request.len()
            );
            let runs = self.on_request.len();
            TABLE.print_row(
                "t_interrupted",
                self.on_request_interrupted().as_ref(),
                runs,
            );
            TABLE.print_row("t_exit", self.on_request_exit().as_ref(), runs);
        }
        print_problems(
            "sidecar WARN/ERROR lines over all runs (timestamps dropped, counted):",
            &self.log_problems(),
        );
        for r in self.runs {
            for f in &r.failures {
                println!("  run {:02} FAILED: {f}", r.run);
            }
        }
        for r in self.on_request {
            for f in &r.failures {
                println!("  on_request run {:02} FAILED: {f}", r.run);
            }
        }
    }

    pub fn json(&self, settings: serde_json::Value) -> serde_json::Value {
        json!({
            "bench": "reprise-bench",
            "scenario": "handoff",
            "settings": settings,
            "t_exit_ms": self.t_exit(),
            "t_resumed_ms": self.t_resumed(),
            "t_app_last_ms": self.of(|r| r.t_app_last_ms),
            "gap_ms": self.of(|r| r.gap_ms),
            "steps_ms": steps_json(self.steps()),
            "timeline_ms": self
                .timeline()
                .into_iter()
                .map(|(at, p)| json!({ "at": at, "ms": p }))
                .collect::<Vec<_>>(),
            "on_request": {
                "t_interrupted_ms": self.on_request_interrupted(),
                "t_exit_ms": self.on_request_exit(),
                "runs": self.on_request,
            },
            "runs": self.runs,
            "log_problem_lines": self.log_problems(),
            "exact": self.exact(),
        })
    }
}

pub fn print_run(r: &DeliverRun, runs: usize) {
    let verdict = if r.failures.is_empty() {
        "exact".to_owned()
    } else {
        format!("FAILED ({})", r.failures.len())
    };
    println!(
        "  run {:>2}/{runs}: t_exit {} (exit {}), t_resumed {}, gap {}; A's app {} + B's sink {} users, {verdict}",
        r.run,
        opt_ms(r.t_exit_ms),
        r.exit_code.map_or("-".into(), |c| c.to_string()),
        opt_ms(r.t_resumed_ms),
        opt_ms(r.gap_ms),
        r.app_a_users,
        r.sink_b_users,
    );
}

pub fn print_on_request_run(r: &OnRequestRun, runs: usize) {
    println!(
        "  on_request run {:>2}/{runs}: t_interrupted {}, t_exit {} (exit {}){}",
        r.run,
        opt_ms(r.t_interrupted_ms),
        opt_ms(r.t_exit_ms),
        r.exit_code.map_or("-".into(), |c| c.to_string()),
        if r.failures.is_empty() {
            ""
        } else {
            ", FAILED"
        },
    );
}
