//! Shared test support for the recoverer: jobs on the real Redis. The fake Kubernetes API
//! server and the pods shaped like the kubelet's are the `reprise-kube-fake` crate.

pub mod jobs;
