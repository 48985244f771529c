//! `reprise-injector --config FILE`: the mutating admission webhook.
//!
//! Lifecycle: config (invalid config exits 2) → the certificate pair (one that does not load is
//! a configuration error: exit 2 naming `tls_cert` or `tls_key`) → both ports (a busy one: exit
//! 2 naming it) → tracing → serve, re-reading the certificate when its files change → SIGTERM
//! → not ready, stop accepting, finish the requests in flight (bounded by `shutdown_timeout`)
//! → exit 0.

#[path = "../webhook/mod.rs"]
mod webhook;

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode, sync::Arc};

use clap::Parser;
use reprise_jobs::config_file;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use webhook::{
    admin::{self, Health, Metrics},
    config::Config,
    server::{self, Webhook},
    tls::Reloading,
};

#[derive(Parser)]
#[command(version, about = "Adds the Reprise sidecar to pods that ask for it")]
struct Cli {
    /// YAML configuration; every key can be overridden by env REPRISE_<KEY>.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Validate the configuration and the certificate pair, then exit (0 valid, 2 invalid).
    #[arg(long)]
    check: bool,
}

fn invalid(lines: &str) -> ExitCode {
    eprintln!("reprise-injector: invalid configuration:\n{lines}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let config = match Config::load(cli.config.as_deref(), &env) {
        Ok(c) => c,
        Err(errors) => return invalid(&errors.join("\n")),
    };
    let certificate = match Reloading::load(&config.tls_cert, &config.tls_key) {
        Ok(c) => c,
        Err(e) => return invalid(&e.to_string()),
    };
    let tls = match certificate.server_config() {
        Ok(c) => tokio_rustls::TlsAcceptor::from(Arc::new(c)),
        Err(e) => return invalid(&format!("key `tls_cert`: {e}")),
    };
    if cli.check {
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }
    let (listener, admin) = match (bind(config.listen), bind(config.metrics_listen)) {
        (Ok(l), Ok(a)) => (l, a),
        (Err(e), _) => return invalid(&busy("listen", config.listen, &e)),
        (_, Err(e)) => return invalid(&busy("metrics_listen", config.metrics_listen, &e)),
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
            eprintln!("reprise-injector: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, certificate, tls, listener, admin)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "reprise-injector failed");
            ExitCode::FAILURE
        }
    }
}

fn busy(key: &str, addr: std::net::SocketAddr, e: &std::io::Error) -> String {
    format!(
        "key `{key}`: cannot listen on {addr}: {e}; valid: an IP:PORT of this host that nothing else listens on"
    )
}

/// The client that reads namespaces, as `kube` says (for `auto`: when Kubernetes is configured).
/// `Err` only when `kube: true` and no client can be built.
async fn kube_client(kube: Option<bool>) -> Result<Option<kube::Client>, String> {
    if !kube.unwrap_or_else(config_file::kube_configured) {
        return Ok(None);
    }
    // kube's TLS is rustls with ring; install it as the process default once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match kube::Client::try_default().await {
        Ok(c) => Ok(Some(c)),
        Err(e) if kube == Some(true) => Err(format!(
            "key `kube`: true, but no Kubernetes client could be built (KUBECONFIG or in-cluster): {e}"
        )),
        Err(e) => {
            tracing::warn!(error = %e, "kubernetes not reachable");
            Ok(None)
        }
    }
}

/// Bound before the runtime starts, so that a busy port is reported as the configuration error
/// it is.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

async fn run(
    config: Config,
    certificate: Arc<Reloading>,
    tls: tokio_rustls::TlsAcceptor,
    listener: std::net::TcpListener,
    admin: std::net::TcpListener,
) -> anyhow::Result<ExitCode> {
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let shutdown = CancellationToken::new();
    let connections = TaskTracker::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;

    // The admin port outlives the drain: /readyz answers 503 and /metrics stays scrapeable.
    let admin_stop = CancellationToken::new();
    tokio::spawn(admin::serve(
        tokio::net::TcpListener::from_std(admin)?,
        metrics.clone(),
        health.clone(),
        admin_stop.clone(),
    ));
    tokio::spawn(certificate.watch(shutdown.clone()));
    let namespaces = match kube_client(config.kube).await {
        Ok(Some(client)) => Some(webhook::namespaces::Namespaces::new(
            client,
            config.namespace_cache_ttl,
        )),
        Ok(None) => {
            tracing::warn!(
                "no Kubernetes API: namespace annotations are not applied, pods decide alone"
            );
            None
        }
        Err(e) => {
            eprintln!("reprise-injector: invalid configuration:\n{e}");
            return Ok(ExitCode::from(2));
        }
    };
    let webhook = Arc::new(Webhook {
        settings: config.settings(),
        metrics,
        namespaces,
    });
    let server = tokio::spawn(server::serve(
        tokio::net::TcpListener::from_std(listener)?,
        tls,
        webhook,
        shutdown.clone(),
        connections.clone(),
    ));
    tracing::info!(listen = %config.listen, metrics = %config.metrics_listen, "reprise-injector ready");

    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutdown: 1. not ready, no new connections");
    health
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    shutdown.cancel();
    let _ = server.await;
    connections.close();
    tracing::info!(
        open = connections.len(),
        "shutdown: 2. finishing the requests in flight"
    );
    if tokio::time::timeout(config.shutdown_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "shutdown: deadline passed; exiting anyway"
        );
    }
    admin_stop.cancel();
    tracing::info!("shutdown: done");
    Ok(ExitCode::SUCCESS)
}
