//! What a recovery run adds to the processes of `crate::fleet`, as `recoverer/tests/recovery.rs`
//! sets them up: the recoverer, and on the Kubernetes path an in-process fake API server that
//! holds pods pod-a and pod-b and that the recoverer watches through a kubeconfig.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use reprise_kube_fake::{FakeApiServer, pods as kube_pods};

use crate::{
    fleet::{POD_A, POD_B, Shared, wait_for},
    procs::{Proc, START_TIMEOUT, free_port, quote, shipped_bin},
};

/// The demo server's database and pace: about 1 ms per admin (the sleep rounds up to the
/// timer's millisecond), so B's remaining ~3,000 admins take a few seconds, not ten.
pub const USERS: usize = 12_000;
pub const DELAY_US: u32 = 100;
/// A's app has this many admins when A's sidecar is SIGKILLed: the stream is well under way.
pub const KILL_AFTER: usize = 1_000;
pub const NAMESPACE: &str = "demo";

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
    let mut cmd = Command::new(shipped_bin("reprise-recoverer")?);
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
