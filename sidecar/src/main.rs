//! `reprise-sidecar --config FILE [--check]`
//!
//! Lifecycle: config (invalid config exits 2 before any port is bound) → tracing →
//! descriptors → bind (a port in use exits 2) → job store → serve → wait for SIGTERM/SIGINT → drain, bounded by
//! `shutdown_timeout` → exit 0.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
};

use anyhow::Context as _;
use clap::Parser;
use reprise_jobs::Owner;
use reprise_sidecar::{
    admin::{self, Health, Metrics},
    checkpoint::Checkpointer,
    config::{Config, DescriptorSource, LogFormat, ResumeMode},
    descriptors::{self, ResumableMethod},
    events::Events,
    listen::{self, Listener},
    proxy::{self, Proxy},
    server,
    shutdown::{self, Shutdown},
    store::Store,
    stream::StreamCtx,
};
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
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = if config.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.worker_threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
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
                    "\n  {} (offset {}, resume {})\n    {}",
                    m.name,
                    m.offset_field,
                    m.resume_field,
                    m.fields_note()
                ))
                .collect::<String>()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for m in &methods {
        tracing::info!(method = %m.name, offset_field = %m.offset_field, resume_field = %m.resume_field, "resumable method; {}", m.fields_note());
    }

    // Both ports before any other I/O: one in use is a configuration error (exit 2).
    let (listener, admin_listener) = match (
        listen::bind("listen", config.listen).await,
        listen::bind("metrics_listen", config.metrics_listen).await,
    ) {
        (Ok(app), Ok(admin)) => (app, admin),
        (app, admin) => {
            let errors: Vec<String> = [app.err(), admin.err()].into_iter().flatten().collect();
            eprintln!(
                "reprise-sidecar: invalid configuration:\n{}",
                errors.join("\n")
            );
            return Ok(ExitCode::from(2));
        }
    };
    let metrics = Arc::new(Metrics::default());
    let listener = Listener::new(listener, "app", &metrics, config.preface_timeout)
        .limit(config.max_app_connections, &metrics);
    let admin_listener = Listener::new(admin_listener, "admin", &metrics, config.preface_timeout);
    let health = Arc::new(Health::default());
    let owner = Owner::new(
        config.pod_name.clone(),
        uuid::Uuid::new_v4().simple().to_string(),
    )
    .in_namespace(config.pod_namespace.clone())
    .with_uid(config.pod_uid.clone());
    if config.redis_url.is_none() {
        tracing::warn!(
            "no redis_url: offsets live in this process only (resume survives upstream failures, not a sidecar restart)"
        );
    }
    let redis = config
        .redis_url
        .clone()
        .map(|url| (url, config.key_prefix.clone()));
    let store =
        Arc::new(Store::new(redis, Some(owner.clone()), health.clone(), metrics.clone()).await);
    let events = Arc::new(match (&config.amqp_url, store.redis()) {
        (Some(url), Some(redis)) => {
            match Events::start(url, &config.key_prefix, &config.service, &owner, redis) {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("reprise-sidecar: invalid configuration:\n{e}");
                    return Ok(ExitCode::from(2));
                }
            }
        }
        (Some(_), None) => {
            tracing::error!(
                "amqp_url is set but redis is unreachable at start-up: handoff events are disabled for this run (they need the Redis outbox)"
            );
            Events::disabled(&config.service, &owner)
        }
        (None, _) => Events::disabled(&config.service, &owner),
    });
    let checkpointer = Arc::new(Checkpointer::new(
        store.clone(),
        metrics.clone(),
        config.checkpoint_interval,
        config.lease_ttl,
    ));

    // Released at once: jobs an earlier sidecar of this pod left running (container restart).
    store.release_previous_instances(&owner, &events).await;

    let accept = CancellationToken::new();
    let consumer = CancellationToken::new();
    let interrupt = CancellationToken::new();
    let background = CancellationToken::new();
    let streams = TaskTracker::new();
    let connections = TaskTracker::new();
    let ctx = Arc::new(StreamCtx::new(
        proxy::Upstream::new(
            config.upstream.clone(),
            config.upstream_connections,
            config.max_metadata_bytes,
            &metrics,
        ),
        store.clone(),
        checkpointer.clone(),
        metrics.clone(),
        owner.clone(),
        config.service.clone(),
        &config,
        interrupt.clone(),
        accept.clone(),
        events.clone(),
        streams.clone(),
    ));
    let methods: Vec<Arc<ResumableMethod>> = methods.into_iter().map(Arc::new).collect();
    let deliver: HashMap<String, Arc<ResumableMethod>> = methods
        .iter()
        .filter(|m| m.mode == ResumeMode::Deliver)
        .map(|m| (m.name.clone(), m.clone()))
        .collect();
    let proxy = Arc::new(Proxy::new(methods, ctx.clone()));

    tokio::spawn(admin::serve(
        admin_listener,
        metrics.clone(),
        health.clone(),
        background.clone(),
    ));
    tokio::spawn(checkpointer.clone().run(background.clone()));
    tokio::spawn(store.clone().watch_redis(background.clone()));
    events.spawn_drainer(background.clone());
    if let (false, Some(sink)) = (deliver.is_empty(), config.resume_sink.clone()) {
        tokio::spawn(events.clone().consume(ctx, deliver, sink, consumer.clone()));
    }
    tokio::spawn(server::serve(
        listener,
        proxy,
        accept.clone(),
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

    shutdown::first_signal()
        .await
        .context("installing signal handlers")?;
    let ending = Shutdown {
        health,
        accept,
        drain_period: config.drain_period,
        consumer,
        interrupt,
        streams,
        connections,
        events,
        background,
        timeout: config.shutdown_timeout,
    }
    .run()
    .await;
    // A forced exit is still an orderly one: what is left is found through leases.
    tracing::info!(?ending, "reprise-sidecar exiting");
    Ok(ExitCode::SUCCESS)
}
