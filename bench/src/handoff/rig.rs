//! The processes of a handoff run, the waits between its stages, and Redis and RabbitMQ
//! around it: reading the job, deleting what the run left behind.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{DELAY_US, SERVICE, SIGTERM_AFTER, USERS, USERS_METHOD};
use crate::procs::{Proc, free_port, sibling_bin};

pub(super) const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Waits that only synchronise the run, not measure it.
pub(super) const SETTLE: Duration = Duration::from_millis(20);

/// What every run shares.
pub(super) struct Settings {
    pub(super) dir: PathBuf,
    pub(super) descriptors: PathBuf,
    pub(super) redis_url: String,
    pub(super) amqp_url: String,
    /// `drain_period` of both sidecars; `None` keeps the sidecar's default (1s).
    pub(super) drain_period: Option<String>,
    /// The admins of the demo database, in stream order: what A's app and B's sink must hold.
    pub(super) admins: Vec<String>,
}

/// A sidecar and the port its app connects to.
pub(super) struct Sidecar {
    pub(super) proc: Proc,
    port: u16,
}

impl Sidecar {
    pub(super) fn check_alive(&mut self) -> anyhow::Result<()> {
        self.proc.check_alive()
    }
}

pub(super) fn start_server(dir: &Path, port: u16) -> anyhow::Result<Proc> {
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
pub(super) fn start_sidecar(
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
pub(super) fn start_app(dir: &Path, a: &Sidecar, record: &Path) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(sibling_bin("demo-client")?);
    cmd.arg("--target")
        .arg(format!("http://127.0.0.1:{}", a.port))
        .args(["users", "--role", "admin", "--record"])
        .arg(record);
    Proc::spawn("demo-client", &mut cmd, dir.join("app-a.log"))
}

pub(super) fn wait_app_under_way(
    app: &mut Proc,
    a: &mut Sidecar,
    record: &Path,
) -> anyhow::Result<()> {
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

/// Polls `cond` until it holds; an error names `what` once `within` has passed.
pub(super) fn wait_for(
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

pub(super) fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

pub(super) fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

pub(super) fn count_lines(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
}

pub(super) fn redis_connection(url: &str) -> anyhow::Result<redis::Connection> {
    let client = redis::Client::open(url)?;
    Ok(client.get_connection_with_timeout(Duration::from_secs(2))?)
}

/// The key of the run's one job.
pub(super) fn job_key(con: &mut redis::Connection, prefix: &str) -> anyhow::Result<String> {
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

pub(super) fn hget(
    con: &mut redis::Connection,
    key: &str,
    field: &str,
) -> anyhow::Result<Option<String>> {
    Ok(redis::cmd("HGET").arg(key).arg(field).query(con)?)
}

/// Deletes the run's Redis keys, its service's resume queue and its events exchange.
pub(super) fn cleanup(s: &Settings, rt: &tokio::runtime::Runtime, prefix: &str) {
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
pub(super) fn amqp_reachable(rt: &tokio::runtime::Runtime, url: &str) -> anyhow::Result<()> {
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
