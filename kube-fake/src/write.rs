//! The HTTP writes on the cluster, with the real API server's rules, decided without I/O:
//! create, replace, JSON merge patch and delete, each ending in the scripted
//! [`Cluster::add`], [`Cluster::modify`] or [`Cluster::delete`], so an HTTP write bumps the
//! resourceVersion and reaches the watches exactly as a scripted one.
//!
//! What the real one does and this keeps:
//! - the namespace in the path wins: an empty one in the body is filled in, another is 400;
//! - the name in the body must be the one in the path (400), and exists (404) or not (409);
//! - a `metadata.resourceVersion` (or `uid`) in the body is a precondition: stale is 409, unset
//!   is an unconditional write;
//! - the pod and its status are written separately: a write to `/pods/{name}` keeps the stored
//!   status, one to `/pods/{name}/status` keeps the spec (as the pod's status strategy does);
//! - a merge patch (RFC 7386) is applied to the stored object, then checked as a replace.
//!
//! Unlike the real one, a created pod keeps the status it was sent (the real one resets it to
//! `Pending`), so one request can put a running pod in place, and nothing is validated.

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use crate::{Cluster, cluster::to_value, status::ApiError};

/// Which part of a pod a write changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// `/pods/{name}`: metadata and spec; the stored status is kept.
    Pod,
    /// `/pods/{name}/status`: the status (and labels, annotations); the stored spec is kept.
    Status,
}

impl Part {
    /// What the stored pod `old` becomes when `new` is written to this part.
    fn apply(self, old: Pod, mut new: Pod) -> Pod {
        match self {
            Part::Pod => new.status = old.status,
            Part::Status => {
                new.spec = old.spec;
                new.metadata.deletion_timestamp = old.metadata.deletion_timestamp;
                new.metadata.deletion_grace_period_seconds =
                    old.metadata.deletion_grace_period_seconds;
                new.metadata.owner_references = old.metadata.owner_references;
            }
        }
        new
    }
}

impl Cluster {
    /// `POST /api/v1/namespaces/{namespace}/pods`
    pub(crate) fn create(&mut self, namespace: &str, mut pod: Pod) -> Result<Pod, ApiError> {
        in_namespace(&mut pod, namespace)?;
        let name = match pod.metadata.name.as_deref() {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => {
                return Err(ApiError::invalid(
                    "Pod \"\" is invalid: metadata.name: Required value: name or generateName \
                     is required",
                ));
            }
        };
        if self.pod(namespace, &name).is_some() {
            return Err(ApiError::already_exists(&name));
        }
        // The server's own fields: what a client sends there is ignored.
        let meta = &mut pod.metadata;
        meta.uid = None;
        meta.creation_timestamp = None;
        meta.resource_version = None;
        meta.deletion_timestamp = None;
        meta.deletion_grace_period_seconds = None;
        Ok(self.add(pod))
    }

    /// `PUT /api/v1/namespaces/{namespace}/pods/{name}` (and `…/status`)
    pub(crate) fn replace(
        &mut self,
        namespace: &str,
        name: &str,
        part: Part,
        mut pod: Pod,
    ) -> Result<Pod, ApiError> {
        named(&pod, name)?;
        in_namespace(&mut pod, namespace)?;
        let old = self
            .pod(namespace, name)
            .ok_or_else(|| ApiError::not_found(name))?;
        preconditions(&old, &pod, name)?;
        Ok(self.modify(part.apply(old, pod)))
    }

    /// `PATCH /api/v1/namespaces/{namespace}/pods/{name}` (and `…/status`) with
    /// `application/merge-patch+json`.
    pub(crate) fn merge_patch(
        &mut self,
        namespace: &str,
        name: &str,
        part: Part,
        patch: &Value,
    ) -> Result<Pod, ApiError> {
        let old = self
            .pod(namespace, name)
            .ok_or_else(|| ApiError::not_found(name))?;
        let mut doc = to_value(&old);
        json_patch::merge(&mut doc, patch);
        let mut pod: Pod = serde_json::from_value(doc)
            .map_err(|e| ApiError::bad_request(format!("the patched object is not a Pod: {e}")))?;
        named(&pod, name)?;
        in_namespace(&mut pod, namespace)?;
        preconditions(&old, &pod, name)?;
        Ok(self.modify(part.apply(old, pod)))
    }

    /// `DELETE /api/v1/namespaces/{namespace}/pods/{name}`: at once, as with a grace period of
    /// zero. Returns the pod as the watches see it deleted.
    pub(crate) fn remove(&mut self, namespace: &str, name: &str) -> Result<Pod, ApiError> {
        if self.pod(namespace, name).is_none() {
            return Err(ApiError::not_found(name));
        }
        Ok(self.delete(namespace, name))
    }
}

fn named(pod: &Pod, name: &str) -> Result<(), ApiError> {
    let given = pod.metadata.name.as_deref().unwrap_or_default();
    if given == name {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "the name of the object ({given}) does not match the name on the URL ({name})"
        )))
    }
}

fn in_namespace(pod: &mut Pod, namespace: &str) -> Result<(), ApiError> {
    match pod.metadata.namespace.as_deref() {
        None | Some("") => {
            pod.metadata.namespace = Some(namespace.to_owned());
            Ok(())
        }
        Some(given) if given == namespace => Ok(()),
        Some(_) => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
    }
}

/// A resourceVersion or uid the client sent must be the stored pod's.
fn preconditions(old: &Pod, new: &Pod, name: &str) -> Result<(), ApiError> {
    let sent = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
    if let Some(rv) = sent(&new.metadata.resource_version)
        && Some(&rv) != old.metadata.resource_version.as_ref()
    {
        return Err(ApiError::conflict(
            name,
            "the object has been modified; please apply your changes to the latest version and \
             try again",
        ));
    }
    if let Some(uid) = sent(&new.metadata.uid)
        && Some(&uid) != old.metadata.uid.as_ref()
    {
        let stored = old.metadata.uid.as_deref().unwrap_or_default();
        return Err(ApiError::conflict(
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {stored}"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use http::StatusCode;
    use serde_json::json;

    use super::*;
    use crate::pods::{SIDECAR, injected_pod};

    fn cluster_with(name: &str) -> (Cluster, Pod) {
        let mut c = Cluster::default();
        let pod = c.add(injected_pod("demo", name));
        (c, pod)
    }

    fn sidecar_reason(pod: &Pod) -> Option<String> {
        let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
        let sidecar = statuses.iter().find(|s| s.name == SIDECAR)?;
        sidecar.state.as_ref()?.terminated.as_ref()?.reason.clone()
    }

    #[test]
    fn create_fills_the_namespace_and_ignores_server_fields() {
        let mut c = Cluster::default();
        let mut pod = injected_pod("", "a");
        pod.metadata.namespace = None;
        pod.metadata.uid = Some("client-uid".into());
        pod.metadata.resource_version = Some("999".into());
        let created = c.create("demo", pod).expect("created");
        assert_eq!(created.metadata.namespace.as_deref(), Some("demo"));
        assert_ne!(created.metadata.uid.as_deref(), Some("client-uid"));
        assert_eq!(created.metadata.resource_version.as_deref(), Some("1"));
        assert!(
            created.status.is_some(),
            "the fake keeps a created pod's status"
        );
    }

    #[test]
    fn create_refuses_a_second_pod_another_namespace_and_no_name() {
        let (mut c, _) = cluster_with("a");
        let e = c
            .create("demo", injected_pod("demo", "a"))
            .expect_err("exists");
        assert_eq!((e.code, e.reason), (StatusCode::CONFLICT, "AlreadyExists"));
        let e = c
            .create("demo", injected_pod("other", "b"))
            .expect_err("ns");
        assert_eq!((e.code, e.reason), (StatusCode::BAD_REQUEST, "BadRequest"));
        let mut nameless = injected_pod("demo", "x");
        nameless.metadata.name = None;
        let e = c.create("demo", nameless).expect_err("no name");
        assert_eq!(e.code, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            c.resource_version(),
            1,
            "no refused write bumps the version"
        );
    }

    #[test]
    fn a_stale_resource_version_conflicts_and_an_unset_one_does_not() {
        let (mut c, stored) = cluster_with("a");
        let mut fresh = stored.clone();
        fresh.metadata.labels = Some(BTreeMap::from([("k".to_owned(), "v".to_owned())]));
        let written = c
            .replace("demo", "a", Part::Pod, fresh)
            .expect("current version");
        let e = c
            .replace("demo", "a", Part::Pod, stored.clone())
            .expect_err("stale");
        assert_eq!((e.code, e.reason), (StatusCode::CONFLICT, "Conflict"));
        let mut unconditional = stored;
        unconditional.metadata.resource_version = None;
        let again = c
            .replace("demo", "a", Part::Pod, unconditional)
            .expect("unconditional");
        assert!(again.metadata.resource_version > written.metadata.resource_version);
    }

    #[test]
    fn the_pod_and_its_status_are_written_separately() {
        let (mut c, stored) = cluster_with("a");
        let mut changed = stored.clone();
        changed.metadata.resource_version = None;
        if let Some(spec) = changed.spec.as_mut() {
            spec.node_name = Some("worker-9".into());
        }
        if let Some(status) = changed.status.as_mut() {
            status.phase = Some("Failed".into());
        }
        let via_pod = c
            .replace("demo", "a", Part::Pod, changed.clone())
            .expect("pod");
        assert_eq!(via_pod.status, stored.status, "status kept");
        let node = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone());
        assert_eq!(node(&via_pod).as_deref(), Some("worker-9"));

        if let Some(spec) = changed.spec.as_mut() {
            spec.node_name = Some("worker-1".into());
        }
        let via_status = c
            .replace("demo", "a", Part::Status, changed)
            .expect("status");
        assert_eq!(node(&via_status).as_deref(), Some("worker-9"), "spec kept");
        let phase = via_status.status.and_then(|s| s.phase);
        assert_eq!(phase.as_deref(), Some("Failed"));
    }

    #[test]
    fn a_merge_patch_replaces_lists_and_null_removes() {
        let (mut c, _) = cluster_with("a");
        let patch = json!({
            "metadata": { "labels": { "app": null } },
            "status": { "containerStatuses": [{
                "name": SIDECAR, "image": "reprise/sidecar:1", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": { "terminated": { "exitCode": 137, "reason": "OOMKilled" } }
            }]}
        });
        let patched = c
            .merge_patch("demo", "a", Part::Status, &patch)
            .expect("patched");
        let labels = patched.metadata.labels.clone().unwrap_or_default();
        assert!(!labels.contains_key("app"));
        assert!(labels.contains_key("reprise.dev/injected"));
        let statuses = patched
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone());
        assert_eq!(
            statuses.map(|s| s.len()),
            Some(1),
            "the list is replaced whole"
        );
        assert_eq!(sidecar_reason(&patched).as_deref(), Some("OOMKilled"));
    }

    #[test]
    fn a_merge_patch_is_checked_like_a_replace() {
        let (mut c, _) = cluster_with("a");
        let cases = [
            (
                json!({ "metadata": { "resourceVersion": "7" } }),
                StatusCode::CONFLICT,
            ),
            (
                json!({ "metadata": { "name": "b" } }),
                StatusCode::BAD_REQUEST,
            ),
            (
                json!({ "metadata": { "namespace": "x" } }),
                StatusCode::BAD_REQUEST,
            ),
            (json!({ "status": { "phase": 3 } }), StatusCode::BAD_REQUEST),
            (json!([1, 2]), StatusCode::BAD_REQUEST),
        ];
        for (patch, code) in cases {
            let e = c
                .merge_patch("demo", "a", Part::Pod, &patch)
                .expect_err("refused");
            assert_eq!(e.code, code, "{patch}");
        }
        let e = c
            .merge_patch("demo", "nope", Part::Pod, &json!({}))
            .expect_err("absent");
        assert_eq!((e.code, e.reason), (StatusCode::NOT_FOUND, "NotFound"));
        assert_eq!(c.resource_version(), 1);
    }

    #[test]
    fn remove_returns_the_pod_at_the_deletions_version() {
        let (mut c, _) = cluster_with("a");
        let gone = c.remove("demo", "a").expect("deleted");
        assert_eq!(gone.metadata.resource_version.as_deref(), Some("2"));
        let e = c.remove("demo", "a").expect_err("absent");
        assert_eq!(e.code, StatusCode::NOT_FOUND);
    }
}
