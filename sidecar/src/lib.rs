//! `reprise-sidecar`: an in-pod gRPC proxy that passes every call through unchanged and makes
//! configured server-streaming methods survive upstream failures by resuming them mid-stream.
//!
//! Module map, following the request path: [`server`] accepts the app's HTTP/2 connections
//! (through a [`listen::Listener`], as the admin endpoints do),
//! [`proxy`] routes each call, [`stream`] runs a resumable call (its [`pipe`] lets the app's
//! response body read the upstream through the [`filter`], with [`offset`] reading each
//! message's ordering key; [`request`] rewrites the request), [`checkpoint`] batches offset
//! writes to the job [`store`]. [`config`], [`descriptors`], [`grpc`] and [`admin`] support them.

pub mod admin;
pub mod app;
pub mod appwindow;
pub mod checkpoint;
pub mod config;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod descriptors;
pub mod editions;
pub mod events;
pub mod filter;
pub mod grpc;
pub mod handoff;
pub mod listen;
pub mod metrics;
pub mod offset;
pub mod pipe;
pub mod proxy;
pub mod request;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod stream;
pub mod upstream;
