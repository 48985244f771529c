//! The processes of one recovery run, as `recoverer/tests/recovery.rs` sets them up: the demo
//! server, pod B's app (a demo-sink), sidecars pod-a and pod-b in `resume: deliver` mode, the
//! recoverer, and pod A's app (a demo-client). On the Kubernetes path, an in-process fake API
//! server holds pods pod-a and pod-b and the recoverer watches it through a kubeconfig.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::bail;

use super::{apiserver::FakeApiServer, kube_pods};
use crate::procs::{Proc, free_port, sibling_bin};

/// The demo server's database and pace: about 1 ms per admin (the sleep rounds up to the
/// timer's millisecond), so B's remaining ~3,000 admins take a few seconds, not ten.
pub const USERS: usize = 12_000;
pub const DELAY_US: u32 = 100;
/// A's app has this many admins when A's sidecar is SIGKILLed: the stream is well under way.
pub const KILL_AFTER: usize = 1_000;
pub const SERVICE: &str = "bench";
pub const NAMESPACE: &str = "demo";
pub const POD_A: &str = "pod-a";
pub const POD_B: &str = "pod-b";
const USERS_METHOD: &str = "demo.v1.UserService/ListUsers";
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Waits that only synchronise the run, not measure it.
const SETTLE: Duration = Duration::from_millis(20);

/// What every run shares.
pub struct Shared {
    pub dir: PathBuf,
    pub descriptors: PathBuf,
    pub redis_url: String,
    pub amqp_url: String,
    /// The admins of the demo database, in stream order.
    pub admins: Vec<String>,
}

/// A sidecar, the port its app connects to, and its log.
pub struct Sidecar {
    pub proc: Proc,
    pub port: u16,
}

/// Pods pod-a and pod-b, injected and running, in namespace `demo` of a fresh fake API server;
/// returns it and the kubeconfig that points at it.
pub fn fake_cluster(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
) -> anyhow::Result<(FakeApiServer, PathBuf)> {
    let api = rt.block_on(FakeApiServer::start());
    api.add(kube_pods::injected_pod(NAMESPACE, POD_A));
    api.add(kube_pods::injected_pod(NAMESPACE, POD_B));
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig())?;
    Ok((api, kubeconfig))
}

pub fn start_server(dir: &Path, port: u16) -> anyhow::Result<Proc> {
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

/// A sidecar of the service `bench` with ListUsers `resume: deliver` to the ResumeSink on
/// `sink_port`; `lease_ttl` when given, every other key at its default.
pub fn start_sidecar(
    s: &Shared,
    prefix: &str,
    dir: &Path,
    pod: &str,
    upstream_port: u16,
    sink_port: u16,
    lease_ttl: Option<&str>,
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
         metrics_listen: 127.0.0.1:{metrics_port}\n\
         resume_sink: http://127.0.0.1:{sink_port}\n",
        desc = quote(&s.descriptors.to_string_lossy()),
        redis = quote(&s.redis_url),
        amqp = quote(&s.amqp_url),
        prefix = quote(prefix),
    );
    if let Some(ttl) = lease_ttl {
        config.push_str(&format!("lease_ttl: {}\n", quote(ttl)));
    }
    config.push_str(&format!(
        "streams:\n  \
           - method: {USERS_METHOD}\n    \
             offset_field: user_id\n    \
             resume_field: after_user_id\n    \
             resume: deliver\n"
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

/// The recoverer on leases alone, or (with `kubeconfig`) watching the pods of `demo` too.
/// Returns once it is ready and, with Kubernetes, once its pod store has synced.
pub fn start_recoverer(
    s: &Shared,
    prefix: &str,
    dir: &Path,
    reconcile_interval: &str,
    kubeconfig: Option<&Path>,
) -> anyhow::Result<Proc> {
    let kube = match kubeconfig {
        Some(_) => format!("kube: true\nnamespaces: [{NAMESPACE}]\n"),
        None => "kube: false\n".to_owned(),
    };
    let config = format!(
        "redis_url: {redis}\n\
         amqp_url: {amqp}\n\
         key_prefix: {prefix}\n\
         metrics_listen: 127.0.0.1:{port}\n\
         reconcile_interval: {interval}\n\
         {kube}",
        redis = quote(&s.redis_url),
        amqp = quote(&s.amqp_url),
        prefix = quote(prefix),
        port = free_port()?,
        interval = quote(reconcile_interval),
    );
    let path = dir.join("recoverer.yaml");
    std::fs::write(&path, config)?;
    let mut cmd = Command::new(sibling_bin("reprise-recoverer")?);
    cmd.arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("KUBECONFIG");
    if let Some(k) = kubeconfig {
        cmd.env("KUBECONFIG", k);
    }
    let mut proc = Proc::spawn("reprise-recoverer", &mut cmd, dir.join("recoverer.log"))?;
    let ready = if kubeconfig.is_some() {
        "pod store synced"
    } else {
        "reprise-recoverer ready"
    };
    wait_for(&format!("the recoverer: {ready}"), START_TIMEOUT, || {
        proc.check_alive()?;
        Ok(proc.log_text().contains(ready))
    })?;
    Ok(proc)
}

/// Pod A's app: `demo-client users --role admin`, recording every user it receives.
pub fn start_app(dir: &Path, a: &Sidecar, record: &Path) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(sibling_bin("demo-client")?);
    cmd.arg("--target")
        .arg(format!("http://127.0.0.1:{}", a.port))
        .args(["users", "--role", "admin", "--record"])
        .arg(record);
    Proc::spawn("demo-client", &mut cmd, dir.join("app-a.log"))
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

/// Paths and URLs as JSON strings: valid YAML whatever characters they hold.
fn quote(v: &str) -> String {
    serde_json::to_string(v).unwrap_or_default()
}
