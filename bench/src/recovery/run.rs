//! One run on fresh processes and a fresh key prefix: A's sidecar is SIGKILLed mid-stream, the
//! recoverer orphans its job (on the pod event, or once the lease lapses), B delivers the rest
//! to its sink. The measuring loop polls Redis and B's sink's record every millisecond.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use reprise_kube_fake::pods as kube_pods;
use serde::Serialize;

use super::{
    Via, check,
    store::JobFields,
    world::{self, DELAY_US, KILL_AFTER, NAMESPACE, USERS},
};
use crate::{
    brokers,
    fleet::{
        POD_A, POD_B, Shared, Sidecar, file_len, finish_delivery, lines, start_app, start_server,
        start_sidecar, start_sink, wait_app_under_way, wait_for, wait_taking_handoffs,
    },
    procs::{Proc, START_TIMEOUT, free_port, tail},
    timing::{ms, problem_lines_of, round_us},
};

/// The sidecar's default `lease_ttl`, for the lease path's deadline when none is given.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// The Kubernetes path's lease: far beyond its measures, so a lapse cannot be what orphaned.
pub const KUBE_LEASE_TTL: Duration = Duration::from_secs(60);
/// How long recovery may take beyond the lease (the reconcile interval, then B's take-over).
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// B streams the remaining ~3,000 admins at the server's pace (about 1 ms each).
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);
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
    s.isolated(
        rt,
        "recovery",
        &format!("{}-{n:02}", plan.via),
        |prefix, dir| run_in(s, plan, rt, prefix, dir, n),
    )
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
    let _server = start_server(dir, server_port, USERS, DELAY_US)?;
    let sink_port = free_port()?;
    let sink_record = dir.join("sink-b.txt");
    let sink = start_sink(dir, sink_port, &sink_record)?;
    let lease_ttl = match plan.via {
        Via::Kube => Some(KUBE_LEASE_TTL),
        Via::Lease => plan.lease_ttl,
    }
    .map(duration_text);
    let lease_ttl = lease_ttl.as_deref().map(|t| ("lease_ttl", t));
    let start_sidecar = |pod, sink_port| {
        start_sidecar(
            s,
            prefix,
            dir,
            pod,
            server_port,
            Some(sink_port),
            lease_ttl.as_slice(),
        )
    };
    // A's own sink is never called: nothing is handed to A, which is dead before the recovery.
    let mut a = start_sidecar(POD_A, free_port()?)?;
    let mut b = start_sidecar(POD_B, sink_port)?;
    wait_taking_handoffs(&mut a, &mut b)?;
    let interval = duration_text(plan.reconcile_interval);
    let kubeconfig = cluster.as_ref().map(|(_, path)| path.as_path());
    let recoverer = world::start_recoverer(s, prefix, dir, &interval, kubeconfig)?;
    // Not a synchronisation: it shifts the kill against the recoverer's reconcile ticks.
    let phase_offset = plan.phase_offset(n);
    std::thread::sleep(phase_offset);
    let app_record = dir.join("app-a.txt");
    let mut app = start_app(dir, &a, &app_record, None)?;
    wait_app_under_way(&mut app, &mut a, &app_record, KILL_AFTER)?;
    let mut con = brokers::connect(&s.redis_url)?;
    let job = brokers::job_key(&mut con, prefix)?;

    let killed_wall = SystemTime::now();
    let killed = Instant::now();
    a.proc.sigkill()?;
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

    let a_log = a.proc.log_text();
    let b_log = b.proc.log_text();
    let log_problems = problem_lines_of(&[
        (POD_A, &a_log),
        (POD_B, &b_log),
        ("recoverer", &recoverer_log),
    ]);
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
        timeline_ms: timeline(&recoverer_log, &b_log, start_wall),
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
    b: &mut Sidecar,
    sink: &Proc,
    app: &mut Proc,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    if finish_delivery(con, job, b, sink, FINISH_TIMEOUT, failures)?
        && let Err(e) = wait_for("A's app to end", START_TIMEOUT, || {
            Ok(app.exited()?.is_some())
        })
    {
        failures.push(format!("{e:#}"));
    }
    Ok(())
}

/// The offset B's Start told the sink: `demo-sink: job … after offset "…"`.
fn resumed_after(sink_log: &str) -> Option<String> {
    sink_log
        .lines()
        .find(|l| l.starts_with("demo-sink: job "))
        .and_then(|l| l.rsplit_once("after offset "))
        .map(|(_, offset)| offset.trim().trim_matches('"').to_owned())
}

/// Milliseconds from `start` to the first line of each milestone.
fn timeline(recoverer_log: &str, b_log: &str, start: SystemTime) -> BTreeMap<&'static str, f64> {
    let milestones = MILESTONES.iter().map(|&(name, who, text)| {
        let log = match who {
            Who::Recoverer => recoverer_log,
            Who::B => b_log,
        };
        (name, log, text)
    });
    crate::timing::timeline(milestones, start)
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
}
