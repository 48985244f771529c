//! The sidecar's end-to-end tests, one module per file, in one test binary (the processes they
//! start are real: sidecars, demo servers and clients, Redis and RabbitMQ). `broker.rs` stops
//! the shared RabbitMQ, so it is a binary of its own and never runs beside these.

mod support;

mod app_cancel;
mod bad_upstream;
mod config;
mod connections;
mod deliver;
mod handoff;
mod languages;
mod passthrough;
mod python_client;
mod python_sink;
mod redis_loss;
mod restart;
mod resume;
mod seed_interface;
mod silent_upstream;
mod volume;
