//! The mutating admission webhook around the injection library: configuration, the reloading
//! certificate, the review itself, the HTTPS server and the admin port.

pub mod admin;
pub mod config;
pub mod namespaces;
pub mod review;
pub mod server;
pub mod tls;
