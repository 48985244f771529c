//! `reprise-sidecar --config FILE [--check]`
//!
//! Lifecycle: config (invalid config exits 2 before any port is bound) → tracing →
//! descriptors → job store → bind → serve → wait for SIGTERM/SIGINT → drain, bounded by
//! `shutdown_timeout` → exit 0.

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context as _;
use clap::Parser;
use reprise_jobs::Owner;
use reprise_sidecar::{
    admin::{self, Health, Metrics},
    checkpoint::Checkpointer,
    config::{Config, DescriptorSource, LogFormat},
    descriptors,
    proxy::{self, Proxy},
    server,
    store::Store,
    stream::StreamCtx,
};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

#[derive(Parser)]
#[command(
    version,
    about = "Resumes broken gRPC server streams for unmodified apps"
)]
struct Cli {
    /// YAML configuration; every key can be overridden by env REPRISE_<KEY>.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Validate the configuration and descriptors, then exit (0 valid, 2 invalid).
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let config = match Config::load(cli.config.as_deref(), &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("reprise-sidecar: invalid configuration:\n{e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("reprise-sidecar: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, cli.check)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "reprise-sidecar failed");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(config: Config, check: bool) -> anyhow::Result<ExitCode> {
    // Descriptors: only needed when something is resumable.
    let methods = if config.streams.is_empty() {
        Vec::new()
    } else {
        let pool = match &config.descriptors {
            DescriptorSource::File(path) => descriptors::load_file(path),
            DescriptorSource::Reflection => {
                let services: Vec<String> = config
                    .streams
                    .iter()
                    .filter_map(|s| s.method.split_once('/').map(|(svc, _)| svc.to_owned()))
                    .collect();
                descriptors::fetch_reflection(
                    &config.upstream,
                    &services,
                    std::time::Duration::from_secs(30),
                )
                .await
            }
        };
        let resolved = pool
            .map_err(|e| vec![e])
            .and_then(|pool| descriptors::resolve(&pool, &config.streams));
        match resolved {
            Ok(m) => m,
            Err(errors) => {
                eprintln!(
                    "reprise-sidecar: invalid configuration:\n{}",
                    errors.join("\n")
                );
                return Ok(ExitCode::from(2));
            }
        }
    };
    if check {
        println!(
            "configuration OK: {} resumable method(s){}",
            methods.len(),
            methods
                .iter()
                .map(|m| format!(
                    "\n  {} (offset {}, resume {})",
                    m.name, m.offset_field, m.resume_field
                ))
                .collect::<String>()
        );
        return Ok(ExitCode::SUCCESS);
    }

    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let owner = Owner {
        pod: config.pod_name.clone(),
        instance: uuid::Uuid::new_v4().simple().to_string(),
    };
    if config.amqp_url.is_some() {
        tracing::warn!(
            "amqp_url is set, but this version publishes no handoff events yet; it is ignored"
        );
    }
    if config.redis_url.is_none() {
        tracing::warn!(
            "no redis_url: offsets live in this process only (resume survives upstream failures, not a sidecar restart)"
        );
    }
    let redis = config
        .redis_url
        .clone()
        .map(|url| (url, config.key_prefix.clone()));
    let store = Arc::new(Store::new(redis, health.clone(), metrics.clone()).await);
    let checkpointer = Arc::new(Checkpointer::new(
        store.clone(),
        metrics.clone(),
        config.checkpoint_interval,
        config.lease_ttl,
    ));

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen {}", config.listen))?;
    let admin_listener = admin::bind(config.metrics_listen)
        .await
        .map_err(anyhow::Error::msg)?;

    let shutdown = CancellationToken::new();
    let streams = TaskTracker::new();
    let connections = TaskTracker::new();
    let background = CancellationToken::new();
    let ctx = Arc::new(StreamCtx::new(
        proxy::upstream_client(),
        config.upstream.clone(),
        store.clone(),
        checkpointer.clone(),
        metrics.clone(),
        owner.clone(),
        config.service.clone(),
        &config,
        shutdown.clone(),
        streams.clone(),
    ));
    let proxy = Arc::new(Proxy::new(methods, ctx));

    tokio::spawn(admin::serve(
        admin_listener,
        metrics.clone(),
        health.clone(),
        background.clone(),
    ));
    tokio::spawn(checkpointer.clone().run(background.clone()));
    tokio::spawn(store.clone().watch_redis(background.clone()));
    let serving = tokio::spawn(server::serve(
        listener,
        proxy,
        shutdown.clone(),
        connections.clone(),
    ));
    health
        .serving
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        listen = %config.listen,
        upstream = %config.upstream,
        metrics = %config.metrics_listen,
        pod = %owner.pod,
        instance = %owner.instance,
        service = %config.service,
        "reprise-sidecar ready"
    );

    wait_for_signal().await?;
    tracing::info!("shutdown: not ready; no new streams");
    health
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    shutdown.cancel();
    streams.close();
    connections.close();
    let drained = tokio::time::timeout(config.shutdown_timeout, async {
        streams.wait().await;
        connections.wait().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            timeout = %humantime::format_duration(config.shutdown_timeout),
            "shutdown: deadline passed; exiting with streams still open (leases will expire)"
        );
    }
    let _ = serving.await;
    background.cancel();
    tracing::info!("shutdown: done");
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("shutdown: SIGTERM received"),
        _ = int.recv() => tracing::info!("shutdown: SIGINT received"),
    }
    Ok(())
}
