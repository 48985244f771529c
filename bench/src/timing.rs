//! What the handoff and recovery scenarios measure alike and print alike: milliseconds from an
//! instant, the milestones of the processes' logs, nearest-rank percentiles over the runs and
//! their table rows, the steps between two points, and the logs' WARN/ERROR lines counted.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use serde_json::json;

use crate::procs::problem_lines;

/// Nearest-rank percentiles (each is one of the values) and the extremes, in ms.
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

/// Each step's duration over `runs`: a step is (name, from, to), and `point` gives a run's ms
/// at a named point (runs whose logs lack either end are left out).
pub fn steps<R>(
    steps: &[(&'static str, &str, &str)],
    runs: &[R],
    point: impl Fn(&R, &str) -> Option<f64>,
) -> Vec<(&'static str, Percentiles)> {
    steps
        .iter()
        .filter_map(|&(name, from, to)| {
            let values = runs
                .iter()
                .filter_map(|r| Some(round_us(point(r, to)? - point(r, from)?)));
            Some((name, Percentiles::of(values)?))
        })
        .collect()
}

/// The steps as the JSON line has them.
pub fn steps_json(steps: Vec<(&'static str, Percentiles)>) -> Vec<serde_json::Value> {
    steps
        .into_iter()
        .map(|(step, p)| json!({ "step": step, "ms": p }))
        .collect()
}

/// A table of measures: a row each, its percentiles over the runs.
pub struct Table {
    /// The label column's width.
    pub width: usize,
}

impl Table {
    pub fn print_head(&self) {
        let width = self.width;
        println!(
            "  {:<width$} {:>9} {:>9} {:>9} {:>9}",
            "measure", "p50", "p99", "min", "max"
        );
    }

    /// One measure's row; `runs` is how many runs there were, to say when some had no value.
    pub fn print_row(&self, name: &str, p: Option<&Percentiles>, runs: usize) {
        let width = self.width;
        match p {
            Some(p) => println!(
                "  {name:<width$} {:>9.1} {:>9.1} {:>9.1} {:>9.1}{}",
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
            None => println!("  {name:<width$} {:>9}", "-"),
        }
    }
}

/// Under a table: too few runs for a p99 to be more than the slowest one.
pub fn print_rank_note(runs: usize) {
    if runs < 100 {
        println!("  nearest-rank percentiles: with {runs} run(s), p99 is the max");
    }
}

/// Milliseconds from `start` to the first line of each milestone's log that holds its text:
/// (name, log, text). The sidecars and the recoverer log wall-clock UTC time with
/// microseconds, as the bench's clock has it.
pub fn timeline<'a>(
    milestones: impl IntoIterator<Item = (&'static str, &'a str, &'a str)>,
    start: SystemTime,
) -> BTreeMap<&'static str, f64> {
    let since_epoch = start.duration_since(UNIX_EPOCH).unwrap_or_default();
    let start_of_day = since_epoch.as_secs_f64() % 86_400.0;
    milestones
        .into_iter()
        .filter_map(|(name, log, text)| {
            let at = log
                .lines()
                .find(|l| l.contains(text))
                .and_then(time_of_day)?;
            // A run that crosses midnight UTC.
            let mut d = at - start_of_day;
            if d < -43_200.0 {
                d += 86_400.0;
            }
            Some((name, round_us(d * 1e3)))
        })
        .collect()
}

/// Seconds since midnight of a log line starting `2026-11-24T10:11:12.123456Z`.
fn time_of_day(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    let (_, time) = stamp.split_once('T')?;
    let mut parts = time.trim_end_matches('Z').split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Milliseconds, to the microsecond.
pub fn ms(d: Duration) -> f64 {
    round_us(d.as_secs_f64() * 1e3)
}

pub fn round_us(ms: f64) -> f64 {
    (ms * 1e3).round() / 1e3
}

pub fn opt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1} ms"))
}

/// The WARN/ERROR lines of each (who, log), as `who: line`.
pub fn problem_lines_of(logs: &[(&str, &str)]) -> Vec<String> {
    logs.iter()
        .flat_map(|&(who, log)| {
            problem_lines(log)
                .into_iter()
                .map(move |l| format!("{who}: {l}"))
        })
        .collect()
}

/// Every problem line without its timestamp, and how often it came.
pub fn count_problems<'a>(lines: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, usize> {
    let mut problems = BTreeMap::new();
    for line in lines {
        *problems.entry(without_timestamp(line)).or_default() += 1;
    }
    problems
}

/// The ten most common problem lines, under `heading`, if there were any.
pub fn print_problems(heading: &str, problems: &BTreeMap<String, usize>) {
    if !problems.is_empty() {
        println!("{heading}");
        for (line, count) in problems.iter().take(10) {
            println!("  {count:>3} x {line}");
        }
    }
}

/// `pod-a: 2026-…Z  WARN target: text` → `pod-a: WARN target: text`, so repeats count as one.
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
    fn log_time_of_day() {
        let line = "2026-11-24T10:11:12.250000Z  INFO reprise_sidecar::shutdown: shutdown 1/5";
        assert_eq!(time_of_day(line), Some(36_672.25));
        assert_eq!(time_of_day("no timestamp here"), None);
    }

    #[test]
    fn timestamps_are_dropped_from_problem_lines() {
        assert_eq!(
            without_timestamp("pod-b: 2026-11-24T10:11:12.250000Z  WARN x: y z"),
            "pod-b: WARN x: y z"
        );
    }
}
