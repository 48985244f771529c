//! The recovery scenario's output: a line per run, percentiles per path and measure, the way
//! from the start to B's first message step by step, and the JSON of one path.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::json;

use super::{
    Via,
    run::{Run, round_us},
};

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

/// Nearest-rank percentiles (each is one of the values) and the extremes.
#[derive(Debug, Serialize, PartialEq)]
pub struct Percentiles {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Percentiles> {
        let mut v: Vec<f64> = values.into_iter().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Percentiles {
            n: v.len(),
            p50: rank(50.0),
            p99: rank(99.0),
            min: v[0],
            max: v[v.len() - 1],
        })
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
        let steps: &[(&str, &str, &str)] = match self.via {
            Via::Kube => &KUBE_STEPS,
            Via::Lease => &LEASE_STEPS,
        };
        steps
            .iter()
            .filter_map(|&(name, from, to)| {
                let values = self
                    .runs
                    .iter()
                    .filter_map(|r| Some(round_us(point(r, to)? - point(r, from)?)));
                Some((name, Percentiles::of(values)?))
            })
            .collect()
    }

    fn duplicates(&self) -> Option<Percentiles> {
        self.of(|r| r.duplicates.map(|d| d as f64))
    }

    /// Every WARN/ERROR line without its timestamp, and how often it came.
    fn log_problems(&self) -> BTreeMap<String, usize> {
        let mut problems = BTreeMap::new();
        for line in self.runs.iter().flat_map(|r| &r.log_problems) {
            *problems.entry(without_timestamp(line)).or_default() += 1;
        }
        problems
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
        println!(
            "  {:<26} {:>9} {:>9} {:>9} {:>9}",
            "measure", "p50", "p99", "min", "max"
        );
        for (label, _, p) in self.measures() {
            print_row(label, p.as_ref(), n);
        }
        println!(
            "  orphaned: the job's hash no longer `running` under pod-a; B's sink: its first \
             record; both polled every 1 ms"
        );
        if n < 100 {
            println!("  nearest-rank percentiles: with {n} run(s), p99 is the max");
        }
        println!(
            "  step by step (the recoverer's `job orphaned` and pod-b's `took over` log lines; \
             the steps add up to B's sink):"
        );
        for (name, p) in self.steps() {
            print_row(name, Some(&p), n);
        }
        print_row("duplicates (messages)", self.duplicates().as_ref(), n);
        println!(
            "  duplicates: admins A's app received past the checkpoint, so B's sink got them too"
        );
        let problems = self.log_problems();
        if !problems.is_empty() {
            println!("  WARN/ERROR lines over all runs (timestamps dropped, counted):");
            for (line, count) in problems.iter().take(10) {
                println!("  {count:>3} x {line}");
            }
        }
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
            "steps_ms": self
                .steps()
                .into_iter()
                .map(|(step, p)| json!({ "step": step, "ms": p }))
                .collect::<Vec<_>>(),
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

/// One measure's row; `runs` is how many runs there were, to say when some had no value.
fn print_row(name: &str, p: Option<&Percentiles>, runs: usize) {
    match p {
        Some(p) => println!(
            "  {name:<26} {:>9.1} {:>9.1} {:>9.1} {:>9.1}{}",
            p.p50,
            p.p99,
            p.min,
            p.max,
            if p.n < runs {
                format!("  ({} of {runs} runs)", p.n)
            } else {
                String::new()
            }
        ),
        None => println!("  {name:<26} {:>9}", "-"),
    }
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1} ms"))
}

/// `pod-b: 2026-…Z  WARN target: text` → `pod-b: WARN target: text`, so repeats count as one.
fn without_timestamp(line: &str) -> String {
    match line.split_once(": ") {
        Some((who, rest)) => {
            let rest = rest.trim_start();
            let text = match rest.split_once(char::is_whitespace) {
                Some((stamp, text)) if stamp.contains('T') && stamp.ends_with('Z') => text,
                _ => rest,
            };
            format!("{who}: {}", text.trim_start())
        }
        None => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let p = Percentiles::of((1..=20).map(f64::from)).expect("values");
        assert_eq!((p.p50, p.p99, p.min, p.max), (10.0, 20.0, 1.0, 20.0));
        let p = Percentiles::of((1..=100).map(f64::from)).expect("values");
        assert_eq!((p.p50, p.p99), (50.0, 99.0));
        assert_eq!(Percentiles::of([]), None);
    }

    #[test]
    fn timestamps_are_dropped_from_problem_lines() {
        assert_eq!(
            without_timestamp("recoverer: 2026-11-24T10:11:12.250000Z  WARN x: y z"),
            "recoverer: WARN x: y z"
        );
    }
}
