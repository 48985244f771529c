//! `reprise-bench recovery`: a sidecar SIGKILLed mid-stream gives no notice, so no handoff
//! happens; how long until its job is orphaned, and until pod B's app has the rest?
//!
//! Two paths, each run on fresh processes under a key prefix of its own (`crate::fleet`, plus
//! the recoverer in `world.rs`):
//! - `kube`: the recoverer watches an in-process fake Kubernetes API server (the recoverer
//!   tests' own) holding pods pod-a and pod-b. After the kill the bench reports pod-a's sidecar
//!   container terminated, exit code 137, OOMKilled, and measures from that update. The lease
//!   (60 s) and the reconcile interval (5 s) are far from the measures: this is the event path.
//! - `lease`: no Kubernetes; measured from the SIGKILL, through the lease's expiry and the next
//!   reconcile.
//!
//! Every run checks the delivery (`check.rs`): at least once, never a loss; a run that lost a
//! message fails the bench (exit 1). The run's Redis keys and RabbitMQ objects go last.

mod check;
mod report;
mod run;
mod store;
mod world;

use std::{
    fmt,
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use serde_json::json;

use crate::fleet::Shared;

#[derive(Parser)]
#[command(
    name = "reprise-bench recovery",
    bin_name = "reprise-bench recovery",
    about = "SIGKILL to a sidecar mid-stream: how long until the recoverer orphans its job, and \
             until another pod's ResumeSink has the rest"
)]
struct Args {
    /// Runs per path, each on fresh processes and a fresh key prefix.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// `kube`: the pod event orphans the job; `lease`: no Kubernetes, the lease lapses;
    /// `all`: kube, then lease.
    #[arg(long, value_enum, default_value_t = Paths::All)]
    path: Paths,
    /// lease path: the sidecars' `lease_ttl`, e.g. 2s [default: the sidecar's, 10s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    lease_ttl: Option<Duration>,
    /// lease path: the recoverer's `reconcile_interval`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "1s")]
    lease_reconcile_interval: Duration,
    /// kube path: the recoverer's `reconcile_interval` (its default, so that what is measured
    /// is the pod event, not the periodic reconcile).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "5s")]
    kube_reconcile_interval: Duration,
    /// Keep the scratch directory with every process's log and print where it is.
    #[arg(long)]
    keep_logs: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Paths {
    Kube,
    Lease,
    All,
}

/// How the recoverer learns that pod-a's sidecar is dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Kube,
    Lease,
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Via::Kube => "kube",
            Via::Lease => "lease",
        })
    }
}

/// `reprise-bench recovery …`: exit 0 when every run delivered every admin, 1 when one did
/// not, 2 when the bench itself could not run.
pub fn main() -> ExitCode {
    // argv[1] is `recovery`; clap takes it for the program's name.
    let args = Args::parse_from(std::env::args_os().skip(1));
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("reprise-bench recovery: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> anyhow::Result<bool> {
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    let dir = tempfile::Builder::new()
        .prefix("reprise-bench")
        .disable_cleanup(args.keep_logs)
        .tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    let shared = Shared::new(dir.path(), &rt, world::USERS)?;
    let mut plans = Vec::new();
    if matches!(args.path, Paths::Kube | Paths::All) {
        plans.push(run::Plan {
            via: Via::Kube,
            lease_ttl: Some(run::KUBE_LEASE_TTL),
            reconcile_interval: args.kube_reconcile_interval,
            runs: args.runs,
        });
    }
    if matches!(args.path, Paths::Lease | Paths::All) {
        plans.push(run::Plan {
            via: Via::Lease,
            lease_ttl: args.lease_ttl,
            reconcile_interval: args.lease_reconcile_interval,
            runs: args.runs,
        });
    }
    println!(
        "reprise-bench recovery: {} CPU(s), {}; demo-server --users {} --delay-us {}; SIGKILL to \
         pod-a's sidecar once its app has {} admins; pod-b (resume: deliver) takes the job over",
        crate::cpus(),
        crate::cpu_model(),
        world::USERS,
        world::DELAY_US,
        world::KILL_AFTER,
    );
    // Timings on a shared 2-core machine mean little if something else was busy.
    let load_before = crate::load_average();
    println!("load average before: {load_before}");

    let mut summaries = Vec::with_capacity(plans.len());
    for plan in &plans {
        let mut runs = Vec::with_capacity(args.runs);
        for n in 1..=args.runs {
            let r =
                run::run(&shared, plan, &rt, n).with_context(|| format!("{} run {n}", plan.via))?;
            report::print_run(plan.via, &r, args.runs);
            runs.push(r);
        }
        let lease_ttl = match plan.lease_ttl {
            Some(d) => run::duration_text(d),
            None => format!(
                "{} (the sidecar's default)",
                run::duration_text(run::DEFAULT_LEASE_TTL)
            ),
        };
        summaries.push(report::Summary {
            via: plan.via,
            reconcile_interval: run::duration_text(plan.reconcile_interval),
            lease_ttl,
            runs,
        });
    }
    let load_after = crate::load_average();
    for summary in &summaries {
        summary.print();
    }
    println!("load average after: {load_after}");
    let correct = summaries.iter().all(report::Summary::correct);
    let line = json!({
        "bench": "reprise-bench",
        "scenario": "recovery",
        "settings": {
            "runs": args.runs,
            "users": world::USERS,
            "delay_us": world::DELAY_US,
            "kill_after": world::KILL_AFTER,
            "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            "machine": { "cpus": crate::cpus(), "model": crate::cpu_model() },
            "load_average": { "before": load_before, "after": load_after },
        },
        "paths": summaries.iter().map(report::Summary::json).collect::<Vec<_>>(),
        "correct": correct,
    });
    println!();
    println!("{line}");
    if args.keep_logs {
        println!("logs kept in {}", dir.path().display());
    }
    Ok(correct)
}
