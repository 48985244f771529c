//! Shared test support for the recoverer: a fake Kubernetes API server speaking the real
//! list/watch protocol, Pods shaped like the kubelet's, and jobs on the real Redis.

pub mod apiserver;
pub mod jobs;
pub mod pods;
