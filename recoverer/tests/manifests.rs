//! The Kubernetes manifests under k8s/, checked offline (there is no cluster here):
//!
//! - `k8s/validate.sh` passes: strict schema validation against the bundled Kubernetes schemas,
//!   kustomization resources that exist, RBAC without wildcards or Secrets;
//! - the same script rejects a copy of the manifests with `secrets` and `*` in the recoverer's
//!   ClusterRole, or with an unknown field, so the checks can fail;
//! - the configuration files embedded in the ConfigMaps are valid for the binaries that read
//!   them, and agree with the Deployments around them (ports, labels, container names, grace
//!   periods).
//!
//! Python: env REPRISE_PYTHON, else the workspace's `.venv` (made by `scripts/python-env`, which
//! installs `scripts/requirements-dev.txt`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use reprise_recoverer::config::Config;
use serde_yaml::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the recoverer crate lives in the workspace")
        .to_path_buf()
}

fn k8s_dir() -> PathBuf {
    workspace().join("k8s")
}

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("REPRISE_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        venv.exists(),
        "no Python for the manifest validator: {} is missing and REPRISE_PYTHON is not set; \
         run scripts/python-env (it makes .venv with scripts/requirements-dev.txt) or set \
         REPRISE_PYTHON to a python with kubernetes-validate installed",
        venv.display()
    );
    venv
}

fn run_validate(dir: &Path) -> Output {
    Command::new("bash")
        .arg(dir.join("validate.sh"))
        .arg(python())
        .output()
        .expect("running k8s/validate.sh")
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A copy of k8s/ (validate.sh included: it validates the directory it lives in).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create directory");
    for entry in std::fs::read_dir(from).expect("read directory") {
        let entry = entry.expect("directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// Replaces the one occurrence of `from` (outside comments: the anchors include line starts).
fn replace_in(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("read manifest");
    assert_eq!(
        text.matches(from).count(),
        1,
        "{} should contain {from:?} exactly once: update this test",
        path.display()
    );
    std::fs::write(path, text.replacen(from, to, 1)).expect("write manifest");
}

#[test]
fn manifests_pass_offline_validation() {
    let output = run_validate(&k8s_dir());
    assert!(
        output.status.success(),
        "k8s/validate.sh failed:\n{}",
        text(&output)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("valid against Kubernetes"),
        "unexpected output:\n{}",
        text(&output)
    );
}

#[test]
fn validation_rejects_secrets_and_wildcards_in_rbac() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let copy = tmp.path().join("k8s");
    copy_dir(&k8s_dir(), &copy);
    replace_in(
        &copy.join("recoverer/rbac.yaml"),
        "\n  - apiGroups: [\"\"]\n    resources: [\"pods\"]\n    verbs: [\"get\", \"list\", \"watch\"]\n",
        "\n  - apiGroups: [\"\"]\n    resources: [\"pods\", \"secrets\"]\n    verbs: [\"*\"]\n",
    );

    let output = run_validate(&copy);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in [
        "recoverer/rbac.yaml: ClusterRole/reprise-recoverer: rules[0].resources grants access to 'secrets'",
        "recoverer/rbac.yaml: ClusterRole/reprise-recoverer: rules[0].verbs has the wildcard '*'",
    ] {
        assert!(stderr.contains(needle), "{needle:?} in\n{}", text(&output));
    }
}

#[test]
fn validation_rejects_unknown_fields_and_missing_resources() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let copy = tmp.path().join("k8s");
    copy_dir(&k8s_dir(), &copy);
    // A misspelt probe: the API server would drop it silently; strict validation must not.
    replace_in(
        &copy.join("recoverer/deployment.yaml"),
        "          readinessProbe:",
        "          readinesProbe:",
    );
    replace_in(
        &copy.join("example/kustomization.yaml"),
        "  - users.yaml",
        "  - user.yaml",
    );

    let output = run_validate(&copy);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in [
        "'readinesProbe' was unexpected",
        "example/kustomization.yaml: resource 'user.yaml' does not exist",
    ] {
        assert!(stderr.contains(needle), "{needle:?} in\n{}", text(&output));
    }
}

// ---- the embedded configurations and their Deployments ----

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read manifest");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("manifest YAML"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn single(path: &Path, kind: &str) -> Value {
    let mut found: Vec<Value> = documents(path)
        .into_iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect();
    assert_eq!(found.len(), 1, "one {kind} in {}", path.display());
    found.remove(0)
}

fn str_at<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v:?}"))
}

/// `host:port` → port.
fn port_of(addr: &str) -> u64 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr:?} has no port"))
}

/// Every container of a pod spec, init containers (native sidecars) included.
fn containers(pod_spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| pod_spec[*k].as_sequence())
        .flatten()
        .collect()
}

fn container_port(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("container port {name:?} in {container:?}"))
}

fn probe_port<'a>(container: &'a Value, probe: &str) -> &'a str {
    str_at(
        &container[probe]["httpGet"]["port"],
        &format!("{probe} port"),
    )
}

#[test]
fn recoverer_config_is_valid_and_matches_its_deployment() {
    let dir = k8s_dir().join("recoverer");
    let cm = single(&dir.join("configmap.yaml"), "ConfigMap");
    let yaml = str_at(&cm["data"]["recoverer.yaml"], "data.recoverer.yaml");
    let config = Config::parse(yaml, &BTreeMap::new())
        .unwrap_or_else(|e| panic!("recoverer.yaml is invalid:\n{}", e.join("\n")));
    assert_eq!(config.kube, Some(true));
    assert_eq!(config.reconcile_interval, Duration::from_secs(5));
    assert!(
        config.metrics_listen.ip().is_unspecified(),
        "probes reach the pod IP"
    );
    // The env override from the Secret replaces amqp_url, and must parse as one.
    let env = BTreeMap::from([(
        "REPRISE_AMQP_URL".to_owned(),
        "amqp://user:secret@rabbitmq.reprise-system.svc:5672/%2f?heartbeat=10".to_owned(),
    )]);
    let with_secret = Config::parse(yaml, &env).expect("valid with REPRISE_AMQP_URL");
    assert!(
        with_secret
            .amqp_url
            .as_deref()
            .is_some_and(|u| u.contains("user:secret"))
    );

    let deployment = single(&dir.join("deployment.yaml"), "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let [container] = containers(pod)[..] else {
        panic!("one container in the recoverer's pod");
    };
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| str_at(a, "arg"))
        .collect();
    assert_eq!(args, ["--config", "/etc/reprise/recoverer.yaml"]);
    assert_eq!(
        u64::from(config.metrics_listen.port()),
        container_port(container, "metrics")
    );
    assert_eq!(probe_port(container, "livenessProbe"), "metrics");
    assert_eq!(probe_port(container, "readinessProbe"), "metrics");
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(2));
    let secret_ref = container["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .find(|e| e["name"].as_str() == Some("REPRISE_AMQP_URL"))
        .map(|e| &e["valueFrom"]["secretKeyRef"])
        .expect("REPRISE_AMQP_URL from a Secret");
    assert_eq!(secret_ref["name"].as_str(), Some("reprise-amqp"));
}

#[test]
fn example_sidecar_config_is_valid_and_matches_its_deployments() {
    let dir = k8s_dir().join("example");
    let cm = single(&dir.join("sidecar-config.yaml"), "ConfigMap");
    let yaml = str_at(&cm["data"]["sidecar.yaml"], "data.sidecar.yaml");
    let sidecar: Value = serde_yaml::from_str(yaml).expect("sidecar.yaml is YAML");

    // The sidecar's own parser, through its --check (descriptors from a file instead of
    // reflection: there is no upstream to ask here).
    // The workspace's binaries sit beside deps/, where this test binary lives.
    let exe = std::env::current_exe().expect("test executable path");
    let bins = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory");
    let bin = |name: &str| {
        let path = bins.join(name);
        assert!(
            path.exists(),
            "{} is missing: build every binary first (`cargo build --release --workspace --bins`, as scripts/test does)",
            path.display()
        );
        path
    };
    let tmp = tempfile::tempdir().expect("temporary directory");
    let descriptors = tmp.path().join("demo.binpb");
    let written = Command::new(bin("demo-server"))
        .arg("--write-descriptors")
        .arg(&descriptors)
        .output()
        .expect("demo-server --write-descriptors");
    assert!(written.status.success(), "{}", text(&written));
    let config_file = tmp.path().join("sidecar.yaml");
    std::fs::write(&config_file, yaml).expect("write sidecar.yaml");
    let check = Command::new(bin("reprise-sidecar"))
        .arg("--config")
        .arg(&config_file)
        .arg("--check")
        .env("REPRISE_DESCRIPTORS", &descriptors)
        .env("REPRISE_SERVICE", "users-client")
        .env("POD_NAME", "users-client-0")
        .env(
            "REPRISE_AMQP_URL",
            "amqp://user:secret@rabbitmq.reprise-system.svc:5672/%2f",
        )
        .output()
        .expect("reprise-sidecar --check");
    assert!(
        check.status.success(),
        "the example's sidecar.yaml is invalid:\n{}",
        text(&check)
    );
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("demo.v1.UserService/ListUsers"),
        "{}",
        text(&check)
    );
    assert_eq!(sidecar["descriptors"].as_str(), Some("reflection"));
    assert_eq!(sidecar["listen"].as_str(), Some("127.0.0.1:15001"));

    // Recoverer and sidecars must agree on the prefix, the label and the container name.
    let recoverer_cm = single(&k8s_dir().join("recoverer/configmap.yaml"), "ConfigMap");
    let recoverer = Config::parse(
        str_at(&recoverer_cm["data"]["recoverer.yaml"], "recoverer.yaml"),
        &BTreeMap::new(),
    )
    .expect("valid recoverer.yaml");
    assert_eq!(
        sidecar["key_prefix"].as_str(),
        Some(recoverer.key_prefix.as_str())
    );
    let (label, label_value) = recoverer
        .label_selector
        .split_once('=')
        .expect("label_selector is key=value");

    let shutdown_timeout =
        humantime::parse_duration(str_at(&sidecar["shutdown_timeout"], "shutdown_timeout"))
            .expect("shutdown_timeout is a duration");
    let metrics_port = port_of(str_at(&sidecar["metrics_listen"], "metrics_listen"));
    // The pods as the injector makes them (k8s/example/injected; cli/tests/inject.rs holds the
    // injector to these files).
    for file in [
        "injected/users-client.yaml",
        "injected/users-client-native-sidecar.yaml",
    ] {
        let deployment = single(&dir.join(file), "Deployment");
        let template = &deployment["spec"]["template"];
        let pod = &template["spec"];
        assert_eq!(
            template["metadata"]["labels"][label].as_str(),
            Some(label_value),
            "{file}: the recoverer's label_selector must select the pods"
        );
        let grace = pod["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or_else(|| panic!("{file}: terminationGracePeriodSeconds"));
        assert!(
            shutdown_timeout + Duration::from_secs(5) <= Duration::from_secs(grace),
            "{file}: shutdown_timeout {shutdown_timeout:?} must stay well below the grace period {grace}s"
        );
        let all = containers(pod);
        let side = all
            .iter()
            .find(|c| c["name"].as_str() == Some(recoverer.sidecar_container.as_str()))
            .unwrap_or_else(|| {
                panic!(
                    "{file}: no container named {:?} (the recoverer's sidecar_container)",
                    recoverer.sidecar_container
                )
            });
        assert_eq!(
            container_port(side, "reprise-metrics"),
            metrics_port,
            "{file}"
        );
        assert_eq!(
            probe_port(side, "readinessProbe"),
            "reprise-metrics",
            "{file}"
        );
        assert_eq!(
            side["readinessProbe"]["httpGet"]["path"].as_str(),
            Some("/readyz"),
            "{file}"
        );
        let env: Vec<&str> = side["env"]
            .as_sequence()
            .expect("sidecar env")
            .iter()
            .map(|e| str_at(&e["name"], "env name"))
            .collect();
        for name in [
            "POD_NAME",
            "POD_NAMESPACE",
            "POD_UID",
            "REPRISE_SERVICE",
            "REPRISE_AMQP_URL",
        ] {
            assert!(env.contains(&name), "{file}: sidecar env {name}");
        }
        // The pod's identity comes from the downward API, never from a literal.
        for (name, path) in [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
            ("POD_UID", "metadata.uid"),
        ] {
            let var = side["env"]
                .as_sequence()
                .into_iter()
                .flatten()
                .find(|e| e["name"].as_str() == Some(name));
            assert_eq!(
                var.and_then(|e| e["valueFrom"]["fieldRef"]["fieldPath"].as_str()),
                Some(path),
                "{file}: {name} from the downward API"
            );
        }
        let native = pod["initContainers"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|c| c["restartPolicy"].as_str() == Some("Always"));
        assert_eq!(
            native,
            file.contains("native"),
            "{file}: native sidecar or not"
        );
    }
}
