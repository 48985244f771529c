//! `reprise-sidecar --config FILE [--check]`: the configuration (invalid: exit 2, before
//! anything else), tracing and the runtime; the rest of the sidecar's life is
//! [`reprise_sidecar::app`].

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode};

use clap::Parser;
use reprise_sidecar::{
    app,
    config::{Config, LogFormat},
};

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
    match runtime.block_on(app::run(config, cli.check)) {
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
