//! `reprise jobs ls | show ID`: what the sidecars keep in Redis, for operators.
//! `reprise inject [FILE|-]`: the sidecar added to manifests, offline (no Redis, no cluster).
//!
//! Lifecycle: arguments (bad usage exits 2, reported by clap) → connect to Redis (unreachable
//! exits 1, naming the URL with its password masked) → one read-only command → print → exit 0,
//! or 1 when something could not be read. `inject` exits 2 on an invalid annotation.

mod args;
mod commands;
mod format;
mod inject;
mod render;
mod source;

use std::io::{self, Write as _};
use std::process::ExitCode;

use clap::Parser as _;

use crate::args::{Cli, Command, JobsCommand};
use crate::commands::Outcome;
use crate::source::Jobs;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let jobs_command = match &cli.command {
        Command::Jobs(command) => command,
        // Offline: no Redis, no runtime.
        Command::Inject(args) => {
            return match inject::run(args) {
                Ok(outcome) => finish(outcome),
                Err(inject::Failure { message, code }) => {
                    eprintln!("reprise: {message}");
                    ExitCode::from(code)
                }
            };
        }
    };
    // One command, a handful of round trips: a single thread is plenty.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&anyhow::Error::new(e).context("cannot start the runtime")),
    };
    match runtime.block_on(run(&cli, jobs_command)) {
        Ok(outcome) => finish(outcome),
        Err(e) => fail(&e),
    }
}

async fn run(cli: &Cli, command: &JobsCommand) -> anyhow::Result<Outcome> {
    let jobs = Jobs::connect(&cli.redis_url, &cli.prefix).await?;
    match command {
        JobsCommand::Ls(args) => commands::ls(&jobs, args, cli.output).await,
        JobsCommand::Show { id } => commands::show(&jobs, id, cli.output).await,
    }
}

fn finish(outcome: Outcome) -> ExitCode {
    let mut stdout = io::stdout().lock();
    let written = stdout
        .write_all(outcome.stdout.as_bytes())
        .and_then(|()| stdout.flush());
    match written {
        // The reader went away (`reprise jobs ls | head`): nothing left to tell it.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => return fail(&anyhow::Error::new(e).context("cannot write to stdout")),
        Ok(()) => {}
    }
    for note in &outcome.notes {
        eprintln!("reprise: {note}");
    }
    if outcome.complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("reprise: {}", one_line(e));
    ExitCode::FAILURE
}

/// The error and its causes on one line, each cause once: the store's errors already quote
/// their source, and the Redis client's may span lines.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn causes_are_joined_once_on_one_line() {
        let quoted = anyhow::anyhow!("refused").context("cannot connect: refused");
        assert_eq!(one_line(&quoted), "cannot connect: refused");
        let chained = anyhow::anyhow!("line one\nline two").context("outer");
        assert_eq!(one_line(&chained), "outer: line one line two");
    }
}
