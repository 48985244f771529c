//! One run of the handoff scenario on fresh processes and a fresh key prefix, and what it
//! measured.

use std::{
    collections::BTreeMap,
    path::Path,
    process::ExitStatus,
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;

use super::{
    DELAY_US, SIGTERM_AFTER, USERS,
    check::{exactness, timeline},
};
use crate::{
    brokers::{connect, hget, job_key},
    fleet::{
        POD_A, POD_B, Shared, Sidecar, file_len, finish_delivery, lines, start_app, start_server,
        start_sink, wait_app_under_way, wait_taking_handoffs,
    },
    procs::{Proc, free_port, tail},
    timing::{ms, problem_lines_of, round_us},
};

/// Above the sidecar's default `shutdown_timeout` (20 s), so a late exit is still measured.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// B streams the remaining ~9,000 admins at the server's pace (about 1 ms each).
const FINISH_TIMEOUT: Duration = Duration::from_secs(120);
/// The measuring loop's period, hence its resolution.
const POLL: Duration = Duration::from_millis(1);

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

/// What every run shares: the processes' settings, and both sidecars' `drain_period` (`None`
/// keeps the sidecar's default, 1s).
pub struct Settings {
    pub fleet: Shared,
    pub drain_period: Option<String>,
    /// The HTTP/2 stream window A's app announces.
    pub app_window: u32,
}

impl Settings {
    /// A sidecar resuming to the ResumeSink on `sink_port`, or on_request without one.
    fn start_sidecar(
        &self,
        prefix: &str,
        dir: &Path,
        pod: &str,
        upstream_port: u16,
        sink_port: Option<u16>,
    ) -> anyhow::Result<Sidecar> {
        let drain = self.drain_period.as_deref().map(|d| ("drain_period", d));
        crate::fleet::start_sidecar(
            &self.fleet,
            prefix,
            dir,
            pod,
            upstream_port,
            sink_port,
            drain.as_slice(),
        )
    }
}

/// One deliver run on fresh processes and a fresh prefix, cleaned up whatever happens.
pub fn deliver_run(
    s: &Settings,
    rt: &tokio::runtime::Runtime,
    run: usize,
) -> anyhow::Result<DeliverRun> {
    s.fleet.isolated(
        rt,
        "handoff",
        &format!("handoff-{run:02}"),
        |prefix, dir| deliver_in(s, prefix, dir, run),
    )
}

/// One on_request run, likewise.
pub fn on_request_run(
    s: &Settings,
    rt: &tokio::runtime::Runtime,
    run: usize,
) -> anyhow::Result<OnRequestRun> {
    s.fleet.isolated(
        rt,
        "handoff",
        &format!("on-request-{run:02}"),
        |prefix, dir| on_request_in(s, prefix, dir, run),
    )
}

fn deliver_in(s: &Settings, prefix: &str, dir: &Path, run: usize) -> anyhow::Result<DeliverRun> {
    let server_port = free_port()?;
    let _server = start_server(dir, server_port, USERS, DELAY_US)?;
    let sink_port = free_port()?;
    let sink_record = dir.join("sink-b.txt");
    let sink = start_sink(dir, sink_port, &sink_record)?;
    // A's sink is never called: A stops consuming (shutdown step 2) before it interrupts.
    let a_sink = free_port()?;
    let mut a = s.start_sidecar(prefix, dir, POD_A, server_port, Some(a_sink))?;
    let mut b = s.start_sidecar(prefix, dir, POD_B, server_port, Some(sink_port))?;
    wait_taking_handoffs(&mut a, &mut b)?;
    let app_record = dir.join("app-a.txt");
    let mut app = start_app(dir, &a, &app_record, Some(s.app_window))?;
    wait_app_under_way(&mut app, &mut a, &app_record, SIGTERM_AFTER)?;

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
    check_exit(&mut failures, POD_A, exit.map(|(_, s)| s), &a.proc);
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
        let mut con = connect(&s.fleet.redis_url)?;
        let job = job_key(&mut con, prefix)?;
        finish_delivery(&mut con, &job, &mut b, &sink, FINISH_TIMEOUT, &mut failures)?;
    }
    let app_a = lines(&app_record);
    let sink_b = lines(&sink_record);
    if failures.is_empty()
        && let Some(problem) = exactness(&s.fleet.admins, &app_a, &sink_b)
    {
        failures.push(problem);
    }
    let a_log = a.proc.log_text();
    let b_log = b.proc.log_text();
    let log_problems = problem_lines_of(&[(POD_A, &a_log), (POD_B, &b_log)]);
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

fn on_request_in(
    s: &Settings,
    prefix: &str,
    dir: &Path,
    run: usize,
) -> anyhow::Result<OnRequestRun> {
    let server_port = free_port()?;
    let _server = start_server(dir, server_port, USERS, DELAY_US)?;
    let mut a = s.start_sidecar(prefix, dir, POD_A, server_port, None)?;
    let app_record = dir.join("app-a.txt");
    let mut app = start_app(dir, &a, &app_record, Some(s.app_window))?;
    wait_app_under_way(&mut app, &mut a, &app_record, SIGTERM_AFTER)?;
    let mut con = connect(&s.fleet.redis_url)?;
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
    check_exit(&mut failures, POD_A, exit.map(|(_, s)| s), &a.proc);
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
