//! `reprise-bench soak`: a fleet on one machine under many real faults at once, and an
//! independent checker of what the apps received (`check.rs`).
//!
//! The fleet: `--replicas` upstream demo servers, each in a network namespace of its own
//! (`net.rs`); `--pods` pods, each a sidecar and an app (`app.rs`) that records every message;
//! even pods run the service `soak-req` (`resume: on_request`), odd ones `soak-del`
//! (`resume: deliver`, the app serving a ResumeSink); the recoverer watching a fake Kubernetes
//! API server (kube-fake, in-process) and the leases; a Redis and a RabbitMQ of the run's own
//! (`services.rs`). Faults are drawn from `--seed`: which kind, which target, when, how long.
//!
//! Lifecycle: services → namespaces and upstreams → fake API server and recoverer → sidecars
//! and apps → warm-up → faults → settle (faults reverted, apps stop starting jobs, every
//! started job runs to its end) → the checker, Redis's final state, memory → report, last line
//! `soak: faults=… messages=… lost=… out_of_order=… duplicates=… max_dup_window_ms=… seed=…`.
//! Exit 0 only if nothing was found; 1 if the checker found something; 2 if the soak itself
//! could not run.

pub mod app;
pub mod check;
mod net;
mod services;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Parser;
use rand::{Rng as _, SeedableRng as _, rngs::StdRng, seq::IndexedRandom as _};
use reprise_kube_fake::{FakeApiServer, pods as kube_pods};
use rustix::process::Signal;

use crate::procs::{Proc, free_port, quote, sibling_bin};

use self::{
    app::{Job, unix_ms},
    check::Fault,
    net::Link,
    services::{Rabbit, Redis},
};

#[derive(Parser, Debug)]
#[command(about = "A fleet under random real faults, and an independent checker")]
struct Args {
    /// Faults to inject in all.
    #[arg(long, default_value_t = 50)]
    faults: usize,
    /// The seed of every random choice [default: from the clock]; printed, so a run can be
    /// replayed.
    #[arg(long)]
    seed: Option<u64>,
    /// Minutes of faults (the warm-up and the settling come on top).
    #[arg(long, default_value_t = 2.0)]
    minutes: f64,
    #[arg(long, default_value_t = 4)]
    pods: usize,
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// Jobs each app keeps running.
    #[arg(long, default_value_t = 13)]
    jobs_per_pod: usize,
    #[arg(long, default_value = "100ms")]
    checkpoint_interval: String,
    #[arg(long, default_value = "3s")]
    lease_ttl: String,
    /// How long the jobs may take to end once the faults stop, in seconds, at most.
    #[arg(long, default_value_t = 900)]
    settle_secs: u64,
    /// Settling ends early once the apps' record files have not grown for this many seconds:
    /// nothing is moving any more, and what is missing then is lost, not slow.
    #[arg(long, default_value_t = 90)]
    quiet_secs: u64,
    /// Whether a run of duplicates over its bound (one app window and checkpoint interval for
    /// its message size) fails the run (`enforce`) or is only reported (`report`).
    #[arg(long, value_enum, default_value_t = DupBound::Enforce)]
    dup_bound: DupBound,
    /// Keep the run's directory (every log, record file and the journal) and print it.
    #[arg(long)]
    keep_logs: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DupBound {
    Enforce,
    Report,
}

pub fn main() -> ExitCode {
    let args = Args::parse_from(std::env::args_os().skip(1));
    let seed = args.seed.unwrap_or_else(|| unix_ms() % 1_000_000_007);
    match run(&args, seed) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("reprise-bench soak: {e:#}");
            eprintln!("soak: could not run; seed={seed}");
            ExitCode::from(2)
        }
    }
}

/// `reprise-bench soak-check DIR`: the checker again, on the files of a run kept with
/// `--keep-logs` (or of a failed run): plans, record files, the apps' state logs and the fault
/// journal. It reads nothing else, so it gives what the run's own checker gave, except that
/// jobs still streaming when the run judged them may have ended since. Exit 0 if clean.
pub fn recheck_main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(2).map(PathBuf::from) else {
        eprintln!("usage: reprise-bench soak-check DIR (a soak's kept directory)");
        return ExitCode::from(2);
    };
    match recheck(&dir) {
        Ok(v) => {
            println!(
                "soak-check: jobs={} complete={} messages={} lost={} out_of_order={} corrupt={} duplicates={} unexplained={} over_bound={} max_dup_window_ms={}",
                v.jobs,
                v.jobs_complete,
                v.messages,
                v.lost,
                v.out_of_order,
                v.corrupt,
                v.duplicates,
                v.unexplained_duplicates,
                v.over_bound_duplicates,
                v.max_dup_window_ms
            );
            for p in v.problems.iter().chain(&v.over_bound).take(40) {
                println!("  {p}");
            }
            if v.clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("reprise-bench soak-check: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn recheck(dir: &Path) -> anyhow::Result<check::Verdict> {
    let mut plans = BTreeMap::new();
    let mut dirs = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let plan = path.join("plan");
        if !plan.is_file() {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        plans.insert(name.clone(), app::read_plan(&plan)?);
        dirs.insert(name, path.join("app"));
    }
    anyhow::ensure!(!plans.is_empty(), "{} holds no pod's plan", dir.display());
    let journal = std::fs::read_to_string(dir.join("faults.jsonl"))
        .with_context(|| format!("reading {}/faults.jsonl", dir.display()))?;
    let faults = journal
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<Vec<Fault>, _>>()
        .context("faults.jsonl")?;
    // The soak's default `checkpoint_interval`; a run made with another is judged by this one.
    Ok(check::check(
        &plans,
        &dirs,
        &started_topics(&dirs),
        &faults,
        DEFAULT_CHECKPOINT_MS,
    ))
}

/// Kinds of fault, with their weights in the draw.
const KINDS: &[(&str, u32)] = &[
    ("upstream_sigkill", 10),
    ("upstream_sigterm", 5),
    ("upstream_sigstop", 5),
    ("upstream_unavailable", 7),
    ("upstream_reset", 6),
    ("link_cut", 6),
    ("link_loss", 5),
    ("link_throttle", 5),
    ("link_rst", 5),
    ("sidecar_sigterm", 8),
    ("sidecar_sigkill", 8),
    ("app_sigkill", 8),
    ("redis_sigkill", 3),
    ("rabbitmq_restart", 2),
    ("recoverer_sigkill", 3),
];

const NAMESPACE: &str = "soak";
const UPSTREAM_PORT: u16 = 50051;
/// The demo server's pace: at most 500 messages a second per stream.
const UPSTREAM_DELAY_US: u32 = 2000;
const WARMUP: Duration = Duration::from_secs(10);
/// `--checkpoint-interval`'s default, in milliseconds.
const DEFAULT_CHECKPOINT_MS: u64 = 100;

/// A TCP connect that succeeds within `within`.
pub fn wait_tcp(addr: &str, within: Duration) -> anyhow::Result<()> {
    let addr: SocketAddr = addr
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("resolving {addr}"))?;
    let deadline = Instant::now() + within;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{addr} did not accept a connection within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Upstream {
    link: Link,
    proc: Option<Proc>,
    /// Signalled to go and not yet exited, and when to SIGKILL it.
    stopping: Option<(Proc, Instant)>,
    dir: PathBuf,
    starts: u32,
}

impl Upstream {
    fn addr(&self) -> String {
        format!("{}:{UPSTREAM_PORT}", self.link.addr)
    }

    fn up(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args(self.link.wrap())
            .arg(sibling_bin("demo-server")?)
            .args(["--listen", &self.addr()])
            .args(["--delay-us", &UPSTREAM_DELAY_US.to_string()])
            .args(["--grace", "2s", "--faults-on-signal"])
            .env("NO_COLOR", "1");
        self.starts += 1;
        let log = self
            .dir
            .join(format!("{}-{}.log", self.link.netns, self.starts));
        let mut proc = Proc::spawn("demo-server", &mut cmd, log)?;
        // Its own word, not a connection: the link to it may be cut right now.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !proc.log_text().contains("listening on ") {
            proc.check_alive()?;
            if Instant::now() > deadline {
                bail!("upstream {} did not listen within 30 s", self.addr());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.proc = Some(proc);
        Ok(())
    }

    /// Signals the upstream to go; [`Upstream::gone`] tells when it has.
    fn begin_down(&mut self, signal: Signal, name: &str) -> anyhow::Result<()> {
        if let Some(p) = self.proc.take() {
            p.signal(signal, name)?;
            self.stopping = Some((p, Instant::now() + STOP_WAIT));
        }
        Ok(())
    }

    /// Whether the upstream signalled by [`Upstream::begin_down`] has exited (SIGKILLed once
    /// its time is up).
    fn gone(&mut self) -> anyhow::Result<bool> {
        let Some((p, kill_at)) = &mut self.stopping else {
            return Ok(true);
        };
        if p.exited()?.is_some() {
            self.stopping = None;
            return Ok(true);
        }
        if Instant::now() > *kill_at {
            p.sigkill()?;
        }
        Ok(false)
    }
}

/// How long a SIGTERMed process may take to exit before it is SIGKILLed.
const STOP_WAIT: Duration = Duration::from_secs(30);

/// Waits for a process to exit, SIGKILLing it after `within`.
fn wait_exit(p: &mut Proc, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while p.exited()?.is_none() {
        if Instant::now() > deadline {
            p.sigkill()?;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

struct Pod {
    name: String,
    deliver: bool,
    replica: usize,
    port: u16,
    metrics_port: u16,
    sink_port: u16,
    dir: PathBuf,
    config: PathBuf,
    sidecar: Option<Proc>,
    /// A sidecar SIGTERMed and not yet exited, and when to SIGKILL it.
    stopping: Option<(Proc, Instant)>,
    app: Option<Proc>,
    sidecar_starts: u32,
    app_starts: u32,
}

impl Pod {
    fn app_dir(&self) -> PathBuf {
        self.dir.join("app")
    }

    fn start_sidecar(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(crate::procs::shipped_bin("reprise-sidecar")?);
        cmd.arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        self.sidecar_starts += 1;
        let log = self
            .dir
            .join(format!("sidecar-{}.log", self.sidecar_starts));
        let mut p = Proc::spawn("reprise-sidecar", &mut cmd, log)?;
        p.wait_port(self.port, Duration::from_secs(30))?;
        p.wait_port(self.metrics_port, Duration::from_secs(30))?;
        self.sidecar = Some(p);
        Ok(())
    }

    fn start_app(&mut self, jobs: usize) -> anyhow::Result<()> {
        let mut cmd = Command::new(sibling_bin("reprise-bench")?);
        cmd.arg("soak-app")
            .args(["--pod", &self.name])
            .args(["--target", &format!("http://127.0.0.1:{}", self.port)])
            .arg("--dir")
            .arg(self.app_dir())
            .arg("--plan")
            .arg(self.dir.join("plan"))
            .args(["--concurrency", &jobs.to_string()])
            .args([
                "--mode",
                if self.deliver {
                    "deliver"
                } else {
                    "on-request"
                },
            ]);
        if self.deliver {
            cmd.args(["--sink-listen", &format!("127.0.0.1:{}", self.sink_port)]);
        }
        self.app_starts += 1;
        let log = self.dir.join(format!("app-{}.log", self.app_starts));
        let mut p = Proc::spawn("soak-app", &mut cmd, log)?;
        if self.deliver {
            p.wait_port(self.sink_port, Duration::from_secs(30))?;
        }
        self.app = Some(p);
        Ok(())
    }
}

/// What is waiting to be undone, and when.
///
/// A signal whose process takes a while to go (a SIGTERMed sidecar's shutdown, an upstream's
/// grace, RabbitMQ's stop and start) is waited for here as well, never in the fault loop:
/// a loop that waited for a sidecar's 15 s shutdown left Redis down 15 s where the schedule
/// said 1.3 s (the run of 2026-12-07), and every other fault's end waited with it.
enum Revert {
    Cont(usize),
    Link(usize),
    Throttle(usize),
    Rules(usize),
    Sidecar(usize),
    /// Restart the SIGTERMed sidecar once it has exited.
    SidecarStopped(usize),
    /// Start the upstream again once it has exited.
    UpstreamStopped(usize),
    /// Start RabbitMQ again once it has stopped, then wait for it to listen.
    RabbitStopped,
    RabbitStarting(Instant),
    App(usize),
    Redis,
    Recoverer,
}

struct Fleet {
    dir: PathBuf,
    prefix: String,
    redis: Redis,
    rabbit: Rabbit,
    upstreams: Vec<Upstream>,
    pods: Vec<Pod>,
    api: FakeApiServer,
    kubeconfig: PathBuf,
    recoverer: Option<Proc>,
    recoverer_starts: u32,
    jobs_per_pod: usize,
    /// The sidecars' `lease_ttl`, which is the recoverer's `lease_grace` too.
    lease_ttl: String,
    journal: std::fs::File,
    faults: Vec<Fault>,
}

impl Fleet {
    fn start_recoverer(&mut self) -> anyhow::Result<()> {
        let config = self.dir.join("recoverer.yaml");
        let metrics = free_port()?;
        std::fs::write(
            &config,
            format!(
                "redis_url: {}\namqp_url: {}\nkey_prefix: {}\nmetrics_listen: 127.0.0.1:{metrics}\n\
                 reconcile_interval: 500ms\nlease_grace: {grace}\nkube: true\nnamespaces: [{NAMESPACE}]\n",
                quote(&self.redis.url()),
                quote(&self.rabbit.url()),
                quote(&self.prefix),
                grace = quote(&self.lease_ttl),
            ),
        )?;
        let mut cmd = Command::new(crate::procs::shipped_bin("reprise-recoverer")?);
        cmd.arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env("KUBECONFIG", &self.kubeconfig);
        self.recoverer_starts += 1;
        let log = self
            .dir
            .join(format!("recoverer-{}.log", self.recoverer_starts));
        let mut p = Proc::spawn("reprise-recoverer", &mut cmd, log)?;
        p.wait_port(metrics, Duration::from_secs(30))?;
        self.recoverer = Some(p);
        Ok(())
    }

    fn record(&mut self, kind: &str, target: String, pods: Vec<String>, lasted_ms: u64) {
        let f = Fault {
            ms: unix_ms(),
            kind: kind.to_owned(),
            target,
            pods,
            lasted_ms,
        };
        let _ = writeln!(
            self.journal,
            "{}",
            serde_json::to_string(&f).unwrap_or_default()
        );
        println!("  {:>6} {:<22} {}", self.faults.len() + 1, f.kind, f.target);
        self.faults.push(f);
    }

    fn pods_on(&self, replica: usize) -> Vec<String> {
        self.pods
            .iter()
            .filter(|p| p.replica == replica)
            .map(|p| p.name.clone())
            .collect()
    }

    /// Tells the fake API server what the kubelet would: the pod's sidecar container
    /// terminated (`reason`), or running again.
    fn kube_sidecar(&self, pod: &str, terminated: Option<&str>) {
        let now = utc_now();
        self.api.update(NAMESPACE, pod, |p| {
            let how = kube_pods::terminated(137, terminated.unwrap_or("Error"), Some(9), &now);
            *p = if terminated.is_some() {
                kube_pods::sidecar_terminated(p.clone(), how)
            } else {
                kube_pods::sidecar_restarted(p.clone(), how)
            };
        });
    }

    /// Injects one fault of `kind`; returns what must be undone later, if anything.
    fn inject(
        &mut self,
        kind: &str,
        rng: &mut StdRng,
        busy: &BTreeSet<String>,
        nft: bool,
    ) -> anyhow::Result<Option<(Duration, Revert, String)>> {
        let replicas = self.upstreams.len();
        let pods = self.pods.len();
        let free_replica = |rng: &mut StdRng| -> Option<usize> {
            let free: Vec<usize> = (0..replicas)
                .filter(|k| !busy.contains(&format!("upstream-{k}")))
                .collect();
            free.choose(rng).copied()
        };
        let free_pod = |rng: &mut StdRng, what: &str| -> Option<usize> {
            let free: Vec<usize> = (0..pods)
                .filter(|i| !busy.contains(&format!("{what}-{i}")))
                .collect();
            free.choose(rng).copied()
        };
        let ms =
            |rng: &mut StdRng, lo: u64, hi: u64| Duration::from_millis(rng.random_range(lo..=hi));
        Ok(match kind {
            "upstream_sigkill" | "upstream_sigterm" => {
                let Some(k) = free_replica(rng) else {
                    return Ok(None);
                };
                let (sig, name) = if kind == "upstream_sigkill" {
                    (Signal::KILL, "SIGKILL")
                } else {
                    (Signal::TERM, "SIGTERM")
                };
                self.record(kind, format!("upstream-{k}"), self.pods_on(k), 0);
                self.upstreams[k].begin_down(sig, name)?;
                Some((
                    Duration::ZERO,
                    Revert::UpstreamStopped(k),
                    format!("upstream-{k}"),
                ))
            }
            "upstream_sigstop" => {
                let Some(k) = free_replica(rng) else {
                    return Ok(None);
                };
                let d = ms(rng, 500, 4000);
                self.record(
                    kind,
                    format!("upstream-{k}"),
                    self.pods_on(k),
                    d.as_millis() as u64,
                );
                if let Some(p) = &self.upstreams[k].proc {
                    p.signal(Signal::STOP, "SIGSTOP")?;
                }
                Some((d, Revert::Cont(k), format!("upstream-{k}")))
            }
            "upstream_unavailable" | "upstream_reset" => {
                let Some(k) = free_replica(rng) else {
                    return Ok(None);
                };
                self.record(kind, format!("upstream-{k}"), self.pods_on(k), 0);
                if let Some(p) = &self.upstreams[k].proc {
                    if kind == "upstream_unavailable" {
                        p.signal(Signal::USR1, "SIGUSR1")?;
                    } else {
                        p.signal(Signal::USR2, "SIGUSR2")?;
                    }
                }
                None
            }
            "link_cut" | "link_loss" | "link_throttle" | "link_rst" => {
                if (kind == "link_rst" || kind == "link_loss") && !nft {
                    return Ok(None);
                }
                let free: Vec<usize> = (0..replicas)
                    .filter(|k| !busy.contains(&format!("link-{k}")))
                    .collect();
                let Some(&k) = free.choose(rng) else {
                    return Ok(None);
                };
                let d = match kind {
                    "link_rst" => ms(rng, 200, 2000),
                    _ => ms(rng, 500, 5000),
                };
                let link = self.upstreams[k].link.clone();
                let revert = match kind {
                    "link_cut" => {
                        link.cut()?;
                        Revert::Link(k)
                    }
                    "link_loss" => {
                        link.lose(rng.random_range(10..=50))?;
                        Revert::Rules(k)
                    }
                    "link_throttle" => {
                        let rate = format!("{}kbit", rng.random_range(200..=2000));
                        link.throttle(&rate, "300ms")?;
                        Revert::Throttle(k)
                    }
                    _ => {
                        link.reset_port(UPSTREAM_PORT)?;
                        Revert::Rules(k)
                    }
                };
                self.record(
                    kind,
                    format!("link-{k}"),
                    self.pods_on(k),
                    d.as_millis() as u64,
                );
                Some((d, revert, format!("link-{k}")))
            }
            "sidecar_sigterm" => {
                let Some(i) = free_pod(rng, "sidecar") else {
                    return Ok(None);
                };
                let name = self.pods[i].name.clone();
                self.record(kind, format!("sidecar {name}"), vec![name.clone()], 0);
                if let Some(p) = self.pods[i].sidecar.take() {
                    p.terminate()?;
                    self.pods[i].stopping = Some((p, Instant::now() + STOP_WAIT));
                }
                Some((
                    Duration::ZERO,
                    Revert::SidecarStopped(i),
                    format!("sidecar-{i}"),
                ))
            }
            "sidecar_sigkill" => {
                let Some(i) = free_pod(rng, "sidecar") else {
                    return Ok(None);
                };
                let name = self.pods[i].name.clone();
                let d = ms(rng, 300, 4000);
                // Half the kills are reported by the kubelet (the recoverer acts at once), the
                // rest only by the lapsed lease.
                let reported = rng.random_bool(0.5);
                self.record(
                    kind,
                    format!(
                        "sidecar {name}{}",
                        if reported {
                            " (OOMKilled reported)"
                        } else {
                            ""
                        }
                    ),
                    vec![name.clone()],
                    d.as_millis() as u64,
                );
                if let Some(mut p) = self.pods[i].sidecar.take() {
                    p.sigkill()?;
                    wait_exit(&mut p, Duration::from_secs(5))?;
                }
                if reported {
                    self.kube_sidecar(&name, Some("OOMKilled"));
                }
                Some((d, Revert::Sidecar(i), format!("sidecar-{i}")))
            }
            "app_sigkill" => {
                let Some(i) = free_pod(rng, "app") else {
                    return Ok(None);
                };
                let name = self.pods[i].name.clone();
                let d = ms(rng, 100, 2000);
                self.record(
                    kind,
                    format!("app {name}"),
                    vec![name.clone()],
                    d.as_millis() as u64,
                );
                if let Some(mut p) = self.pods[i].app.take() {
                    p.sigkill()?;
                    wait_exit(&mut p, Duration::from_secs(5))?;
                }
                Some((d, Revert::App(i), format!("app-{i}")))
            }
            "redis_sigkill" => {
                if busy.contains("redis") {
                    return Ok(None);
                }
                let d = ms(rng, 100, 2000);
                let all = self.pods.iter().map(|p| p.name.clone()).collect();
                self.record(kind, "redis".into(), all, d.as_millis() as u64);
                if let Some(mut p) = self.redis.proc.take() {
                    p.sigkill()?;
                    wait_exit(&mut p, Duration::from_secs(5))?;
                }
                Some((d, Revert::Redis, "redis".into()))
            }
            "rabbitmq_restart" => {
                if busy.contains("rabbitmq") {
                    return Ok(None);
                }
                let all = self.pods.iter().map(|p| p.name.clone()).collect();
                self.record(kind, "rabbitmq".into(), all, 0);
                self.rabbit.begin_stop()?;
                Some((Duration::ZERO, Revert::RabbitStopped, "rabbitmq".into()))
            }
            "recoverer_sigkill" => {
                if busy.contains("recoverer") {
                    return Ok(None);
                }
                let d = ms(rng, 200, 3000);
                self.record(kind, "recoverer".into(), Vec::new(), d.as_millis() as u64);
                if let Some(mut p) = self.recoverer.take() {
                    p.sigkill()?;
                    wait_exit(&mut p, Duration::from_secs(5))?;
                }
                Some((d, Revert::Recoverer, "recoverer".into()))
            }
            other => bail!("unknown fault kind {other}"),
        })
    }

    /// Undoes `revert`, or returns what is left of it when its process has not gone yet.
    fn undo(&mut self, revert: Revert) -> anyhow::Result<Option<Revert>> {
        match revert {
            Revert::SidecarStopped(i) => {
                if let Some((p, kill_at)) = &mut self.pods[i].stopping {
                    if p.exited()?.is_none() {
                        if Instant::now() > *kill_at {
                            p.sigkill()?;
                        }
                        return Ok(Some(revert));
                    }
                    self.pods[i].stopping = None;
                }
                self.pods[i].start_sidecar()?;
            }
            Revert::UpstreamStopped(k) => {
                if !self.upstreams[k].gone()? {
                    return Ok(Some(revert));
                }
                self.upstreams[k].up()?;
            }
            Revert::RabbitStopped => {
                if !self.rabbit.stopped()? {
                    return Ok(Some(revert));
                }
                self.rabbit.spawn()?;
                return Ok(Some(Revert::RabbitStarting(
                    Instant::now() + services::RABBIT_START_WAIT,
                )));
            }
            Revert::RabbitStarting(deadline) => {
                if !self.rabbit.listening(deadline)? {
                    return Ok(Some(revert));
                }
            }
            Revert::Cont(k) => {
                if let Some(p) = &self.upstreams[k].proc {
                    p.signal(Signal::CONT, "SIGCONT")?;
                }
            }
            Revert::Link(k) => self.upstreams[k].link.restore()?,
            Revert::Throttle(k) => self.upstreams[k].link.clear_throttle()?,
            Revert::Rules(k) => self.upstreams[k].link.clear_rules()?,
            Revert::Sidecar(i) => {
                let name = self.pods[i].name.clone();
                self.pods[i].start_sidecar()?;
                self.kube_sidecar(&name, None);
            }
            Revert::App(i) => {
                let jobs = self.jobs_per_pod;
                self.pods[i].start_app(jobs)?;
            }
            Revert::Redis => self.redis.up()?,
            Revert::Recoverer => self.start_recoverer()?,
        }
        Ok(None)
    }

    /// Every process that should be running is; one that died on its own is a finding.
    fn check_alive(&mut self) -> Vec<String> {
        let mut dead = Vec::new();
        let mut look = |p: &mut Option<Proc>, what: String| {
            if let Some(proc) = p
                && let Ok(Some(status)) = proc.exited()
            {
                dead.push(format!(
                    "{what} exited on its own ({status}); log {}",
                    proc.log.display()
                ));
                *p = None;
            }
        };
        for (k, u) in self.upstreams.iter_mut().enumerate() {
            look(&mut u.proc, format!("upstream-{k}"));
        }
        for pod in &mut self.pods {
            look(&mut pod.sidecar, format!("sidecar {}", pod.name));
            look(&mut pod.app, format!("app {}", pod.name));
        }
        look(&mut self.recoverer, "recoverer".into());
        look(&mut self.redis.proc, "redis".into());
        look(&mut self.rabbit.proc, "rabbitmq".into());
        dead
    }
}

fn utc_now() -> String {
    // RFC 3339 in UTC, as the kubelet writes finishedAt.
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    out.filter(|s| !s.is_empty())
        .unwrap_or_else(|| "2026-01-01T00:00:00Z".into())
}

/// The jobs of one pod: enough for the whole run, drawn from the seed.
fn plan(rng: &mut StdRng, pod: usize, n: usize) -> Vec<Job> {
    (0..n)
        .map(|j| {
            // Mostly small messages, some large; the large ones read by slow apps, so the
            // machine's two cores are not spent copying 64 KiB payloads.
            let payload_bytes = *[100u32, 100, 100, 1024, 1024, 8192, 65536]
                .choose(rng)
                .unwrap_or(&100);
            let slow = payload_bytes >= 65536 || rng.random_bool(0.2);
            let slow_us = if slow {
                rng.random_range(5_000..=20_000)
            } else {
                0
            };
            let rate = if slow {
                1_000_000 / slow_us.max(1)
            } else {
                400
            };
            let seconds = rng.random_range(15..=45);
            Job {
                topic: format!("p{pod}-j{j:04}"),
                count: (rate * seconds).max(200),
                payload_bytes,
                slow_us,
            }
        })
        .collect()
}

fn sidecar_config(f: &Fleet, pod: &Pod, uid: &str, args: &Args) -> String {
    let upstream = format!("http://{}", f.upstreams[pod.replica].addr());
    let mut c = format!(
        "listen: 127.0.0.1:{port}\n\
         upstream: {upstream}\n\
         descriptors: {descriptors}\n\
         redis_url: {redis}\n\
         amqp_url: {amqp}\n\
         key_prefix: {prefix}\n\
         service: {service}\n\
         pod_name: {name}\n\
         pod_namespace: {NAMESPACE}\n\
         pod_uid: {uid}\n\
         metrics_listen: 127.0.0.1:{metrics}\n\
         checkpoint_interval: {ci}\n\
         lease_ttl: {lease}\n\
         shutdown_timeout: 15s\n\
         reconnect_backoff: 50ms\n\
         reconnect_backoff_max: 500ms\n\
         max_outage: 60s\n",
        port = pod.port,
        descriptors = quote(&f.dir.join("demo.binpb").to_string_lossy()),
        redis = quote(&f.redis.url()),
        amqp = quote(&f.rabbit.url()),
        prefix = quote(&f.prefix),
        service = if pod.deliver { "soak-del" } else { "soak-req" },
        name = pod.name,
        metrics = pod.metrics_port,
        ci = quote(&args.checkpoint_interval),
        lease = quote(&args.lease_ttl),
    );
    if pod.deliver {
        c.push_str(&format!(
            "resume_sink: http://127.0.0.1:{}\n",
            pod.sink_port
        ));
    }
    c.push_str(&format!(
        "streams:\n  - method: demo.v1.EventService/StreamEvents\n    offset_field: cursor.seq\n    \
         resume_field: start.after_seq\n    resume: {}\n",
        if pod.deliver { "deliver" } else { "on_request" }
    ));
    c
}

fn run(args: &Args, seed: u64) -> anyhow::Result<bool> {
    anyhow::ensure!(
        args.pods >= 2,
        "--pods must be at least 2 (one per resume mode)"
    );
    anyhow::ensure!(args.replicas >= 1, "--replicas must be at least 1");
    anyhow::ensure!(args.minutes > 0.0, "--minutes must be above 0");
    let tag = format!("rs{:04x}", std::process::id() & 0xffff);
    net::available(&tag)?;
    let nft = net::nft_available();
    let dir = tempfile::Builder::new()
        .prefix("reprise-soak")
        .disable_cleanup(true)
        .tempdir()?
        .keep();
    println!(
        "soak: seed {seed}, {} faults over {} min, {} pods, {} upstream replicas, {} jobs per pod; files in {}",
        args.faults,
        args.minutes,
        args.pods,
        args.replicas,
        args.jobs_per_pod,
        dir.display()
    );
    if !nft {
        println!(
            "soak: nft is not installed: no TCP-reset faults (scripts/soak installs nftables)"
        );
    }
    let rt = tokio::runtime::Runtime::new()?;
    let outcome = soak(args, seed, &tag, nft, &dir, &rt);
    if args.keep_logs || !matches!(outcome, Ok(true)) {
        // On stderr: the summary stays the last line of stdout.
        eprintln!("soak: files kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    outcome
}

fn soak(
    args: &Args,
    seed: u64,
    tag: &str,
    nft: bool,
    dir: &Path,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<bool> {
    let mut rng = StdRng::seed_from_u64(seed);
    let redis = Redis::start(dir)?;
    let rabbit = Rabbit::start(dir, tag)?;
    let subnet = 200 + (std::process::id() % 50) as u8;
    let mut upstreams = Vec::new();
    let mut links = Vec::new();
    let cleanup_links = |links: &[Link]| links.iter().for_each(Link::remove);
    for k in 0..args.replicas {
        let link = Link::create(tag, subnet, k as u8).inspect_err(|_| cleanup_links(&links))?;
        links.push(link.clone());
        upstreams.push(Upstream {
            link,
            proc: None,
            stopping: None,
            dir: dir.to_owned(),
            starts: 0,
        });
    }
    let result = (|| {
        for u in &mut upstreams {
            u.up()?;
        }
        let _guard = rt.enter();
        let api = rt.block_on(FakeApiServer::start());
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, api.kubeconfig())?;
        std::fs::write(dir.join("demo.binpb"), reprise_proto::DEMO_DESCRIPTOR_SET)?;
        let prefix = format!("soak-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let mut fleet = Fleet {
            dir: dir.to_owned(),
            prefix,
            redis,
            rabbit,
            upstreams: std::mem::take(&mut upstreams),
            pods: Vec::new(),
            api,
            kubeconfig,
            recoverer: None,
            recoverer_starts: 0,
            jobs_per_pod: args.jobs_per_pod,
            lease_ttl: args.lease_ttl.clone(),
            journal: std::fs::File::create(dir.join("faults.jsonl"))?,
            faults: Vec::new(),
        };
        let total_secs = WARMUP.as_secs_f64() + args.minutes * 60.0;
        let jobs_each = args.jobs_per_pod * ((total_secs / 15.0).ceil() as usize + 2);
        let mut plans = BTreeMap::new();
        let mut dirs = BTreeMap::new();
        for i in 0..args.pods {
            let name = format!("pod-{i}");
            let pdir = dir.join(&name);
            std::fs::create_dir_all(&pdir)?;
            let jobs = plan(&mut rng, i, jobs_each);
            std::fs::write(
                pdir.join("plan"),
                jobs.iter().map(|j| j.line() + "\n").collect::<String>(),
            )?;
            plans.insert(name.clone(), jobs);
            let pod = Pod {
                name: name.clone(),
                deliver: i % 2 == 1,
                replica: i % args.replicas,
                port: free_port()?,
                metrics_port: free_port()?,
                sink_port: free_port()?,
                dir: pdir.clone(),
                config: pdir.join("sidecar.yaml"),
                sidecar: None,
                stopping: None,
                app: None,
                sidecar_starts: 0,
                app_starts: 0,
            };
            dirs.insert(name.clone(), pod.app_dir());
            let created = fleet.api.add(kube_pods::injected_pod(NAMESPACE, &name));
            let uid = created.metadata.uid.unwrap_or_default();
            std::fs::write(&pod.config, sidecar_config(&fleet, &pod, &uid, args))?;
            fleet.pods.push(pod);
        }
        fleet.start_recoverer()?;
        for pod in &mut fleet.pods {
            pod.start_sidecar()?;
        }
        for pod in &mut fleet.pods {
            pod.start_app(args.jobs_per_pod)?;
        }
        println!("soak: fleet up; warming up for {} s", WARMUP.as_secs());
        std::thread::sleep(WARMUP);
        let warm_rss = rss_of(&fleet);
        let started_at = unix_ms();

        // Faults, at times drawn from the seed, spread over the minutes asked for.
        let span = Duration::from_secs_f64(args.minutes * 60.0);
        let t0 = Instant::now();
        let mut times: Vec<Duration> = (0..args.faults)
            .map(|_| span.mul_f64(rng.random_range(0.0..1.0)))
            .collect();
        times.sort();
        let total_weight: u32 = KINDS.iter().map(|k| k.1).sum();
        let mut pending: Vec<(Instant, Revert, String)> = Vec::new();
        let mut problems = Vec::new();
        let mut next = times.into_iter().peekable();
        while next.peek().is_some() || !pending.is_empty() {
            let now = Instant::now();
            // Undo what is due.
            let mut i = 0;
            let mut later = Vec::new();
            while i < pending.len() {
                if pending[i].0 <= now {
                    let (_, revert, target) = pending.swap_remove(i);
                    if let Some(rest) = fleet.undo(revert)? {
                        later.push((now, rest, target));
                    }
                } else {
                    i += 1;
                }
            }
            pending.extend(later);
            problems.extend(fleet.check_alive());
            if let Some(&at) = next.peek()
                && t0 + at <= now
            {
                next.next();
                let busy: BTreeSet<String> = pending.iter().map(|p| p.2.clone()).collect();
                // Draw until a kind finds a free target (a few tries; else skip this slot).
                for _ in 0..8 {
                    let mut pick = rng.random_range(0..total_weight);
                    let kind = KINDS
                        .iter()
                        .find(|(_, w)| {
                            if pick < *w {
                                true
                            } else {
                                pick -= w;
                                false
                            }
                        })
                        .map_or("upstream_sigkill", |k| k.0);
                    let before = fleet.faults.len();
                    let undo = fleet.inject(kind, &mut rng, &busy, nft)?;
                    if let Some((after, revert, target)) = undo {
                        pending.push((Instant::now() + after, revert, target));
                    }
                    if fleet.faults.len() > before {
                        break;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        println!("soak: {} faults injected; settling", fleet.faults.len());

        // Settle: apps start no more jobs; every started one must run to its end.
        for pod in &fleet.pods {
            std::fs::write(pod.app_dir().join("stop"), "")?;
        }
        // Judged by the last lines of the record files, which is cheap; the full check comes
        // once, after.
        let settle_started = Instant::now();
        let settle_deadline = settle_started + Duration::from_secs(args.settle_secs);
        let quiet = Duration::from_secs(args.quiet_secs);
        let (mut last, mut grew_at) = (None, Instant::now());
        let settled = loop {
            problems.extend(fleet.check_alive());
            let p = check::progress(&plans, &dirs, &started_topics(&dirs));
            if last.is_none_or(|l: check::Progress| l.bytes != p.bytes) {
                grew_at = Instant::now();
            }
            last = Some(p);
            if p.ended == p.jobs {
                break "every job has its last message";
            }
            if grew_at.elapsed() > quiet {
                break "the record files stopped growing";
            }
            if Instant::now() > settle_deadline {
                break "the settling deadline passed";
            }
            std::thread::sleep(Duration::from_secs(2));
        };
        if let Some(p) = last {
            println!(
                "soak: settled after {:.0}s ({settled}): {} of {} jobs have their last message",
                settle_started.elapsed().as_secs_f64(),
                p.ended,
                p.jobs
            );
        }
        let checkpoint_ms = humantime::parse_duration(&args.checkpoint_interval)
            .map_or(DEFAULT_CHECKPOINT_MS, |d| d.as_millis() as u64);
        let verdict = check::check(
            &plans,
            &dirs,
            &started_topics(&dirs),
            &fleet.faults,
            checkpoint_ms,
        );
        let ended_at = unix_ms();
        // Redis has the sidecars' final writes a moment after the apps' last message.
        std::thread::sleep(Duration::from_secs(2));
        let store = final_store(&fleet)?;
        let end_rss = rss_of(&fleet);
        problems.extend(store.problems.iter().cloned());
        let leaks = leaks(&warm_rss, &end_rss);
        problems.extend(leaks.iter().cloned());
        write_timeline(dir, &dirs, &fleet.faults, started_at, ended_at)?;
        report(&fleet, &verdict, &store, &warm_rss, &end_rss, &problems);
        let clean = match args.dup_bound {
            DupBound::Enforce => verdict.clean(),
            DupBound::Report => verdict.clean_but_for_the_bound(),
        } && problems.is_empty();
        println!(
            "soak: faults={} messages={} lost={} out_of_order={} duplicates={} max_dup_window_ms={} seed={seed}",
            fleet.faults.len(),
            verdict.messages,
            verdict.lost,
            verdict.out_of_order,
            verdict.duplicates,
            verdict.max_dup_window_ms,
        );
        Ok(clean)
    })();
    cleanup_links(&links);
    result
}

/// Topics any app started.
fn started_topics(dirs: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for d in dirs.values() {
        let text = std::fs::read_to_string(d.join("state.log")).unwrap_or_default();
        for l in text.lines() {
            if let Some(t) = l.strip_prefix("start ") {
                out.insert(t.to_owned());
            }
        }
    }
    out
}

struct Store {
    jobs: usize,
    by_status: BTreeMap<String, usize>,
    problems: Vec<String>,
}

/// Redis at the end: every job `completed`, none `running` with a lapsed lease, the outbox
/// empty. (The checker does not look here: this is the store's own account.)
fn final_store(f: &Fleet) -> anyhow::Result<Store> {
    let client = redis::Client::open(f.redis.url())?;
    let mut con = client.get_connection()?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:job:*", f.prefix))
        .query(&mut con)?;
    let mut s = Store {
        jobs: keys.len(),
        by_status: BTreeMap::new(),
        problems: Vec::new(),
    };
    for k in &keys {
        let status: Option<String> = redis::cmd("HGET").arg(k).arg("status").query(&mut con)?;
        let status = status.unwrap_or_else(|| "(none)".into());
        *s.by_status.entry(status.clone()).or_default() += 1;
        if status != "completed" {
            let id = k.rsplit(':').next().unwrap_or_default();
            let error: Option<String> = redis::cmd("HGET")
                .arg(k)
                .arg("last_error")
                .query(&mut con)?;
            s.problems.push(format!(
                "job {id} ended `{status}` in Redis (last_error: {})",
                error.unwrap_or_default()
            ));
        }
    }
    let now_ms = unix_ms() as f64;
    let expired: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(format!("{}:leases", f.prefix))
        .arg("-inf")
        .arg(now_ms)
        .query(&mut con)?;
    for id in expired {
        let status: Option<String> = redis::cmd("HGET")
            .arg(format!("{}:job:{id}", f.prefix))
            .arg("status")
            .query(&mut con)?;
        if status.as_deref() == Some("running") {
            s.problems
                .push(format!("job {id} is `running` with an expired lease"));
        }
    }
    let outbox: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:outbox*", f.prefix))
        .query(&mut con)?;
    for key in outbox {
        let len: usize = match redis::cmd("TYPE")
            .arg(&key)
            .query::<String>(&mut con)?
            .as_str()
        {
            "list" => redis::cmd("LLEN").arg(&key).query(&mut con)?,
            "zset" => redis::cmd("ZCARD").arg(&key).query(&mut con)?,
            "hash" => redis::cmd("HLEN").arg(&key).query(&mut con)?,
            "stream" => redis::cmd("XLEN").arg(&key).query(&mut con)?,
            _ => 0,
        };
        if len > 0 {
            s.problems
                .push(format!("outbox {key} holds {len} event(s)"));
        }
    }
    Ok(s)
}

/// RSS in KiB of every process that runs now, by name.
fn rss_of(f: &Fleet) -> BTreeMap<String, (u32, u64)> {
    let mut out = BTreeMap::new();
    let mut put = |name: String, p: &Option<Proc>| {
        if let Some(p) = p
            && let Ok(kib) = p.rss_kib()
        {
            out.insert(name, (p.pid(), kib));
        }
    };
    for pod in &f.pods {
        put(format!("sidecar {}", pod.name), &pod.sidecar);
        put(format!("app {}", pod.name), &pod.app);
    }
    for (k, u) in f.upstreams.iter().enumerate() {
        put(format!("upstream-{k}"), &u.proc);
    }
    put("recoverer".into(), &f.recoverer);
    put("redis".into(), &f.redis.proc);
    out
}

/// Processes that lived through the run (same pid) and grew by more than half plus 16 MiB.
/// The apps are the soak's instruments, not Reprise: their memory is their gRPC library's
/// receive windows (2 MiB a stream for tonic), so it is reported, not judged.
fn leaks(warm: &BTreeMap<String, (u32, u64)>, end: &BTreeMap<String, (u32, u64)>) -> Vec<String> {
    let mut out = Vec::new();
    for (name, (pid, kib)) in end.iter().filter(|(n, _)| !n.starts_with("app ")) {
        if let Some((wpid, wkib)) = warm.get(name)
            && wpid == pid
            && *kib > wkib + wkib / 2 + 16 * 1024
        {
            out.push(format!(
                "{name} grew from {wkib} KiB after warm-up to {kib} KiB"
            ));
        }
    }
    out
}

/// `timeline.csv`: messages received per second across the run, and `faults.csv`, for
/// scripts/soak-plot.
fn write_timeline(
    dir: &Path,
    dirs: &BTreeMap<String, PathBuf>,
    faults: &[Fault],
    from_ms: u64,
    to_ms: u64,
) -> anyhow::Result<()> {
    let secs = ((to_ms.saturating_sub(from_ms)) / 1000 + 1) as usize;
    let mut per_sec = vec![0u64; secs];
    for d in dirs.values() {
        let Ok(entries) = std::fs::read_dir(d.join("rec")) else {
            continue;
        };
        for e in entries.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            for l in text.lines() {
                if let Some(ms) = l.rsplit(' ').next().and_then(|m| m.parse::<u64>().ok())
                    && ms >= from_ms
                {
                    let i = ((ms - from_ms) / 1000) as usize;
                    if i < per_sec.len() {
                        per_sec[i] += 1;
                    }
                }
            }
        }
    }
    let mut t = String::from("second,messages\n");
    for (i, n) in per_sec.iter().enumerate() {
        t.push_str(&format!("{i},{n}\n"));
    }
    std::fs::write(dir.join("timeline.csv"), t)?;
    let mut f = String::from("second,kind,target\n");
    for x in faults {
        f.push_str(&format!(
            "{:.3},{},{}\n",
            (x.ms.saturating_sub(from_ms)) as f64 / 1000.0,
            x.kind,
            x.target
        ));
    }
    std::fs::write(dir.join("faults.csv"), f)?;
    Ok(())
}

fn report(
    f: &Fleet,
    v: &check::Verdict,
    store: &Store,
    warm: &BTreeMap<String, (u32, u64)>,
    end: &BTreeMap<String, (u32, u64)>,
    problems: &[String],
) {
    println!("\nfaults by kind:");
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for x in &f.faults {
        *by_kind.entry(x.kind.as_str()).or_default() += 1;
    }
    for (k, n) in &by_kind {
        println!("  {k:<22} {n}");
    }
    println!(
        "\njobs: {} started, {} complete; messages {}; lost {}; out of order {}; corrupt {}; duplicates {} in {} run(s), {} unexplained",
        v.jobs,
        v.jobs_complete,
        v.messages,
        v.lost,
        v.out_of_order,
        v.corrupt,
        v.duplicates,
        v.dup_runs.len(),
        v.unexplained_duplicates
    );
    let mut causes: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for r in &v.dup_runs {
        let kind = r
            .cause
            .as_deref()
            .and_then(|c| c.split(' ').next())
            .unwrap_or("unexplained")
            .to_owned();
        let e = causes.entry(kind).or_default();
        e.0 += 1;
        e.1 += r.messages;
    }
    for (c, (runs, n)) in &causes {
        println!("  duplicates after {c}: {n} in {runs} run(s)");
    }
    println!(
        "  largest duplicate window: {} messages, {} ms",
        v.max_dup_window_messages, v.max_dup_window_ms
    );
    let (n, bound) = v.max_dup_against_bound;
    println!(
        "  largest run against its bound (one app window and checkpoint interval): {n} of {bound}; {} duplicate(s) in runs over it",
        v.over_bound_duplicates
    );
    println!("\ngap from a fault to the next new message of each job it touched (ms):");
    for (kind, gaps) in &v.gaps_ms {
        let p = |q| check::percentile(gaps, q).unwrap_or(0);
        println!(
            "  {kind:<22} n={:<5} p50={:<7} p99={:<7} max={}",
            gaps.len(),
            p(50.0),
            p(99.0),
            gaps.iter().max().unwrap_or(&0)
        );
    }
    println!("\nRedis: {} job(s): {:?}", store.jobs, store.by_status);
    println!("\nRSS (KiB) after warm-up → at the end (processes that lived through the run):");
    for (name, (pid, kib)) in end {
        if let Some((wpid, wkib)) = warm.get(name)
            && wpid == pid
        {
            println!("  {name:<16} {wkib} → {kib}");
        }
    }
    if !v.over_bound.is_empty() {
        println!(
            "\nruns of duplicates over their bound ({}; the first {}):",
            v.over_bound.len(),
            v.over_bound.len().min(20)
        );
        for line in v.over_bound.iter().take(20) {
            println!("  {line}");
        }
    }
    let shown: Vec<&String> = v.problems.iter().chain(problems).take(40).collect();
    if !shown.is_empty() {
        println!(
            "\nproblems ({} in all; the first {}):",
            v.problems.len() + problems.len(),
            shown.len()
        );
        for p in shown {
            println!("  {p}");
        }
    }
}
