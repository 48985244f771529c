//! Golden tests of the injector: each `tests/golden/NAME.in.yaml` through
//! `manifest::inject_yaml` must give `NAME.out.yaml` exactly (`REPRISE_BLESS=1` rewrites the
//! expected files; review the diff). Every output is injected again (nothing may change) and
//! validated against the Kubernetes schemas offline with `k8s/validate.sh`'s validator. Every
//! invalid annotation is refused with a message naming it and the valid values, pinned in
//! `errors.txt`.
//!
//! Python for the validator: env REPRISE_PYTHON, else the workspace's `.venv`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use reprise_injector::k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};
use reprise_injector::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use reprise_injector::manifest::inject_yaml;
use reprise_injector::{Decision, Settings, annotations as a, inject};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn cases() -> Vec<(String, PathBuf)> {
    let mut cases: Vec<_> = std::fs::read_dir(golden_dir())
        .expect("read tests/golden")
        .map(|e| e.expect("directory entry").path())
        .filter_map(|p| {
            let name = p
                .file_name()?
                .to_str()?
                .strip_suffix(".in.yaml")?
                .to_owned();
            Some((name, p))
        })
        .collect();
    cases.sort();
    assert!(cases.len() >= 8, "golden cases missing: {cases:?}");
    cases
}

fn bless() -> bool {
    std::env::var_os("REPRISE_BLESS").is_some_and(|v| v == "1")
}

fn check_golden(path: &Path, got: &str) {
    if bless() {
        std::fs::write(path, got).expect("write golden file");
        return;
    }
    let want = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (REPRISE_BLESS=1 writes it)", path.display()));
    assert!(
        got == want,
        "{} differs (REPRISE_BLESS=1 rewrites it):\n--- got\n{got}\n--- want\n{want}",
        path.display()
    );
}

fn injected(name: &str, input: &Path) -> String {
    let text = std::fs::read_to_string(input).expect("read golden input");
    inject_yaml(&text, &Settings::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .output
}

#[test]
fn every_golden_input_gives_its_output() {
    for (name, input) in cases() {
        let got = injected(&name, &input);
        check_golden(&golden_dir().join(format!("{name}.out.yaml")), &got);
    }
}

#[test]
fn injecting_twice_equals_injecting_once() {
    for (name, input) in cases() {
        let once = injected(&name, &input);
        let twice = inject_yaml(&once, &Settings::default())
            .unwrap_or_else(|e| panic!("{name}, second pass: {e}"));
        assert_eq!(twice.output, once, "{name}");
        assert!(
            twice.notes.iter().all(|n| !n.ends_with(": injected")),
            "{name}: {:?}",
            twice.notes
        );
    }
}

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("REPRISE_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        venv.exists(),
        "no Python for the manifest validator: {} is missing and REPRISE_PYTHON is not set; \
         run scripts/python-env or set REPRISE_PYTHON to a python with kubernetes-validate",
        venv.display()
    );
    venv
}

#[test]
fn every_output_is_valid_against_the_kubernetes_schemas() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let validate = Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/validate.sh");
    std::fs::copy(&validate, dir.path().join("validate.sh")).expect("copy validate.sh");
    for (name, input) in cases() {
        std::fs::write(
            dir.path().join(format!("{name}.yaml")),
            for_validator(&injected(&name, &input)),
        )
        .expect("write output");
    }
    let out = Command::new("bash")
        .arg(dir.path().join("validate.sh"))
        .arg(python())
        .output()
        .expect("run validate.sh");
    assert!(
        out.status.success(),
        "exit {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The validator has no schema for `List`: its items become documents of their own.
fn for_validator(text: &str) -> String {
    use serde::Deserialize as _;
    let mut out = String::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc).expect("output is YAML");
        let objects = match value.get("kind").and_then(|k| k.as_str()) {
            Some("List") => value
                .get("items")
                .and_then(|i| i.as_sequence())
                .cloned()
                .unwrap_or_default(),
            _ => vec![value],
        };
        for object in objects {
            out.push_str("---\n");
            out.push_str(&serde_yaml::to_string(&object).expect("serialise"));
        }
    }
    out
}

fn pod(annotations: &[(&str, &str)], containers: Vec<Container>) -> (ObjectMeta, PodSpec) {
    let mut all: BTreeMap<String, String> = BTreeMap::from([(a::INJECT.into(), "enabled".into())]);
    all.extend(
        annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let metadata = ObjectMeta {
        name: Some("p".into()),
        annotations: Some(all),
        ..Default::default()
    };
    (
        metadata,
        PodSpec {
            containers,
            ..Default::default()
        },
    )
}

fn app(env: &[(&str, &str)]) -> Container {
    Container {
        name: "app".into(),
        image: Some("app".into()),
        env: Some(
            env.iter()
                .map(|(n, v)| EnvVar {
                    name: n.to_string(),
                    value: Some(v.to_string()),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    }
}

/// Each invalid annotation, alone on an otherwise valid pod.
#[test]
fn every_invalid_annotation_is_refused_naming_it() {
    let single: &[(&str, &str)] = &[
        (a::INJECT, "yes"),
        (a::NATIVE_SIDECAR, "maybe"),
        (a::CONFIG, "Not_A_Name"),
        (a::UPSTREAM, "users:50051"),
        (a::TARGET_ENV, "USERS URL"),
        (a::SERVICE, "-users"),
        (a::IMAGE, "two words"),
        (a::IMAGE_PULL_POLICY, "sometimes"),
        (a::CPU_REQUEST, "lots"),
        (a::CPU_LIMIT, "1.5.0"),
        (a::MEMORY_REQUEST, "64MB"),
        (a::MEMORY_LIMIT, ""),
        (a::LOG_LEVEL, "verbose"),
        (a::PROXY_PORT, "0"),
        (a::ADMIN_PORT, "70000"),
        (a::SHUTDOWN_TIMEOUT, "20"),
        (a::DRAIN_PERIOD, "soon"),
        (a::DRAIN_PERIOD, "20s"),
        (a::AMQP_SECRET, "secret/url"),
    ];
    let mut report = String::new();
    for &(key, value) in single {
        let (metadata, spec) = pod(&[(key, value)], vec![app(&[])]);
        let err = inject(&metadata, &spec, None, &Settings::default())
            .expect_err(&format!("{key}: {value:?} accepted"));
        assert_eq!(err.annotation, key);
        assert!(!err.valid.is_empty(), "{key}");
        assert!(err.more.is_empty(), "{key}: {err}");
        report.push_str(&format!("{key}={value:?}\n  {err}\n"));
    }

    // Annotations that are well formed but do not fit this pod.
    let mut clash = app(&[]);
    clash.ports = Some(vec![
        reprise_injector::k8s_openapi::api::core::v1::ContainerPort {
            container_port: 15090,
            ..Default::default()
        },
    ]);
    let mut from = app(&[]);
    from.env = Some(vec![EnvVar {
        name: "URL".into(),
        value_from: Some(Default::default()),
        ..Default::default()
    }]);
    let mut other = app(&[("URL", "b:2")]);
    other.name = "other".into();
    let misfits: Vec<(&str, (ObjectMeta, PodSpec), &str)> = vec![
        ("admin port in use", pod(&[], vec![clash]), a::ADMIN_PORT),
        (
            "ports equal",
            pod(&[(a::PROXY_PORT, "15090")], vec![app(&[])]),
            a::PROXY_PORT,
        ),
        (
            "target missing",
            pod(&[(a::TARGET_ENV, "URL")], vec![app(&[])]),
            a::TARGET_ENV,
        ),
        (
            "target valueFrom",
            pod(&[(a::TARGET_ENV, "URL")], vec![from]),
            a::TARGET_ENV,
        ),
        (
            "target differs",
            pod(
                &[(a::TARGET_ENV, "URL")],
                vec![app(&[("URL", "a:1")]), other],
            ),
            a::TARGET_ENV,
        ),
        (
            "target not an address",
            pod(&[(a::TARGET_ENV, "URL")], vec![app(&[("URL", "users")])]),
            a::TARGET_ENV,
        ),
        (
            "targets name two upstreams",
            pod(
                &[(a::TARGET_ENV, "A,B")],
                vec![app(&[("A", "a:1"), ("B", "b:1")])],
            ),
            a::TARGET_ENV,
        ),
    ];
    for (what, (metadata, spec), key) in misfits {
        let err = inject(&metadata, &spec, None, &Settings::default())
            .expect_err(&format!("{what}: accepted"));
        assert_eq!(err.annotation, key, "{what}");
        report.push_str(&format!("{what}\n  {err}\n"));
    }

    // An invalid namespace value is refused too, unless the pod decides.
    let (mut metadata, spec) = pod(&[], vec![app(&[])]);
    metadata.annotations = None;
    let ns = BTreeMap::from([(a::INJECT.to_owned(), "on".to_owned())]);
    let err =
        inject(&metadata, &spec, Some(&ns), &Settings::default()).expect_err("namespace `on`");
    report.push_str(&format!("namespace {}=\"on\"\n  {err}\n", a::INJECT));

    // Several at once: every one is named, in the documented order, the valid ones are not.
    let several = [
        (a::NATIVE_SIDECAR, "maybe"),
        (a::LOG_LEVEL, "verbose"),
        (a::IMAGE, "reprise:1.0"),
        (a::ADMIN_PORT, "70000"),
        (a::DRAIN_PERIOD, "soon"),
    ];
    let (metadata, spec) = pod(&several, vec![app(&[])]);
    let err = inject(&metadata, &spec, None, &Settings::default()).expect_err("four invalid");
    let named: Vec<&str> = err.problems().map(|p| p.annotation.as_str()).collect();
    assert_eq!(
        named,
        [
            a::NATIVE_SIDECAR,
            a::LOG_LEVEL,
            a::ADMIN_PORT,
            a::DRAIN_PERIOD
        ]
    );
    report.push_str(&format!("several at once\n  {err}\n"));

    check_golden(&golden_dir().join("errors.txt"), &report);
}

#[test]
fn decisions_without_a_patch() {
    let settings = Settings::default();
    let (mut metadata, spec) = pod(&[], vec![app(&[])]);
    let ns_on = BTreeMap::from([(a::INJECT.to_owned(), "enabled".to_owned())]);
    let ns_off = BTreeMap::from([(a::INJECT.to_owned(), "disabled".to_owned())]);

    // The pod wins over its namespace, both ways.
    assert!(matches!(
        inject(&metadata, &spec, Some(&ns_off), &settings),
        Ok(Decision::Inject { .. })
    ));
    metadata.annotations = Some(BTreeMap::from([(a::INJECT.into(), "disabled".into())]));
    assert_eq!(
        inject(&metadata, &spec, Some(&ns_on), &settings),
        Ok(Decision::Skip { reason: "disabled" })
    );
    metadata.annotations = None;
    assert_eq!(
        inject(&metadata, &spec, None, &settings),
        Ok(Decision::Skip {
            reason: "not_requested"
        })
    );
    assert_eq!(
        inject(&metadata, &spec, Some(&ns_off), &settings),
        Ok(Decision::Skip { reason: "disabled" })
    );
    assert!(matches!(
        inject(&metadata, &spec, Some(&ns_on), &settings),
        Ok(Decision::Inject { .. })
    ));

    // The output of one injection is already injected.
    let Ok(Decision::Inject { metadata, spec }) = inject(&metadata, &spec, Some(&ns_on), &settings)
    else {
        panic!("not injected");
    };
    assert_eq!(
        inject(&metadata, &spec, Some(&ns_on), &settings),
        Ok(Decision::AlreadyInjected)
    );
}
