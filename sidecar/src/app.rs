//! The sidecar's life, in the order it happens: validate everything (configuration, then the
//! descriptors; `--check` stops here), bind both ports (a port in use exits 2), build the parts
//! (job store, events, checkpointer, stream context, proxy), spawn them, and on SIGTERM/SIGINT
//! run the ordered [`Shutdown`].
//!
//! Nothing is bound or connected before the whole configuration is known to be valid, as
//! linkerd2-proxy loads its configuration "without binding ports": an invalid configuration
//! exits 2 having touched nothing.

use std::{collections::HashMap, process::ExitCode, sync::Arc};

use anyhow::Context as _;
use reprise_jobs::Owner;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    admin,
    checkpoint::Checkpointer,
    config::{Config, DescriptorSource, ResumeMode},
    descriptors::{self, ResumableMethod},
    events::Events,
    handoff,
    listen::{self, Listener},
    metrics::{Health, Metrics},
    proxy::Proxy,
    server,
    shutdown::{self, Shutdown},
    store::Store,
    stream::{StreamCtx, StreamSettings},
    upstream::Upstream,
};

/// Runs the sidecar with a valid `config` until its shutdown ends; `check` stops after
/// validation. Exit 2 for what the user must fix (descriptors, ports), 0 otherwise.
pub async fn run(config: Config, check: bool) -> anyhow::Result<ExitCode> {
    let methods = match resolve_methods(&config).await {
        Ok(methods) => methods,
        Err(errors) => return Ok(invalid(&errors)),
    };
    if check {
        print_check(&methods);
        return Ok(ExitCode::SUCCESS);
    }
    for m in &methods {
        tracing::info!(method = %m.name, offset_field = %m.offset_field, resume_field = %m.resume_field, "resumable method; {}", m.fields_note());
    }
    let (app_port, admin_port) = match bind(&config).await {
        Ok(ports) => ports,
        Err(errors) => return Ok(invalid(&errors)),
    };
    let app = App::build(config, methods, app_port, admin_port).await;
    let shutdown = app.spawn();
    shutdown::first_signal()
        .await
        .context("installing signal handlers")?;
    let ending = shutdown.run().await;
    // A forced exit is still an orderly one: what is left is found through leases.
    tracing::info!(?ending, "reprise-sidecar exiting");
    Ok(ExitCode::SUCCESS)
}

/// Exit 2 naming every problem.
fn invalid(errors: &[String]) -> ExitCode {
    eprintln!(
        "reprise-sidecar: invalid configuration:\n{}",
        errors.join("\n")
    );
    ExitCode::from(2)
}

/// The configured streams resolved against the descriptors (from a file, or from the
/// upstream's reflection service); only needed when something is resumable.
async fn resolve_methods(config: &Config) -> Result<Vec<ResumableMethod>, Vec<String>> {
    if config.streams.is_empty() {
        return Ok(Vec::new());
    }
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
    pool.map_err(|e| vec![e])
        .and_then(|pool| descriptors::resolve(&pool, &config.streams))
}

fn print_check(methods: &[ResumableMethod]) {
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
}

/// Both ports before any other I/O: one in use is a configuration error.
async fn bind(config: &Config) -> Result<(TcpListener, TcpListener), Vec<String>> {
    match (
        listen::bind("listen", config.listen).await,
        listen::bind("metrics_listen", config.metrics_listen).await,
    ) {
        (Ok(app), Ok(admin)) => Ok((app, admin)),
        (app, admin) => Err([app.err(), admin.err()].into_iter().flatten().collect()),
    }
}

/// The sidecar's parts, built and not yet running.
struct App {
    config: Config,
    listener: Listener,
    admin_listener: Listener,
    health: Arc<Health>,
    /// Holds the store, the checkpointer, the events and the metrics the other parts share.
    ctx: Arc<StreamCtx>,
    proxy: Arc<Proxy>,
    /// The `resume: deliver` methods, by name: what the handoff consumer takes.
    deliver: HashMap<String, Arc<ResumableMethod>>,
    /// The ordered shutdown's tokens (see [`Shutdown`]).
    consumer: CancellationToken,
    background: CancellationToken,
    connections: TaskTracker,
}

impl App {
    async fn build(
        config: Config,
        methods: Vec<ResumableMethod>,
        app_port: TcpListener,
        admin_port: TcpListener,
    ) -> App {
        let metrics = Arc::new(Metrics::default());
        let listener = Listener::new(app_port, "app", &metrics, config.preface_timeout)
            .limit(config.max_app_connections, &metrics);
        let admin_listener = Listener::new(admin_port, "admin", &metrics, config.preface_timeout);
        let health = Arc::new(Health::default());
        let owner = Owner::new(
            config.pod_name.clone(),
            uuid::Uuid::new_v4().simple().to_string(),
        )
        .in_namespace(config.pod_namespace.clone())
        .with_uid(config.pod_uid.clone());
        let store = connect_store(&config, &owner, &health, &metrics).await;
        let events = Arc::new(start_events(&config, &owner, &store));
        let checkpointer = Arc::new(Checkpointer::new(
            store.clone(),
            metrics.clone(),
            config.checkpoint_interval,
            config.lease_ttl,
        ));
        // Released at once: jobs an earlier sidecar of this pod left running (container restart).
        handoff::release::release_previous_instances(&store, &owner, &events).await;

        let ctx = Arc::new(StreamCtx {
            upstream: Upstream::new(
                config.upstream.clone(),
                config.upstream_connections,
                config.max_metadata_bytes,
                &metrics,
            ),
            store,
            checkpointer,
            metrics,
            owner,
            events,
            settings: StreamSettings::from_config(&config),
            accept: CancellationToken::new(),
            interrupt: CancellationToken::new(),
            tracker: TaskTracker::new(),
            active: Arc::default(),
        });
        let methods: Vec<Arc<ResumableMethod>> = methods.into_iter().map(Arc::new).collect();
        let deliver = methods
            .iter()
            .filter(|m| m.mode == ResumeMode::Deliver)
            .map(|m| (m.name.clone(), m.clone()))
            .collect();
        let proxy = Arc::new(Proxy::new(methods, ctx.clone()));
        App {
            config,
            listener,
            admin_listener,
            health,
            ctx,
            proxy,
            deliver,
            consumer: CancellationToken::new(),
            background: CancellationToken::new(),
            connections: TaskTracker::new(),
        }
    }

    /// Starts every part; returns the shutdown that stops them in order.
    fn spawn(self) -> Shutdown {
        let (ctx, config, background) = (self.ctx, self.config, self.background);
        tokio::spawn(admin::serve(
            self.admin_listener,
            ctx.metrics.clone(),
            self.health.clone(),
            background.clone(),
        ));
        tokio::spawn(ctx.checkpointer.clone().run(background.clone()));
        tokio::spawn(ctx.store.clone().watch_redis(background.clone()));
        ctx.events.spawn_drainer(background.clone());
        if let (false, Some(sink)) = (self.deliver.is_empty(), config.resume_sink.clone()) {
            tokio::spawn(handoff::consumer::consume(
                ctx.events.clone(),
                ctx.clone(),
                self.deliver,
                sink,
                self.consumer.clone(),
            ));
        }
        tokio::spawn(server::serve(
            self.listener,
            self.proxy,
            ctx.accept.clone(),
            self.connections.clone(),
        ));
        self.health
            .serving
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            listen = %config.listen,
            upstream = %config.upstream,
            metrics = %config.metrics_listen,
            pod = %ctx.owner.pod,
            instance = %ctx.owner.instance,
            service = %config.service,
            "reprise-sidecar ready"
        );
        Shutdown {
            health: self.health,
            accept: ctx.accept.clone(),
            drain_period: config.drain_period,
            consumer: self.consumer,
            interrupt: ctx.interrupt.clone(),
            streams: ctx.tracker.clone(),
            connections: self.connections,
            store: ctx.store.clone(),
            events: ctx.events.clone(),
            background,
            timeout: config.shutdown_timeout,
        }
    }
}

/// The job store: Redis when configured (reconnected in the background if it is down now),
/// the in-process store otherwise.
async fn connect_store(
    config: &Config,
    owner: &Owner,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
) -> Arc<Store> {
    if config.redis_url.is_none() {
        tracing::warn!(
            "no redis_url: offsets live in this process only (resume survives upstream failures, not a sidecar restart)"
        );
    }
    let redis = config
        .redis_url
        .clone()
        .map(|url| (url, config.key_prefix.clone()));
    Arc::new(Store::new(redis, Some(owner.clone()), health.clone(), metrics.clone()).await)
}

/// The handoff events: published through RabbitMQ with the Redis outbox, or not at all.
fn start_events(config: &Config, owner: &Owner, store: &Store) -> Events {
    match (&config.amqp_url, store.redis()) {
        (Some(url), Some(redis)) => {
            // The URL was checked with the configuration; what is left is a broker that is not
            // there yet, which the bus reconnects to in the background.
            Events::start(url, &config.key_prefix, &config.service, owner, redis).unwrap_or_else(
                |e| {
                    tracing::error!(error = %e, "handoff events are disabled for this run");
                    Events::disabled(&config.service, owner)
                },
            )
        }
        (Some(_), None) => {
            tracing::error!(
                "amqp_url is set but redis is unreachable at start-up: handoff events are disabled for this run (they need the Redis outbox)"
            );
            Events::disabled(&config.service, owner)
        }
        (None, _) => Events::disabled(&config.service, owner),
    }
}
