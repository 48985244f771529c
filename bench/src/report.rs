//! Summaries over rounds, the targets, the table and the JSON line.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::rig::Route;

/// Targets from the issue.
pub const MAX_CPU_US_PER_MSG: f64 = 0.2;
pub const MAX_RSS_MIB: f64 = 16.0;
pub const RSS_TARGET_STREAMS: usize = 100;

/// One path's run in one round.
#[derive(Debug, Serialize)]
pub struct Sample {
    pub round: usize,
    pub route: Route,
    pub messages: u64,
    pub seconds: f64,
    pub msgs_per_sec: f64,
    /// The proxy's user + system CPU over the round (none when direct), and per message.
    pub proxy_cpu_seconds: Option<f64>,
    pub proxy_cpu_us_per_msg: Option<f64>,
    /// The load client's (this process's) and the demo server's user + system CPU over the
    /// round.
    pub client_cpu_seconds: f64,
    pub server_cpu_seconds: f64,
    /// The proxy's VmRSS right after the round: growth from round to round would be a leak.
    pub proxy_rss_kib: Option<u64>,
    /// The sidecar's checkpoint writes during the round.
    pub checkpoint_writes: Option<f64>,
    pub exact: bool,
}

/// Everything measured in one scenario.
#[derive(Debug, Serialize)]
pub struct Scenario {
    pub name: &'static str,
    pub streams: usize,
    pub messages_per_stream: u64,
    pub payload_bytes: u32,
    pub event_bytes: usize,
    pub samples: Vec<Sample>,
    /// VmRSS of each proxy right after start, and VmHWM at the end of the scenario.
    pub idle_rss_kib: BTreeMap<Route, u64>,
    pub peak_rss_kib: BTreeMap<Route, u64>,
    pub failures: Vec<String>,
    /// WARN/ERROR lines in each process's log.
    pub log_problems: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Serialize)]
pub struct PathSummary {
    pub route: Route,
    pub msgs_per_sec_median: f64,
    pub msgs_per_sec_min: f64,
    pub msgs_per_sec_max: f64,
    /// Median over rounds of (this path's throughput / direct's in the same round).
    pub ratio_to_direct: Option<f64>,
    /// The proxy's CPU over all rounds / messages of all rounds: summing first keeps the
    /// 1-tick (10 ms) resolution of utime/stime small against the total.
    pub cpu_us_per_msg: Option<f64>,
    /// The same for the load client and the demo server on this path.
    pub client_cpu_us_per_msg: f64,
    pub server_cpu_us_per_msg: f64,
    pub idle_rss_mib: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    pub checkpoint_writes_per_stream_second: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Target {
    pub name: String,
    pub goal: String,
    pub value: String,
    /// None when this run could not judge it (e.g. no nginx).
    pub pass: Option<bool>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

const KIB_PER_MIB: f64 = 1024.0;

impl Scenario {
    pub fn routes(&self) -> Vec<Route> {
        let mut routes: Vec<Route> = self.samples.iter().map(|s| s.route).collect();
        routes.sort();
        routes.dedup();
        routes
    }

    pub fn summary(&self, route: Route) -> PathSummary {
        let mine: Vec<&Sample> = self.samples.iter().filter(|s| s.route == route).collect();
        let rates: Vec<f64> = mine.iter().map(|s| s.msgs_per_sec).collect();
        let ratios: Vec<f64> = mine
            .iter()
            .filter_map(|s| {
                let direct = self
                    .samples
                    .iter()
                    .find(|d| d.route == Route::Direct && d.round == s.round)?;
                Some(s.msgs_per_sec / direct.msgs_per_sec)
            })
            .collect();
        let stream_seconds: f64 = mine.iter().map(|s| s.seconds * self.streams as f64).sum();
        let writes: Option<f64> = mine.iter().map(|s| s.checkpoint_writes).sum();
        let cpu: Option<f64> = mine.iter().map(|s| s.proxy_cpu_seconds).sum();
        let messages: u64 = mine.iter().map(|s| s.messages).sum();
        let per_msg = |seconds: f64| seconds * 1e6 / messages.max(1) as f64;
        PathSummary {
            route,
            msgs_per_sec_median: median(rates.clone()).unwrap_or(0.0),
            msgs_per_sec_min: rates.iter().copied().fold(f64::INFINITY, f64::min),
            msgs_per_sec_max: rates.iter().copied().fold(0.0, f64::max),
            ratio_to_direct: median(ratios),
            cpu_us_per_msg: cpu.filter(|_| messages > 0).map(per_msg),
            client_cpu_us_per_msg: per_msg(mine.iter().map(|s| s.client_cpu_seconds).sum()),
            server_cpu_us_per_msg: per_msg(mine.iter().map(|s| s.server_cpu_seconds).sum()),
            idle_rss_mib: self
                .idle_rss_kib
                .get(&route)
                .map(|&k| k as f64 / KIB_PER_MIB),
            peak_rss_mib: self
                .peak_rss_kib
                .get(&route)
                .map(|&k| k as f64 / KIB_PER_MIB),
            checkpoint_writes_per_stream_second: writes
                .filter(|_| stream_seconds > 0.0)
                .map(|w| w / stream_seconds),
        }
    }

    pub fn targets(&self) -> Vec<Target> {
        let sidecar = self.summary(Route::Sidecar);
        let nginx = self
            .routes()
            .contains(&Route::Nginx)
            .then(|| self.summary(Route::Nginx));
        let mut targets = Vec::new();
        let ratio = sidecar.ratio_to_direct.unwrap_or(0.0);
        targets.push(match nginx.as_ref().and_then(|n| n.ratio_to_direct) {
            Some(n) => Target {
                name: "throughput".into(),
                goal: format!("sidecar/direct >= nginx/direct ({n:.3})"),
                value: format!(
                    "{ratio:.3} ({:+.1}% vs nginx; sidecar ahead in {} of {} rounds)",
                    (ratio / n - 1.0) * 100.0,
                    self.rounds_sidecar_ahead(),
                    self.samples
                        .iter()
                        .filter(|s| s.route == Route::Nginx)
                        .count()
                ),
                pass: Some(ratio >= n),
            },
            None => Target {
                name: "throughput".into(),
                goal: "sidecar/direct >= nginx/direct".into(),
                value: format!("{ratio:.3} (no nginx in this run)"),
                pass: None,
            },
        });
        let cpu = sidecar.cpu_us_per_msg.unwrap_or(f64::INFINITY);
        targets.push(Target {
            name: "cpu".into(),
            goal: format!("<= {MAX_CPU_US_PER_MSG} us/msg"),
            value: format!(
                "{cpu:.3} us/msg ({:.1}x the target)",
                cpu / MAX_CPU_US_PER_MSG
            ),
            pass: Some(cpu <= MAX_CPU_US_PER_MSG),
        });
        if self.streams == RSS_TARGET_STREAMS {
            let rss = sidecar.peak_rss_mib.unwrap_or(f64::INFINITY);
            targets.push(Target {
                name: "rss".into(),
                goal: format!("<= {MAX_RSS_MIB} MiB peak with {RSS_TARGET_STREAMS} streams"),
                value: format!("{rss:.1} MiB"),
                pass: Some(rss <= MAX_RSS_MIB),
            });
        }
        targets
    }

    /// Rounds in which the sidecar streamed faster than nginx: how firm a verdict on close
    /// medians is.
    fn rounds_sidecar_ahead(&self) -> usize {
        let rate = |route, round| {
            self.samples
                .iter()
                .find(|s| s.route == route && s.round == round)
                .map(|s| s.msgs_per_sec)
        };
        self.samples
            .iter()
            .filter(|s| s.route == Route::Sidecar)
            .filter(|s| rate(Route::Nginx, s.round).is_some_and(|n| s.msgs_per_sec > n))
            .count()
    }

    pub fn print(&self, rounds: usize) {
        println!();
        println!(
            "scenario {}: {} stream(s) x {} messages, payload {} B (Event {} B), {rounds} rounds",
            self.name, self.streams, self.messages_per_stream, self.payload_bytes, self.event_bytes
        );
        println!(
            "  {:<8} {:>13} {:>25} {:>9} {:>11} {:>17} {:>13}",
            "path",
            "msg/s median",
            "min - max",
            "/direct",
            "CPU us/msg",
            "RSS MiB idle/peak",
            "ckpt/stream-s"
        );
        let summaries: Vec<PathSummary> =
            self.routes().into_iter().map(|r| self.summary(r)).collect();
        for s in &summaries {
            let opt =
                |v: Option<f64>, prec: usize| v.map_or("-".to_owned(), |v| format!("{v:.prec$}"));
            let rss = match (s.idle_rss_mib, s.peak_rss_mib) {
                (Some(i), Some(p)) => format!("{i:.1} / {p:.1}"),
                _ => "-".into(),
            };
            println!(
                "  {:<8} {:>13} {:>25} {:>9} {:>11} {:>17} {:>13}",
                s.route.to_string(),
                thousands(s.msgs_per_sec_median),
                format!(
                    "{} - {}",
                    thousands(s.msgs_per_sec_min),
                    thousands(s.msgs_per_sec_max)
                ),
                opt(s.ratio_to_direct, 3),
                opt(s.cpu_us_per_msg, 3),
                rss,
                opt(s.checkpoint_writes_per_stream_second, 2),
            );
        }
        println!("  CPU us/msg by process (where a path's time goes on a shared machine):");
        println!(
            "  {:<8} {:>8} {:>8} {:>8} {:>8}",
            "path", "client", "server", "proxy", "all"
        );
        for s in &summaries {
            let proxy = s.cpu_us_per_msg.unwrap_or(0.0);
            println!(
                "  {:<8} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
                s.route.to_string(),
                s.client_cpu_us_per_msg,
                s.server_cpu_us_per_msg,
                proxy,
                s.client_cpu_us_per_msg + s.server_cpu_us_per_msg + proxy
            );
        }
        if self.routes().contains(&Route::Sidecar) {
            for t in self.targets() {
                let verdict = match t.pass {
                    Some(true) => "PASS",
                    Some(false) => "MISS",
                    None => "n/a",
                };
                println!(
                    "  target {:<10} {verdict:<4}  {} (goal {})",
                    t.name, t.value, t.goal
                );
            }
        }
        for (who, lines) in &self.log_problems {
            println!("  {who} log: {} WARN/ERROR line(s)", lines.len());
            for l in lines.iter().take(5) {
                println!("    {l}");
            }
        }
        for f in self.failures.iter().take(20) {
            println!("  NOT EXACT: {f}");
        }
    }
}

/// 1234567.8 -> "1,234,568".
fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
    }
}
