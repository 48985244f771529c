//! `reprise inject` as a user runs it: k8s/example's annotated apps become the manifests of
//! k8s/example/injected (hand-written for users-client, generated for the Go client), an
//! invalid annotation exits 2 naming it, stdin works, unchanged input is written back byte for
//! byte.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use k8s_openapi::api::apps::v1::Deployment;

fn example(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../k8s/example")
        .join(file)
}

fn reprise(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_reprise"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start reprise");
    let mut input = child.stdin.take().expect("stdin is piped");
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .expect("write stdin");
    drop(input);
    child.wait_with_output().expect("reprise runs")
}

fn deployments(text: &str) -> Vec<Deployment> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| <Deployment as serde::Deserialize>::deserialize(doc).expect("a Deployment"))
        .collect()
}

/// The hand-written manifests predate the annotations that ask for injection.
fn without_reprise_annotations(mut d: Deployment) -> Deployment {
    if let Some(annotations) = d
        .spec
        .template
        .metadata
        .as_mut()
        .and_then(|m| m.annotations.as_mut())
    {
        annotations.retain(|k, _| !k.starts_with("reprise.dev/"));
    }
    d
}

#[test]
fn annotated_example_becomes_the_hand_written_manifests() {
    // The two annotated files as one input of two documents.
    let mut annotated = String::new();
    for file in ["users-client.yaml", "users-client-native-sidecar.yaml"] {
        annotated.push_str("---\n");
        annotated.push_str(&std::fs::read_to_string(example(file)).expect("read the example"));
    }
    // Annotations only: what a user writes carries nothing of the sidecar.
    for d in deployments(&annotated) {
        let pod = d.spec.template.spec.expect("a pod spec");
        let names: Vec<_> = pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten())
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["app"]);
        assert!(pod.volumes.is_none());
    }
    let out = reprise(&["inject", "-"], Some(&annotated));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let injected: Vec<_> = deployments(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .map(without_reprise_annotations)
        .collect();
    let mut expected = Vec::new();
    for file in [
        "injected/users-client.yaml",
        "injected/users-client-native-sidecar.yaml",
    ] {
        let text = std::fs::read_to_string(example(file)).expect("read the example");
        expected.extend(deployments(&text));
    }
    assert_eq!(injected.len(), 2);
    for (got, want) in injected.iter().zip(&expected) {
        assert_eq!(got, want, "{:?}", want.metadata.name);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Deployment demo/users-client: injected"),
        "{stderr}"
    );
}

#[test]
fn go_client_example_becomes_its_generated_manifest() {
    // The Go client's pod (the talk's service B) asks with annotations only, and injection
    // makes exactly injected/users-client-go.yaml of it, the reprise.dev/* annotations kept.
    let annotated = std::fs::read_to_string(example("users-client-go.yaml")).expect("read it");
    for d in deployments(&annotated) {
        let pod = d.spec.template.spec.expect("a pod spec");
        let names: Vec<_> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["app"]);
        assert!(pod.init_containers.is_none() && pod.volumes.is_none());
    }
    let out = reprise(&["inject", "-"], Some(&annotated));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = deployments(&String::from_utf8_lossy(&out.stdout));
    let golden = std::fs::read_to_string(example("injected/users-client-go.yaml"))
        .expect("read the golden manifest");
    let want = deployments(&golden);
    assert_eq!(got.len(), 1);
    assert_eq!(got, want);
    let pod = got[0].spec.template.spec.as_ref().expect("a pod spec");
    let names: Vec<_> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["app", "reprise-sidecar"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Deployment demo/users-client-go: injected")
    );
}

#[test]
fn hand_written_manifests_are_already_injected_and_written_back_as_read() {
    let text = std::fs::read_to_string(example("injected/users-client.yaml"))
        .expect("read the example")
        .replace(
            "      annotations:\n",
            "      annotations:\n        reprise.dev/inject: enabled\n",
        );
    assert!(text.contains("reprise.dev/inject: enabled"));
    let out = reprise(&["inject", "-"], Some(&text));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), text);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already injected"));
}

#[test]
fn an_invalid_annotation_exits_2_naming_it_and_the_valid_values() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    reprise.dev/inject: yes\nspec:\n  containers: [{name: app, image: app}]\n";
    let out = reprise(&["inject"], Some(pod));
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("annotation `reprise.dev/inject`")
            && stderr.contains("valid: enabled, disabled"),
        "{stderr}"
    );
}

#[test]
fn every_invalid_annotation_of_the_input_is_named_in_one_run() {
    let input = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  annotations:\n    reprise.dev/inject: enabled\n    reprise.dev/log-level: loud\n    reprise.dev/proxy-port: '0'\nspec:\n  containers: [{name: app, image: app}]\n\
                 ---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: ok\n  annotations:\n    reprise.dev/inject: enabled\nspec:\n  containers: [{name: app, image: app}]\n\
                 ---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: b\n  annotations:\n    reprise.dev/inject: enabled\n    reprise.dev/memory-limit: 64MB\nspec:\n  containers: [{name: app, image: app}]\n";
    let out = reprise(&["inject", "-"], Some(input));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        out.stdout.is_empty(),
        "nothing is written when any template is invalid"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in [
        "stdin: document 1: Pod a: annotation `reprise.dev/log-level`: `loud` is not a value; valid: error, warn, info, debug, trace",
        "stdin: document 1: Pod a: annotation `reprise.dev/proxy-port`: `0` is not a port; valid: 1 to 65535",
        "stdin: document 3: Pod b: annotation `reprise.dev/memory-limit`: `64MB` is not a Kubernetes quantity",
    ] {
        assert!(stderr.contains(line), "{line:?} in\n{stderr}");
    }
    assert!(!stderr.contains("Pod ok"), "{stderr}");
}

#[test]
fn image_flag_sets_the_sidecar_image() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    reprise.dev/inject: enabled\nspec:\n  containers: [{name: app, image: app}]\n";
    let out = reprise(
        &["inject", "--image", "registry.example/reprise:1.2"],
        Some(pod),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("image: registry.example/reprise:1.2"));
}

#[test]
fn unreadable_input_exits_1() {
    let out = reprise(&["inject", "/nonexistent/manifest.yaml"], None);
    assert_eq!(out.status.code(), Some(1));
}
