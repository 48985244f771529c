//! One run on fresh processes and a fresh key prefix: A's sidecar is SIGKILLed mid-stream, the
//! recoverer orphans its job (on the pod event, or once the lease lapses), B delivers the rest
//! to its sink. The measuring loop polls Redis and B's sink's record every millisecond.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use serde::Serialize;

use super::{
    Via, check, kube_pods,
    store::{self, JobFields},
    world::{self, KILL_AFTER, NAMESPACE, POD_A, POD_B, Shared, wait_for},
};
use crate::procs::{Proc, free_port, problem_lines, tail};

/// The sidecar's default `lease_ttl`, for the lease path's deadline when none is given.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// The Kubernetes path's lease: far beyond its measures, so a lapse cannot be what orphaned.
pub const KUBE_LEASE_TTL: Duration = Duration::from_secs(60);
/// How long recovery may take beyond the lease (the reconcile interval, then B's take-over).
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// B streams the remaining ~3,000 admins at the server's pace (about 1 ms each).
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The measuring loop's period, hence its resolution.
const POLL: Duration = Duration::from_millis(1);

/// Log lines that mark the way from orphaning to B's delivery: (name, process, text).
const MILESTONES: [(&str, Who, &str); 2] = [
    ("recoverer_orphaned", Who::Recoverer, "job orphaned"),
    ("b_took_over", Who::B, "took over a handed-off job"),
];

#[derive(Clone, Copy)]
enum Who {
    Recoverer,
    B,
}

/// How the runs of one path are set up.
pub struct Plan {
    pub via: Via,
    /// The sidecars' `lease_ttl`; `None` leaves the key out (the sidecar's default).
    pub lease_ttl: Option<Duration>,
    pub reconcile_interval: Duration,
    pub runs: usize,
}

impl Plan {
    fn lease_ttl(&self) -> Duration {
        self.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL)
    }

    /// Lease path: how long run `n` waits once the recoverer is ready, so that over the runs
    /// the lease expires evenly across the reconcile period. Every run's start-up takes about
    /// as long, so without it every expiry would meet the same phase of the reconcile ticks
    /// and the wait for the next one would look constant.
    fn phase_offset(&self, n: usize) -> Duration {
        match self.via {
            Via::Kube => Duration::ZERO,
            Via::Lease => self
                .reconcile_interval
                .mul_f64((n - 1) as f64 / self.runs as f64),
        }
    }
}

/// What one run measured. Times are ms from the start: the pod update on the Kubernetes path,
/// the SIGKILL on the lease path.
#[derive(Debug, Serialize)]
pub struct Run {
    pub run: usize,
    /// The wait between the recoverer's start and the app's (`Plan::phase_offset`).
    pub phase_offset_ms: f64,
    /// The job left pod-a's hands in Redis: `orphaned` (or already B's, or completed).
    pub t_orphaned_ms: Option<f64>,
    /// The first delivered message is in B's sink's record.
    pub t_resumed_ms: Option<f64>,
    /// Lease path: the expiry of A's lease (`lease_expires_at`, Redis's clock) after the kill.
    pub t_lease_expiry_ms: Option<f64>,
    /// The milestone lines of the recoverer's and pod-b's logs.
    pub timeline_ms: BTreeMap<&'static str, f64>,
    /// The job's offset when it was seen orphaned: where B must resume.
    pub checkpoint: Option<String>,
    /// The offset B told its sink it resumes after.
    pub b_resumed_after: Option<String>,
    pub app_a_users: usize,
    pub sink_b_users: usize,
    /// Admins A's app received past the checkpoint, so B delivered them again.
    pub duplicates: Option<usize>,
    pub failures: Vec<String>,
    /// WARN/ERROR lines, `who: line` (counted over all runs in the JSON).
    #[serde(skip)]
    pub log_problems: Vec<String>,
}

/// One run, cleaned up whatever happens.
pub fn run(s: &Shared, plan: &Plan, rt: &tokio::runtime::Runtime, n: usize) -> anyhow::Result<Run> {
    let prefix = format!(
        "bench-recovery-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let dir = s.dir.join(format!("{}-{n:02}", plan.via));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(s, plan, rt, &prefix, &dir, n);
    store::cleanup(&s.redis_url, &s.amqp_url, rt, &prefix);
    result
}

fn run_in(
    s: &Shared,
    plan: &Plan,
    rt: &tokio::runtime::Runtime,
    prefix: &str,
    dir: &Path,
    n: usize,
) -> anyhow::Result<Run> {
    let cluster = match plan.via {
        Via::Kube => Some(world::fake_cluster(rt, dir)?),
        Via::Lease => None,
    };
    let server_port = free_port()?;
    let _server = world::start_server(dir, server_port)?;
    let sink_port = free_port()?;
    let sink_record = dir.join("sink-b.txt");
    let sink = world::start_sink(dir, sink_port, &sink_record)?;
    let lease_ttl = match plan.via {
        Via::Kube => Some(KUBE_LEASE_TTL),
        Via::Lease => plan.lease_ttl,
    }
    .map(duration_text);
    let start_sidecar = |pod, sink_port| {
        world::start_sidecar(
            s,
            prefix,
            dir,
            pod,
            server_port,
            sink_port,
            lease_ttl.as_deref(),
        )
    };
    // A's own sink is never called: nothing is handed to A, which is dead before the recovery.
    let mut a = start_sidecar(POD_A, free_port()?)?;
    let mut b = start_sidecar(POD_B, sink_port)?;
    wait_for("pod-a and pod-b taking handoffs", START_TIMEOUT, || {
        a.proc.check_alive()?;
        b.proc.check_alive()?;
        let taking = |p: &Proc| p.log_text().contains("taking handoffs");
        Ok(taking(&a.proc) && taking(&b.proc))
    })?;
    let interval = duration_text(plan.reconcile_interval);
    let kubeconfig = cluster.as_ref().map(|(_, path)| path.as_path());
    let recoverer = world::start_recoverer(s, prefix, dir, &interval, kubeconfig)?;
    // Not a synchronisation: it shifts the kill against the recoverer's reconcile ticks.
    let phase_offset = plan.phase_offset(n);
    std::thread::sleep(phase_offset);
    let app_record = dir.join("app-a.txt");
    let mut app = world::start_app(dir, &a, &app_record)?;
    wait_for(
        &format!("{KILL_AFTER} admins at A's app"),
        START_TIMEOUT,
        || {
            app.check_alive()?;
            a.proc.check_alive()?;
            Ok(count_lines(&app_record) >= KILL_AFTER)
        },
    )?;
    let mut con = store::connect(&s.redis_url)?;
    let job = store::job_key(&mut con, prefix)?;

    let killed_wall = SystemTime::now();
    let killed = Instant::now();
    sigkill(&a.proc)?;
    wait_for("pod-a's sidecar to die", START_TIMEOUT, || {
        Ok(a.proc.exited()?.is_some())
    })?;
    let mut failures = Vec::new();
    let (start, start_wall) = match &cluster {
        None => (killed, killed_wall),
        Some((api, _)) => {
            // As in the recoverer's test: A's app sees its call cut, the job is still running
            // under pod-a (a SIGKILL gives no notice), then the kubelet's report arrives.
            wait_for("A's app to end", START_TIMEOUT, || {
                Ok(app.exited()?.is_some())
            })?;
            let before = JobFields::read(&mut con, &job)?;
            if !before.held_by(POD_A) {
                failures.push(format!(
                    "the job left pod-a before the pod event: status {:?}, owner {:?}",
                    before.status, before.owner_pod
                ));
            }
            let finished_at = k8s_openapi::jiff::Timestamp::now().to_string();
            let wall = SystemTime::now();
            let at = Instant::now();
            api.update(NAMESPACE, POD_A, |pod| {
                *pod = kube_pods::sidecar_terminated(
                    pod.clone(),
                    kube_pods::terminated(137, "OOMKilled", None, &finished_at),
                );
            });
            (at, wall)
        }
    };
    let deadline = start
        + RECOVERY_TIMEOUT
        + match plan.via {
            Via::Kube => Duration::ZERO,
            Via::Lease => plan.lease_ttl(),
        };
    // One loop watches both, so each is seen within one POLL of happening.
    let (mut orphaned, mut resumed, mut lease_expiry) = (None, None, None);
    while (orphaned.is_none() || resumed.is_none()) && Instant::now() < deadline {
        if orphaned.is_none() {
            let fields = JobFields::read(&mut con, &job)?;
            if !fields.held_by(POD_A) {
                orphaned = Some((start.elapsed(), fields));
            } else if fields.lease_expires_at.is_some() {
                lease_expiry = fields.lease_expires_at;
            }
        }
        if resumed.is_none() && file_len(&sink_record) > 0 {
            resumed = Some(start.elapsed());
        }
        std::thread::sleep(POLL);
    }

    let waited = deadline.duration_since(start);
    if orphaned.is_none() {
        failures.push(format!(
            "the job was still pod-a's {waited:?} after the start; recoverer log tail:\n{}",
            tail(&recoverer.log_text(), 15)
        ));
    }
    if resumed.is_none() {
        failures.push(format!(
            "B's sink received nothing within {waited:?}; pod-b log tail:\n{}",
            tail(&b.proc.log_text(), 15)
        ));
    }
    let recoverer_log = recoverer.log_text();
    let expected = match plan.via {
        Via::Kube => "oom_killed",
        Via::Lease => "lease expired",
    };
    if orphaned.is_some()
        && !recoverer_log
            .lines()
            .any(|l| l.contains("job orphaned") && l.contains(expected))
    {
        failures.push(format!(
            "the recoverer did not orphan the job for `{expected}`: the measure is not of this \
             path; log tail:\n{}",
            tail(&recoverer_log, 15)
        ));
    }
    if failures.is_empty() {
        finish(&mut con, &job, &mut b, &sink, &mut app, &mut failures)?;
    }

    let checkpoint = orphaned.as_ref().and_then(|(_, f)| f.offset.clone());
    let b_resumed_after = resumed_after(&sink.log_text());
    let app_a = lines(&app_record);
    let sink_b = lines(&sink_record);
    let mut duplicates = None;
    if failures.is_empty() {
        match &checkpoint {
            None => failures.push("the orphaned job had no checkpoint".into()),
            Some(cp) => {
                match check::at_least_once(&s.admins, &app_a, &sink_b, cp) {
                    Ok(d) => duplicates = Some(d),
                    Err(e) => failures.push(e),
                }
                if b_resumed_after.as_ref() != Some(cp) {
                    failures.push(format!(
                        "B resumed after {b_resumed_after:?}, not the checkpoint at orphaning \
                         ({cp:?})"
                    ));
                }
            }
        }
    }

    let b_log = b.proc.log_text();
    let mut log_problems = Vec::new();
    for (who, log) in [
        ("pod-a", a.proc.log_text()),
        ("pod-b", b_log.clone()),
        ("recoverer", recoverer_log.clone()),
    ] {
        log_problems.extend(
            problem_lines(&log)
                .into_iter()
                .map(|l| format!("{who}: {l}")),
        );
    }
    let start_ms = epoch_ms(start_wall);
    Ok(Run {
        run: n,
        phase_offset_ms: ms(phase_offset),
        t_orphaned_ms: orphaned.as_ref().map(|(t, _)| ms(*t)),
        t_resumed_ms: resumed.map(ms),
        t_lease_expiry_ms: match plan.via {
            Via::Kube => None,
            Via::Lease => lease_expiry.map(|e| round_us(e as f64 - start_ms)),
        },
        timeline_ms: timeline(&recoverer_log, &b_log, start_ms),
        checkpoint,
        b_resumed_after,
        app_a_users: app_a.len(),
        sink_b_users: sink_b.len(),
        duplicates,
        failures,
        log_problems,
    })
}

/// B completes the job as its owner, the sink has seen the end of the delivery, and A's app
/// has ended its call: every record is whole.
fn finish(
    con: &mut redis::Connection,
    job: &str,
    b: &mut world::Sidecar,
    sink: &Proc,
    app: &mut Proc,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    let completed = wait_for("the job completed", FINISH_TIMEOUT, || {
        b.proc.check_alive()?;
        Ok(JobFields::read(con, job)?.status.as_deref() == Some("completed"))
    });
    if let Err(e) = completed {
        failures.push(format!(
            "{e:#}; pod-b log tail:\n{}",
            tail(&b.proc.log_text(), 15)
        ));
        return Ok(());
    }
    let owner = JobFields::read(con, job)?.owner_pod;
    if owner.as_deref() != Some(POD_B) {
        failures.push(format!(
            "the completed job's owner_pod is {owner:?}, not pod-b"
        ));
    }
    // The sink prints the delivery's End; every message before it is already recorded.
    let end = wait_for("the sink to see the delivery's end", FINISH_TIMEOUT, || {
        Ok(sink.log_text().contains("\"kind\":\"end\""))
    });
    let app_ended = wait_for("A's app to end", START_TIMEOUT, || {
        Ok(app.exited()?.is_some())
    });
    failures.extend(
        [end, app_ended]
            .into_iter()
            .filter_map(|r| r.err().map(|e| format!("{e:#}"))),
    );
    Ok(())
}

/// SIGKILL, sent directly: a fork and exec of kill(1) would blur the instant measured from.
fn sigkill(p: &Proc) -> anyhow::Result<()> {
    let pid = i32::try_from(p.pid())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .context("no pid")?;
    rustix::process::kill_process(pid, rustix::process::Signal::KILL)
        .with_context(|| format!("SIGKILL to {} ({})", p.name, p.pid()))
}

/// The offset B's Start told the sink: `demo-sink: job … after offset "…"`.
fn resumed_after(sink_log: &str) -> Option<String> {
    sink_log
        .lines()
        .find(|l| l.starts_with("demo-sink: job "))
        .and_then(|l| l.rsplit_once("after offset "))
        .map(|(_, offset)| offset.trim().trim_matches('"').to_owned())
}

/// Milliseconds from `start_ms` (epoch) to the first line of each milestone; the logs carry
/// wall-clock UTC time with microseconds, as the bench's clock does.
fn timeline(recoverer_log: &str, b_log: &str, start_ms: f64) -> BTreeMap<&'static str, f64> {
    let start_of_day = (start_ms / 1e3) % 86_400.0;
    MILESTONES
        .iter()
        .filter_map(|&(name, who, text)| {
            let log = match who {
                Who::Recoverer => recoverer_log,
                Who::B => b_log,
            };
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

/// `60s`, `2s`, `1500ms`: as the configs and the docs write durations (humantime says `1m`).
pub fn duration_text(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn epoch_ms(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1e3
}

/// Milliseconds, to the microsecond.
fn ms(d: Duration) -> f64 {
    round_us(d.as_secs_f64() * 1e3)
}

pub fn round_us(ms: f64) -> f64 {
    (ms * 1e3).round() / 1e3
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn count_lines(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sinks_start_line_names_the_offset() {
        let log = "demo-sink: job j1 (/demo.v1.UserService/ListUsers) from pod pod-a \
                   (orphaned), after offset \"8f3c-1\"\n";
        assert_eq!(resumed_after(log).as_deref(), Some("8f3c-1"));
        assert_eq!(resumed_after("nothing yet"), None);
    }

    #[test]
    fn log_time_of_day() {
        let line = "2026-11-24T10:11:12.250000Z  INFO reprise_recoverer::reconcile: job orphaned";
        assert_eq!(time_of_day(line), Some(36_672.25));
        assert_eq!(time_of_day("no timestamp here"), None);
    }
}
