//! `reprise-bench`: what the sidecar costs on the streaming path, next to a direct connection
//! and to nginx's `grpc_pass`, measured the same way; and, as the scenario `handoff`, how
//! long a SIGTERM takes to move a stream to another pod (`handoff/mod.rs`).
//!
//! Lifecycle of the throughput scenarios: flags → descriptors and Redis check → per
//! scenario: fresh demo server and proxies → one warm-up call set per path → rounds
//! alternating direct / sidecar / nginx → peak RSS and log check → table and one JSON line →
//! Redis keys removed. Exit 1 if any stream (or handoff run) was not exactly what the server
//! sent; 2 if the bench itself could not run.

mod brokers;
mod fleet;
mod handoff;
mod load;
mod procs;
mod recovery;
mod report;
mod rig;
mod soak;
mod timing;

use std::{
    collections::BTreeMap,
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use serde_json::json;

use crate::{
    load::Load,
    procs::{find_program, problem_lines},
    report::{Sample, Scenario},
    rig::{Rig, Route, Setup},
};

#[derive(Parser)]
#[command(
    about = "Throughput, CPU and memory of reprise-sidecar vs direct and nginx grpc_pass; \
             `handoff`: SIGTERM to a sidecar mid-stream until another pod's app has the rest"
)]
struct Args {
    /// The scenario, as an alternative to --scenario: `reprise-bench handoff --runs 20`.
    #[arg(value_enum, value_name = "SCENARIO")]
    which: Option<Which>,
    /// Measured rounds per scenario; each round runs every path once, in turn. A round of
    /// 1M messages takes well under a second, so many rounds are cheap and steady the medians.
    #[arg(long, default_value_t = 15)]
    rounds: usize,
    /// Messages per run of a scenario (split evenly over the streams).
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Concurrent streams of the `many` scenario.
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// Payload bytes per event [default: what makes an encoded Event about 100 bytes].
    #[arg(long)]
    payload_bytes: Option<u32>,
    /// `single`: 1 stream with every message; `many`: --streams streams sharing them; `all`:
    /// both; `handoff`: SIGTERM handoff timings (needs RabbitMQ, so `all` leaves it out).
    /// [default: all]
    #[arg(long, value_enum)]
    scenario: Option<Which>,
    /// Measure only direct and sidecar.
    #[arg(long)]
    no_nginx: bool,
    /// The sidecar's checkpoint_interval.
    #[arg(long, default_value = "100ms")]
    checkpoint_interval: String,
    /// A call set that has not finished after this many seconds counts as not exact.
    #[arg(long, default_value_t = 300)]
    round_timeout_secs: u64,
    /// handoff: runs, each on fresh processes.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// handoff: runs of the on_request path (SIGTERM → job `interrupted` in Redis); 0 skips it.
    #[arg(long, default_value_t = 5)]
    on_request_runs: usize,
    /// handoff: `drain_period` of both sidecars, e.g. `0s` [default: the sidecar's, 1s].
    #[arg(long, value_name = "DURATION")]
    drain_period: Option<String>,
    /// handoff: the HTTP/2 stream window A's app announces. The default is grpc-go's,
    /// grpc-js's and grpcio's, which their libraries give back every 16 to 32 KiB read;
    /// tonic's own is 2097152, of which h2 gives nothing back before about 700 KB.
    #[arg(long, value_name = "BYTES", default_value_t = 65_535)]
    app_window: u32,
    /// A top-level line added to the sidecar's config of `single` and `many`, e.g.
    /// `--sidecar-config 'worker_threads: 2'`; repeatable.
    #[arg(long, value_name = "YAML_LINE")]
    sidecar_config: Vec<String>,
    /// An environment variable for the sidecar of `single` and `many`, e.g.
    /// `--sidecar-env MALLOC_ARENA_MAX=1`; repeatable.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_env)]
    sidecar_env: Vec<(String, String)>,
    /// Keep the scratch directory with every process's log and print where it is.
    #[arg(long)]
    keep_logs: bool,
}

impl Args {
    fn which(&self) -> anyhow::Result<Which> {
        match (self.which, self.scenario) {
            (Some(a), Some(b)) if a != b => {
                anyhow::bail!("two different scenarios named: as an argument and with --scenario")
            }
            (a, b) => Ok(a.or(b).unwrap_or(Which::All)),
        }
    }
}

fn parse_env(v: &str) -> Result<(String, String), String> {
    match v.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{v}` is not KEY=VALUE")),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Single,
    Many,
    All,
    Handoff,
}

/// Topics are `{scenario}{round:02}-{stream:04}`: the same length in every run, so every
/// path streams the same bytes, and unique, so every sidecar call is a fresh job.
const TOPIC_LEN: usize = 8;
const EVENT_BYTES: usize = 100;
/// Warm-up runs stream this fraction of a round's messages.
const WARMUP_DIVISOR: u64 = 20;

fn main() -> ExitCode {
    match std::env::args_os()
        .nth(1)
        .as_deref()
        .and_then(|a| a.to_str())
    {
        Some("recovery") => return recovery::main(),
        Some("soak") => return soak::main(),
        Some("soak-app") => return soak::app::main(),
        Some("soak-check") => return soak::recheck_main(),
        _ => {}
    }
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("reprise-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Returns whether every stream was exact.
fn run(args: &Args) -> anyhow::Result<bool> {
    let which = args.which()?;
    if which == Which::Handoff {
        return handoff::run(&handoff::Options {
            runs: args.runs,
            on_request_runs: args.on_request_runs,
            drain_period: args.drain_period.clone(),
            app_window: args.app_window,
            keep_logs: args.keep_logs,
        });
    }
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    anyhow::ensure!(args.streams > 0, "--streams must be at least 1");
    anyhow::ensure!(
        args.messages >= args.streams as u64,
        "--messages must be at least --streams (every stream gets messages / streams)"
    );
    let mut routes = vec![Route::Direct, Route::Sidecar];
    let nginx = if args.no_nginx {
        None
    } else {
        let bin = find_program(&["nginx"])
            .context("nginx not found (scripts/bench installs it; or pass --no-nginx)")?;
        routes.push(Route::Nginx);
        Some(bin)
    };
    let dir = tempfile::Builder::new()
        .prefix("reprise-bench")
        .disable_cleanup(args.keep_logs)
        .tempdir()?;
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let redis = match rig::redis_reachable(&redis_url) {
        Ok(()) => Some(redis_url),
        Err(e) => {
            println!("redis: unreachable at {redis_url} ({e}); the sidecar runs WITHOUT Redis");
            None
        }
    };
    let setup = Setup {
        dir: dir.path().to_owned(),
        descriptors: Setup::write_descriptors(dir.path())?,
        redis_url: redis.clone(),
        key_prefix: format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        checkpoint_interval: args.checkpoint_interval.clone(),
        nginx,
        sidecar_config: args.sidecar_config.clone(),
        sidecar_env: args.sidecar_env.clone(),
    };
    let payload_bytes = args.payload_bytes.unwrap_or_else(|| {
        load::payload_for_event_bytes(EVENT_BYTES, TOPIC_LEN, args.messages / 2)
    });
    print_header(args, &setup, &routes);

    let runtime = tokio::runtime::Runtime::new()?;
    let mut shapes = Vec::new();
    if matches!(which, Which::Single | Which::All) {
        shapes.push(("single", 1));
    }
    if matches!(which, Which::Many | Which::All) {
        shapes.push(("many", args.streams));
    }
    let mut scenarios = Vec::new();
    let mut outcome = Ok(());
    for (name, streams) in shapes {
        let load = Load {
            streams,
            per_stream: args.messages / streams as u64,
            payload_bytes,
            tag: String::new(),
            timeout: Duration::from_secs(args.round_timeout_secs),
        };
        match measure(&runtime, &setup, &routes, name, &load, args.rounds) {
            Ok(s) => {
                s.print(args.rounds);
                scenarios.push(s);
            }
            Err(e) => {
                outcome = Err(e.context(format!("scenario {name}")));
                break;
            }
        }
    }
    if let Some(url) = &redis {
        match rig::redis_cleanup(url, &setup.key_prefix) {
            Ok(n) => println!("\nredis: removed {n} key(s) under {}:", setup.key_prefix),
            Err(e) => println!("\nredis: could not remove {}:* ({e})", setup.key_prefix),
        }
    }
    if args.keep_logs {
        println!("logs kept in {}", dir.path().display());
    }
    outcome?;
    let exact = scenarios.iter().all(|s| s.failures.is_empty());
    print_json(args, &setup, payload_bytes, &scenarios, exact);
    Ok(exact)
}

/// Runs one scenario on fresh processes: a warm-up per path, then `rounds` rounds in which
/// the paths take turns, so drifting machine noise hits all of them alike.
fn measure(
    runtime: &tokio::runtime::Runtime,
    setup: &Setup,
    routes: &[Route],
    name: &'static str,
    load: &Load,
    rounds: usize,
) -> anyhow::Result<Scenario> {
    let mut rig = Rig::start(setup, name, routes)?;
    let initial = name.chars().next().unwrap_or('x');
    let mut scenario = Scenario {
        name,
        streams: load.streams,
        messages_per_stream: load.per_stream,
        payload_bytes: load.payload_bytes,
        event_bytes: load::event_len(TOPIC_LEN, load.per_stream / 2, load.payload_bytes),
        samples: Vec::new(),
        idle_rss_kib: BTreeMap::new(),
        peak_rss_kib: BTreeMap::new(),
        failures: Vec::new(),
        log_problems: BTreeMap::new(),
    };
    for &route in routes {
        if let Some(p) = rig.proxy(route) {
            scenario.idle_rss_kib.insert(route, p.rss_kib()?);
        }
    }
    let warmup = Load {
        per_stream: (load.per_stream / WARMUP_DIVISOR).max(1),
        tag: format!("{initial}00"),
        ..load.clone()
    };
    for &route in routes {
        let out = runtime.block_on(load::run(&rig.target(route), &warmup))?;
        let tagged = out
            .failures
            .into_iter()
            .map(|f| format!("{route} warm-up: {f}"));
        scenario.failures.extend(tagged);
    }
    for round in 1..=rounds {
        let load = Load {
            tag: format!("{initial}{round:02}"),
            ..load.clone()
        };
        for &route in routes {
            rig.check_alive()?;
            let sample = measure_round(runtime, &rig, route, round, &load, &mut scenario)?;
            eprintln!(
                "  {name} round {round}/{rounds} {route:<7} {:>10.0} msg/s{}",
                sample.msgs_per_sec,
                sample
                    .proxy_rss_kib
                    .map(|k| format!(", RSS {:.1} MiB", k as f64 / 1024.0))
                    .unwrap_or_default()
            );
            scenario.samples.push(sample);
        }
    }
    rig.check_alive()?;
    for &route in routes {
        if let Some(p) = rig.proxy(route) {
            scenario.peak_rss_kib.insert(route, p.peak_rss_kib()?);
        }
    }
    for p in [Some(&rig.server), rig.sidecar.as_ref(), rig.nginx.as_ref()]
        .into_iter()
        .flatten()
    {
        let lines = problem_lines(&p.log_text());
        if !lines.is_empty() {
            scenario.log_problems.insert(p.name.to_owned(), lines);
        }
    }
    Ok(scenario)
}

fn measure_round(
    runtime: &tokio::runtime::Runtime,
    rig: &Rig,
    route: Route,
    round: usize,
    load: &Load,
    scenario: &mut Scenario,
) -> anyhow::Result<Sample> {
    let proxy = rig.proxy(route);
    let writes = || -> anyhow::Result<Option<f64>> {
        match route {
            Route::Sidecar => rig.checkpoint_writes().map(Some),
            _ => Ok(None),
        }
    };
    // The client (this process) and the server share the machine with the proxy: their CPU
    // per message says whether a path's gap is the proxy's own cost or what it makes its
    // peers spend.
    let me = std::process::id();
    let peers_before = (procs::cpu_time(me)?, rig.server.cpu()?);
    let cpu_before = proxy.map(|p| p.cpu()).transpose()?;
    let writes_before = writes()?;
    let out = runtime.block_on(load::run(&rig.target(route), load))?;
    let cpu_after = proxy.map(|p| p.cpu()).transpose()?;
    let peers_after = (procs::cpu_time(me)?, rig.server.cpu()?);
    let writes_after = writes()?;
    let rss_after = proxy.map(|p| p.rss_kib()).transpose()?;

    let exact = out.failures.is_empty();
    let tagged = out
        .failures
        .into_iter()
        .map(|f| format!("{route} round {round}: {f}"));
    scenario.failures.extend(tagged);
    let seconds = out.elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    let cpu = cpu_before
        .zip(cpu_after)
        .map(|(b, a)| (a - b).as_secs_f64());
    Ok(Sample {
        round,
        route,
        messages: out.messages,
        seconds,
        msgs_per_sec: out.messages as f64 / seconds,
        proxy_cpu_seconds: cpu,
        proxy_cpu_us_per_msg: cpu.map(|c| c * 1e6 / out.messages.max(1) as f64),
        proxy_rss_kib: rss_after,
        client_cpu_seconds: (peers_after.0 - peers_before.0).as_secs_f64(),
        server_cpu_seconds: (peers_after.1 - peers_before.1).as_secs_f64(),
        checkpoint_writes: writes_before.zip(writes_after).map(|(b, a)| a - b),
        exact,
    })
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg has them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn print_header(args: &Args, setup: &Setup, routes: &[Route]) {
    let paths: Vec<String> = routes.iter().map(ToString::to_string).collect();
    println!(
        "reprise-bench: {} CPU(s), {}; paths {} alternating, {} rounds + 1 warm-up per scenario",
        cpus(),
        cpu_model(),
        paths.join(" / "),
        args.rounds
    );
    println!(
        "sidecar: checkpoint_interval {}, redis {}; CPU = utime+stime of the proxy process over \
         each round; RSS = VmRSS after start / VmHWM at scenario end (proxies restarted per scenario)",
        setup.checkpoint_interval,
        if setup.redis_url.is_some() {
            "on"
        } else {
            "OFF"
        },
    );
    for line in &setup.sidecar_config {
        println!("sidecar config: {line}");
    }
    for (k, v) in &setup.sidecar_env {
        println!("sidecar env: {k}={v}");
    }
}

fn print_json(args: &Args, setup: &Setup, payload_bytes: u32, scenarios: &[Scenario], exact: bool) {
    let scenarios: Vec<serde_json::Value> = scenarios
        .iter()
        .map(|s| {
            let paths: Vec<_> = s.routes().into_iter().map(|r| s.summary(r)).collect();
            let targets = if s.routes().contains(&Route::Sidecar) {
                s.targets()
            } else {
                Vec::new()
            };
            let log_problems: BTreeMap<&String, usize> =
                s.log_problems.iter().map(|(k, v)| (k, v.len())).collect();
            json!({
                "name": s.name,
                "streams": s.streams,
                "messages_per_stream": s.messages_per_stream,
                "payload_bytes": s.payload_bytes,
                "event_bytes": s.event_bytes,
                "paths": paths,
                "targets": targets,
                "rounds": s.samples,
                "not_exact": s.failures,
                "log_problem_lines": log_problems,
            })
        })
        .collect();
    let line = json!({
        "bench": "reprise-bench",
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "machine": { "cpus": cpus(), "model": cpu_model() },
        "settings": {
            "rounds": args.rounds,
            "messages": args.messages,
            "streams": args.streams,
            "payload_bytes": payload_bytes,
            "checkpoint_interval": setup.checkpoint_interval,
            "redis": setup.redis_url.is_some(),
            "nginx": setup.nginx.is_some(),
            "sidecar_config": setup.sidecar_config,
            "sidecar_env": setup.sidecar_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        },
        "scenarios": scenarios,
        "exact": exact,
    });
    println!();
    println!("{line}");
}
