//! `chat`: the bidirectional echo, one message at a time, so a proxy that waited for the whole
//! request stream before answering would show up as a hang (bounded by `--timeout`).

use std::time::Instant;

use reprise_proto::demo::v1::ChatMessage;
use reprise_proto::demo::v1::user_service_client::UserServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use super::{Connection, Summary};

#[derive(Debug, Clone, Default)]
pub struct ChatOptions {
    pub count: u64,
    /// Send `fail` as message K (1-based): the call must then end with INVALID_ARGUMENT after
    /// K-1 echoes.
    pub fail_at: Option<u64>,
}

impl ChatOptions {
    fn message(&self, seq: u64) -> ChatMessage {
        let text = if self.fail_at == Some(seq) {
            "fail".to_owned()
        } else {
            format!("message {seq}")
        };
        ChatMessage { seq, text }
    }
}

pub async fn chat(conn: &Connection, opts: &ChatOptions) -> Summary {
    let mut summary = Summary::new("chat");
    let (expected_echoes, expected_code) = match opts.fail_at {
        Some(k) if k >= 1 && k <= opts.count => (k - 1, Code::InvalidArgument),
        _ => (opts.count, Code::Ok),
    };
    let mut good = 0u64;
    let started = Instant::now();
    let outcome = conn
        .within_deadline(async {
            let (tx, rx) = mpsc::channel(1);
            if opts.count >= 1 {
                // The channel has room for one and the receiver is alive: this cannot fail.
                let _ = tx.send(opts.message(1)).await;
            }
            let mut tx = Some(tx);
            let mut client = UserServiceClient::new(conn.channel());
            let response = client.chat(conn.request(ReceiverStream::new(rx))).await?;
            summary.headers(response.metadata());
            let mut stream = response.into_inner();
            for seq in 1..=opts.count {
                if seq > 1 {
                    let sent = match &tx {
                        Some(tx) => tx.send(opts.message(seq)).await.is_ok(),
                        None => false,
                    };
                    if !sent {
                        // The server ended the call; the next read says how.
                        break;
                    }
                }
                let Some(reply) = stream.message().await? else {
                    break;
                };
                summary.saw(&reply.seq.to_string());
                if reply.seq != seq {
                    summary.out_of_order += 1;
                } else if reply.text != format!("echo: message {seq}") {
                    summary.corrupt += 1;
                } else {
                    good += 1;
                }
            }
            // Half-close: the server ends the call once it has answered everything.
            tx.take();
            while stream.message().await?.is_some() {
                summary.unexpected += 1;
            }
            stream.trailers().await
        })
        .await;
    summary.ended(outcome);
    summary.missing = expected_echoes.saturating_sub(good);
    summary.finish(started, expected_code)
}
