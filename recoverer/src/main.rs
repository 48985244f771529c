//! `reprise-recoverer --config FILE`
//!
//! Lifecycle: config (invalid config exits 2) → the admin port (one it cannot bind is a
//! configuration error too: exit 2 naming `metrics_listen`) → tracing → Redis → RabbitMQ
//! (optional) → Kubernetes pod watch (optional: without it, leases alone) → reconcile every
//! `reconcile_interval` and on every pod signal → SIGTERM → stop, close the broker → exit 0.

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use clap::Parser;
use reprise_jobs::{BusConfig, EventBus, Outbox, Publisher, RedisStore, redact_url};
use reprise_recoverer::{
    admin::{self, Health, Metrics},
    config::Config,
    kube_view,
    reconcile::{PodView, Reconciler, Signal},
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(version, about = "Reassigns the jobs of pods killed without notice")]
struct Cli {
    /// YAML configuration; every key can be overridden by env REPRISE_<KEY>.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Validate the configuration, then exit (0 valid, 2 invalid).
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let config = match Config::load(cli.config.as_deref(), &env) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!(
                "reprise-recoverer: invalid configuration:\n{}",
                errors.join("\n")
            );
            return ExitCode::from(2);
        }
    };
    if cli.check {
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }
    let admin = match bind(config.metrics_listen) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "reprise-recoverer: invalid configuration:\nkey `metrics_listen`: cannot listen on {}: {e}; valid: an IP:PORT of this host that nothing else listens on",
                config.metrics_listen
            );
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.json_logs {
        logs.json().init();
    } else {
        logs.init();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("reprise-recoverer: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, admin)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "reprise-recoverer failed");
            ExitCode::FAILURE
        }
    }
}

/// The admin listener, bound before the runtime starts so that a busy port is reported as the
/// configuration error it is.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

async fn run(config: Config, admin: std::net::TcpListener) -> anyhow::Result<ExitCode> {
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::from_std(admin)?;
    tokio::spawn(admin::serve(
        listener,
        metrics.clone(),
        health.clone(),
        shutdown.clone(),
    ));

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let Some(redis) = connect_redis(&config, &mut term, &mut int).await else {
        return Ok(ExitCode::SUCCESS);
    };
    health
        .redis_ok
        .store(true, std::sync::atomic::Ordering::Relaxed);

    let bus = start_bus(&config, &redis, &shutdown)?;

    let (signals_tx, signals) = mpsc::unbounded_channel::<Signal>();
    let pods: Option<Arc<dyn PodView>> =
        match kube_view::start(&config, signals_tx, metrics.clone(), shutdown.clone()).await {
            Ok(view) => view,
            Err(e) => {
                eprintln!("reprise-recoverer: {e}");
                return Ok(ExitCode::from(2));
            }
        };
    if pods.is_none() {
        tracing::info!("running on leases alone (no Kubernetes)");
    }
    let reconciler = Reconciler::new(redis, bus.as_ref().map(|(_, p)| p.clone()), pods, metrics)
        .with_handoff_retry(config.handoff_retry)
        .with_lease_grace(config.lease_grace);
    tracing::info!(
        prefix = %config.key_prefix,
        interval = %humantime::format_duration(config.reconcile_interval),
        handoff_retry = %humantime::format_duration(config.handoff_retry),
        lease_grace = %humantime::format_duration(config.lease_grace),
        "reprise-recoverer ready"
    );

    let stop = async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    reconciler
        .run(config.reconcile_interval, signals, &health, stop)
        .await;
    tracing::info!("shutdown: stopping");
    health
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    shutdown.cancel();
    if let Some((bus, _)) = bus {
        let _ = bus.close().await;
    }
    tracing::info!("shutdown: done");
    Ok(ExitCode::SUCCESS)
}

/// Redis is the truth: wait for it (not ready meanwhile) rather than exit and crash-loop.
/// `None`: a signal came first.
async fn connect_redis(
    config: &Config,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) -> Option<RedisStore> {
    loop {
        match RedisStore::connect(&config.redis_url, &config.key_prefix).await {
            Ok(r) => return Some(r),
            Err(e) => {
                tracing::error!(error = %e, "redis unreachable; retrying");
                tokio::select! {
                    _ = term.recv() => return None,
                    _ = int.recv() => return None,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    }
}

/// The broker that announces orphaned jobs, with the Redis outbox behind it; `None` without
/// `amqp_url`.
fn start_bus(
    config: &Config,
    redis: &RedisStore,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<(EventBus, Publisher)>> {
    let Some(url) = &config.amqp_url else {
        tracing::warn!(
            "no amqp_url: orphaned jobs are not announced; sidecars find them when their apps ask"
        );
        return Ok(None);
    };
    let bus = EventBus::start(
        BusConfig::new(url, &config.key_prefix).with_connection_name("reprise-recoverer"),
    )
    .map_err(|e| anyhow::anyhow!("amqp_url {}: {e}", redact_url(url)))?;
    let publisher = Publisher::new(bus.clone(), Outbox::new(redis));
    tokio::spawn(publisher.clone().run_drainer(shutdown.clone()));
    Ok(Some((bus, publisher)))
}
