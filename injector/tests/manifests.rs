//! The webhook's manifests under k8s/injector, checked offline (there is no cluster here):
//! `k8s/validate.sh` passes (strict schemas, kustomizations, RBAC), the webhook registration says
//! what docs/design.md decided, and the embedded configuration is valid for the binary and
//! agrees with the Deployment, the Service and the Secret's mount.
//!
//! Python for the validator: env REPRISE_PYTHON, else the workspace's `.venv`.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_yaml::Value;

fn injector_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/injector")
}

fn doc(file: &str) -> Value {
    let text = std::fs::read_to_string(injector_dir().join(file)).expect("read manifest");
    serde_yaml::from_str(&text).expect("one YAML document")
}

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("REPRISE_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
}

#[test]
fn manifests_pass_offline_validation() {
    let out = Command::new("bash")
        .arg(injector_dir().join("../validate.sh"))
        .arg(python())
        .output()
        .expect("running k8s/validate.sh");
    assert!(
        out.status.success(),
        "k8s/validate.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_webhook_registration_is_the_documented_one() {
    let config = doc("webhook.yaml");
    assert_eq!(config["kind"], "MutatingWebhookConfiguration");
    assert_eq!(
        config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "reprise-system/reprise-injector"
    );
    let hooks = config["webhooks"].as_sequence().expect("webhooks");
    assert_eq!(hooks.len(), 1);
    let hook = &hooks[0];
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(
        hook["admissionReviewVersions"],
        serde_yaml::from_str::<Value>("[v1]").expect("yaml")
    );
    assert!(
        hook["timeoutSeconds"]
            .as_u64()
            .is_some_and(|t| (1..=3).contains(&t))
    );
    assert_eq!(hook["failurePolicy"], "Ignore");
    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
    assert_eq!(hook["clientConfig"]["service"]["path"], "/inject");
    let excluded = &hook["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(excluded["key"], "kubernetes.io/metadata.name");
    assert_eq!(excluded["operator"], "NotIn");
    let names: Vec<&str> = excluded["values"]
        .as_sequence()
        .expect("values")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let own = doc("deployment.yaml")["metadata"]["namespace"]
        .as_str()
        .map(str::to_owned);
    assert!(names.contains(&"kube-system"));
    assert!(
        own.as_deref().is_some_and(|n| names.contains(&n)),
        "{own:?} not excluded"
    );
    // The Certificate's Secret and DNS names match what the Deployment mounts and the Service is.
    let certs =
        std::fs::read_to_string(injector_dir().join("cert-manager.yaml.example")).expect("read");
    assert!(certs.contains("secretName: reprise-injector-tls"));
    assert!(certs.contains("- reprise-injector.reprise-system.svc\n"));
}

#[test]
fn the_configuration_is_valid_and_agrees_with_the_deployment() -> anyhow::Result<()> {
    let config_text = doc("configmap.yaml")["data"]["injector.yaml"]
        .as_str()
        .expect("injector.yaml")
        .to_owned();
    let config: Value = serde_yaml::from_str(&config_text)?;
    let deployment = doc("deployment.yaml");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 2);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    let port_of = |name: &str| -> Option<u64> {
        container["ports"]
            .as_sequence()?
            .iter()
            .find(|p| p["name"] == name)?["containerPort"]
            .as_u64()
    };
    let port =
        |key: &str| -> Option<u64> { config[key].as_str()?.rsplit(':').next()?.parse().ok() };
    assert_eq!(port("listen"), port_of("https"));
    assert_eq!(port("metrics_listen"), port_of("metrics"));
    let tls_mount = container["volumeMounts"]
        .as_sequence()
        .and_then(|m| m.iter().find(|m| m["name"] == "tls"))
        .and_then(|m| m["mountPath"].as_str())
        .expect("the tls mount");
    assert_eq!(
        config["tls_cert"].as_str(),
        Some(format!("{tls_mount}/tls.crt").as_str())
    );
    assert_eq!(
        config["tls_key"].as_str(),
        Some(format!("{tls_mount}/tls.key").as_str())
    );
    assert_eq!(doc("pdb.yaml")["spec"]["minAvailable"], 1);
    assert_eq!(
        pod["automountServiceAccountToken"], true,
        "namespaces are read with it"
    );
    let rbac = std::fs::read_to_string(injector_dir().join("rbac.yaml"))?;
    assert!(
        rbac.contains("    resources: [\"namespaces\"]\n    verbs: [\"get\"]\n"),
        "{rbac}"
    );
    assert_eq!(rbac.matches("resources:").count(), 1, "one rule: {rbac}");
    assert_eq!(
        doc("service.yaml")["spec"]["ports"][0]["targetPort"],
        "https"
    );

    // The binary accepts it, with the Secret's files where the kubelet would put them.
    let dir = tempfile::tempdir()?;
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    support::make_cert(&cert, &key, "manifests");
    let file = dir.path().join("injector.yaml");
    std::fs::write(&file, &config_text)?;
    let out = Command::new(env!("CARGO_BIN_EXE_reprise-injector"))
        .arg("--config")
        .arg(&file)
        .arg("--check")
        .env("REPRISE_TLS_CERT", &cert)
        .env("REPRISE_TLS_KEY", &key)
        // In the cluster, the service account; here, none (`--check` builds no client).
        .env("REPRISE_KUBE", "false")
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
