//! The command line, parsed into one typed struct. Bad usage is clap's to report (exit 2).

use std::num::NonZeroUsize;

use clap::builder::{NonEmptyStringValueParser, PossibleValuesParser, TypedValueParser as _};
use clap::{Args, Parser, Subcommand, ValueEnum};
use reprise_jobs::{DEFAULT_PREFIX, JobStatus};

/// Flags every command takes, listed apart from each command's own.
const GLOBAL: &str = "Global options";

/// The Redis the sidecar uses when its configuration names none.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

#[derive(Debug, Parser)]
#[command(
    name = "reprise",
    version,
    about = "Inspect the jobs Reprise sidecars keep in Redis"
)]
pub struct Cli {
    /// Redis holding the jobs (the sidecar's `redis_url`).
    // The value may carry a password: keep it out of `--help`.
    #[arg(
        long,
        global = true,
        help_heading = GLOBAL,
        env = "REPRISE_REDIS_URL",
        hide_env_values = true,
        default_value = DEFAULT_REDIS_URL
    )]
    pub redis_url: String,

    /// Key prefix (the sidecar's `key_prefix`).
    #[arg(
        long,
        global = true,
        help_heading = GLOBAL,
        env = "REPRISE_KEY_PREFIX",
        default_value = DEFAULT_PREFIX,
        value_parser = NonEmptyStringValueParser::new()
    )]
    pub prefix: String,

    /// Output format.
    #[arg(long, short, global = true, help_heading = GLOBAL, value_enum, default_value_t = Output::Table)]
    pub output: Output,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns (ls) or `field: value` lines (show), for people.
    Table,
    /// A JSON array (ls) or object (show) with every field, for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Jobs: one per resumable stream (`{prefix}:job:{id}` hashes).
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Add the sidecar to every pod template that asks for it (`reprise.dev/inject: enabled`),
    /// offline: the YAML is written back to stdout, unchanged documents exactly as read.
    Inject(InjectArgs),
}

#[derive(Debug, Clone, Args)]
pub struct InjectArgs {
    /// The manifests (several documents, Lists, any workload kind); `-` or absent: stdin.
    pub file: Option<std::path::PathBuf>,
    /// The sidecar's image, unless a pod sets `reprise.dev/image`.
    #[arg(long, default_value = "reprise:latest")]
    pub image: String,
    /// The sidecar's imagePullPolicy, unless a pod sets `reprise.dev/image-pull-policy`.
    #[arg(long, value_parser = ["Always", "IfNotPresent", "Never"], default_value = "IfNotPresent")]
    pub image_pull_policy: String,
    /// Add the sidecar as a plain container by default (clusters older than Kubernetes 1.29);
    /// a pod's `reprise.dev/native-sidecar` still wins.
    #[arg(long)]
    pub classic_sidecar: bool,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, most recently updated first.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Every field of one job.
    Show {
        /// The job id (the part of the key after `{prefix}:job:`).
        id: String,
    },
}

#[derive(Debug, Clone, Default, Args)]
pub struct LsArgs {
    /// Only jobs in this status.
    #[arg(long, value_parser = status_parser())]
    pub status: Option<JobStatus>,
    /// Only jobs of this service (the sidecar's `service`).
    #[arg(long)]
    pub service: Option<String>,
    /// Only jobs whose current or last owner is this pod (`NAME`, or `NAMESPACE/NAME`).
    #[arg(long)]
    pub pod: Option<String>,
    /// At most this many jobs (the most recently updated).
    #[arg(long)]
    pub limit: Option<NonZeroUsize>,
}

/// Accepts exactly the texts the jobs crate stores, so the two cannot drift apart.
fn status_parser() -> impl clap::builder::TypedValueParser<Value = JobStatus> {
    PossibleValuesParser::new(JobStatus::ALL.map(JobStatus::as_str))
        .try_map(|text| text.parse::<JobStatus>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_before_or_after_the_subcommand() -> Result<(), clap::Error> {
        for argv in [
            &["reprise", "--output", "json", "jobs", "ls"][..],
            &["reprise", "jobs", "ls", "-o", "json"][..],
        ] {
            let cli = Cli::try_parse_from(argv)?;
            assert_eq!(cli.output, Output::Json);
        }
        Ok(())
    }

    #[test]
    fn every_status_is_accepted_and_nothing_else() -> Result<(), clap::Error> {
        for status in JobStatus::ALL {
            let cli = Cli::try_parse_from(["reprise", "jobs", "ls", "--status", status.as_str()])?;
            match cli.command {
                Command::Jobs(JobsCommand::Ls(ls)) => assert_eq!(ls.status, Some(status)),
                other => panic!("parsed as {other:?}"),
            }
        }
        assert!(Cli::try_parse_from(["reprise", "jobs", "ls", "--status", "Running"]).is_err());
        assert!(Cli::try_parse_from(["reprise", "jobs", "ls", "--limit", "0"]).is_err());
        assert!(Cli::try_parse_from(["reprise", "--prefix", "", "jobs", "ls"]).is_err());
        Ok(())
    }

    #[test]
    fn inject_takes_a_file_or_stdin() -> Result<(), clap::Error> {
        let cli = Cli::try_parse_from(["reprise", "inject", "-", "--image", "r:1"])?;
        match cli.command {
            Command::Inject(args) => {
                assert_eq!(args.file.as_deref(), Some(std::path::Path::new("-")));
                assert_eq!(args.image, "r:1");
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(
            Cli::try_parse_from(["reprise", "inject", "--image-pull-policy", "Sometimes"]).is_err()
        );
        Ok(())
    }
}
