//! `reprise-recoverer`: finds pods whose sidecars died without a handoff (OOM kill, SIGKILL
//! after the grace period, eviction, node loss) and reassigns the jobs they owned.
//!
//! [`pods`] decides from a Pod's status whether (and why) its sidecar's jobs are dead;
//! [`watch`] keeps a reflector store of the watched pods and reports deaths; [`reconcile`]
//! orphans the jobs of dead owners (a pod seen dead, an expired lease) and [`unseen`] keeps
//! track of the owners the store does not hold, which are reported, not orphaned.

pub mod admin;
pub mod config;
pub mod kube_view;
pub mod pods;
pub mod reconcile;
pub mod unseen;
pub mod watch;
