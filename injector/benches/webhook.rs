//! The webhook under load, run by hand (not a test): `cargo bench -p reprise-injector --bench
//! webhook [-- REVIEWS CONNECTIONS]`. Starts `reprise-injector` as its own process, sends
//! REVIEWS (default 10,000) AdmissionReviews over TLS on CONNECTIONS (default 8) keep-alive
//! HTTP/1.1 connections, half asking for injection and half not, and prints the latency of one
//! review as the client sees it (p50, p99, max) and the server's resident memory afterwards.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let reviews: usize = args
        .first()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10_000);
    let connections: usize = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(8);
    let injector = support::Injector::start();
    let roots = [support::ca(&injector.cert())];
    let asks = serde_json::to_vec(&support::review(
        "b1",
        serde_json::json!({"reprise.dev/inject": "enabled"}),
    ))?;
    let plain = serde_json::to_vec(&support::review("b2", serde_json::json!({})))?;
    let idle_rss = rss_kib(injector.child.id(), "VmRSS:");

    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let share = reviews / connections + usize::from(c < reviews % connections);
        let (roots, asks, plain) = (roots.clone(), asks.clone(), plain.clone());
        let port = injector.port;
        tasks.push(tokio::spawn(async move {
            let mut client = support::Client::connect(port, &roots).await?;
            let mut latencies = Vec::with_capacity(share);
            for i in 0..share {
                let body = if i % 2 == 0 {
                    asks.clone()
                } else {
                    plain.clone()
                };
                let t = Instant::now();
                let (status, _) = client.post("/inject", body).await?;
                latencies.push(t.elapsed());
                anyhow::ensure!(status == 200, "status {status}");
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut all = Vec::with_capacity(reviews);
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed();
    all.sort();
    let pid = injector.child.id();
    println!(
        "webhook: reviews={} connections={connections} elapsed={:.2}s rate={:.0}/s p50={:?} p99={:?} max={:?} rss_idle_kib={} rss_kib={} rss_peak_kib={}",
        all.len(),
        elapsed.as_secs_f64(),
        all.len() as f64 / elapsed.as_secs_f64(),
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        all.last().copied().unwrap_or_default(),
        idle_rss.unwrap_or(0),
        rss_kib(pid, "VmRSS:").unwrap_or(0),
        rss_kib(pid, "VmHWM:").unwrap_or(0),
    );
    Ok(())
}
