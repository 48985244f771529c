//! Sidecar injection: one pod (its metadata and spec) in, the same pod with `reprise-sidecar`
//! added out. Pure: no I/O, so the webhook (`reprise-injector`) and the CLI (`reprise inject`)
//! run exactly the same code. [`manifest`] applies it to YAML documents of any workload kind.
//!
//! The annotations it reads are in [`annotations`]; the container it adds is the one the
//! hand-written manifests of `k8s/example/injected` had, so those are its golden output.

pub mod annotations;
pub mod manifest;
mod options;
mod pod;

use std::collections::BTreeMap;

pub use k8s_openapi;
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use crate::options::Options;

/// The sidecar container's name.
pub const CONTAINER_NAME: &str = "reprise-sidecar";
/// The volume that holds the ConfigMap, and where it is mounted.
pub const CONFIG_VOLUME: &str = "reprise-config";
pub const CONFIG_DIR: &str = "/etc/reprise";
/// What `terminationGracePeriodSeconds` must exceed the sidecar's `shutdown_timeout` by: the
/// kubelet's SIGKILL must not cut the final checkpoints short.
pub const GRACE_MARGIN_SECONDS: i64 = 5;
/// Kubernetes' own default grace period.
pub const DEFAULT_GRACE_SECONDS: i64 = 30;

/// What an installation fixes for every pod; annotations override most of it per pod.
#[derive(Debug, Clone)]
pub struct Settings {
    pub image: String,
    pub image_pull_policy: Option<String>,
    pub cpu_request: String,
    pub cpu_limit: String,
    pub memory_request: String,
    pub memory_limit: String,
    /// The app's gRPC target on loopback (the sidecar's `listen`).
    pub proxy_port: u16,
    /// `/metrics`, `/healthz`, `/readyz` (the sidecar's `metrics_listen`).
    pub admin_port: u16,
    /// `RUST_LOG`.
    pub log_level: String,
    /// The sidecar's `shutdown_timeout` as its config has it (sizes the grace period).
    pub shutdown_timeout: std::time::Duration,
    /// The ConfigMap when neither `reprise.dev/config` nor a service name gives one.
    pub config_map: String,
    /// Native sidecar (init container with `restartPolicy: Always`) unless a pod says otherwise.
    pub native_sidecar: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            image: "reprise:latest".to_owned(),
            image_pull_policy: Some("IfNotPresent".to_owned()),
            cpu_request: "50m".to_owned(),
            cpu_limit: "1".to_owned(),
            memory_request: "32Mi".to_owned(),
            memory_limit: "128Mi".to_owned(),
            proxy_port: 15001,
            admin_port: 15090,
            log_level: "info".to_owned(),
            shutdown_timeout: std::time::Duration::from_secs(20),
            config_map: "reprise-sidecar".to_owned(),
            native_sidecar: true,
        }
    }
}

/// One per admission or per pod template, consumed at once: boxing the patched pod would only
/// add an allocation and a `*` at every caller.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing asked for injection (`"not_requested"`), or `reprise.dev/inject: disabled` won
    /// (`"disabled"`): unchanged.
    Skip {
        reason: &'static str,
    },
    /// Already injected (idempotence): unchanged.
    AlreadyInjected,
    Inject {
        metadata: ObjectMeta,
        spec: PodSpec,
    },
}

/// An annotation whose value cannot be used, or a pod it cannot be applied to. The first problem
/// is in the fields; `more` holds the pod's other invalid annotations, in the order they are
/// documented, so a user fixes them all in one round.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectError {
    pub annotation: String,
    pub problem: String,
    pub valid: String,
    pub more: Vec<InjectError>,
}

impl InjectError {
    #[cold]
    pub(crate) fn new(
        annotation: &str,
        problem: impl Into<String>,
        valid: impl Into<String>,
    ) -> Self {
        InjectError {
            annotation: annotation.to_owned(),
            problem: problem.into(),
            valid: valid.into(),
            more: Vec::new(),
        }
    }

    /// One error for several problems (`None` when there are none).
    pub(crate) fn all(problems: Vec<InjectError>) -> Option<Self> {
        let mut flat = Vec::new();
        for mut p in problems {
            let more = std::mem::take(&mut p.more);
            flat.push(p);
            flat.extend(more);
        }
        let mut flat = flat.into_iter();
        let mut first = flat.next()?;
        first.more = flat.collect();
        Some(first)
    }

    /// Every problem, this one first (the others' `more` is empty).
    pub fn problems(&self) -> impl Iterator<Item = &InjectError> {
        std::iter::once(self).chain(&self.more)
    }

    /// This problem alone, without `more`: `annotation `a`: problem; valid: values`.
    pub fn describe(&self) -> String {
        format!(
            "annotation `{}`: {}; valid: {}",
            self.annotation, self.problem, self.valid
        )
    }
}

/// `annotation `a`: problem; valid: values`, then `; and annotation `b`: …` for each further one.
impl std::fmt::Display for InjectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.problems().enumerate() {
            if i > 0 {
                f.write_str("; and ")?;
            }
            f.write_str(&p.describe())?;
        }
        Ok(())
    }
}

impl std::error::Error for InjectError {}

/// Decides whether the pod gets the sidecar and, if so, returns it patched.
///
/// `namespace_annotations`: the pod's namespace's annotations when known (namespace-level
/// `reprise.dev/inject`; the pod's own annotation wins).
pub fn inject(
    metadata: &ObjectMeta,
    spec: &PodSpec,
    namespace_annotations: Option<&BTreeMap<String, String>>,
    settings: &Settings,
) -> Result<Decision, InjectError> {
    let empty = BTreeMap::new();
    let pod_annotations = metadata.annotations.as_ref().unwrap_or(&empty);
    let requested = match enabled(pod_annotations, annotations::INJECT)? {
        Some(on) => on,
        None => match namespace_annotations {
            Some(ns) => enabled(ns, annotations::INJECT)?.unwrap_or(false),
            None => false,
        },
    };
    if !requested {
        let disabled = pod_annotations.contains_key(annotations::INJECT)
            || namespace_annotations.is_some_and(|ns| ns.contains_key(annotations::INJECT));
        return Ok(Decision::Skip {
            reason: if disabled {
                "disabled"
            } else {
                "not_requested"
            },
        });
    }
    if pod::is_injected(metadata, spec) {
        return Ok(Decision::AlreadyInjected);
    }
    let options = Options::parse(metadata, settings)?;
    let (metadata, spec) = pod::patch(metadata, spec, &options)?;
    Ok(Decision::Inject { metadata, spec })
}

/// `Some(true)` for `enabled`, `Some(false)` for `disabled`, `None` when absent.
fn enabled(annotations: &BTreeMap<String, String>, key: &str) -> Result<Option<bool>, InjectError> {
    match annotations.get(key).map(|v| v.trim()) {
        None => Ok(None),
        Some("enabled") => Ok(Some(true)),
        Some("disabled") => Ok(Some(false)),
        Some(other) => Err(InjectError::new(
            key,
            format!("`{other}` is not a value"),
            "enabled, disabled",
        )),
    }
}
