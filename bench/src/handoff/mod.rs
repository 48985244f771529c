//! The `handoff` scenario: SIGTERM to a sidecar in the middle of a `resume: deliver` stream.
//!
//! Every run starts from nothing under a key prefix of its own: the demo server, a demo-sink
//! (pod B's app), and sidecars pod-a and pod-b of one service on Redis and RabbitMQ. Once both
//! take handoffs, a demo client streams the admins through A; after 1,000 of them A gets
//! SIGTERM. From that instant the run measures A's exit (`t_exit`) and the first message in
//! B's sink (`t_resumed`). Then B finishes the job, and A's app and B's sink together must hold
//! every admin exactly once, in order. The run's Redis keys and RabbitMQ objects go last.
//!
//! The on_request path has no second pod: it measures SIGTERM → the job reads `interrupted`.

mod check;
mod report;
mod run;

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde_json::json;

use crate::fleet::Shared;

pub struct Options {
    pub runs: usize,
    pub on_request_runs: usize,
    /// `drain_period` for both sidecars; `None` keeps the sidecar's default.
    pub drain_period: Option<String>,
    /// The HTTP/2 stream window A's app announces. At 64 KiB its library gives it back every
    /// 16 to 32 KiB read, so the handoff sees the app read what it was handed; at tonic's
    /// 2 MiB nothing is given back before about 700 KB, and a handoff of this 100 KB stream
    /// replays it (README, "Rolling restarts").
    pub app_window: u32,
    pub keep_logs: bool,
}

/// The demo server's database and pace, as in `sidecar/tests/deliver.rs`: 10,000 admins at
/// about one message per millisecond (the pause is a tokio timer).
const USERS: usize = 30_000;
const DELAY_US: u32 = 100;
/// A's app has this many users when A gets SIGTERM: the stream is well under way.
const SIGTERM_AFTER: usize = 1_000;

/// The sidecar's own `drain_period` default, for the output.
const DEFAULT_DRAIN_PERIOD: &str = "1s";

/// Returns whether every run was exact (and every SIGTERMed sidecar exited 0).
pub fn run(opts: &Options) -> anyhow::Result<bool> {
    anyhow::ensure!(opts.runs > 0, "--runs must be at least 1");
    let dir = tempfile::Builder::new()
        .prefix("reprise-bench")
        .disable_cleanup(opts.keep_logs)
        .tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    let settings = run::Settings {
        fleet: Shared::new(dir.path(), &rt, USERS)?,
        drain_period: opts.drain_period.clone(),
        app_window: opts.app_window,
    };
    let drain_period = opts
        .drain_period
        .clone()
        .unwrap_or_else(|| format!("{DEFAULT_DRAIN_PERIOD} (the sidecar's default)"));
    println!(
        "reprise-bench handoff: {} CPU(s), {}; demo-server --users {} --delay-us {}; SIGTERM to \
         pod-a once its app has {} admins; app window {} B; drain_period {drain_period}; Redis \
         and RabbitMQ on",
        crate::cpus(),
        crate::cpu_model(),
        USERS,
        DELAY_US,
        SIGTERM_AFTER,
        opts.app_window,
    );

    // Timings on a shared 2-core machine mean little if something else was busy.
    let load_before = crate::load_average();
    println!("load average before: {load_before}");

    let mut runs = Vec::with_capacity(opts.runs);
    for n in 1..=opts.runs {
        let r = run::deliver_run(&settings, &rt, n).with_context(|| format!("run {n}"))?;
        report::print_run(&r, opts.runs);
        runs.push(r);
    }
    let mut on_request = Vec::with_capacity(opts.on_request_runs);
    for n in 1..=opts.on_request_runs {
        let r = run::on_request_run(&settings, &rt, n)
            .with_context(|| format!("on_request run {n}"))?;
        report::print_on_request_run(&r, opts.on_request_runs);
        on_request.push(r);
    }

    let summary = report::Summary {
        drain_period: &drain_period,
        runs: &runs,
        on_request: &on_request,
    };
    let load_after = crate::load_average();
    summary.print();
    println!("load average after: {load_after}");
    let line = summary.json(json!({
        "runs": opts.runs,
        "on_request_runs": opts.on_request_runs,
        "users": USERS,
        "delay_us": DELAY_US,
        "sigterm_after": SIGTERM_AFTER,
        "app_window": opts.app_window,
        "drain_period": opts.drain_period.as_deref().unwrap_or(DEFAULT_DRAIN_PERIOD),
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "machine": { "cpus": crate::cpus(), "model": crate::cpu_model() },
        "load_average": { "before": load_before, "after": load_after },
    }));
    println!();
    println!("{line}");
    if opts.keep_logs {
        println!("logs kept in {}", dir.path().display());
    }
    Ok(summary.exact())
}
