//! The demo apps that Reprise's tests and demo drive: a server (users, events, a signed
//! ledger and the talk's own `pb.Server`) with fault flags, and a client that checks every
//! message of a stream arrived exactly once and in order.
//!
//! The data is deterministic ([`users::demo_users`], [`events::PayloadPattern`],
//! [`ledger::note`], [`seed::data`]), so a client computes on its own what a correct stream
//! must contain.

pub mod client;
pub mod events;
pub mod ledger;
pub mod seed;
pub mod server;
pub mod users;

/// `google.rpc.Status`, encoded by hand so the demo needs no extra proto package: the server
/// puts it in `grpc-status-details-bin`, the way rich-error gRPC libraries do.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}
