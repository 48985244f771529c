//! `reprise-recoverer`: finds pods whose sidecars died without a handoff (OOM kill, SIGKILL
//! after the grace period, eviction, node loss) and reassigns the jobs they owned.
//!
//! [`pods`] decides from a Pod's status whether (and why) its sidecar's jobs are dead;
//! [`watch`] keeps a reflector store of the watched pods and reports deaths.

pub mod admin;
pub mod config;
pub mod kube_view;
pub mod pods;
pub mod reconcile;
pub mod unseen;
pub mod watch;
