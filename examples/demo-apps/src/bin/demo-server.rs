//! demo-server: the demo's upstream. See `--help`.

use std::collections::HashSet;
use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use reprise_demo::server::{self, Config};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Serves demo.v1.UserService, demo.v1.EventService, demo.v1.LedgerService and the talk's
/// pb.Server (plus gRPC health and reflection) over h2c, with flags that inject the faults
/// Reprise must survive.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on; the bound address is printed as `listening on ADDR`.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Write the demo's FileDescriptorSet (demo.v1 and pb) to FILE and exit.
    #[arg(long, value_name = "FILE")]
    write_descriptors: Option<PathBuf>,
    /// Number of users in the mocked database.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Messages of pb.Server/GetData: Values 0 .. N-1.
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(..=i64::from(i32::MAX)))]
    data: u32,
    /// Sleep this many microseconds before every streamed message.
    #[arg(long, value_name = "N", default_value_t = 0)]
    delay_us: u64,
    /// Treat after_user_id / start.after_seq / after_position as "from, inclusive" (GetData's
    /// Offset is inclusive anyway).
    #[arg(long)]
    inclusive: bool,
    /// Exit abruptly (code 3, no shutdown) once N streamed messages were sent in total.
    #[arg(long, value_name = "N")]
    exit_after: Option<u64>,
    /// End every stream with UNAVAILABLE after N messages of that stream.
    #[arg(long, value_name = "N")]
    unavailable_after: Option<u64>,
    /// Panic while producing this user (recovered; the user is skipped). Repeatable.
    #[arg(long, value_name = "ID")]
    panic_on: Vec<String>,
    /// Add an `x-pad` entry of N bytes to every GetUser response's metadata (large headers).
    #[arg(long, value_name = "N", default_value_t = 0)]
    metadata_bytes: usize,
    /// On SIGTERM/SIGINT, how long connections get to close before the process exits anyway.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Inject faults on signals: SIGUSR1 ends every stream in flight with UNAVAILABLE, SIGUSR2
    /// resets every response in flight (RST_STREAM). Without this flag both signals keep
    /// their default action (the process ends).
    #[arg(long)]
    faults_on_signal: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(path) = &args.write_descriptors {
        return std::fs::write(path, reprise_proto::DEMO_DESCRIPTOR_SET)
            .with_context(|| format!("writing {}", path.display()));
    }
    let config = Config {
        users: args.users,
        data: args.data,
        delay: Duration::from_micros(args.delay_us),
        inclusive: args.inclusive,
        exit_after: args.exit_after,
        unavailable_after: args.unavailable_after,
        panic_on: args.panic_on.into_iter().collect::<HashSet<_>>(),
        metadata_bytes: args.metadata_bytes,
        faults: Arc::default(),
    };
    if args.faults_on_signal {
        let mut usr1 =
            signal(SignalKind::user_defined1()).context("installing the SIGUSR1 handler")?;
        let mut usr2 =
            signal(SignalKind::user_defined2()).context("installing the SIGUSR2 handler")?;
        let faults = Arc::clone(&config.faults);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = usr1.recv() => faults.inject_unavailable(),
                    Some(()) = usr2.recv() => faults.inject_reset(),
                    else => break,
                }
            }
        });
    }
    server::quiet_injected_panics();
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let local = listener.local_addr().context("reading the bound address")?;
    info!(
        users = config.users,
        data = config.data,
        ?config.exit_after,
        ?config.unavailable_after,
        "serving"
    );
    // Scripts wait for this line; print it only once the port accepts connections.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {local}")?;
    stdout.flush()?;

    let shutdown = CancellationToken::new();
    let mut server = tokio::spawn(server::serve(listener, config, shutdown.clone()));
    tokio::select! {
        result = &mut server => return Ok(result??),
        _ = sigterm.recv() => info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT"),
    }
    shutdown.cancel();
    match tokio::time::timeout(args.grace, server).await {
        Ok(result) => result??,
        Err(_) => {
            warn!(grace = ?args.grace, "connections still open after the grace period; exiting")
        }
    }
    Ok(())
}
