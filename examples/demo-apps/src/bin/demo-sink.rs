//! demo-sink: the app side of `resume: deliver`. Serves `reprise.v1.ResumeSink`, appends the
//! key of every delivered message (user_id, or the event's seq) to `--record FILE`, and
//! acknowledges each one once it is written. This is all an app needs to continue a stream
//! that another pod started.

use std::{
    io::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use clap::Parser;
use prost::Message as _;
use reprise_proto::{
    demo::v1::{Event, User},
    reprise::v1::{
        Ack, Delivery,
        delivery::Kind,
        resume_sink_server::{ResumeSink, ResumeSinkServer},
    },
};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

#[derive(Parser)]
#[command(version, about = "A ResumeSink that records what it is delivered")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:15002")]
    listen: SocketAddr,
    /// Append each delivered message's key here, one line each, before acknowledging it.
    #[arg(long)]
    record: Option<PathBuf>,
}

struct Sink {
    record: Option<Arc<Mutex<std::fs::File>>>,
}

type Acks = std::pin::Pin<Box<dyn Stream<Item = Result<Ack, Status>> + Send>>;

#[tonic::async_trait]
impl ResumeSink for Sink {
    type DeliverStream = Acks;

    async fn deliver(
        &self,
        request: Request<Streaming<Delivery>>,
    ) -> Result<Response<Acks>, Status> {
        let mut inbound = request.into_inner();
        let record = self.record.clone();
        let acks = async_stream_acks(move |tx| async move {
            let mut method = String::new();
            while let Some(delivery) = inbound.next().await {
                let delivery = delivery?;
                match delivery.kind {
                    Some(Kind::Start(start)) => {
                        eprintln!(
                            "demo-sink: job {} ({}) from pod {} ({}), after offset {:?}",
                            start.job_id, start.method, start.from_pod, start.reason, start.offset
                        );
                        method = start.method;
                    }
                    Some(Kind::Message(m)) => {
                        let key = key_of(&method, &m.payload)?;
                        if let Some(file) = &record {
                            let mut f = file.lock().map_err(|_| Status::internal("record lock"))?;
                            writeln!(f, "{key}").map_err(|e| Status::internal(e.to_string()))?;
                        }
                        if tx.send(Ok(Ack { seq: m.seq })).await.is_err() {
                            break;
                        }
                    }
                    Some(Kind::End(end)) => {
                        println!(
                            "{{\"kind\":\"end\",\"code\":{},\"message\":{:?}}}",
                            end.code, end.message
                        );
                    }
                    None => {}
                }
            }
            Ok(())
        });
        Ok(Response::new(acks))
    }
}

/// The demo's ordering key of a delivered message.
fn key_of(method: &str, payload: &[u8]) -> Result<String, Status> {
    if method.ends_with("/StreamEvents") {
        let e = Event::decode(payload).map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(e.cursor.map(|c| c.seq).unwrap_or_default().to_string())
    } else {
        let u = User::decode(payload).map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(u.user_id)
    }
}

/// Runs `body` with a sender of acks; the returned stream yields them.
fn async_stream_acks<F, Fut>(body: F) -> Acks
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Ack, Status>>) -> Fut,
    Fut: std::future::Future<Output = Result<(), Status>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let fut = body(tx.clone());
    tokio::spawn(async move {
        if let Err(status) = fut.await {
            let _ = tx.send(Err(status)).await;
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let record = match &args.record {
        Some(path) => Some(Arc::new(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ))),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    tonic::transport::Server::builder()
        .add_service(ResumeSinkServer::new(Sink { record }))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        )
        .await?;
    Ok(())
}
