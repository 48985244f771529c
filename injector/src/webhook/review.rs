//! One AdmissionReview in, one out: the decision is pure (no I/O), so it is tested without a
//! server. The pod at admission may have no `name` (a Deployment's pod has `generateName`) and
//! no `namespace` (it is only in `request.namespace`); the library does not need either.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview},
};
use reprise_injector::{Decision, Settings};

/// What happened to one review, for the metrics and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    Skipped(&'static str),
    /// The annotation that was invalid.
    Denied(String),
    /// Not a Pod, or a request without an object (DELETE): allowed untouched.
    NotAPod,
}

/// The review as the API server reads it. kube-core serializes `response.patch` (a `Vec<u8>`)
/// as an array of numbers; Kubernetes, written in Go, wants a `[]byte` as a base64 string and
/// rejects anything else, so the patch is re-encoded here.
pub fn to_wire(review: &AdmissionReview<DynamicObject>) -> serde_json::Result<Vec<u8>> {
    use base64::Engine;
    let mut value = serde_json::to_value(review)?;
    if let Some(response) = review.response.as_ref()
        && let Some(patch) = response.patch.as_ref()
    {
        value["response"]["patch"] =
            serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(patch));
    }
    serde_json::to_vec(&value)
}

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("not an admission.k8s.io/v1 AdmissionReview: {0}")]
    Malformed(String),
}

/// Decides one review. `namespace_annotations` are those of `request.namespace`, when known.
#[cfg(test)]
pub fn review(
    body: &[u8],
    namespace_annotations: Option<&BTreeMap<String, String>>,
    settings: &Settings,
) -> Result<(AdmissionReview<DynamicObject>, Outcome), ReviewError> {
    decide(&parse(body)?, namespace_annotations, settings)
}

/// The namespace whose annotations the decision needs: a pod's that does not say
/// `reprise.dev/inject` itself (the pod wins over its namespace).
pub fn namespace_needed(request: &AdmissionRequest<DynamicObject>) -> Option<&str> {
    let object = request.object.as_ref()?;
    let asks = object
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(reprise_injector::annotations::INJECT));
    if asks || request.kind.kind != "Pod" {
        return None;
    }
    request.namespace.as_deref()
}

pub fn parse(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, ReviewError> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|e| ReviewError::Malformed(e.to_string()))?;
    if review.types.api_version != "admission.k8s.io/v1" || review.types.kind != "AdmissionReview" {
        return Err(ReviewError::Malformed(format!(
            "apiVersion {:?}, kind {:?}; valid: admission.k8s.io/v1, AdmissionReview",
            review.types.api_version, review.types.kind
        )));
    }
    review
        .try_into()
        .map_err(|_| ReviewError::Malformed("no `request`".into()))
}

pub fn decide(
    request: &AdmissionRequest<DynamicObject>,
    namespace_annotations: Option<&BTreeMap<String, String>>,
    settings: &Settings,
) -> Result<(AdmissionReview<DynamicObject>, Outcome), ReviewError> {
    let response = AdmissionResponse::from(request);
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    let object = match (&request.object, is_pod) {
        (Some(object), true) => object,
        _ => return Ok((response.into_review(), Outcome::NotAPod)),
    };
    let original =
        serde_json::to_value(object).map_err(|e| ReviewError::Malformed(e.to_string()))?;
    let pod: Pod = serde_json::from_value(original.clone())
        .map_err(|e| ReviewError::Malformed(format!("request.object is not a Pod: {e}")))?;
    let spec = pod.spec.clone().unwrap_or_default();
    let (response, outcome) =
        match reprise_injector::inject(&pod.metadata, &spec, namespace_annotations, settings) {
            Err(e) => {
                let annotation = e.annotation.clone();
                (response.deny(e.to_string()), Outcome::Denied(annotation))
            }
            Ok(Decision::Skip { reason }) => (response, Outcome::Skipped(reason)),
            Ok(Decision::AlreadyInjected) => (response, Outcome::Skipped("already_injected")),
            Ok(Decision::Inject { metadata, spec }) => {
                let patched = Pod {
                    metadata,
                    spec: Some(spec),
                    status: pod.status.clone(),
                };
                // Diff against the object as received (typed round trip on both sides), so the
                // patch touches only what injection changed, whatever fields the pod carries.
                let before = serde_json::to_value(&pod)
                    .map_err(|e| ReviewError::Malformed(e.to_string()))?;
                let after = serde_json::to_value(&patched)
                    .map_err(|e| ReviewError::Malformed(e.to_string()))?;
                let patch = json_patch::diff(&before, &after);
                match response.with_patch(patch) {
                    Ok(r) => (r, Outcome::Injected),
                    Err(e) => (
                        AdmissionResponse::from(request)
                            .deny(format!("cannot encode the patch: {e}")),
                        Outcome::Denied("patch".into()),
                    ),
                }
            }
        };
    Ok((response.into_review(), outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(annotations: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop",
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"generateName": "users-client-7d9f-", "annotations": annotations},
                    "spec": {"containers": [{"name": "app", "image": "users-client:1"}]}
                },
                "oldObject": null,
                "dryRun": false,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
            }
        }))
        .unwrap_or_default()
    }

    #[test]
    fn a_pod_that_does_not_ask_is_allowed_untouched() -> anyhow::Result<()> {
        let (out, outcome) = review(&body(serde_json::json!({})), None, &Settings::default())?;
        let response = out.response.ok_or_else(|| anyhow::anyhow!("no response"))?;
        assert!(response.allowed);
        assert!(response.patch.is_none());
        assert_eq!(outcome, Outcome::Skipped("not_requested"));
        Ok(())
    }

    #[test]
    fn an_invalid_annotation_is_denied_by_name() -> anyhow::Result<()> {
        let ask = serde_json::json!({"reprise.dev/inject": "yes"});
        let (out, outcome) = review(&body(ask), None, &Settings::default())?;
        let response = out.response.ok_or_else(|| anyhow::anyhow!("no response"))?;
        assert!(!response.allowed);
        assert!(response.result.message.contains("reprise.dev/inject"));
        assert_eq!(outcome, Outcome::Denied("reprise.dev/inject".into()));
        Ok(())
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(review(b"{\"kind\": 3", None, &Settings::default()).is_err());
        assert!(
            review(
                b"{\"apiVersion\":\"v1\",\"kind\":\"Pod\"}",
                None,
                &Settings::default()
            )
            .is_err()
        );
    }
}
