//! The processes of a handoff or recovery run, as the sidecar's and recoverer's tests set them
//! up: the demo server, pod B's app (a demo-sink), sidecars pod-a and pod-b of one service on
//! Redis and RabbitMQ, and pod A's app (a demo-client); the waits between a run's stages; and
//! the run's own key prefix and directory, so that no run sees another's state or logs.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    brokers,
    procs::{Proc, START_TIMEOUT, free_port, quote, sibling_bin, spawn_sidecar, tail},
    rig::Setup,
};

/// The sidecars' service, and the method they resume.
pub const SERVICE: &str = "bench";
const USERS_METHOD: &str = "demo.v1.UserService/ListUsers";
pub const POD_A: &str = "pod-a";
pub const POD_B: &str = "pod-b";
/// Waits that only synchronise the run, not measure it.
const SETTLE: Duration = Duration::from_millis(20);

/// What every run of a scenario shares.
pub struct Shared {
    pub dir: PathBuf,
    pub descriptors: PathBuf,
    pub redis_url: String,
    pub amqp_url: String,
    /// The admins of the demo database, in stream order: what A's app and B's sink must hold.
    pub admins: Vec<String>,
}

impl Shared {
    /// Redis at $REDIS_URL and RabbitMQ at $AMQP_URL (or on this machine), the descriptors
    /// written to `dir`, and the admins of a demo database of `users`.
    pub fn new(dir: &Path, rt: &tokio::runtime::Runtime, users: usize) -> anyhow::Result<Shared> {
        let redis_url =
            std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let amqp_url = std::env::var("AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        // A job lives in Redis and moves to pod B through RabbitMQ: without either there is
        // nothing to measure.
        crate::rig::redis_reachable(&redis_url)
            .map_err(|e| anyhow::anyhow!("Redis unreachable at $REDIS_URL or its default: {e}"))?;
        brokers::amqp_reachable(rt, &amqp_url)
            .context("RabbitMQ unreachable at $AMQP_URL or its default")?;
        Ok(Shared {
            dir: dir.to_owned(),
            descriptors: Setup::write_descriptors(dir)?,
            redis_url,
            amqp_url,
            admins: reprise_demo::users::demo_users(users)
                .into_iter()
                .filter(|u| u.role == "admin")
                .map(|u| u.user_id)
                .collect(),
        })
    }

    /// Runs `run` with a fresh key prefix (`bench-{scenario}-<12 hex>`) and the directory
    /// `dir_name` for its processes' files, then deletes what it left in Redis and RabbitMQ,
    /// whatever happened.
    pub fn isolated<T>(
        &self,
        rt: &tokio::runtime::Runtime,
        scenario: &str,
        dir_name: &str,
        run: impl FnOnce(&str, &Path) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let prefix = format!(
            "bench-{scenario}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let dir = self.dir.join(dir_name);
        std::fs::create_dir_all(&dir)?;
        let result = run(&prefix, &dir);
        brokers::cleanup(&self.redis_url, &self.amqp_url, rt, &prefix);
        result
    }
}

/// A sidecar and the port its app connects to.
pub struct Sidecar {
    pub proc: Proc,
    pub port: u16,
}

/// The demo server with a database of `users`, pausing `delay_us` between messages.
pub fn start_server(dir: &Path, port: u16, users: usize, delay_us: u32) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(sibling_bin("demo-server")?);
    cmd.arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--users")
        .arg(users.to_string())
        .arg("--delay-us")
        .arg(delay_us.to_string())
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1");
    let mut server = Proc::spawn("demo-server", &mut cmd, dir.join("demo-server.log"))?;
    server.wait_port(port, START_TIMEOUT)?;
    Ok(server)
}

/// Pod B's app: a ResumeSink recording every delivered user.
pub fn start_sink(dir: &Path, port: u16, record: &Path) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(sibling_bin("demo-sink")?);
    cmd.arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--record")
        .arg(record);
    let mut sink = Proc::spawn("demo-sink", &mut cmd, dir.join("demo-sink.log"))?;
    sink.wait_port(port, START_TIMEOUT)?;
    Ok(sink)
}

/// A sidecar of the service `bench` with ListUsers resumable: `resume: deliver` to the
/// ResumeSink on `sink_port`, or `on_request` without one. `keys` are further top-level keys
/// and their values (`drain_period`, `lease_ttl`); every other key keeps its default.
pub fn start_sidecar(
    s: &Shared,
    prefix: &str,
    dir: &Path,
    pod: &str,
    upstream_port: u16,
    sink_port: Option<u16>,
    keys: &[(&str, &str)],
) -> anyhow::Result<Sidecar> {
    let port = free_port()?;
    let metrics_port = free_port()?;
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
    for (key, value) in keys {
        config.push_str(&format!("{key}: {}\n", quote(value)));
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
    let proc = spawn_sidecar(
        &config,
        &dir.join(format!("{pod}.yaml")),
        dir.join(format!("{pod}.log")),
        port,
        metrics_port,
        &[],
    )?;
    Ok(Sidecar { proc, port })
}

/// Pod A's app: `demo-client users --role admin`, recording every user it receives.
/// `window`: the HTTP/2 stream window the app announces (`None`: tonic's 2 MiB).
pub fn start_app(
    dir: &Path,
    a: &Sidecar,
    record: &Path,
    window: Option<u32>,
) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(sibling_bin("demo-client")?);
    cmd.arg("--target")
        .arg(format!("http://127.0.0.1:{}", a.port));
    if let Some(window) = window {
        cmd.arg("--window").arg(window.to_string());
    }
    cmd.args(["users", "--role", "admin", "--record"])
        .arg(record);
    Proc::spawn("demo-client", &mut cmd, dir.join("app-a.log"))
}

/// Until both sidecars say they take handoffs: before that, a job handed off could go unseen.
pub fn wait_taking_handoffs(a: &mut Sidecar, b: &mut Sidecar) -> anyhow::Result<()> {
    wait_for("pod-a and pod-b taking handoffs", START_TIMEOUT, || {
        a.proc.check_alive()?;
        b.proc.check_alive()?;
        let taking = |p: &Proc| p.log_text().contains("taking handoffs");
        Ok(taking(&a.proc) && taking(&b.proc))
    })
}

/// Until A's app has recorded `admins` admins: the stream is well under way.
pub fn wait_app_under_way(
    app: &mut Proc,
    a: &mut Sidecar,
    record: &Path,
    admins: usize,
) -> anyhow::Result<()> {
    wait_for(
        &format!("{admins} admins at A's app"),
        START_TIMEOUT,
        || {
            app.check_alive()?;
            a.proc.check_alive()?;
            Ok(count_lines(record) >= admins)
        },
    )
}

/// B completes the job (as its owner) within `within`, and the sink has seen the end of the
/// delivery; what is not so goes to `failures`. Returns whether the job completed.
pub fn finish_delivery(
    con: &mut redis::Connection,
    job: &str,
    b: &mut Sidecar,
    sink: &Proc,
    within: Duration,
    failures: &mut Vec<String>,
) -> anyhow::Result<bool> {
    let completed = wait_for("the job completed", within, || {
        b.proc.check_alive()?;
        Ok(brokers::hget(con, job, "status")?.as_deref() == Some("completed"))
    });
    if let Err(e) = completed {
        failures.push(format!(
            "{e:#}; pod-b log tail:\n{}",
            tail(&b.proc.log_text(), 15)
        ));
        return Ok(false);
    }
    let owner = brokers::hget(con, job, "owner_pod")?;
    if owner.as_deref() != Some(POD_B) {
        failures.push(format!(
            "the completed job's owner_pod is {owner:?}, not pod-b"
        ));
    }
    // The sink prints the delivery's End; every message before it is already recorded.
    if let Err(e) = wait_for("the sink to see the delivery's end", within, || {
        Ok(sink.log_text().contains("\"kind\":\"end\""))
    }) {
        failures.push(format!("{e:#}"));
    }
    Ok(true)
}

/// Polls `cond` until it holds; an error names `what` once `within` has passed.
pub fn wait_for(
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

/// A record's size: it grows by a line a user.
pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// A record's users, in the order they arrived.
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn count_lines(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
}
