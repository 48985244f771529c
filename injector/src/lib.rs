//! Placeholder for the injection library, with only the agreed API and the least behaviour the
//! webhook's tests need; the library proper replaces this file.

use std::collections::BTreeMap;

pub use k8s_openapi;
use k8s_openapi::api::core::v1::{Container, EnvVar, EnvVarSource, ObjectFieldSelector, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub mod annotations {
    pub const INJECT: &str = "reprise.dev/inject";
    pub const INJECTED_LABEL: &str = "reprise.dev/injected";
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub image: String,
    pub image_pull_policy: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            image: "reprise:latest".into(),
            image_pull_policy: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Decision {
    Skip { reason: &'static str },
    AlreadyInjected,
    Inject { metadata: ObjectMeta, spec: PodSpec },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("annotation `{annotation}`: {problem}; valid: {valid}")]
pub struct InjectError {
    pub annotation: String,
    pub problem: String,
    pub valid: String,
}

pub fn inject(
    metadata: &ObjectMeta,
    spec: &PodSpec,
    namespace_annotations: Option<&BTreeMap<String, String>>,
    settings: &Settings,
) -> Result<Decision, InjectError> {
    let asked = metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::INJECT))
        .or_else(|| namespace_annotations.and_then(|a| a.get(annotations::INJECT)));
    match asked.map(String::as_str) {
        None => {
            return Ok(Decision::Skip {
                reason: "not_requested",
            });
        }
        Some("disabled") => return Ok(Decision::Skip { reason: "disabled" }),
        Some("enabled") => {}
        Some(other) => {
            return Err(InjectError {
                annotation: annotations::INJECT.into(),
                problem: format!("{other:?} is not valid"),
                valid: "enabled, disabled".into(),
            });
        }
    }
    if spec.containers.iter().any(|c| c.name == "reprise-sidecar") {
        return Ok(Decision::AlreadyInjected);
    }
    let mut metadata = metadata.clone();
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(annotations::INJECTED_LABEL.into(), "true".into());
    let mut spec = spec.clone();
    spec.containers.push(Container {
        name: "reprise-sidecar".into(),
        image: Some(settings.image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        env: Some(vec![EnvVar {
            name: "POD_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ..Default::default()
    });
    Ok(Decision::Inject { metadata, spec })
}
