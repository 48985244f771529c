//! `reprise-bench soak-app`: one pod's app in the soak. It knows nothing of Reprise beyond what
//! any app of a resumable method knows: it calls `demo.v1.EventService/StreamEvents` through
//! its sidecar, and (for `resume: deliver`) serves `reprise.v1.ResumeSink` for the jobs another
//! pod hands it. Every message it receives is appended to the job's record file and written
//! out (one `write(2)` per message) before the next one is read, or before a delivered one is
//! acknowledged, so a SIGKILL loses nothing the app had taken.
//!
//! Files, under `--dir`:
//! - `state.log`: `start TOPIC`, `done TOPIC` (the call ended OK), `handed TOPIC` (a `deliver`
//!   call that ended with an error: the rest goes to another pod's ResumeSink). A restarted app
//!   calls again every job it started and did not finish, with the identical request, as an app
//!   that keeps its own work list does.
//! - `rec/TOPIC.txt`: one line per message, `RECEIVER SEQ HASH UNIX_MS`. RECEIVER names the call
//!   (`c{incarnation}.{attempt}`) or the delivery (`s{incarnation}.{n}`) it came in; HASH is
//!   FNV-1a of the payload, which the checker compares with the upstream's.
//!
//! The plan (`--plan`, written by the soak) lists the pod's jobs in order, `TOPIC COUNT
//! PAYLOAD_BYTES SLOW_US` each; the app keeps `--concurrency` of them running until the file
//! `stop` appears in `--dir`, then finishes the ones it has.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use prost::Message as _;
use reprise_proto::{
    demo::v1::{Event, Position, StreamEventsRequest, event_service_client::EventServiceClient},
    reprise::v1::{
        Ack, Delivery,
        delivery::Kind,
        resume_sink_server::{ResumeSink, ResumeSinkServer},
    },
};
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status, Streaming, transport::Endpoint};

#[derive(Parser)]
#[command(about = "The soak's app: streams its plan's jobs through the sidecar and records them")]
struct Args {
    /// The pod this app belongs to (names its calls in the logs).
    #[arg(long)]
    pod: String,
    /// The sidecar, e.g. http://127.0.0.1:15001.
    #[arg(long)]
    target: String,
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    plan: PathBuf,
    #[arg(long, default_value_t = 13)]
    concurrency: usize,
    #[arg(long, value_enum)]
    mode: Mode,
    /// Serve reprise.v1.ResumeSink here (the sidecar's `resume_sink`).
    #[arg(long)]
    sink_listen: Option<SocketAddr>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// A broken call is called again, identically, until it ends OK.
    OnRequest,
    /// A broken call is left alone: the sidecar hands the rest to a ResumeSink.
    Deliver,
}

/// One job of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub topic: String,
    pub count: u64,
    pub payload_bytes: u32,
    pub slow_us: u64,
}

impl Job {
    pub fn line(&self) -> String {
        format!(
            "{} {} {} {}",
            self.topic, self.count, self.payload_bytes, self.slow_us
        )
    }

    pub fn parse(line: &str) -> Option<Job> {
        let mut f = line.split_whitespace();
        Some(Job {
            topic: f.next()?.to_owned(),
            count: f.next()?.parse().ok()?,
            payload_bytes: f.next()?.parse().ok()?,
            slow_us: f.next()?.parse().ok()?,
        })
    }

    pub fn request(&self) -> StreamEventsRequest {
        StreamEventsRequest {
            start: None::<Position>,
            topic: self.topic.clone(),
            count: self.count,
            payload_bytes: self.payload_bytes,
        }
    }
}

/// Reads a plan file.
pub fn read_plan(path: &Path) -> anyhow::Result<Vec<Job>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Job::parse(l).with_context(|| format!("bad plan line `{l}`")))
        .collect()
}

/// FNV-1a, 64 bits: what a record line says of a payload.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The app's files, shared by its calls and its sink.
struct Files {
    dir: PathBuf,
    state: Mutex<std::fs::File>,
    records: Mutex<BTreeMap<String, Arc<Mutex<std::fs::File>>>>,
}

impl Files {
    fn open(dir: &Path) -> anyhow::Result<Files> {
        std::fs::create_dir_all(dir.join("rec"))?;
        let state = append(&dir.join("state.log"))?;
        Ok(Files {
            dir: dir.to_owned(),
            state: Mutex::new(state),
            records: Mutex::new(BTreeMap::new()),
        })
    }

    fn state(&self, what: &str, topic: &str) -> anyhow::Result<()> {
        let mut f = self
            .state
            .lock()
            .map_err(|_| anyhow::anyhow!("state lock"))?;
        f.write_all(format!("{what} {topic}\n").as_bytes())?;
        Ok(())
    }

    fn record(&self, topic: &str) -> anyhow::Result<Arc<Mutex<std::fs::File>>> {
        let mut records = self
            .records
            .lock()
            .map_err(|_| anyhow::anyhow!("records lock"))?;
        if let Some(f) = records.get(topic) {
            return Ok(Arc::clone(f));
        }
        anyhow::ensure!(
            !topic.is_empty()
                && topic
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "topic `{topic}` is not a soak topic"
        );
        let f = Arc::new(Mutex::new(append(
            &self.dir.join("rec").join(format!("{topic}.txt")),
        )?));
        records.insert(topic.to_owned(), Arc::clone(&f));
        Ok(f)
    }

    /// Closes a job's record file once nothing more comes for it here (holders keep theirs).
    fn forget(&self, topic: &str) {
        if let Ok(mut records) = self.records.lock() {
            records.remove(topic);
        }
    }

    fn stopping(&self) -> bool {
        self.dir.join("stop").exists()
    }
}

fn append(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Writes one record line: a single `write(2)`, before the next message is taken.
fn write_record(file: &Mutex<std::fs::File>, receiver: &str, event: &Event) -> anyhow::Result<u64> {
    let seq = event.cursor.as_ref().map_or(0, |c| c.seq);
    let line = format!(
        "{receiver} {seq} {:016x} {}\n",
        fnv1a(&event.payload),
        unix_ms()
    );
    let mut f = file.lock().map_err(|_| anyhow::anyhow!("record lock"))?;
    f.write_all(line.as_bytes())?;
    Ok(seq)
}

pub fn main() -> ExitCode {
    let args = Args::parse_from(std::env::args_os().skip(1));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soak-app: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("soak-app: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let files = Arc::new(Files::open(&args.dir)?);
    let plan = read_plan(&args.plan)?;
    // What an earlier incarnation of this app left: its unfinished jobs come first.
    let state = std::fs::read_to_string(args.dir.join("state.log")).unwrap_or_default();
    let mut started = Vec::new();
    let mut ended = BTreeSet::new();
    for line in state.lines() {
        match line.split_once(' ') {
            // A job restarted by an earlier incarnation has a `start` line from each.
            Some(("start", t)) if !started.iter().any(|s| s == t) => started.push(t.to_owned()),
            Some(("done" | "handed", t)) => {
                ended.insert(t.to_owned());
            }
            _ => {}
        }
    }
    let incarnation = state.lines().filter(|l| l.starts_with("up ")).count();
    files.state("up", &args.pod)?;
    let by_topic: BTreeMap<_, _> = plan.iter().map(|j| (j.topic.clone(), j.clone())).collect();
    let unfinished: Vec<Job> = started
        .iter()
        .filter(|t| !ended.contains(*t))
        .filter_map(|t| by_topic.get(t).cloned())
        .collect();
    let started: BTreeSet<_> = started.into_iter().collect();
    let mut fresh = plan.into_iter().filter(|j| !started.contains(&j.topic));
    eprintln!(
        "soak-app {}: incarnation {incarnation}, {} unfinished job(s) to call again",
        args.pod,
        unfinished.len()
    );

    if let Some(listen) = args.sink_listen {
        let sink = Sink {
            files: Arc::clone(&files),
            incarnation,
            deliveries: std::sync::atomic::AtomicU64::new(0),
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding the ResumeSink on {listen}"))?;
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(ResumeSinkServer::new(sink))
                .serve_with_incoming(incoming)
                .await
            {
                eprintln!("soak-app: ResumeSink ended: {e}");
            }
        });
    }

    let channel = Endpoint::from_shared(args.target.clone())?
        .tcp_nodelay(true)
        .connect_lazy();
    let mut running = tokio::task::JoinSet::new();
    let mut queue: std::collections::VecDeque<Job> = unfinished.into();
    loop {
        while running.len() < args.concurrency && !files.stopping() {
            let Some(job) = queue.pop_front().or_else(|| fresh.next()) else {
                break;
            };
            if !by_topic.contains_key(&job.topic) {
                continue;
            }
            files.state("start", &job.topic)?;
            let files = Arc::clone(&files);
            let client =
                EventServiceClient::new(channel.clone()).max_decoding_message_size(8 << 20);
            let mode = args.mode;
            running.spawn(async move { call(client, files, job, mode, incarnation).await });
        }
        tokio::select! {
            done = running.join_next(), if !running.is_empty() => {
                if let Some(Err(e)) | Some(Ok(Err(e))) = done.map(|r| r.map_err(anyhow::Error::from)) {
                    eprintln!("soak-app {}: a job failed: {e:#}", args.pod);
                }
            }
            // Looks for `stop` and for room now and then; after `stop`, the sink keeps
            // serving until the soak ends this process.
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// One job's calls: until it ends OK (`on_request`) or until its call ends at all (`deliver`).
async fn call(
    mut client: EventServiceClient<tonic::transport::Channel>,
    files: Arc<Files>,
    job: Job,
    mode: Mode,
    incarnation: usize,
) -> anyhow::Result<()> {
    let record = files.record(&job.topic)?;
    let slow = Duration::from_micros(job.slow_us);
    for attempt in 0u32.. {
        let receiver = format!("c{incarnation}.{attempt}");
        // `Err((true, _))`: the call broke after it began (response headers came), so the
        // sidecar holds the job; `Err((false, _))`: it never began.
        let outcome = async {
            let mut stream = client
                .stream_events(job.request())
                .await
                .map_err(|s| (false, s))?
                .into_inner();
            while let Some(event) = stream.message().await.map_err(|s| (true, s))? {
                write_record(&record, &receiver, &event)
                    .map_err(|e| (true, Status::internal(e.to_string())))?;
                if !slow.is_zero() {
                    tokio::time::sleep(slow).await;
                }
            }
            Ok::<(), (bool, Status)>(())
        }
        .await;
        match outcome {
            Ok(()) => {
                files.state("done", &job.topic)?;
                files.forget(&job.topic);
                return Ok(());
            }
            Err((true, status)) if mode == Mode::Deliver => {
                eprintln!(
                    "soak-app: {} ended {:?}: {}",
                    job.topic,
                    status.code(),
                    status.message()
                );
                files.state("handed", &job.topic)?;
                files.forget(&job.topic);
                return Ok(());
            }
            Err((began, status)) => {
                eprintln!(
                    "soak-app: {} attempt {attempt} ended {:?} ({}): {}; calling again",
                    job.topic,
                    status.code(),
                    if began {
                        "mid-stream"
                    } else {
                        "before it began"
                    },
                    status.message()
                );
                let backoff = Duration::from_millis(100 * u64::from(attempt.min(10) + 1));
                tokio::time::sleep(backoff).await;
            }
        }
    }
    Ok(())
}

struct Sink {
    files: Arc<Files>,
    incarnation: usize,
    deliveries: std::sync::atomic::AtomicU64,
}

type Acks = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<Ack, Status>> + Send>>;

#[tonic::async_trait]
impl ResumeSink for Sink {
    type DeliverStream = Acks;

    async fn deliver(
        &self,
        request: Request<Streaming<Delivery>>,
    ) -> Result<Response<Acks>, Status> {
        let mut inbound = request.into_inner();
        let files = Arc::clone(&self.files);
        let n = self
            .deliveries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let receiver = format!("s{}.{n}", self.incarnation);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut record = None;
            let mut topic = None;
            while let Some(delivery) = inbound.next().await {
                let delivery = match delivery {
                    Ok(d) => d,
                    Err(status) => {
                        eprintln!("soak-app: delivery {receiver} broke: {status}");
                        return;
                    }
                };
                match delivery.kind {
                    Some(Kind::Start(start)) => {
                        let req = match StreamEventsRequest::decode(start.request.as_slice()) {
                            Ok(r) => r,
                            Err(e) => {
                                let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
                                return;
                            }
                        };
                        eprintln!(
                            "soak-app: delivery {receiver}: job {} topic {} from {} ({}) after {:?}",
                            start.job_id, req.topic, start.from_pod, start.reason, start.offset
                        );
                        match files.record(&req.topic) {
                            Ok(f) => {
                                record = Some(f);
                                topic = Some(req.topic.clone());
                            }
                            Err(e) => {
                                let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                                return;
                            }
                        }
                    }
                    Some(Kind::Message(m)) => {
                        let Some(file) = &record else {
                            let _ = tx.send(Err(Status::failed_precondition("no Start"))).await;
                            return;
                        };
                        let written = Event::decode(m.payload.as_slice())
                            .map_err(|e| anyhow::anyhow!(e))
                            .and_then(|event| write_record(file, &receiver, &event));
                        if let Err(e) = written {
                            let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                            return;
                        }
                        if tx.send(Ok(Ack { seq: m.seq })).await.is_err() {
                            return;
                        }
                    }
                    Some(Kind::End(end)) => {
                        eprintln!(
                            "soak-app: delivery {receiver} ended {}: {}",
                            end.code, end.message
                        );
                        if let Some(topic) = &topic {
                            files.forget(topic);
                        }
                    }
                    None => {}
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
