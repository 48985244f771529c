//! The demo server: `demo.v1.UserService`, `demo.v1.EventService`, `demo.v1.LedgerService`
//! and the talk's `pb.Server` over h2c, with gRPC health and server reflection, and the fault
//! flags the tests use to break streams.

mod echo;
mod events;
pub mod faults;
mod ledger;
mod seed;
mod stream;
mod users;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use reprise_proto::DEMO_DESCRIPTOR_SET;
use reprise_proto::demo::v1::event_service_server::EventServiceServer;
use reprise_proto::demo::v1::ledger_service_server::LedgerServiceServer;
use reprise_proto::demo::v1::user_service_server::UserServiceServer;
use reprise_proto::pb::server_server::ServerServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tracing::info;

pub use echo::ECHO_PREFIX;
pub use stream::EXIT_AFTER_CODE;
pub use users::InjectedPanic;

use crate::users::demo_users;

/// What the server serves and which faults it injects.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Size of the mocked user database.
    pub users: usize,
    /// Messages of `pb.Server/GetData`: Values `0 .. data`.
    pub data: u32,
    /// Pause before every streamed message.
    pub delay: Duration,
    /// Resume fields mean "from, inclusive" instead of "strictly after" (`GetData`'s `Offset`
    /// is inclusive anyway).
    pub inclusive: bool,
    /// Crash the process (exit code [`EXIT_AFTER_CODE`]) once this many streamed messages
    /// were produced in total.
    pub exit_after: Option<u64>,
    /// End every stream with UNAVAILABLE after this many messages of that stream.
    pub unavailable_after: Option<u64>,
    /// User ids whose production panics (recovered; the user is skipped).
    pub panic_on: HashSet<String>,
    /// Adds an `x-pad` entry of this many bytes to every GetUser response's metadata (large
    /// headers).
    pub metadata_bytes: usize,
    /// Faults injected while serving (the binary's `--faults-on-signal` raises them).
    pub faults: Arc<faults::SignalFaults>,
}

/// The most metadata the demo apps accept in one header block: grpc-go's default.
pub const MAX_METADATA_BYTES: u32 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("building the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("serving: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves on `listener` until `shutdown` is cancelled. Then streams in flight end with
/// UNAVAILABLE ("server shutting down"), health turns NOT_SERVING and the server returns once
/// its connections are closed.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let streams = Arc::new(stream::Streams::new(
        config.delay,
        config.exit_after,
        config.unavailable_after,
        shutdown.clone(),
        Arc::clone(&config.faults),
    ));
    let user_api = users::UserApi::new(
        demo_users(config.users),
        config.inclusive,
        config.panic_on,
        Arc::clone(&streams),
    );
    let event_api = events::EventApi::new(config.inclusive, Arc::clone(&streams));
    let ledger_api = ledger::LedgerApi::new(config.inclusive, Arc::clone(&streams));
    let seed_api = seed::SeedApi::new(config.data, streams);

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<UserServiceServer<users::UserApi>>()
        .await;
    health
        .set_serving::<EventServiceServer<events::EventApi>>()
        .await;
    health
        .set_serving::<LedgerServiceServer<ledger::LedgerApi>>()
        .await;
    health.set_serving::<ServerServer<seed::SeedApi>>().await;

    // grpcurl and the sidecar's `descriptors: reflection` ask either version.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(DEMO_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let stopping = async move {
        shutdown.cancelled().await;
        info!("shutting down");
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        health
            .set_not_serving::<UserServiceServer<users::UserApi>>()
            .await;
        health
            .set_not_serving::<EventServiceServer<events::EventApi>>()
            .await;
        health
            .set_not_serving::<LedgerServiceServer<ledger::LedgerApi>>()
            .await;
        health
            .set_not_serving::<ServerServer<seed::SeedApi>>()
            .await;
    };

    // Small messages one at a time (chat, paced streams) must not wait for Nagle.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    echo::pad_with(config.metadata_bytes);
    let resets = Arc::clone(&config.faults);
    Server::builder()
        .http2_max_header_list_size(MAX_METADATA_BYTES)
        .layer(tower::util::MapResponseLayer::new(
            move |res: tonic::codegen::http::Response<tonic::body::Body>| {
                res.map(|body| faults::ResettableBody::wrap(body, Arc::clone(&resets)))
            },
        ))
        .add_service(UserServiceServer::new(user_api))
        .add_service(EventServiceServer::new(event_api))
        .add_service(LedgerServiceServer::new(ledger_api))
        .add_service(ServerServer::new(seed_api))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, stopping)
        .await?;
    Ok(())
}

/// Keeps panics injected with `--panic-on` out of stderr (the server logs them where it
/// recovers); every other panic still reaches the previous hook.
pub fn quiet_injected_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.payload().is::<InjectedPanic>() {
            previous(info);
        }
    }));
}
