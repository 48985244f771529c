//! [`crate::inject`] over YAML manifests, for `reprise inject`: several documents, `List`s and
//! every workload kind (each keeps its pod template somewhere else). A document that needs no
//! change is written back exactly as it was read, comments included; a patched one is
//! re-serialised (its fields keep their order, its comments are lost).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_yaml::Value;

use crate::{Decision, InjectError, Settings, inject};

/// The output and what happened to each pod template, one line each (`Deployment demo/users-client:
/// injected`), for stderr.
#[derive(Debug, Clone, PartialEq)]
pub struct Injected {
    pub output: String,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ManifestError {
    #[error("document {document}: not YAML: {message}")]
    Yaml { document: usize, message: String },
    #[error("document {document}: {object}: not a valid pod template: {message}")]
    Template {
        document: usize,
        object: String,
        message: String,
    },
    #[error("document {document}: {object}: {source}")]
    Inject {
        document: usize,
        object: String,
        source: Box<InjectError>,
    },
    /// Every pod template with invalid annotations, each an [`ManifestError::Inject`], so one
    /// run names them all; a single one is returned as itself.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ManifestError>),
}

impl ManifestError {
    /// The errors one by one: an [`ManifestError::Invalid`] opened up, any other as itself.
    pub fn each(&self) -> Vec<&ManifestError> {
        match self {
            ManifestError::Invalid(all) => all.iter().collect(),
            other => vec![other],
        }
    }
}

/// One document of the input: its separator line (if any) and its text.
struct Document<'a> {
    separator: &'a str,
    body: &'a str,
}

fn is_separator(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

fn split(text: &str) -> Vec<Document<'_>> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut separator = "";
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if is_separator(line) {
            if offset > 0 {
                documents.push(Document {
                    separator,
                    body: &text[start..offset],
                });
            }
            separator = line;
            start = offset + line.len();
        }
        offset += line.len();
    }
    documents.push(Document {
        separator,
        body: &text[start..],
    });
    documents
}

/// Patches every pod template in `text` that asks for injection.
pub fn inject_yaml(text: &str, settings: &Settings) -> Result<Injected, ManifestError> {
    let documents = split(text);
    let mut parsed = Vec::with_capacity(documents.len());
    for (i, doc) in documents.iter().enumerate() {
        let value: Value = serde_yaml::from_str(doc.body).map_err(|e| ManifestError::Yaml {
            document: i + 1,
            message: e.to_string(),
        })?;
        parsed.push(value);
    }
    // Namespaces in the same input lend their `reprise.dev/inject` to their pods.
    let mut namespaces = BTreeMap::new();
    for value in &parsed {
        collect_namespaces(value, &mut namespaces);
    }
    let mut output = String::with_capacity(text.len() * 2);
    let mut notes = Vec::new();
    let mut invalid = Vec::new();
    for (i, (doc, mut value)) in documents.iter().zip(parsed).enumerate() {
        let context = Context {
            document: i + 1,
            namespaces: &namespaces,
            settings,
        };
        let mut report = Report {
            notes: &mut notes,
            invalid: &mut invalid,
        };
        let changed = patch_object(&mut value, &context, &mut report)?;
        output.push_str(doc.separator);
        if changed {
            let text = serde_yaml::to_string(&value).map_err(|e| ManifestError::Yaml {
                document: i + 1,
                message: e.to_string(),
            })?;
            output.push_str(&text);
        } else {
            output.push_str(doc.body);
        }
    }
    match invalid.len() {
        0 => Ok(Injected { output, notes }),
        1 => Err(invalid.remove(0)),
        _ => Err(ManifestError::Invalid(invalid)),
    }
}

/// What happened to each pod template: a note per template, and the invalid ones (the run goes
/// on after them so that every invalid annotation of the input is named at once).
struct Report<'a> {
    notes: &'a mut Vec<String>,
    invalid: &'a mut Vec<ManifestError>,
}

struct Context<'a> {
    document: usize,
    namespaces: &'a BTreeMap<String, BTreeMap<String, String>>,
    settings: &'a Settings,
}

fn str_at<'v>(value: &'v Value, path: &[&str]) -> Option<&'v str> {
    path.iter().try_fold(value, |v, key| v.get(*key))?.as_str()
}

fn collect_namespaces(value: &Value, out: &mut BTreeMap<String, BTreeMap<String, String>>) {
    match str_at(value, &["kind"]) {
        Some("Namespace") => {
            let name = str_at(value, &["metadata", "name"]).unwrap_or_default();
            let annotations = value
                .get("metadata")
                .and_then(|m| m.get("annotations"))
                .and_then(|a| serde_yaml::from_value(a.clone()).ok())
                .unwrap_or_default();
            out.insert(name.to_owned(), annotations);
        }
        Some(kind) if kind.ends_with("List") => {
            for item in value
                .get("items")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                collect_namespaces(item, out);
            }
        }
        _ => {}
    }
}

/// Where each kind keeps its pod template.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController"
        | "PodTemplate" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

fn patch_object(
    value: &mut Value,
    context: &Context<'_>,
    report: &mut Report<'_>,
) -> Result<bool, ManifestError> {
    let Some(kind) = str_at(value, &["kind"]).map(str::to_owned) else {
        return Ok(false);
    };
    if kind.ends_with("List") {
        let mut changed = false;
        if let Some(items) = value.get_mut("items").and_then(Value::as_sequence_mut) {
            for item in items {
                changed |= patch_object(item, context, report)?;
            }
        }
        return Ok(changed);
    }
    let Some(path) = template_path(&kind) else {
        return Ok(false);
    };
    let namespace = str_at(value, &["metadata", "namespace"]).map(str::to_owned);
    let name = str_at(value, &["metadata", "name"]).unwrap_or_default();
    let object = match &namespace {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    };
    // PodTemplate keeps it at `template`, not `spec.template`.
    let path: &[&str] = if kind == "PodTemplate" {
        &["template"]
    } else {
        path
    };
    let Some(template) = path.iter().try_fold(&mut *value, |v, key| v.get_mut(*key)) else {
        return Ok(false);
    };
    let invalid = |message: String| ManifestError::Template {
        document: context.document,
        object: object.clone(),
        message,
    };
    let metadata: ObjectMeta = match template.get("metadata") {
        Some(m) => serde_yaml::from_value(m.clone()).map_err(|e| invalid(e.to_string()))?,
        None => ObjectMeta::default(),
    };
    let Some(spec) = template.get("spec") else {
        return Ok(false);
    };
    let spec: PodSpec = serde_yaml::from_value(spec.clone()).map_err(|e| invalid(e.to_string()))?;
    let ns_annotations = namespace.as_ref().and_then(|ns| context.namespaces.get(ns));
    let decision = match inject(&metadata, &spec, ns_annotations, context.settings) {
        Ok(decision) => decision,
        Err(source) => {
            report.invalid.push(ManifestError::Inject {
                document: context.document,
                object,
                source: Box::new(source),
            });
            return Ok(false);
        }
    };
    let notes = &mut *report.notes;
    match decision {
        Decision::Skip { reason } => {
            notes.push(format!("{object}: skipped ({reason})"));
            Ok(false)
        }
        Decision::AlreadyInjected => {
            notes.push(format!("{object}: already injected"));
            Ok(false)
        }
        Decision::Inject { metadata, spec } => {
            let to_value =
                |v: Result<Value, serde_yaml::Error>| v.map_err(|e| invalid(e.to_string()));
            let metadata = to_value(serde_yaml::to_value(&metadata))?;
            let spec = to_value(serde_yaml::to_value(&spec))?;
            if let Some(map) = template.as_mapping_mut() {
                map.insert(Value::from("metadata"), metadata);
                map.insert(Value::from("spec"), spec);
            }
            notes.push(format!("{object}: injected"));
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_on_separator_lines_only() {
        let text = "a: 1\n---\nb: '---'\n--- # two\nc: 3\n";
        let docs = split(text);
        let bodies: Vec<_> = docs.iter().map(|d| (d.separator, d.body)).collect();
        assert_eq!(
            bodies,
            [
                ("", "a: 1\n"),
                ("---\n", "b: '---'\n"),
                ("--- # two\n", "c: 3\n")
            ]
        );
    }

    #[test]
    fn unchanged_input_is_written_back_byte_for_byte() -> Result<(), ManifestError> {
        let text = "# a comment\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n\
                    apiVersion: v1\nkind: Pod\nmetadata:\n  name: p   # kept\nspec:\n  containers: [{name: a, image: b}]\n";
        let out = inject_yaml(text, &Settings::default())?;
        assert_eq!(out.output, text);
        assert_eq!(out.notes, ["Pod p: skipped (not_requested)"]);
        Ok(())
    }
}
