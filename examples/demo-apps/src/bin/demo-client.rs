//! demo-client: calls the demo services (directly or through a Reprise sidecar) and prints one
//! JSON line judging what arrived. Exit code 0 iff it was exactly right, 1 if not, 2 on a
//! usage or local error.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use reprise_demo::client::{
    self, ChatOptions, Connection, DataOptions, EventsOptions, LedgerOptions, UsersOptions,
    parse_key_value,
};

#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The gRPC target: the sidecar's listen address, or the server itself.
    #[arg(long, global = true, default_value = "http://127.0.0.1:15001")]
    target: String,
    /// Request metadata, sent with every call. Repeatable.
    #[arg(long = "metadata", value_name = "KEY=VALUE", global = true, value_parser = parse_key_value)]
    metadata: Vec<(String, String)>,
    /// gRPC deadline for the whole call, e.g. 30s.
    #[arg(long, value_name = "DURATION", global = true, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// The HTTP/2 initial stream window to announce, in bytes (default tonic's, 2 MiB): what
    /// the client may hold unread.
    #[arg(long, value_name = "BYTES", global = true)]
    window: Option<u32>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// ListUsers: check strict ascending order, no duplicates, and with --expect-users that
    /// exactly the right users arrived.
    Users {
        /// Only this role ("" = all).
        #[arg(long, default_value = "")]
        role: String,
        /// At most this many users (0 = all).
        #[arg(long, default_value_t = 0)]
        limit: u32,
        /// Strictly after this user id.
        #[arg(long, value_name = "ID", default_value = "")]
        after: String,
        /// Request label. Repeatable.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        labels: Vec<(String, String)>,
        /// Sleep this many microseconds after every message (a slow consumer).
        #[arg(long, value_name = "N", default_value_t = 0)]
        slow_us: u64,
        /// Append every received user_id to FILE, one line per message as it arrives.
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
        /// The server's --users: check the stream against the generated database.
        #[arg(long, value_name = "N")]
        expect_users: Option<usize>,
        /// A user the server panics on (and skips), so not expected. Repeatable.
        #[arg(long, value_name = "ID")]
        skip: Vec<String>,
    },
    /// StreamEvents: check seqs are exactly after+1..=count, once each, in order.
    Events {
        #[arg(long, default_value_t = 1000)]
        count: u64,
        #[arg(long, default_value_t = 16)]
        payload_bytes: u32,
        #[arg(long, default_value = "demo")]
        topic: String,
        /// Strictly after this seq.
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        after: u64,
        /// Sleep this many microseconds after every message (a slow consumer).
        #[arg(long, value_name = "N", default_value_t = 0)]
        slow_us: u64,
    },
    /// pb.Server/GetData (the talk's interface): check Values are exactly OFFSET..N-1 (from
    /// --offset, inclusive), once each, in order, each with its user's UserID and Name.
    Data {
        /// The server's --data N: Values 0..N-1 exist.
        #[arg(long, value_name = "N", default_value_t = 10_000)]
        expect: u32,
        /// DataRequest.Offset: from this Value, inclusive (0 = from the start).
        #[arg(
            long,
            value_name = "K",
            default_value_t = 0,
            allow_negative_numbers = true
        )]
        offset: i32,
        /// Sleep this many microseconds after every message (a slow consumer).
        #[arg(long, value_name = "N", default_value_t = 0)]
        slow_us: u64,
        /// Append every received Value to FILE, one line per message as it arrives.
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
    },
    /// demo.v1.LedgerService/StreamEntries: check positions are exactly FIRST..FIRST+COUNT-1
    /// (strictly after --after when given), once each, in order, each with its note.
    Ledger {
        /// The ledger's first position (may be negative).
        #[arg(
            long,
            value_name = "F",
            default_value_t = 0,
            allow_negative_numbers = true
        )]
        first: i64,
        /// The ledger's length.
        #[arg(long, value_name = "N", default_value_t = 1000)]
        count: u64,
        /// Send after_position P (explicit presence: 0 is sent too); absent: not sent.
        #[arg(long, value_name = "P", allow_negative_numbers = true)]
        after: Option<i64>,
        /// Sleep this many microseconds after every message (a slow consumer).
        #[arg(long, value_name = "N", default_value_t = 0)]
        slow_us: u64,
        /// Append every received position to FILE, one line per message as it arrives.
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
    },
    /// GetUser: print the user, or the status with its details and metadata.
    Get {
        #[arg(long)]
        id: String,
    },
    /// Chat: send messages one at a time and check every echo.
    Chat {
        #[arg(long, default_value_t = 10)]
        count: u64,
        /// Send "fail" as message K: the call must end with INVALID_ARGUMENT after K-1 echoes.
        #[arg(long, value_name = "K")]
        fail_at: Option<u64>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let conn = match Connection::new(&args.target, &args.metadata, args.timeout, args.window) {
        Ok(conn) => conn,
        Err(e) => {
            eprintln!("demo-client: {e}");
            return ExitCode::from(2);
        }
    };
    let (json, ok) = match args.command {
        Command::Users {
            role,
            limit,
            after,
            labels,
            slow_us,
            record,
            expect_users,
            skip,
        } => {
            let opts = UsersOptions {
                role,
                limit,
                after,
                labels,
                slow: Duration::from_micros(slow_us),
                record,
                expect_users,
                skip: skip.into_iter().collect::<HashSet<_>>(),
            };
            match client::list_users(&conn, &opts).await {
                Ok(summary) => (summary.to_json(), summary.ok),
                Err(e) => {
                    eprintln!("demo-client: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        Command::Events {
            count,
            payload_bytes,
            topic,
            after,
            slow_us,
        } => {
            let opts = EventsOptions {
                count,
                payload_bytes,
                topic,
                after,
                slow: Duration::from_micros(slow_us),
            };
            let summary = client::stream_events(&conn, &opts).await;
            (summary.to_json(), summary.ok)
        }
        Command::Data {
            expect,
            offset,
            slow_us,
            record,
        } => {
            let opts = DataOptions {
                expect,
                offset,
                slow: Duration::from_micros(slow_us),
                record,
            };
            match client::get_data(&conn, &opts).await {
                Ok(summary) => (summary.to_json(), summary.ok),
                Err(e) => {
                    eprintln!("demo-client: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        Command::Ledger {
            first,
            count,
            after,
            slow_us,
            record,
        } => {
            let opts = LedgerOptions {
                first,
                count,
                after,
                slow: Duration::from_micros(slow_us),
                record,
            };
            match client::stream_entries(&conn, &opts).await {
                Ok(summary) => (summary.to_json(), summary.ok),
                Err(e) => {
                    eprintln!("demo-client: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        Command::Get { id } => {
            let report = client::get_user(&conn, &id).await;
            (report.to_json(), report.ok)
        }
        Command::Chat { count, fail_at } => {
            let summary = client::chat(&conn, &ChatOptions { count, fail_at }).await;
            (summary.to_json(), summary.ok)
        }
    };
    println!("{json}");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
