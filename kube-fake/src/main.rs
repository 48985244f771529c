//! `reprise-fake-apiserver [--listen 127.0.0.1:0] [--kubeconfig FILE]`
//!
//! Lifecycle: flags (a bad one exits 2, naming it) → logs on stderr → bind `--listen` (an
//! address it cannot bind exits 2 too) → signal handlers (so that a SIGTERM right after the
//! ready line is handled, not fatal) → the kubeconfig, if asked for → one line
//! `listening on ADDR` on stdout, the sign that it is ready → SIGTERM or SIGINT → exit 0.

use std::{
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::Parser;
use reprise_kube_fake::FakeApiServer;
use tokio::signal::unix::{SignalKind, signal};

const NAME: &str = "reprise-fake-apiserver";

#[derive(Parser)]
#[command(
    version,
    about = "A fake Kubernetes API server for pods (list, watch, create, replace, merge patch, \
             delete) over plain HTTP, for tests and demos: not a Kubernetes"
)]
struct Cli {
    /// Where to serve; port 0 picks a free one, printed on the `listening on` line.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Writes a kubeconfig for the server (plain HTTP, no credentials, namespace `default`) to
    /// FILE before the `listening on` line; give it to a client as KUBECONFIG.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{NAME}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let server = match FakeApiServer::bind(cli.listen).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("{NAME}: --listen {}: cannot listen there: {e}", cli.listen);
            return ExitCode::from(2);
        }
    };
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{NAME}: cannot install the signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &cli.kubeconfig
        && let Err(e) = write_kubeconfig(path, &server.kubeconfig())
    {
        eprintln!(
            "{NAME}: --kubeconfig {}: cannot write it: {e}",
            path.display()
        );
        return ExitCode::from(2);
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "listening on {}", server.addr()).and_then(|()| stdout.flush())
    {
        eprintln!("{NAME}: cannot write the ready line to stdout: {e}");
        return ExitCode::FAILURE;
    }
    drop(stdout);
    tracing::info!(url = %server.url(), kubeconfig = ?cli.kubeconfig, "serving pods");

    let signal = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal, "stopping");
    drop(server);
    ExitCode::SUCCESS
}

/// Written whole or not at all: a reader that sees the file sees all of it.
fn write_kubeconfig(path: &Path, text: &str) -> std::io::Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    std::fs::write(&partial, text)?;
    std::fs::rename(&partial, path)
}
