//! Shared test support for the recoverer's Kubernetes side: a fake API server speaking the real
//! list/watch protocol, and Pods shaped like the kubelet's.

pub mod apiserver;
pub mod pods;
