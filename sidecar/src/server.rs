//! Accepts the app's connections (HTTP/2 cleartext, prior knowledge, as gRPC clients speak to
//! a local target) and serves each with the proxy until shutdown, then drains it with GOAWAY.

use std::{convert::Infallible, sync::Arc, time::Duration};

use hyper::{body::Incoming, server::conn::http2, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    appwindow::{AppWindow, Tap},
    listen::{AppConnection, Listener},
    proxy::Proxy,
};

/// Serves until `shutdown`; connections still open then get a GOAWAY and are tracked by
/// `connections` so the caller can wait for them.
pub async fn serve(
    mut listener: Listener,
    proxy: Arc<Proxy>,
    shutdown: CancellationToken,
    connections: TaskTracker,
) {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(512 * 1024)
        .initial_connection_window_size(2 << 20)
        .max_concurrent_streams(4096)
        // What h2 may hold per stream beyond what the app's window lets out (hyper's default
        // is 400 KiB). Times hundreds of streams toward a slow app, that is where memory went;
        // 16 KiB measured as fast as 32 with 100 streams and left room for a larger upstream
        // window (docs/benchmarks.md).
        .max_send_buf_size(16 * 1024)
        // As toward the upstream (`proxy::upstream_client`): the connection takes what any
        // gRPC library may send; each call is held to `max_metadata_bytes` on its own.
        .max_header_list_size(crate::config::MAX_METADATA_BYTES as u32)
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let _ = accepted.stream.set_nodelay(true);
        let proxy = proxy.clone();
        let connection = CancellationToken::new();
        let closed = connection.clone().drop_guard();
        let window = Arc::new(AppWindow::for_connection(
            accepted.stream.local_addr().ok(),
            accepted.peer,
        ));
        let app = AppConnection {
            closed: connection,
            window: window.clone(),
        };
        let service = service_fn(move |mut req: hyper::Request<Incoming>| {
            let proxy = proxy.clone();
            req.extensions_mut().insert(app.clone());
            let window = app.window.clone();
            async move {
                let res = proxy.handle(req).await;
                Ok::<_, Infallible>(res.map(|body| crate::appwindow::counted(body, window)))
            }
        });
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            // However this task ends, the connection's calls learn it closed.
            let _closed = closed;
            tokio::select! {
                spoke = accepted.spoke() => if !spoke {
                    return;
                },
                _ = shutdown.cancelled() => return,
            }
            let peer = accepted.peer;
            // Read through the tap: the app's SETTINGS bound what it may hold unread.
            let io = TokioIo::new(Tap::new(accepted.stream, window));
            let conn = builder.serve_connection(io, service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(%peer, error = %e, "app connection ended");
                    }
                    return;
                }
                _ = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
}
