//! One run of the handoff scenario on fresh processes and a fresh key prefix, and what it
//! measured.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::procs::{Proc, free_port, problem_lines, sibling_bin, tail};

/// The demo server's database and pace, as in `sidecar/tests/deliver.rs`.
pub const USERS: usize = 30_000;
pub const DELAY_US: u32 = 100;
/// A's app has this many users when A gets SIGTERM: the stream is well under way.
pub const SIGTERM_AFTER: usize = 1_000;
const SERVICE: &str = "bench";
const USERS_METHOD: &str = "demo.v1.UserService/ListUsers";
const TAKING_HANDOFFS: &str = "taking handoffs";
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Above the sidecar's default `shutdown_timeout` (20 s), so a late exit is still measured.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// B streams the remaining ~9,000 admins at the server's pace (about 1 ms each).
const FINISH_TIMEOUT: Duration = Duration::from_secs(120);
/// The measuring loop's period, hence its resolution.
const POLL: Duration = Duration::from_millis(1);
/// Waits that only synchronise the run, not measure it.
const SETTLE: Duration = Duration::from_millis(20);

/// Log lines that mark the way from SIGTERM to the rest arriving at B: (name, pod, text).
const MILESTONES: [(&str, Pod, &str); 8] = [
    ("a_sigterm_logged", Pod::A, "shutdown: SIGTERM received"),
    ("a_drain_over", Pod::A, "shutdown 2/5"),
    ("a_interrupting", Pod::A, "shutdown 3/5"),
    ("a_published", Pod::A, "published job.interrupted"),
    ("a_streams_done", Pod::A, "shutdown 4/5"),
    ("a_closing", Pod::A, "shutdown 5/5"),
    ("a_complete", Pod::A, "shutdown: complete"),
    ("b_took_over", Pod::B, "took over a handed-off job"),
];

pub fn milestone_names() -> impl Iterator<Item = &'static str> {
    MILESTONES.iter().map(|m| m.0)
}

#[derive(Clone, Copy)]
enum Pod {
    A,
    B,
}

/// What every run shares.
pub struct Settings {
    pub dir: PathBuf,
    pub descriptors: PathBuf,
    pub redis_url: String,
    pub amqp_url: String,
    /// `drain_period` of both sidecars; `None` keeps the sidecar's default (1s).
    pub drain_period: Option<String>,
    /// The admins of the demo database, in stream order: what A's app and B's sink must hold.
    pub admins: Vec<String>,
}

/// One `resume: deliver` run.
#[derive(Debug, Serialize)]
pub struct DeliverRun {
    pub run: usize,
    /// SIGTERM → A exited; `None` if it had not after `SHUTDOWN_TIMEOUT`.
    pub t_exit_ms: Option<f64>,
    /// SIGTERM → the first delivered message is in B's sink's record.
    pub t_resumed_ms: Option<f64>,
    /// SIGTERM → the last message A's app received (A forwards during the drain period).
    pub t_app_last_ms: Option<f64>,
    /// `t_resumed - t_app_last`: how long the service's stream stood still.
    pub gap_ms: Option<f64>,
    pub exit_code: Option<i32>,
    pub app_a_users: usize,
    pub sink_b_users: usize,
    /// Milliseconds from SIGTERM to each milestone line of the sidecars' logs.
    pub timeline_ms: BTreeMap<&'static str, f64>,
    pub failures: Vec<String>,
    /// WARN/ERROR lines of the sidecars, `pod-x: line` (counted over all runs in the JSON).
    #[serde(skip)]
    pub log_problems: Vec<String>,
}

/// One `resume: on_request` run.
#[derive(Debug, Serialize)]
pub struct OnRequestRun {
    pub run: usize,
    /// SIGTERM → the job's `status` in Redis reads `interrupted`.
    pub t_interrupted_ms: Option<f64>,
    pub t_exit_ms: Option<f64>,
    pub exit_code: Option<i32>,
    pub failures: Vec<String>,
}

/// One deliver run on fresh processes and a fresh prefix, cleaned up whatever happens.
pub fn deliver_run(
    s: &Settings,
    rt: &tokio::runtime::Runtime,
    run: usize,
) -> anyhow::Result<DeliverRun> {
    let prefix = unique_prefix();
    let dir = s.dir.join(format!("handoff-{run:02}"));
    std::fs::create_dir_all(&dir)?;
    let result = deliver_in(s, &prefix, &dir, run);
    cleanup(s, rt, &prefix);
    result
}

/// One on_request run, likewise.
pub fn on_request_run(
    s: &Settings,
    rt: &tokio::runtime::Runtime,
    run: usize,
) -> anyhow::Result<OnRequestRun> {
    let prefix = unique_prefix();
    let dir = s.dir.join(format!("on-request-{run:02}"));
    std::fs::create_dir_all(&dir)?;
    let result = on_request_in(s, &prefix, &dir, run);
    cleanup(s, rt, &prefix);
    result
}

fn deliver_in(s: &Settings, prefix: &str, dir: &Path, run: usize) -> anyhow::Result<DeliverRun> {
    let server_port = free_port()?;
    let _server = start_server(dir, server_port)?;
    let sink_port = free_port()?;
    let sink_record = dir.join("sink-b.txt");
    let mut sink_cmd = Command::new(sibling_bin("demo-sink")?);
    sink_cmd
        .arg("--listen")
        .arg(format!("127.0.0.1:{sink_port}"))
        .arg("--record")
        .arg(&sink_record);
    let mut sink = Proc::spawn("demo-sink", &mut sink_cmd, dir.join("demo-sink.log"))?;
    sink.wait_port(sink_port, START_TIMEOUT)?;
    // A's sink is never called: A stops consuming (shutdown step 2) before it interrupts.
    let a_sink = free_port()?;
    let mut a = start_sidecar(s, prefix, dir, "pod-a", server_port, Some(a_sink))?;
    let mut b = start_sidecar(s, prefix, dir, "pod-b", server_port, Some(sink_port))?;
    wait_for("pod-a and pod-b taking handoffs", START_TIMEOUT, || {
        a.check_alive()?;
        b.check_alive()?;
        Ok(a.proc.log_text().contains(TAKING_HANDOFFS)
            && b.proc.log_text().contains(TAKING_HANDOFFS))
    })?;
    let app_record = dir.join("app-a.txt");
    let mut app = start_app(dir, &a, &app_record)?;
    wait_app_under_way(&mut app, &mut a, &app_record)?;

    let signalled_wall = SystemTime::now();
    let signalled = Instant::now();
    a.proc.terminate()?;
    // One loop watches all three, so each is seen within one POLL of happening: A's exit, the
    // first message in B's sink, and the last growth of A's app's record (until the app ends).
    let (mut exit, mut resumed, mut app_ended) = (None, None, false);
    let (mut app_len, mut app_last) = (file_len(&app_record), None);
    while (exit.is_none() || resumed.is_none() || !app_ended)
        && signalled.elapsed() < SHUTDOWN_TIMEOUT
    {
        if exit.is_none()
            && let Some(status) = a.proc.exited()?
        {
            exit = Some((signalled.elapsed(), status));
        }
        if resumed.is_none() && file_len(&sink_record) > 0 {
            resumed = Some(signalled.elapsed());
        }
        // Read the app's state before its record: an app that has ended wrote its last line.
        let ended = app.exited()?.is_some();
        let len = file_len(&app_record);
        if len > app_len {
            (app_len, app_last) = (len, Some(signalled.elapsed()));
        }
        app_ended = ended;
        std::thread::sleep(POLL);
    }

    let mut failures = Vec::new();
    check_exit(&mut failures, "pod-a", exit.map(|(_, s)| s), &a.proc);
    if resumed.is_none() {
        failures.push(format!(
            "B's sink received nothing within {SHUTDOWN_TIMEOUT:?} of the SIGTERM; pod-b log tail:\n{}",
            tail(&b.proc.log_text(), 15)
        ));
    }
    if !app_ended {
        failures.push("A's app did not end its call after A's shutdown".into());
    }
    if failures.is_empty() {
        finish_deliver(s, prefix, &mut b, &sink, &mut failures)?;
    }
    let app_a = lines(&app_record);
    let sink_b = lines(&sink_record);
    if failures.is_empty()
        && let Some(problem) = exactness(&s.admins, &app_a, &sink_b)
    {
        failures.push(problem);
    }
    let a_log = a.proc.log_text();
    let b_log = b.proc.log_text();
    let mut log_problems: Vec<String> = problem_lines(&a_log)
        .into_iter()
        .map(|l| format!("pod-a: {l}"))
        .collect();
    log_problems.extend(
        problem_lines(&b_log)
            .into_iter()
            .map(|l| format!("pod-b: {l}")),
    );
    Ok(DeliverRun {
        run,
        t_exit_ms: exit.map(|(t, _)| ms(t)),
        t_resumed_ms: resumed.map(ms),
        t_app_last_ms: app_last.map(ms),
        gap_ms: resumed.zip(app_last).map(|(r, l)| round_us(ms(r) - ms(l))),
        exit_code: exit.and_then(|(_, s)| s.code()),
        app_a_users: app_a.len(),
        sink_b_users: sink_b.len(),
        timeline_ms: timeline(&a_log, &b_log, signalled_wall),
        failures,
        log_problems,
    })
}

/// B completes the job (as its owner) and the sink has seen the end of the delivery.
fn finish_deliver(
    s: &Settings,
    prefix: &str,
    b: &mut Sidecar,
    sink: &Proc,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mut con = redis_connection(&s.redis_url)?;
    let job = job_key(&mut con, prefix)?;
    let completed = wait_for("the job completed", FINISH_TIMEOUT, || {
        b.check_alive()?;
        Ok(hget(&mut con, &job, "status")?.as_deref() == Some("completed"))
    });
    if let Err(e) = completed {
        failures.push(format!(
            "{e:#}; pod-b log tail:\n{}",
            tail(&b.proc.log_text(), 15)
        ));
        return Ok(());
    }
    let owner = hget(&mut con, &job, "owner_pod")?;
    if owner.as_deref() != Some("pod-b") {
        failures.push(format!(
            "the completed job's owner_pod is {owner:?}, not pod-b"
        ));
    }
    // The sink prints the delivery's End; every message before it is already recorded.
    if let Err(e) = wait_for(
        "the sink to see the delivery's end",
        SHUTDOWN_TIMEOUT,
        || Ok(sink.log_text().contains("\"kind\":\"end\"")),
    ) {
        failures.push(format!("{e:#}"));
    }
    Ok(())
}

fn on_request_in(
    s: &Settings,
    prefix: &str,
    dir: &Path,
    run: usize,
) -> anyhow::Result<OnRequestRun> {
    let server_port = free_port()?;
    let _server = start_server(dir, server_port)?;
    let mut a = start_sidecar(s, prefix, dir, "pod-a", server_port, None)?;
    let app_record = dir.join("app-a.txt");
    let mut app = start_app(dir, &a, &app_record)?;
    wait_app_under_way(&mut app, &mut a, &app_record)?;
    let mut con = redis_connection(&s.redis_url)?;
    let job = job_key(&mut con, prefix)?;

    let signalled = Instant::now();
    a.proc.terminate()?;
    let (mut exit, mut interrupted) = (None, None);
    while (exit.is_none() || interrupted.is_none()) && signalled.elapsed() < SHUTDOWN_TIMEOUT {
        if exit.is_none()
            && let Some(status) = a.proc.exited()?
        {
            exit = Some((signalled.elapsed(), status));
        }
        if interrupted.is_none()
            && hget(&mut con, &job, "status")?.as_deref() == Some("interrupted")
        {
            interrupted = Some(signalled.elapsed());
        }
        std::thread::sleep(POLL);
    }
    let mut failures = Vec::new();
    check_exit(&mut failures, "pod-a", exit.map(|(_, s)| s), &a.proc);
    if interrupted.is_none() {
        failures.push(format!(
            "the job was not `interrupted` within {SHUTDOWN_TIMEOUT:?} (status {:?})",
            hget(&mut con, &job, "status")?
        ));
    }
    Ok(OnRequestRun {
        run,
        t_interrupted_ms: interrupted.map(ms),
        t_exit_ms: exit.map(|(t, _)| ms(t)),
        exit_code: exit.and_then(|(_, s)| s.code()),
        failures,
    })
}

/// A sidecar and the port its app connects to.
struct Sidecar {
    proc: Proc,
    port: u16,
}

impl Sidecar {
    fn check_alive(&mut self) -> anyhow::Result<()> {
        self.proc.check_alive()
    }
}

fn start_server(dir: &Path, port: u16) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(sibling_bin("demo-server")?);
    cmd.arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--users")
        .arg(USERS.to_string())
        .arg("--delay-us")
        .arg(DELAY_US.to_string())
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1");
    let mut server = Proc::spawn("demo-server", &mut cmd, dir.join("demo-server.log"))?;
    server.wait_port(port, START_TIMEOUT)?;
    Ok(server)
}

/// A sidecar of the service `bench` with ListUsers resumable: `resume: deliver` to the
/// ResumeSink on `sink_port`, or `on_request` without one. Every other key keeps its default.
fn start_sidecar(
    s: &Settings,
    prefix: &str,
    dir: &Path,
    pod: &str,
    upstream_port: u16,
    sink_port: Option<u16>,
) -> anyhow::Result<Sidecar> {
    let port = free_port()?;
    let metrics_port = free_port()?;
    // Paths and URLs as JSON strings: valid YAML whatever characters they hold.
    let quote = |v: &str| serde_json::to_string(v).unwrap_or_default();
    let mut config = format!(
        "listen: 127.0.0.1:{port}\n\
         upstream: http://127.0.0.1:{upstream_port}\n\
         descriptors: {desc}\n\
         redis_url: {redis}\n\
         amqp_url: {amqp}\n\
         key_prefix: {prefix}\n\
         service: {SERVICE}\n\
         pod_name: {pod}\n\
         metrics_listen: 127.0.0.1:{metrics_port}\n",
        desc = quote(&s.descriptors.to_string_lossy()),
        redis = quote(&s.redis_url),
        amqp = quote(&s.amqp_url),
        prefix = quote(prefix),
    );
    if let Some(sink) = sink_port {
        config.push_str(&format!("resume_sink: http://127.0.0.1:{sink}\n"));
    }
    if let Some(drain) = &s.drain_period {
        config.push_str(&format!("drain_period: {}\n", quote(drain)));
    }
    let resume = if sink_port.is_some() {
        "deliver"
    } else {
        "on_request"
    };
    config.push_str(&format!(
        "streams:\n  \
           - method: {USERS_METHOD}\n    \
             offset_field: user_id\n    \
             resume_field: after_user_id\n    \
             resume: {resume}\n"
    ));
    let path = dir.join(format!("{pod}.yaml"));
    std::fs::write(&path, config)?;
    let mut cmd = Command::new(sibling_bin("reprise-sidecar")?);
    cmd.arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    let mut proc = Proc::spawn("reprise-sidecar", &mut cmd, dir.join(format!("{pod}.log")))?;
    proc.wait_port(port, START_TIMEOUT)?;
    proc.wait_port(metrics_port, START_TIMEOUT)?;
    Ok(Sidecar { proc, port })
}

/// The app on A: `demo-client users --role admin`, recording every user it receives.
fn start_app(dir: &Path, a: &Sidecar, record: &Path) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(sibling_bin("demo-client")?);
    cmd.arg("--target")
        .arg(format!("http://127.0.0.1:{}", a.port))
        .args(["users", "--role", "admin", "--record"])
        .arg(record);
    Proc::spawn("demo-client", &mut cmd, dir.join("app-a.log"))
}

fn wait_app_under_way(app: &mut Proc, a: &mut Sidecar, record: &Path) -> anyhow::Result<()> {
    wait_for(
        &format!("{SIGTERM_AFTER} users at A's app"),
        START_TIMEOUT,
        || {
            app.check_alive()?;
            a.check_alive()?;
            Ok(count_lines(record) >= SIGTERM_AFTER)
        },
    )
}

fn check_exit(failures: &mut Vec<String>, who: &str, status: Option<ExitStatus>, proc: &Proc) {
    match status {
        None => failures.push(format!(
            "{who} did not exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM"
        )),
        Some(s) if !s.success() => failures.push(format!(
            "{who} exited with {s}, not 0; log tail:\n{}",
            tail(&proc.log_text(), 15)
        )),
        Some(_) => {}
    }
}

/// Polls `cond` until it holds; an error names `what` once `within` has passed.
fn wait_for(
    what: &str,
    within: Duration,
    mut cond: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !cond()? {
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        std::thread::sleep(SETTLE);
    }
    Ok(())
}

/// None when A's app then B's sink received exactly `admins`, in order; otherwise what is wrong.
pub fn exactness(admins: &[String], app_a: &[String], sink_b: &[String]) -> Option<String> {
    let together: Vec<&String> = app_a.iter().chain(sink_b).collect();
    if together.len() == admins.len() && together.iter().zip(admins).all(|(g, w)| *g == w) {
        return None;
    }
    let mut seen = std::collections::HashMap::<&String, usize>::new();
    for id in &together {
        *seen.entry(id).or_default() += 1;
    }
    let twice = seen.values().filter(|&&n| n > 1).count();
    let lost = admins.iter().filter(|id| !seen.contains_key(id)).count();
    let wanted: std::collections::HashSet<&String> = admins.iter().collect();
    let foreign = seen.keys().filter(|id| !wanted.contains(*id)).count();
    let first_wrong = together
        .iter()
        .zip(admins)
        .position(|(g, w)| *g != w)
        .map_or(String::new(), |i| {
            format!(", first out of place at #{}", i + 1)
        });
    Some(format!(
        "NOT EXACT: A's app {} + B's sink {} = {} users, want {}: {twice} twice, {lost} lost, \
         {foreign} not admins{first_wrong}",
        app_a.len(),
        sink_b.len(),
        together.len(),
        admins.len()
    ))
}

/// Milliseconds from `signalled` to the first log line of each milestone (both sidecars log
/// wall-clock UTC time with microseconds, as the bench's clock does).
fn timeline(a_log: &str, b_log: &str, signalled: SystemTime) -> BTreeMap<&'static str, f64> {
    let since_epoch = signalled.duration_since(UNIX_EPOCH).unwrap_or_default();
    let signal_of_day = since_epoch.as_secs_f64() % 86_400.0;
    MILESTONES
        .iter()
        .filter_map(|&(name, pod, text)| {
            let log = match pod {
                Pod::A => a_log,
                Pod::B => b_log,
            };
            let at = log
                .lines()
                .find(|l| l.contains(text))
                .and_then(time_of_day)?;
            // A run that crosses midnight UTC.
            let mut d = at - signal_of_day;
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
fn ms(d: Duration) -> f64 {
    round_us(d.as_secs_f64() * 1e3)
}

fn round_us(ms: f64) -> f64 {
    (ms * 1e3).round() / 1e3
}

fn unique_prefix() -> String {
    format!(
        "bench-handoff-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
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

fn redis_connection(url: &str) -> anyhow::Result<redis::Connection> {
    let client = redis::Client::open(url)?;
    Ok(client.get_connection_with_timeout(Duration::from_secs(2))?)
}

/// The key of the run's one job.
fn job_key(con: &mut redis::Connection, prefix: &str) -> anyhow::Result<String> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:job:*"))
        .query(con)?;
    match keys.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "expected one job under {prefix}:job:*, found {}",
            keys.len()
        ),
    }
}

fn hget(con: &mut redis::Connection, key: &str, field: &str) -> anyhow::Result<Option<String>> {
    Ok(redis::cmd("HGET").arg(key).arg(field).query(con)?)
}

/// Deletes the run's Redis keys, its service's resume queue and its events exchange.
fn cleanup(s: &Settings, rt: &tokio::runtime::Runtime, prefix: &str) {
    if let Err(e) = crate::rig::redis_cleanup(&s.redis_url, prefix) {
        eprintln!("  redis: could not remove {prefix}:* ({e:#})");
    }
    if let Err(e) = rt.block_on(delete_amqp(&s.amqp_url, prefix)) {
        eprintln!("  rabbitmq: could not remove {prefix}.* ({e:#})");
    }
}

async fn delete_amqp(url: &str, prefix: &str) -> anyhow::Result<()> {
    use lapin::{Connection, ConnectionProperties, options::*};
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")?;
    // A channel each: a failed delete closes its channel.
    let ch = conn.create_channel().await?;
    ch.queue_delete(
        format!("{prefix}.{SERVICE}.resume").into(),
        QueueDeleteOptions::default(),
    )
    .await?;
    let ch = conn.create_channel().await?;
    ch.exchange_delete(
        format!("{prefix}.events").into(),
        ExchangeDeleteOptions::default(),
    )
    .await?;
    conn.close(200, "OK".into()).await?;
    Ok(())
}

/// RabbitMQ reachable at `url`?
pub fn amqp_reachable(rt: &tokio::runtime::Runtime, url: &str) -> anyhow::Result<()> {
    rt.block_on(async {
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            lapin::Connection::connect(url, lapin::ConnectionProperties::default()),
        )
        .await
        .context("no answer within 5s")??;
        conn.close(200, "OK".into()).await?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn exact_split_passes_and_others_say_why() {
        let admins = ids(&["a", "b", "c", "d"]);
        assert_eq!(
            exactness(&admins, &ids(&["a", "b"]), &ids(&["c", "d"])),
            None
        );
        assert_eq!(exactness(&admins, &[], &admins), None);
        let dup = exactness(&admins, &ids(&["a", "b"]), &ids(&["b", "c", "d"])).unwrap_or_default();
        assert!(dup.contains("1 twice, 0 lost"), "{dup}");
        let lost = exactness(&admins, &ids(&["a", "b"]), &ids(&["d"])).unwrap_or_default();
        assert!(lost.contains("0 twice, 1 lost"), "{lost}");
        let order = exactness(&admins, &ids(&["a", "c"]), &ids(&["b", "d"])).unwrap_or_default();
        assert!(order.contains("first out of place at #2"), "{order}");
    }

    #[test]
    fn log_time_of_day() {
        let line = "2026-11-24T10:11:12.250000Z  INFO reprise_sidecar::shutdown: shutdown 1/5";
        assert_eq!(time_of_day(line), Some(36_672.25));
        assert_eq!(time_of_day("no timestamp here"), None);
    }
}
